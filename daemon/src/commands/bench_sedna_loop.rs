//! `helmetd bench sedna-loop`: hard frames decided by the big model per minute, and frames
//! finalized per second, for helmetd's joint inference against a Sedna-style synchronous loop
//! on the same machine and the same cloud (issue #18).
//!
//! **The cloud.** `helmetd cloud --sedna-http` in this process: [`sedna_http::serve`] on a
//! loopback port the OS picks, on its own thread and runtime, with `cloud.model` at
//! `cloud.intra_threads`. It runs for all three phases (idle in E).
//!
//! **The camera.** The bundled video from the loopback RTSP server (looping, at the file's own
//! size and rate, as in `helmetd demo`), one mount that each phase connects to in turn, sampled
//! at `--detect-fps`, high enough that the little model, not the sampler, sets the rate.
//!
//! **Phases**, each measured for `--seconds` from its first result (model loads, RTSP connect
//! and the first inference are not counted):
//! - **E**, helmetd edge only: the real daemon ([`Daemon`], one worker process in its cgroup, no
//!   autoscaler), `cloud.protocol = "none"`. Frames/s from the daemon's counters.
//! - **H**, helmetd joint: the same with `cloud.protocol = "sedna-http"` against the cloud above,
//!   with the embedded default's budget, pacing and ask-once. Hard frames the big model decided
//!   (`cloud_answered`: its answer came within `cloud.timeout_ms`) per minute, and frames/s;
//!   and hard frames whose *people* the big model decided (`people_decided_per_min`): those plus
//!   the ones not asked because it had answered about everyone in them (`cloud_already_answered`).
//! - **S**, Sedna's `JointInference.inference` as a loop: take the newest frame, run the little
//!   model in this process, decide hard with the configured rule (IBT 0.9/0.9, Sedna's default),
//!   and if hard POST it as Sedna's JSON body and wait for the answer before the next frame.
//!   Sedna's client has no timeout: the wait is bounded only by [`SEDNA_SAFETY_TIMEOUT`], counted
//!   as a failure. Both H and S send the letterbox content (640×360 for the 720p video), so the
//!   cloud parses the same bodies; Sedna itself would post the 1280×720 frame.
//!
//! Figures: the daemon's counters are read from its snapshot (once a second), each phase's window
//! running from the first snapshot with a result to the first one `--seconds` later; S counts
//! frames finished after its first one, up to the first that ends `--seconds` later.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use helmet_pipelines::detect::Detector;
use helmet_pipelines::ingest::{Camera, CameraSettings};
use helmet_pipelines::output::content_image;
use helmet_pipelines::rtsp_server::{RtspServer, probe_video};
use rand::SeedableRng;

use crate::cloud::sedna_http::{self, SednaServerSettings};
use crate::cloud::service::{cloud_model_spec, load_big_model};
use crate::commands::detect::edge_model_spec;
use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::joint::BigModel;
use crate::joint::protocol::HardExampleMeta;
use crate::joint::sedna_http::{SednaHttpClient, SednaHttpSettings};
use crate::run::{ConfigOrigin, Control, Daemon, DaemonOptions};
use crate::supervisor::Layout;
use crate::telemetry::SnapshotReceiver;
use crate::telemetry::snapshot::CounterSnapshot;

