//! What the daemon observed at one decision: the worker pool in the terms the HPA reads from pods
//! (phase, Ready condition, start time, metric samples), plus pool- and host-level values.
//!
//! Times are [`Timestamp`]s, durations since any epoch the caller picks (typically the daemon's
//! start), so the decision function needs no clock and tests never sleep.

use std::collections::BTreeMap;
use std::time::Duration;

/// A point in time, as a duration since an epoch chosen by the caller. All timestamps given to
/// one [`ScalingState`](super::ScalingState) must share that epoch.
pub type Timestamp = Duration;

/// Input of one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The worker count the daemon last asked for (Kubernetes' `scale.spec.replicas`), not the
    /// count alive: the HPA reasons about its own last decision, so a worker that crashed and is
    /// being restarted does not look like a scale-down.
    pub current_replicas: u32,
    /// Every worker the pool knows of, including those starting and exiting.
    pub workers: Vec<WorkerSample>,
    /// Values of `Object` metrics by metric name; an absent or non-finite value fails the metric.
    pub object_metrics: BTreeMap<String, f64>,
    /// Values of `External` metrics by metric name; an absent or non-finite value fails the metric.
    pub external_metrics: BTreeMap<String, f64>,
    /// Host `cpu.pressure` "some avg10", percent; `None` when unreadable, which disables the guard
    /// rather than blocking scaling on a missing file.
    pub host_cpu_pressure: Option<f64>,
}

/// One worker process, mapped onto the pod fields the HPA's `groupPods` reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSample {
    /// Used only in messages (e.g. which worker lacks a CPU request).
    pub id: String,
    pub phase: WorkerPhase,
    /// When the process started (pod `status.startTime`); `None` makes its CPU sample untrusted.
    pub started_at: Option<Timestamp>,
    /// The Ready condition; `None` until the worker reported either way.
    pub ready: Option<ReadyCondition>,
    /// CPU usage over the last sampling window; `None` is a missing sample.
    pub cpu: Option<CpuSample>,
    /// CPU request in cores (the configured per-worker budget), the denominator of Utilization.
    pub cpu_request: Option<f64>,
    /// Values of `Pods` metrics by metric name; absent or non-finite is a missing sample.
    pub metrics: BTreeMap<String, f64>,
}

/// Lifecycle phase, in the HPA's pod vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Spawn requested, process not running yet: counted as unready (0 on scale-up).
    Pending,
    #[default]
    Running,
    /// Being stopped: ignored entirely, like a pod with a deletion timestamp.
    Terminating,
    /// Exited with failure and not yet restarted: ignored entirely, like a Failed pod.
    Failed,
}

/// The Ready condition and when it last changed, which the CPU start-up rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyCondition {
    pub ready: bool,
    pub last_transition: Timestamp,
}

/// CPU used over a window ending at `timestamp`, in cores; the window matters because a sample
/// that began before the worker became ready includes its model-loading spike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    pub usage: f64,
    pub timestamp: Timestamp,
    pub window: Duration,
}

impl Observation {
    /// `scale.status.replicas`: workers not being torn down.
    pub(crate) fn status_replicas(&self) -> u32 {
        count(
            self.workers
                .iter()
                .filter(|w| matches!(w.phase, WorkerPhase::Pending | WorkerPhase::Running)),
        )
    }

    /// `scale.status.readyReplicas`: running workers whose Ready condition is true.
    pub(crate) fn ready_replicas(&self) -> u32 {
        count(
            self.workers
                .iter()
                .filter(|w| w.phase == WorkerPhase::Running && w.ready.is_some_and(|r| r.ready)),
        )
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

/// Converts a metric value to the milli-units the HPA computes in; non-finite values count as
/// missing rather than poisoning the sums.
pub(crate) fn to_milli(value: f64) -> Option<i64> {
    // `as` saturates at the i64 range, which is the intent for absurdly large samples.
    value.is_finite().then(|| (value * 1000.0).round() as i64)
}
