//! `helmetd bench surge`: the seed's shift-change scenario, side by side in one invocation.
//!
//! **Profile.** One loopback RTSP camera (baseline), then [`BenchSurgeArgs::surge_cameras`]
//! cameras (the surge: 4× the frames), then one camera again for `--offpeak-s` (a day-like
//! profile: off-peak at least 4× the surge). The bench changes the config
//! file and asks the daemon's [`Control`] for a reload, exactly what SIGHUP does, so the daemon reconciles its cameras while it runs. Every camera streams the
//! same video from one gst-rtsp-server in this process, served at 640×360 and 5 fps so that its
//! encoders stay cheap next to the model; each camera samples `--fps` frames per second. A
//! camera samples on a grid that starts when its stream starts, and real cameras are not
//! phase-locked; cameras added in one reload would all sample the same instants and queue behind
//! each other, so the surge's cameras join one by one, `1 / (fps × cameras)` seconds apart (the
//! surge is complete after less than one sampling period; its start is the first join).
//!
//! **Runs.** The profile runs three times, one after the other, with the real daemon
//! ([`Daemon`] in this process, supervised worker processes in their own cgroups under a
//! dedicated root): autoscaled (`[edge.hpa]` min 1, max = cores, CPU `Utilization`), static at
//! max replicas, static at min replicas.
//!
//! **Figures.** Times are seconds since the run started, on one clock.
//! - `reaction_s`: from the reload that starts the surge to the first result (by the time the
//!   bench sees it) of a worker that did not serve at the surge start: not Ready in the last
//!   snapshot before it, so a new worker or the warm standby thawed. Exact: the daemon's result
//!   observer names the worker that made each result. It includes the new cameras' RTSP connect,
//!   the CPU sampling, the decision, the worker's start or thaw and its first model run.
//!   Cross-checks at the 1 s resolution of the daemon's snapshots: `decided_s` (desired replicas
//!   rose) and `ready_s` (a worker that did not serve at the surge start is Ready, by the same
//!   rule).
//! - p99 frame latency: capture (the frame leaving the camera's decoder) → model result, nearest
//!   rank. Baseline: frames captured in the baseline phase. Whole surge: frames captured from
//!   the surge start to its end. Once scaled: from surge start + the autoscaled run's
//!   `reaction_s` to the surge end, the same window in all three runs.
//! - `p99_ratio`, the cost of elasticity: whole-surge p99 autoscaled ÷ static max
//!   (`p99_ratio_once_scaled`: the same once scaled). `p99_ratio_static_max` and
//!   `_static_min`: that run's once-scaled surge p99 ÷ its own baseline p99, what the surge's
//!   load costs with the workers already there.
//! - The warm standby (autoscaled run): while the bench sees it frozen, its cgroup's `cpu.stat`
//!   and its `VmRSS`: `standby_frozen_s`, `standby_cpu_ms` (CPU used while frozen: 0 expected),
//!   `standby_rss_mb`.
//! - `cpu_ratio`: worker CPU-seconds from baseline start to the profile's end, read from the pool
//!   cgroup's `cpu.stat` `usage_usec` (cgroup2 keeps the usage of removed children in the
//!   parent), autoscaled ÷ static max. `reserved_ratio`: the same for reserved CPU, running
//!   workers × their CPU request, integrated over time — what a scheduler sets aside.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use helmet_pipelines::rtsp_server::{RtspServer, RtspServerOptions, probe_video};

use crate::autoscaler::parse_cpu_stat;
use crate::config::{self, ConfigSource};
use crate::run::{ConfigOrigin, Control, Daemon, DaemonOptions, EDGE_POOL, Inferred};
use crate::supervisor::WORKERS_DIR;
use crate::telemetry::snapshot::WorkerState;
use crate::telemetry::{Snapshot, SnapshotReceiver};

/// The camera of the baseline; the surge adds `cam2`, `cam3`, ….
const BASELINE_CAMERA: &str = "cam1";
/// How often the bench looks at the daemon's snapshot and the pool's CPU counter.
const POLL: Duration = Duration::from_millis(50);
/// What the RTSP server serves: small and slow enough that its encoders cost little.
const SERVED_SIZE: (u32, u32) = (640, 360);
const SERVED_FPS: u32 = 5;
/// Shortest run of ticks a phase must cover before its camera count is checked.
const CAMERA_SETTLE_S: f64 = 5.0;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchSurgeArgs {
    /// Video streamed by every camera (default: the bundled media/helmet-test.mp4).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frames per second each camera samples for detection. 1.0 with the little model at
    /// ≈ 0.3 s per frame: baseline ≈ 0.3 core, the 4× surge ≈ 1.2 cores.
    #[arg(long, default_value_t = 1.0)]
    pub fps: f64,
    /// Cameras during the surge (the baseline has one).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub surge_cameras: u32,
    /// Seconds before the baseline is measured: first worker's start, camera connect.
    #[arg(long, default_value_t = 8)]
    pub warmup: u32,
    /// Seconds of baseline before the surge.
    #[arg(long, default_value_t = 25)]
    pub baseline: u32,
    /// Seconds of surge.
    #[arg(long, default_value_t = 30)]
    pub surge: u32,
    /// Seconds of off-peak baseline after the surge (the autoscaled run scales down in it). A
    /// day-like profile has at least 4× the surge off-peak: the reserved-CPU saving depends on it.
    #[arg(long = "offpeak-s", default_value_t = 120)]
    pub offpeak_s: u32,
    /// maxReplicas of the autoscaled run and the static max (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_replicas: Option<u32>,
    /// CPU Utilization target of the autoscaled run, percent of the worker's CPU request.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub target_utilization: u32,
    /// `behavior.scaleDown.stabilizationWindowSeconds` of the autoscaled run (Kubernetes: 300,
    /// longer than this whole profile).
    #[arg(long, default_value_t = 15)]
    pub scale_down_window: u32,
    /// Where the workers' cgroups go; removed afterwards if the bench created it (default:
    /// helmetd-bench-surge under the cgroup2 mount).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Write the replicas-over-time chart of the three runs here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Autoscaled,
    StaticMax,
    StaticMin,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Autoscaled, Mode::StaticMax, Mode::StaticMin];

    fn label(self) -> &'static str {
        match self {
            Mode::Autoscaled => "autoscaled",
            Mode::StaticMax => "static max",
            Mode::StaticMin => "static min",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Mode::Autoscaled => "#d62728",
            Mode::StaticMax => "#1f77b4",
            Mode::StaticMin => "#2ca02c",
        }
    }
}

