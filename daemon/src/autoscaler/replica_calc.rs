//! The replica count one metric proposes: Kubernetes' `replica_calculator.go`, with workers in
//! place of pods. Values are in milli-units and ratios are formed exactly as upstream (including
//! the integer-truncated utilization percentage), so proposals match a real HPA's.

use std::time::Duration;

use super::samples::{CpuSample, Timestamp, WorkerPhase, WorkerSample, to_milli};

/// How long after start a worker's CPU samples are suspect (model loading burns CPU that says
/// nothing about load): `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);

/// A worker that turned unready within this delay of starting is taken to have never been ready:
/// `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// Band around a usage ratio of 1 inside which no scaling happens; asymmetric since Kubernetes
/// 1.33 (`behavior.scaleUp.tolerance` / `behavior.scaleDown.tolerance`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tolerances {
    pub(crate) scale_down: f64,
    pub(crate) scale_up: f64,
}

impl Tolerances {
    fn is_within(self, ratio: f64) -> bool {
        1.0 - self.scale_down <= ratio && ratio <= 1.0 + self.scale_up
    }
}

/// Why a metric could not propose a replica count. Any such failure also blocks scale-down
/// (see [`decide`](super::decide)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("no workers to compute a replica count from")]
    NoWorkers,
    #[error("did not receive metrics for targeted workers (workers might be unready)")]
    NoMetrics,
    #[error("missing request for cpu in worker {0}")]
    MissingCpuRequest(String),
    #[error("the cpu requests of the sampled workers sum to zero")]
    ZeroRequests,
    #[error("no value for metric {0}")]
    MissingValue(String),
}

/// The metric's current value, in its own units (cores for CPU), as HPA status reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    /// Percent of request (integer-truncated, as upstream) and the mean usage behind it.
    Utilization {
        percent: i32,
        average_value: f64,
    },
    AverageValue(f64),
    Value(f64),
}

/// A metric's proposal and the value it was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricProposal {
    pub replicas: u32,
    pub current: MetricValue,
}

/// Which per-worker sample a metric reads; only CPU is subject to the start-up rules, because
/// only CPU is distorted by model loading.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkerMetric<'a> {
    Cpu,
    Named(&'a str),
}

/// Workers sorted as `groupPods` sorts pods; indices point into the worker list.
#[derive(Debug, Default, PartialEq)]
struct Groups {
    /// Ready workers with their sample (milli-units).
    samples: Vec<(usize, i64)>,
    unready: Vec<usize>,
    missing: Vec<usize>,
}

fn group_workers(workers: &[WorkerSample], metric: WorkerMetric<'_>, now: Timestamp) -> Groups {
    let mut groups = Groups::default();
    for (i, worker) in workers.iter().enumerate() {
        match worker.phase {
            WorkerPhase::Terminating | WorkerPhase::Failed => continue,
            WorkerPhase::Pending => {
                groups.unready.push(i);
                continue;
            }
            WorkerPhase::Running => {}
        }
        let sample = match metric {
            WorkerMetric::Cpu => worker
                .cpu
                .and_then(|s| to_milli(s.usage).map(|v| (v, Some(s)))),
            WorkerMetric::Named(name) => worker
                .metrics
                .get(name)
                .copied()
                .and_then(to_milli)
                .map(|v| (v, None)),
        };
        let Some((value, cpu)) = sample else {
            groups.missing.push(i);
            continue;
        };
        if let Some(cpu) = cpu
            && cpu_sample_untrusted(worker, &cpu, now)
        {
            groups.unready.push(i);
            continue;
        }
        groups.samples.push((i, value));
    }
    groups
}

/// The CPU start-up rules of `groupPods`: during the initialization period only a sample taken
/// wholly while ready counts; afterwards only a worker that never became ready is discounted.
fn cpu_sample_untrusted(worker: &WorkerSample, sample: &CpuSample, now: Timestamp) -> bool {
    let (Some(ready), Some(started)) = (worker.ready, worker.started_at) else {
        return true;
    };
    if started.saturating_add(CPU_INITIALIZATION_PERIOD) > now {
        !ready.ready || sample.timestamp < ready.last_transition.saturating_add(sample.window)
    } else {
        !ready.ready && started.saturating_add(INITIAL_READINESS_DELAY) > ready.last_transition
    }
}

