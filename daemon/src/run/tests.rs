//! The control loop on the fake host: reload, drain, hung workers and crash loops, without root.
//!
//! Real time passes (the loop reads the clock), so the supervisor gets short timeouts; every
//! wait is bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{ControlLoop, Launcher, Probes};
use super::finalize::{Finalize, FinalizeShared};
use super::launcher::NewWorker;
use super::{ConfigOrigin, finalize_shared};
use crate::config::{ConfigSource, DEFAULT_CONFIG};
use crate::supervisor::fake::{FakeHost, FakeLauncher};
use crate::supervisor::{Supervisor, SupervisorConfig};
use crate::telemetry::{Counters, Snapshot, SnapshotReceiver};
use crate::worker::WorkerArgs;

impl Launcher for FakeLauncher {
    fn take_new(&self) -> Vec<NewWorker> {
        Vec::new()
    }

    fn set_template(&mut self, _template: WorkerArgs) {}
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    control_loop: ControlLoop<FakeHost, FakeLauncher>,
    host: FakeHost,
    snapshots: SnapshotReceiver,
    config: PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

/// The embedded default with `replicas` edge workers.
fn config_text(replicas: u32) -> String {
    DEFAULT_CONFIG.replace("\nreplicas = 1\n", &format!("\nreplicas = {replicas}\n"))
}

impl Rig {
    fn new(replicas: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("helmetd.toml");
        std::fs::write(&config, config_text(replicas)).unwrap();
        let origin = ConfigOrigin {
            source: ConfigSource::File(config.clone()),
            overrides: vec![
                // The file sits in a temporary directory; the models stay in the repository.
                format!(
                    "edge.model.path={}",
                    repo("models/helmet_yolov12m_384x640_int8qdq.onnx")
                ),
                format!(
                    "cloud.model={}",
                    repo("models/helmet_yolov12m_640_fp32.onnx")
                ),
                "mqtt.url=".into(),
                "cloud.protocol=none".into(),
                "http.listen=".into(),
            ],
        };
        let cfg = origin.load().expect("the embedded default loads");
        let host = FakeHost::default();
        let supervisor_config = SupervisorConfig {
            heartbeat_timeout: Duration::from_millis(600),
            // Long enough for a one-second snapshot to see a slot in back-off.
            backoff_initial: Duration::from_millis(1500),
            backoff_max: Duration::from_secs(3),
            drain_timeout: Duration::from_millis(500),
            ..SupervisorConfig::default()
        };
        let mut supervisor =
            Supervisor::new(host.clone(), FakeLauncher::new(&host), supervisor_config);
        supervisor
            .startup_sweep()
            .expect("sweep of an empty fake host");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let counters = Arc::new(Counters::default());
        let shared: FinalizeShared =
            finalize_shared(&cfg, &None, &None, &counters, None).expect("finalize settings");
        let finalize = Finalize::new(runtime.handle(), Arc::new(shared));
        let (published, snapshots) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let control_loop = ControlLoop::new(
            origin,
            cfg,
            supervisor,
            dir.path().join("no-cgroup-here"),
            finalize,
            counters,
            published,
            Probes::default(),
        )
        .expect("the loop starts without cameras");
        Rig {
            control_loop,
            host,
            snapshots,
            config,
            _dir: dir,
            _runtime: runtime,
        }
    }

    /// Turns the loop (each turn sleeps until its next timer, at most 200 ms) while the fake
    /// workers live, until `done` holds for the latest snapshot or `WAIT` passes.
    fn until(&mut self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        self.until_reloading(what, false, done)
    }

    fn until_reloading(
        &mut self,
        what: &str,
        mut reload: bool,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        let deadline = Instant::now() + WAIT;
        loop {
            self.host.tick(Instant::now());
            self.control_loop
                .turn(std::mem::take(&mut reload), None)
                .expect("a turn of the loop");
            let latest = self.snapshots.borrow().clone();
            if done(&latest) {
                return latest;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; last snapshot {latest:?}"
            );
        }
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }
}

fn ready(s: &Snapshot) -> usize {
    s.workers_ready()
}

#[test]
fn the_loop_starts_the_configured_workers_and_publishes_snapshots() {
    let mut rig = Rig::new(2);
    let s = rig.until("two workers ready", |s| ready(s) == 2);
    assert_eq!(s.replicas.desired, 2);
    assert_eq!(
        s.status_line().split(", ").nth(1),
        Some("workers 2/2 ready")
    );
    assert_eq!(s.stats_json()["workers_ready"], 2);
}

#[test]
fn a_reload_applies_the_new_replicas_and_a_bad_file_keeps_the_running_config() {
    let mut rig = Rig::new(1);
    rig.until("one worker ready", |s| ready(s) == 1);
    rig.write_config(&config_text(3));
    let s = rig.until_reloading("three workers after the reload", true, |s| ready(s) == 3);
    assert_eq!(s.replicas.desired, 3);
    rig.write_config("this is [not toml");
    let s = rig.until_reloading("a refused reload changes nothing", true, |s| ready(s) == 3);
    assert_eq!(s.replicas.desired, 3);
}

#[test]
fn a_reload_that_changes_the_model_settings_replaces_the_workers() {
    let mut rig = Rig::new(1);
    let s = rig.until("one worker ready", |s| ready(s) == 1);
    let before = s.workers[0].pid;
    rig.write_config(&config_text(1).replace("score_threshold = 0.25", "score_threshold = 0.3"));
    rig.until_reloading("a new worker for the new threshold", true, |s| {
        ready(s) == 1 && s.workers.len() == 1 && s.workers[0].pid != before
    });
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let mut rig = Rig::new(1);
    rig.until("one worker ready", |s| ready(s) == 1);
    let (&pid, _) = rig.host.live().iter().next().expect("a live worker");
    rig.host.hang(pid);
    rig.until("the hung worker replaced", |s| {
        ready(s) == 1 && s.workers[0].pid != Some(pid.as_raw())
    });
    assert!(
        !rig.host.live().contains_key(&pid),
        "the hung process was killed"
    );
}

#[test]
fn a_crash_looping_worker_backs_off_and_recovers() {
    let mut rig = Rig::new(1);
    rig.until("one worker ready", |s| ready(s) == 1);
    rig.host.fail_spawns(3);
    let (&pid, _) = rig.host.live().iter().next().expect("a live worker");
    rig.host.kill9(pid);
    rig.until("the slot in back-off", |s| {
        s.workers
            .iter()
            .any(|w| w.state == crate::telemetry::snapshot::WorkerState::Backoff)
    });
    let s = rig.until("a worker again after the failed starts", |s| ready(s) == 1);
    assert!(s.workers[0].restarts >= 1, "{:?}", s.workers);
}

#[test]
fn stopping_drains_every_worker_and_removes_their_cgroups() {
    let mut rig = Rig::new(2);
    rig.until("two workers ready", |s| ready(s) == 2);
    let host = rig.host.clone();
    // The fake workers exit once drained when time passes for them.
    let ticking = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            host.tick(Instant::now());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (_finalize, workers_max) = rig.control_loop.stop().expect("a clean stop");
    ticking.join().unwrap();
    assert_eq!(workers_max, 2);
    assert!(rig.host.live().is_empty(), "{:?}", rig.host.live());
    let left: Vec<PathBuf> = rig
        .host
        .cgroups()
        .into_iter()
        .filter(|c| c.starts_with(Path::new("workers/edge")))
        .collect();
    assert!(left.is_empty(), "worker cgroups left: {left:?}");
}
