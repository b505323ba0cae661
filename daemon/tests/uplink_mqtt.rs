//! The uplink against a real mosquitto on 127.0.0.1: status and last will, reliable messages
//! across broker restarts and kills, a daemon killed while spooling, volatile messages offline.
//!
//! Killed daemons are child processes: this test binary re-executed with `HELMETD_UPLINK_CHILD`
//! set runs only [`child_process`], which starts an uplink and reports on stdout until the parent
//! SIGKILLs it.
//!
//! Run with `--nocapture` to see the measured figures.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use helmetd::config::{Config, MqttConfig};
use helmetd::uplink::{
    MessageProperties, STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED, Topics, Uplink, UplinkHandle,
    UplinkSettings,
};
use helmetd_e2e::mosquitto::Mosquitto;
use rumqttc::NetworkOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PREFIX: &str = "helmetd/v1";
/// Every wait is bounded by this; the figures printed are what it actually took.
const WAIT: Duration = Duration::from_secs(60);
const CHILD_MODE: &str = "HELMETD_UPLINK_CHILD";
const CHILD_URL: &str = "HELMETD_UPLINK_CHILD_URL";
const CHILD_NODE: &str = "HELMETD_UPLINK_CHILD_NODE";
const CHILD_SPOOL: &str = "HELMETD_UPLINK_CHILD_SPOOL";
/// Prefix of the child's report lines (libtest prints its own lines on stdout too).
const CHILD_TAG: &str = "uplink-child:";
/// A child the parent failed to kill exits by itself after this.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// The tests measure reconnect times; on 2 shared cores they would measure each other.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn serially(body: impl std::future::Future<Output = ()>) {
    let _serial = serial();
    init_tracing();
    runtime().block_on(body);
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn mqtt_config(url: &str, spool_dir: &Path) -> MqttConfig {
    MqttConfig {
        url: url.into(),
        topic_prefix: PREFIX.into(),
        keep_alive_s: 5,
        spool_dir: spool_dir.to_path_buf(),
        spool_max_mb: 64,
        spool_max_age_s: 3600,
        spool_kinds: Vec::new(),
        ..Config::embedded_default().unwrap().mqtt
    }
}

/// An uplink for `node` with its event loop spawned.
fn start_uplink(url: &str, node: &str, spool_dir: &Path) -> (UplinkHandle, JoinHandle<()>) {
    let settings = UplinkSettings::from_mqtt(&mqtt_config(url, spool_dir), node).unwrap();
    let (uplink, handle) = Uplink::open(settings).unwrap();
    (handle, tokio::spawn(uplink.run()))
}

/// Polls `done` every 5 ms until it holds; panics after [`WAIT`]. Returns how long it took.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn alert(seq: usize) -> Vec<u8> {
    serde_json::json!({"type": "new", "id": format!("{seq}-gate-1"), "seq": seq})
        .to_string()
        .into_bytes()
}

fn json_properties() -> MessageProperties {
    MessageProperties {
        content_type: Some("application/json".into()),
        ..MessageProperties::default()
    }
}

#[derive(Debug, Clone)]
struct Received {
    payload: Vec<u8>,
    retain: bool,
}

