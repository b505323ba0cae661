//! Supervisor behaviour on the fake host, with time driven by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fake::{FakeHost, FakeLauncher};
use super::{
    HostError, PoolName, PoolSpec, Supervisor, SupervisorConfig, SupervisorError, WorkerState,
    WorkerStatus,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn name(s: &str) -> PoolName {
    PoolName::new(s).expect("valid pool name")
}

fn spec(replicas: u32) -> PoolSpec {
    PoolSpec {
        replicas,
        standby: 0,
        cpu_limit_millis: None,
        memory_limit_bytes: None,
        generation: 1,
    }
}

fn path(s: &str) -> PathBuf {
    PathBuf::from(s)
}

struct Rig {
    host: FakeHost,
    sup: Supervisor<FakeHost, FakeLauncher>,
    config: SupervisorConfig,
    desired: BTreeMap<PoolName, PoolSpec>,
    now: Instant,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_config(SupervisorConfig::default())
    }

    fn with_config(config: SupervisorConfig) -> Rig {
        let host = FakeHost::default();
        let sup = Supervisor::new(host.clone(), FakeLauncher::new(&host), config.clone());
        let mut rig = Rig {
            host,
            sup,
            config,
            desired: BTreeMap::new(),
            now: Instant::now(),
        };
        rig.sup.startup_sweep().expect("sweep of an empty host");
        assert_eq!(rig.host.take_kills(), vec![path("workers")]);
        rig
    }

    fn set(&mut self, pool: &str, spec: PoolSpec) {
        self.desired.insert(name(pool), spec);
        self.sup.set_desired(self.desired.clone());
    }

    fn remove(&mut self, pool: &str) {
        self.desired.remove(&name(pool));
        self.sup.set_desired(self.desired.clone());
    }

    /// `dt` passes (the fake workers heartbeat, drained ones exit), then one reconcile.
    fn step_with_errors(&mut self, dt: Duration) -> Vec<SupervisorError> {
        self.now += dt;
        self.host.tick(self.now);
        self.sup.reconcile(self.now)
    }

    fn step(&mut self, dt: Duration) {
        let errors = self.step_with_errors(dt);
        assert!(errors.is_empty(), "reconcile errors: {errors:?}");
    }

    /// Drops the supervisor and starts a new one on the same host, as a daemon restart does.
    fn restart(&mut self) -> super::SweepReport {
        self.sup = Supervisor::new(
            self.host.clone(),
            FakeLauncher::new(&self.host),
            self.config.clone(),
        );
        let report = self.sup.startup_sweep().expect("sweep");
        self.sup.set_desired(self.desired.clone());
        report
    }

    fn status(&self, pool: &str, id: u32) -> WorkerStatus {
        self.sup
            .status(self.now)
            .into_iter()
            .find(|s| s.pool.as_str() == pool && s.id == id)
            .unwrap_or_else(|| panic!("no slot {pool}/{id}"))
    }

    fn pid(&self, pool: &str, id: u32) -> Pid {
        self.status(pool, id).pid.expect("a running worker")
    }

    fn ids(&self, pool: &str) -> Vec<u32> {
        self.sup
            .status(self.now)
            .into_iter()
            .filter(|s| s.pool.as_str() == pool)
            .map(|s| s.id)
            .collect()
    }
}

/// Exactly the desired workers exist, each alone in its cgroup, and no other process,
/// zombie or cgroup.
fn assert_exactly_desired(host: &FakeHost, desired: &BTreeMap<PoolName, PoolSpec>) {
    let mut want_cgroups = BTreeSet::from([path("workers")]);
    let mut want_slots = BTreeSet::new();
    for (pool, spec) in desired {
        want_cgroups.insert(Path::new("workers").join(pool.as_str()));
        for id in 0..spec.replicas + spec.standby {
            let slot = Path::new("workers")
                .join(pool.as_str())
                .join(id.to_string());
            want_cgroups.insert(slot.clone());
            want_slots.insert(slot);
        }
    }
    let live = host.live();
    let live_slots: Vec<PathBuf> = live.values().map(|p| p.cgroup.clone()).collect();
    assert!(
        live.values().all(|p| p.spawned),
        "a stray survived: {live:?}"
    );
    assert_eq!(
        live_slots.iter().cloned().collect::<BTreeSet<_>>(),
        want_slots,
        "live workers"
    );
    assert_eq!(
        live_slots.len(),
        want_slots.len(),
        "one process per slot: {live:?}"
    );
    assert_eq!(host.cgroups(), want_cgroups, "cgroups");
    assert!(host.zombies().is_empty(), "zombies: {:?}", host.zombies());
}

