//! The reconcile loop: desired pools in, process and cgroup effects out through [`Host`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{info, warn};

use super::host::{Host, HostError, LimitOutcome, SpawnRequest, SpawnedChild};
use super::launcher::{WorkerChannel, WorkerLauncher};
use super::spec::{PoolName, PoolSpec, SupervisorConfig};

/// Every worker cgroup lives below this directory of the host's root; nothing else does, so
/// the start-up sweep may kill and remove all of it.
pub const WORKERS_DIR: &str = "workers";

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("worker {pool}/{id}: {source}")]
    Worker {
        pool: PoolName,
        id: u32,
        #[source]
        source: HostError,
    },
    #[error("preparing worker {pool}/{id}: {source}")]
    Launch {
        pool: PoolName,
        id: u32,
        #[source]
        source: io::Error,
    },
    #[error("pool {pool}: {source}")]
    Pool {
        pool: PoolName,
        #[source]
        source: HostError,
    },
    #[error("{action}: {source}")]
    Subtree {
        action: &'static str,
        #[source]
        source: HostError,
    },
    #[error("{} still has processes {waited:?} after cgroup.kill", path.display())]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error("reconcile before startup_sweep: leftovers of an earlier run may still run")]
    NotStarted,
    #[error("startup_sweep runs once, before any worker starts")]
    AlreadyStarted,
    #[error("the supervisor has been shut down")]
    ShutDown,
}

/// What one worker slot is doing, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned, not yet ready (model loading).
    Starting,
    Ready,
    /// Asked to finish its frame and exit.
    Draining,
    /// Killed or retired, waiting for the process or its cgroup to go.
    Stopping,
    /// No process; the next start is due at `until` (crash-loop backoff).
    Backoff {
        until: Instant,
    },
    /// A warm standby: out of service, loading its model, then `frozen` until a scale-up
    /// thaws it. Not a replica: the autoscaler does not count it.
    Standby {
        frozen: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub pool: PoolName,
    pub id: u32,
    pub pid: Option<Pid>,
    pub state: WorkerState,
    /// Starts of this slot after its first.
    pub restarts: u32,
    pub started_at: Option<Instant>,
    pub generation: Option<u64>,
}

/// What the start-up sweep found of an earlier run (and killed and removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub processes: Vec<Pid>,
    pub cgroups: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that exited on their own after the drain request.
    pub drained: usize,
    /// Workers still running when the drain timeout ended, killed with `cgroup.kill`.
    pub killed: usize,
}

enum Stop {
    Draining {
        deadline: Instant,
    },
    /// `failure`: the kill ends a crash-like condition (hang, no readiness) and counts
    /// towards the slot's backoff; a kill after a drain timeout or a pool removal does not.
    Killing {
        at: Instant,
        failure: bool,
    },
}

/// How a standby worker was frozen, so it is thawed the same way.
#[derive(Clone, Copy)]
enum Freezer {
    /// `cgroup.freeze`: the whole cgroup, descendants included.
    Cgroup,
    /// SIGSTOP, on kernels without `cgroup.freeze`.
    Signal,
}

struct Worker<P, C> {
    child: SpawnedChild<P>,
    channel: C,
    generation: u64,
    started_at: Instant,
    ready_at: Option<Instant>,
    stop: Option<Stop>,
    /// Out of service as a warm standby: given no frames (see [`WorkerChannel::hold`]).
    held: bool,
    frozen: Option<(Instant, Freezer)>,
}

/// What a slot is for under the pool's current spec.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Serve,
    Standby,
    Retire,
}

impl PoolSpec {
    fn role(&self, id: u32) -> Role {
        if id < self.replicas {
            Role::Serve
        } else if id < self.replicas.saturating_add(self.standby) {
            Role::Standby
        } else {
            Role::Retire
        }
    }
}

struct Slot<P, C> {
    worker: Option<Worker<P, C>>,
    /// Consecutive failed starts: crashes, hangs, spawn errors. Reset by a healthy run.
    failures: u32,
    restarts: u32,
    started_once: bool,
    not_before: Instant,
    cgroup_created: bool,
    /// `(cpu millis, memory bytes)` last written to this slot's cgroup.
    limits: Option<(Option<u64>, Option<u64>)>,
}

