//! Builders shared by the autoscaler tests.

use std::time::Duration;

use super::samples::{CpuSample, ReadyCondition, Timestamp, WorkerPhase, WorkerSample};

/// An hour after the epoch: every default worker is past its CPU initialization period.
pub(crate) const NOW: Timestamp = Duration::from_secs(3600);

/// Name of the `Pods` metric the tests use.
pub(crate) const QUEUE: &str = "queue";

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A worker started at the epoch, ready since 10 s later, with a CPU sample ending at [`NOW`];
/// usage and request in millicores, as upstream tests write them.
pub(crate) fn cpu_worker(id: &str, usage_milli: i64, request_milli: i64) -> WorkerSample {
    WorkerSample {
        id: id.to_owned(),
        phase: WorkerPhase::Running,
        started_at: Some(Duration::ZERO),
        ready: Some(ReadyCondition {
            ready: true,
            last_transition: secs(10),
        }),
        cpu: Some(CpuSample {
            usage: usage_milli as f64 / 1000.0,
            timestamp: NOW,
            window: secs(15),
        }),
        cpu_request: Some(request_milli as f64 / 1000.0),
        metrics: Default::default(),
    }
}

/// Ready workers reporting the [`QUEUE`] metric.
pub(crate) fn metric_workers(values: &[f64]) -> Vec<WorkerSample> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let mut w = cpu_worker(&format!("w{i}"), 0, 1000);
            w.metrics.insert(QUEUE.to_owned(), v);
            w
        })
        .collect()
}
