//! `helmetd bench idle`: what the daemon costs when nothing happens. A gateway spends most of
//! its life waiting (no camera configured yet, a camera that is down, a quiet night), and a
//! control loop that polls instead of waiting for events burns CPU and wakes the core all the
//! time.
//!
//! `helmetd run` is started as a child process (this executable, or `--helmetd` to measure
//! another build) with a generated config: no MQTT, no cloud, no HTTP endpoint, no output
//! folders, one fixed worker that loads the real edge model. Two scenarios, one after the other:
//!
//! - `no_camera`: no `[[camera]]` at all, as on a freshly flashed gateway.
//! - `silent_camera`: one RTSP camera whose server accepts the connection and never sends a
//!   byte, as a hung camera does (a loopback listener in this process). The daemon sees no frame
//!   and rebuilds the camera's pipeline after each stall timeout, with backoff, which is part of
//!   what waiting costs. A file camera at a low rate would not be idle: the file is decoded in
//!   real time whatever the sampling rate.
//!
//! Once the daemon logged `helmetd running` and its worker `worker ready`, and a few seconds
//! more have passed, the daemon's pid alone (not its worker) is sampled over `--seconds`:
//! CPU time from `/proc/<pid>/stat` (utime + stime, which already sums every thread, the ended
//! ones included), and context switches (voluntary + involuntary, i.e. how often a thread went
//! to sleep or was preempted: the wake-ups) summed over `/proc/<pid>/task/*/status`. Threads
//! that end within the window take their switches with them; how many did is printed.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::unistd::{SysconfVar, sysconf};

use super::child_daemon::ChildDaemon;
use crate::config::DEFAULT_CONFIG;
use crate::supervisor::Layout;

/// The model loaded by a debug-build worker on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// After the worker is ready: its first heartbeats, the daemon's first reconcile rounds.
const SETTLE: Duration = Duration::from_secs(3);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// Connections the silent camera holds open at once; the oldest is closed beyond it.
const SILENT_HELD: usize = 16;
/// Each scenario's cgroup root on a hybrid host, so the bench never meets another daemon's.
const CGROUP_NAME: &str = "helmetd-bench-idle";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchIdleArgs {
    /// The helmetd binary to measure (default: this one), e.g. an older build.
    #[arg(long)]
    pub helmetd: Option<PathBuf>,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NoCamera,
    SilentCamera,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::NoCamera => "no_camera",
            Self::SilentCamera => "silent_camera",
        }
    }
}

/// One scenario's figures.
struct Idle {
    scenario: Scenario,
    wall: Duration,
    cpu: Duration,
    switches: u64,
    threads: usize,
}

impl Idle {
    fn cpu_pct(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64() * 100.0
    }

    fn wakeups_per_s(&self) -> f64 {
        self.switches as f64 / self.wall.as_secs_f64()
    }
}

/// Prints progress and a table; returns `RESULT no_camera_idle_cpu_pct=… no_camera_wakeups_per_s=…
/// silent_camera_idle_cpu_pct=… silent_camera_wakeups_per_s=… scenario=no_camera,silent_camera`.
pub fn run(args: &BenchIdleArgs) -> anyhow::Result<String> {
    let helmetd = match &args.helmetd {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating the helmetd executable")?,
    };
    let window = Duration::from_secs(args.seconds);
    println!(
        "helmetd bench idle: {} (daemon pid only, its worker excluded), {} s per scenario",
        helmetd.display(),
        args.seconds
    );
    let mut results = Vec::new();
    for scenario in [Scenario::NoCamera, Scenario::SilentCamera] {
        let idle = measure_scenario(&helmetd, scenario, window)
            .with_context(|| format!("scenario {}", scenario.name()))?;
        results.push(idle);
    }
    println!(
        "{:<14} {:>8} {:>10} {:>10} {:>12} {:>8}",
        "scenario", "wall s", "cpu s", "cpu %", "wakeups/s", "threads"
    );
    for r in &results {
        println!(
            "{:<14} {:>8.1} {:>10.3} {:>10.2} {:>12.1} {:>8}",
            r.scenario.name(),
            r.wall.as_secs_f64(),
            r.cpu.as_secs_f64(),
            r.cpu_pct(),
            r.wakeups_per_s(),
            r.threads
        );
    }
    let fields: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{0}_idle_cpu_pct={1:.2} {0}_wakeups_per_s={2:.1}",
                r.scenario.name(),
                r.cpu_pct(),
                r.wakeups_per_s()
            )
        })
        .collect();
    let names: Vec<&str> = results.iter().map(|r| r.scenario.name()).collect();
    Ok(format!(
        "RESULT {} scenario={}",
        fields.join(" "),
        names.join(",")
    ))
}

