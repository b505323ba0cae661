//! `helmetd run` end to end: the real binary, the real model, real cgroups. What an operator
//! relies on: a killed worker is replaced at once, a killed daemon takes its workers with it
//! and the next start sweeps what is left, SIGHUP scales the pool (and refuses a broken file),
//! SIGTERM drains and cleans up, and no "ghost instance" ever survives any of it.
//!
//! Needs root and a writable cgroup2 hierarchy at /sys/fs/cgroup/unified (hybrid host);
//! elsewhere each test fails and says why. Every daemon gets its own cgroup root
//! `helmetd-test-<pid>-<n>`, which a guard kills and removes (v1 cpu/memory mirrors included)
//! even when the test fails. The tests kill only the daemons they started and processes found
//! in their own cgroup root. They run one at a time: each daemon runs 1–3 model workers.
//!
//! Worker pids and readiness come from the logs (`--log-format json`): the supervisor's
//! "worker started" / "worker ended unexpectedly" / "worker stopped" lines (pool, id, pid) and
//! the worker's own "worker ready" line (workers log in the daemon's format, JSON here).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use common::{TestRoot, dirs_below, pids_in};

const EXAMPLE: &str = "config/examples/local-file.toml";
const POOL: &str = "edge";
/// The example's worker count, replaced when a test writes its own config.
const EXAMPLE_REPLICAS: &str = "replicas = 2";

/// One daemon (with its model workers) at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// The test's cgroup root.

trait SlotDir {
    fn slot_dir(&self, id: u32) -> PathBuf;
}

impl SlotDir for TestRoot {
    fn slot_dir(&self, id: u32) -> PathBuf {
        self.path().join("workers").join(POOL).join(id.to_string())
    }
}

