//! SIGTERM loses no alert: `helmetd run` against a real Mosquitto, the bundled video as a file
//! camera, stopped with SIGTERM while a violation episode is open and frames are in flight.
//!
//! What the daemon concluded is its own count, `alerts=N` on the `RESULT` line it prints after a
//! clean stop. Each of those N events must be accounted for afterwards: received by a QoS 1
//! subscriber that was in place before the daemon started, or still in the spool (alerts are a
//! spooled kind here), read with the spool's own reader once the daemon has exited. Events are
//! told apart by `(id, type, frame_seq)`; the broker receiving one twice is a failure, an event
//! both received and still in the spool is not (the PUBACK raced the stop; delivery is at least
//! once, and the spool id lets subscribers drop the re-send). And every episode the broker saw
//! open (`new`) must have its `end`, delivered or spooled, by the time the daemon has exited: a
//! stopping daemon closes its episodes instead of leaving them open for whoever watches.
//!
//! `[alerts]` opens an episode on the first violating frame and would only end it after ten
//! minutes without one, so within this test only the shutdown can end it. The bundled video
//! shows crowds without helmets at 13.5–18 s of each 18 s pass.
//!
//! Needs root and a writable cgroup2 hierarchy at /sys/fs/cgroup/unified (hybrid host), like
//! `run_daemon.rs`; elsewhere it fails and says why. The daemon gets its own cgroup root
//! (`common::TestRoot`), which is killed and removed even when the test fails; the daemon
//! itself is killed by its pid on drop if still running. Every wait is bounded; loopback only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use helmetd::spool::{FsyncPolicy, Spool, SpoolLimits};
use helmetd::uplink::SPOOL_ID_PROPERTY;
use helmetd_e2e::mosquitto::Mosquitto;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::Value;

use common::{HelmetdProcess, Options, Peer, TestRoot};

/// The model loaded, the video playing, the first crowd scene (13.5 s in) confirmed.
const FIRST_NEW: Duration = Duration::from_secs(120);
/// For a stats line showing that frames still arrive after the `new`.
const FLOWING: Duration = Duration::from_secs(20);
/// SIGTERM to exit: drain, finalize, uplink flush, the rest.
const EXIT: Duration = Duration::from_secs(60);
/// After the exit, the broker still delivers what it had; quiet this long means it is done.
const QUIET: Duration = Duration::from_secs(2);
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// For the `RESULT` line on stdout after the exit.
const RESULT_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

const EXAMPLE: &str = "config/examples/local-file.toml";
/// The example camera's sampling rate, replaced in the test's copy.
const EXAMPLE_FPS: &str = "detect_fps = 2.0";
const PREFIX: &str = "helmetd/v1";
const NODE: &str = "shutdown-no-loss";

/// `helmetd run --config <config>` with its stdout kept for the `RESULT` line.
fn start_daemon(config: &Path, sets: &[String]) -> HelmetdProcess {
    let mut args: Vec<OsString> = vec!["run".into(), "--config".into(), config.into()];
    for set in sets {
        args.extend(["--set".into(), set.into()]);
    }
    let options = Options {
        name: "helmetd run",
        keep_stdout: true,
        ..Options::default()
    };
    HelmetdProcess::start_with(&args, options)
}

/// Frames counted by the latest `stats {…}` line.
fn frames(daemon: &HelmetdProcess) -> Option<u64> {
    daemon.log_lines().iter().rev().find_map(|l| {
        let stats = common::message(l).strip_prefix("stats ")?;
        serde_json::from_str::<Value>(stats).ok()?["frames"].as_u64()
    })
}

/// The alert events the daemon logged as it emitted them (target `helmetd::alert`), for the
/// failure report.
fn logged_alerts(daemon: &HelmetdProcess) -> Vec<String> {
    daemon
        .log_lines()
        .iter()
        .filter(|l| l["target"] == "helmetd::alert")
        .map(|l| common::message(l).to_owned())
        .collect()
}

