//! `helmetd bench footprint`: where a gateway's memory goes (issue #19), and what starting one
//! costs in time.
//!
//! The real `helmetd run` (this executable, or `--helmetd` for another build) runs as a child
//! process, once per phase, with a generated config: the embedded default plus `[[camera]]`
//! tables pointing at a loopback RTSP server in this process that serves the bundled video
//! (1280×720, as a real camera would send it: the daemon's decoder buffers scale with the
//! picture), no MQTT, no cloud, no output folders, `/status` on a free loopback port, worker
//! cgroups under a root of the bench's own.
//!
//! - **daemon, 1 camera** and **daemon, N cameras** (`--cameras`, default 4): once every camera
//!   has delivered a frame and `--daemon-seconds` more have passed, `VmRSS` and `VmHWM` of the
//!   daemon's pid (its worker is another process and not counted), and for one camera its
//!   PSS and private pages (`/proc/<pid>/smaps_rollup`: `daemon_pss_mb`, `daemon_private_mb`):
//!   RSS counts the shared libraries' page-cache pages whole. Every camera is decoded by
//!   `--decoder` (`[[camera]] decoder`). The config cannot run
//!   without a worker (`edge.worker.replicas` is 1–64), so one worker runs at the cameras'
//!   default `detect_fps`: that is the smallest daemon a gateway runs. `per_camera_mb` =
//!   (RSS with N − RSS with 1) ÷ (N − 1). `decode_cpu_ms`: the N-camera daemon's CPU time
//!   over those seconds per frame its cameras decoded (decoding is most of what it does).
//! - **1 camera, 1 worker**: `cold_start_s` from spawning the daemon to the first analysed
//!   frame (`/status` `counters.frames` ≥ 1, polled every 50 ms): process start, worker spawn
//!   and model load, RTSP connect, first decode and inference. Then `--worker-seconds` of work
//!   at `detect_fps` = `--detect-fps` without motion gating (every sampled frame reaches the
//!   model, so the worker is the limit): `fps` = frames analysed per second over that window,
//!   `worker_rss_mb` / `worker_hwm_mb` / `worker_pss_mb` of the worker's pid at its end (the
//!   worker maps the daemon's own executable: their text is one copy in the page cache, counted
//!   whole in each RSS), `worker_cpu_ms` its CPU time per analysed frame: on a machine shared
//!   with other work, frames/s follows the load, CPU time per frame much less.
//!
//! Each phase also prints the largest mappings of each measured process by resident size
//! (`/proc/<pid>/smaps`): which library, heap or anonymous arena holds the memory.
//! Sizes are MiB (1024 × 1024 bytes), printed with one decimal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use helmet_pipelines::rtsp_server::RtspServer;
use nix::unistd::{SysconfVar, sysconf};

use super::bench_surge::{default_cgroup_root, remove_cgroup_root};
use super::child_daemon::{ChildDaemon, cpu_ticks};
use super::demo::{default_video, free_loopback_port};
use crate::config::{DEFAULT_CONFIG, Decoder};
use crate::http::{StatusReport, fetch_status};
use crate::telemetry::snapshot::WorkerState;

/// `/status` is polled this often while waiting for the first frame: the cold start's resolution.
const POLL: Duration = Duration::from_millis(50);
/// A debug-build worker loading the model on a busy 2-core machine, plus the RTSP connect.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(180);
/// The daemon drains its worker and closes its cameras on SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Mappings printed per process.
const TOP_MAPPINGS: usize = 6;
const CGROUP_NAME: &str = "helmetd-bench-footprint";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchFootprintArgs {
    /// The helmetd binary to measure (default: this one), e.g. a build with other ONNX Runtime
    /// session options.
    #[arg(long)]
    pub helmetd: Option<PathBuf>,
    /// Seconds the cameras stream before the daemon's memory is read.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub daemon_seconds: u64,
    /// Seconds the worker works before its memory and frame rate are read.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub worker_seconds: u64,
    /// Cameras of the second daemon phase (what each further camera adds is measured against 1).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=16))]
    pub cameras: u64,
    /// The worker phase camera's `detect_fps`: above what the worker manages, so it is the limit.
    #[arg(long, default_value_t = 10.0)]
    pub detect_fps: f64,
    /// Video streamed by the loopback RTSP server (default: the bundled test video).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Every camera's `decoder`.
    #[arg(long, value_enum, default_value_t = Decoder::Libav)]
    pub decoder: Decoder,
}

