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
use super::settings::CgroupFiles;
use super::{ConfigOrigin, finalize_shared};
use crate::autoscaler::FsReader;
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

/// Where the rig's worker cgroups are, inside its temporary directory (the reader's root).
const CGROUP_ROOT: &str = "/cg";

impl Rig {
    fn new(replicas: u32) -> Rig {
        Rig::with_config(&config_text(replicas))
    }

    fn with_config(text: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("helmetd.toml");
        std::fs::write(&config, text).unwrap();
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
            CgroupFiles {
                reader: FsReader::new(dir.path()),
                cgroup_root: PathBuf::from(CGROUP_ROOT),
            },
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

    /// Has every worker slot `0..slots` use one full core from now on, as its cgroup's
    /// `cpu.stat` would show, until the returned guard is dropped.
    fn burn_cpu(&self, slots: u32) -> Burner {
        let pool = self
            ._dir
            .path()
            .join(CGROUP_ROOT.trim_start_matches('/'))
            .join("workers/edge");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !stopping.load(std::sync::atomic::Ordering::Acquire) && start.elapsed() < WAIT {
                let usec = start.elapsed().as_micros();
                for id in 0..slots {
                    let dir = pool.join(id.to_string());
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Burner {
            stop,
            thread: Some(thread),
        }
    }
}

struct Burner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

#[test]
fn a_busy_pool_is_scaled_up_to_its_maximum_and_the_decision_is_in_the_snapshot() {
    let hpa = "\n[edge.hpa]\nminReplicas = 1\nmaxReplicas = 3\nsyncPeriodSeconds = 1\n\
               metrics = [{ type = \"Resource\", resource = { name = \"cpu\", target = \
               { type = \"Utilization\", averageUtilization = 50 } } }]\n";
    let mut rig = Rig::with_config(&format!("{}{hpa}", config_text(1)));
    rig.until("one worker ready", |s| ready(s) == 1);
    // One core used against a request of one core: 100 % against a 50 % target wants twice the
    // workers, and again once they burn too, until the maximum.
    let _burn = rig.burn_cpu(4);
    let s = rig.until("the autoscaler's maximum of 3 workers ready", |s| {
        ready(s) == 3
    });
    assert_eq!(s.replicas.desired, 3, "{:?}", s.replicas);
    let active = s
        .replicas
        .conditions
        .iter()
        .find(|c| c.condition == "ScalingActive");
    assert!(
        active.is_some_and(|c| c.status && c.reason == "ValidMetricFound"),
        "the decision and its conditions reach the snapshot: {:?}",
        s.replicas
    );
}

/// A file camera with a zone and a schedule of `days` all day.
fn camera_config(days: &str) -> String {
    format!(
        "{}\n[[camera]]\nname = \"yard\"\nurl = \"{}\"\n\n[[camera.zone]]\nname = \"scaffold\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]]\n\n[[camera.schedule]]\ndays = [\"{days}\"]\nstart = \"00:00\"\nend = \"24:00\"\n",
        config_text(1),
        repo("media/helmet-test.mp4"),
    )
}

#[test]
fn a_reload_that_changes_only_zones_and_schedule_keeps_the_camera_streaming() {
    use chrono::Datelike;
    let today = chrono::Local::now().weekday();
    let day = |d: chrono::Weekday| d.to_string().to_lowercase();
    let mut rig = Rig::with_config(&camera_config(&day(today)));
    let before = rig.until("the camera streams, in schedule", |s| {
        s.cameras
            .first()
            .is_some_and(|c| c.frames_in > 0 && c.in_schedule)
    });
    let frames_before = before.cameras[0].frames_in;
    // Two days on: never today, whatever the hour.
    rig.write_config(
        &camera_config(&day(today.succ().succ())).replace("0.9, 0.9]]", "0.9, 0.9], [0.1, 0.9]]"),
    );
    let after = rig.until_reloading("off schedule after the reload", true, |s| {
        s.cameras.first().is_some_and(|c| !c.in_schedule)
    });
    // A restarted camera would count its frames from zero again.
    assert!(
        after.cameras[0].frames_in >= frames_before,
        "the camera was restarted: {} frames after, {frames_before} before",
        after.cameras[0].frames_in
    );
}