/// Ratio of the (truncated) utilization percentage to the target, as `GetResourceUtilizationRatio`.
struct Utilization {
    ratio: f64,
    percent: i32,
    average_milli: i64,
}

fn utilization(
    samples: &[(usize, i64)],
    requests: &[i64],
    target_percent: i32,
) -> Result<Utilization, MetricError> {
    let (mut usage, mut request, mut entries) = (0i128, 0i128, 0i128);
    for &(i, value) in samples {
        if let Some(&r) = requests.get(i) {
            usage += i128::from(value);
            request += i128::from(r);
            entries += 1;
        }
    }
    if request <= 0 {
        return Err(MetricError::ZeroRequests);
    }
    let percent = saturate_i32(usage * 100 / request);
    Ok(Utilization {
        ratio: f64::from(percent) / f64::from(target_percent),
        percent,
        average_milli: saturate_i64(usage / entries.max(1)),
    })
}

/// Mean sample and its ratio to the target, as `GetMetricUsageRatio` (integer mean in milli-units).
fn usage_ratio(samples: &[(usize, i64)], target_milli: i64) -> (f64, i64) {
    let total: i128 = samples.iter().map(|&(_, v)| i128::from(v)).sum();
    let count = i128::try_from(samples.len()).unwrap_or(i128::MAX).max(1);
    let average = saturate_i64(total / count);
    (average as f64 / target_milli as f64, average)
}

/// CPU Utilization target (`GetResourceReplicas`).
pub(crate) fn cpu_utilization_replicas(
    current: u32,
    target_percent: i32,
    tolerances: Tolerances,
    workers: &[WorkerSample],
    now: Timestamp,
) -> Result<MetricProposal, MetricError> {
    if workers.is_empty() {
        return Err(MetricError::NoWorkers);
    }
    let groups = group_workers(workers, WorkerMetric::Cpu, now);
    if groups.samples.is_empty() {
        return Err(MetricError::NoMetrics);
    }
    let requests = cpu_requests(workers)?;
    let first = utilization(&groups.samples, &requests, target_percent)?;
    let value = MetricValue::Utilization {
        percent: first.percent,
        average_value: first.average_milli as f64 / 1000.0,
    };
    let proposal = |replicas| MetricProposal {
        replicas,
        current: value,
    };

    let scale_up_with_unready = !groups.unready.is_empty() && first.ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if tolerances.is_within(first.ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_replicas(first.ratio, groups.samples.len())));
    }

    // Missing workers count as using their request (or the target, if above 100 %) on a
    // scale-down and nothing on a scale-up; unready ones count as idle on a scale-up. Both
    // assumptions damp the move, which is the point.
    let fallback_percent = i64::from(target_percent.max(100));
    let mut samples = groups.samples;
    if first.ratio < 1.0 {
        samples.extend(groups.missing.iter().map(|&i| {
            let request = requests.get(i).copied().unwrap_or(0);
            (i, request.saturating_mul(fallback_percent) / 100)
        }));
    } else if first.ratio > 1.0 {
        samples.extend(groups.missing.iter().map(|&i| (i, 0)));
    }
    if scale_up_with_unready {
        samples.extend(groups.unready.iter().map(|&i| (i, 0)));
    }
    let second = utilization(&samples, &requests, target_percent)?;
    Ok(proposal(damped_replicas(
        current,
        tolerances,
        first.ratio,
        second.ratio,
        samples.len(),
    )))
}

/// Every worker needs a request, as every pod container does upstream: utilization of an
/// unbudgeted worker is meaningless.
fn cpu_requests(workers: &[WorkerSample]) -> Result<Vec<i64>, MetricError> {
    workers
        .iter()
        .map(|w| {
            w.cpu_request
                .and_then(to_milli)
                .ok_or_else(|| MetricError::MissingCpuRequest(w.id.clone()))
        })
        .collect()
}

