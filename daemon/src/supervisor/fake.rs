//! An in-memory [`Host`] and [`WorkerLauncher`] for unit tests: processes and cgroups are
//! records, and tests play the kernel and the workers (kill -9, hang, crash the daemon).
//!
//! Cgroup rules follow the kernel where the supervisor depends on them: a cgroup needs its
//! parent, `rmdir` fails while processes or child cgroups remain, `cgroup.kill` is recursive,
//! exited children stay zombies until reaped, and a spawn needs an existing cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::host::{ExitStatus, Host, HostError, LimitOutcome, SpawnRequest, SpawnedChild};
use super::launcher::{SpawnParts, WorkerChannel, WorkerLauncher};
use super::spec::PoolName;

const SIGKILL: ExitStatus = ExitStatus::Signaled(Signal::SIGKILL as i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    Running,
    Zombie(ExitStatus),
    Gone,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeProc {
    pub cgroup: PathBuf,
    pub life: Life,
    /// Spawned through the host: PR_SET_PDEATHSIG is armed.
    pub spawned: bool,
    /// Ours to reap: spawned by us, or adopted by us as the subreaper.
    pub child: bool,
    /// The worker a stray was forked by, while that lives.
    pub parent: Option<Pid>,
    pub token: Option<u64>,
    pub ready: bool,
    pub heartbeat: Option<Instant>,
    /// Ignores drain requests and SIGTERM and sends no heartbeats.
    pub hung: bool,
    /// Heartbeats but does not become ready: a model that takes long to load.
    pub loading: bool,
    pub drain_requested: bool,
}

#[derive(Default)]
struct State {
    next_pid: i32,
    cgroups: BTreeMap<PathBuf, BTreeMap<String, String>>,
    procs: BTreeMap<Pid, FakeProc>,
    fail_spawns: u32,
    cpu_unavailable: bool,
    kills: Vec<PathBuf>,
    subreaper: bool,
    /// Host-wide, so channels of a restarted supervisor never match an old process.
    next_token: u64,
    /// Channels held out of service (warm standbys); a channel is held before its process
    /// exists.
    held: BTreeSet<u64>,
}

impl State {
    fn in_subtree(cgroup: &Path, dir: &Path) -> bool {
        cgroup.starts_with(dir)
    }

    fn alive_in(&self, dir: &Path) -> impl Iterator<Item = (&Pid, &FakeProc)> {
        self.procs
            .iter()
            .filter(move |(_, p)| p.life == Life::Running && Self::in_subtree(&p.cgroup, dir))
    }

    fn end(&mut self, pid: Pid, status: ExitStatus) {
        let Some(p) = self.procs.get_mut(&pid).filter(|p| p.life == Life::Running) else {
            return;
        };
        // Another parent (or init) reaps what is not ours; our children wait for us.
        p.life = if p.child {
            Life::Zombie(status)
        } else {
            Life::Gone
        };
        let subreaper = self.subreaper;
        for orphan in self.procs.values_mut().filter(|o| o.parent == Some(pid)) {
            orphan.parent = None;
            orphan.child = subreaper;
        }
    }

    fn exists(&self, cgroup: &Path) -> bool {
        cgroup.as_os_str().is_empty() || self.cgroups.contains_key(cgroup)
    }
}

/// Shared handle: clones see the same processes and cgroups, so a test can drop a supervisor
/// and start another on the same "machine".
#[derive(Clone, Default)]
pub(crate) struct FakeHost {
    state: Arc<Mutex<State>>,
}

pub(crate) struct FakePidfd(Pid);

fn not_found(op: &'static str, path: &Path) -> HostError {
    HostError::io(op, path, io::Error::from(io::ErrorKind::NotFound))
}

impl FakeHost {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time passes for the fake workers: the live ones heartbeat and become ready, drained
    /// ones finish their frame and exit; frozen ones do nothing.
    pub fn tick(&self, now: Instant) {
        let mut state = self.state();
        let state = &mut *state;
        let mut exiting = Vec::new();
        for (pid, p) in state.procs.iter_mut() {
            let frozen = state
                .cgroups
                .get(&p.cgroup)
                .and_then(|files| files.get("cgroup.freeze"))
                .is_some_and(|v| v == "1");
            if p.life != Life::Running || p.hung || p.token.is_none() || frozen {
                continue;
            }
            if p.drain_requested {
                exiting.push(*pid);
            } else {
                p.ready |= !p.loading;
                p.heartbeat = Some(now);
            }
        }
        for pid in exiting {
            state.end(pid, ExitStatus::Exited(0));
        }
    }

    pub fn kill9(&self, pid: Pid) {
        self.state().end(pid, SIGKILL);
    }

    /// `pid` loads its model until [`FakeHost::finish_loading`]: it heartbeats, not ready.
    pub fn load_slowly(&self, pid: Pid) {
        if let Some(p) = self.state().procs.get_mut(&pid) {
            p.loading = true;
            p.ready = false;
        }
    }

    pub fn finish_loading(&self, pid: Pid) {
        if let Some(p) = self.state().procs.get_mut(&pid) {
            p.loading = false;
        }
    }

    pub fn hang(&self, pid: Pid) {
        if let Some(p) = self.state().procs.get_mut(&pid) {
            p.hung = true;
        }
    }

    pub fn fail_spawns(&self, count: u32) {
        self.state().fail_spawns = count;
    }

    pub fn set_cpu_unavailable(&self) {
        self.state().cpu_unavailable = true;
    }

    /// A process the supervisor did not spawn: a child forked by the worker running in
    /// `cgroup` (adopted by us if that worker dies), or one left by an earlier run.
    pub fn add_stray(&self, cgroup: &Path) -> Pid {
        let mut state = self.state();
        let parent = state
            .procs
            .iter()
            .find(|(_, p)| p.spawned && p.life == Life::Running && p.cgroup == cgroup)
            .map(|(pid, _)| *pid);
        state.next_pid += 1;
        let pid = Pid::from_raw(state.next_pid + 1000);
        state.procs.insert(
            pid,
            FakeProc {
                cgroup: cgroup.to_owned(),
                life: Life::Running,
                spawned: false,
                child: false,
                parent,
                token: None,
                ready: false,
                heartbeat: None,
                hung: false,
                loading: false,
                drain_requested: false,
            },
        );
        pid
    }

    /// Creates cgroups as an earlier run could have left them, parents included.
    pub fn add_cgroup(&self, cgroup: &Path) {
        let mut state = self.state();
        for ancestor in cgroup.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            state.cgroups.entry(ancestor.to_owned()).or_default();
        }
    }

    /// `kill -9` of the daemon: PR_SET_PDEATHSIG kills every process it spawned; init reaps
    /// them and our zombies. Strays survive.
    pub fn crash_daemon(&self) {
        let mut state = self.state();
        state.subreaper = false;
        let spawned: Vec<Pid> = state
            .procs
            .iter()
            .filter(|(_, p)| p.spawned && p.life == Life::Running)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in spawned {
            state.end(pid, SIGKILL);
        }
        for p in state.procs.values_mut() {
            if p.child {
                p.child = false;
                if matches!(p.life, Life::Zombie(_)) {
                    p.life = Life::Gone;
                }
            }
        }
    }

    pub fn live(&self) -> BTreeMap<Pid, FakeProc> {
        self.state()
            .procs
            .iter()
            .filter(|(_, p)| p.life == Life::Running)
            .map(|(pid, p)| (*pid, p.clone()))
            .collect()
    }

    pub fn zombies(&self) -> Vec<Pid> {
        self.state()
            .procs
            .iter()
            .filter(|(_, p)| matches!(p.life, Life::Zombie(_)))
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn cgroups(&self) -> BTreeSet<PathBuf> {
        self.state().cgroups.keys().cloned().collect()
    }

    pub fn file(&self, cgroup: &Path, file: &str) -> Option<String> {
        self.state().cgroups.get(cgroup)?.get(file).cloned()
    }

    /// Cgroups `kill_cgroup` was called on since the last call, in order.
    pub fn take_kills(&self) -> Vec<PathBuf> {
        std::mem::take(&mut self.state().kills)
    }

    pub fn is_subreaper(&self) -> bool {
        self.state().subreaper
    }

    pub fn drain_requested(&self, pid: Pid) -> bool {
        self.state()
            .procs
            .get(&pid)
            .is_some_and(|p| p.drain_requested)
    }

    pub fn held(&self, pid: Pid) -> bool {
        let state = self.state();
        state
            .procs
            .get(&pid)
            .and_then(|p| p.token)
            .is_some_and(|token| state.held.contains(&token))
    }
}

impl Host for FakeHost {
    type Pidfd = FakePidfd;

    fn create_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        let mut state = self.state();
        let parent = cgroup.parent().unwrap_or(Path::new(""));
        if !state.exists(parent) {
            return Err(not_found("creating", cgroup));
        }
        state.cgroups.entry(cgroup.to_owned()).or_default();
        Ok(())
    }

    fn remove_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        let mut state = self.state();
        if !state.cgroups.contains_key(cgroup) {
            return Ok(());
        }
        let has_children = state.cgroups.keys().any(|c| c.parent() == Some(cgroup));
        let populated = state
            .procs
            .values()
            .any(|p| p.life == Life::Running && p.cgroup == cgroup);
        if has_children || populated {
            return Err(HostError::Busy {
                path: cgroup.to_owned(),
            });
        }
        state.cgroups.remove(cgroup);
        Ok(())
    }

    fn child_cgroups(&self, cgroup: &Path) -> Result<Vec<OsString>, HostError> {
        Ok(self
            .state()
            .cgroups
            .keys()
            .filter(|c| c.parent() == Some(cgroup))
            .filter_map(|c| c.file_name().map(|n| n.to_owned()))
            .collect())
    }

    fn procs(&self, cgroup: &Path) -> Result<Vec<Pid>, HostError> {
        Ok(self
            .state()
            .procs
            .iter()
            .filter(|(_, p)| p.life == Life::Running && p.cgroup == cgroup)
            .map(|(pid, _)| *pid)
            .collect())
    }

    fn read_file(&self, cgroup: &Path, file: &str) -> Result<String, HostError> {
        let state = self.state();
        if !state.exists(cgroup) {
            return Err(not_found("reading", &cgroup.join(file)));
        }
        if file == "cgroup.events" {
            let populated = state.alive_in(cgroup).next().is_some();
            return Ok(format!("populated {}\nfrozen 0\n", u8::from(populated)));
        }
        state
            .cgroups
            .get(cgroup)
            .and_then(|files| files.get(file).cloned())
            .ok_or_else(|| not_found("reading", &cgroup.join(file)))
    }

    fn write_file(&self, cgroup: &Path, file: &str, value: &str) -> Result<(), HostError> {
        let mut state = self.state();
        let files = state
            .cgroups
            .get_mut(cgroup)
            .ok_or_else(|| not_found("writing", &cgroup.join(file)))?;
        files.insert(file.to_owned(), value.to_owned());
        Ok(())
    }

    fn kill_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        let mut state = self.state();
        state.kills.push(cgroup.to_owned());
        let victims: Vec<Pid> = state.alive_in(cgroup).map(|(pid, _)| *pid).collect();
        for pid in victims {
            state.end(pid, SIGKILL);
        }
        Ok(())
    }

    fn set_cpu_limit(&self, cgroup: &Path, millis: Option<u64>) -> Result<LimitOutcome, HostError> {
        if self.state().cpu_unavailable {
            return Ok(LimitOutcome::Unavailable {
                reason: "fake host without a cpu controller".to_owned(),
            });
        }
        let value = millis.map_or("max 100000".to_owned(), |m| format!("{} 100000", m * 100));
        self.write_file(cgroup, "cpu.max", &value)?;
        Ok(LimitOutcome::Applied)
    }

    fn set_memory_limit(
        &self,
        cgroup: &Path,
        bytes: Option<u64>,
    ) -> Result<LimitOutcome, HostError> {
        let value = bytes.map_or("max".to_owned(), |b| b.to_string());
        self.write_file(cgroup, "memory.max", &value)?;
        Ok(LimitOutcome::Applied)
    }

    fn spawn(&self, request: SpawnRequest) -> Result<SpawnedChild<FakePidfd>, HostError> {
        let mut state = self.state();
        if state.fail_spawns > 0 {
            state.fail_spawns -= 1;
            return Err(HostError::Spawn {
                program: request.program,
                stage: super::host::SpawnStage::Exec,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        if !state.cgroups.contains_key(&request.cgroup) {
            return Err(not_found("opening", &request.cgroup));
        }
        let token = request
            .args
            .iter()
            .find_map(|a| a.to_str()?.strip_prefix("--token=")?.parse().ok());
        state.next_pid += 1;
        let pid = Pid::from_raw(state.next_pid + 1000);
        state.procs.insert(
            pid,
            FakeProc {
                cgroup: request.cgroup,
                life: Life::Running,
                spawned: true,
                child: true,
                parent: None,
                token,
                ready: false,
                heartbeat: None,
                hung: false,
                loading: false,
                drain_requested: false,
            },
        );
        Ok(SpawnedChild {
            pid,
            pidfd: FakePidfd(pid),
        })
    }

    fn signal(&self, child: &SpawnedChild<FakePidfd>, signal: Signal) -> Result<(), HostError> {
        let mut state = self.state();
        let hung = state.procs.get(&child.pidfd.0).is_some_and(|p| p.hung);
        match signal {
            Signal::SIGKILL => state.end(child.pidfd.0, SIGKILL),
            Signal::SIGTERM if !hung => {
                state.end(child.pidfd.0, ExitStatus::Signaled(signal as i32))
            }
            _ => {}
        }
        Ok(())
    }

    fn try_reap(&self, child: &SpawnedChild<FakePidfd>) -> Result<Option<ExitStatus>, HostError> {
        let mut state = self.state();
        let pid = child.pidfd.0;
        let Some(p) = state.procs.get_mut(&pid) else {
            return Err(HostError::Process {
                op: "waitid",
                pid,
                source: io::Error::from_raw_os_error(libc::ECHILD),
            });
        };
        match p.life {
            Life::Running => Ok(None),
            Life::Zombie(status) => {
                p.life = Life::Gone;
                Ok(Some(status))
            }
            Life::Gone => Err(HostError::Process {
                op: "waitid",
                pid,
                source: io::Error::from_raw_os_error(libc::ECHILD),
            }),
        }
    }

    /// Waiting lets the drained workers finish their frame.
    fn wait_exit(&self, _: &[&SpawnedChild<FakePidfd>], _: Duration) -> Result<(), HostError> {
        let mut state = self.state();
        let done: Vec<Pid> = state
            .procs
            .iter()
            .filter(|(_, p)| p.life == Life::Running && p.drain_requested && !p.hung)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in done {
            state.end(pid, ExitStatus::Exited(0));
        }
        Ok(())
    }

    fn wait_unpopulated(&self, cgroup: &Path, _: Duration) -> Result<bool, HostError> {
        Ok(!self.populated(cgroup)?)
    }

    fn set_child_subreaper(&self) -> Result<(), HostError> {
        self.state().subreaper = true;
        Ok(())
    }

    fn reap_orphans(&self, tracked: &dyn Fn(Pid) -> bool) -> Result<usize, HostError> {
        let mut state = self.state();
        let mut reaped = 0;
        for (pid, p) in state.procs.iter_mut() {
            if matches!(p.life, Life::Zombie(_))
                && p.child
                && !tracked(*pid)
                && p.cgroup.starts_with(super::WORKERS_DIR)
            {
                p.life = Life::Gone;
                reaped += 1;
            }
        }
        Ok(reaped)
    }
}

/// Launches fake workers whose channel reads the fake host's record of the process.
pub(crate) struct FakeLauncher {
    host: FakeHost,
}

impl FakeLauncher {
    pub fn new(host: &FakeHost) -> Self {
        FakeLauncher { host: host.clone() }
    }
}

pub(crate) struct FakeChannel {
    host: FakeHost,
    token: u64,
}

impl FakeChannel {
    fn with<T>(&self, f: impl FnOnce(&mut FakeProc) -> T) -> Option<T> {
        let mut state = self.host.state();
        state
            .procs
            .values_mut()
            .find(|p| p.token == Some(self.token))
            .map(f)
    }
}

impl WorkerChannel for FakeChannel {
    fn is_ready(&mut self) -> bool {
        self.with(|p| p.ready && p.life == Life::Running)
            .unwrap_or(false)
    }

    fn last_heartbeat(&mut self) -> Option<Instant> {
        self.with(|p| p.heartbeat).flatten()
    }

    fn drain(&mut self) -> io::Result<()> {
        self.with(|p| {
            if !p.hung {
                p.drain_requested = true;
            }
        })
        .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn hold(&mut self, held: bool) {
        let mut state = self.host.state();
        if held {
            state.held.insert(self.token);
        } else {
            state.held.remove(&self.token);
        }
    }
}

impl WorkerLauncher for FakeLauncher {
    type Channel = FakeChannel;

    fn prepare(&self, pool: &PoolName, id: u32) -> io::Result<(SpawnParts, FakeChannel)> {
        let token = {
            let mut state = self.host.state();
            state.next_token += 1;
            state.next_token
        };
        let parts = SpawnParts {
            program: PathBuf::from("/usr/bin/helmetd"),
            args: vec![
                OsString::from("worker"),
                OsString::from(format!("--pool={pool}")),
                OsString::from(format!("--id={id}")),
                OsString::from(format!("--token={token}")),
            ],
            fds: Vec::new(),
        };
        let channel = FakeChannel {
            host: self.host.clone(),
            token,
        };
        Ok((parts, channel))
    }
}