fn measure_scenario(helmetd: &Path, scenario: Scenario, window: Duration) -> anyhow::Result<Idle> {
    let work = std::env::temp_dir().join(format!(
        "helmetd-bench-idle-{}-{}",
        std::process::id(),
        scenario.name()
    ));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = measure_in(helmetd, scenario, window, &work);
    let _ = fs::remove_dir_all(&work);
    result
}

fn measure_in(
    helmetd: &Path,
    scenario: Scenario,
    window: Duration,
    work: &Path,
) -> anyhow::Result<Idle> {
    let camera = match scenario {
        Scenario::NoCamera => None,
        Scenario::SilentCamera => Some(SilentCamera::start()?),
    };
    let mut config = DEFAULT_CONFIG.to_owned();
    if let Some(camera) = &camera {
        // An array of tables may follow the other tables: appended, it is the only camera.
        config.push_str(&format!(
            "\n[[camera]]\nname = \"silent\"\nurl = \"rtsp://127.0.0.1:{}/cam\"\n",
            camera.port
        ));
    }
    let config_path = work.join("helmetd.toml");
    fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let cgroups = private_cgroup_root()?;
    let mut sets = vec![
        "node.name=bench-idle".to_owned(),
        "mqtt.url=\"\"".to_owned(),
        format!("mqtt.spool_dir={}", work.join("spool").display()),
        "cloud.protocol=\"none\"".to_owned(),
        "http.listen=\"\"".to_owned(),
        "output.dir=\"\"".to_owned(),
        "edge.worker.replicas=1".to_owned(),
    ];
    if let Some(root) = &cgroups {
        sets.push(format!("edge.worker.cgroup_root={}", root.display()));
    }

    println!(
        "{}: starting {} run, waiting for its worker",
        scenario.name(),
        helmetd.display()
    );
    let mut daemon = Daemon::start(helmetd, &config_path, &sets)?;
    let measured = daemon
        .wait_ready()
        .and_then(|()| {
            thread::sleep(SETTLE);
            sample_window(&mut daemon, scenario, window)
        })
        .and_then(|idle| {
            let status = daemon.terminate()?;
            anyhow::ensure!(
                status.success(),
                "helmetd exited with {status} after SIGTERM; log tail:\n{}",
                daemon.tail(20)
            );
            Ok(idle)
        });
    drop(daemon);
    drop(camera);
    if let Some(root) = &cgroups {
        remove_cgroup_trees(root);
    }
    measured
}

/// Samples the daemon at the start and end of `window`, printing progress on the way.
fn sample_window(
    daemon: &mut Daemon,
    scenario: Scenario,
    window: Duration,
) -> anyhow::Result<Idle> {
    let clock_ticks = sysconf(SysconfVar::CLK_TCK)?
        .filter(|t| *t > 0)
        .context("sysconf(CLK_TCK)")? as f64;
    let pid = daemon.child.id();
    let first = Sample::take(pid)?;
    let start = Instant::now();
    let mut next_progress = start + PROGRESS_EVERY;
    while start.elapsed() < window {
        thread::sleep(POLL.min(window.saturating_sub(start.elapsed())));
        if !daemon.running()? {
            bail!(
                "helmetd exited while being measured; log tail:\n{}",
                daemon.tail(20)
            );
        }
        if Instant::now() >= next_progress {
            let now = Sample::take(pid)?;
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "{}: {:>4.0} s, cpu {:.2} %, {:.1} wakeups/s so far",
                scenario.name(),
                elapsed,
                (now.cpu_ticks - first.cpu_ticks) as f64 / clock_ticks / elapsed * 100.0,
                now.switches_since(&first).0 as f64 / elapsed
            );
            next_progress += PROGRESS_EVERY;
        }
    }
    let last = Sample::take(pid)?;
    let wall = start.elapsed();
    let (switches, threads_ended) = last.switches_since(&first);
    if threads_ended > 0 {
        println!(
            "{}: {threads_ended} thread(s) ended within the window; their switches after the \
             first sample are not counted",
            scenario.name()
        );
    }
    Ok(Idle {
        scenario,
        wall,
        cpu: Duration::from_secs_f64((last.cpu_ticks - first.cpu_ticks) as f64 / clock_ticks),
        switches,
        threads: last.switches.len(),
    })
}

/// CPU time and per-thread context switches of one process at one moment.
struct Sample {
    /// utime + stime in clock ticks, all threads, ended ones included.
    cpu_ticks: u64,
    /// Voluntary + involuntary switches by thread id.
    switches: HashMap<u32, u64>,
}