struct Pool<P, C> {
    /// `None` while the pool is being removed.
    spec: Option<PoolSpec>,
    slots: BTreeMap<u32, Slot<P, C>>,
    cgroup_created: bool,
    /// When the removal last sent `cgroup.kill`.
    kill_sent: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    Running,
    ShutDown,
}

/// Keeps the desired workers alive. Call [`Supervisor::startup_sweep`] once, then
/// [`Supervisor::reconcile`] on every tick (every 100–250 ms) and after every
/// [`Supervisor::set_desired`]; end with [`Supervisor::shutdown`]. Dropping it without
/// shutdown leaves the workers to the host (a dropped `RealHost` kills them) and to the next
/// start-up sweep.
pub struct Supervisor<H: Host, L: WorkerLauncher> {
    host: H,
    launcher: L,
    config: SupervisorConfig,
    desired: BTreeMap<PoolName, PoolSpec>,
    pools: BTreeMap<PoolName, Pool<H::Pidfd, L::Channel>>,
    phase: Phase,
}

fn pool_dir(pool: &PoolName) -> PathBuf {
    Path::new(WORKERS_DIR).join(pool.as_str())
}

fn slot_dir(pool: &PoolName, id: u32) -> PathBuf {
    pool_dir(pool).join(id.to_string())
}

/// Everything below `dir` (children first), for removal in that order.
fn collect_tree<H: Host>(host: &H, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), HostError> {
    for name in host.child_cgroups(dir)? {
        let child = dir.join(name);
        collect_tree(host, &child, out)?;
        out.push(child);
    }
    Ok(())
}

/// Removes `dir` and everything below it, children first; processes must be gone.
fn remove_tree<H: Host>(host: &H, dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let mut all = Vec::new();
    collect_tree(host, dir, &mut all)?;
    all.push(dir.to_owned());
    for cgroup in &all {
        host.remove_cgroup(cgroup)?;
    }
    Ok(all)
}

/// The state the reconcile of one pool needs besides the pool.
struct Ctx<'a, H: Host, L> {
    host: &'a H,
    launcher: &'a L,
    config: &'a SupervisorConfig,
    now: Instant,
    errors: Vec<SupervisorError>,
}