/// Phase boundaries in seconds since the run started.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    baseline: f64,
    surge: f64,
    after: f64,
    end: f64,
}

impl Schedule {
    fn new(args: &BenchSurgeArgs) -> Self {
        let baseline = f64::from(args.warmup);
        let surge = baseline + f64::from(args.baseline.max(1));
        let after = surge + f64::from(args.surge.max(1));
        Self {
            baseline,
            surge,
            after,
            end: after + f64::from(args.offpeak_s.max(1)),
        }
    }
}

/// One model result, in seconds since the run started.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    surge_camera: bool,
    captured: f64,
    done: f64,
    /// The supervisor's id of the worker that made it, as in [`Tick::ready`].
    worker: u32,
}

impl Served {
    fn latency(&self) -> f64 {
        self.done - self.captured
    }
}

/// One daemon snapshot, when the bench first saw it.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    at: f64,
    cameras: usize,
    /// Workers with a process, warm standbys not counted (they reserve no CPU).
    running: u32,
    desired: u32,
    /// Ids of the Ready workers.
    ready: Vec<u32>,
}

impl Tick {
    fn new(at: f64, s: &Snapshot) -> Self {
        let ready = s.workers.iter().filter(|w| w.state == WorkerState::Ready);
        Self {
            at,
            cameras: s.cameras.len(),
            running: s.replicas.current,
            desired: s.replicas.desired,
            ready: ready.map(|w| w.id).collect(),
        }
    }
}

/// The pool cgroup's cumulative CPU time, read every [`POLL`].
#[derive(Debug, Default)]
struct CpuTrace {
    /// (seconds since start, usage_usec)
    samples: Vec<(f64, u64)>,
}

impl CpuTrace {
    fn read(&mut self, at: f64, cpu_stat: &Path) {
        if let Some(usec) = std::fs::read_to_string(cpu_stat)
            .ok()
            .and_then(|text| parse_cpu_stat(&text).ok())
        {
            self.samples.push((at, usec));
        }
    }

    /// Usage at `t`, interpolated between the readings around it; a reading within [`POLL`]
    /// × 4 on one side does when the other side has none (the pool is gone after the end).
    fn at(&self, t: f64) -> Option<f64> {
        let after = self.samples.iter().position(|&(at, _)| at >= t);
        let before = match after {
            Some(0) => None,
            Some(i) => Some(self.samples[i - 1]),
            None => self.samples.last().copied(),
        };
        let near = |at: f64| (at - t).abs() <= POLL.as_secs_f64() * 4.0;
        match (before, after.map(|i| self.samples[i])) {
            (Some((t0, u0)), Some((t1, u1))) if t1 > t0 => {
                Some(u0 as f64 + (u1 as f64 - u0 as f64) * (t - t0) / (t1 - t0))
            }
            (Some((at, u)), _) | (None, Some((at, u))) if near(at) => Some(u as f64),
            _ => None,
        }
    }

    /// CPU-seconds between `from` and `to`.
    fn seconds_between(&self, from: f64, to: f64) -> Option<f64> {
        Some((self.at(to)? - self.at(from)?) / 1e6)
    }
}

/// A warm standby's time frozen: its cgroup's CPU counter and its resident memory, read
/// whenever the bench sees it frozen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FrozenSpell {
    first_at: f64,
    last_at: f64,
    first_usage_usec: u64,
    last_usage_usec: u64,
    max_rss_kib: u64,
}

/// Every frozen spell of a run, by worker slot and process.
#[derive(Debug, Default)]
struct FrozenTrace {
    spells: Vec<((u32, i32), FrozenSpell)>,
}