/// The memory of one process: resident and peak resident from `/proc/<pid>/status`, and from
/// `/proc/<pid>/smaps_rollup` what of it is the process's own. RSS counts every shared library
/// page whole, though the page cache holds it once for every process mapping it; PSS divides
/// each page by the processes sharing it; private pages are what ending the process frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
    pss_kb: u64,
    private_kb: u64,
}

impl Memory {
    fn read(pid: u32) -> anyhow::Result<Memory> {
        let read =
            |path: String| fs::read_to_string(&path).with_context(|| format!("reading {path}"));
        let status = read(format!("/proc/{pid}/status"))?;
        let rollup = read(format!("/proc/{pid}/smaps_rollup"))?;
        parse_memory(&status, &rollup)
            .with_context(|| format!("/proc/{pid}: no VmRSS, VmHWM, Pss or Private_* lines"))
    }

    fn rss_mb(self) -> f64 {
        mib(self.rss_kb)
    }

    fn hwm_mb(self) -> f64 {
        mib(self.hwm_kb)
    }

    fn pss_mb(self) -> f64 {
        mib(self.pss_kb)
    }

    fn private_mb(self) -> f64 {
        mib(self.private_kb)
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// `VmRSS` and `VmHWM` from the text of `/proc/<pid>/status` (`VmRSS:\t  1234 kB`), `Pss`,
/// `Private_Clean` and `Private_Dirty` from that of `/proc/<pid>/smaps_rollup`; `None` when one
/// is missing, as for a zombie.
fn parse_memory(status: &str, rollup: &str) -> Option<Memory> {
    let field = |text: &str, name: &str| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?.trim();
            value.strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kb: field(status, "VmRSS")?,
        hwm_kb: field(status, "VmHWM")?,
        pss_kb: field(rollup, "Pss")?,
        private_kb: field(rollup, "Private_Clean")? + field(rollup, "Private_Dirty")?,
    })
}

/// Resident kB by mapping in the text of `/proc/<pid>/smaps`, largest first: a file's mappings
/// summed under its name, `[heap]`-style names kept, nameless (anonymous) ones as `[anon]`.
fn rss_by_mapping(smaps: &str) -> Vec<(String, u64)> {
    let mut sums: HashMap<String, u64> = HashMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if first == "Rss:" {
            let kb = fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *sums.entry(current.clone()).or_default() += kb;
        } else if first.contains('-') && !first.ends_with(':') {
            // A header: address perms offset dev inode [pathname].
            let path = fields.nth(4).unwrap_or("[anon]");
            current = Path::new(path)
                .file_name()
                .map_or(path.to_owned(), |n| n.to_string_lossy().into_owned());
        }
    }
    let mut sums: Vec<(String, u64)> = sums.into_iter().filter(|(_, kb)| *kb > 0).collect();
    sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sums
}

/// One line of the largest mappings of `pid`, or why there is none (smaps needs the same user
/// or root).
fn top_mappings(pid: u32) -> String {
    match fs::read_to_string(format!("/proc/{pid}/smaps")) {
        Ok(smaps) => rss_by_mapping(&smaps)
            .iter()
            .take(TOP_MAPPINGS)
            .map(|(name, kb)| format!("{name} {:.1}", mib(*kb)))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(smaps: {e})"),
    }
}

/// (RSS with `cameras` cameras − RSS with one) per added camera.
fn per_camera_mb(one: Memory, many: Memory, cameras: u64) -> f64 {
    (many.rss_mb() - one.rss_mb()) / (cameras.max(2) - 1) as f64
}

/// Frames per second between two readings of `counters.frames`.
fn frames_per_s(frames_before: u64, frames_after: u64, elapsed: Duration) -> f64 {
    frames_after.saturating_sub(frames_before) as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// CPU time of a process over a window, and the frames it handled in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuWindow {
    cpu: Duration,
    frames: u64,
}

impl CpuWindow {
    fn ms_per_frame(self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.frames.max(1) as f64
    }
}