/// Waits up to `timeout` for the exit after SIGTERM, without holding up the runtime.
async fn wait_exit(daemon: &mut HelmetdProcess, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = daemon.exited_after_sigterm(deadline, timeout) {
            return status;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `RESULT …` line, once stdout has it.
async fn result_line(daemon: &HelmetdProcess) -> Option<String> {
    let deadline = Instant::now() + RESULT_WAIT;
    loop {
        let line = daemon
            .stdout_lines()
            .into_iter()
            .rev()
            .find(|l| l.starts_with("RESULT "));
        if line.is_some() || Instant::now() >= deadline {
            return line;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An alert event as subscribers tell events apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    id: String,
    kind: String,
    frame_seq: u64,
}

fn key_of(payload: &[u8]) -> Key {
    let event: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "alert payload is not JSON ({e}): {}",
            String::from_utf8_lossy(payload)
        )
    });
    let field = |name: &str| {
        event[name]
            .as_str()
            .unwrap_or_else(|| panic!("alert without {name}: {event}"))
            .to_owned()
    };
    Key {
        id: field("id"),
        kind: field("type"),
        frame_seq: event["frame_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("alert without frame_seq: {event}")),
    }
}

fn spool_id_of(p: &Publish) -> Option<u64> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == SPOOL_ID_PROPERTY)?
        .1
        .parse()
        .ok()
}

fn drain(peer: &mut Peer, into: &mut Vec<Publish>) -> usize {
    let before = into.len();
    while let Ok(p) = peer.received.try_recv() {
        into.push(p);
    }
    into.len() - before
}

/// Alert events left in the spool, with their spool ids, read by the spool's own reader. Limits
/// far above the daemon's, so opening it drops nothing.
fn spooled_alerts(dir: &Path) -> Vec<(u64, Key)> {
    if !dir.exists() {
        return Vec::new();
    }
    let limits = SpoolLimits::new(1 << 30, Duration::from_secs(30 * 86_400));
    let spool = Spool::open(dir, limits, FsyncPolicy::default())
        .unwrap_or_else(|e| panic!("opening the spool at {}: {e}", dir.display()));
    spool
        .peek(spool.len())
        .expect("reading the spool")
        .into_iter()
        .filter(|(_, entry)| entry.topic.ends_with("/alert"))
        .map(|(id, entry)| (id, key_of(&entry.payload)))
        .collect()
}

/// The example with its camera sampling several frames a second, so some are in flight
/// whenever the signal comes (`--set` cannot address one camera of the list). Written to `dir`;
/// its relative paths still resolve, the daemon runs from the workspace root.
fn camera_config(dir: &Path) -> std::path::PathBuf {
    let example = std::fs::read_to_string(helmetd_e2e::workspace_root().join(EXAMPLE)).unwrap();
    assert_eq!(
        example.matches(EXAMPLE_FPS).count(),
        1,
        "{EXAMPLE} has one camera at 2 fps"
    );
    let path = dir.join("helmetd.toml");
    std::fs::write(&path, example.replacen(EXAMPLE_FPS, "detect_fps = 4.0", 1)).unwrap();
    path
}