impl FrozenTrace {
    fn read(&mut self, at: f64, snapshot: &Snapshot, workers_dir: &Path) {
        for w in snapshot
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Frozen)
        {
            let Some(pid) = w.pid else { continue };
            let usage =
                std::fs::read_to_string(workers_dir.join(w.id.to_string()).join("cpu.stat"))
                    .ok()
                    .and_then(|text| parse_cpu_stat(&text).ok());
            let rss = resident_kib(pid);
            let (Some(usage), Some(rss)) = (usage, rss) else {
                continue;
            };
            let key = (w.id, pid);
            match self.spells.iter_mut().find(|(k, _)| *k == key) {
                Some((_, spell)) => {
                    spell.last_at = at;
                    spell.last_usage_usec = usage;
                    spell.max_rss_kib = spell.max_rss_kib.max(rss);
                }
                None => self.spells.push((
                    key,
                    FrozenSpell {
                        first_at: at,
                        last_at: at,
                        first_usage_usec: usage,
                        last_usage_usec: usage,
                        max_rss_kib: rss,
                    },
                )),
            }
        }
    }

    /// (seconds frozen, CPU milliseconds used meanwhile, largest resident MiB) over all spells.
    fn totals(&self) -> Option<(f64, f64, f64)> {
        if self.spells.is_empty() {
            return None;
        }
        let spells = self.spells.iter().map(|(_, s)| s);
        Some((
            spells.clone().map(|s| s.last_at - s.first_at).sum(),
            spells
                .clone()
                .map(|s| s.last_usage_usec.saturating_sub(s.first_usage_usec) as f64 / 1e3)
                .sum(),
            spells.map(|s| s.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        ))
    }
}

/// `VmRSS` of a process, in KiB.
fn resident_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one run of the profile left.
struct RunRecord {
    mode: Mode,
    served: Vec<Served>,
    ticks: Vec<Tick>,
    cpu: CpuTrace,
    frozen: FrozenTrace,
    cpu_request: f64,
}

/// Everything the three runs share.
struct Bench {
    args: BenchSurgeArgs,
    schedule: Schedule,
    max_replicas: u32,
    camera_urls: Vec<String>,
    cgroup_root: PathBuf,
    work: PathBuf,
}

