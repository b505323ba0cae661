//! Worker supervision: the daemon keeps the desired number of inference workers alive, each in
//! its own cgroup, and never leaves a "ghost instance" behind.
//!
//! Cgroup layout, below a configured root in the cgroup2 hierarchy:
//!
//! ```text
//! <root>/                      e.g. /sys/fs/cgroup/unified/helmetd (hybrid),
//!                                   /sys/fs/cgroup/system.slice/helmetd.service (v2, delegated)
//! <root>/daemon/               pure v2 + Delegated only: the daemon itself (no internal processes)
//! <root>/workers/<pool>/<id>   one leaf per worker slot; nothing else lives under workers/
//! ```
//!
//! Limits are per worker cgroup: CPU millicores become `cpu.max = "<millis*100> 100000"` on v2,
//! or `cpu.cfs_period_us = 100000` + `cpu.cfs_quota_us = <millis*100>` in the v1 cpu hierarchy
//! at the same relative path on hybrid hosts; memory bytes become `memory.max` or v1
//! `memory.limit_in_bytes`. A missing controller is logged, not fatal (see `real.rs`).
//!
//! Why the pieces are as they are:
//! - Workers are cloned straight into their cgroup (`CLONE_INTO_CGROUP`) with a pidfd, from one
//!   dedicated thread, with PR_SET_PDEATHSIG=SIGKILL: a `kill -9` of the daemon takes every
//!   worker with it (see `process.rs`).
//! - Only descendants that escaped PDEATHSIG (a worker's own children) can outlive the daemon;
//!   they stay in `workers/`, so [`Supervisor::startup_sweep`] kills (`cgroup.kill`) and
//!   removes that whole subtree before the first worker starts.
//! - The daemon is a child subreaper: init on these machines reaps orphans only after seconds.
//! - Reconcile is a non-blocking step with the time passed in, and every effect goes through
//!   [`Host`], so the logic is unit-tested on an in-memory fake without sleeping.
//! - Crash loops back off per slot: the first crash restarts at once, then 1 s doubling to
//!   60 s; 60 s of readiness resets the streak.

mod control;
mod host;
mod launcher;
mod process;
mod real;
mod spec;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use control::{
    ShutdownReport, Supervisor, SupervisorError, SweepReport, WORKERS_DIR, WorkerState,
    WorkerStatus,
};
pub use host::{ExitStatus, Host, HostError, LimitOutcome, SpawnRequest, SpawnStage, SpawnedChild};
pub use launcher::{SpawnParts, WorkerChannel, WorkerLauncher};
pub use real::{CgroupRoot, Layout, RealHost, RealHostConfig, own_cgroup};
pub use spec::{PoolName, PoolNameError, PoolSpec, SupervisorConfig};
