//! The supervisor on the real kernel: cgroup2 (and v1 controllers on hybrid hosts), clone3
//! into the cgroup, PR_SET_PDEATHSIG, pidfd reaping and `cgroup.kill`.
//!
//! Needs a writable cgroup2 hierarchy (root); elsewhere each test fails and says why. Every
//! test works in its own cgroup root, removed by a guard even when the test fails, and kills
//! only processes it started. The workers are `sleep`, so nothing of the real worker is needed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use helmetd::supervisor::{
    CgroupRoot, Host, HostError, LimitOutcome, PoolName, PoolSpec, RealHost, RealHostConfig,
    SpawnParts, SpawnStage, Supervisor, SupervisorConfig, SupervisorError, WorkerChannel,
    WorkerLauncher, WorkerState,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::{MOUNT, TestRoot, dirs_below, pids_in};

/// Set in the re-executed test binary that plays a daemon; holds the cgroup root.
const MINI_DAEMON_ROOT: &str = "HELMETD_TEST_MINI_DAEMON_ROOT";
const POOL: &str = "sleep";

/// A worker that is only a process: ready at once, always alive, drained by SIGTERM.
struct Alive;

impl WorkerChannel for Alive {
    fn is_ready(&mut self) -> bool {
        true
    }

    fn last_heartbeat(&mut self) -> Option<Instant> {
        Some(Instant::now())
    }