/// Prints progress, the table, writes the plot, and returns the `RESULT` line.
pub fn run(args: BenchSurgeArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.fps > 0.0 && args.fps <= 30.0,
        "--fps {} is outside (0, 30]",
        args.fps
    );
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| config::resolve_path(Path::new("media/helmet-test.mp4")))
        .canonicalize()
        .context("the video to stream")?;
    let probe = probe_video(&video)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let max_replicas = args.max_replicas.unwrap_or(cores);
    let cgroup_root = args.cgroup_root.clone().unwrap_or_else(default_cgroup_root);
    let created_root = !cgroup_root.exists();
    let work = std::env::temp_dir().join(format!("helmetd-bench-surge-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;

    let mounts: Vec<String> = (1..=args.surge_cameras)
        .map(|i| format!("/cam{i}"))
        .collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let server = RtspServer::start_with(
        &video,
        RtspServerOptions::new(&mount_refs)
            .width_height(SERVED_SIZE.0, SERVED_SIZE.1)
            .fps(SERVED_FPS),
    )
    .context("starting the loopback RTSP server")?;
    let bench = Bench {
        schedule: Schedule::new(&args),
        max_replicas,
        camera_urls: server.urls(),
        cgroup_root,
        work,
        args,
    };
    let s = &bench.schedule;
    println!(
        "helmetd bench surge: {} ({:.0} s) as RTSP cameras at {}x{} {} fps, {} detect fps each",
        video.display(),
        probe.duration.as_secs_f64(),
        SERVED_SIZE.0,
        SERVED_SIZE.1,
        SERVED_FPS,
        bench.args.fps
    );
    println!(
        "  profile: warm-up {:.0} s, baseline 1 camera {:.0} s, surge {} cameras {:.0} s, baseline {:.0} s; {cores} cores",
        s.baseline,
        s.surge - s.baseline,
        bench.args.surge_cameras,
        s.after - s.surge,
        s.end - s.after
    );
    println!(
        "  runs: autoscaled (min 1, max {max_replicas}, CPU {} % of request, scale-down window {} s), static {max_replicas}, static 1; worker cgroups under {}",
        bench.args.target_utilization,
        bench.args.scale_down_window,
        bench.cgroup_root.display()
    );

    let (runtime, control) = Control::with_runtime()?;
    let mut records = Vec::new();
    let mut failure = None;
    for mode in Mode::ALL {
        match run_profile(&bench, mode, &runtime, &control) {
            Ok(record) => records.push(record),
            Err(e) => {
                failure = Some(e.context(format!("{} run", mode.label())));
                break;
            }
        }
        if control.is_shutting_down() {
            failure = Some(anyhow::anyhow!("interrupted"));
            break;
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    let _ = std::fs::remove_dir_all(&bench.work);
    if created_root {
        remove_cgroup_root(&bench.cgroup_root);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    report(&bench, &records)
}

/// `helmetd-bench-surge` under the cgroup2 mount: `/sys/fs/cgroup/unified` on a hybrid host.
pub(crate) fn default_cgroup_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    let mount = if hybrid.join("cgroup.procs").exists() {
        hybrid
    } else {
        Path::new("/sys/fs/cgroup")
    };
    mount.join("helmetd-bench-surge")
}

/// The root the daemon created, and its cgroup v1 mirrors (hybrid hosts put CPU and memory
/// limits there); `rmdir` only, so a cgroup that still holds anything stays and is reported.
pub(crate) fn remove_cgroup_root(root: &Path) {
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(relative) = root.strip_prefix("/sys/fs/cgroup/unified") {
        for controller in ["cpu", "memory"] {
            dirs.push(Path::new("/sys/fs/cgroup").join(controller).join(relative));
        }
    }
    for dir in dirs.iter().filter(|d| d.exists()) {
        if let Err(e) = std::fs::remove_dir(dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e, "left behind");
        }
    }
}

/// The config of one run: the default, `cameras` cameras and, autoscaled, the HPA.
fn config_text(bench: &Bench, mode: Mode, cameras: usize) -> String {
    let mut text = config::DEFAULT_CONFIG.to_string();
    text.push_str("\n# ---- added by helmetd bench surge ----\n");
    for (i, url) in bench.camera_urls.iter().take(cameras).enumerate() {
        let _ = write!(
            text,
            // Every sampled frame is load: motion gating would skip the video's stiller frames.
            "\n[[camera]]\nname = \"cam{}\"\nurl = \"{url}\"\ndetect_fps = {:?}\n[camera.motion]\nenabled = false\n",
            i + 1,
            bench.args.fps
        );
    }
    if mode == Mode::Autoscaled {
        // Scale up at once (no window, up to 4 workers or 100 % per second); scale down after a
        // short window so the run ends at baseline again.
        let _ = write!(
            text,
            r#"
[edge.hpa]
minReplicas = 1
maxReplicas = {max}
metrics = [{{ type = "Resource", resource = {{ name = "cpu", target = {{ type = "Utilization", averageUtilization = {target} }} }} }}]

[edge.hpa.behavior.scaleUp]
stabilizationWindowSeconds = 0
selectPolicy = "Max"
policies = [{{ type = "Pods", value = 4, periodSeconds = 1 }}, {{ type = "Percent", value = 100, periodSeconds = 1 }}]

[edge.hpa.behavior.scaleDown]
stabilizationWindowSeconds = {window}
selectPolicy = "Max"
policies = [{{ type = "Percent", value = 100, periodSeconds = 15 }}]
"#,
            max = bench.max_replicas,
            target = bench.args.target_utilization,
            window = bench.args.scale_down_window,
        );
    }
    text
}

/// Replaces the file in one step, so a reload never reads half of it.
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

fn run_profile(
    bench: &Bench,
    mode: Mode,
    runtime: &tokio::runtime::Runtime,
    control: &Control,
) -> anyhow::Result<RunRecord> {
    let path = bench
        .work
        .join(format!("{}.toml", mode.label().replace(' ', "-")));
    write_config(&path, &config_text(bench, mode, 1))?;
    let replicas = match mode {
        Mode::StaticMin => 1,
        Mode::Autoscaled | Mode::StaticMax => bench.max_replicas,
    };
    let origin = ConfigOrigin {
        source: ConfigSource::File(path.clone()),
        overrides: vec![
            "node.name=bench-surge".into(),
            "cloud.protocol=none".into(),
            format!("edge.worker.replicas={replicas}"),
            format!("edge.worker.cgroup_root={}", bench.cgroup_root.display()),
        ],
    };
    let cfg = origin.load()?;
    let cpu_request = cfg.edge.worker.resources.requests.cpu.as_f64();

    let served: Arc<Mutex<Vec<Served>>> = Arc::default();
    let start = Instant::now();
    let start_wall = SystemTime::now();
    let options = DaemonOptions {
        result_observer: Some({
            let served = served.clone();
            Arc::new(move |r: &Inferred, worker: u32| {
                let done = start.elapsed().as_secs_f64();
                let captured = match r.frame.capture_time.duration_since(start_wall) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
                served
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Served {
                        surge_camera: &*r.frame.camera != BASELINE_CAMERA,
                        captured,
                        done,
                        worker,
                    });
            })
        }),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(origin, cfg, runtime.handle(), control, options)?;
    let until = start + Duration::from_secs_f64(bench.schedule.end);
    let finished = AtomicBool::new(false);
    let watch = Watch {
        bench,
        mode,
        config: &path,
        start,
        snapshots: daemon.snapshots(),
        control,
        finished: &finished,
    };
    let (summary, watched) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch.run());
        let summary = daemon.run(control, Some(until));
        finished.store(true, Ordering::Release);
        (summary, watcher.join())
    });
    let summary = summary?;
    let (ticks, cpu, frozen) = match watched {
        Ok(watched) => watched?,
        Err(_) => anyhow::bail!("the bench's watcher thread panicked"),
    };
    let served = std::mem::take(&mut *served.lock().unwrap_or_else(PoisonError::into_inner));
    println!(
        "  [{:<10}] done: {} results, {} workers at most",
        mode.label(),
        summary.frames,
        summary.workers_max
    );
    check_run(bench, &ticks, &served)?;
    Ok(RunRecord {
        mode,
        served,
        ticks,
        cpu,
        frozen,
        cpu_request,
    })
}

/// A surge that did not reach the daemon, or workers that never served, would make every
/// figure meaningless.
fn check_run(bench: &Bench, ticks: &[Tick], served: &[Served]) -> anyhow::Result<()> {
    let s = &bench.schedule;
    anyhow::ensure!(
        served
            .iter()
            .any(|r| r.captured >= s.baseline && r.captured < s.surge),
        "no model result in the baseline phase: the workers did not serve (see the log)"
    );
    let most = |from: f64, to: f64| {
        ticks
            .iter()
            .filter(|t| t.at >= from + CAMERA_SETTLE_S && t.at < to)
            .map(|t| t.cameras)
            .max()
    };
    let surge = most(s.surge, s.after);
    let after = most(s.after, s.end);
    anyhow::ensure!(
        surge == Some(bench.args.surge_cameras as usize) && after == Some(1),
        "the daemon ran {surge:?} camera(s) in the surge and {after:?} after it, not {} and 1: \
         camera changes on reload are not applied",
        bench.args.surge_cameras
    );
    Ok(())
}