/// Reads a process's CPU time at the start of a window and, through `end`, at its end.
struct CpuMeter {
    pid: u32,
    ticks: u64,
    frames: u64,
    tick: Duration,
}

impl CpuMeter {
    fn start(pid: u32, frames: u64) -> anyhow::Result<CpuMeter> {
        let per_second = sysconf(SysconfVar::CLK_TCK)?
            .filter(|t| *t > 0)
            .context("sysconf(CLK_TCK)")?;
        Ok(CpuMeter {
            pid,
            ticks: cpu_ticks(pid)?,
            frames,
            tick: Duration::from_secs(1) / u32::try_from(per_second)?,
        })
    }

    fn end(&self, frames: u64) -> anyhow::Result<CpuWindow> {
        let ticks = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        Ok(CpuWindow {
            cpu: self.tick * u32::try_from(ticks)?,
            frames: frames.saturating_sub(self.frames),
        })
    }
}

/// Frames decoded so far by all of the daemon's cameras.
fn frames_in(status: &StatusReport) -> u64 {
    status.snapshot.cameras.iter().map(|c| c.frames_in).sum()
}

/// What the bench found, for the table and the RESULT line.
struct Figures {
    decoder: Decoder,
    daemon_one: Memory,
    daemon_many: Memory,
    cameras: u64,
    decode: CpuWindow,
    worker: Memory,
    worker_cpu: CpuWindow,
    cold_start: Duration,
    fps: f64,
}

impl Figures {
    fn result_line(&self) -> String {
        format!(
            "RESULT worker_rss_mb={:.1} daemon_rss_mb={:.1} per_camera_mb={:.1} cold_start_s={:.1} \
             fps={:.1} daemon_hwm_mb={:.1} worker_hwm_mb={:.1} cameras={} worker_cpu_ms={:.1} \
             decode_cpu_ms={:.2} daemon_pss_mb={:.1} daemon_private_mb={:.1} worker_pss_mb={:.1} \
             decoder={}",
            self.worker.rss_mb(),
            self.daemon_one.rss_mb(),
            per_camera_mb(self.daemon_one, self.daemon_many, self.cameras),
            self.cold_start.as_secs_f64(),
            self.fps,
            self.daemon_one.hwm_mb(),
            self.worker.hwm_mb(),
            self.cameras,
            self.worker_cpu.ms_per_frame(),
            self.decode.ms_per_frame(),
            self.daemon_one.pss_mb(),
            self.daemon_one.private_mb(),
            self.worker.pss_mb(),
            self.decoder,
        )
    }
}