impl<H: Host, L: WorkerLauncher> Ctx<'_, H, L> {
    fn worker_error(&mut self, pool: &PoolName, id: u32, source: HostError) {
        self.errors.push(SupervisorError::Worker {
            pool: pool.clone(),
            id,
            source,
        });
    }

    fn kill(
        &mut self,
        pool: &PoolName,
        id: u32,
        worker: &mut Worker<H::Pidfd, L::Channel>,
        failure: bool,
    ) {
        if let Err(e) = self.host.kill_cgroup(&slot_dir(pool, id)) {
            self.worker_error(pool, id, e);
        }
        worker.stop = Some(Stop::Killing {
            at: self.now,
            failure,
        });
    }

    /// Asks the worker to finish its frame; SIGTERM where the channel cannot carry that.
    fn drain(&mut self, pool: &PoolName, id: u32, worker: &mut Worker<H::Pidfd, L::Channel>) {
        if let Err(e) = worker.channel.drain() {
            info!(%pool, id, error = %e, "drain over the channel failed; sending SIGTERM");
            if let Err(e) = self.host.signal(&worker.child, Signal::SIGTERM) {
                self.worker_error(pool, id, e);
            }
        }
        worker.stop = Some(Stop::Draining {
            deadline: self.now + self.config.drain_timeout,
        });
    }

    /// A loaded standby stops using CPU: its cgroup is frozen, or the process stopped where
    /// the kernel has no `cgroup.freeze`.
    fn freeze(&mut self, pool: &PoolName, id: u32, worker: &mut Worker<H::Pidfd, L::Channel>) {
        let freezer = match self.host.freeze(&slot_dir(pool, id), true) {
            Ok(()) => Freezer::Cgroup,
            Err(HostError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                if let Err(e) = self.host.signal(&worker.child, Signal::SIGSTOP) {
                    return self.worker_error(pool, id, e);
                }
                Freezer::Signal
            }
            Err(e) => return self.worker_error(pool, id, e),
        };
        info!(%pool, id, pid = worker.child.pid.as_raw(), "warm standby loaded and frozen");
        worker.frozen = Some((self.now, freezer));
    }

    /// A standby goes into service: thawed, and given frames from now on. Its heartbeats
    /// are judged from now, since a frozen worker sends none.
    fn promote(&mut self, pool: &PoolName, id: u32, worker: &mut Worker<H::Pidfd, L::Channel>) {
        if let Some((since, freezer)) = worker.frozen {
            let thawed = match freezer {
                Freezer::Cgroup => self.host.freeze(&slot_dir(pool, id), false),
                Freezer::Signal => self.host.signal(&worker.child, Signal::SIGCONT),
            };
            if let Err(e) = thawed {
                // Still frozen: killed and started afresh rather than left serving nothing.
                self.worker_error(pool, id, e);
                return self.kill(pool, id, worker, true);
            }
            worker.frozen = None;
            info!(%pool, id, pid = worker.child.pid.as_raw(), frozen_for = ?self.now.saturating_duration_since(since), "warm standby thawed into service");
        }
        worker.held = false;
        worker.channel.hold(false);
        if worker.ready_at.is_some() {
            worker.ready_at = Some(self.now);
        }
    }

    fn apply_limits(&self, pool: &PoolName, id: u32, spec: &PoolSpec) -> Result<(), HostError> {
        let dir = slot_dir(pool, id);
        let outcomes = [
            ("cpu", self.host.set_cpu_limit(&dir, spec.cpu_limit_millis)?),
            (
                "memory",
                self.host.set_memory_limit(&dir, spec.memory_limit_bytes)?,
            ),
        ];
        for (controller, outcome) in outcomes {
            if let LimitOutcome::Unavailable { reason } = outcome {
                warn!(%pool, id, controller, %reason, "limit not applied");
            }
        }
        Ok(())
    }

    fn start(
        &mut self,
        pool: &PoolName,
        id: u32,
        slot: &mut Slot<H::Pidfd, L::Channel>,
        spec: &PoolSpec,
    ) {
        let held = spec.role(id) == Role::Standby;
        let dir = slot_dir(pool, id);
        let worker_error = |source| SupervisorError::Worker {
            pool: pool.clone(),
            id,
            source,
        };
        let result = (|| {
            if !slot.cgroup_created {
                self.host.create_cgroup(&dir).map_err(worker_error)?;
                slot.cgroup_created = true;
            }
            let wanted = (spec.cpu_limit_millis, spec.memory_limit_bytes);
            if slot.limits != Some(wanted) {
                // A limit that cannot be written is a failed start: running unlimited could
                // starve the camera pipelines the limit protects.
                self.apply_limits(pool, id, spec).map_err(worker_error)?;
                slot.limits = Some(wanted);
            }
            let (parts, mut channel) =
                self.launcher
                    .prepare(pool, id)
                    .map_err(|source| SupervisorError::Launch {
                        pool: pool.clone(),
                        id,
                        source,
                    })?;
            // Before the process exists, so no frame can reach a standby.
            channel.hold(held);
            let child = self
                .host
                .spawn(SpawnRequest {
                    program: parts.program,
                    args: parts.args,
                    fds: parts.fds,
                    cgroup: dir.clone(),
                })
                .map_err(worker_error)?;
            Ok((child, channel))
        })();
        match result {
            Ok((child, channel)) => {
                info!(%pool, id, pid = child.pid.as_raw(), generation = spec.generation, standby = held, "worker started");
                if slot.started_once {
                    slot.restarts += 1;
                }
                slot.started_once = true;
                slot.worker = Some(Worker {
                    child,
                    channel,
                    generation: spec.generation,
                    started_at: self.now,
                    ready_at: None,
                    stop: None,
                    held,
                    frozen: None,
                });
            }
            Err(error) => {
                slot.failures += 1;
                slot.not_before = self.now + self.config.backoff(slot.failures);
                self.errors.push(error);
            }
        }
    }

    /// Reaps the slot's worker if it ended; true if the slot has no worker afterwards.
    fn reap(&mut self, pool: &PoolName, id: u32, slot: &mut Slot<H::Pidfd, L::Channel>) -> bool {
        let Some(worker) = &slot.worker else {
            return true;
        };
        let status = match self.host.try_reap(&worker.child) {
            Ok(None) => return false,
            Ok(Some(status)) => status.to_string(),
            // The pidfd cannot say any more: the process is not ours to wait for any longer.
            Err(e) => {
                self.worker_error(pool, id, e);
                "unknown".to_owned()
            }
        };
        let expected = match worker.stop {
            Some(Stop::Draining { .. }) => true,
            Some(Stop::Killing { failure, .. }) => !failure,
            None => false,
        };
        if expected {
            info!(%pool, id, pid = worker.child.pid.as_raw(), %status, "worker stopped");
            slot.not_before = self.now;
        } else {
            slot.failures += 1;
            let delay = self.config.backoff(slot.failures);
            warn!(%pool, id, pid = worker.child.pid.as_raw(), %status, failures = slot.failures, ?delay, "worker ended unexpectedly");
            slot.not_before = self.now + delay;
        }
        // The cgroup outlives its worker, and a process cloned into a frozen cgroup is frozen
        // from its first instruction: the slot's next worker must find it thawed.
        if let Some((_, Freezer::Cgroup)) = worker.frozen
            && let Err(e) = self.host.freeze(&slot_dir(pool, id), false)
        {
            self.worker_error(pool, id, e);
        }
        slot.worker = None;
        true
    }

    /// Readiness, heartbeat, drain and kill deadlines of a running worker.
    fn watch(&mut self, pool: &PoolName, id: u32, slot: &mut Slot<H::Pidfd, L::Channel>) {
        let now = self.now;
        let Some(worker) = slot.worker.as_mut() else {
            return;
        };
        match worker.stop {
            Some(Stop::Draining { deadline }) => {
                if now >= deadline {
                    warn!(%pool, id, "drain timed out; killing");
                    self.kill(pool, id, worker, false);
                }
            }
            Some(Stop::Killing { at, failure }) => {
                if now.saturating_duration_since(at) >= self.config.kill_timeout {
                    self.kill(pool, id, worker, failure);
                }
            }
            // Frozen: no heartbeats to expect.
            None if worker.frozen.is_some() => {}
            None => {
                if worker.ready_at.is_none() && worker.channel.is_ready() {
                    worker.ready_at = Some(now);
                }
                match worker.ready_at {
                    None => {
                        let heard = worker
                            .channel
                            .last_heartbeat()
                            .map_or(worker.started_at, |beat| beat.max(worker.started_at));
                        if now.saturating_duration_since(worker.started_at)
                            >= self.config.ready_timeout
                        {
                            warn!(
                                %pool, id, timeout = ?self.config.ready_timeout,
                                "worker still loading its model at edge.worker.ready_timeout_s; killing"
                            );
                            self.kill(pool, id, worker, true);
                        } else if now.saturating_duration_since(heard)
                            >= self.config.loading_heartbeat_timeout
                        {
                            warn!(%pool, id, "worker silent while starting; killing");
                            self.kill(pool, id, worker, true);
                        }
                    }
                    Some(ready_at) => {
                        let heard = worker
                            .channel
                            .last_heartbeat()
                            .map_or(ready_at, |beat| beat.max(ready_at));
                        if now.saturating_duration_since(heard) >= self.config.heartbeat_timeout {
                            warn!(%pool, id, "no heartbeat; killing the hung worker");
                            self.kill(pool, id, worker, true);
                        } else if now.saturating_duration_since(ready_at)
                            >= self.config.backoff_reset_after
                        {
                            slot.failures = 0;
                        }
                    }
                }
            }
        }
    }

    /// A slot without a worker: first the cgroup must be empty (a dead worker's descendants
    /// are killed), then it is started again or, if retired, removed. True once a retired
    /// slot is gone.
    fn settle_idle(
        &mut self,
        pool: &PoolName,
        id: u32,
        slot: &mut Slot<H::Pidfd, L::Channel>,
        spec: Option<&PoolSpec>,
    ) -> bool {
        let dir = slot_dir(pool, id);
        if slot.cgroup_created {
            match self.host.populated(&dir) {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(e) = self.host.kill_cgroup(&dir) {
                        self.worker_error(pool, id, e);
                    }
                    return false;
                }
                Err(e) => {
                    self.worker_error(pool, id, e);
                    return false;
                }
            }
        }
        match spec {
            Some(spec) => {
                if self.now >= slot.not_before {
                    self.start(pool, id, slot, spec);
                }
                false
            }
            None => {
                if slot.cgroup_created {
                    match self.host.remove_cgroup(&dir) {
                        Ok(()) => slot.cgroup_created = false,
                        Err(e) => {
                            self.worker_error(pool, id, e);
                            return false;
                        }
                    }
                }
                true
            }
        }
    }

    fn reconcile_pool(&mut self, name: &PoolName, pool: &mut Pool<H::Pidfd, L::Channel>) {
        let Some(spec) = pool.spec.clone() else {
            return self.remove_pool(name, pool);
        };
        if !pool.cgroup_created {
            if let Err(source) = self.host.create_cgroup(&pool_dir(name)) {
                self.errors.push(SupervisorError::Pool {
                    pool: name.clone(),
                    source,
                });
                return;
            }
            pool.cgroup_created = true;
        }
        for id in 0..spec.replicas.saturating_add(spec.standby) {
            pool.slots.entry(id).or_insert_with(|| Slot {
                worker: None,
                failures: 0,
                restarts: 0,
                started_once: false,
                not_before: self.now,
                cgroup_created: false,
                limits: None,
            });
        }
        // Generation changes replace one worker at a time, and only while all others serve.
        let serving_ids = 0..spec.replicas;
        let mut replacing = pool.slots.values().any(|s| {
            s.worker
                .as_ref()
                .is_some_and(|w| w.generation != spec.generation && w.stop.is_some())
        });
        let all_serving = pool.slots.range(serving_ids).all(|(_, s)| {
            s.worker
                .as_ref()
                .is_some_and(|w| w.ready_at.is_some() && w.stop.is_none())
        });
        let wanted_limits = (spec.cpu_limit_millis, spec.memory_limit_bytes);
        let mut retired = Vec::new();
        for (&id, slot) in pool.slots.iter_mut() {
            let role = spec.role(id);
            let desired = role != Role::Retire;
            if slot.cgroup_created && desired && slot.limits != Some(wanted_limits) {
                // Limits change live; a failure is reported once, not on every tick.
                if let Err(e) = self.apply_limits(name, id, &spec) {
                    self.worker_error(name, id, e);
                }
                slot.limits = Some(wanted_limits);
            }
            if !self.reap(name, id, slot) {
                if let Some(worker) = slot.worker.as_mut()
                    && worker.stop.is_none()
                {
                    match role {
                        Role::Retire => {
                            // A frozen worker holds no frame and could not act on a drain.
                            if worker.ready_at.is_some() && worker.frozen.is_none() {
                                info!(pool = %name, id, "scaling down: draining");
                                self.drain(name, id, worker);
                            } else {
                                self.kill(name, id, worker, false);
                            }
                        }
                        Role::Serve => {
                            if worker.held {
                                self.promote(name, id, worker);
                            }
                            if worker.stop.is_none()
                                && worker.generation != spec.generation
                                && !replacing
                                && all_serving
                            {
                                info!(pool = %name, id, from = worker.generation, to = spec.generation, "replacing with the new generation");
                                replacing = true;
                                self.drain(name, id, worker);
                            }
                        }
                        Role::Standby => {
                            if !worker.held && worker.ready_at.is_some() {
                                // It may hold frames: it finishes them and exits, and the slot
                                // starts again as a standby.
                                info!(pool = %name, id, "scaling down: draining into warm standby");
                                self.drain(name, id, worker);
                            } else if worker.generation != spec.generation {
                                self.kill(name, id, worker, false);
                            } else {
                                // Not ready yet, so never given a frame: held from now on.
                                worker.held = true;
                                worker.channel.hold(true);
                                if worker.ready_at.is_some() && worker.frozen.is_none() {
                                    self.freeze(name, id, worker);
                                }
                            }
                        }
                    }
                }
                self.watch(name, id, slot);
                continue;
            }
            if self.settle_idle(name, id, slot, desired.then_some(&spec)) {
                retired.push(id);
            }
        }
        for id in retired {
            pool.slots.remove(&id);
        }
    }

    /// The cascade of a pool dropped from the config: `cgroup.kill` of the whole pool (no
    /// drain), then its cgroups bottom-up once empty.
    fn remove_pool(&mut self, name: &PoolName, pool: &mut Pool<H::Pidfd, L::Channel>) {
        let dir = pool_dir(name);
        let due = pool
            .kill_sent
            .is_none_or(|at| self.now.saturating_duration_since(at) >= self.config.kill_timeout);
        if due && pool.cgroup_created {
            if let Err(source) = self.host.kill_cgroup(&dir) {
                self.errors.push(SupervisorError::Pool {
                    pool: name.clone(),
                    source,
                });
            }
            pool.kill_sent = Some(self.now);
            for slot in pool.slots.values_mut() {
                if let Some(worker) = slot.worker.as_mut() {
                    worker.stop = Some(Stop::Killing {
                        at: self.now,
                        failure: false,
                    });
                }
            }
        }
        let mut gone = Vec::new();
        for (&id, slot) in pool.slots.iter_mut() {
            if self.reap(name, id, slot) && self.settle_idle(name, id, slot, None) {
                gone.push(id);
            }
        }
        for id in gone {
            pool.slots.remove(&id);
        }
        if pool.slots.is_empty() && pool.cgroup_created {
            match remove_tree(self.host, &dir) {
                Ok(_) => pool.cgroup_created = false,
                Err(source) => self.errors.push(SupervisorError::Pool {
                    pool: name.clone(),
                    source,
                }),
            }
        }
    }
}