/// The thread beside `run::run`: drives the phases and records snapshots and CPU.
struct Watch<'a> {
    bench: &'a Bench,
    mode: Mode,
    config: &'a Path,
    start: Instant,
    snapshots: SnapshotReceiver,
    control: &'a Control,
    finished: &'a AtomicBool,
}

impl Watch<'_> {
    fn run(&self) -> anyhow::Result<(Vec<Tick>, CpuTrace, FrozenTrace)> {
        let s = &self.bench.schedule;
        let surge = self.bench.args.surge_cameras as usize;
        // The surge's cameras join a fraction of a sampling period apart (see the module docs).
        let stagger = 1.0 / self.bench.args.fps / surge.max(1) as f64;
        let mut phases = vec![(s.baseline, "baseline", 1, false)];
        phases.extend((2..=surge).map(|cameras| {
            let name = if cameras == 2 { "surge" } else { "surge, +1" };
            (
                s.surge + (cameras - 2) as f64 * stagger,
                name,
                cameras,
                true,
            )
        }));
        phases.push((s.after, "baseline again", 1, true));
        let pool_dir = self.bench.cgroup_root.join(WORKERS_DIR).join(EDGE_POOL);
        let cpu_stat = pool_dir.join("cpu.stat");
        let mut ticks: Vec<Tick> = Vec::new();
        let mut cpu = CpuTrace::default();
        let mut frozen = FrozenTrace::default();
        let mut snapshots = self.snapshots.clone();
        let mut next = 0;
        while !self.finished.load(Ordering::Acquire) {
            let at = self.start.elapsed().as_secs_f64();
            if snapshots.has_changed().unwrap_or(false) {
                let snapshot: Arc<Snapshot> = snapshots.borrow_and_update().clone();
                ticks.push(Tick::new(at, &snapshot));
                frozen.read(at, &snapshot, &pool_dir);
            }
            cpu.read(at, &cpu_stat);
            if let Some(&(when, name, cameras, reload)) = phases.get(next)
                && at >= when
            {
                if reload {
                    write_config(self.config, &config_text(self.bench, self.mode, cameras))?;
                    self.control.reload();
                }
                let (ready, desired) = ticks.last().map_or((0, 0), |t| (t.ready.len(), t.desired));
                println!(
                    "  [{:<10}] {at:6.1} s  {name:<14} {cameras} camera(s); workers ready {ready}, desired {desired}; host load {}",
                    self.mode.label(),
                    host_load()
                );
                next += 1;
            }
            std::thread::sleep(POLL);
        }
        Ok((ticks, cpu, frozen))
    }
}

/// The host's 1-minute load average, as context for the figures: other work on the machine
/// takes CPU from the workers.
fn host_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The figures of one run, over the bench's windows.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    baseline_p99_ms: Option<f64>,
    /// Once scaled: from surge start + the autoscaled run's reaction.
    surge_p99_ms: Option<f64>,
    /// Over the whole surge, scaling included: what elasticity costs.
    whole_surge_p99_ms: Option<f64>,
    baseline_frames: usize,
    surge_frames: usize,
    /// Results per second in the surge window (offered: cameras × fps).
    surge_fps: f64,
    cpu_s: Option<f64>,
    reserved_core_s: f64,
    most_replicas: u32,
}

impl Figures {
    fn p99_ratio(&self) -> Option<f64> {
        Some(self.surge_p99_ms? / self.baseline_p99_ms?)
    }
}

fn figures(record: &RunRecord, schedule: &Schedule, settle: f64) -> Figures {
    let latencies = |from: f64, to: f64| -> Vec<f64> {
        record
            .served
            .iter()
            .filter(|r| r.captured >= from && r.captured < to)
            .map(|r| r.latency() * 1e3)
            .collect()
    };
    let baseline = latencies(schedule.baseline, schedule.surge);
    let surge_from = (schedule.surge + settle).min(schedule.after);
    let surge = latencies(surge_from, schedule.after);
    Figures {
        baseline_frames: baseline.len(),
        surge_frames: surge.len(),
        surge_fps: surge.len() as f64 / (schedule.after - surge_from).max(1e-9),
        baseline_p99_ms: p99(baseline),
        surge_p99_ms: p99(surge),
        whole_surge_p99_ms: p99(latencies(schedule.surge, schedule.after)),
        cpu_s: record.cpu.seconds_between(schedule.baseline, schedule.end),
        reserved_core_s: running_seconds(&record.ticks, schedule.baseline, schedule.end)
            * record.cpu_request,
        most_replicas: record.ticks.iter().map(|t| t.running).max().unwrap_or(0),
    }
}

/// Nearest-rank 99th percentile.
fn p99(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    super::nearest_rank(&values, 0.99)
}

/// ∫ running workers dt over [from, to): each snapshot's count holds until the next one.
fn running_seconds(ticks: &[Tick], from: f64, to: f64) -> f64 {
    ticks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let until = ticks.get(i + 1).map_or(to, |n| n.at);
            let span = until.min(to) - t.at.max(from);
            f64::from(t.running) * span.max(0.0)
        })
        .sum()
}

/// The first result at or after `from` of a worker not in `serving` (see the module docs).
fn new_worker_serving(served: &[Served], from: f64, serving: &[u32]) -> Option<f64> {
    served
        .iter()
        .filter(|r| r.done >= from && !serving.contains(&r.worker))
        .map(|r| r.done)
        .min_by(f64::total_cmp)
}