/// The bench's own settings, before `--set`: a big model on one core, as `helmetd demo` runs
/// it on a 2-core machine (the edge worker has the other), and the demo's cloud timeout, which
/// that big model can meet (about a second per frame); no HTTP page, whose port a running demo
/// may hold.
const BENCH_SETTINGS: [&str; 4] = [
    "node.name=bench-sedna-loop",
    "http.listen=",
    "cloud.intra_threads=1",
    "cloud.timeout_ms=2500",
];
/// The camera's mount on the RTSP server and its name in the daemon.
const CAMERA: &str = "cam";
/// The cgroup of the daemon phases' worker, under the cgroup2 mount, unless
/// `edge.worker.cgroup_root` is set.
const CGROUP_NAME: &str = "helmetd-bench-sedna-loop";
/// How often the bench looks at the daemon's snapshot.
const POLL: Duration = Duration::from_millis(50);
/// A progress line this often per phase.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The longest a phase may take to its first result (worker start, model load, RTSP connect on
/// a busy machine).
const FIRST_RESULT_LIMIT: Duration = Duration::from_secs(180);
/// The longest the big model may take to load and warm up.
const CLOUD_LOAD_LIMIT: Duration = Duration::from_secs(300);
/// Sedna's client waits for the big model without a timeout; this bounds the bench, and an
/// exchange that reaches it counts as failed.
const SEDNA_SAFETY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct BenchSednaLoopArgs {
    /// Seconds each phase is measured, from its first result.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Video streamed as the camera (default: the bundled media/helmet-test.mp4).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frames per second the camera samples: high enough that the little model sets the rate.
    #[arg(long, default_value_t = 10.0)]
    pub detect_fps: f64,
    /// Override a setting of every phase and of the cloud, after the bench's own
    /// (`cloud.intra_threads=1`, `cloud.timeout_ms=2500`), e.g. `--set cloud.timeout_ms=1000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl BenchSednaLoopArgs {
    /// The embedded default with the bench's settings and `--set`: the cloud's and the little
    /// model's config, and the base of each daemon phase's.
    pub fn config(&self) -> Result<Config, ConfigError> {
        config::load(ConfigSource::Default, &self.base_overrides())
    }

    fn base_overrides(&self) -> Vec<String> {
        let own = BENCH_SETTINGS.iter().map(|s| (*s).to_owned());
        own.chain(self.overrides.iter().cloned()).collect()
    }
}

/// The three phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    EdgeOnly,
    Joint,
    SednaLoop,
}

impl Phase {
    fn tag(self) -> &'static str {
        match self {
            Phase::EdgeOnly => "E",
            Phase::Joint => "H",
            Phase::SednaLoop => "S",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::EdgeOnly => "helmetd, edge only",
            Phase::Joint => "helmetd, joint (sedna-http)",
            Phase::SednaLoop => "Sedna-style synchronous loop",
        }
    }
}

/// Counts of one phase (or totals at one instant). For S, every hard frame is asked and there is
/// no timeout, budget, pacing or ask-once: those stay 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    frames: u64,
    hard: u64,
    asked: u64,
    /// Hard frames whose final result is the big model's.
    decided: u64,
    late: u64,
    failed: u64,
    paced: u64,
    over_budget: u64,
    already_answered: u64,
}

impl Tally {
    fn from_counters(c: &CounterSnapshot) -> Self {
        Self {
            frames: c.frames,
            hard: c.hard,
            asked: c.cloud_answered + c.cloud_late + c.cloud_failed,
            decided: c.cloud_answered,
            late: c.cloud_late,
            // The breaker's skips are asked of no cloud and fail the frame's question alike.
            failed: c.cloud_failed + c.cloud_skipped,
            paced: c.cloud_paced,
            over_budget: c.cloud_over_budget,
            already_answered: c.cloud_already_answered,
        }
    }

    /// What happened between `earlier` and `self`.
    fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            frames: self.frames.saturating_sub(earlier.frames),
            hard: self.hard.saturating_sub(earlier.hard),
            asked: self.asked.saturating_sub(earlier.asked),
            decided: self.decided.saturating_sub(earlier.decided),
            late: self.late.saturating_sub(earlier.late),
            failed: self.failed.saturating_sub(earlier.failed),
            paced: self.paced.saturating_sub(earlier.paced),
            over_budget: self.over_budget.saturating_sub(earlier.over_budget),
            already_answered: self
                .already_answered
                .saturating_sub(earlier.already_answered),
        }
    }
}

/// A phase's counts over its measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measured {
    phase: Phase,
    seconds: f64,
    tally: Tally,
}

impl Measured {
    fn fps(&self) -> f64 {
        per_second(self.tally.frames, self.seconds)
    }

    fn decided_per_min(&self) -> f64 {
        per_second(self.tally.decided, self.seconds) * 60.0
    }

