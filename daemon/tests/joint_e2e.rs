//! Joint inference end to end, as an operator runs it: a real Mosquitto, the bundled video served
//! over RTSP, `helmetd cloud` and `helmetd run` as processes configured from
//! `config/examples/joint-local.toml`, and a plain MQTT subscriber watching `<prefix>/#`.
//!
//! One test in three phases, since the models take a while to load:
//! 1. hard examples answered by the cloud (`cloud_answered` in the stats topic), alert events
//!    (`new`, with a JPEG snapshot on `…/alert/snapshot`, decision source in the event);
//! 2. the broker stopped until an alert and a hard example went into the spool, then restarted:
//!    every spooled message arrives, in spool order;
//! 3. the broker stopped again, `helmetd run` killed with SIGKILL while its spool holds entries,
//!    the broker restarted, the daemon restarted: the spool drains.
//!
//! "Spooled" is what the daemon logged (`spooled`, with the spool id, at debug level for
//! `helmetd::uplink`); every spooled message carries its id as the user property `spool_id`.
//! Duplicates (re-sends of unconfirmed messages) are allowed and told apart by that id.
//! What `uplink_mqtt.rs` proves on the uplink alone (resumed vs new sessions, status topic,
//! volatile messages) is not repeated here.
//!
//! Needs root and a writable cgroup2 hierarchy at /sys/fs/cgroup/unified, like `run_daemon.rs`;
//! elsewhere it fails and says why. The daemon gets its own cgroup root (`common::TestRoot`),
//! removed (processes in it killed first) even when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use helmetd_e2e::RtspTestServer;
use helmetd_e2e::mosquitto::Mosquitto;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

mod common;
use common::{HelmetdProcess, Options, ProcessOutput, TestRoot};

const CONFIG: &str = "config/examples/joint-local.toml";
const PREFIX: &str = "helmetd/v1";
const NODE: &str = "joint-e2e";
/// The example's camera name.
const CAMERA: &str = "yard";
/// Both models loaded, the RTSP stream open, the first violation confirmed.
const FIRST_RESULTS: Duration = Duration::from_secs(120);
/// For an alert and a hard example to be spooled while the broker is down.
const SPOOLING: Duration = Duration::from_secs(40);
/// The broker stays down at least this long, so the daemon notices and retries with backoff.
const MIN_OUTAGE: Duration = Duration::from_secs(4);
/// For the spool to drain after the broker is back: the daemon's reconnect backoff (it doubles
/// from 0.5 s during an outage) plus the drain.
const DRAIN: Duration = Duration::from_secs(45);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Processes with JSON logs.

/// A child `helmetd` with the uplink's debug log (what it spooled); killed on drop if still
/// running.
fn spawn(name: &str, args: &[String]) -> HelmetdProcess {
    let options = Options {
        name,
        rust_log: "info,ort=warn,helmetd::uplink=debug",
        ..Options::default()
    };
    HelmetdProcess::start_with(args, options)
}