/// Per-worker AverageValue target: CPU cores (`GetRawResourceReplicas`) or a `Pods` metric
/// (`GetMetricReplicas`), via `calcPlainMetricReplicas`.
pub(crate) fn average_value_replicas(
    current: u32,
    target_milli: i64,
    tolerances: Tolerances,
    workers: &[WorkerSample],
    metric: WorkerMetric<'_>,
    now: Timestamp,
) -> Result<MetricProposal, MetricError> {
    if workers.is_empty() {
        return Err(MetricError::NoWorkers);
    }
    let groups = group_workers(workers, metric, now);
    if groups.samples.is_empty() {
        return Err(MetricError::NoMetrics);
    }
    let (ratio, average) = usage_ratio(&groups.samples, target_milli);
    let proposal = |replicas| MetricProposal {
        replicas,
        current: MetricValue::AverageValue(average as f64 / 1000.0),
    };

    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if tolerances.is_within(ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_replicas(ratio, groups.samples.len())));
    }

    // Same damping as for utilization, with "exactly at target" as the scale-down assumption.
    let mut samples = groups.samples;
    if ratio < 1.0 {
        samples.extend(groups.missing.iter().map(|&i| (i, target_milli)));
    } else if ratio > 1.0 {
        samples.extend(groups.missing.iter().map(|&i| (i, 0)));
    }
    if scale_up_with_unready {
        samples.extend(groups.unready.iter().map(|&i| (i, 0)));
    }
    let (new_ratio, _) = usage_ratio(&samples, target_milli);
    Ok(proposal(damped_replicas(
        current,
        tolerances,
        ratio,
        new_ratio,
        samples.len(),
    )))
}

/// The second half of upstream's conservative path: never let the assumptions about missing or
/// unready workers reverse the direction the measured ones asked for.
fn damped_replicas(
    current: u32,
    tolerances: Tolerances,
    ratio: f64,
    new_ratio: f64,
    counted: usize,
) -> u32 {
    if tolerances.is_within(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let replicas = ceil_replicas(new_ratio, counted);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return current;
    }
    replicas
}

/// `Value` target of an `Object` or `External` metric (`GetObjectMetricReplicas`,
/// `GetExternalMetricReplicas`): the whole value scales the ready workers.
pub(crate) fn value_replicas(
    current: u32,
    ready_replicas: u32,
    usage_milli: i64,
    target_milli: i64,
    tolerances: Tolerances,
) -> MetricProposal {
    let ratio = usage_milli as f64 / target_milli as f64;
    let replicas = if tolerances.is_within(ratio) {
        current
    } else {
        ceil_replicas(ratio, ready_replicas as usize)
    };
    MetricProposal {
        replicas,
        current: MetricValue::Value(usage_milli as f64 / 1000.0),
    }
}

/// `AverageValue` target of an `Object` or `External` metric (`GetObjectPerPodMetricReplicas`,
/// `GetExternalPerPodMetricReplicas`): enough workers that each gets at most the target.
pub(crate) fn per_worker_value_replicas(
    status_replicas: u32,
    usage_milli: i64,
    target_milli: i64,
    tolerances: Tolerances,
) -> MetricProposal {
    let usage = usage_milli as f64;
    let ratio = usage / (target_milli as f64 * f64::from(status_replicas));
    let replicas = if tolerances.is_within(ratio) {
        status_replicas
    } else {
        ceil_replicas(usage / target_milli as f64, 1)
    };
    // Upstream divides by zero here when no worker exists; reporting the total is the sane limit.
    let average_milli = (usage / f64::from(status_replicas.max(1))).ceil();
    MetricProposal {
        replicas,
        current: MetricValue::AverageValue(average_milli / 1000.0),
    }
}

/// `ceil(ratio × count)` as a replica count; `as` saturates and maps NaN to 0, so no input panics.
fn ceil_replicas(ratio: f64, count: usize) -> u32 {
    (ratio * count as f64).ceil() as u32
}

fn saturate_i32(v: i128) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