impl<H: Host, L: WorkerLauncher> Supervisor<H, L> {
    pub fn new(host: H, launcher: L, config: SupervisorConfig) -> Self {
        Supervisor {
            host,
            launcher,
            config,
            desired: BTreeMap::new(),
            pools: BTreeMap::new(),
            phase: Phase::Fresh,
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn launcher(&self) -> &L {
        &self.launcher
    }

    /// For a reload that changes how future workers are started.
    pub fn launcher_mut(&mut self) -> &mut L {
        &mut self.launcher
    }

    /// The new desired state; applied by the next [`Supervisor::reconcile`].
    pub fn set_desired(&mut self, desired: BTreeMap<PoolName, PoolSpec>) {
        self.desired = desired;
    }

    fn tracked_pids(&self) -> BTreeSet<Pid> {
        self.pools
            .values()
            .flat_map(|pool| pool.slots.values())
            .filter_map(|slot| slot.worker.as_ref().map(|w| w.child.pid))
            .collect()
    }

    /// Kills and removes everything under `workers/`: processes and cgroups an earlier run
    /// left behind (crash, `kill -9`, power loss) must be gone before any worker starts, or a
    /// "ghost" would keep running beside its replacement. Also makes this process the
    /// subreaper of worker descendants.
    pub fn startup_sweep(&mut self) -> Result<SweepReport, SupervisorError> {
        match self.phase {
            Phase::Fresh => {}
            Phase::Running => return Err(SupervisorError::AlreadyStarted),
            Phase::ShutDown => return Err(SupervisorError::ShutDown),
        }
        let host = &self.host;
        let subtree = |action, source| SupervisorError::Subtree { action, source };
        host.set_child_subreaper()
            .map_err(|e| subtree("becoming the subreaper", e))?;
        let workers = Path::new(WORKERS_DIR);
        let mut cgroups = Vec::new();
        collect_tree(host, workers, &mut cgroups).map_err(|e| subtree("listing leftovers", e))?;
        let mut processes = host
            .procs(workers)
            .map_err(|e| subtree("listing leftovers", e))?;
        for cgroup in &cgroups {
            processes.extend(
                host.procs(cgroup)
                    .map_err(|e| subtree("listing leftovers", e))?,
            );
        }
        if !processes.is_empty() {
            warn!(count = processes.len(), pids = ?processes, "killing processes left by an earlier run");
        }
        host.kill_cgroup(workers)
            .map_err(|e| subtree("killing leftovers", e))?;
        if !host
            .wait_unpopulated(workers, self.config.kill_timeout)
            .map_err(|e| subtree("waiting for leftovers to die", e))?
        {
            return Err(SupervisorError::StillPopulated {
                path: workers.to_owned(),
                waited: self.config.kill_timeout,
            });
        }
        host.reap_orphans(&|_| false)
            .map_err(|e| subtree("reaping leftovers", e))?;
        for cgroup in cgroups.iter().rev().filter(|c| c.parent() == Some(workers)) {
            remove_tree(host, cgroup).map_err(|e| subtree("removing leftover cgroups", e))?;
        }
        if !cgroups.is_empty() {
            info!(
                count = cgroups.len(),
                "removed cgroups left by an earlier run"
            );
        }
        host.create_cgroup(workers)
            .map_err(|e| subtree("creating the workers cgroup", e))?;
        self.phase = Phase::Running;
        Ok(SweepReport { processes, cgroups })
    }

    /// One step towards the desired state at time `now`; never blocks. Errors are per worker
    /// or pool and are retried on later ticks.
    pub fn reconcile(&mut self, now: Instant) -> Vec<SupervisorError> {
        match self.phase {
            Phase::Fresh => return vec![SupervisorError::NotStarted],
            Phase::ShutDown => return vec![SupervisorError::ShutDown],
            Phase::Running => {}
        }
        for (name, spec) in &self.desired {
            let pool = self.pools.entry(name.clone()).or_insert_with(|| Pool {
                spec: Some(spec.clone()),
                slots: BTreeMap::new(),
                cgroup_created: false,
                kill_sent: None,
            });
            // A pool being removed is created afresh once the removal has finished.
            if pool.spec.is_some() {
                pool.spec = Some(spec.clone());
            }
        }
        for (name, pool) in self.pools.iter_mut() {
            if !self.desired.contains_key(name) && pool.spec.is_some() {
                info!(pool = %name, "pool removed from the desired state: killing its workers");
                pool.spec = None;
            }
        }
        let mut ctx = Ctx {
            host: &self.host,
            launcher: &self.launcher,
            config: &self.config,
            now,
            errors: Vec::new(),
        };
        for (name, pool) in self.pools.iter_mut() {
            ctx.reconcile_pool(name, pool);
        }
        let mut errors = ctx.errors;
        self.pools
            .retain(|_, pool| pool.spec.is_some() || pool.cgroup_created || !pool.slots.is_empty());
        let tracked = self.tracked_pids();
        if let Err(source) = self.host.reap_orphans(&|pid| tracked.contains(&pid)) {
            errors.push(SupervisorError::Subtree {
                action: "reaping orphans",
                source,
            });
        }
        errors
    }

    /// Drains every worker, waits up to the drain timeout, kills what is left with
    /// `cgroup.kill` and removes `workers/` with everything below it.
    pub fn shutdown(&mut self) -> Result<ShutdownReport, SupervisorError> {
        match self.phase {
            Phase::Running => {}
            Phase::Fresh | Phase::ShutDown => {
                self.phase = Phase::ShutDown;
                return Ok(ShutdownReport::default());
            }
        }
        self.phase = Phase::ShutDown;
        self.desired.clear();
        let now = Instant::now();
        let mut ctx = Ctx {
            host: &self.host,
            launcher: &self.launcher,
            config: &self.config,
            now,
            errors: Vec::new(),
        };
        for (name, pool) in self.pools.iter_mut() {
            for (&id, slot) in pool.slots.iter_mut() {
                if let Some(worker) = slot.worker.as_mut().filter(|w| w.stop.is_none()) {
                    if worker.ready_at.is_some() && worker.frozen.is_none() {
                        ctx.drain(name, id, worker);
                    } else {
                        ctx.kill(name, id, worker, false);
                    }
                }
            }
        }
        for error in ctx.errors {
            warn!(%error, "shutdown");
        }
        let host = &self.host;
        let subtree = |action, source| SupervisorError::Subtree { action, source };
        let mut workers: Vec<SpawnedChild<H::Pidfd>> = Vec::new();
        for pool in std::mem::take(&mut self.pools).into_values() {
            workers.extend(
                pool.slots
                    .into_values()
                    .filter_map(|s| s.worker.map(|w| w.child)),
            );
        }
        let children: Vec<&SpawnedChild<H::Pidfd>> = workers.iter().collect();
        host.wait_exit(&children, self.config.drain_timeout)
            .map_err(|e| subtree("waiting for drained workers", e))?;
        let mut report = ShutdownReport::default();
        let mut left = Vec::new();
        for child in &workers {
            match host.try_reap(child) {
                Ok(Some(_)) => report.drained += 1,
                Ok(None) => left.push(child),
                Err(e) => return Err(subtree("reaping drained workers", e)),
            }
        }
        report.killed = left.len();
        let dir = Path::new(WORKERS_DIR);
        host.kill_cgroup(dir)
            .map_err(|e| subtree("killing the workers", e))?;
        let emptied = host
            .wait_unpopulated(dir, self.config.kill_timeout)
            .map_err(|e| subtree("waiting for the workers to die", e))?;
        host.wait_exit(&left, self.config.kill_timeout)
            .map_err(|e| subtree("waiting for killed workers", e))?;
        for child in left {
            host.try_reap(child)
                .map_err(|e| subtree("reaping killed workers", e))?;
        }
        host.reap_orphans(&|_| false)
            .map_err(|e| subtree("reaping orphans", e))?;
        if !emptied {
            return Err(SupervisorError::StillPopulated {
                path: dir.to_owned(),
                waited: self.config.kill_timeout,
            });
        }
        remove_tree(host, dir).map_err(|e| subtree("removing the workers cgroups", e))?;
        info!(
            drained = report.drained,
            killed = report.killed,
            "supervisor shut down"
        );
        Ok(report)
    }

    /// One entry per worker slot, for status and metrics.
    pub fn status(&self, now: Instant) -> Vec<WorkerStatus> {
        let mut out = Vec::new();
        for (name, pool) in &self.pools {
            for (&id, slot) in &pool.slots {
                let retired = pool
                    .spec
                    .as_ref()
                    .is_none_or(|spec| spec.role(id) == Role::Retire);
                let state = match &slot.worker {
                    Some(worker) => match worker.stop {
                        Some(Stop::Draining { .. }) => WorkerState::Draining,
                        Some(Stop::Killing { .. }) => WorkerState::Stopping,
                        None if worker.held => WorkerState::Standby {
                            frozen: worker.frozen.is_some(),
                        },
                        None if worker.ready_at.is_some() => WorkerState::Ready,
                        None => WorkerState::Starting,
                    },
                    None if retired => WorkerState::Stopping,
                    None => WorkerState::Backoff {
                        until: slot.not_before.max(now),
                    },
                };
                out.push(WorkerStatus {
                    pool: name.clone(),
                    id,
                    pid: slot.worker.as_ref().map(|w| w.child.pid),
                    state,
                    restarts: slot.restarts,
                    started_at: slot.worker.as_ref().map(|w| w.started_at),
                    generation: slot.worker.as_ref().map(|w| w.generation),
                });
            }
        }
        out
    }
}