    /// Hard frames whose people the big model decided: asked and answered in time, or not
    /// asked because it had answered about everyone in them and the little model still sees
    /// them the same (ask once per person). The loop asks every hard frame: its count is
    /// `decided`.
    fn people_decided_per_min(&self) -> f64 {
        per_second(
            self.tally.decided + self.tally.already_answered,
            self.seconds,
        ) * 60.0
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `a ÷ b`, `None` when `b` is 0 (printed `nan`).
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn two_decimals(value: Option<f64>) -> String {
    value.map_or_else(|| "nan".into(), |v| format!("{v:.2}"))
}

fn result_line(edge: &Measured, joint: &Measured, sedna: &Measured) -> String {
    format!(
        "RESULT decided_per_min={:.2} sedna_decided_per_min={:.2} decided_ratio={} people_decided_per_min={:.2} people_decided_ratio={} fps={:.2} edge_only_fps={:.2} fps_ratio={} sedna_fps={:.2}",
        joint.decided_per_min(),
        sedna.decided_per_min(),
        two_decimals(ratio(joint.decided_per_min(), sedna.decided_per_min())),
        joint.people_decided_per_min(),
        two_decimals(ratio(
            joint.people_decided_per_min(),
            sedna.people_decided_per_min()
        )),
        joint.fps(),
        edge.fps(),
        two_decimals(ratio(joint.fps(), edge.fps())),
        sedna.fps(),
    )
}

fn table(rows: &[Measured]) -> String {
    let mut out = format!(
        "  {:<2} {:<29} {:>8} {:>6} {:>6} {:>5} {:>7} {:>11} {:>5} {:>6} {:>5} {:>11} {:>8} {:>7}\n",
        "",
        "phase",
        "frames/s",
        "frames",
        "hard",
        "asked",
        "decided",
        "decided/min",
        "late",
        "failed",
        "paced",
        "over budget",
        "answered",
        "seconds"
    );
    for m in rows {
        let t = &m.tally;
        let _ = writeln!(
            out,
            "  {:<2} {:<29} {:>8.2} {:>6} {:>6} {:>5} {:>7} {:>11.2} {:>5} {:>6} {:>5} {:>11} {:>8} {:>7.1}",
            m.phase.tag(),
            m.phase.label(),
            m.fps(),
            t.frames,
            t.hard,
            t.asked,
            t.decided,
            m.decided_per_min(),
            t.late,
            t.failed,
            t.paced,
            t.over_budget,
            t.already_answered,
            m.seconds
        );
    }
    out.push_str(
        "  (decided: hard frames whose final result is the big model's; answered: not asked, the \
         cloud had answered about everyone in them)",
    );
    out
}

/// Everything the phases share.
struct Bench {
    args: BenchSednaLoopArgs,
    cfg: Config,
    camera_url: String,
    cloud_url: String,
    cgroup_root: PathBuf,
    /// Where the daemon phases' config file goes.
    work: PathBuf,
}

/// Runs the three phases, prints progress and the table, and returns the `RESULT` line. ONNX
/// Runtime must be initialised.
pub fn run(args: &BenchSednaLoopArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.detect_fps > 0.0 && args.detect_fps <= 30.0,
        "--detect-fps {} is outside (0, 30]",
        args.detect_fps
    );
    let cfg = args.config()?;
    let video = args
        .video
        .clone()
        .unwrap_or_else(super::demo::default_video)
        .canonicalize()
        .context("the video to stream")?;
    let probe = probe_video(&video)?;
    let cgroup_root = if cfg.edge.worker.cgroup_root.as_os_str().is_empty() {
        Layout::detect(Path::new("/sys/fs/cgroup"))
            .context("finding the cgroup2 hierarchy for the workers")?
            .unified_mount()
            .join(CGROUP_NAME)
    } else {
        cfg.edge.worker.cgroup_root.clone()
    };
    let created_root = !cgroup_root.exists();

    println!(
        "helmetd bench sedna-loop: {} ({:.0} s, {}x{}) as one looping RTSP camera, {} detect fps, {} s per phase",
        video.display(),
        probe.duration.as_secs_f64(),
        probe.width,
        probe.height,
        args.detect_fps,
        args.seconds
    );
    println!(
        "  edge {} ({} intra-op thread(s)), hard examples by {}; cloud {} ({} intra-op thread(s)), cloud.timeout_ms {}, budget {}/s per camera, ask again after {} s",
        cfg.edge.model.path.display(),
        cfg.edge.model.intra_threads,
        cfg.edge.hard_example_mining.build()?,
        cfg.cloud.model.display(),
        cfg.cloud.intra_threads,
        cfg.cloud.timeout_ms,
        cfg.cloud.budget_per_s,
        cfg.cloud.ask_again_after_s
    );
    let cloud = SednaCloud::start(&cfg)?;
    println!(
        "  cloud: Sedna HTTP on {}, job {:?}; workers' cgroups under {}",
        cloud.addr,
        cfg.sedna.job_name,
        cgroup_root.display()
    );
    let work = std::env::temp_dir().join(format!("{CGROUP_NAME}-{}", std::process::id()));
    let measured = std::fs::create_dir_all(&work)
        .with_context(|| work.display().to_string())
        .and_then(|()| {
            RtspServer::start(&video, &[&format!("/{CAMERA}")])
                .context("starting the loopback RTSP server")
        })
        .and_then(|server| {
            let bench = Bench {
                args: args.clone(),
                camera_url: server.url(&format!("/{CAMERA}")),
                cloud_url: format!("http://{}", cloud.addr),
                cfg,
                cgroup_root: cgroup_root.clone(),
                work: work.clone(),
            };
            let measured = run_phases(&bench);
            drop(server);
            measured
        });
    cloud.stop();
    let _ = std::fs::remove_dir_all(&work);
    if created_root {
        super::bench_surge::remove_cgroup_root(&cgroup_root);
    }
    let [edge, joint, sedna] = measured?;
    println!();
    println!("{}", table(&[edge, joint, sedna]));
    Ok(result_line(&edge, &joint, &sedna))
}

fn run_phases(bench: &Bench) -> anyhow::Result<[Measured; 3]> {
    let (runtime, control) = Control::with_runtime()?;
    let daemon_phase = |phase| {
        run_daemon_phase(bench, phase, &runtime, &control)
            .with_context(|| format!("phase {} ({})", phase.tag(), phase.label()))
    };
    let measured = daemon_phase(Phase::EdgeOnly).and_then(|edge| {
        let joint = daemon_phase(Phase::Joint)?;
        let sedna = run_sedna_loop(bench, &control).context("phase S (Sedna-style loop)")?;
        Ok([edge, joint, sedna])
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    measured
}

/// The daemon phases' config: the embedded default and the one camera, every sampled frame
/// analysed (no motion gate: Sedna's loop has none, and the worker's rate is what is measured).
fn config_text(camera_url: &str, detect_fps: f64) -> String {
    format!(
        "{}\n# ---- added by helmetd bench sedna-loop ----\n\n[[camera]]\nname = \"{CAMERA}\"\nurl = \"{camera_url}\"\ndetect_fps = {detect_fps:?}\n\n[camera.motion]\nenabled = false\n",
        config::DEFAULT_CONFIG
    )
}

/// The bench's settings and `--set`, then what defines the phase: one worker (no `[edge.hpa]`
/// in the file), in the bench's cgroup root, and the cloud protocol.
fn phase_overrides(bench: &Bench, phase: Phase) -> Vec<String> {
    let mut overrides = bench.args.base_overrides();
    overrides.push("edge.worker.replicas=1".into());
    overrides.push(format!(
        "edge.worker.cgroup_root={}",
        bench.cgroup_root.display()
    ));
    match phase {
        Phase::Joint => {
            overrides.push("cloud.protocol=sedna-http".into());
            overrides.push(format!("cloud.url={}", bench.cloud_url));
        }
        Phase::EdgeOnly | Phase::SednaLoop => overrides.push("cloud.protocol=none".into()),
    }
    overrides
}

fn run_daemon_phase(
    bench: &Bench,
    phase: Phase,
    runtime: &tokio::runtime::Runtime,
    control: &Control,
) -> anyhow::Result<Measured> {
    let path = bench.work.join(format!("{}.toml", phase.tag()));
    std::fs::write(&path, config_text(&bench.camera_url, bench.args.detect_fps))
        .with_context(|| path.display().to_string())?;
    let origin = ConfigOrigin {
        source: ConfigSource::File(path),
        overrides: phase_overrides(bench, phase),
    };
    let cfg = origin.load()?;
    println!("  [{}] {}: starting the daemon", phase.tag(), phase.label());
    // Its own control, so the bench can end this phase and still run the next; a signal to the
    // bench ends it too (the watcher passes it on).
    let phase_control = Control::default();
    let daemon = Daemon::start(
        origin,
        cfg,
        runtime.handle(),
        &phase_control,
        DaemonOptions::default(),
    )?;
    let finished = AtomicBool::new(false);
    let watch = Watch {
        phase,
        seconds: f64::from(bench.args.seconds),
        snapshots: daemon.snapshots(),
        phase_control: &phase_control,
        bench_control: control,
        finished: &finished,
    };
    let (summary, window) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch.run());
        let summary = daemon.run(&phase_control, None);
        finished.store(true, Ordering::Release);
        (summary, watcher.join())
    });
    summary?;
    let Ok(window) = window else {
        anyhow::bail!("the bench's watcher thread panicked");
    };
    let window = window?;
    Ok(Measured {
        phase,
        seconds: window.seconds,
        tally: window.tally,
    })
}