/// Spool ids and topics a daemon logged as spooled, in log order.
fn spooled(log: &ProcessOutput) -> Vec<(u64, String)> {
    log.json_lines()
        .iter()
        .filter(|e| e["fields"]["message"] == "spooled")
        .filter_map(|e| {
            let fields = &e["fields"];
            Some((fields["id"].as_u64()?, fields["topic"].as_str()?.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The subscriber.

#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Vec<u8>,
    user: BTreeMap<String, String>,
}

impl Received {
    fn spool_id(&self) -> Option<u64> {
        self.user.get("spool_id")?.parse().ok()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// A QoS 1 subscriber to `<prefix>/#` with a persistent session (the harness's broker keeps it
/// across restarts), so nothing published while it reconnects is missed. Retained messages
/// replayed by a (re)subscription are not live traffic and are left out.
fn watch(runtime: &tokio::runtime::Runtime, broker: &Mosquitto) -> Arc<Mutex<Vec<Received>>> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut options = MqttOptions::new("joint-e2e-watcher", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(3600));
    options.set_max_packet_size(Some(16 << 20));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let sink = Arc::clone(&received);
    runtime.spawn(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    let filter = format!("{PREFIX}/#");
                    client
                        .try_subscribe(filter, QoS::AtLeastOnce)
                        .expect("queue");
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                    let user = p
                        .properties
                        .map(|props| props.user_properties.into_iter().collect())
                        .unwrap_or_default();
                    lock(&sink).push(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        user,
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed within 10 s");
    received
}

fn topic(suffix: &str) -> String {
    format!("{PREFIX}/{NODE}/{suffix}")
}

/// Polls `check` until it yields; panics after `timeout` or when a process ends, with the logs.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut HelmetdProcess],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        let dead: Vec<String> = procs
            .iter_mut()
            .filter_map(|p| (!p.running()).then(|| p.name().to_owned()))
            .collect();
        let expired = Instant::now() >= deadline;
        if expired || !dead.is_empty() {
            let tails: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {} ---\n{}", p.name(), p.tail(25)))
                .collect();
            panic!(
                "{} while waiting for {what}\n{}",
                if expired {
                    format!("timed out after {timeout:?}")
                } else {
                    format!("{dead:?} exited")
                },
                tails.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The latest stats message's counter `key`.
fn stat(received: &[Received], key: &str) -> u64 {
    let stats = topic("stats");
    received
        .iter()
        .rev()
        .find(|m| m.topic == stats)
        .and_then(|m| m.json()[key].as_u64())
        .unwrap_or(0)
}

/// The ids logged as spooled since `from` (a count of earlier entries), if they include a
/// message on the alert topic and a hard example.
fn spooled_both(spooled: &[(u64, String)], from: usize) -> Option<Vec<u64>> {
    let since = spooled.get(from..)?;
    let alert = topic(&format!("{CAMERA}/alert"));
    let hard = format!("{PREFIX}/hard-example");
    let has = |t: &str| since.iter().any(|(_, topic)| topic == t);
    (has(&alert) && has(&hard)).then(|| since.iter().map(|(id, _)| *id).collect())
}

/// Spool ids in order of first arrival, and how many arrivals were re-sends.
fn first_arrivals(received: &[Received]) -> (Vec<u64>, usize) {
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    for id in received.iter().filter_map(Received::spool_id) {
        if seen.insert(id) {
            order.push(id);
        } else {
            duplicates += 1;
        }
    }
    (order, duplicates)
}

/// Whether every id in `logged` has arrived.
fn all_arrived(received: &Mutex<Vec<Received>>, logged: &[u64]) -> bool {
    let (order, _) = first_arrivals(&lock(received));
    let seen: BTreeSet<u64> = order.into_iter().collect();
    logged.iter().all(|id| seen.contains(id))
}

fn run_args(broker: &Mosquitto, camera: &str, root: &TestRoot, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--config", CONFIG].map(String::from).to_vec();
    for set in [
        format!("mqtt.url={}", broker.url()),
        format!("node.name={NODE}"),
        format!("camera.0.url={camera}"),
        format!("mqtt.spool_dir={}", dir.join("spool").display()),
        format!("output.dir={}", dir.join("out").display()),
        root.arg(),
        "camera.0.detect_fps=1".to_owned(),
        "mqtt.stats_interval_s=1".to_owned(),
        // The video shows each photo for 1.5 s: at 1 fps a violation is seen once or twice, so
        // episodes confirm on one frame and end soon, which makes alerts frequent enough to
        // catch some during a short outage.
        "alerts.confirm_frames=1".to_owned(),
        "alerts.end_after_s=2".to_owned(),
        // Generous for two shared cores; the breaker bounds the cost when it is exceeded.
        "cloud.timeout_ms=5000".to_owned(),
    ] {
        args.push("--set".to_owned());
        args.push(set);
    }
    args
}

#[test]
fn joint_inference_alerts_and_a_spool_that_survives_outages_and_kill_9() {
    let started = Instant::now();
    let root = TestRoot::new("joint_e2e");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut broker = Mosquitto::start().expect("mosquitto");
    let rtsp = RtspTestServer::start(helmetd_e2e::test_video()).expect("RTSP test server");
    let dir = tempfile::tempdir().unwrap();
    let received = watch(&runtime, &broker);

    let cloud_args: Vec<String> = [
        "cloud",
        "--config",
        CONFIG,
        "--set",
        &format!("mqtt.url={}", broker.url()),
    ]
    .map(String::from)
    .to_vec();
    let mut cloud = spawn("helmetd cloud", &cloud_args);
    let args = run_args(&broker, &rtsp.url(), &root, dir.path());
    let mut daemon = spawn("helmetd run", &args);

    // Phase 1: joint inference and alerts.
    let alert_topic = topic(&format!("{CAMERA}/alert"));
    let snapshot_topic = topic(&format!("{CAMERA}/alert/snapshot"));
    let new_alert = wait_for(
        "a `new` alert with a snapshot and a cloud answer",
        FIRST_RESULTS,
        &mut [&mut daemon, &mut cloud],
        || {
            let received = lock(&received);
            let alert = received
                .iter()
                .filter(|m| m.topic == alert_topic)
                .map(Received::json)
                .find(|a| a["type"] == "new" && a["snapshot"] == true)?;
            let snapshot = received.iter().any(|m| m.topic == snapshot_topic);
            (snapshot && stat(&received, "cloud_answered") > 0).then_some(alert)
        },
    );
    println!("phase 1 after {:?}: {new_alert}", started.elapsed());
    {
        let received = lock(&received);
        for snapshot in received.iter().filter(|m| m.topic == snapshot_topic) {
            assert!(
                snapshot.payload.starts_with(&[0xFF, 0xD8]),
                "snapshot is not a JPEG"
            );
            assert!(snapshot.spool_id().is_some(), "snapshot without spool_id");
        }
        for alert in received.iter().filter(|m| m.topic == alert_topic) {
            let event = alert.json();
            assert!(
                event["source"] == "edge" || event["source"] == "cloud",
                "decision source missing: {event}"
            );
            assert_eq!(event["camera"], CAMERA);
        }
        let hard: Vec<&Received> = received
            .iter()
            .filter(|m| m.topic == format!("{PREFIX}/hard-example"))
            .collect();
        assert!(!hard.is_empty(), "no hard example on the request topic");
        for request in hard {
            assert!(request.payload.starts_with(&[0xFF, 0xD8]));
            assert_eq!(request.user.get("node").map(String::as_str), Some(NODE));
            assert!(request.user.contains_key("seq") && request.spool_id().is_some());
        }
        let answers = received
            .iter()
            .filter(|m| m.topic == topic("cloud-result"))
            .count();
        println!(
            "phase 1: cloud answers {answers}, stats cloud_answered {} hard {} frames {}",
            stat(&received, "cloud_answered"),
            stat(&received, "hard"),
            stat(&received, "frames")
        );
    }

    // Phase 2: a broker outage while the daemon keeps running.
    let log = daemon.log();
    broker.stop().expect("stopping mosquitto");
    let outage_started = Instant::now();
    let mut outages = vec![SystemTime::now()];
    let before = spooled(&daemon.log()).len();
    let during = wait_for(
        "an alert and a hard example spooled while the broker is down",
        SPOOLING,
        &mut [&mut daemon, &mut cloud],
        || spooled_both(&spooled(&log), before),
    );
    thread::sleep(MIN_OUTAGE.saturating_sub(outage_started.elapsed()));
    broker.restart().expect("restarting mosquitto");
    println!(
        "phase 2: {} messages spooled during a {:?} outage",
        during.len(),
        outage_started.elapsed()
    );
    let logged: Vec<u64> = spooled(&daemon.log()).iter().map(|(id, _)| *id).collect();
    let drained_in = Instant::now();
    wait_for(
        "every spooled message after the broker restart",
        DRAIN,
        &mut [&mut daemon, &mut cloud],
        || all_arrived(&received, &logged).then_some(()),
    );
    println!("phase 2: drained in {:?}", drained_in.elapsed());

    // The cloud may not have resubscribed in time for the replay; late answers are counted,
    // not used, which the uplink's unit tests check. Here they are only reported.
    {
        let received = lock(&received);
        let (late, answered) = (
            stat(&received, "cloud_late"),
            stat(&received, "cloud_answered"),
        );
        println!("phase 2: cloud_late {late} cloud_answered {answered}");
    }
    let mut offline: Vec<u64> = during;

    // Phase 3: SIGKILL while the broker is down and the spool holds entries.
    broker.stop().expect("stopping mosquitto");
    outages.push(SystemTime::now());
    let before = spooled(&daemon.log()).len();
    let during = wait_for(
        "an alert and a hard example spooled before the kill",
        SPOOLING,
        &mut [&mut daemon, &mut cloud],
        || spooled_both(&spooled(&log), before),
    );
    daemon.kill9();
    offline.extend(&during);
    let first_life: Vec<u64> = spooled(&daemon.log()).iter().map(|(id, _)| *id).collect();
    println!(
        "phase 3: killed with {} messages spooled during the outage (ids {:?}..={:?})",
        during.len(),
        during.first(),
        during.last()
    );
    broker.restart().expect("restarting mosquitto");
    let mut daemon = spawn("helmetd run (restarted)", &args);
    let drained_in = Instant::now();
    wait_for(
        "the killed daemon's spool to drain after the restart",
        DRAIN + FIRST_RESULTS / 2,
        &mut [&mut daemon, &mut cloud],
        || all_arrived(&received, &first_life).then_some(()),
    );
    println!("phase 3: drained in {:?}", drained_in.elapsed());
    let second_life: Vec<u64> = spooled(&daemon.log()).iter().map(|(id, _)| *id).collect();
    if let (Some(first), Some(last)) = (second_life.first(), first_life.last()) {
        assert!(first > last, "spool ids restarted: {first} after {last}");
    }
    wait_for(
        "the restarted daemon's messages",
        DRAIN,
        &mut [&mut daemon, &mut cloud],
        || all_arrived(&received, &second_life).then_some(()),
    );

    // Alerts went on from the edge's results while the cloud could not be reached.
    let offline_alerts: Vec<Value> = lock(&received)
        .iter()
        .filter(|m| m.topic == alert_topic && m.spool_id().is_some_and(|id| offline.contains(&id)))
        .map(Received::json)
        .collect();
    assert!(!offline_alerts.is_empty());
    // A frame the cloud answered just before the broker went down may still be concluded (and
    // its alert spooled) after; an episode that started later than the cloud's timeout into an
    // outage cannot have been decided by the cloud.
    let cloud_timeout = Duration::from_secs(5);
    let started_in_outage = |event: &Value| {
        let start = event["start_time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        start.is_some_and(|start| {
            outages
                .iter()
                .any(|&stop| start > stop + cloud_timeout + Duration::from_secs(1))
        })
    };
    let decided_offline: Vec<&Value> = offline_alerts
        .iter()
        .filter(|e| e["type"] != "end" && started_in_outage(e))
        .collect();
    for event in &decided_offline {
        assert_eq!(event["source"], "edge", "decided during an outage: {event}");
    }
    println!(
        "offline: {} alert events, {} of episodes that started in an outage (all edge)",
        offline_alerts.len(),
        decided_offline.len()
    );

    // Order and completeness over the whole run.
    let (order, duplicates) = first_arrivals(&lock(&received));
    let logged: BTreeSet<u64> = first_life.iter().chain(&second_life).copied().collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "spooled messages arrived out of order: {order:?}"
    );
    let seen: BTreeSet<u64> = order.iter().copied().collect();
    let missing: Vec<u64> = logged.difference(&seen).copied().collect();
    assert!(missing.is_empty(), "spooled but never arrived: {missing:?}");
    let max = *seen.last().expect("something arrived");
    assert_eq!(
        seen.len() as u64,
        max,
        "gaps in the spool ids that arrived (1..={max})"
    );
    println!(
        "{} spooled messages arrived in order ({duplicates} re-sends); late answers {}",
        seen.len(),
        stat(&lock(&received), "cloud_late")
    );

    let status = daemon.terminate_within(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon.tail(20));
    assert!(cloud.terminate_within(Duration::from_secs(30)).success());
    println!("joint_e2e took {:?}", started.elapsed());
}