fn saturate_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::samples::ReadyCondition;
    use crate::autoscaler::testutil::*;

    const TOL: Tolerances = Tolerances {
        scale_down: 0.1,
        scale_up: 0.1,
    };

    fn cpu(current: u32, target: i32, workers: &[WorkerSample]) -> MetricProposal {
        cpu_utilization_replicas(current, target, TOL, workers, NOW)
            .unwrap_or_else(|e| panic!("cpu metric failed: {e}"))
    }

    fn pods(current: u32, target_milli: i64, workers: &[WorkerSample]) -> MetricProposal {
        average_value_replicas(
            current,
            target_milli,
            TOL,
            workers,
            WorkerMetric::Named(QUEUE),
            NOW,
        )
        .unwrap_or_else(|e| panic!("pods metric failed: {e}"))
    }

    fn percent(p: &MetricProposal) -> i32 {
        match p.current {
            MetricValue::Utilization { percent, .. } => percent,
            other => panic!("not a utilization: {other:?}"),
        }
    }

    fn cpu_workers(levels: &[i64]) -> Vec<WorkerSample> {
        levels
            .iter()
            .enumerate()
            .map(|(i, &l)| cpu_worker(&format!("w{i}"), l, 1000))
            .collect()
    }

    // --- groupPods (hpa-algorithm.md §1.3 table) ---

    #[derive(Debug, PartialEq)]
    enum Group {
        Ready,
        Unready,
        Missing,
        Ignored,
    }

    fn group_of(worker: WorkerSample, metric: WorkerMetric<'_>) -> Group {
        let g = group_workers(&[worker], metric, NOW);
        match (g.samples.len(), g.unready.len(), g.missing.len()) {
            (1, 0, 0) => Group::Ready,
            (0, 1, 0) => Group::Unready,
            (0, 0, 1) => Group::Missing,
            (0, 0, 0) => Group::Ignored,
            other => panic!("worker in several groups: {other:?}"),
        }
    }

    /// A worker `age` old, whose Ready condition last changed `since` ago, with a CPU sample
    /// ending now over `window`.
    fn young(age: u64, ready: bool, since: u64, window: u64) -> WorkerSample {
        let mut w = cpu_worker("w", 500, 1000);
        w.started_at = Some(NOW - secs(age));
        w.ready = Some(ReadyCondition {
            ready,
            last_transition: NOW - secs(since),
        });
        if let Some(s) = w.cpu.as_mut() {
            s.window = secs(window);
        }
        w
    }

    #[test]
    fn group_workers_follows_every_row_of_group_pods() {
        use Group::*;
        let no_condition = WorkerSample {
            ready: None,
            ..cpu_worker("w", 500, 1000)
        };
        let no_start = WorkerSample {
            started_at: None,
            ..cpu_worker("w", 500, 1000)
        };
        let phase = |phase| WorkerSample {
            phase,
            ..cpu_worker("w", 500, 1000)
        };
        let no_sample = WorkerSample {
            cpu: None,
            ..cpu_worker("w", 500, 1000)
        };
        let cases: Vec<(&str, WorkerSample, Group)> = vec![
            (
                "running, ready, long started",
                cpu_worker("w", 500, 1000),
                Ready,
            ),
            (
                "terminating is ignored",
                phase(WorkerPhase::Terminating),
                Ignored,
            ),
            ("failed is ignored", phase(WorkerPhase::Failed), Ignored),
            ("pending is unready", phase(WorkerPhase::Pending), Unready),
            ("no sample is missing", no_sample, Missing),
            ("cpu without Ready condition", no_condition, Unready),
            ("cpu without start time", no_start, Unready),
            (
                "in init period, not ready",
                young(60, false, 30, 15),
                Unready,
            ),
            (
                "in init period, ready but sample began before readiness",
                young(60, true, 10, 15),
                Unready,
            ),
            (
                "in init period, ready and sample wholly after readiness",
                young(60, true, 30, 15),
                Ready,
            ),
            (
                "in init period, sample ends exactly one window after readiness",
                young(60, true, 15, 15),
                Ready,
            ),
            (
                "after init period, unready and never was ready",
                young(600, false, 600 - 10, 15),
                Unready,
            ),
            (
                "after init period, unready but was ready before",
                young(600, false, 600 - 60, 15),
                Ready,
            ),
            (
                "after init period, ready with a sample spanning the transition",
                young(600, true, 5, 15),
                Ready,
            ),
        ];
        for (name, worker, expected) in cases {
            assert_eq!(group_of(worker, WorkerMetric::Cpu), expected, "{name}");
        }
    }

    #[test]
    fn start_up_rules_apply_to_cpu_only() {
        let mut w = young(60, false, 30, 15);
        w.metrics.insert(QUEUE.to_owned(), 5.0);
        assert_eq!(group_of(w.clone(), WorkerMetric::Cpu), Group::Unready);
        assert_eq!(group_of(w, WorkerMetric::Named(QUEUE)), Group::Ready);
    }

    // --- CPU utilization (replica_calculator_test.go intents) ---

    #[test]
    fn scale_up() {
        let p = cpu(3, 30, &cpu_workers(&[300, 500, 700]));
        assert_eq!((p.replicas, percent(&p)), (5, 50));
        assert_eq!(
            p.current,
            MetricValue::Utilization {
                percent: 50,
                average_value: 0.5
            }
        );
    }

    #[test]
    fn scale_up_with_unready_worker_scales_less() {
        let mut workers = cpu_workers(&[300, 500, 700]);
        workers[0] = WorkerSample {
            id: "w0".into(),
            ..young(60, false, 60, 15)
        };
        let p = cpu(3, 30, &workers);
        // Ready ones are at 60 %: 2.0 × 2 = 4; counting the unready one as 0 % keeps 1.33 × 3 = 4.
        assert_eq!((p.replicas, percent(&p)), (4, 60));
    }

    #[test]
    fn scale_up_with_hot_cpu_worker_scales_less() {
        let mut workers = cpu_workers(&[300, 500, 700]);
        // Ready 10 s ago, 15 s sample: the sample still holds the start-up spike.
        workers[0] = young(60, true, 10, 15);
        let p = cpu(3, 30, &workers);
        assert_eq!((p.replicas, percent(&p)), (4, 60));
    }

    #[test]
    fn unready_workers_can_cancel_a_scale_up() {
        let mut workers = cpu_workers(&[400, 500, 700]);
        workers[1] = young(60, false, 60, 15);
        workers[2] = young(60, true, 5, 15);
        // 40 % against 30 % says up; with the two unready at 0 % it would say down: no change.
        let p = cpu(3, 30, &workers);
        assert_eq!((p.replicas, percent(&p)), (3, 40));
    }

    #[test]
    fn failed_and_terminating_workers_are_ignored() {
        let mut workers = cpu_workers(&[500, 700, 100, 100]);
        workers[2].phase = WorkerPhase::Failed;
        workers[3].phase = WorkerPhase::Terminating;
        let p = cpu(4, 30, &workers);
        assert_eq!((p.replicas, percent(&p)), (4, 60));
        let p = cpu(2, 30, &workers);
        assert_eq!(p.replicas, 4);
    }

    #[test]
    fn pending_worker_counts_as_idle_on_scale_up() {
        let mut workers = cpu_workers(&[800, 800, 0]);
        workers[2].phase = WorkerPhase::Pending;
        // 80 % on the two running against 50 % would ask for 4; with the pending one at 0 %
        // the pool is at 53 %, within tolerance of the target.
        let p = cpu(3, 50, &workers);
        assert_eq!((p.replicas, percent(&p)), (3, 80));
    }

    #[test]
    fn scale_down() {
        let p = cpu(5, 50, &cpu_workers(&[100, 300, 500, 250, 250]));
        assert_eq!((p.replicas, percent(&p)), (3, 28));
    }

    #[test]
    fn scale_down_excludes_unready_workers() {
        let mut workers = cpu_workers(&[100, 300, 500, 250, 250]);
        workers[3] = young(60, false, 60, 15);
        workers[4] = young(60, false, 60, 15);
        let p = cpu(5, 50, &workers);
        assert_eq!((p.replicas, percent(&p)), (2, 30));
    }

    #[test]
    fn within_tolerance_keeps_current() {
        let p = cpu(3, 100, &cpu_workers(&[1010, 1030, 1020]));
        assert_eq!((p.replicas, percent(&p)), (3, 102));
        let p = cpu(3, 100, &cpu_workers(&[1120, 1130, 1120]));
        assert_eq!(
            p.replicas, 4,
            "11 % over target is outside a 10 % tolerance"
        );
    }

    #[test]
    fn tolerance_is_asymmetric() {
        let workers = cpu_workers(&[920, 920]);
        let loose_down = Tolerances {
            scale_down: 0.1,
            scale_up: 0.0,
        };
        let strict_down = Tolerances {
            scale_down: 0.05,
            scale_up: 0.5,
        };
        let p = |tol| {
            cpu_utilization_replicas(3, 100, tol, &workers, NOW)
                .map(|p| p.replicas)
                .unwrap_or(0)
        };
        assert_eq!(p(loose_down), 3);
        assert_eq!(p(strict_down), 2);
    }

    #[test]
    fn utilization_percentage_is_truncated_before_the_ratio() {
        let no_tolerance = Tolerances {
            scale_down: 0.0,
            scale_up: 0.0,
        };
        let workers = cpu_workers(&[1009]);
        // 100.9 % truncates to 100 %: exactly on target.
        let p = cpu_utilization_replicas(1, 100, no_tolerance, &workers, NOW);
        assert_eq!(p.map(|p| p.replicas), Ok(1));
        // The same usage as an AverageValue target is not truncated: 1.009 → 2.
        let p = average_value_replicas(1, 1000, no_tolerance, &workers, WorkerMetric::Cpu, NOW);
        assert_eq!(p.map(|p| p.replicas), Ok(2));
    }

    // --- missing samples ---

    #[test]
    fn missing_samples_count_as_request_on_scale_down() {
        let mut workers = cpu_workers(&[400, 95, 0, 0]);
        workers[2].cpu = None;
        workers[3].cpu = None;
        // Measured 24 % would ask for 1; with the missing two at 100 % the pool is at 62 %: 3.
        let p = cpu(4, 100, &workers);
        assert_eq!((p.replicas, percent(&p)), (3, 24));
    }

    #[test]
    fn missing_samples_count_as_target_when_target_is_above_100_percent() {
        let mut workers = cpu_workers(&[100, 100, 100, 0]);
        workers[3].cpu = None;
        // Missing at 300 %: (300 + 3000) / 4000 = 82 % → 0.27 × 4 → 2 (at 100 % it would be 1).
        let p = cpu(4, 300, &workers);
        assert_eq!((p.replicas, percent(&p)), (2, 10));
    }

    #[test]
    fn missing_samples_without_change() {
        let with_missing = |level| {
            let mut workers = cpu_workers(&[level, 0]);
            workers[1].cpu = None;
            cpu(2, 100, &workers).replicas
        };
        assert_eq!(with_missing(1000), 2, "exactly at target");
        assert_eq!(
            with_missing(1900),
            2,
            "scale-up cancelled: missing at 0 % gives 95 %"
        );
        assert_eq!(
            with_missing(600),
            2,
            "scale-down damped: missing at 100 % gives 80 %"
        );
    }

    #[test]
    fn missing_and_unready_on_scale_up() {
        let mut workers = cpu_workers(&[100, 2000, 0]);
        workers[0] = young(60, false, 60, 15);
        workers[2].cpu = None;
        // 200 % on the ready one; unready and missing at 0 %: 66 % vs 50 % → 1.32 × 3 → 4.
        let p = cpu(3, 50, &workers);
        assert_eq!((p.replicas, percent(&p)), (4, 200));
    }

    #[test]
    fn missing_and_unready_on_scale_down() {
        let mut workers = cpu_workers(&[100, 100, 100, 0]);
        workers[0] = young(60, false, 60, 15);
        workers[3].cpu = None;
        // Unready is dropped on scale-down; missing at 100 %: 40 % vs 50 % → 0.8 × 3 → 3.
        let p = cpu(4, 50, &workers);
        assert_eq!((p.replicas, percent(&p)), (3, 10));
    }

    #[test]
    fn counted_workers_beyond_current_cannot_reverse_direction() {
        let mut workers = cpu_workers(&[100, 100, 100, 0]);
        workers[3].cpu = None;
        // Four workers exist while two are asked for: 32 % vs 50 % is a scale-down ratio, but
        // ceil(0.64 × 4) = 3 would be an increase, so the current count stands.
        assert_eq!(cpu(2, 50, &workers).replicas, 2);
    }

    #[test]
    fn cpu_metric_failures() {
        let fail = |workers: &[WorkerSample]| {
            cpu_utilization_replicas(3, 50, TOL, workers, NOW).map(|p| p.replicas)
        };
        assert_eq!(fail(&[]), Err(MetricError::NoWorkers));
        let mut all_missing = cpu_workers(&[1, 1]);
        all_missing.iter_mut().for_each(|w| w.cpu = None);
        assert_eq!(fail(&all_missing), Err(MetricError::NoMetrics));
        assert_eq!(
            fail(&[young(60, false, 60, 15)]),
            Err(MetricError::NoMetrics)
        );
        let mut no_request = cpu_workers(&[100, 100]);
        no_request[1].cpu_request = None;
        assert_eq!(
            fail(&no_request),
            Err(MetricError::MissingCpuRequest("w1".into()))
        );
        let mut zero_request = cpu_workers(&[100]);
        zero_request[0].cpu_request = Some(0.0);
        assert_eq!(fail(&zero_request), Err(MetricError::ZeroRequests));
        let mut nan = cpu_workers(&[100]);
        if let Some(s) = nan[0].cpu.as_mut() {
            s.usage = f64::NAN;
        }
        assert_eq!(fail(&nan), Err(MetricError::NoMetrics));
    }

    // --- plain per-worker metrics ---

    #[test]
    fn pods_metric_scale_up_and_down() {
        let workers = metric_workers(&[20.0, 10.0, 30.0]);
        let p = pods(3, 15_000, &workers);
        assert_eq!(p.replicas, 4);
        assert_eq!(p.current, MetricValue::AverageValue(20.0));
        let p = pods(5, 20_000, &metric_workers(&[12.0; 5]));
        assert_eq!(p.replicas, 3);
        let p = pods(3, 15_000, &metric_workers(&[15.0, 16.0, 16.0]));
        assert_eq!(p.replicas, 3, "within tolerance");
    }

    #[test]
    fn pods_metric_ignores_readiness_but_not_phase() {
        let mut workers = metric_workers(&[50.0, 10.0, 30.0]);
        workers[0].ready = Some(ReadyCondition {
            ready: false,
            last_transition: NOW,
        });
        workers[2].ready = None;
        assert_eq!(pods(3, 15_000, &workers).replicas, 6);
        workers[2].phase = WorkerPhase::Pending;
        // Mean of the two running is 30 → ratio 2; the pending one at 0 gives 1.33 × 3 → 4.
        assert_eq!(pods(3, 15_000, &workers).replicas, 4);
    }

    #[test]
    fn pods_metric_missing_counts_as_target_on_scale_down() {
        let mut workers = metric_workers(&[10.0, 10.0, 0.0, 0.0]);
        workers[2].metrics.clear();
        workers[3].metrics.clear();
        assert_eq!(pods(4, 20_000, &workers).replicas, 3);
    }

    #[test]
    fn cpu_average_value_applies_start_up_rules() {
        let mut workers = cpu_workers(&[300, 500, 700]);
        let avg = |workers: &[WorkerSample]| {
            average_value_replicas(3, 300, TOL, workers, WorkerMetric::Cpu, NOW)
                .map(|p| p.replicas)
                .unwrap_or(0)
        };
        assert_eq!(avg(&workers), 5);
        workers[2] = young(60, true, 10, 15);
        // Hot worker at 0: (300 + 500 + 0) / 3 = 267m vs 300m: cancelled, stays at 3.
        assert_eq!(avg(&workers), 3);
    }

    // --- Object / External ---

    #[test]
    fn value_target_scales_ready_workers() {
        assert_eq!(value_replicas(3, 3, 12_000, 10_000, TOL).replicas, 4);
        assert_eq!(value_replicas(3, 1, 50_000, 10_000, TOL).replicas, 5);
        assert_eq!(value_replicas(1, 1, 8_600, 4_400, TOL).replicas, 2);
        assert_eq!(value_replicas(5, 5, 8_600, 14_334, TOL).replicas, 3);
        assert_eq!(value_replicas(3, 3, 10_500, 10_000, TOL).replicas, 3);
        assert_eq!(
            value_replicas(3, 3, 12_000, 10_000, TOL).current,
            MetricValue::Value(12.0)
        );
    }

    #[test]
    fn average_value_target_divides_the_total() {
        let p = per_worker_value_replicas(3, 40_000, 10_000, TOL);
        assert_eq!(p.replicas, 4);
        assert_eq!(p.current, MetricValue::AverageValue(13.334));
        assert_eq!(
            per_worker_value_replicas(5, 60_000, 20_000, TOL).replicas,
            3
        );
        assert_eq!(
            per_worker_value_replicas(3, 31_000, 10_000, TOL).replicas,
            3,
            "31 over 3 workers is within tolerance of 10 each"
        );
        let none = per_worker_value_replicas(0, 25_000, 10_000, TOL);
        assert_eq!(none.replicas, 3);
        assert_eq!(none.current, MetricValue::AverageValue(25.0));
    }
}