/// The autoscaled run's reaction, from the surge start: (decided, ready, serving), each `None`
/// when it did not happen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reaction {
    /// The surge's first frame: a surge camera's first capture (its RTSP connect and first
    /// decoded frame are in it). The scaling's own reaction is from here.
    load_s: Option<f64>,
    decided_s: Option<f64>,
    ready_s: Option<f64>,
    serving_s: Option<f64>,
}

fn reaction(record: &RunRecord, schedule: &Schedule) -> Reaction {
    let surge = schedule.surge;
    let before = record.ticks.iter().rev().find(|t| t.at < surge);
    let after = || record.ticks.iter().filter(|t| t.at >= surge);
    let desired = before.map_or(0, |t| t.desired);
    // A thawed standby had a process all along: new is what did not serve at the surge start.
    let serving: &[u32] = before.map_or(&[], |t| &t.ready);
    Reaction {
        load_s: record
            .served
            .iter()
            .filter(|f| f.surge_camera && f.captured >= surge)
            .map(|f| f.captured - surge)
            .min_by(f64::total_cmp),
        decided_s: after().find(|t| t.desired > desired).map(|t| t.at - surge),
        ready_s: after()
            .find(|t| t.ready.iter().any(|id| !serving.contains(id)))
            .map(|t| t.at - surge),
        serving_s: new_worker_serving(&record.served, surge, serving).map(|t| t - surge),
    }
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "nan".to_string(), |v| format!("{v:.decimals$}"))
}

fn report(bench: &Bench, records: &[RunRecord]) -> anyhow::Result<String> {
    let s = &bench.schedule;
    let autoscaled = records
        .iter()
        .find(|r| r.mode == Mode::Autoscaled)
        .context("no autoscaled run")?;
    let reaction = reaction(autoscaled, s);
    let settle = reaction.serving_s.unwrap_or(0.0);
    let all: Vec<(Mode, Figures)> = records
        .iter()
        .map(|r| (r.mode, figures(r, s, settle)))
        .collect();
    let of = |mode: Mode| all.iter().find(|(m, _)| *m == mode).map(|(_, f)| f);
    let cpu_ratio = |mode: Mode| Some(of(mode)?.cpu_s? / of(Mode::StaticMax)?.cpu_s?);
    let reserved_ratio =
        |mode: Mode| Some(of(mode)?.reserved_core_s / of(Mode::StaticMax)?.reserved_core_s);
    let p99_ratio = |mode: Mode| of(mode)?.p99_ratio();
    let elasticity = |p99: fn(&Figures) -> Option<f64>| {
        Some(p99(of(Mode::Autoscaled)?)? / p99(of(Mode::StaticMax)?)?)
    };
    let p99_cost = elasticity(|f| f.whole_surge_p99_ms);
    let p99_cost_once_scaled = elasticity(|f| f.surge_p99_ms);
    let standby = autoscaled.frozen.totals();

    println!();
    println!(
        "  autoscaled reaction from the surge start: the surge cameras' first frame at {} s, desired replicas rose at {} s, the new worker Ready at {} s (1 s snapshots), its first result at {} s",
        fmt(reaction.load_s, 2),
        fmt(reaction.decided_s, 1),
        fmt(reaction.ready_s, 1),
        fmt(reaction.serving_s, 2)
    );
    println!(
        "  surge window for p99: {:.1}–{:.1} s (surge start + reaction to surge end); offered {:.1} frames/s",
        s.surge + settle,
        s.after,
        f64::from(bench.args.surge_cameras) * bench.args.fps
    );
    println!(
        "  {:<10}  {:>7}  {:>16}  {:>16}  {:>9}  {:>8}  {:>11}  {:>9}  {:>15}  {:>9}",
        "run",
        "workers",
        "baseline p99 ms",
        "surge p99 ms",
        "p99 ratio",
        "surge/s",
        "worker CPU-s",
        "CPU ratio",
        "reserved core-s",
        "reserved"
    );
    for (mode, f) in &all {
        println!(
            "  {:<10}  {:>7}  {:>10} ({:>3})  {:>10} ({:>3})  {:>9}  {:>8.2}  {:>11}  {:>9}  {:>15.1}  {:>9}",
            mode.label(),
            f.most_replicas,
            fmt(f.baseline_p99_ms, 0),
            f.baseline_frames,
            fmt(f.surge_p99_ms, 0),
            f.surge_frames,
            fmt(f.p99_ratio(), 2),
            f.surge_fps,
            fmt(f.cpu_s, 1),
            fmt(cpu_ratio(*mode), 2),
            f.reserved_core_s,
            fmt(reserved_ratio(*mode), 2),
        );
    }
    println!("  (in parentheses: frames in the window; ratios of CPU are to the static max run)");
    println!(
        "  cost of elasticity: surge p99 autoscaled ÷ static max = {} over the whole surge ({} ÷ {} ms), {} once scaled",
        fmt(p99_cost, 2),
        fmt(of(Mode::Autoscaled).and_then(|f| f.whole_surge_p99_ms), 0),
        fmt(of(Mode::StaticMax).and_then(|f| f.whole_surge_p99_ms), 0),
        fmt(p99_cost_once_scaled, 2),
    );
    match standby {
        Some((seconds, cpu_ms, rss_mb)) => println!(
            "  warm standby (autoscaled run): frozen {seconds:.1} s in all, {cpu_ms:.1} ms of CPU meanwhile (its cgroup's cpu.stat), {rss_mb:.0} MiB resident"
        ),
        None => println!("  warm standby (autoscaled run): never seen frozen"),
    }

    if let Some(path) = &bench.args.plot {
        std::fs::write(path, replica_svg(records, s, bench.max_replicas, reaction))
            .with_context(|| path.display().to_string())?;
        println!("  replicas over time: {}", path.display());
    }
    Ok(format!(
        "RESULT load_s={} decided_s={} ready_s={} p99_ratio_static_max={} p99_ratio_static_min={} reserved_ratio={} cpu_ratio_static_min={} p99_ratio_once_scaled={} standby_frozen_s={} standby_cpu_ms={} standby_rss_mb={} reaction_s={} p99_ratio={} cpu_ratio={}",
        fmt(reaction.load_s, 2),
        fmt(reaction.decided_s, 1),
        fmt(reaction.ready_s, 1),
        fmt(p99_ratio(Mode::StaticMax), 3),
        fmt(p99_ratio(Mode::StaticMin), 3),
        fmt(reserved_ratio(Mode::Autoscaled), 3),
        fmt(cpu_ratio(Mode::StaticMin), 3),
        fmt(p99_cost_once_scaled, 3),
        fmt(standby.map(|t| t.0), 1),
        fmt(standby.map(|t| t.1), 1),
        fmt(standby.map(|t| t.2), 0),
        fmt(reaction.serving_s, 2),
        fmt(p99_cost, 3),
        fmt(cpu_ratio(Mode::Autoscaled), 3),
    ))
}