/// What a watcher measured: the counts between the first snapshot with a result and the end.
struct Window {
    seconds: f64,
    tally: Tally,
}

/// The thread beside [`Daemon::run`]: reads the snapshots, prints progress, ends the phase.
struct Watch<'a> {
    phase: Phase,
    seconds: f64,
    snapshots: SnapshotReceiver,
    phase_control: &'a Control,
    bench_control: &'a Control,
    finished: &'a AtomicBool,
}

impl Watch<'_> {
    fn run(&self) -> anyhow::Result<Window> {
        let started = Instant::now();
        let mut snapshots = self.snapshots.clone();
        let mut first: Option<(Instant, Tally)> = None;
        let mut last: Option<(Instant, Tally)> = None;
        let mut progress = Instant::now();
        // Bounded by the first-result limit, then by the phase's length.
        while !self.finished.load(Ordering::Acquire) {
            if self.bench_control.is_shutting_down() {
                self.phase_control.shutdown();
                anyhow::bail!("interrupted");
            }
            if snapshots.has_changed().unwrap_or(false) {
                let now = Instant::now();
                let tally = Tally::from_counters(&snapshots.borrow_and_update().counters);
                if first.is_none() && tally.frames > 0 {
                    first = Some((now, tally));
                    progress = now;
                }
                last = Some((now, tally));
            }
            match (first, last) {
                (Some((t0, c0)), Some((t1, c1))) => {
                    let window = Window {
                        seconds: (t1 - t0).as_secs_f64(),
                        tally: c1.since(&c0),
                    };
                    if window.seconds >= self.seconds {
                        self.phase_control.shutdown();
                        return Ok(window);
                    }
                    if progress.elapsed() >= PROGRESS_EVERY {
                        progress = Instant::now();
                        print_progress(self.phase, window.seconds, &window.tally);
                    }
                }
                _ if started.elapsed() > FIRST_RESULT_LIMIT => {
                    self.phase_control.shutdown();
                    anyhow::bail!(
                        "no result within {FIRST_RESULT_LIMIT:?}: the worker did not serve (see the log)"
                    );
                }
                _ => {}
            }
            std::thread::sleep(POLL);
        }
        anyhow::bail!("the daemon stopped before the phase ended (see the log)")
    }
}