/// Prints progress, returns `RESULT worker_rss_mb=… daemon_rss_mb=… per_camera_mb=…
/// cold_start_s=… fps=… daemon_hwm_mb=… worker_hwm_mb=… cameras=… worker_cpu_ms=…
/// decode_cpu_ms=… daemon_pss_mb=… daemon_private_mb=… decoder=…`.
pub fn run(args: &BenchFootprintArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.detect_fps > 0.0 && args.detect_fps <= 30.0,
        "--detect-fps {} is outside (0, 30]",
        args.detect_fps
    );
    let helmetd = match &args.helmetd {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating the helmetd executable")?,
    };
    let video = args
        .video
        .clone()
        .unwrap_or_else(default_video)
        .canonicalize()
        .context("the video to stream")?;
    // A root of the bench's own, so it never meets another daemon's lock or sweep.
    let cgroup_root = default_cgroup_root().with_file_name(CGROUP_NAME);
    let created_root = !cgroup_root.exists();
    let work = std::env::temp_dir().join(format!("helmetd-bench-footprint-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mounts: Vec<String> = (1..=args.cameras).map(|i| format!("/cam{i}")).collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let result = RtspServer::start(&video, &mount_refs)
        .context("starting the loopback RTSP server")
        .and_then(|server| {
            println!(
                "helmetd bench footprint: {} as up to {} RTSP camera(s) decoded by {}; {} run, \
                 worker cgroups under {}",
                video.display(),
                args.cameras,
                args.decoder,
                helmetd.display(),
                cgroup_root.display()
            );
            let bench = Bench {
                helmetd: &helmetd,
                work: &work,
                cgroup_root: &cgroup_root,
                urls: server.urls(),
                decoder: args.decoder,
            };
            measure(&bench, args)
        });
    let _ = fs::remove_dir_all(&work);
    if created_root {
        remove_cgroup_root(&cgroup_root);
    }
    let figures = result?;
    println!(
        "daemon, 1 camera:   RSS {:6.1} MiB, peak {:6.1} MiB; PSS {:.1} MiB, private {:.1} MiB",
        figures.daemon_one.rss_mb(),
        figures.daemon_one.hwm_mb(),
        figures.daemon_one.pss_mb(),
        figures.daemon_one.private_mb()
    );
    println!(
        "daemon, {} cameras:  RSS {:6.1} MiB, peak {:6.1} MiB ({:+.1} MiB per added camera), \
         {:.2} ms CPU per decoded frame",
        figures.cameras,
        figures.daemon_many.rss_mb(),
        figures.daemon_many.hwm_mb(),
        per_camera_mb(figures.daemon_one, figures.daemon_many, figures.cameras),
        figures.decode.ms_per_frame()
    );
    println!(
        "worker:             RSS {:6.1} MiB, peak {:6.1} MiB, PSS {:.1} MiB, {:.1} frames/s, \
         {:.1} ms CPU per frame; cold start {:.2} s",
        figures.worker.rss_mb(),
        figures.worker.hwm_mb(),
        figures.worker.pss_mb(),
        figures.fps,
        figures.worker_cpu.ms_per_frame(),
        figures.cold_start.as_secs_f64()
    );
    Ok(figures.result_line())
}

/// What every phase shares.
struct Bench<'a> {
    helmetd: &'a Path,
    work: &'a Path,
    cgroup_root: &'a Path,
    urls: Vec<String>,
    /// Every camera's `decoder`.
    decoder: Decoder,
}

fn measure(bench: &Bench, args: &BenchFootprintArgs) -> anyhow::Result<Figures> {
    let settle = Duration::from_secs(args.daemon_seconds);
    let (daemon_one, _) = daemon_phase(bench, 1, settle).context("phase daemon, 1 camera")?;
    let cameras = usize::try_from(args.cameras)?;
    let (daemon_many, decode) = daemon_phase(bench, cameras, settle)
        .with_context(|| format!("phase daemon, {cameras} cameras"))?;
    let (cold_start, fps, worker, worker_cpu) = worker_phase(
        bench,
        args.detect_fps,
        Duration::from_secs(args.worker_seconds),
    )
    .context("phase 1 camera, 1 worker")?;
    Ok(Figures {
        decoder: args.decoder,
        daemon_one,
        daemon_many,
        cameras: args.cameras,
        decode,
        worker,
        worker_cpu,
        cold_start,
        fps,
    })
}

/// The daemon's memory once `cameras` cameras stream, `settle` after each delivered a frame,
/// and its CPU time over `settle`.
fn daemon_phase(
    bench: &Bench,
    cameras: usize,
    settle: Duration,
) -> anyhow::Result<(Memory, CpuWindow)> {
    let label = format!("daemon, {cameras} camera(s)");
    println!("{label}: starting helmetd run");
    let mut daemon = DaemonChild::start(bench, cameras, None, &label)?;
    let streaming = daemon.wait_for("every camera's first frame", |s| {
        s.snapshot.cameras.len() == cameras && s.snapshot.cameras.iter().all(|c| c.frames_in > 0)
    })?;
    let meter = CpuMeter::start(daemon.pid(), frames_in(&streaming))?;
    println!(
        "{label}: cameras streaming, measuring in {} s",
        settle.as_secs()
    );
    daemon.wait(settle)?;
    let memory = Memory::read(daemon.pid())?;
    let cpu = meter.end(frames_in(&daemon.status()?))?;
    println!(
        "{label}: RSS {:.1} MiB, peak {:.1} MiB (PSS {:.1}, private {:.1}), {:.2} ms CPU per \
         decoded frame; largest mappings (MiB): {}",
        memory.rss_mb(),
        memory.hwm_mb(),
        memory.pss_mb(),
        memory.private_mb(),
        cpu.ms_per_frame(),
        top_mappings(daemon.pid())
    );
    daemon.stop()?;
    Ok((memory, cpu))
}