/// A QoS 1 subscriber that reconnects by itself and records what it receives.
struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    connects: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and waits until the subscription is in place. A persistent subscriber's
    /// session (and with it the subscription and its queue) outlives broker restarts.
    async fn start(broker: &Mosquitto, id: &str, filter: &str, persistent: bool) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(5));
        if persistent {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(3600));
        }
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let received = Arc::new(Mutex::new(Vec::new()));
        let connects = Arc::new(AtomicU64::new(0));
        let subscribed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (received, connects, subscribed) =
                (received.clone(), connects.clone(), subscribed.clone());
            let filter = filter.to_string();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            connects.fetch_add(1, Ordering::SeqCst);
                            if ack.session_present {
                                subscribed.store(true, Ordering::SeqCst);
                            } else {
                                client
                                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                                    .unwrap();
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, Ordering::SeqCst)
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            received.lock().unwrap().push(Received {
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        wait_until("the subscription", || subscribed.load(Ordering::SeqCst)).await;
        Self {
            received,
            connects,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn last_payload(&self) -> Option<String> {
        self.received()
            .last()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
    }

    /// The `seq` of every alert received, in arrival order.
    fn seqs(&self) -> Vec<usize> {
        self.received()
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["seq"].as_u64().unwrap() as usize
            })
            .collect()
    }

    fn unique(&self) -> usize {
        let mut seqs = self.seqs();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }

    fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks that `seqs` is 0..n in order except for repeats of messages already seen, and
/// returns how many repeats there were.
fn check_in_order(seqs: &[usize], n: usize) -> usize {
    let mut next = 0;
    let mut duplicates = 0;
    for &seq in seqs {
        if seq == next {
            next += 1;
        } else {
            assert!(
                seq < next,
                "message {seq} arrived before {next}; arrival order: {seqs:?}"
            );
            duplicates += 1;
        }
    }
    assert_eq!(next, n, "only 0..{next} of {n} arrived: {seqs:?}");
    duplicates
}

/// A child process running an uplink, killed with SIGKILL on drop at the latest.
struct ChildUplink {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ChildUplink {
    /// Re-executes this test binary to run [`child_process`] in `mode`.
    fn spawn(mode: &str, url: &str, node: &str, spool: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_MODE, mode)
            .env(CHILD_URL, url)
            .env(CHILD_NODE, node)
            .env(CHILD_SPOOL, spool)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have started the line ("test child_process ... ").
                if let Some((_, report)) = line.split_once(CHILD_TAG)
                    && tx.send(report.trim().to_string()).is_err()
                {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a report line satisfying `wanted` and returns it.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                if wanted(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "child exited before reporting {what}: {:?}",
                self.child.try_wait()
            ),
            Err(_) => panic!("child did not report {what} within {WAIT:?}"),
        }
    }

    /// SIGKILL, like `kill -9` or the OOM killer.
    fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildUplink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child side of the kill tests; a no-op in a normal test run.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let (url, node, spool) = (
        var(CHILD_URL),
        var(CHILD_NODE),
        PathBuf::from(var(CHILD_SPOOL)),
    );
    runtime().block_on(async {
        let (handle, _task) = start_uplink(&url, &node, &spool);
        let deadline = tokio::time::Instant::now() + CHILD_LIFETIME;
        match mode.as_str() {
            // Connect, then wait to be killed.
            "connect" => {
                wait_until("the connection", || handle.stats().connected).await;
                println!("{CHILD_TAG} connected");
            }
            // Spool alerts (the broker is down) and report each one stored, until killed.
            "spool" => {
                let topic = handle.topics().alert_topic("gate-1");
                for seq in 0.. {
                    handle
                        .publish_reliable(topic.clone(), alert(seq), json_properties(), false)
                        .await
                        .unwrap();
                    println!("{CHILD_TAG} stored {seq}");
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
            other => panic!("unknown child mode {other:?}"),
        }
        tokio::time::sleep_until(deadline).await;
    });
}

/// (a) `online` on connect, `stopped` on a clean shutdown, the will `offline` when killed; all
/// retained.
#[test]
fn status_is_online_then_stopped_or_offline_when_killed() {
    serially(async {
        let broker = Mosquitto::start().unwrap();
        let spool = tempfile::tempdir().unwrap();

        let status = Topics::new(PREFIX, "edge-a").status_topic();
        let watcher = Subscriber::start(&broker, "watch-a", &status, false).await;
        let (handle, task) = start_uplink(&broker.url(), "edge-a", spool.path());
        let took = wait_until("online", || {
            watcher.last_payload().as_deref() == Some(STATUS_ONLINE)
        })
        .await;
        println!("online seen {took:?} after the uplink started");
        let stats = handle.shutdown().await.unwrap();
        task.await.unwrap();
        wait_until("stopped", || {
            watcher.last_payload().as_deref() == Some(STATUS_STOPPED)
        })
        .await;
        assert_eq!(stats.connects, 1);
        assert!(!stats.connected);
        assert!(handle.shutdown().await.is_err(), "already stopped");
        let late = Subscriber::start(&broker, "late-a", &status, false).await;
        wait_until("retained stopped", || !late.received().is_empty()).await;
        let retained = late.received()[0].clone();
        assert_eq!(retained.payload, STATUS_STOPPED.as_bytes());
        assert!(retained.retain);

        // A daemon that dies without a DISCONNECT: the broker publishes the will.
        let status = Topics::new(PREFIX, "edge-b").status_topic();
        let watcher = Subscriber::start(&broker, "watch-b", &status, false).await;
        let mut child = ChildUplink::spawn("connect", &broker.url(), "edge-b", spool.path());
        child.expect("connected", |l| l == "connected").await;
        wait_until("online from the child", || {
            watcher.last_payload().as_deref() == Some(STATUS_ONLINE)
        })
        .await;
        child.kill();
        let took = wait_until("the will", || {
            watcher.last_payload().as_deref() == Some(STATUS_OFFLINE)
        })
        .await;
        println!("will `offline` seen {took:?} after SIGKILL");
        let late = Subscriber::start(&broker, "late-b", &status, false).await;
        wait_until("retained offline", || !late.received().is_empty()).await;
        assert_eq!(late.received()[0].payload, STATUS_OFFLINE.as_bytes());
        assert!(late.received()[0].retain);
    });
}

/// (b) 200 reliable messages while the broker goes away mid-stream for 3 s.
#[test]
fn reliable_messages_survive_a_broker_restart() {
    serially(broker_outage(Outage::Stop));
}

/// (b) as above, the broker SIGKILLed instead of stopped.
#[test]
fn reliable_messages_survive_a_broker_kill() {
    serially(broker_outage(Outage::Kill));
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Stop,
    Kill,
}

async fn broker_outage(outage: Outage) {
    const N: usize = 200;
    const OUTAGE: Duration = Duration::from_secs(3);
    let mut broker = Mosquitto::start().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let topic = Topics::new(PREFIX, "edge-c").alert_topic("gate-1");
    let subscriber = Subscriber::start(&broker, "alerts-c", &topic, true).await;
    let (handle, task) = start_uplink(&broker.url(), "edge-c", spool.path());
    wait_until("the uplink to connect", || handle.stats().connected).await;

    let publisher = tokio::spawn({
        let (handle, topic) = (handle.clone(), topic.clone());
        async move {
            for seq in 0..N {
                handle
                    .publish_reliable(topic.clone(), alert(seq), json_properties(), false)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    wait_until("the first 40 messages", || subscriber.unique() >= 40).await;
    match outage {
        Outage::Stop => broker.stop().unwrap(),
        Outage::Kill => broker.kill().unwrap(),
    }
    let down_at = subscriber.unique();
    wait_until("the uplink to notice", || !handle.stats().connected).await;
    tokio::time::sleep(OUTAGE).await;
    let spooled = handle.stats().spool.entries;
    broker.restart().unwrap();
    let reconnect = wait_until("the uplink to reconnect", || handle.stats().connected).await;
    publisher.await.unwrap();
    let drain = wait_until("all messages", || subscriber.unique() == N).await;
    // Late duplicates, if any, arrive within the drain's round trips.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let duplicates = check_in_order(&subscriber.seqs(), N);

    let stats = handle.shutdown().await.unwrap();
    task.await.unwrap();
    println!(
        "{outage:?}: {down_at} delivered before the outage, {spooled} spooled during it; \
         uplink reconnected {reconnect:?} after the restart, all {N} delivered {drain:?} later; \
         {duplicates} duplicates seen by the subscriber (reconnected {} times); \
         uplink: published {} (resent {}), acked {}, reconnects {}",
        subscriber.connects() - 1,
        stats.published,
        stats.resent,
        stats.acked,
        stats.reconnects,
    );
    assert_eq!(stats.acked, N as u64);
    assert_eq!(stats.rejected, 0);
    assert_eq!(stats.spool.entries, 0);
    assert_eq!(stats.reconnects, 1);
}

/// (c) A daemon SIGKILLed while it spools alerts (broker down): the next start delivers every
/// alert it had stored, in order.
#[test]
fn alerts_spooled_before_a_kill_are_delivered_by_the_next_start() {
    serially(async {
        const STORED_BEFORE_KILL: usize = 100;
        let mut broker = Mosquitto::start().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let topic = Topics::new(PREFIX, "edge-d").alert_topic("gate-1");
        let subscriber = Subscriber::start(&broker, "alerts-d", &topic, true).await;
        broker.stop().unwrap();

        let mut child = ChildUplink::spawn("spool", &broker.url(), "edge-d", spool.path());
        child
            .expect("100 stored alerts", |l| {
                l == format!("stored {}", STORED_BEFORE_KILL - 1)
            })
            .await;
        // Killed while it keeps pushing: possibly half-way through a record.
        child.kill();
        let mut reported = STORED_BEFORE_KILL - 1;
        while let Ok(line) = child.lines.try_recv() {
            if let Some(seq) = line.strip_prefix("stored ") {
                reported = seq.parse().unwrap();
            }
        }

        broker.restart().unwrap();
        let (handle, task) = start_uplink(&broker.url(), "edge-d", spool.path());
        let spooled = handle.stats().spool;
        let took = wait_until("the stored alerts", || {
            subscriber.unique() > reported && handle.stats().spool.entries == 0
        })
        .await;
        let seqs = subscriber.seqs();
        let delivered = subscriber.unique();
        let duplicates = check_in_order(&seqs, delivered);
        let stats = handle.shutdown().await.unwrap();
        task.await.unwrap();
        println!(
            "child reported {} stored before SIGKILL; the spool reopened with {} entries \
             ({} corrupt records); {delivered} delivered in order in {took:?}, {duplicates} duplicates",
            reported + 1,
            spooled.entries,
            spooled.corrupt_records,
        );
        assert!(delivered > reported, "every alert reported stored arrives");
        assert_eq!(stats.acked, spooled.entries as u64);
        assert_eq!(stats.spool.entries, 0);
    });
}

/// (d) Stats while the broker is away are dropped and counted, not queued.
#[test]
fn volatile_messages_are_dropped_and_counted_while_offline() {
    serially(async {
        let mut broker = Mosquitto::start().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let topic = Topics::new(PREFIX, "edge-e").stats_topic();
        let subscriber = Subscriber::start(&broker, "stats-e", &topic, true).await;
        let (handle, task) = start_uplink(&broker.url(), "edge-e", spool.path());
        wait_until("the uplink to connect", || handle.stats().connected).await;
        assert!(handle.publish_volatile(&topic, "before", false).unwrap());
        wait_until("the first stats", || subscriber.received().len() == 1).await;

        broker.stop().unwrap();
        wait_until("the uplink to notice", || !handle.stats().connected).await;
        for i in 0..10 {
            assert!(
                !handle
                    .publish_volatile(&topic, format!("offline {i}"), false)
                    .unwrap()
            );
        }
        assert!(handle.publish_volatile("a/+/b", "x", false).is_err());
        broker.restart().unwrap();
        wait_until("the uplink to reconnect", || handle.stats().connected).await;
        wait_until("the subscriber to reconnect", || subscriber.connects() >= 2).await;
        assert!(handle.publish_volatile(&topic, "after", false).unwrap());
        wait_until("the second stats", || subscriber.received().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let payloads: Vec<_> = subscriber
            .received()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(payloads, [b"before".to_vec(), b"after".to_vec()]);
        let stats = handle.shutdown().await.unwrap();
        task.await.unwrap();
        println!(
            "volatile: published {}, dropped {}",
            stats.volatile_published, stats.volatile_dropped
        );
        assert_eq!((stats.volatile_published, stats.volatile_dropped), (2, 10));
    });
}

/// A TCP relay between the uplink and a broker that can swallow everything the broker sends
/// (its PUBACKs) and cut the connection: messages then sit unacknowledged on a broker that
/// did receive them, the case a plain broker restart on loopback almost never produces.
struct Relay {
    port: u16,
    upstream: Arc<AtomicU16>,
    swallow: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let swallow = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (upstream, swallow, connections) =
                (upstream.clone(), swallow.clone(), connections.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let port = upstream.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        continue;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                    });
                    let swallow = swallow.clone();
                    let down = tokio::spawn(async move {
                        let mut buf = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                            if !swallow.load(Ordering::SeqCst)
                                && client_tx.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    });
                    connections.lock().unwrap().extend([up, down]);
                }
            }
        });
        Self {
            port,
            upstream,
            swallow,
            connections,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// From now on nothing from the broker reaches the client.
    fn swallow_replies(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Closes the relayed connections (both ends); later ones go to `upstream`, unhindered.
    fn cut(&self, upstream: u16) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
        self.upstream.store(upstream, Ordering::SeqCst);
        self.swallow.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(0);
    }
}

/// Where the uplink reconnects after its unacknowledged messages were cut off.
#[derive(Debug, Clone, Copy)]
enum Reconnect {
    /// The same broker: the session is resumed, re-sends go under their packet ids.
    SameBroker,
    /// A broker that never saw us: a new session, re-sends under fresh ids.
    OtherBroker,
}

/// (b) The un-acknowledged part of a full window is re-sent, in order, before anything newer.
#[test]
fn unacknowledged_messages_are_resent_on_a_resumed_session() {
    serially(lost_acks(Reconnect::SameBroker));
}

#[test]
fn unacknowledged_messages_are_resent_on_a_new_session() {
    serially(lost_acks(Reconnect::OtherBroker));
}

async fn lost_acks(reconnect: Reconnect) {
    const N: usize = 20;
    let window = helmetd::uplink::WINDOW;
    let first = Mosquitto::start().unwrap();
    let second = Mosquitto::start().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let topic = Topics::new(PREFIX, "edge-f").alert_topic("gate-1");
    let on_first = Subscriber::start(&first, "alerts-f1", &topic, true).await;
    let on_second = Subscriber::start(&second, "alerts-f2", &topic, true).await;
    let relay = Relay::start(first.port()).await;
    let (handle, task) = start_uplink(&relay.url(), "edge-f", spool.path());
    wait_until("the uplink to connect", || handle.stats().connected).await;
    wait_until("`online` to be acked", || handle.stats().in_flight == 0).await;

    relay.swallow_replies();
    for seq in 0..N {
        handle
            .publish_reliable(topic.clone(), alert(seq), json_properties(), false)
            .await
            .unwrap();
    }
    wait_until("a full window at the broker", || {
        on_first.unique() == window && handle.stats().published == window as u64
    })
    .await;
    let stats = handle.stats();
    assert_eq!((stats.acked, stats.spool.entries), (0, N));

    let upstream = match reconnect {
        Reconnect::SameBroker => first.port(),
        Reconnect::OtherBroker => second.port(),
    };
    relay.cut(upstream);
    let took = wait_until("all messages acked", || {
        handle.stats().acked == N as u64 && handle.stats().spool.entries == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = handle.shutdown().await.unwrap();
    task.await.unwrap();

    // What the subscribers saw, the first broker's before the second's.
    let mut seqs = on_first.seqs();
    seqs.extend(on_second.seqs());
    let duplicates = check_in_order(&seqs, N);
    println!(
        "{reconnect:?}: {window} unacknowledged when the connection was cut; all {N} acked \
         {took:?} later (backoff 0.5 s); published {}, resent {}; subscribers saw \
         {duplicates} duplicates",
        stats.published, stats.resent
    );
    assert_eq!(stats.resent, window as u64);
    assert_eq!(stats.published, (N + window) as u64);
    assert_eq!(duplicates, window);
    assert_eq!(stats.reconnects, 1);
}

/// While a backlog drains, requests on rumqttc's channel (cloud requests, stats) still go out.
#[test]
fn a_draining_backlog_does_not_hold_up_other_requests() {
    serially(async {
        const N: usize = 1000;
        let mut broker = Mosquitto::start().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let topics = Topics::new(PREFIX, "edge-g");
        let subscriber =
            Subscriber::start(&broker, "all-g", &format!("{PREFIX}/edge-g/+/alert"), true).await;
        let stats_watch = Subscriber::start(&broker, "stats-g", &topics.stats_topic(), true).await;
        let (handle, task) = start_uplink(&broker.url(), "edge-g", spool.path());
        wait_until("the uplink to connect", || handle.stats().connected).await;
        broker.stop().unwrap();
        wait_until("the uplink to notice", || !handle.stats().connected).await;
        let topic = topics.alert_topic("gate-1");
        let started = Instant::now();
        for seq in 0..N {
            handle
                .publish_reliable(topic.clone(), alert(seq), json_properties(), false)
                .await
                .unwrap();
        }
        let spooling = started.elapsed();

        broker.restart().unwrap();
        wait_until("the drain to start", || subscriber.unique() > 0).await;
        wait_until("the stats subscriber", || stats_watch.connects() >= 2).await;
        assert!(
            handle
                .publish_volatile(&topics.stats_topic(), "ping", false)
                .unwrap()
        );
        wait_until("the stats message", || !stats_watch.received().is_empty()).await;
        let alerts_before_ping = subscriber.unique();
        let drain = wait_until("the backlog", || subscriber.unique() == N).await;
        let duplicates = check_in_order(&subscriber.seqs(), N);
        handle.shutdown().await.unwrap();
        task.await.unwrap();
        println!(
            "{N} alerts spooled in {spooling:?}; the stats message overtook the backlog after \
             {alerts_before_ping} alerts; the rest drained {drain:?} later, {duplicates} duplicates"
        );
        assert!(alerts_before_ping < N, "stats waited for the whole backlog");
    });
}