/// Directories below `tree`, relative to it.
fn relative_dirs(tree: &Path) -> BTreeSet<String> {
    let mut all = Vec::new();
    dirs_below(tree, &mut all);
    all.iter()
        .filter_map(|d| d.strip_prefix(tree).ok())
        .map(|d| d.display().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A process as of when we learnt its pid: the start time tells it from a recycled pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    pid: i32,
    /// `None`: already gone when we looked.
    start: Option<u64>,
}

/// `(state, start time)` from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), starttime field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl Proc {
    fn of(pid: i32) -> Proc {
        Proc {
            pid,
            start: proc_stat(pid).map(|(_, start)| start),
        }
    }

    /// Running (a zombie has ended; a recycled pid is another process).
    fn alive(&self) -> bool {
        let Some(start) = self.start else {
            return false;
        };
        // kill(pid, 0) first, as an operator would; /proc then tells zombies and recycling.
        if kill(Pid::from_raw(self.pid), None).is_err() {
            return false;
        }
        proc_stat(self.pid).is_some_and(|(state, now)| state != 'Z' && now == start)
    }
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn cgroup2_of(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// Every live process whose cgroup (any hierarchy) is inside our root.
fn procs_under(root: &TestRoot) -> BTreeSet<i32> {
    let needle = format!("/{}/", root.name);
    let needle_end = format!("/{}", root.name);
    let mut out = BTreeSet::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let ours = text.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("");
            path.contains(&needle) || path.ends_with(&needle_end)
        });
        if ours && proc_stat(pid).is_some_and(|(state, _)| state != 'Z') {
            out.insert(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The daemon and its log.

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Started { id: u32, pid: i32 },
    Ready { id: u32, pid: i32 },
    Ended { id: u32, pid: i32 },
    Stopped { id: u32, pid: i32 },
    Stats { frames: u64 },
    Other,
}

#[derive(Debug, Clone)]
struct Line {
    at: Instant,
    text: String,
    json: Option<Value>,
    ev: Ev,
    /// For `Started`: the process as the line arrived.
    proc: Option<Proc>,
}

impl Line {
    fn message(&self) -> &str {
        self.json
            .as_ref()
            .and_then(|j| j["fields"]["message"].as_str())
            .unwrap_or("")
    }

    fn field_u64(&self, name: &str) -> Option<u64> {
        self.json.as_ref()?["fields"][name].as_u64()
    }

    fn level(&self) -> &str {
        self.json
            .as_ref()
            .and_then(|j| j["level"].as_str())
            .unwrap_or("")
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_line(raw: &str) -> Line {
    let at = Instant::now();
    let text = strip_ansi(raw);
    let json: Option<Value> = text
        .starts_with('{')
        .then(|| serde_json::from_str(&text).ok())
        .flatten();
    let mut ev = Ev::Other;
    if let Some(j) = &json {
        let f = &j["fields"];
        let worker = || {
            (f["pool"].as_str() == Some(POOL))
                .then(|| {
                    Some((
                        u32::try_from(f["id"].as_u64()?).ok()?,
                        f["pid"].as_i64()? as i32,
                    ))
                })
                .flatten()
        };
        let message = f["message"].as_str().unwrap_or("");
        ev = match message {
            "worker started" => worker().map_or(Ev::Other, |(id, pid)| Ev::Started { id, pid }),
            "worker ended unexpectedly" => {
                worker().map_or(Ev::Other, |(id, pid)| Ev::Ended { id, pid })
            }
            "worker stopped" => worker().map_or(Ev::Other, |(id, pid)| Ev::Stopped { id, pid }),
            // The daemon's stats line: `stats {"frames": …, …}`.
            m if m.starts_with("stats {") => serde_json::from_str::<Value>(&m["stats ".len()..])
                .ok()
                .and_then(|stats| stats["frames"].as_u64())
                .map_or(Ev::Other, |frames| Ev::Stats { frames }),
            // The worker's own line; workers log in the daemon's format.
            "worker ready" => f["worker"]
                .as_str()
                .and_then(|w| w.strip_prefix(&format!("{POOL}/"))?.parse().ok())
                .zip(f["pid"].as_i64())
                .map_or(Ev::Other, |(id, pid)| Ev::Ready {
                    id,
                    pid: pid as i32,
                }),
            _ => Ev::Other,
        };
    }
    let proc = match ev {
        Ev::Started { pid, .. } => Some(Proc::of(pid)),
        _ => None,
    };
    Line {
        at,
        text,
        json,
        ev,
        proc,
    }
}

type Log = Arc<Mutex<Vec<Line>>>;

/// A running `helmetd run`; killed (SIGKILL) on drop if still running.
struct Daemon {
    child: Child,
    log: Log,
    stdout: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// `helmetd --log-format json run --config <config> --set …`, from the repository root.
    fn start(root: &TestRoot, config: &Path, out: &Path, extra: &[&str]) -> Daemon {
        Self::start_under_systemd(root, config, out, extra, None)
    }

    /// [`Daemon::start`], with `notify` as its `NOTIFY_SOCKET` and a 2 s watchdog, as systemd
    /// would start it.
    fn start_under_systemd(
        root: &TestRoot,
        config: &Path,
        out: &Path,
        extra: &[&str],
        notify: Option<&Path>,
    ) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_helmetd"));
        cmd.current_dir(repo_root())
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(["--set", &root.arg()])
            .args([
                "--set",
                &format!("output.dir={}", out.join("out").display()),
            ])
            .args([
                "--set",
                &format!("mqtt.spool_dir={}", out.join("spool").display()),
            ])
            .args(["--set", "mqtt.stats_interval_s=1"]);
        for set in extra {
            cmd.args(["--set", set]);
        }
        common::test_daemon_env(&mut cmd, "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(socket) = notify {
            cmd.env("NOTIFY_SOCKET", socket)
                .env("WATCHDOG_USEC", "2000000");
        }
        let mut child = cmd.spawn().expect("starting helmetd run");
        let log: Log = Arc::default();
        let stdout = Arc::new(Mutex::new(String::new()));
        // Detached readers: the pipes close when the daemon and every worker have ended.
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        thread::spawn(move || {
            for raw in BufReader::new(stderr).lines() {
                let Ok(raw) = raw else { break };
                lock(&sink).push(parse_line(&raw));
            }
        });
        let mut out_pipe = child.stdout.take().expect("stdout");
        let sink = stdout.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child,
            log,
            stdout,
            exited: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling our daemon");
    }

    /// Number of log lines so far: a cursor for "after this point".
    fn cursor(&self) -> usize {
        lock(&self.log).len()
    }

    fn lines(&self) -> Vec<Line> {
        lock(&self.log).clone()
    }

    fn tail(&self, n: usize) -> String {
        let log = lock(&self.log);
        let from = log.len().saturating_sub(n);
        log[from..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited.is_none()
    }

    /// Polls `check` on the log until it yields, the timeout passes or the daemon exits.
    fn wait_log<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&[Line]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(&lock(&self.log)) {
                return found;
            }
            if !self.running() {
                thread::sleep(Duration::from_millis(200));
                if let Some(found) = check(&lock(&self.log)) {
                    return found;
                }
                panic!(
                    "daemon exited ({:?}) while waiting for {what}; log tail:\n{}",
                    self.exited,
                    self.tail(40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; log tail:\n{}",
                    self.tail(40)
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls `check` (a state outside the log) until it is `Ok`; the daemon must keep running.
    fn wait_state<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&[Line]) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let result = check(&self.lines());
            match result {
                Ok(found) => return found,
                Err(why) => {
                    assert!(
                        self.running(),
                        "daemon exited ({:?}) while waiting for {what} ({why}); log tail:\n{}",
                        self.exited,
                        self.tail(40)
                    );
                    assert!(
                        Instant::now() < deadline,
                        "timed out after {timeout:?} waiting for {what}: {why}; log tail:\n{}",
                        self.tail(40)
                    );
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The latest frame count from a stats line.
    fn frames(&self) -> u64 {
        lock(&self.log)
            .iter()
            .rev()
            .find_map(|l| match l.ev {
                Ev::Stats { frames } => Some(frames),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Waits for a stats line reporting more than `above` frames.
    fn wait_frames_above(&mut self, above: u64, timeout: Duration) -> u64 {
        self.wait_log(
            timeout,
            &format!("a stats line with frames > {above}"),
            |log| {
                log.iter().rev().find_map(|l| match l.ev {
                    Ev::Stats { frames } if frames > above => Some(frames),
                    _ => None,
                })
            },
        )
    }

    /// Waits for the process to exit; SIGKILL and a failure after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit within {timeout:?}; log tail:\n{}",
                    self.tail(40)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.exited.expect("exited")
    }

    /// `kill -9` of the daemon, reaped; returns when it was sent.
    fn kill9(&mut self) -> Instant {
        let at = Instant::now();
        self.signal(Signal::SIGKILL);
        self.exited = Some(self.child.wait().expect("wait"));
        at
    }

    /// The RESULT line, once stdout has it (after a clean exit).
    fn result_line(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = lock(&self.stdout)
                .lines()
                .rev()
                .find(|l| l.starts_with("RESULT "))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no RESULT line on stdout: {:?}",
                lock(&self.stdout)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every worker process this daemon started, as it was when the start was logged.
    fn started(&self) -> BTreeSet<Proc> {
        lock(&self.log).iter().filter_map(|l| l.proc).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The numbers in a `Debug` list of pids: `[Pid(12), Pid(34)]`.
fn pids_of_debug(text: &str) -> Vec<i32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `id=value` pairs of a RESULT line.
fn result_fields(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The desired state, checked on the kernel.

/// Checks that the cgroup trees hold exactly `n` worker slots of pool `edge`, each with one
/// `helmetd worker --pool edge --id <slot>` process in it (in the v1 mirrors too), that nothing
/// else lives anywhere under the root, and that each of those workers said it was ready.
/// Returns slot → process.
fn exact_workers(root: &TestRoot, n: u32, log: &[Line]) -> Result<BTreeMap<u32, Proc>, String> {
    let mut expected: BTreeSet<String> = ["workers".to_owned(), format!("workers/{POOL}")].into();
    expected.extend((0..n).map(|i| format!("workers/{POOL}/{i}")));
    let mut slots: BTreeMap<u32, i32> = BTreeMap::new();
    for (t, tree) in root.trees().iter().enumerate() {
        // The daemon creates a mirror only for limits; the example sets cpu and memory limits.
        if t > 0 && !tree.exists() {
            continue;
        }
        let dirs = relative_dirs(tree);
        if dirs != expected {
            return Err(format!(
                "{} holds {dirs:?}, want {expected:?}",
                tree.display()
            ));
        }
        let root_procs = pids_in(tree);
        if !root_procs.is_empty() {
            return Err(format!("{} itself holds {root_procs:?}", tree.display()));
        }
        for dir in &dirs {
            let pids = pids_in(&tree.join(dir));
            let slot = dir
                .strip_prefix(&format!("workers/{POOL}/"))
                .and_then(|s| s.parse::<u32>().ok());
            match (slot, pids.as_slice()) {
                (None, []) => {}
                (None, _) => return Err(format!("{}/{dir} holds {pids:?}", tree.display())),
                (Some(id), [pid]) => {
                    if *slots.entry(id).or_insert(*pid) != *pid {
                        return Err(format!(
                            "slot {id}: {} holds {pid}, the cgroup2 slot {}",
                            tree.display(),
                            slots[&id]
                        ));
                    }
                }
                (Some(id), _) => {
                    return Err(format!(
                        "slot {id} in {} holds {pids:?}, want one worker",
                        tree.display()
                    ));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (&id, &pid) in &slots {
        let argv = cmdline(pid);
        let id_arg = id.to_string();
        let flag = |name: &str, value: &str| argv.windows(2).any(|w| w[0] == name && w[1] == value);
        if argv.get(1).map(String::as_str) != Some("worker")
            || !flag("--pool", POOL)
            || !flag("--id", &id_arg)
        {
            return Err(format!("slot {id}: pid {pid} runs {argv:?}"));
        }
        let cg = cgroup2_of(pid);
        let want_cg = format!("/{}/workers/{POOL}/{id}", root.name);
        if cg.as_deref() != Some(want_cg.as_str()) {
            return Err(format!("slot {id}: pid {pid} is in {cg:?}, want {want_cg}"));
        }
        if !log.iter().any(|l| l.ev == Ev::Ready { id, pid }) {
            return Err(format!("slot {id}: pid {pid} not ready yet"));
        }
        let started = log
            .iter()
            .filter_map(|l| l.proc.filter(|p| p.pid == pid))
            .next_back()
            .ok_or_else(|| format!("slot {id}: pid {pid} has no \"worker started\" line"))?;
        out.insert(id, started);
    }
    let live = procs_under(root);
    let wanted: BTreeSet<i32> = slots.values().copied().collect();
    if live != wanted {
        return Err(format!(
            "processes under the root: {live:?}, want only the workers {wanted:?}"
        ));
    }
    Ok(out)
}

/// Waits for [`exact_workers`], then checks the state holds a moment later (nothing pending).
fn wait_exact(
    daemon: &mut Daemon,
    root: &TestRoot,
    n: u32,
    timeout: Duration,
) -> BTreeMap<u32, Proc> {
    let what = format!("exactly {n} ready worker(s) in their cgroups");
    let first = daemon.wait_state(timeout, &what, |log| exact_workers(root, n, log));
    thread::sleep(Duration::from_millis(600));
    let again = daemon.wait_state(Duration::ZERO, &what, |log| exact_workers(root, n, log));
    assert_eq!(
        first, again,
        "the workers changed while the state should be settled"
    );
    again
}

/// `populated` of a cgroup2 directory's `cgroup.events`; an absent cgroup is empty.
fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l.trim() == "populated 1"))
}

fn assert_all_dead<'a>(procs: impl IntoIterator<Item = &'a Proc>, what: &str) {
    let alive: Vec<&Proc> = procs.into_iter().filter(|p| p.alive()).collect();
    assert!(alive.is_empty(), "{what}: still alive: {alive:?}");
}

fn assert_no_workers_cgroups(root: &TestRoot) {
    for tree in root.trees() {
        let dirs = relative_dirs(&tree);
        assert!(dirs.is_empty(), "{} still holds {dirs:?}", tree.display());
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&entry.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

/// The example config with `replicas = n`, written atomically (a reload never sees half).
fn write_config(path: &Path, replicas: u32, extra_worker_line: Option<&str>) -> usize {
    let example = fs::read_to_string(repo_root().join(EXAMPLE)).expect("example config");
    assert_eq!(
        example.matches(EXAMPLE_REPLICAS).count(),
        1,
        "{EXAMPLE} changed"
    );
    let mut with = format!("replicas = {replicas}");
    if let Some(extra) = extra_worker_line {
        with.push('\n');
        with.push_str(extra);
    }
    let text = example.replacen(EXAMPLE_REPLICAS, &with, 1);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &text).unwrap();
    fs::rename(&tmp, path).unwrap();
    // 1-based line of the extra line, if any.
    extra_worker_line.map_or(0, |extra| {
        text.lines().position(|l| l == extra).expect("extra line") + 1
    })
}

/// SIGTERM, exit code 0, a RESULT line, no `workers/` cgroup left, every worker gone.
fn stop_cleanly(daemon: &mut Daemon, root: &TestRoot) -> (Duration, String) {
    let started = daemon.started();
    let at = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    let took = at.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM; log tail:\n{}",
        daemon.tail(30)
    );
    let result = daemon.result_line(Duration::from_secs(5));
    assert_no_workers_cgroups(root);
    assert_all_dead(&started, "workers after SIGTERM");
    assert!(
        procs_under(root).is_empty(),
        "processes left under the root: {:?}",
        procs_under(root)
    );
    (took, result)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The time to replace is printed; the bound is loose because tests are not benchmarks (a
/// loaded 2-core machine takes seconds to load a model).
#[test]
fn killed_worker_is_replaced_and_frames_keep_flowing() {
    let _serial = serial();
    let root = TestRoot::new("killed_worker_is_replaced");
    let tmp = tempfile::tempdir().unwrap();
    let config = repo_root().join(EXAMPLE);
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &[]);
    let workers = wait_exact(&mut daemon, &root, 2, Duration::from_secs(30));
    let frames_before = daemon.wait_frames_above(1, Duration::from_secs(15));
    let files_before = count_files(&tmp.path().join("out"));

    // The victim as the kernel lists it in our cgroup, which must be the one the log named.
    let id = 1;
    let listed = pids_in(&root.slot_dir(id));
    assert_eq!(listed, vec![workers[&id].pid], "slot {id} before the kill");
    let victim = workers[&id];
    let cursor = daemon.cursor();
    let killed_at = Instant::now();
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();

    let (ready_at, new_pid) = daemon.wait_log(Duration::from_secs(15), "the replacement", |log| {
        log[cursor..].iter().find_map(|l| match l.ev {
            Ev::Ready { id: i, pid } if i == id && pid != victim.pid => Some((l.at, pid)),
            _ => None,
        })
    });
    let replaced_in = ready_at.saturating_duration_since(killed_at);
    println!(
        "kill -9 of worker {POOL}/{id} (pid {}) -> replacement pid {new_pid} ready in {} ms",
        victim.pid,
        ms(replaced_in)
    );
    let log = daemon.lines();
    let seen = |ev: Ev| {
        log[cursor..]
            .iter()
            .find(|l| l.ev == ev)
            .map(|l| ms(l.at.saturating_duration_since(killed_at)))
    };
    let noticed = seen(Ev::Ended {
        id,
        pid: victim.pid,
    });
    let started = seen(Ev::Started { id, pid: new_pid });
    println!(
        "  the daemon logged the death after {noticed:?} ms, the new start after {started:?} ms"
    );
    assert!(
        noticed.is_some(),
        "no \"worker ended unexpectedly\" for pid {}",
        victim.pid
    );
    assert!(
        pids_in(&root.slot_dir(id)).contains(&new_pid),
        "replacement {new_pid} not in {}/cgroup.procs",
        root.slot_dir(id).display()
    );
    assert!(
        !victim.alive(),
        "the killed worker {} still runs",
        victim.pid
    );
    assert!(
        replaced_in <= Duration::from_secs(10),
        "replacement ready {} ms after the kill (want <= 10 s)",
        ms(replaced_in)
    );

    // Frames keep coming: the stats count and the annotated frames in the output dir grow.
    let frames_at_ready = daemon.frames().max(frames_before);
    let frames_after = daemon.wait_frames_above(frames_at_ready + 2, Duration::from_secs(15));
    let files_after = count_files(&tmp.path().join("out"));
    println!(
        "frames: {frames_before} before the kill, {frames_at_ready} at the replacement's \
         readiness, {frames_after} later; output files {files_before} -> {files_after}"
    );
    assert!(files_after > files_before, "no new output files");
    let after = wait_exact(&mut daemon, &root, 2, Duration::from_secs(10));
    assert_eq!(after[&id].pid, new_pid);
    assert_eq!(after[&0], workers[&0], "the other worker was restarted");
    stop_cleanly(&mut daemon, &root);
}

#[test]
fn killed_daemon_takes_its_workers_and_the_next_start_sweeps_leftovers() {
    let _serial = serial();
    let root = TestRoot::new("killed_daemon");
    let tmp = tempfile::tempdir().unwrap();
    let config = repo_root().join(EXAMPLE);
    let mut first = Daemon::start(&root, &config, tmp.path(), &[]);
    let workers = wait_exact(&mut first, &root, 2, Duration::from_secs(30));
    first.wait_frames_above(0, Duration::from_secs(15));

    let killed_at = first.kill9();
    // Gone: every worker pid dead (kill(pid, 0) / a zombie) and, since a process's other
    // threads may still be exiting after its leader shows as a zombie, workers/ unpopulated.
    let workers_dir = root.path().join("workers");
    let deadline = killed_at + Duration::from_secs(3);
    while workers.values().any(Proc::alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let pids_dead_in = killed_at.elapsed();
    while populated(&workers_dir) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let gone_in = killed_at.elapsed();
    println!(
        "kill -9 of the daemon -> worker pids {:?} dead in {} ms, workers/ cgroup empty in {} ms",
        workers.values().map(|p| p.pid).collect::<Vec<_>>(),
        ms(pids_dead_in),
        ms(gone_in)
    );
    assert_all_dead(workers.values(), "workers after kill -9 of the daemon");
    assert!(!populated(&workers_dir), "workers/ still populated");
    assert!(
        gone_in <= Duration::from_secs(1),
        "workers took {} ms to be gone (want <= 1000 ms)",
        ms(gone_in)
    );
    // What the kill left: the worker cgroups, empty.
    let left = relative_dirs(&root.path());
    assert!(
        left.contains(&format!("workers/{POOL}/0")),
        "expected the dead daemon's empty worker cgroups, found {left:?}"
    );

    let mut second = Daemon::start(&root, &config, tmp.path(), &[]);
    let sweep = second.wait_log(Duration::from_secs(20), "the leftovers sweep", |log| {
        log.iter()
            .find(|l| l.message() == "removed leftovers of an earlier run")
            .cloned()
    });
    assert_eq!(sweep.field_u64("processes"), Some(0), "{}", sweep.text);
    assert!(
        sweep.field_u64("cgroups").unwrap_or(0) >= 3,
        "{}",
        sweep.text
    );
    let now = wait_exact(&mut second, &root, 2, Duration::from_secs(30));
    let first_run = first.started();
    assert!(
        now.values().all(|p| !first_run.contains(p)),
        "a worker of the first run is listed as the second's: {now:?}"
    );
    assert_all_dead(&first_run, "workers of the killed daemon");
    stop_cleanly(&mut second, &root);
}

#[test]
fn sighup_scales_workers_and_refuses_a_broken_file() {
    let _serial = serial();
    let root = TestRoot::new("sighup_scales");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("helmetd.toml");
    write_config(&config, 1, None);
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &[]);
    let one = wait_exact(&mut daemon, &root, 1, Duration::from_secs(30));

    // Up to 3: two new slots, the running worker untouched.
    write_config(&config, 3, None);
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_log(Duration::from_secs(5), "config reloaded", |log| {
        log[cursor..]
            .iter()
            .any(|l| l.message() == "config reloaded")
            .then_some(())
    });
    let three = wait_exact(&mut daemon, &root, 3, Duration::from_secs(30));
    assert_eq!(three[&0], one[&0], "scaling up restarted worker 0");

    // Back to 1: the extra workers drain and their cgroups go (exact_workers checks the
    // cgroup2 tree and the v1 mirrors hold only slot 0).
    write_config(&config, 1, None);
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    let back = wait_exact(&mut daemon, &root, 1, Duration::from_secs(30));
    assert_eq!(back[&0], one[&0], "scaling down restarted worker 0");
    let log = daemon.lines();
    for id in [1, 2] {
        let pid = three[&id].pid;
        assert!(
            log[cursor..]
                .iter()
                .any(|l| l.ev == Ev::Stopped { id, pid }),
            "no \"worker stopped\" for {POOL}/{id} (pid {pid})"
        );
        assert!(
            log[cursor..].iter().any(|l| {
                l.message() == "scaling down: draining" && l.field_u64("id") == Some(id.into())
            }),
            "no drain of {POOL}/{id}"
        );
        for tree in root.trees() {
            let dir = tree.join(format!("workers/{POOL}/{id}"));
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
    assert_all_dead([&three[&1], &three[&2]], "scaled-down workers");

    // A broken file (it would also ask for 3): refused with file and line, 1 worker kept.
    let line = write_config(&config, 3, Some("replicass = 1"));
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    let error = daemon.wait_log(Duration::from_secs(5), "the refused reload", |log| {
        log[cursor..]
            .iter()
            .find(|l| l.message().starts_with("reload refused"))
            .cloned()
    });
    let located = format!("{}:{line}:", config.display());
    assert_eq!(error.level(), "ERROR", "{}", error.text);
    assert!(
        error.message().contains(&located) && error.message().contains("unknown field 'replicass'"),
        "the error should name {located} and the unknown key: {}",
        error.text
    );
    thread::sleep(Duration::from_secs(1));
    let kept = wait_exact(&mut daemon, &root, 1, Duration::from_secs(2));
    assert_eq!(kept[&0], one[&0], "the refused reload changed the worker");
    let log = daemon.lines();
    assert!(
        !log[cursor..]
            .iter()
            .any(|l| matches!(l.ev, Ev::Started { .. }) || l.message() == "config reloaded"),
        "the broken file was applied:\n{}",
        daemon.tail(20)
    );
    let (_, result) = stop_cleanly(&mut daemon, &root);
    assert_eq!(
        result_fields(&result).get("workers_max"),
        Some(&3),
        "{result}"
    );
}

/// Per-camera `frames_in` from the stats lines after `cursor`, newest last.
fn camera_frames_in(log: &[Line], camera: &str) -> Vec<u64> {
    log.iter()
        .filter_map(|l| l.message().strip_prefix("stats "))
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter_map(|stats| {
            stats["cameras"]
                .as_array()?
                .iter()
                .find(|c| c["camera"] == camera)?["frames_in"]
                .as_u64()
        })
        .collect()
}

#[test]
fn sighup_adds_and_removes_a_camera_without_restarting_the_others() {
    let _serial = serial();
    let root = TestRoot::new("sighup_cameras");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("helmetd.toml");
    write_config(&config, 1, None);
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &[]);
    let before = daemon.wait_log(Duration::from_secs(60), "yard streaming", |log| {
        camera_frames_in(log, "yard")
            .last()
            .copied()
            .filter(|&n| n > 0)
    });

    // A second camera appended to the file: it starts; "yard" keeps its stream (its frame
    // count carries on, where a restarted camera would count from zero).
    write_config(&config, 1, None);
    let with_gate = fs::read_to_string(&config).unwrap()
        + "\n[[camera]]\nname = \"gate\"\nurl = \"media/helmet-test.mp4\"\ndetect_fps = 2.0\n";
    fs::write(&config, with_gate).unwrap();
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    let reconciled = daemon.wait_log(Duration::from_secs(10), "cameras reconciled", |log| {
        log[cursor..]
            .iter()
            .find(|l| l.message() == "cameras reconciled")
            .cloned()
    });
    let field = |name: &str| {
        reconciled
            .json
            .as_ref()
            .and_then(|j| j["fields"][name].as_str().map(String::from))
    };
    assert_eq!(
        field("started").as_deref(),
        Some(r#"["gate"]"#),
        "{}",
        reconciled.text
    );
    assert_eq!(
        field("restarted").as_deref(),
        Some("[]"),
        "{}",
        reconciled.text
    );
    daemon.wait_log(Duration::from_secs(30), "gate streaming", |log| {
        camera_frames_in(&log[cursor..], "gate")
            .last()
            .copied()
            .filter(|&n| n > 0)
    });
    let yard = camera_frames_in(&daemon.lines()[cursor..], "yard");
    assert!(
        yard.iter().all(|&n| n >= before),
        "yard restarted: frames_in went from {before} to {yard:?}"
    );

    // And removed again: it stops, "yard" still untouched.
    write_config(&config, 1, None);
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_log(Duration::from_secs(10), "gate stopped", |log| {
        log[cursor..]
            .iter()
            .find(|l| l.message() == "cameras reconciled")
            .filter(|l| {
                l.json
                    .as_ref()
                    .is_some_and(|j| j["fields"]["stopped"] == r#"["gate"]"#)
            })
            .cloned()
    });
    let last_yard = *yard.last().unwrap();
    let after = daemon.wait_log(Duration::from_secs(10), "stats without gate", |log| {
        log[cursor..]
            .iter()
            .filter_map(|l| l.message().strip_prefix("stats "))
            .filter_map(|json| serde_json::from_str::<Value>(json).ok())
            .find(|s| s["cameras"].as_array().is_some_and(|c| c.len() == 1))
    });
    assert_eq!(after["cameras"][0]["camera"], "yard", "{after}");
    assert!(
        after["cameras"][0]["frames_in"].as_u64().unwrap() >= last_yard,
        "yard restarted on removal: {after}"
    );
    stop_cleanly(&mut daemon, &root);
}

#[test]
fn a_gateway_without_cameras_waits_and_starts_one_added_by_sighup() {
    let _serial = serial();
    let root = TestRoot::new("no_cameras");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("helmetd.toml");
    write_config(&config, 1, None);
    let enabled = fs::read_to_string(&config).unwrap();
    let disabled = enabled.replacen(
        "detect_fps = 2.0\n",
        "detect_fps = 2.0\nenabled = false\n",
        1,
    );
    assert_ne!(disabled, enabled, "the example's camera block changed");
    fs::write(&config, &disabled).unwrap();
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &[]);
    daemon.wait_log(Duration::from_secs(30), "the no-camera warning", |log| {
        log.iter()
            .find(|l| l.message().starts_with("no enabled [[camera]]"))
            .cloned()
    });
    wait_exact(&mut daemon, &root, 1, Duration::from_secs(30));

    fs::write(&config, &enabled).unwrap();
    let cursor = daemon.cursor();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_log(
        Duration::from_secs(30),
        "yard streaming after SIGHUP",
        |log| {
            camera_frames_in(&log[cursor..], "yard")
                .last()
                .copied()
                .filter(|&n| n > 0)
        },
    );
    stop_cleanly(&mut daemon, &root);
}

/// Datagrams sent to a socket of ours, as systemd's notify socket would receive them.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let received: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = received.clone();
        // Ends with the test process; reads at most until the socket file's directory goes.
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    lock(&sink).push((Instant::now(), text));
                }
            }
        });
        NotifySocket { path, received }
    }

    /// Every `KEY=value` line received so far, in order.
    fn lines(&self) -> Vec<String> {
        lock(&self.received)
            .iter()
            .flat_map(|(_, d)| d.lines().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    fn wait_for(&self, timeout: Duration, line: &str) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if let Some(at) = lines.iter().position(|l| l == line) {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {timeout:?}; got {lines:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn under_systemd_it_reports_ready_status_watchdog_reload_and_stopping() {
    let _serial = serial();
    let root = TestRoot::new("systemd_notify");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("helmetd.toml");
    write_config(&config, 1, None);
    let notify = NotifySocket::bind(tmp.path());
    let mut daemon =
        Daemon::start_under_systemd(&root, &config, tmp.path(), &[], Some(&notify.path));

    // READY=1 only once a worker serves.
    let ready_at = notify.wait_for(Duration::from_secs(60), "READY=1");
    // STATUS= follows the facts as they change, not only with the stats line: the loading
    // worker before READY, the ready one in the same turn of the loop as READY.
    let lines = notify.lines();
    assert!(
        lines[..ready_at]
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("workers 0/1 ready")),
        "no STATUS while the worker loaded: {lines:?}"
    );
    assert!(
        lines
            .get(ready_at + 1)
            .is_some_and(|l| l.starts_with("STATUS=") && l.contains("workers 1/1 ready")),
        "STATUS not refreshed at READY: {lines:?}"
    );
    let ready_logged = daemon
        .lines()
        .iter()
        .any(|l| matches!(l.ev, Ev::Ready { .. }));
    assert!(ready_logged, "READY=1 before any worker was ready");

    // The watchdog every second (half of WATCHDOG_USEC), and a status line.
    thread::sleep(Duration::from_secs(3));
    let lines = notify.lines();
    let pings = lines.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(pings >= 2, "{pings} watchdog pings in 3 s: {lines:?}");
    let status = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("STATUS="))
        .expect("a STATUS= line");
    assert!(
        status.contains("workers 1/1 ready") && status.starts_with("cameras "),
        "{status}"
    );

    // A reload is bracketed by RELOADING=1 and READY=1.
    let before = notify.lines().len();
    daemon.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after: Vec<String> = notify.lines()[before..].to_vec();
        let reloading = after.iter().position(|l| l == "RELOADING=1");
        let ready = after.iter().rposition(|l| l == "READY=1");
        if matches!((reloading, ready), (Some(a), Some(b)) if a < b) {
            break;
        }
        assert!(Instant::now() < deadline, "reload not reported: {after:?}");
        thread::sleep(Duration::from_millis(20));
    }

    stop_cleanly(&mut daemon, &root);
    notify.wait_for(Duration::from_secs(1), "STOPPING=1");
}

#[test]
fn chaos_of_kills_reloads_and_a_daemon_restart_leaves_exactly_the_desired_workers() {
    let _serial = serial();
    let root = TestRoot::new("chaos");
    let seed: u64 = std::env::var("HELMETD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_241_128);
    println!("chaos seed {seed} (set HELMETD_TEST_SEED to replay another)");
    let mut rng = StdRng::seed_from_u64(seed);
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("helmetd.toml");
    let mut desired = 2;
    write_config(&config, desired, None);
    // Repeated kills of one slot back off (1 s doubling by default); shorter here so the
    // loop stays bounded. The first kill of a slot still restarts at once.
    let sets = [
        "edge.worker.restart_backoff_initial_s=0.2",
        "edge.worker.restart_backoff_max_s=1",
    ];
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &sets);
    wait_exact(&mut daemon, &root, desired, Duration::from_secs(30));
    let mut earlier: BTreeSet<Proc> = BTreeSet::new();
    let mut kills = 0;
    let mut reloads = 0;
    for round in 0..10 {
        if round == 5 {
            // The daemon restart: kill -9, then a new daemon on the same root and file.
            earlier.extend(daemon.started());
            daemon.kill9();
            let old = std::mem::replace(
                &mut daemon,
                Daemon::start(&root, &config, tmp.path(), &sets),
            );
            drop(old);
            daemon.wait_log(Duration::from_secs(20), "helmetd running", |log| {
                log.iter()
                    .any(|l| l.message() == "helmetd running")
                    .then_some(())
            });
            let swept = daemon
                .lines()
                .into_iter()
                .find(|l| l.message() == "removed leftovers of an earlier run");
            let swept = swept.unwrap_or_else(|| panic!("no sweep:\n{}", daemon.tail(20)));
            // Restarted at once, the sweep may still find the killed daemon's workers dying:
            // it must then have killed only those.
            let killed: Vec<i32> = daemon
                .lines()
                .into_iter()
                .find(|l| l.message() == "killing processes left by an earlier run")
                .map(|l| {
                    pids_of_debug(
                        l.json
                            .as_ref()
                            .map_or("", |j| j["fields"]["pids"].as_str().unwrap_or("")),
                    )
                })
                .unwrap_or_default();
            let old_pids: BTreeSet<i32> = earlier.iter().map(|p| p.pid).collect();
            assert!(
                killed.iter().all(|pid| old_pids.contains(pid)),
                "the sweep killed {killed:?}, not all workers of the killed daemon {old_pids:?}"
            );
            assert_eq!(
                swept.field_u64("processes"),
                Some(killed.len() as u64),
                "{}",
                swept.text
            );
            assert!(
                swept.field_u64("cgroups").unwrap_or(0) >= 2,
                "{}",
                swept.text
            );
            println!(
                "round {round}: daemon restarted after kill -9; its sweep removed {:?} \
                 leftover cgroups and killed {killed:?} (old workers still exiting)",
                swept.field_u64("cgroups")
            );
            assert_all_dead(&earlier, "workers of the killed daemon");
        }
        if rng.gen_bool(0.6) {
            // kill -9 of one or two workers found in our slot cgroups (ready or not).
            for _ in 0..rng.gen_range(1..=2) {
                let id = rng.gen_range(0..desired);
                if let Some(&pid) = pids_in(&root.slot_dir(id)).first() {
                    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
                    kills += 1;
                    println!("round {round}: kill -9 of {POOL}/{id} (pid {pid})");
                }
            }
        }
        if rng.gen_bool(0.5) {
            desired = rng.gen_range(1..=3);
            write_config(&config, desired, None);
            daemon.signal(Signal::SIGHUP);
            reloads += 1;
            println!("round {round}: reload with {desired} worker(s)");
        }
        thread::sleep(Duration::from_millis(rng.gen_range(150..1200)));
    }
    let last = wait_exact(&mut daemon, &root, desired, Duration::from_secs(40));
    earlier.extend(daemon.started());
    let current: BTreeSet<Proc> = last.values().copied().collect();
    assert_all_dead(
        earlier.difference(&current),
        "workers replaced during the chaos",
    );
    println!(
        "chaos: {kills} kill(s), {reloads} reload(s), 1 restart; ended with {desired} \
         worker(s) {:?} after {} ms",
        last.values().map(|p| p.pid).collect::<Vec<_>>(),
        ms(began.elapsed())
    );
    let (_, result) = stop_cleanly(&mut daemon, &root);
    println!("{result}");
}

#[test]
fn sigterm_drains_workers_and_removes_their_cgroups() {
    let _serial = serial();
    let root = TestRoot::new("sigterm_drains");
    let tmp = tempfile::tempdir().unwrap();
    let config = repo_root().join(EXAMPLE);
    let mut daemon = Daemon::start(&root, &config, tmp.path(), &[]);
    let workers = wait_exact(&mut daemon, &root, 2, Duration::from_secs(30));
    daemon.wait_frames_above(2, Duration::from_secs(15));
    let cursor = daemon.cursor();
    let (took, result) = stop_cleanly(&mut daemon, &root);
    println!("SIGTERM -> exit 0 in {} ms; {result}", ms(took));
    let log = daemon.lines();
    let after = &log[cursor..];
    for id in workers.keys() {
        let drained = format!("\"worker\":\"{POOL}/{id}\"");
        assert!(
            after
                .iter()
                .any(|l| l.text.contains("drained; exiting") && l.text.contains(&drained)),
            "worker {POOL}/{id} did not report a drain"
        );
    }
    let stopped = after
        .iter()
        .find(|l| l.message() == "workers stopped, cgroups removed")
        .unwrap_or_else(|| panic!("no shutdown report:\n{}", daemon.tail(20)));
    assert_eq!(
        (stopped.field_u64("drained"), stopped.field_u64("killed")),
        (Some(2), Some(0)),
        "{}",
        stopped.text
    );
    let fields = result_fields(&result);
    assert!(fields.get("frames").is_some_and(|&f| f > 0), "{result}");
    assert_eq!(fields.get("workers_max"), Some(&2), "{result}");
}
