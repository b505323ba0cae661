//! What the supervisor is asked to keep running, and its timing knobs.

use std::fmt;
use std::time::Duration;

/// A pool name, also a cgroup directory name: validated so it can never escape
/// `workers/` or collide with a cgroup interface file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pool name {name:?}: use 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter or digit"
)]
pub struct PoolNameError {
    pub name: String,
}

impl PoolName {
    pub fn new(name: &str) -> Result<Self, PoolNameError> {
        let valid = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(PoolName(name.to_owned()))
        } else {
            Err(PoolNameError {
                name: name.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The desired state of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub replicas: u32,
    /// Warm standby: workers kept beyond `replicas` with their model loaded and their cgroup
    /// frozen (no CPU), so that the next scale-up is a thaw instead of a process start and a
    /// model load. The caller keeps it within what the pool may grow to.
    pub standby: u32,
    /// Per worker; 1000 = one full CPU.
    pub cpu_limit_millis: Option<u64>,
    /// Per worker.
    pub memory_limit_bytes: Option<u64>,
    /// Changed by the caller whenever something a running worker cannot pick up changed
    /// (model, command line): workers of an older generation are replaced one at a time.
    /// Limits and replicas are applied without restarts.
    pub generation: u64,
}

/// Timing of supervision. The defaults follow the issue: a 3 s heartbeat, crash-loop backoff
/// from 1 s doubling to 60 s, reset after 60 s of health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// A ready worker silent for longer is hung and killed.
    pub heartbeat_timeout: Duration,
    /// A starting worker heartbeats while it loads its model; one silent this long (since its
    /// start or its last heartbeat) never got going or hung, and is killed. Long enough for a
    /// process start on a slow gateway before the worker's heartbeat thread runs.
    pub loading_heartbeat_timeout: Duration,
    /// A worker not ready (model loaded) this long after its start is killed even though it
    /// heartbeats: the bound on a model load (`edge.worker.ready_timeout_s`). Slow gateways
    /// load the little model in 25–30 s, so this is far above that.
    pub ready_timeout: Duration,
    /// How long a drained worker may take to finish its frame before it is killed.
    pub drain_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A worker ready this long ends its slot's crash streak.
    pub backoff_reset_after: Duration,
    /// Bound on waiting for a killed cgroup to empty (sweep, shutdown) and interval between
    /// repeated kills of a worker that has not died yet.
    pub kill_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            heartbeat_timeout: Duration::from_secs(3),
            loading_heartbeat_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset_after: Duration::from_secs(60),
            kill_timeout: Duration::from_secs(1),
        }
    }
}

impl SupervisorConfig {
    /// Delay before the next start of a slot after `failures` consecutive failures. The first
    /// failure restarts at once (a single crash must be replaced within a second), from the
    /// second on the delay starts at `backoff_initial` and doubles up to `backoff_max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            n => {
                let doublings = (n - 2).min(31);
                self.backoff_initial
                    .saturating_mul(1u32 << doublings)
                    .min(self.backoff_max)
            }
        }
    }
}