fn print_progress(phase: Phase, seconds: f64, t: &Tally) {
    println!(
        "  [{}] {seconds:5.1} s: {} frames ({:.2}/s), hard {}, asked {}, decided by the big model {} ({:.1}/min), late {}, failed {}, paced {}, over budget {}, already answered {}",
        phase.tag(),
        t.frames,
        per_second(t.frames, seconds),
        t.hard,
        t.asked,
        t.decided,
        per_second(t.decided, seconds) * 60.0,
        t.late,
        t.failed,
        t.paced,
        t.over_budget,
        t.already_answered
    );
}

/// Phase S: Sedna's `JointInference.inference` frame after frame, from the same camera.
fn run_sedna_loop(bench: &Bench, control: &Control) -> anyhow::Result<Measured> {
    let cfg = &bench.cfg;
    let phase = Phase::SednaLoop;
    println!("  [{}] {}: starting", phase.tag(), phase.label());
    let spec = edge_model_spec(cfg, None, None);
    let mut little = Detector::load(&spec)?;
    let hem = cfg.edge.hard_example_mining.build()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // Sedna's client: no wait header (Sedna sends none), no deadline of its own.
    let client = SednaHttpClient::new(&SednaHttpSettings {
        base_url: bench.cloud_url.clone(),
        job: cfg.sedna.job_name.clone(),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the Sedna loop's runtime")?;
    let mut settings =
        CameraSettings::new("sedna-loop", &bench.camera_url, spec.input_w, spec.input_h);
    // Sedna's `cv2.VideoCapture.read()` on a live stream: the newest frame when it asks.
    settings.detect_fps = bench.args.detect_fps;
    let camera = Camera::start(settings)?;

    let phase_length = Duration::from_secs(bench.args.seconds.into());
    let started = Instant::now();
    let limit = FIRST_RESULT_LIMIT + phase_length + SEDNA_SAFETY_TIMEOUT;
    let mut first_done: Option<Instant> = None;
    let mut tally = Tally::default();
    let mut progress = Instant::now();
    loop {
        anyhow::ensure!(!control.is_shutting_down(), "interrupted");
        anyhow::ensure!(
            started.elapsed() < limit,
            "the loop did not finish its phase within {limit:?} (camera: {:?})",
            camera.stats().last_error
        );
        if first_done.is_none() && started.elapsed() > FIRST_RESULT_LIMIT {
            anyhow::bail!(
                "no frame within {FIRST_RESULT_LIMIT:?} (camera: {:?})",
                camera.stats().last_error
            );
        }
        let Some(frame) = camera.next_frame(Duration::from_secs(1)) else {
            continue;
        };
        let detections = little.detect(&frame)?;
        let hard = hem.is_hard(&detections, little.num_classes(), &mut rng);
        let answered = hard.then(|| {
            let image = content_image(&frame);
            let meta = HardExampleMeta::for_frame(&frame, &detections);
            let ask = client.ask(&image, &meta);
            match runtime.block_on(async { tokio::time::timeout(SEDNA_SAFETY_TIMEOUT, ask).await })
            {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Sedna loop: the big model failed");
                    false
                }
                Err(_) => {
                    tracing::warn!("Sedna loop: no answer in {SEDNA_SAFETY_TIMEOUT:?}");
                    false
                }
            }
        });
        let now = Instant::now();
        // The clock starts when the first frame is done: its model loads are warm-up.
        let Some(t0) = first_done else {
            first_done = Some(now);
            progress = now;
            continue;
        };
        tally.frames += 1;
        if let Some(answered) = answered {
            tally.hard += 1;
            tally.asked += 1;
            if answered {
                tally.decided += 1;
            } else {
                tally.failed += 1;
            }
        }
        let seconds = (now - t0).as_secs_f64();
        if now - t0 >= phase_length {
            return Ok(Measured {
                phase,
                seconds,
                tally,
            });
        }
        if progress.elapsed() >= PROGRESS_EVERY {
            progress = now;
            print_progress(phase, seconds, &tally);
        }
    }
}

/// `helmetd cloud --sedna-http 127.0.0.1:0` on its own thread and runtime.
struct SednaCloud {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl SednaCloud {
    /// Returns once the big model is loaded and warm and the port bound.
    fn start(cfg: &Config) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, listening) = std::sync::mpsc::sync_channel(1);
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sedna-cloud".into())
            .spawn(move || -> anyhow::Result<()> {
                let (detector, _) = load_big_model(&cloud_model_spec(&cfg))?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let listener =
                        sedna_http::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
                    let _ = bound.send(listener.local_addr()?);
                    sedna_http::serve(
                        listener,
                        SednaServerSettings::from_config(&cfg),
                        detector,
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await?;
                    Ok(())
                })
            })?;
        match listening.recv_timeout(CLOUD_LOAD_LIMIT) {
            Ok(addr) => Ok(Self { addr, stop, thread }),
            // The thread ended without binding: its error says why.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Ok(Err(e)) => Err(e.context("the Sedna HTTP cloud")),
                _ => anyhow::bail!("the Sedna HTTP cloud's thread ended without serving"),
            },
            // Not joined: it is still loading the model. With `stop` dropped it ends as soon
            // as it would serve.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                anyhow::bail!("the big model did not load within {CLOUD_LOAD_LIMIT:?}")
            }
        }
    }

    /// Finishes the requests in progress and joins the thread.
    fn stop(self) {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "Sedna HTTP cloud"),
            Err(_) => tracing::warn!("the Sedna HTTP cloud's thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(phase: Phase, seconds: f64, frames: u64, decided: u64) -> Measured {
        Measured {
            phase,
            seconds,
            tally: Tally {
                frames,
                decided,
                ..Tally::default()
            },
        }
    }

    #[test]
    fn rates_are_per_second_and_per_minute_of_the_window() {
        let m = measured(Phase::Joint, 60.0, 198, 30);
        assert!((m.fps() - 3.3).abs() < 1e-9);
        assert!((m.decided_per_min() - 30.0).abs() < 1e-9);
        let half = measured(Phase::SednaLoop, 30.0, 30, 23);
        assert!((half.decided_per_min() - 46.0).abs() < 1e-9);
        assert_eq!(measured(Phase::EdgeOnly, 0.0, 5, 0).fps(), 0.0);
    }

    #[test]
    fn counts_are_taken_between_two_snapshots() {
        let counters = |frames, answered, late, failed, skipped| CounterSnapshot {
            frames,
            hard: frames / 2,
            cloud_answered: answered,
            cloud_late: late,
            cloud_failed: failed,
            cloud_skipped: skipped,
            cloud_paced: 1,
            ..CounterSnapshot::default()
        };
        let early = Tally::from_counters(&counters(10, 1, 0, 0, 0));
        let late = Tally::from_counters(&counters(40, 6, 2, 1, 3));
        let between = late.since(&early);
        assert_eq!(between.frames, 30);
        assert_eq!(between.hard, 15);
        assert_eq!(between.decided, 5);
        assert_eq!(between.asked, 5 + 2 + 1, "answered, late or failed");
        assert_eq!(between.failed, 1 + 3, "failed and skipped by the breaker");
        assert_eq!(between.paced, 0);
        // Counters never go back; a reordered pair gives zeros, not a wrap-around.
        assert_eq!(early.since(&late).frames, 0);
    }

    #[test]
    fn the_result_line_has_every_key_and_ratio() {
        let edge = measured(Phase::EdgeOnly, 60.0, 200, 0);
        let mut joint = measured(Phase::Joint, 60.0, 190, 40);
        joint.tally.already_answered = 20;
        let sedna = measured(Phase::SednaLoop, 60.0, 60, 20);
        assert_eq!(
            result_line(&edge, &joint, &sedna),
            "RESULT decided_per_min=40.00 sedna_decided_per_min=20.00 decided_ratio=2.00 \
             people_decided_per_min=60.00 people_decided_ratio=3.00 \
             fps=3.17 edge_only_fps=3.33 fps_ratio=0.95 sedna_fps=1.00"
        );
        let nothing = measured(Phase::SednaLoop, 60.0, 0, 0);
        let line = result_line(&edge, &joint, &nothing);
        assert!(line.contains("decided_ratio=nan"), "{line}");
        let table = table(&[edge, joint, sedna]);
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(table.contains("Sedna-style synchronous loop"), "{table}");
    }

    const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

    #[test]
    fn each_daemon_phase_is_one_worker_with_its_cloud_protocol() {
        let args = BenchSednaLoopArgs {
            seconds: 60,
            video: None,
            detect_fps: 10.0,
            // Tests run in daemon/, the models are in the repository's root.
            overrides: vec![
                "cloud.timeout_ms=1500".into(),
                format!("edge.model.path={MODELS}/helmet_yolov12m_384x640_int8qdq.onnx"),
                format!("cloud.model={MODELS}/helmet_yolov12m_640_fp32.onnx"),
            ],
        };
        let bench = Bench {
            cfg: args.config().unwrap(),
            args,
            camera_url: "rtsp://127.0.0.1:8554/cam".into(),
            cloud_url: "http://127.0.0.1:5000".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup/unified/helmetd-bench-sedna-loop"),
            work: PathBuf::new(),
        };
        assert_eq!(bench.cfg.cloud.intra_threads, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phase.toml");
        std::fs::write(&path, config_text(&bench.camera_url, 10.0)).unwrap();
        for (phase, protocol) in [
            (Phase::EdgeOnly, config::CloudProtocol::None),
            (Phase::Joint, config::CloudProtocol::SednaHttp),
        ] {
            let cfg = config::load(
                ConfigSource::File(path.clone()),
                &phase_overrides(&bench, phase),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg.cloud.protocol, protocol);
            assert_eq!(
                cfg.cloud.timeout_ms, 1500,
                "--set comes after the bench's own"
            );
            assert_eq!(cfg.edge.worker.replicas, 1);
            assert!(cfg.edge.hpa.is_none());
            assert_eq!(cfg.cameras.len(), 1);
            assert_eq!(cfg.cameras[0].detect_fps, 10.0);
            assert!(!cfg.cameras[0].motion.enabled);
            assert!(cfg.http.listen.is_empty());
            if phase == Phase::Joint {
                assert_eq!(cfg.cloud.url, "http://127.0.0.1:5000");
            }
        }
    }
}