/// Ready workers over time for every run, as step lines over the phases.
fn replica_svg(records: &[RunRecord], s: &Schedule, max_replicas: u32, r: Reaction) -> String {
    const W: f64 = 820.0;
    const H: f64 = 340.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 150.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 46.0;
    let y_max = f64::from(max_replicas + 1);
    let x = |t: f64| LEFT + (t / s.end).clamp(0.0, 1.0) * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - (v / y_max) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">helmetd bench surge: ready workers over time</text>\n"
    );
    let bands = [
        (0.0, s.baseline, "warm-up", "#f4f4f4"),
        (s.baseline, s.surge, "baseline", "#ffffff"),
        (s.surge, s.after, "surge", "#fde2e2"),
        (s.after, s.end, "baseline", "#ffffff"),
    ];
    for (from, to, name, fill) in bands {
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"none\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{name}</text>",
            x(from),
            x(to) - x(from),
            H - TOP - BOTTOM,
            (x(from) + x(to)) / 2.0,
            TOP + 14.0
        );
    }
    for v in 0..=max_replicas + 1 {
        let v = f64::from(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    let step = if s.end > 200.0 { 30 } else { 10 };
    for t in (0..=s.end as u32).step_by(step) {
        let t = f64::from(t);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            x(t),
            H - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the daemon started</text>\n\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">ready workers</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        (TOP + H - BOTTOM) / 2.0
    );
    if let Some(serving) = r.serving_s {
        let at = x(s.surge + serving);
        let _ = writeln!(
            svg,
            "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#d62728\" stroke-dasharray=\"2 3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">added worker serving: +{serving:.1} s</text>",
            H - BOTTOM,
            at + 4.0,
            TOP + 30.0
        );
    }
    // Lines that would coincide are shifted a little, so all three stay visible.
    for (i, record) in records.iter().enumerate() {
        let shift = (i as f64 - 1.0) * 0.04;
        let mut points = String::new();
        let mut previous: Option<f64> = None;
        for t in &record.ticks {
            let v = t.ready.len() as f64 + shift;
            if let Some(p) = previous {
                let _ = write!(points, "{:.1},{:.1} ", x(t.at), y(p));
            }
            let _ = write!(points, "{:.1},{:.1} ", x(t.at), y(v));
            previous = Some(v);
        }
        let colour = record.mode.colour();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            points.trim_end(),
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            TOP + 20.0 + 18.0 * i as f64,
            TOP + 20.0 + 18.0 * i as f64,
            W - RIGHT + 38.0,
            TOP + 24.0 + 18.0 * i as f64,
            record.mode.label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(captured: f64, done: f64, worker: u32) -> Served {
        Served {
            surge_camera: false,
            captured,
            done,
            worker,
        }
    }

    fn tick(at: f64, ready: &[u32], desired: u32) -> Tick {
        Tick {
            at,
            cameras: 1,
            running: ready.len() as u32,
            desired,
            ready: ready.to_vec(),
        }
    }

    fn args() -> BenchSurgeArgs {
        BenchSurgeArgs {
            video: None,
            fps: 1.0,
            surge_cameras: 4,
            warmup: 8,
            baseline: 25,
            surge: 35,
            offpeak_s: 30,
            max_replicas: Some(2),
            target_utilization: 50,
            scale_down_window: 15,
            cgroup_root: None,
            plot: None,
        }
    }

    #[test]
    fn p99_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(p99(v), Some(198.0));
        assert_eq!(p99(vec![5.0, 1.0, 3.0]), Some(5.0));
        assert_eq!(p99(Vec::new()), None);
    }

    #[test]
    fn the_first_result_of_a_worker_not_serving_before_counts() {
        // Worker 0 serves throughout, one frame every 0.31 s until 3.79.
        let mut results: Vec<Served> = (0..10)
            .map(|i| served(f64::from(i) * 0.2, 1.0 + f64::from(i) * 0.31, 0))
            .collect();
        assert_eq!(new_worker_serving(&results, 0.0, &[0]), None);
        // Recorded out of `done` order: the earliest result counts, not the first recorded.
        results.push(served(2.95, 3.4, 2));
        results.push(served(2.9, 3.2, 1));
        results.push(served(3.1, 3.5, 1));
        assert_eq!(new_worker_serving(&results, 2.0, &[0]), Some(3.2));
        // Worker 1 served at the surge start: worker 2's first result.
        assert_eq!(new_worker_serving(&results, 2.0, &[0, 1]), Some(3.4));
        // Results before the surge start do not count.
        assert_eq!(new_worker_serving(&results, 3.45, &[0]), Some(3.5));
        assert_eq!(new_worker_serving(&results, 3.6, &[0]), None);
        // No worker serving at the start (no snapshot before it): any result is a new worker's.
        let first = new_worker_serving(&results, 1.5, &[]).unwrap();
        assert!((first - 1.62).abs() < 1e-9, "{first}");
    }

    #[test]
    fn reaction_counts_only_workers_new_since_the_surge() {
        let s = Schedule::new(&args());
        assert_eq!(s.surge, 33.0);
        let record = RunRecord {
            mode: Mode::Autoscaled,
            served: vec![
                // Worker 1 finished its last frame before it became the warm standby.
                served(31.0, 31.5, 1),
                served(33.5, 34.0, 0),
                Served {
                    surge_camera: true,
                    ..served(34.9, 35.5, 0)
                },
                // The thawed standby's first result.
                Served {
                    surge_camera: true,
                    ..served(34.2, 35.9, 1)
                },
            ],
            ticks: vec![
                tick(31.0, &[0, 1], 2),
                tick(32.0, &[0], 1),
                tick(33.4, &[0], 1),
                tick(34.4, &[0], 2),
                tick(35.4, &[0, 1], 2),
            ],
            cpu: CpuTrace::default(),
            frozen: FrozenTrace::default(),
            cpu_request: 1.0,
        };
        let r = reaction(&record, &s);
        assert!(
            (r.load_s.unwrap() - 1.2).abs() < 1e-9,
            "the first surge capture"
        );
        assert!((r.decided_s.unwrap() - 1.4).abs() < 1e-9);
        assert!((r.ready_s.unwrap() - 2.4).abs() < 1e-9);
        let serving = r.serving_s.unwrap();
        assert!((serving - 2.9).abs() < 1e-9, "{serving}");
    }

    #[test]
    fn reserved_time_integrates_running_workers() {
        let ticks = vec![
            tick(0.0, &[0], 1),
            tick(10.0, &[0, 1], 2),
            tick(20.0, &[0], 1),
        ];
        assert_eq!(running_seconds(&ticks, 5.0, 30.0), 5.0 + 20.0 + 10.0);
        assert_eq!(running_seconds(&ticks, 12.0, 15.0), 6.0);
    }

    #[test]
    fn cpu_is_interpolated_between_readings() {
        let cpu = CpuTrace {
            samples: vec![(1.0, 1_000_000), (2.0, 3_000_000), (3.0, 3_500_000)],
        };
        assert_eq!(cpu.seconds_between(1.5, 3.0), Some(1.5));
        // Just past the last reading (the pool is removed at shutdown): the last one stands.
        assert_eq!(cpu.at(3.1), Some(3_500_000.0));
        assert_eq!(cpu.at(9.0), None);
        assert_eq!(cpu.at(0.0), None);
    }

    #[test]
    fn the_autoscaled_config_is_a_valid_daemon_config() {
        let bench = Bench {
            args: args(),
            schedule: Schedule::new(&args()),
            max_replicas: 2,
            camera_urls: (1..=4)
                .map(|i| format!("rtsp://127.0.0.1:8554/cam{i}"))
                .collect(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup/unified/helmetd-bench-surge"),
            work: PathBuf::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        for (mode, cameras) in [(Mode::Autoscaled, 4), (Mode::StaticMin, 1)] {
            let path = dir.path().join("surge.toml");
            write_config(&path, &config_text(&bench, mode, cameras)).unwrap();
            // Tests run in daemon/, the model is in the repository's root.
            let model = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/helmet_yolov12m_384x640_int8qdq.onnx"
            );
            let overrides = [
                "cloud.protocol=none".into(),
                format!("edge.model.path={model}"),
            ];
            let cfg = config::load(ConfigSource::File(path), &overrides)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg.cameras.len(), cameras);
            assert_eq!(cfg.cameras[0].detect_fps, 1.0);
            assert!(!cfg.cameras[0].motion.enabled);
            let hpa = cfg.edge.hpa;
            assert_eq!(hpa.is_some(), mode == Mode::Autoscaled);
            if let Some(hpa) = hpa {
                assert_eq!(hpa.max_replicas, 2);
                let down = hpa.behavior.unwrap().scale_down.unwrap();
                assert_eq!(down.stabilization_window_seconds, Some(15));
            }
        }
    }

    #[test]
    fn the_plot_has_one_line_per_run() {
        let s = Schedule::new(&args());
        let records: Vec<RunRecord> = Mode::ALL
            .iter()
            .map(|&mode| RunRecord {
                mode,
                served: Vec::new(),
                ticks: vec![tick(1.0, &[0], 1), tick(40.0, &[0, 1], 2)],
                cpu: CpuTrace::default(),
                frozen: FrozenTrace::default(),
                cpu_request: 1.0,
            })
            .collect();
        let reaction = Reaction {
            load_s: Some(0.8),
            decided_s: Some(1.0),
            ready_s: Some(2.0),
            serving_s: Some(2.5),
        };
        let svg = replica_svg(&records, &s, 2, reaction);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("static min") && svg.contains("+2.5 s"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