    fn drain(&mut self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// Nothing hands these workers frames.
    fn hold(&mut self, _: bool) {}
}

/// `sh -c <script>` as the worker command.
struct ShellLauncher(&'static str);

/// A worker that is just `sleep`.
const SLEEPER: &str = "exec sleep 1000";
/// A worker that burns a core until it is frozen.
const SPINNER: &str = "while :; do :; done";
/// A worker whose own child escapes PR_SET_PDEATHSIG: the ghost only the sweep can remove.
const SLEEPER_WITH_CHILD: &str = "sleep 1000 & exec sleep 1000";

impl WorkerLauncher for ShellLauncher {
    type Channel = Alive;

    fn prepare(&self, _: &PoolName, _: u32) -> io::Result<(SpawnParts, Alive)> {
        let parts = SpawnParts {
            program: PathBuf::from("sh"),
            args: vec![OsString::from("-c"), OsString::from(self.0)],
            fds: Vec::new(),
        };
        Ok((parts, Alive))
    }
}

fn desired(replicas: u32, cpu_limit_millis: Option<u64>) -> BTreeMap<PoolName, PoolSpec> {
    with_standby(replicas, 0, cpu_limit_millis)
}

fn with_standby(
    replicas: u32,
    standby: u32,
    cpu_limit_millis: Option<u64>,
) -> BTreeMap<PoolName, PoolSpec> {
    BTreeMap::from([(
        PoolName::new(POOL).unwrap(),
        PoolSpec {
            replicas,
            standby,
            cpu_limit_millis,
            memory_limit_bytes: None,
            generation: 1,
        },
    )])
}

/// `usage_usec` of a worker slot's cgroup.
fn cpu_usage_usec(root: &TestRoot, id: u32) -> u64 {
    let stat =
        fs::read_to_string(root.path().join(format!("workers/{POOL}/{id}/cpu.stat"))).unwrap();
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

trait TestHost {
    fn host(&self) -> RealHost;
}

impl TestHost for TestRoot {
    fn host(&self) -> RealHost {
        let host = RealHost::new(RealHostConfig {
            mount: PathBuf::from(MOUNT),
            root: CgroupRoot::Path(self.path()),
        })
        .expect("RealHost on the test root");
        assert_eq!(
            (host.layout(), host.root()),
            (&self.layout, self.path().as_path())
        );
        host
    }
}

/// Dead: gone, or a zombie nobody reaped yet.
fn is_dead(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn gone(pid: Pid) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `done` every millisecond until it holds or `limit` passes; the time it took.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn cgroup_lines(pid: Pid) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Reconciles every 10 ms until `replicas` workers are ready; their pids by slot.
fn until_ready<H: Host, L: WorkerLauncher>(
    sup: &mut Supervisor<H, L>,
    replicas: usize,
) -> BTreeMap<u32, Pid> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let errors = sup.reconcile(Instant::now());
        assert!(errors.is_empty(), "{errors:?}");
        let ready: BTreeMap<u32, Pid> = sup
            .status(Instant::now())
            .into_iter()
            .filter(|s| s.state == WorkerState::Ready)
            .filter_map(|s| Some((s.id, s.pid?)))
            .collect();
        if ready.len() == replicas {
            return ready;
        }
        assert!(Instant::now() < deadline, "workers not ready: {ready:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn leftover_dirs(root: &TestRoot) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for tree in root.trees() {
        let workers = tree.join("workers");
        dirs_below(&workers, &mut all);
        if workers.exists() {
            all.push(workers);
        }
    }
    all
}

#[test]
fn a_frozen_standby_uses_no_cpu_and_a_scale_up_thaws_the_same_process() {
    let root = TestRoot::new("a_frozen_standby_uses_no_cpu");
    let mut sup = Supervisor::new(
        root.host(),
        ShellLauncher(SPINNER),
        SupervisorConfig::default(),
    );
    sup.startup_sweep().unwrap();
    sup.set_desired(with_standby(1, 1, Some(250)));
    let frozen = wait_for(Duration::from_secs(5), || {
        assert!(sup.reconcile(Instant::now()).is_empty());
        std::thread::sleep(Duration::from_millis(10));
        sup.status(Instant::now())
            .iter()
            .any(|s| s.id == 1 && s.state == WorkerState::Standby { frozen: true })
    });
    assert!(frozen.is_some(), "{:?}", sup.status(Instant::now()));
    let standby = sup.status(Instant::now())[1].pid.unwrap();
    // The kernel freezes asynchronously: `frozen 1` once every task of the cgroup stopped.
    let events = root.path().join(format!("workers/{POOL}/1/cgroup.events"));
    let settled = wait_for(Duration::from_secs(1), || {
        fs::read_to_string(&events).is_ok_and(|e| e.contains("frozen 1"))
    });
    assert!(settled.is_some(), "{:?}", fs::read_to_string(&events));
    let before = cpu_usage_usec(&root, 1);
    std::thread::sleep(Duration::from_millis(500));
    let frozen_use = cpu_usage_usec(&root, 1) - before;
    println!("frozen standby pid {standby}: {frozen_use} µs of CPU in 500 ms");
    assert!(frozen_use < 5_000, "{frozen_use} µs while frozen");

    sup.set_desired(with_standby(2, 0, Some(250)));
    let thawed = Instant::now();
    assert!(sup.reconcile(Instant::now()).is_empty());
    let thaw_took = thawed.elapsed();
    let slot = sup.status(Instant::now())[1].clone();
    assert_eq!(
        (slot.state, slot.pid),
        (WorkerState::Ready, Some(standby)),
        "the same process serves at once"
    );
    let before = cpu_usage_usec(&root, 1);
    std::thread::sleep(Duration::from_millis(500));
    let thawed_use = cpu_usage_usec(&root, 1) - before;
    println!(
        "thawed in {:?}: {thawed_use} µs of CPU in 500 ms (limit 0.25 core)",
        thaw_took
    );
    assert!(thawed_use > 50_000, "{thawed_use} µs after the thaw");

    sup.set_desired(with_standby(1, 1, Some(250)));
    assert!(sup.reconcile(Instant::now()).is_empty());
    sup.shutdown().unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || gone(standby)).is_some(),
        "the standby was killed and reaped"
    );
    assert!(leftover_dirs(&root).is_empty());
}

#[test]
fn workers_run_limited_in_their_cgroups_and_a_killed_one_is_replaced_within_a_second() {
    let root = TestRoot::new("workers_run_limited_in_their_cgroups");
    let mut sup = Supervisor::new(
        root.host(),
        ShellLauncher(SLEEPER),
        SupervisorConfig::default(),
    );
    sup.startup_sweep().unwrap();
    sup.set_desired(desired(2, Some(250)));
    let started = Instant::now();
    let pids = until_ready(&mut sup, 2);
    println!(
        "2 workers ready {:?} after the first reconcile",
        started.elapsed()
    );

    for (id, pid) in &pids {
        let relative = format!("/{}/workers/{POOL}/{id}", root.name);
        let lines = cgroup_lines(*pid);
        assert!(
            lines.contains(&format!("0::{relative}")),
            "worker {id} not in its v2 cgroup: {lines:?}"
        );
        let cgroup = match root.v1("cpu") {
            Some(cpu) => {
                // Hybrid: the quota is in the v1 cpu hierarchy, and the worker is in it.
                assert!(
                    lines.iter().any(|l| l
                        .split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
                        && l.ends_with(&relative)),
                    "worker {id} not in its v1 cpu cgroup: {lines:?}"
                );
                let dir = cpu.join(format!("workers/{POOL}/{id}"));
                let quota = fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap();
                let period = fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap();
                assert_eq!((quota.trim(), period.trim()), ("25000", "100000"));
                format!(
                    "{}: cfs_quota_us={} cfs_period_us={}",
                    dir.display(),
                    quota.trim(),
                    period.trim()
                )
            }
            None => {
                let file = root.path().join(format!("workers/{POOL}/{id}/cpu.max"));
                let max = fs::read_to_string(&file).unwrap();
                assert_eq!(max.trim(), "25000 100000");
                format!("{}={}", file.display(), max.trim())
            }
        };
        let listed = sup.host().procs(Path::new(&format!("workers/{POOL}/{id}")));
        assert_eq!(listed.unwrap(), vec![*pid], "cgroup.procs of worker {id}");
        println!("worker {id} pid {pid}: {cgroup}");
    }

    let victim = pids[&0];
    kill(victim, Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let replacement = loop {
        assert!(sup.reconcile(Instant::now()).is_empty());
        let status = sup.status(Instant::now());
        let slot = status.iter().find(|s| s.id == 0).unwrap();
        if slot.state == WorkerState::Ready && slot.pid.is_some_and(|p| p != victim) {
            break slot.pid.unwrap();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "no replacement within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = killed.elapsed();
    println!(
        "kill -9 of worker 0 (pid {victim}): replacement pid {replacement} ready after {took:?}"
    );
    assert!(took < Duration::from_secs(1));
    assert!(gone(victim), "the killed worker was reaped");
    assert!(cgroup_lines(replacement).contains(&format!("0::/{}/workers/{POOL}/0", root.name)));

    let started = Instant::now();
    let report = sup.shutdown().unwrap();
    println!("shutdown: {report:?} in {:?}", started.elapsed());
    assert_eq!(
        (report.drained, report.killed),
        (2, 0),
        "SIGTERM drains sleep"
    );
    assert!(gone(replacement) && gone(pids[&1]));
    assert_eq!(leftover_dirs(&root), Vec::<PathBuf>::new());
}

#[test]
fn limits_land_in_the_controller_files() {
    let root = TestRoot::new("limits_land_in_the_controller_files");
    let host = root.host();
    let probe = Path::new("probe");
    host.create_cgroup(probe).unwrap();
    match host.set_memory_limit(probe, Some(64 << 20)).unwrap() {
        LimitOutcome::Applied => {
            let file = match root.v1("memory") {
                Some(memory) => memory.join("probe/memory.limit_in_bytes"),
                None => root.path().join("probe/memory.max"),
            };
            assert_eq!(fs::read_to_string(&file).unwrap().trim(), "67108864");
            println!("{} = 67108864", file.display());
        }
        LimitOutcome::Unavailable { reason } => println!("memory limit unavailable: {reason}"),
    }
    assert_eq!(
        host.set_cpu_limit(probe, Some(1500)).unwrap(),
        LimitOutcome::Applied
    );
    let cpu = match root.v1("cpu") {
        Some(cpu) => fs::read_to_string(cpu.join("probe/cpu.cfs_quota_us")).unwrap(),
        None => fs::read_to_string(root.path().join("probe/cpu.max")).unwrap(),
    };
    assert!(cpu.starts_with("150000"), "{cpu}");
    host.set_cpu_limit(probe, None).unwrap();
    let lifted = match root.v1("cpu") {
        Some(cpu) => fs::read_to_string(cpu.join("probe/cpu.cfs_quota_us")).unwrap(),
        None => fs::read_to_string(root.path().join("probe/cpu.max")).unwrap(),
    };
    assert!(
        lifted.starts_with("-1") || lifted.starts_with("max"),
        "{lifted}"
    );
    assert!(!host.populated(probe).unwrap());
    host.remove_cgroup(probe).unwrap();
    for tree in root.trees() {
        assert!(!tree.join("probe").exists(), "{}", tree.display());
    }
}

/// The "daemon" of the test below: this test binary re-executed with `MINI_DAEMON_ROOT`. It
/// starts two workers that each fork a child, prints their pids and keeps supervising until
/// it is killed (or 30 s pass). A no-op in a normal test run.
#[test]
fn mini_daemon() {
    let Some(root) = std::env::var_os(MINI_DAEMON_ROOT) else {
        return;
    };
    let host = RealHost::new(RealHostConfig {
        mount: PathBuf::from(MOUNT),
        root: CgroupRoot::Path(PathBuf::from(&root)),
    })
    .unwrap();
    let mut sup = Supervisor::new(
        host,
        ShellLauncher(SLEEPER_WITH_CHILD),
        SupervisorConfig::default(),
    );
    sup.startup_sweep().unwrap();
    sup.set_desired(desired(2, Some(500)));
    let pids = until_ready(&mut sup, 2);
    // Wait for each worker's own child to exist before reporting.
    for id in pids.keys() {
        let dir = Path::new(&root).join(format!("workers/{POOL}/{id}"));
        wait_for(Duration::from_secs(5), || pids_in(&dir).len() == 2).expect("worker child");
    }
    let list: Vec<String> = pids.values().map(|p| p.to_string()).collect();
    println!("MINI_DAEMON_PIDS {}", list.join(" "));
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let _ = sup.reconcile(Instant::now());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the mini daemon if the test fails before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_daemon_takes_its_workers_along_and_the_next_start_sweeps_the_rest() {
    let root = TestRoot::new("a_killed_daemon_takes_its_workers_along");
    // Orphans of the mini daemon's workers come to this process, as to the daemon's
    // successor under systemd, so they can be reaped and checked.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "mini_daemon", "--nocapture", "--test-threads=1"])
        .env(MINI_DAEMON_ROOT, root.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = ChildGuard(child);
    let stdout = daemon.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test harness prints `test mini_daemon ... ` first, on the same line.
            if let Some((_, pids)) = line.split_once("MINI_DAEMON_PIDS ") {
                let _ = tx.send(pids.to_owned());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the mini daemon reports its workers");
    let workers: BTreeSet<Pid> = line
        .split_whitespace()
        .map(|p| Pid::from_raw(p.parse().unwrap()))
        .collect();
    assert_eq!(workers.len(), 2);
    let mut ghosts = BTreeSet::new();
    for id in 0..2 {
        let dir = root.path().join(format!("workers/{POOL}/{id}"));
        ghosts.extend(
            pids_in(&dir)
                .into_iter()
                .map(Pid::from_raw)
                .filter(|p| !workers.contains(p)),
        );
    }
    assert_eq!(ghosts.len(), 2, "each worker forked a child");

    daemon.0.kill().unwrap();
    let killed = Instant::now();
    let took = wait_for(Duration::from_secs(1), || {
        workers.iter().all(|p| is_dead(*p))
    })
    .expect("workers gone within 1 s of the daemon's SIGKILL");
    daemon.0.wait().unwrap();
    println!("kill -9 of the daemon: workers {workers:?} dead after {took:?} (PR_SET_PDEATHSIG)");
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        ghosts.iter().all(|p| !is_dead(*p)),
        "the workers' own children escaped PDEATHSIG"
    );
    assert!(root.path().join(format!("workers/{POOL}/0")).exists());
    println!(
        "left behind: ghosts {ghosts:?}, cgroups {:?} (+ killed {:?} since)",
        leftover_dirs(&root),
        killed.elapsed()
    );

    let mut next = Supervisor::new(
        root.host(),
        ShellLauncher(SLEEPER),
        SupervisorConfig::default(),
    );
    let started = Instant::now();
    let report = next.startup_sweep().unwrap();
    let took = started.elapsed();
    println!("startup sweep in {took:?}: {report:?}");
    assert_eq!(
        report.processes.iter().copied().collect::<BTreeSet<_>>(),
        ghosts
    );
    let names: BTreeSet<String> = report
        .cgroups
        .iter()
        .map(|c| c.display().to_string())
        .collect();
    for expected in ["workers/sleep", "workers/sleep/0", "workers/sleep/1"] {
        assert!(names.contains(expected), "{names:?}");
    }
    // Killed, and reaped by this subreaper: not even zombies remain.
    for pid in ghosts.iter().chain(&workers) {
        assert!(gone(*pid), "{pid} survived the sweep");
    }
    let left = leftover_dirs(&root);
    assert!(
        left.iter().all(|dir| dir.ends_with("workers")),
        "only empty workers/ directories remain: {left:?}"
    );

    next.set_desired(desired(1, None));
    until_ready(&mut next, 1);
    next.shutdown().unwrap();
    assert_eq!(leftover_dirs(&root), Vec::<PathBuf>::new());
}

/// Hands one descriptor to the worker as fd 3, the way the worker's socketpair end goes.
struct FdLauncher {
    fd: Mutex<Option<OwnedFd>>,
    script: &'static str,
}

impl WorkerLauncher for FdLauncher {
    type Channel = Alive;

    fn prepare(&self, _: &PoolName, _: u32) -> io::Result<(SpawnParts, Alive)> {
        let fd = self.fd.lock().unwrap().take().expect("one start only");
        let parts = SpawnParts {
            program: PathBuf::from("/bin/sh"),
            args: vec![OsString::from("-c"), OsString::from(self.script)],
            fds: vec![(fd, 3)],
        };
        Ok((parts, Alive))
    }
}

#[test]
fn inherited_descriptors_arrive_as_requested_and_nothing_else_leaks() {
    let root = TestRoot::new("inherited_descriptors_arrive_as_requested");
    // nix's pipe() is not close-on-exec: without the child's close_range both ends would leak.
    let (read, write) = nix::unistd::pipe().unwrap();
    let launcher = FdLauncher {
        fd: Mutex::new(Some(write)),
        script: "ls /proc/self/fd >&3; echo done >&3; exec sleep 1000",
    };
    let mut sup = Supervisor::new(root.host(), launcher, SupervisorConfig::default());
    sup.startup_sweep().unwrap();
    sup.set_desired(desired(1, None));
    until_ready(&mut sup, 1);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(fs::File::from(read))
            .lines()
            .map_while(Result::ok)
            .take_while(|line| line != "done")
            .collect();
        let _ = tx.send(lines);
    });
    let fds = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker wrote to fd 3");
    println!("descriptors of the worker's `ls`: {fds:?}");
    // stdin, stdout (= fd 3 here), stderr, fd 3, and the directory ls reads.
    let expected: Vec<String> = ["0", "1", "2", "3"].map(String::from).to_vec();
    assert_eq!(fds.len(), 5, "{fds:?}");
    assert_eq!(fds[..4], expected[..], "{fds:?}");
    sup.shutdown().unwrap();
}

#[test]
fn a_failed_exec_is_reported_with_its_stage_and_backs_off() {
    let root = TestRoot::new("a_failed_exec_is_reported");
    struct Missing;
    impl WorkerLauncher for Missing {
        type Channel = Alive;

        fn prepare(&self, _: &PoolName, _: u32) -> io::Result<(SpawnParts, Alive)> {
            let parts = SpawnParts {
                program: PathBuf::from("/nonexistent/helmetd"),
                args: Vec::new(),
                fds: Vec::new(),
            };
            Ok((parts, Alive))
        }
    }
    let mut sup = Supervisor::new(root.host(), Missing, SupervisorConfig::default());
    sup.startup_sweep().unwrap();
    sup.set_desired(desired(1, None));
    let errors = sup.reconcile(Instant::now());
    println!(
        "{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    match &errors[..] {
        [
            SupervisorError::Worker {
                source: HostError::Spawn { stage, source, .. },
                ..
            },
        ] => {
            assert_eq!(*stage, SpawnStage::Exec);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let status = sup.status(Instant::now());
    assert!(
        matches!(status[0].state, WorkerState::Backoff { .. }),
        "{status:?}"
    );
    assert!(!sup.host().populated(Path::new("workers/sleep/0")).unwrap());
    sup.shutdown().unwrap();
    assert_eq!(leftover_dirs(&root), Vec::<PathBuf>::new());
}

/// PR_SET_PDEATHSIG fires when the forking *thread* ends: workers started on behalf of a
/// short-lived thread must not die with it.
#[test]
fn workers_outlive_the_thread_that_started_them() {
    let root = TestRoot::new("workers_outlive_the_thread_that_started_them");
    let mut sup = Supervisor::new(
        root.host(),
        ShellLauncher(SLEEPER),
        SupervisorConfig::default(),
    );
    sup.startup_sweep().unwrap();
    let (mut sup, pids) = std::thread::spawn(move || {
        sup.set_desired(desired(1, None));
        let pids = until_ready(&mut sup, 1);
        (sup, pids)
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!is_dead(pids[&0]), "the worker died with the thread");
    assert!(sup.reconcile(Instant::now()).is_empty());
    assert_eq!(sup.status(Instant::now())[0].pid, Some(pids[&0]));
    sup.shutdown().unwrap();
}