impl Sample {
    fn take(pid: u32) -> anyhow::Result<Sample> {
        let cpu_ticks = super::child_daemon::cpu_ticks(pid)?;
        let mut switches = HashMap::new();
        let tasks = format!("/proc/{pid}/task");
        for entry in fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread that ended between read_dir and here has nothing left to count.
            let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let count = status
                .lines()
                .filter_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    matches!(
                        key,
                        "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches"
                    )
                    .then(|| value.trim().parse::<u64>().ok())
                    .flatten()
                })
                .sum();
            switches.insert(tid, count);
        }
        Ok(Sample {
            cpu_ticks,
            switches,
        })
    }

    /// Switches since `earlier` over the threads alive now (a thread new since then counts from
    /// zero), and how many of `earlier`'s threads have ended.
    fn switches_since(&self, earlier: &Sample) -> (u64, usize) {
        let total = self
            .switches
            .iter()
            .map(|(tid, n)| n.saturating_sub(earlier.switches.get(tid).copied().unwrap_or(0)))
            .sum();
        let ended = earlier
            .switches
            .keys()
            .filter(|tid| !self.switches.contains_key(tid))
            .count();
        (total, ended)
    }
}

/// The daemon child with its JSON log collected; SIGKILLed by its pid on drop if still running.
struct Daemon {
    child: ChildDaemon,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(helmetd: &Path, config: &Path, sets: &[String]) -> anyhow::Result<Daemon> {
        let mut child = ChildDaemon::spawn(
            helmetd,
            &["--log-format", "json"],
            config,
            sets,
            Stdio::piped(),
        )?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.take_stderr() {
            let sink = log.clone();
            // Detached: ends when the pipe closes, i.e. when the daemon and its worker are gone.
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        Ok(Daemon { child, log })
    }

    fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.exited()?.is_none())
    }

    fn tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log[log.len().saturating_sub(n)..].join("\n")
    }

    fn logged(&self, message: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["fields"]["message"] == message)
        })
    }

    /// Until the daemon's loop runs and its worker has loaded the model.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !(self.logged("helmetd running") && self.logged("worker ready")) {
            if !self.running()? {
                bail!(
                    "helmetd exited before it was ready; log tail:\n{}",
                    self.tail(20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "helmetd not ready within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.tail(20)
                );
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        match self.child.terminate(EXIT_TIMEOUT)? {
            Some(status) => Ok(status),
            None => bail!(
                "helmetd ignored SIGTERM for {EXIT_TIMEOUT:?}; log tail:\n{}",
                self.tail(20)
            ),
        }
    }
}

/// A loopback "RTSP server" that accepts connections and never answers: a hung camera.
struct SilentCamera {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl SilentCamera {
    fn start() -> anyhow::Result<SilentCamera> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acceptor = thread::Builder::new()
            .name("silent-camera".into())
            .spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if held.len() >= SILENT_HELD {
                                held.remove(0);
                            }
                            held.push(stream);
                        }
                        // Nothing to accept (or out of descriptors): look again shortly.
                        Err(_) => thread::sleep(POLL),
                    }
                }
            })?;
        Ok(SilentCamera {
            port,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for SilentCamera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// On a hybrid host, the bench's own worker cgroup root, so it never clashes with another
/// daemon's lock or sweep; on a pure cgroup2 host the daemon's default (its delegated cgroup).
fn private_cgroup_root() -> anyhow::Result<Option<PathBuf>> {
    Ok(match Layout::detect(Path::new("/sys/fs/cgroup"))? {
        Layout::Hybrid { unified, .. } => Some(unified.join(CGROUP_NAME)),
        Layout::Unified { .. } => None,
    })
}

/// Removes what the daemon left of our cgroup root in every hierarchy, children first. Only
/// empty cgroups can be removed, so a leftover process keeps its directory (and is reported).
fn remove_cgroup_trees(root: &Path) {
    let mut trees = vec![root.to_path_buf()];
    if let Ok(Layout::Hybrid { cpu, memory, .. }) = Layout::detect(Path::new("/sys/fs/cgroup")) {
        trees.extend(cpu.into_iter().chain(memory).map(|m| m.join(CGROUP_NAME)));
    }
    for tree in trees.iter().filter(|t| t.exists()) {
        let mut dirs = Vec::new();
        dirs_below(tree, &mut dirs);
        dirs.push(tree.clone());
        for dir in dirs {
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Every directory below `dir`, children before their parents. cgroup trees are a few levels
/// deep (root/workers/<pool>/<id>).
fn dirs_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs_below(&entry.path(), out);
            out.push(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_count_new_threads_from_zero_and_report_ended_ones() {
        let earlier = Sample {
            cpu_ticks: 0,
            switches: HashMap::from([(1, 10), (2, 5)]),
        };
        let now = Sample {
            cpu_ticks: 0,
            switches: HashMap::from([(1, 15), (3, 4)]),
        };
        assert_eq!(now.switches_since(&earlier), (9, 1));
    }
}
