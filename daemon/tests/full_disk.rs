//! A full disk under the daemon: a small real tmpfs (`helmetd_e2e::tmpfs`, needs root: without
//! it these tests fail) and a real mosquitto on 127.0.0.1.
//!
//! Alerts raised while the spool cannot write reach the broker as long as it is connected, and
//! are counted as lost (not silently dropped) when it is not; the spool leaves no pile of empty
//! segments behind; the output folders stay under `[output] max_mb` and keep being written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use helmet_pipelines::letterbox::Letterbox;
use helmet_pipelines::output::{ALL_EXAMPLES, HARD_EXAMPLE_CLOUD, HARD_EXAMPLE_EDGE, Outcome};
use helmet_pipelines::output_dir::CappedOutputs;
use helmet_pipelines::{Detection, Frame};
use helmetd::config::{Config, MqttConfig, SpoolKind};
use helmetd::uplink::{Delivery, MessageProperties, Uplink, UplinkHandle, UplinkSettings};
use helmetd_e2e::mosquitto::Mosquitto;
use helmetd_e2e::tmpfs::Tmpfs;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::task::JoinHandle;

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(90);
const NODE: &str = "full-disk";
const CAMERA: &str = "gate-1";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `done` every 10 ms until it holds; panics after [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same length for every `seq`, so every spool record is the same size: once one no longer
/// fits the disk, none does.
fn alert(seq: u64) -> Vec<u8> {
    format!("{{\"type\":\"new\",\"seq\":{seq:>6}}}").into_bytes()
}

/// Subscribes to the alert topic and records the `seq` of every alert received.
struct Collector {
    seqs: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Connects with a session the broker keeps across its restart, and waits until the
    /// subscription is in place.
    async fn start(broker: &Mosquitto, topic: &str) -> Self {
        let mut options = MqttOptions::new("full-disk-collector", "127.0.0.1", broker.port());
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(3600));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let task = tokio::spawn({
            let (seqs, subscribed, topic) = (seqs.clone(), subscribed.clone(), topic.to_owned());
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                            client.try_subscribe(&topic, QoS::AtLeastOnce).unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *subscribed.lock().unwrap() = true
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                            seqs.lock().unwrap().push(v["seq"].as_u64().unwrap());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        wait_until("the subscription", || *subscribed.lock().unwrap()).await;
        Self { seqs, task }
    }

    /// Distinct alerts received, sorted.
    fn unique(&self) -> Vec<u64> {
        let mut seqs = self.seqs.lock().unwrap().clone();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_uplink(url: &str, spool_dir: &Path) -> (UplinkHandle, JoinHandle<()>) {
    let mqtt = MqttConfig {
        url: url.into(),
        keep_alive_s: 5,
        spool_dir: spool_dir.to_path_buf(),
        spool_kinds: vec![SpoolKind::Alerts],
        ..Config::embedded_default().unwrap().mqtt
    };
    let settings = UplinkSettings::from_mqtt(&mqtt, NODE).unwrap();
    let (uplink, handle) = Uplink::open(settings).unwrap();
    (handle, tokio::spawn(uplink.run()))
}

async fn raise(handle: &UplinkHandle, seq: u64) -> Delivery {
    let properties = MessageProperties {
        content_type: Some("application/json".into()),
        ..MessageProperties::default()
    };
    handle
        .publish(
            SpoolKind::Alerts,
            handle.topics().alert_topic(CAMERA),
            alert(seq),
            properties,
            false,
        )
        .await
        .expect("publishing an alert is never an error")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

#[test]
fn alerts_reach_the_broker_while_the_spool_disk_is_full() {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let disk = Tmpfs::mount(256 << 10).unwrap();
        let spool_dir = disk.path().join("spool");
        let mut broker = Mosquitto::start().unwrap();
        let (handle, run) = start_uplink(&broker.url(), &spool_dir);
        let collector = Collector::start(&broker, &handle.topics().alert_topic(CAMERA)).await;
        wait_until("the uplink's connect", || handle.stats().connected).await;

        let mut seq = 0;
        let mut raised = Vec::new();
        for _ in 0..5 {
            assert!(matches!(raise(&handle, seq).await, Delivery::Spooled(_)));
            raised.push(seq);
            seq += 1;
        }
        disk.fill().unwrap();

        // Connected: whether the spool stores an alert (its last page may have room) or not,
        // every one reaches the broker.
        for _ in 0..200 {
            let delivery = raise(&handle, seq).await;
            assert_ne!(
                delivery,
                Delivery::Dropped,
                "alert {seq} lost while connected"
            );
            raised.push(seq);
            seq += 1;
        }
        wait_until("every alert at the broker", || collector.unique() == raised).await;
        let stats = handle.stats();
        assert!(
            stats.spool_bypassed >= 150,
            "the disk filled up, most alerts went around the spool: {stats:?}"
        );
        assert_eq!(stats.spool_lost, 0);
        assert!(stats.spool.write_failures >= stats.spool_bypassed);
        assert!(
            segments(&spool_dir).len() <= 2,
            "failed writes left segments behind: {:?}",
            segments(&spool_dir)
        );

        // Disconnected and full: counted as lost, not an error per alert.
        broker.stop().unwrap();
        wait_until("the uplink to notice", || !handle.stats().connected).await;
        for _ in 0..10 {
            assert_eq!(raise(&handle, seq).await, Delivery::Dropped);
            seq += 1;
        }
        assert_eq!(handle.stats().spool_lost, 10);

        // Space again: the spool takes alerts once its retry time has come (at most 30 s).
        disk.free().unwrap();
        broker.restart().unwrap();
        wait_until("the reconnect", || handle.stats().connected).await;
        let start = Instant::now();
        loop {
            let delivery = raise(&handle, seq).await;
            raised.push(seq);
            seq += 1;
            if matches!(delivery, Delivery::Spooled(_)) {
                break;
            }
            assert!(start.elapsed() < WAIT, "the spool never stored again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_until("the alerts after the outage", || {
            collector.unique() == raised
        })
        .await;
        assert!(segments(&spool_dir).len() <= 2);

        handle.shutdown().await.unwrap();
        run.await.unwrap();
    });
}

/// A 320×180 content frame of noise, which JPEG cannot squeeze: about 100 KB a file.
fn noisy_frame(seq: u64) -> Frame {
    let letterbox = Letterbox::new(640, 360, 320, 192);
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let pixels = (0..320 * 192 * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    Frame {
        camera: Arc::from(CAMERA),
        seq,
        pts: None,
        capture_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000 + seq),
        letterbox,
        pixels,
    }
}

fn folder_bytes(root: &Path) -> u64 {
    [ALL_EXAMPLES, HARD_EXAMPLE_EDGE, HARD_EXAMPLE_CLOUD]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn output_folders_stay_under_max_mb_on_a_small_disk() {
    init_tracing();
    // Twice the cap: without it the disk is full after a few frames.
    let disk = Tmpfs::mount(2 << 20).unwrap();
    let root = disk.path().join("out");
    let max_mb = 1;
    let outputs = CappedOutputs::create(&root, 85, vec!["helmet".into()], max_mb << 20).unwrap();
    let boxes = [Detection {
        x1: 100.0,
        y1: 100.0,
        x2: 300.0,
        y2: 400.0,
        score: 0.9,
        class: 0,
    }];
    let outcome = Outcome {
        is_hard: true,
        final_result: &boxes,
        edge_result: &boxes,
        cloud_result: Some(&boxes),
    };
    let frames = 12;
    let mut last = Vec::new();
    for seq in 0..frames {
        last = outputs
            .write(&noisy_frame(seq), &outcome)
            .unwrap_or_else(|e| panic!("frame {seq}: {e}"));
        assert!(
            folder_bytes(&root) <= max_mb << 20,
            "frame {seq}: {} bytes",
            folder_bytes(&root)
        );
    }
    let sizes: Vec<u64> = last.iter().map(|p| p.metadata().unwrap().len()).collect();
    assert!(
        sizes.iter().sum::<u64>() < (max_mb << 20) / 2,
        "frames this big ({sizes:?}) would not show which are kept"
    );
    assert!(last.iter().all(|p| p.exists()), "the newest frame is kept");
    assert!(
        outputs.budget().removed() >= 3,
        "the cap was reached and the oldest frames removed"
    );
    let first = root.join(ALL_EXAMPLES).read_dir().unwrap().count();
    assert!(first < frames as usize, "{first} frames kept");
}