fn result_field(result: &str, key: &str) -> Option<u64> {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_episode_loses_no_alert() {
    let root = TestRoot::new("shutdown_no_loss");
    let broker = Mosquitto::start().expect("starting mosquitto");
    let state = tempfile::tempdir().unwrap();
    let spool_dir = state.path().join("spool");

    let mut options = MqttOptions::new("shutdown-no-loss-watcher", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    let mut peer = Peer::connect(options, format!("{PREFIX}/{NODE}/+/alert")).await;

    let sets = [
        root.arg(),
        format!("node.name={NODE}"),
        format!("mqtt.url={}", broker.url()),
        format!("mqtt.topic_prefix={PREFIX}"),
        format!("mqtt.spool_dir={}", spool_dir.display()),
        r#"mqtt.spool_kinds=["alerts"]"#.into(),
        "mqtt.stats_interval_s=1".into(),
        format!("output.dir={}", state.path().join("out").display()),
        r#"cloud.protocol="none""#.into(),
        "edge.worker.replicas=1".into(),
        "alerts.confirm_frames=1".into(),
        "alerts.min_score=0.3".into(),
        // Only the shutdown may end the episode within the test.
        "alerts.end_after_s=600.0".into(),
    ];
    let mut daemon = start_daemon(&camera_config(state.path()), &sets);

    // 1. An open violation on the broker.
    let mut received: Vec<Publish> = Vec::new();
    let deadline = Instant::now() + FIRST_NEW;
    loop {
        drain(&mut peer, &mut received);
        if received.iter().any(|p| key_of(&p.payload).kind == "new") {
            break;
        }
        assert!(
            daemon.running(),
            "helmetd exited ({:?}) before any `new` alert; log tail:\n{}",
            daemon.exit_status(),
            daemon.tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "no `new` alert on the broker within {FIRST_NEW:?}; log tail:\n{}",
            daemon.tail(40)
        );
        tokio::time::sleep(POLL).await;
    }

    // 2. Frames still flowing: a stats line counting more frames than when the `new` arrived.
    let at_new = frames(&daemon).unwrap_or(0);
    let deadline = Instant::now() + FLOWING;
    while frames(&daemon).unwrap_or(0) <= at_new {
        assert!(
            daemon.running() && Instant::now() < deadline,
            "frames stopped after the `new` (still {at_new} after {FLOWING:?}); log tail:\n{}",
            daemon.tail(40)
        );
        tokio::time::sleep(POLL).await;
    }

    // 3. SIGTERM while the episode is open.
    daemon.send_sigterm();
    let status = wait_exit(&mut daemon, EXIT).await;

    // 4. What the broker still had in hand, until it has been quiet for a while.
    let settle_until = Instant::now() + SETTLE_MAX;
    let mut quiet_since = Instant::now();
    while Instant::now() < settle_until && quiet_since.elapsed() < QUIET {
        if drain(&mut peer, &mut received) > 0 {
            quiet_since = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    let result = result_line(&daemon).await;
    let spooled = spooled_alerts(&spool_dir);

    // 5. Account for every concluded event.
    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!("(a) exit status {status}, not 0"));
    }
    let mut delivered: BTreeMap<Key, usize> = BTreeMap::new();
    for p in &received {
        *delivered.entry(key_of(&p.payload)).or_default() += 1;
    }
    for (key, n) in delivered.iter().filter(|(_, n)| **n > 1) {
        problems.push(format!("(b) the broker delivered {key:?} {n} times"));
    }
    let spooled_keys: BTreeSet<Key> = spooled.iter().map(|(_, k)| k.clone()).collect();
    if spooled_keys.len() != spooled.len() {
        problems.push(format!("(b) the spool holds an event twice: {spooled:?}"));
    }
    let concluded: BTreeSet<Key> = delivered.keys().cloned().chain(spooled_keys).collect();
    let delivered_spool_ids: BTreeSet<u64> = received.iter().filter_map(spool_id_of).collect();
    let both = spooled
        .iter()
        .filter(|(id, _)| delivered_spool_ids.contains(id))
        .count();
    match result.as_deref().and_then(|r| result_field(r, "alerts")) {
        Some(n) if n == concluded.len() as u64 => {}
        Some(n) => problems.push(format!(
            "(b) the daemon concluded {n} alert events; the broker received {} distinct and \
             the spool holds {} ({both} of them both): {} in all",
            delivered.len(),
            spooled.len(),
            concluded.len()
        )),
        None => problems.push(format!(
            "(b) no `RESULT … alerts=N` line on stdout: {:?}",
            daemon.stdout_lines()
        )),
    }
    let opened: BTreeSet<&str> = delivered
        .keys()
        .filter(|k| k.kind == "new")
        .map(|k| k.id.as_str())
        .collect();
    let ended: BTreeSet<&str> = concluded
        .iter()
        .filter(|k| k.kind == "end")
        .map(|k| k.id.as_str())
        .collect();
    let left_open: Vec<&&str> = opened.difference(&ended).collect();
    if !left_open.is_empty() {
        problems.push(format!(
            "(c) episodes opened on the broker without an `end`, delivered or spooled, by the \
             exit: {left_open:?}"
        ));
    }
    eprintln!(
        "{result:?}: the broker received {} distinct alert events, the spool holds {} ({both} \
         of them both); episodes opened {opened:?}, ended {ended:?}",
        delivered.len(),
        spooled.len()
    );
    assert!(
        problems.is_empty(),
        "{}\n\nRESULT: {result:?}\nbroker received: {:?}\nspool holds: {spooled:?}\n\
         daemon logged: {:#?}\nlog tail:\n{}",
        problems.join("\n"),
        received
            .iter()
            .map(|p| (spool_id_of(p), key_of(&p.payload)))
            .collect::<Vec<_>>(),
        logged_alerts(&daemon),
        daemon.tail(30)
    );
}