/// The pid of a ready worker in `/status`.
fn ready_worker_pid(status: &StatusReport) -> anyhow::Result<u32> {
    status
        .snapshot
        .workers
        .iter()
        .find(|w| w.state == WorkerState::Ready)
        .and_then(|w| w.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .with_context(|| {
            format!(
                "no ready worker with a pid in /status: {:?}",
                status.snapshot.workers
            )
        })
}

/// Cold start, then frames/s, the worker's memory after `window` of work and its CPU time in
/// that window.
fn worker_phase(
    bench: &Bench,
    detect_fps: f64,
    window: Duration,
) -> anyhow::Result<(Duration, f64, Memory, CpuWindow)> {
    let label = "1 camera, 1 worker";
    println!("{label}: starting helmetd run, detect_fps {detect_fps}");
    let mut daemon = DaemonChild::start(bench, 1, Some(detect_fps), label)?;
    let first = daemon.wait_for("the first analysed frame", |s| {
        s.snapshot.counters.frames >= 1
    })?;
    let cold_start = daemon.started.elapsed();
    println!(
        "{label}: first analysed frame after {:.2} s, measuring for {} s",
        cold_start.as_secs_f64(),
        window.as_secs()
    );
    let meter = CpuMeter::start(ready_worker_pid(&first)?, first.snapshot.counters.frames)?;
    let start = Instant::now();
    daemon.wait(window)?;
    let last = daemon.status()?;
    let elapsed = start.elapsed();
    let fps = frames_per_s(
        first.snapshot.counters.frames,
        last.snapshot.counters.frames,
        elapsed,
    );
    let worker_pid = ready_worker_pid(&last)?;
    anyhow::ensure!(
        worker_pid == meter.pid,
        "the worker was replaced while being measured (pid {} → {worker_pid})",
        meter.pid
    );
    let worker_cpu = meter.end(last.snapshot.counters.frames)?;
    let worker = Memory::read(worker_pid)?;
    let daemon_memory = Memory::read(daemon.pid())?;
    println!(
        "{label}: {fps:.1} frames/s, worker {:.1} ms CPU per frame; worker RSS {:.1} MiB, peak \
         {:.1} MiB (PSS {:.1}, private {:.1}); largest mappings (MiB): {}",
        worker_cpu.ms_per_frame(),
        worker.rss_mb(),
        worker.hwm_mb(),
        worker.pss_mb(),
        worker.private_mb(),
        top_mappings(worker_pid)
    );
    println!(
        "{label}: daemon RSS {:.1} MiB, peak {:.1} MiB",
        daemon_memory.rss_mb(),
        daemon_memory.hwm_mb()
    );
    daemon.stop()?;
    Ok((cold_start, fps, worker, worker_cpu))
}

/// `helmetd run` as a child with its log in a file; SIGKILLed by its pid when dropped running.
struct DaemonChild {
    child: ChildDaemon,
    started: Instant,
    log: PathBuf,
    address: String,
    label: String,
}

impl DaemonChild {
    /// The default config plus the first `cameras` cameras: with `detect_fps`, at that rate
    /// and without motion gating; else as the default camera is.
    fn start(
        bench: &Bench,
        cameras: usize,
        detect_fps: Option<f64>,
        label: &str,
    ) -> anyhow::Result<DaemonChild> {
        let mut config = DEFAULT_CONFIG.to_owned();
        config.push_str("\n# ---- added by helmetd bench footprint ----\n");
        for (i, url) in bench.urls.iter().take(cameras).enumerate() {
            let _ = write!(
                config,
                "\n[[camera]]\nname = \"cam{}\"\nurl = \"{url}\"\ndecoder = \"{}\"\n",
                i + 1,
                bench.decoder
            );
            if let Some(fps) = detect_fps {
                // Without the motion gate, which keeps the slideshow's still frames from the
                // model: every sampled frame reaches the worker, so the worker is the limit.
                let _ = writeln!(
                    config,
                    "detect_fps = {fps:?}\n\n[camera.motion]\nenabled = false"
                );
            }
        }
        let config_path = bench.work.join("helmetd.toml");
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let log = bench.work.join("helmetd.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let sets = [
            "node.name=bench-footprint".to_owned(),
            "mqtt.url=\"\"".to_owned(),
            format!("mqtt.spool_dir={}", bench.work.join("spool").display()),
            "cloud.protocol=\"none\"".to_owned(),
            format!("http.listen=\"{address}\""),
            "output.dir=\"\"".to_owned(),
            format!("edge.worker.cgroup_root={}", bench.cgroup_root.display()),
        ];
        let started = Instant::now();
        let child = ChildDaemon::spawn(
            bench.helmetd,
            &[],
            &config_path,
            &sets,
            Stdio::from(log_file),
        )?;
        Ok(DaemonChild {
            child,
            started,
            log,
            address,
            label: label.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the daemon's log, for an error message.
    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.exited()? {
            bail!("helmetd exited with {status}; log tail:\n{}", self.tail());
        }
        Ok(())
    }

    fn status(&mut self) -> anyhow::Result<StatusReport> {
        self.ensure_running()?;
        fetch_status(&self.address).with_context(|| format!("/status; log tail:\n{}", self.tail()))
    }

    /// Polls `/status` until `done` holds (a daemon still starting has no `/status` yet).
    fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&StatusReport) -> bool,
    ) -> anyhow::Result<StatusReport> {
        let deadline = Instant::now() + FIRST_FRAME_TIMEOUT;
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        loop {
            self.ensure_running()?;
            let status = fetch_status(&self.address).ok();
            if let Some(status) = status.filter(|s| done(s)) {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no {what} within {FIRST_FRAME_TIMEOUT:?}; log tail:\n{}",
                    self.tail()
                );
            }
            if now >= next_progress {
                println!(
                    "{}: waiting for {what} ({:.0} s)",
                    self.label,
                    self.started.elapsed().as_secs_f64()
                );
                next_progress += PROGRESS_EVERY;
            }
            thread::sleep(POLL);
        }
    }

    /// Sleeps `duration`, failing as soon as the daemon exits.
    fn wait(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        while let Some(left) = end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            self.ensure_running()?;
            thread::sleep(left.min(Duration::from_millis(200)));
        }
        self.ensure_running()
    }

    /// SIGTERM by pid, a bounded wait, SIGKILL if it is ignored; a clean exit is required.
    fn stop(mut self) -> anyhow::Result<ExitStatus> {
        match self.child.terminate(EXIT_TIMEOUT)? {
            Some(status) => {
                anyhow::ensure!(
                    status.success(),
                    "helmetd exited with {status} after SIGTERM; log tail:\n{}",
                    self.tail()
                );
                Ok(status)
            }
            // Dropping the child kills it.
            None => bail!(
                "helmetd ignored SIGTERM for {EXIT_TIMEOUT:?}; killed; log tail:\n{}",
                self.tail()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\thelmetd\nVmPeak:\t  912340 kB\nVmSize:\t  901232 kB\n\
                          VmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t   10240 kB\n";

    const ROLLUP: &str = "55d0c0a00000-7ffc8f5ff000 ---p 00000000 00:00 0 [rollup]\n\
                          Rss:               30720 kB\nPss:               20480 kB\n\
                          Pss_Anon:          10240 kB\nShared_Clean:      15360 kB\n\
                          Private_Clean:      2048 kB\nPrivate_Dirty:     10240 kB\n";

    fn memory(rss_mb: u64, hwm_mb: u64) -> Memory {
        Memory {
            rss_kb: rss_mb * 1024,
            hwm_kb: hwm_mb * 1024,
            pss_kb: 0,
            private_kb: 0,
        }
    }

    #[test]
    fn status_gives_rss_and_peak_and_the_rollup_what_is_shared() {
        let m = parse_memory(STATUS, ROLLUP).unwrap();
        assert_eq!(
            m,
            Memory {
                rss_kb: 30720,
                hwm_kb: 40960,
                pss_kb: 20480,
                private_kb: 12288,
            }
        );
        assert_eq!(
            (m.rss_mb(), m.hwm_mb(), m.pss_mb(), m.private_mb()),
            (30.0, 40.0, 20.0, 12.0)
        );
    }

    #[test]
    fn status_without_memory_lines_is_none() {
        // A zombie's status has no Vm* lines; RssAnon must not be taken for VmRSS.
        assert_eq!(
            parse_memory("Name:\thelmetd\nState:\tZ (zombie)\n", ROLLUP),
            None
        );
        assert_eq!(parse_memory("VmRSS:\t 1 kB\n", ROLLUP), None);
        assert_eq!(
            parse_memory("VmRSSx:\t 1 kB\nVmHWM:\t 2 kB\n", ROLLUP),
            None
        );
        // Pss_Anon is not Pss, and both private kinds are needed.
        assert_eq!(
            parse_memory(STATUS, "Pss_Anon:\t 1 kB\nPrivate_Clean:\t 1 kB\n"),
            None
        );
        assert_eq!(
            parse_memory(STATUS, "Pss:\t 1 kB\nPrivate_Dirty:\t 1 kB\n"),
            None
        );
    }

    #[test]
    fn per_camera_is_the_difference_over_the_added_cameras() {
        let one = memory(30, 0);
        let four = memory(60, 0);
        assert_eq!(per_camera_mb(one, four, 4), 10.0);
        assert_eq!(per_camera_mb(one, four, 2), 30.0);
        assert_eq!(per_camera_mb(four, one, 4), -10.0);
    }

    #[test]
    fn cpu_per_frame_is_cpu_time_over_frames() {
        let window = |ms, frames| CpuWindow {
            cpu: Duration::from_millis(ms),
            frames,
        };
        assert_eq!(window(1000, 50).ms_per_frame(), 20.0);
        // No frame: the whole time, rather than a division by zero.
        assert_eq!(window(30, 0).ms_per_frame(), 30.0);
    }

    #[test]
    fn frame_rate_is_frames_over_seconds() {
        assert_eq!(frames_per_s(3, 33, Duration::from_secs(15)), 2.0);
        assert_eq!(frames_per_s(5, 5, Duration::from_secs(1)), 0.0);
        assert_eq!(frames_per_s(5, 3, Duration::ZERO), 0.0);
    }

    #[test]
    fn smaps_sums_resident_memory_by_file_largest_first() {
        let smaps = "\
55d0c0a00000-55d0c0c00000 r-xp 00000000 08:01 123 /usr/lib/libonnxruntime.so.1.32.0
Size:               2048 kB
Rss:                1024 kB
55d0c0c00000-55d0c0d00000 rw-p 00200000 08:01 123 /usr/lib/libonnxruntime.so.1.32.0
Rss:                 512 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                2000 kB
7f0000100000-7f0000200000 rw-p 00000000 00:00 0 [heap]
Rss:                 100 kB
VmFlags: rd wr mr mw me ac sd
7f0000200000-7f0000300000 r--p 00000000 08:01 9 /usr/bin/helmetd
Rss:                   0 kB
";
        assert_eq!(
            rss_by_mapping(smaps),
            vec![
                ("[anon]".to_owned(), 2000),
                ("libonnxruntime.so.1.32.0".to_owned(), 1536),
                ("[heap]".to_owned(), 100),
            ]
        );
    }

    #[test]
    fn the_result_line_has_every_key_with_one_decimal() {
        let figures = Figures {
            decoder: Decoder::Openh264,
            daemon_one: Memory {
                pss_kb: 25 * 1024,
                private_kb: 12 * 1024,
                ..memory(30, 32)
            },
            daemon_many: memory(45, 46),
            cameras: 4,
            decode: CpuWindow {
                cpu: Duration::from_millis(1500),
                frames: 600,
            },
            worker: Memory {
                pss_kb: 90 * 1024,
                ..memory(100, 110)
            },
            worker_cpu: CpuWindow {
                cpu: Duration::from_millis(15_000),
                frames: 80,
            },
            cold_start: Duration::from_millis(2345),
            fps: 5.56,
        };
        assert_eq!(
            figures.result_line(),
            "RESULT worker_rss_mb=100.0 daemon_rss_mb=30.0 per_camera_mb=5.0 cold_start_s=2.3 \
             fps=5.6 daemon_hwm_mb=32.0 worker_hwm_mb=110.0 cameras=4 worker_cpu_ms=187.5 \
             decode_cpu_ms=2.50 daemon_pss_mb=25.0 daemon_private_mb=12.0 worker_pss_mb=90.0 \
             decoder=openh264"
        );
    }
}