/// Every worker serves, or is a standby loaded and frozen.
fn all_ready(rig: &Rig) -> bool {
    rig.sup.status(rig.now).iter().all(|s| {
        matches!(
            s.state,
            WorkerState::Ready | WorkerState::Standby { frozen: true }
        )
    })
}

fn with_standby(replicas: u32, standby: u32) -> PoolSpec {
    PoolSpec {
        standby,
        ..spec(replicas)
    }
}

fn frozen_file(rig: &Rig, id: u32) -> Option<String> {
    rig.host
        .file(&path(&format!("workers/det/{id}")), "cgroup.freeze")
}

#[test]
fn a_warm_standby_loads_held_then_freezes_and_needs_no_heartbeat() {
    let mut rig = Rig::new();
    rig.set("det", with_standby(1, 1));
    rig.step(ms(100));
    let standby = rig.pid("det", 1);
    assert!(
        rig.host.held(standby),
        "held from its start: no frame may reach it"
    );
    assert!(!rig.host.held(rig.pid("det", 0)));
    assert_eq!(
        rig.status("det", 1).state,
        WorkerState::Standby { frozen: false }
    );
    rig.step(ms(100));
    rig.step(ms(100));
    assert_eq!(frozen_file(&rig, 1).as_deref(), Some("1"));
    assert_eq!(
        rig.status("det", 1).state,
        WorkerState::Standby { frozen: true }
    );
    // Frozen, it sends no heartbeat: far past the heartbeat timeout it is still the same.
    for _ in 0..10 {
        rig.step(secs(1));
    }
    assert_eq!(rig.pid("det", 1), standby);
    assert_eq!(rig.status("det", 1).restarts, 0);
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_scale_up_thaws_the_standby_and_a_new_standby_loads_behind_it() {
    let mut rig = Rig::new();
    rig.set("det", with_standby(1, 1));
    for _ in 0..3 {
        rig.step(ms(100));
    }
    let standby = rig.pid("det", 1);
    rig.step(secs(10));
    rig.set("det", with_standby(2, 1));
    rig.step(ms(1));
    assert_eq!(
        rig.pid("det", 1),
        standby,
        "the same process, not a new start"
    );
    assert_eq!(rig.status("det", 1).state, WorkerState::Ready);
    assert_eq!(frozen_file(&rig, 1).as_deref(), Some("0"));
    assert!(!rig.host.held(standby));
    let next = rig.pid("det", 2);
    assert!(rig.host.held(next));
    // Judged by heartbeats again from the thaw, which it sends now.
    for _ in 0..10 {
        rig.step(secs(1));
    }
    assert_eq!(rig.pid("det", 1), standby);
    assert_eq!(
        rig.status("det", 2).state,
        WorkerState::Standby { frozen: true }
    );
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_scale_down_drains_the_serving_worker_into_the_standby_slot() {
    let mut rig = Rig::new();
    rig.set("det", with_standby(2, 1));
    for _ in 0..3 {
        rig.step(ms(100));
    }
    let serving = rig.pid("det", 1);
    let spare = rig.pid("det", 2);
    rig.set("det", with_standby(1, 1));
    rig.step(ms(1));
    assert!(
        rig.host.drain_requested(serving),
        "it may hold frames: drained"
    );
    assert_eq!(rig.status("det", 2).state, WorkerState::Stopping);
    assert!(
        !rig.host.live().contains_key(&spare),
        "the frozen spare is killed"
    );
    for _ in 0..5 {
        rig.step(ms(100));
    }
    let restarted = rig.pid("det", 1);
    assert_ne!(restarted, serving);
    assert!(rig.host.held(restarted));
    assert_eq!(
        rig.status("det", 1).state,
        WorkerState::Standby { frozen: true }
    );
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_standby_killed_while_frozen_is_replaced_by_one_that_is_not_born_frozen() {
    let mut rig = Rig::new();
    rig.set("det", with_standby(1, 1));
    for _ in 0..3 {
        rig.step(ms(100));
    }
    let frozen = rig.pid("det", 1);
    rig.host.kill9(frozen);
    rig.step(ms(100));
    let next = rig.pid("det", 1);
    assert_ne!(next, frozen);
    // A process cloned into a frozen cgroup would be frozen from its first instruction, never
    // get ready, and be killed for silence over and over.
    assert_eq!(frozen_file(&rig, 1).as_deref(), Some("0"));
    for _ in 0..3 {
        rig.step(ms(100));
    }
    assert_eq!(rig.pid("det", 1), next);
    assert_eq!(
        rig.status("det", 1).state,
        WorkerState::Standby { frozen: true }
    );
}

#[test]
fn shutdown_kills_a_frozen_standby_that_could_not_drain() {
    let mut rig = Rig::new();
    rig.set("det", with_standby(1, 1));
    for _ in 0..3 {
        rig.step(ms(100));
    }
    let standby = rig.pid("det", 1);
    rig.sup.shutdown().unwrap();
    assert!(!rig.host.live().contains_key(&standby));
    assert!(!rig.host.drain_requested(standby));
}

#[test]
fn reconcile_needs_the_startup_sweep_first() {
    let host = FakeHost::default();
    let mut sup = Supervisor::new(
        host.clone(),
        FakeLauncher::new(&host),
        SupervisorConfig::default(),
    );
    assert!(matches!(
        sup.reconcile(Instant::now())[..],
        [SupervisorError::NotStarted]
    ));
    sup.startup_sweep().unwrap();
    assert!(host.is_subreaper());
    assert_eq!(host.cgroups(), BTreeSet::from([path("workers")]));
    assert!(matches!(
        sup.startup_sweep(),
        Err(SupervisorError::AlreadyStarted)
    ));
}

#[test]
fn starts_each_worker_in_its_own_cgroup_with_the_limits() {
    let mut rig = Rig::new();
    rig.set(
        "det",
        PoolSpec {
            cpu_limit_millis: Some(500),
            memory_limit_bytes: Some(256 << 20),
            ..spec(2)
        },
    );
    rig.step(ms(100));
    for id in 0..2 {
        let cgroup = path(&format!("workers/det/{id}"));
        let pid = rig.pid("det", id);
        assert_eq!(rig.host.live()[&pid].cgroup, cgroup);
        assert_eq!(rig.status("det", id).state, WorkerState::Starting);
        assert_eq!(
            rig.host.file(&cgroup, "cpu.max").as_deref(),
            Some("50000 100000")
        );
        assert_eq!(
            rig.host.file(&cgroup, "memory.max").as_deref(),
            Some("268435456")
        );
    }
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_killed_worker_is_replaced_at_once() {
    let mut rig = Rig::new();
    rig.set("det", spec(2));
    rig.step(ms(100));
    rig.step(ms(100));
    let old = rig.pid("det", 0);
    rig.host.kill9(old);
    rig.step(ms(100));
    let new = rig.pid("det", 0);
    assert_ne!(new, old);
    assert_eq!(rig.status("det", 0).restarts, 1);
    assert_eq!(rig.status("det", 1).restarts, 0);
    rig.step(ms(100));
    assert_eq!(rig.status("det", 0).state, WorkerState::Ready);
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn crash_loops_back_off_doubling_to_a_minute_and_reset_after_a_healthy_minute() {
    let mut rig = Rig::new();
    rig.set("det", spec(1));
    rig.step(ms(100));
    let expected = [0, 1, 2, 4, 8, 16, 32, 60, 60];
    for (round, delay) in expected.into_iter().enumerate() {
        let old = rig.pid("det", 0);
        rig.host.kill9(old);
        rig.step(ms(100));
        if delay == 0 {
            assert_ne!(rig.pid("det", 0), old, "round {round}: restarted at once");
            continue;
        }
        assert_eq!(
            rig.status("det", 0).state,
            WorkerState::Backoff {
                until: rig.now + secs(delay)
            },
            "round {round}"
        );
        rig.step(secs(delay) - ms(1));
        assert_eq!(rig.status("det", 0).pid, None, "round {round}: too early");
        rig.step(ms(1));
        assert!(rig.status("det", 0).pid.is_some(), "round {round}: started");
    }
    // A minute of health ends the streak: the next crash restarts at once again.
    for _ in 0..61 {
        rig.step(secs(1));
    }
    let old = rig.pid("det", 0);
    rig.host.kill9(old);
    rig.step(ms(100));
    assert_ne!(rig.pid("det", 0), old);
    assert_eq!(rig.status("det", 0).restarts, expected.len() as u32 + 1);
}

#[test]
fn a_hung_worker_is_killed_through_its_cgroup_and_replaced() {
    let mut rig = Rig::new();
    rig.set("det", spec(2));
    rig.step(ms(100));
    rig.step(ms(100));
    let hung = rig.pid("det", 1);
    rig.host.hang(hung);
    rig.step(secs(2));
    assert_eq!(
        rig.pid("det", 1),
        hung,
        "still within the heartbeat timeout"
    );
    assert!(rig.host.take_kills().is_empty());
    rig.step(secs(1));
    assert_eq!(rig.host.take_kills(), vec![path("workers/det/1")]);
    assert_eq!(rig.status("det", 1).state, WorkerState::Stopping);
    rig.step(ms(100));
    assert_ne!(rig.pid("det", 1), hung);
    assert_eq!(rig.status("det", 1).restarts, 1);
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_starting_worker_that_never_heartbeats_is_killed_after_the_loading_timeout() {
    let mut rig = Rig::new();
    rig.set("det", spec(1));
    rig.step(ms(100));
    let stuck = rig.pid("det", 0);
    rig.host.hang(stuck);
    rig.step(secs(9));
    assert_eq!(rig.status("det", 0).state, WorkerState::Starting);
    rig.step(secs(1));
    assert_eq!(rig.host.take_kills(), vec![path("workers/det/0")]);
    rig.step(ms(100));
    assert_ne!(rig.pid("det", 0), stuck);
}

/// A gateway that loads the model in 90 s (an emulated CPU took 25–28 s for the little model
/// and minutes for the big one) keeps its worker: the worker heartbeats while it loads.
#[test]
fn a_slow_load_that_heartbeats_is_not_killed_and_becomes_ready() {
    let mut rig = Rig::new();
    rig.set("det", spec(1));
    rig.step(ms(100));
    let slow = rig.pid("det", 0);
    rig.host.load_slowly(slow);
    for _ in 0..90 {
        rig.step(secs(1));
    }
    assert_eq!(rig.status("det", 0).state, WorkerState::Starting);
    assert!(rig.host.take_kills().is_empty());
    rig.host.finish_loading(slow);
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_eq!(rig.pid("det", 0), slow);
    assert_eq!(rig.status("det", 0).restarts, 0);
}

/// A load that heartbeats but never ends (a wedged model load) still ends at the bound.
#[test]
fn a_load_that_heartbeats_past_the_ready_timeout_is_killed() {
    let mut rig = Rig::with_config(SupervisorConfig {
        ready_timeout: secs(60),
        ..SupervisorConfig::default()
    });
    rig.set("det", spec(1));
    rig.step(ms(100));
    let wedged = rig.pid("det", 0);
    rig.host.load_slowly(wedged);
    for _ in 0..59 {
        rig.step(secs(1));
    }
    assert!(rig.host.take_kills().is_empty());
    rig.step(secs(1));
    assert_eq!(rig.host.take_kills(), vec![path("workers/det/0")]);
    rig.step(ms(100));
    assert_ne!(rig.pid("det", 0), wedged);
}

#[test]
fn scale_down_drains_the_highest_ids() {
    let mut rig = Rig::new();
    rig.set("det", spec(4));
    rig.step(ms(100));
    rig.step(ms(100));
    let pids: Vec<Pid> = (0..4).map(|id| rig.pid("det", id)).collect();
    rig.set("det", spec(2));
    rig.sup.reconcile(rig.now);
    for id in 0..4 {
        let drained = id >= 2;
        assert_eq!(
            rig.host.drain_requested(pids[id as usize]),
            drained,
            "slot {id}"
        );
        let state = rig.status("det", id).state;
        assert_eq!(
            state == WorkerState::Draining,
            drained,
            "slot {id}: {state:?}"
        );
    }
    assert!(rig.host.take_kills().is_empty(), "drained, not killed");
    // They finish the current frame and exit; their cgroups go.
    rig.step(ms(100));
    assert_eq!(rig.ids("det"), vec![0, 1]);
    assert_eq!(rig.pid("det", 0), pids[0]);
    assert_eq!(rig.pid("det", 1), pids[1]);
    assert!(rig.host.take_kills().is_empty());
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_drained_worker_that_does_not_finish_is_killed_after_the_drain_timeout() {
    let mut rig = Rig::with_config(SupervisorConfig {
        drain_timeout: secs(2),
        ..SupervisorConfig::default()
    });
    rig.set("det", spec(2));
    rig.step(ms(100));
    rig.step(ms(100));
    let slow = rig.pid("det", 1);
    rig.host.hang(slow);
    rig.set("det", spec(1));
    rig.step(ms(100));
    assert_eq!(rig.status("det", 1).state, WorkerState::Draining);
    rig.step(secs(2) - ms(1));
    assert_eq!(rig.status("det", 1).state, WorkerState::Draining);
    rig.step(ms(1));
    assert_eq!(rig.host.take_kills(), vec![path("workers/det/1")]);
    rig.step(ms(100));
    assert_eq!(rig.ids("det"), vec![0]);
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn removing_a_pool_cascades_to_its_workers_and_cgroups() {
    let mut rig = Rig::new();
    rig.set("a", spec(2));
    rig.set("b", spec(1));
    rig.step(ms(100));
    rig.step(ms(100));
    let b = rig.pid("b", 0);
    // A worker's own child must go with the pool too.
    let stray = rig.host.add_stray(Path::new("workers/a/1"));
    rig.remove("a");
    rig.step(ms(100));
    assert_eq!(rig.host.take_kills(), vec![path("workers/a")]);
    assert!(rig.ids("a").is_empty());
    assert!(!rig.host.live().contains_key(&stray));
    assert_eq!(rig.pid("b", 0), b, "other pools untouched");
    assert_exactly_desired(&rig.host, &rig.desired);
    // The same name can come back.
    rig.set("a", spec(1));
    rig.step(ms(100));
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn a_dead_workers_stray_child_is_killed_before_the_restart() {
    let mut rig = Rig::new();
    rig.set("det", spec(1));
    rig.step(ms(100));
    let stray = rig.host.add_stray(Path::new("workers/det/0"));
    rig.host.kill9(rig.pid("det", 0));
    rig.step(ms(100));
    assert!(!rig.host.live().contains_key(&stray));
    rig.step(ms(100));
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn the_startup_sweep_kills_and_removes_what_an_earlier_run_left() {
    let host = FakeHost::default();
    for cgroup in ["workers/old/0/unexpected", "workers/old/1", "workers/det/0"] {
        host.add_cgroup(Path::new(cgroup));
    }
    let ghosts = [
        host.add_stray(Path::new("workers/old/0/unexpected")),
        host.add_stray(Path::new("workers/det/0")),
    ];
    let mut sup = Supervisor::new(
        host.clone(),
        FakeLauncher::new(&host),
        SupervisorConfig::default(),
    );
    let report = sup.startup_sweep().unwrap();
    assert_eq!(
        report.processes.iter().collect::<BTreeSet<_>>(),
        ghosts.iter().collect()
    );
    assert_eq!(report.cgroups.len(), 6);
    assert!(host.live().is_empty());
    assert_eq!(host.cgroups(), BTreeSet::from([path("workers")]));
}

#[test]
fn a_restarted_supervisor_replaces_the_workers_of_the_previous_one() {
    let mut rig = Rig::new();
    rig.set("det", spec(2));
    rig.step(ms(100));
    let before: BTreeSet<Pid> = rig.host.live().into_keys().collect();
    let report = rig.restart();
    assert_eq!(
        report.processes.iter().copied().collect::<BTreeSet<_>>(),
        before
    );
    assert!(rig.host.live().is_empty());
    assert!(rig.host.zombies().is_empty(), "the old workers are reaped");
    rig.step(ms(100));
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_exactly_desired(&rig.host, &rig.desired);
}

#[test]
fn shutdown_drains_kills_what_is_left_and_removes_every_cgroup() {
    let mut rig = Rig::new();
    rig.set("a", spec(2));
    rig.set("b", spec(1));
    rig.step(ms(100));
    rig.step(ms(100));
    rig.host.hang(rig.pid("b", 0));
    let report = rig.sup.shutdown().unwrap();
    assert_eq!((report.drained, report.killed), (2, 1));
    assert!(rig.host.live().is_empty());
    assert!(rig.host.zombies().is_empty());
    assert!(rig.host.cgroups().is_empty(), "{:?}", rig.host.cgroups());
    assert!(matches!(
        rig.sup.reconcile(rig.now)[..],
        [SupervisorError::ShutDown]
    ));
}

#[test]
fn a_new_generation_replaces_workers_one_at_a_time() {
    let mut rig = Rig::new();
    rig.set("det", spec(2));
    rig.step(ms(100));
    rig.step(ms(100));
    rig.set(
        "det",
        PoolSpec {
            generation: 2,
            ..spec(2)
        },
    );
    let mut seen = Vec::new();
    for _ in 0..8 {
        rig.step(ms(100));
        let states: Vec<(WorkerState, Option<u64>)> = (0..2)
            .map(|id| {
                let s = rig.status("det", id);
                (s.state, s.generation)
            })
            .collect();
        let serving = states
            .iter()
            .filter(|(state, _)| *state == WorkerState::Ready)
            .count();
        assert!(serving >= 1, "never both down: {states:?}");
        seen.push(states);
    }
    for id in 0..2 {
        let status = rig.status("det", id);
        assert_eq!(
            (status.generation, status.restarts),
            (Some(2), 1),
            "{seen:?}"
        );
    }
    assert!(all_ready(&rig));
    assert!(rig.host.take_kills().is_empty(), "drained, not killed");
}

#[test]
fn limits_change_without_a_restart() {
    let mut rig = Rig::new();
    rig.set(
        "det",
        PoolSpec {
            cpu_limit_millis: Some(500),
            ..spec(1)
        },
    );
    rig.step(ms(100));
    let pid = rig.pid("det", 0);
    rig.set(
        "det",
        PoolSpec {
            cpu_limit_millis: Some(1500),
            ..spec(1)
        },
    );
    rig.step(ms(100));
    assert_eq!(rig.pid("det", 0), pid);
    assert_eq!(
        rig.host
            .file(Path::new("workers/det/0"), "cpu.max")
            .as_deref(),
        Some("150000 100000")
    );
}

#[test]
fn a_missing_cpu_controller_does_not_stop_workers() {
    let mut rig = Rig::new();
    rig.host.set_cpu_unavailable();
    rig.set(
        "det",
        PoolSpec {
            cpu_limit_millis: Some(500),
            ..spec(1)
        },
    );
    rig.step(ms(100));
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_eq!(rig.host.file(Path::new("workers/det/0"), "cpu.max"), None);
}

#[test]
fn failing_spawns_back_off_and_recover() {
    let mut rig = Rig::new();
    rig.host.fail_spawns(3);
    rig.set("det", spec(1));
    let is_spawn_error = |e: &SupervisorError| {
        matches!(
            e,
            SupervisorError::Worker {
                source: HostError::Spawn { .. },
                ..
            }
        )
    };
    // Failure 1 retries on the next tick, 2 after 1 s, 3 after 2 s.
    let errors = rig.step_with_errors(ms(100));
    assert!(errors.iter().all(is_spawn_error) && errors.len() == 1);
    let errors = rig.step_with_errors(ms(100));
    assert!(errors.iter().all(is_spawn_error) && errors.len() == 1);
    rig.step(ms(900));
    let errors = rig.step_with_errors(ms(100));
    assert!(errors.iter().all(is_spawn_error) && errors.len() == 1);
    assert_eq!(
        rig.status("det", 0).state,
        WorkerState::Backoff {
            until: rig.now + secs(2)
        }
    );
    rig.step(secs(2));
    rig.step(ms(100));
    assert!(all_ready(&rig));
    assert_eq!(rig.status("det", 0).restarts, 0, "never started before");
}

#[test]
fn backoff_delays() {
    let config = SupervisorConfig::default();
    let delays: Vec<u64> = (0..12).map(|n| config.backoff(n).as_secs()).collect();
    assert_eq!(delays, [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    assert_eq!(config.backoff(u32::MAX), secs(60));
}

#[test]
fn pool_names_are_safe_directory_names() {
    for good in ["det", "yolo-v8_small", "0"] {
        assert!(PoolName::new(good).is_ok(), "{good}");
    }
    for bad in ["", "..", ".x", "a/b", "cgroup procs", "-x", &"x".repeat(65)] {
        assert!(PoolName::new(bad).is_err(), "{bad:?}");
    }
}

/// 100 rounds of random worker kills, hangs, deaths leaving a stray child, failed spawns, reloads (replicas, pools,
/// generations) and daemon restarts (with and without the daemon's death): once the dust
/// settles exactly the desired workers exist, and no other process or cgroup.
#[test]
fn random_kills_reloads_and_restarts_end_with_exactly_the_desired_workers() {
    let mut rng = StdRng::seed_from_u64(0x5eed_2024);
    let mut rig = Rig::new();
    rig.set("a", spec(2));
    rig.set("b", spec(1));
    let pools = ["a", "b", "c"];
    for round in 0..100 {
        let live: Vec<Pid> = rig
            .host
            .live()
            .into_iter()
            .filter(|(_, p)| p.spawned)
            .map(|(pid, _)| pid)
            .collect();
        let pick = |rng: &mut StdRng| live[rng.gen_range(0..live.len())];
        match rng.gen_range(0..9) {
            0 | 1 if !live.is_empty() => rig.host.kill9(pick(&mut rng)),
            2 => {
                let pool = pools[rng.gen_range(0..pools.len())];
                let replicas = rng.gen_range(0..=4);
                let generation = rig.desired.get(&name(pool)).map_or(1, |s| s.generation);
                rig.set(
                    pool,
                    PoolSpec {
                        generation,
                        ..with_standby(replicas, rng.gen_range(0..=1))
                    },
                );
            }
            3 => rig.remove(pools[rng.gen_range(0..pools.len())]),
            4 if !live.is_empty() => rig.host.hang(pick(&mut rng)),
            // A worker forks a helper and dies.
            5 if !live.is_empty() => {
                let worker = pick(&mut rng);
                let cgroup = rig.host.live()[&worker].cgroup.clone();
                rig.host.add_stray(&cgroup);
                rig.host.kill9(worker);
            }
            6 => {
                if rng.gen_bool(0.5) {
                    rig.host.crash_daemon();
                }
                rig.restart();
                assert!(
                    rig.host.live().is_empty(),
                    "round {round}: sweep left processes"
                );
                assert_eq!(rig.host.cgroups(), BTreeSet::from([path("workers")]));
            }
            7 => {
                if let Some((pool, old)) = rig
                    .desired
                    .iter()
                    .next()
                    .map(|(p, s)| (p.clone(), s.clone()))
                {
                    rig.set(
                        pool.as_str(),
                        PoolSpec {
                            generation: old.generation + 1,
                            ..old
                        },
                    );
                }
            }
            _ => rig.host.fail_spawns(1),
        }
        for _ in 0..rng.gen_range(1..=10) {
            let dt = [ms(50), ms(500), secs(2)][rng.gen_range(0..3)];
            for error in rig.step_with_errors(dt) {
                assert!(
                    matches!(
                        error,
                        SupervisorError::Worker {
                            source: HostError::Spawn { .. },
                            ..
                        }
                    ),
                    "round {round}: {error}"
                );
            }
            // Never two workers in one slot.
            let mut per_slot = BTreeMap::<PathBuf, usize>::new();
            for p in rig.host.live().values().filter(|p| p.spawned) {
                *per_slot.entry(p.cgroup.clone()).or_default() += 1;
            }
            assert!(
                per_slot.values().all(|&n| n == 1),
                "round {round}: {per_slot:?}"
            );
        }
    }
    for _ in 0..300 {
        rig.step(secs(1));
    }
    assert!(all_ready(&rig), "{:?}", rig.sup.status(rig.now));
    assert_exactly_desired(&rig.host, &rig.desired);
}
