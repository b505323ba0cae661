//! Feeds the pure [`decide`] from live readings: samples cgroups on every tick, turns the
//! supervisor's worker states into HPA pods, and runs a sync every `syncPeriodSeconds`.
//!
//! Metric sources, and why they are attributed as they are:
//! - `Resource` `cpu`: each worker cgroup's `cpu.stat` over the last sampling window, against the
//!   per-worker CPU request the caller passes in.
//! - `Pods` [`FRAME_QUEUE_LATENCY_MS`]: mean offer-to-result latency of the frames completed since
//!   the previous sync. The dispatcher spreads frames over the ready workers from one queue, so
//!   every ready worker sees the same queue: each gets the pool-wide mean (a mean does not add
//!   up across workers). Workers still starting get none, which the HPA treats as missing.
//!   No completed frame since the previous sync means no reading, not zero latency.
//! - `Pods` [`DROPPED_FRAMES_PER_SECOND`]: change of the dispatcher's dropped-frame total over
//!   the time since the previous sync, split evenly over the ready workers (drops add up), so
//!   the HPA's average is the pool rate per worker and the proposal is `ceil(rate / target)`.
//! - `Object`/`External` [`PSI_CPU_SOME_AVG10`] (host) and [`POOL_PSI_CPU_SOME_AVG10`] (the
//!   pool cgroup): `some avg10` as read.
//! - The host CPU pressure guard uses the fast figure (stall share of the last sampling window),
//!   because `avg10` lags a change by tens of seconds in both directions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tracing::{debug, error, warn};

use super::controller::{ConditionType, Decision, ScalingState, decide};
use super::replica_calc::MetricValue;
use super::sampler::{CgroupReader, Sample, SampleError, Sampler, TRAILING_WINDOW};
use super::samples::{
    CpuSample, Observation, ReadyCondition, Timestamp, WorkerPhase, WorkerSample,
};
use super::spec::{HpaSpec, SpecError};
use crate::supervisor::{PoolName, WorkerState, WorkerStatus};

/// `Pods` metric: mean dispatch latency (offer to result) in milliseconds.
pub const FRAME_QUEUE_LATENCY_MS: &str = "frame_queue_latency_ms";
/// `Pods` metric: frames replaced in the per-camera queue before a worker took them, per second.
pub const DROPPED_FRAMES_PER_SECOND: &str = "dropped_frames_per_second";
/// `Object`/`External` metric: host `/proc/pressure/cpu` `some avg10`, percent.
pub const PSI_CPU_SOME_AVG10: &str = "psi_cpu_some_avg10";
/// `Object`/`External` metric: the pool cgroup's `cpu.pressure` `some avg10`, percent.
pub const POOL_PSI_CPU_SOME_AVG10: &str = "pool_psi_cpu_some_avg10";

/// A tick this much before a sync is due still runs it: with 1 s ticks and a 1 s sync period,
/// timer jitter would otherwise skip every other sync.
const SYNC_SLACK: Duration = Duration::from_millis(100);
/// The shortest CPU window an early sync ([`Autoscaler::step_when_behind`]) decides on: shorter
/// ones would scale on a single frame's burst.
const EARLY_SYNC_MIN_WINDOW: Duration = Duration::from_millis(500);

/// The autoscaler of one worker pool.
#[derive(Debug)]
pub struct Autoscaler<R> {
    spec: HpaSpec,
    state: ScalingState,
    sampler: Sampler<R>,
    pool: PoolName,
    cgroup_root: PathBuf,
    /// Zero of the [`Timestamp`]s handed to [`decide`].
    epoch: Instant,
    last_decision: Option<Instant>,
    /// The count last decided (Kubernetes' `scale.spec.replicas`).
    current_replicas: u32,
    /// When each worker process was first seen ready: the supervisor reports readiness as a
    /// state, the HPA's start-up rules need the transition time.
    ready_since: BTreeMap<(u32, Pid), Instant>,
    latency: LatencyWindow,
    drops: DropCounter,
    /// Paths that failed on the previous tick, so a persistent failure is warned about once.
    failing: BTreeSet<PathBuf>,
}

#[derive(Debug, Default, Clone, Copy)]
struct LatencyWindow {
    total: Duration,
    frames: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct DropCounter {
    latest: Option<u64>,
    /// The total and time the next rate is measured from.
    baseline: Option<(Instant, u64)>,
}

impl<R: CgroupReader> Autoscaler<R> {
    /// Fails on a spec Kubernetes would reject, so that [`Autoscaler::step`] never does.
    /// `current_replicas` is the pool's configured size; `now` is the first tick, and the first
    /// sync comes one sync period later, when there is a sampling window to report.
    pub fn new(
        spec: HpaSpec,
        pool: PoolName,
        cgroup_root: PathBuf,
        reader: R,
        current_replicas: u32,
        now: Instant,
    ) -> Result<Self, SpecError> {
        spec.validate()?;
        Ok(Self {
            spec,
            state: ScalingState::new(),
            sampler: Sampler::new(reader),
            pool,
            cgroup_root,
            epoch: now,
            last_decision: None,
            current_replicas,
            ready_since: BTreeMap::new(),
            latency: LatencyWindow::default(),
            drops: DropCounter::default(),
            failing: BTreeSet::new(),
        })
    }

    /// The count the last decision asked for, which the next sync starts from.
    pub fn current_replicas(&self) -> u32 {
        self.current_replicas
    }

    /// One completed frame (`DispatchEvent::Done { latency, .. }`).
    pub fn observe_dispatch(&mut self, latency: Duration) {
        self.latency.total = self.latency.total.saturating_add(latency);
        self.latency.frames = self.latency.frames.saturating_add(1);
    }

    /// The dispatcher's dropped-frame total (sum of `dropped_oldest` over cameras); call before
    /// each [`Autoscaler::step`]. A total lower than before (dispatcher rebuilt) restarts the rate.
    pub fn observe_drops(&mut self, total_dropped: u64) {
        self.drops.latest = Some(total_dropped);
    }

    /// Call every sampling interval (1 s) with the supervisor's status. Samples on every call;
    /// returns a decision once per sync period, for the caller to apply with
    /// `Supervisor::set_desired` and to log with [`status_line`].
    pub fn step(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        cpu_request_cores: f64,
    ) -> Option<Decision> {
        let sample = self.take_sample(now, workers);
        if !self.sync_due(now) {
            return None;
        }
        self.sync(now, workers, &sample, cpu_request_cores)
    }

    /// The workers are behind (frames wait for a free worker, or were replaced unanalysed):
    /// samples and syncs now rather than at the next tick, so a surge meets a decision within
    /// about half a second. The decision is an ordinary one, held to the spec's behaviour
    /// policies and stabilization windows. `None` at `maxReplicas`, or while a worker's CPU
    /// window is shorter than [`EARLY_SYNC_MIN_WINDOW`].
    pub fn step_when_behind(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        cpu_request_cores: f64,
    ) -> Option<Decision> {
        if !self.can_grow() {
            return None;
        }
        let sample = self.take_sample(now, workers);
        if !windows_at_least(&sample, EARLY_SYNC_MIN_WINDOW) {
            return None;
        }
        self.sync(now, workers, &sample, cpu_request_cores)
    }

    /// Between syncs (the control loop calls it every few hundred milliseconds): samples, and
    /// when the last second already asks for more replicas, syncs now instead of at the next
    /// sync period, so a surge is decided about a second after it arrives rather than up to a
    /// sync period later. Only a scale-up is taken early: a decision to hold or shrink is
    /// dropped with no trace in the HPA's state (recommendations, events, the latency and
    /// drop windows), as if it had not been made. `None` at `maxReplicas`, while a worker's
    /// CPU window is shorter than [`TRAILING_WINDOW`], or when nothing asks for more.
    pub fn glance(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        cpu_request_cores: f64,
    ) -> Option<Decision> {
        let sample = self.take_sample(now, workers);
        if !(self.can_grow() && windows_at_least(&sample, TRAILING_WINDOW)) {
            return None;
        }
        let replicas_before = self.current_replicas;
        // Everything a sync changes, to put back when its decision is not taken.
        let before = (
            self.state.clone(),
            self.latency,
            self.drops,
            self.last_decision,
            self.current_replicas,
        );
        match self.sync(now, workers, &sample, cpu_request_cores) {
            Some(decision) if decision.desired_replicas > replicas_before => Some(decision),
            _ => {
                (
                    self.state,
                    self.latency,
                    self.drops,
                    self.last_decision,
                    self.current_replicas,
                ) = before;
                None
            }
        }
    }

    fn can_grow(&self) -> bool {
        i64::from(self.current_replicas) < i64::from(self.spec.max_replicas)
    }

    fn take_sample(&mut self, now: Instant, workers: &[WorkerStatus]) -> Sample {
        let sample = self
            .sampler
            .sample(now, workers, &self.cgroup_root, &self.pool);
        self.log_errors(&sample.errors);
        self.track_readiness(now, workers);
        if self.drops.baseline.is_none() {
            self.drops.baseline = self.drops.latest.map(|total| (now, total));
        }
        sample
    }

    /// A sync on `sample`: the HPA's decision, which the next sync starts from.
    fn sync(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        sample: &Sample,
        cpu_request_cores: f64,
    ) -> Option<Decision> {
        self.last_decision = Some(now);

        let observation = self.observation(now, workers, sample, cpu_request_cores);
        let timestamp = self.timestamp(now);
        match decide(&self.spec, &observation, &mut self.state, timestamp) {
            Ok(decision) => {
                self.current_replicas = decision.desired_replicas;
                Some(decision)
            }
            Err(e) => {
                // Unreachable while the spec is the one validated in `new`.
                error!(pool = %self.pool, error = %e, "autoscaling spec rejected");
                None
            }
        }
    }

    fn sync_due(&self, now: Instant) -> bool {
        let since = self.last_decision.unwrap_or(self.epoch);
        now.saturating_duration_since(since)
            .saturating_add(SYNC_SLACK)
            >= self.spec.sync_period()
    }

    fn timestamp(&self, t: Instant) -> Timestamp {
        // A worker started before the autoscaler looks started at its creation: its CPU is then
        // treated as start-up CPU until a sample taken wholly while ready, one window at most.
        t.saturating_duration_since(self.epoch)
    }

    fn track_readiness(&mut self, now: Instant, workers: &[WorkerStatus]) {
        let ready: Vec<(u32, Pid)> = in_pool(workers, &self.pool)
            .filter(|w| w.state == WorkerState::Ready)
            .filter_map(|w| w.pid.map(|pid| (w.id, pid)))
            .collect();
        self.ready_since.retain(|key, _| ready.contains(key));
        for key in ready {
            self.ready_since.entry(key).or_insert(now);
        }
    }

    /// Consumes the per-sync windows (latency, drops) and maps the workers onto pods.
    fn observation(
        &mut self,
        now: Instant,
        workers: &[WorkerStatus],
        sample: &Sample,
        cpu_request_cores: f64,
    ) -> Observation {
        let latency_ms = self.take_latency_ms();
        let drop_rate = self.take_drop_rate(now);
        let ready_count = in_pool(workers, &self.pool)
            .filter(|w| w.state == WorkerState::Ready && w.pid.is_some())
            .count();
        let cpu_request = Some(cpu_request_cores).filter(|c| c.is_finite() && *c > 0.0);

        let mut pods = Vec::new();
        for w in in_pool(workers, &self.pool) {
            let (phase, ready) = match (w.state, w.pid) {
                // Not a replica: a standby is capacity held back, not serving.
                (WorkerState::Backoff { .. } | WorkerState::Standby { .. }, _) => continue,
                (WorkerState::Draining | WorkerState::Stopping, _) => {
                    (WorkerPhase::Terminating, None)
                }
                (WorkerState::Ready, Some(pid)) => {
                    let since = self.ready_since.get(&(w.id, pid)).copied().unwrap_or(now);
                    let ready = ReadyCondition {
                        ready: true,
                        last_transition: self.timestamp(since),
                    };
                    (WorkerPhase::Running, Some(ready))
                }
                (WorkerState::Ready | WorkerState::Starting, _) => {
                    let ready = w.started_at.map(|t| ReadyCondition {
                        ready: false,
                        last_transition: self.timestamp(t),
                    });
                    (WorkerPhase::Running, ready)
                }
            };
            let is_ready = ready.is_some_and(|r| r.ready);
            let cpu = w
                .pid
                .and_then(|pid| sample.cpu_of(w.id, pid))
                .map(|usage| CpuSample {
                    usage: usage.cores,
                    timestamp: self.timestamp(now),
                    window: usage.window,
                });
            let mut metrics = BTreeMap::new();
            if is_ready {
                if let Some(ms) = latency_ms {
                    metrics.insert(FRAME_QUEUE_LATENCY_MS.to_owned(), ms);
                }
                if let Some(rate) = drop_rate {
                    metrics.insert(
                        DROPPED_FRAMES_PER_SECOND.to_owned(),
                        rate / ready_count as f64,
                    );
                }
            }
            pods.push(WorkerSample {
                id: format!("{}/{}", self.pool, w.id),
                phase,
                started_at: w.started_at.map(|t| self.timestamp(t)),
                ready,
                cpu,
                cpu_request,
                metrics,
            });
        }

        let mut pool_metrics = BTreeMap::new();
        if let Some(host) = sample.host_pressure {
            pool_metrics.insert(PSI_CPU_SOME_AVG10.to_owned(), host.avg10);
        }
        if let Some(pool) = sample.pool_pressure {
            pool_metrics.insert(POOL_PSI_CPU_SOME_AVG10.to_owned(), pool.avg10);
        }
        Observation {
            current_replicas: self.current_replicas,
            workers: pods,
            object_metrics: pool_metrics.clone(),
            external_metrics: pool_metrics,
            host_cpu_pressure: sample.host_pressure.map(|p| p.percent()),
        }
    }

    fn take_latency_ms(&mut self) -> Option<f64> {
        let window = std::mem::take(&mut self.latency);
        (window.frames > 0).then(|| window.total.as_secs_f64() * 1000.0 / f64::from(window.frames))
    }

    fn take_drop_rate(&mut self, now: Instant) -> Option<f64> {
        let latest = self.drops.latest?;
        let previous = self.drops.baseline.replace((now, latest));
        let (since, base) = previous?;
        let window = now.checked_duration_since(since)?.as_secs_f64();
        (window > 0.0 && latest >= base).then(|| (latest - base) as f64 / window)
    }

    fn log_errors(&mut self, errors: &[SampleError]) {
        let failing: BTreeSet<PathBuf> = errors.iter().map(|e| e.path().to_owned()).collect();
        for e in errors {
            if self.failing.contains(e.path()) {
                debug!(pool = %self.pool, error = %e, "autoscaler sample still failing");
            } else {
                warn!(pool = %self.pool, error = %e, "autoscaler sample failed; treated as missing");
            }
        }
        self.failing = failing;
    }
}

/// Every worker's CPU was measured over at least `window` (and at least one was).
fn windows_at_least(sample: &Sample, window: Duration) -> bool {
    !sample.cpu.is_empty() && sample.cpu.values().all(|usage| usage.window >= window)
}

fn in_pool<'a>(
    workers: &'a [WorkerStatus],
    pool: &'a PoolName,
) -> impl Iterator<Item = &'a WorkerStatus> {
    workers.iter().filter(move |w| &w.pool == pool)
}

/// One log line for a decision: the replica change and why, each metric's current value and
/// proposal, and the three conditions with their reasons (plus the message of a condition that
/// explains a hold-back: scaling inactive or limited).
pub fn status_line(decision: &Decision) -> String {
    let mut line = format!(
        "replicas {} -> {}",
        decision.current_replicas, decision.desired_replicas
    );
    if let Some(reason) = &decision.rescale_reason {
        let _ = write!(line, " ({reason})");
    }
    for metric in &decision.metrics {
        let _ = write!(line, "; {}: ", metric.metric);
        match &metric.outcome {
            Ok(proposal) => {
                let _ = match proposal.current {
                    MetricValue::Utilization {
                        percent,
                        average_value,
                    } => write!(
                        line,
                        "{percent}% of request ({average_value:.3} cores/worker)"
                    ),
                    MetricValue::AverageValue(v) => write!(line, "{v:.3}/worker"),
                    MetricValue::Value(v) => write!(line, "{v:.3}"),
                };
                let _ = write!(line, " wants {}", proposal.replicas);
            }
            Err(e) => {
                let _ = write!(line, "unavailable ({e})");
            }
        }
    }
    line.push_str(" |");
    for condition in &decision.conditions {
        let status = if condition.status { "True" } else { "False" };
        let _ = write!(line, " {}={status}/{}", condition.kind, condition.reason);
        let holds_back = match condition.kind {
            ConditionType::ScalingActive => !condition.status,
            ConditionType::ScalingLimited => condition.status,
            ConditionType::AbleToScale => false,
        };
        if holds_back {
            let _ = write!(line, " ({})", condition.message);
        }
    }
    if let Some(e) = &decision.error {
        let _ = write!(line, " | error: {e}");
    }
    line
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::autoscaler::ConditionReason;
    use crate::autoscaler::sampler::fake::FakeReader;

    const ROOT: &str = "/cg/helmetd";
    const HOST_PSI: &str = "/proc/pressure/cpu";

    fn pool() -> PoolName {
        PoolName::new("detect").unwrap_or_else(|e| panic!("{e}"))
    }

    fn spec(toml_text: &str) -> HpaSpec {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("test spec: {e}"))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A pool on a fake host: cumulative CPU and PSI counters advanced per simulated second.
    struct Harness {
        fake: FakeReader,
        scaler: Autoscaler<FakeReader>,
        t0: Instant,
        usage_usec: BTreeMap<u32, u64>,
        host_stall_usec: u64,
    }

    impl Harness {
        fn new(spec_text: &str, replicas: u32) -> Self {
            let fake = FakeReader::default();
            let t0 = Instant::now();
            let scaler = Autoscaler::new(
                spec(spec_text),
                pool(),
                PathBuf::from(ROOT),
                fake.clone(),
                replicas,
                t0,
            )
            .unwrap_or_else(|e| panic!("valid spec: {e}"));
            let h = Harness {
                fake,
                scaler,
                t0,
                usage_usec: BTreeMap::new(),
                host_stall_usec: 0,
            };
            h.write_host_psi(0.0);
            h
        }

        /// Ready workers 0..n, started and ready at t0.
        fn ready_workers(&self, n: u32) -> Vec<WorkerStatus> {
            (0..n)
                .map(|id| WorkerStatus {
                    pool: pool(),
                    id,
                    pid: Some(Pid::from_raw(1000 + id as i32)),
                    state: WorkerState::Ready,
                    restarts: 0,
                    started_at: Some(self.t0),
                    generation: Some(1),
                })
                .collect()
        }

        /// Adds `cores × dt` of CPU to each worker's cgroup.
        fn burn(&mut self, cores: &[f64], dt: Duration) {
            for (id, c) in cores.iter().enumerate() {
                let id = id as u32;
                let usage = self.usage_usec.entry(id).or_insert(0);
                *usage += (c * dt.as_secs_f64() * 1e6) as u64;
                self.fake.set(
                    Path::new(ROOT).join(format!("workers/detect/{id}/cpu.stat")),
                    format!("usage_usec {usage}\nuser_usec 0\nsystem_usec 0\n"),
                );
            }
        }

        fn stall(&mut self, percent: f64, dt: Duration) {
            self.host_stall_usec += (percent / 100.0 * dt.as_secs_f64() * 1e6) as u64;
            self.write_host_psi(0.0);
        }

        fn write_host_psi(&self, avg10: f64) {
            self.fake.set(
                HOST_PSI,
                format!(
                    "some avg10={avg10:.2} avg60=0.00 avg300=0.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                    self.host_stall_usec
                ),
            );
        }

        fn step_at(&mut self, t: Duration, workers: &[WorkerStatus]) -> Option<Decision> {
            self.scaler.step(self.t0 + t, workers, 1.0)
        }
    }

    const CPU_50: &str = r#"
        minReplicas = 1
        maxReplicas = 4
        hostCpuPressureLimit = 40.0
        metrics = [{ type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } }]
    "#;

    #[test]
    fn busy_worker_scales_up_at_the_first_sync() {
        let mut h = Harness::new(CPU_50, 1);
        let workers = h.ready_workers(1);
        h.burn(&[0.0], secs(0));
        assert!(h.step_at(secs(0), &workers).is_none());
        h.burn(&[0.9], secs(1));
        let decision = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("first sync one period after start"));
        assert_eq!(
            (decision.current_replicas, decision.desired_replicas),
            (1, 2),
            "{}",
            status_line(&decision)
        );
        let Ok(proposal) = &decision.metrics[0].outcome else {
            panic!("cpu metric: {:?}", decision.metrics[0]);
        };
        assert!(matches!(
            proposal.current,
            MetricValue::Utilization { percent: 90, .. }
        ));
        assert_eq!(h.scaler.current_replicas(), 2);
        let line = status_line(&decision);
        assert!(line.starts_with("replicas 1 -> 2"), "{line}");
        assert!(line.contains("90% of request"), "{line}");
        assert!(line.contains("AbleToScale=True/SucceededRescale"), "{line}");
        assert!(
            line.contains("ScalingActive=True/ValidMetricFound"),
            "{line}"
        );
    }

    #[test]
    fn idle_pool_scales_down_only_after_the_stabilization_window() {
        let mut h = Harness::new(CPU_50, 2);
        let workers = h.ready_workers(2);
        h.burn(&[0.0, 0.0], secs(0));
        h.step_at(secs(0), &workers);
        let mut scaled_down_at = None;
        for t in 1..=310 {
            h.burn(&[0.05, 0.05], secs(1));
            let Some(d) = h.step_at(secs(t), &workers) else {
                panic!("a decision every second");
            };
            if d.desired_replicas < 2 {
                scaled_down_at = Some(t);
                assert_eq!(d.desired_replicas, 1, "{}", status_line(&d));
                break;
            }
            assert_eq!(
                d.condition(ConditionType::AbleToScale).map(|c| c.reason),
                Some(ConditionReason::ScaleDownStabilized),
                "t={t}: {}",
                status_line(&d)
            );
        }
        // The count seen at the first sync (t=1) holds for the 300 s window.
        assert_eq!(scaled_down_at, Some(302));
    }

    #[test]
    fn host_cpu_pressure_blocks_scale_up() {
        let mut h = Harness::new(CPU_50, 1);
        let workers = h.ready_workers(1);
        h.burn(&[0.0], secs(0));
        h.step_at(secs(0), &workers);
        h.burn(&[0.9], secs(1));
        h.stall(60.0, secs(1));
        let d = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert_eq!(d.desired_replicas, 1, "{}", status_line(&d));
        let limited = d
            .condition(ConditionType::ScalingLimited)
            .unwrap_or_else(|| panic!("ScalingLimited set"));
        assert!(limited.status);
        assert_eq!(limited.reason, ConditionReason::HostCpuPressure);
        let line = status_line(&d);
        assert!(
            line.contains("ScalingLimited=True/HostCpuPressure (host CPU pressure"),
            "{line}"
        );

        // Pressure gone: the fast figure lets the scale-up through at the next sync, though
        // avg10 would still be high.
        h.burn(&[0.9], secs(1));
        h.stall(5.0, secs(1));
        h.write_host_psi(55.0);
        let d = h
            .step_at(secs(2), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert_eq!(d.desired_replicas, 2, "{}", status_line(&d));
    }

    #[test]
    fn queue_latency_drives_a_scale_up() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 8
            metrics = [{ type = "Pods", pods = { metric = { name = "frame_queue_latency_ms" }, target = { type = "AverageValue", averageValue = 100 } } }]
            "#,
            2,
        );
        let mut workers = h.ready_workers(2);
        // A third worker still loading its model gets no latency (missing, 0 on scale-up).
        workers.push(WorkerStatus {
            id: 2,
            pid: Some(Pid::from_raw(1002)),
            state: WorkerState::Starting,
            ..workers[0].clone()
        });
        h.step_at(secs(0), &workers);
        for ms in [200, 250, 300] {
            h.scaler.observe_dispatch(Duration::from_millis(ms));
        }
        let d = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("sync"));
        let Ok(proposal) = &d.metrics[0].outcome else {
            panic!("latency metric: {}", status_line(&d));
        };
        assert_eq!(proposal.current, MetricValue::AverageValue(250.0));
        // 2.5 × target over 2 reporting + 1 missing counted as 0: ceil(2 × 250 / 100) = 5,
        // capped by the legacy limit max(2 × current, 4).
        assert_eq!(d.desired_replicas, 4, "{}", status_line(&d));
        assert_eq!(
            d.condition(ConditionType::ScalingLimited).map(|c| c.reason),
            Some(ConditionReason::ScaleUpLimit)
        );

        // No frame completed since: no reading, rather than an invented zero.
        let d = h
            .step_at(secs(2), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert!(d.metrics[0].outcome.is_err(), "{}", status_line(&d));
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn dropped_frames_rate_is_shared_by_the_ready_workers() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 8
            metrics = [{ type = "Pods", pods = { metric = { name = "dropped_frames_per_second" }, target = { type = "AverageValue", averageValue = 10 } } }]
            "#,
            2,
        );
        let workers = h.ready_workers(2);
        h.scaler.observe_drops(1000);
        h.step_at(secs(0), &workers);
        h.scaler.observe_drops(1030);
        let d = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("sync"));
        // 30 drops/s over 2 workers: 15 each against 10 → ceil(30 / 10) = 3.
        assert_eq!(
            d.metrics[0].outcome.as_ref().map(|p| p.current),
            Ok(MetricValue::AverageValue(15.0))
        );
        assert_eq!(d.desired_replicas, 3, "{}", status_line(&d));

        // A rebuilt dispatcher restarts its total: no negative rate, just no reading.
        h.scaler.observe_drops(5);
        let d = h
            .step_at(secs(2), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert!(d.metrics[0].outcome.is_err(), "{}", status_line(&d));
    }

    #[test]
    fn sync_period_is_respected() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 4
            syncPeriodSeconds = 5
            metrics = [{ type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } }]
            "#,
            1,
        );
        let workers = h.ready_workers(1);
        let mut synced = Vec::new();
        for half_seconds in 0..=24u64 {
            h.burn(&[0.4], Duration::from_millis(500));
            // Ticks run up to 50 ms late, or early, as timers do.
            let jitter = Duration::from_millis([0, 50, 20][half_seconds as usize % 3]);
            let t = Duration::from_millis(half_seconds * 500) + jitter;
            let t = if half_seconds % 4 == 1 {
                t.saturating_sub(Duration::from_millis(70))
            } else {
                t
            };
            if h.step_at(t, &workers).is_some() {
                synced.push(half_seconds);
            }
        }
        assert_eq!(synced, [10, 20], "syncs at 5 s and 10 s only");
    }

    #[test]
    fn falling_behind_syncs_early_but_not_on_a_short_window_nor_at_the_maximum() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 2
            syncPeriodSeconds = 1
            metrics = [{ type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } }]
            "#,
            1,
        );
        let workers = h.ready_workers(1);
        h.burn(&[0.3], secs(0));
        assert!(h.step_at(secs(0), &workers).is_none());
        // Frames start to queue 0.3 s after the tick: too soon to measure anything.
        h.burn(&[1.0], Duration::from_millis(300));
        let t0 = h.t0;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(h.scaler.step_when_behind(at(300), &workers, 1.0).is_none());
        // A glance at 0.45 s (the control loop's, with each reconcile) has no whole second
        // yet; at 0.6 s the window is long enough, however recent that glance: the busy worker
        // is decided on before the tick.
        h.burn(&[1.0], Duration::from_millis(150));
        assert!(h.scaler.glance(at(450), &workers, 1.0).is_none());
        h.burn(&[1.0], Duration::from_millis(150));
        let decision = h
            .scaler
            .step_when_behind(at(600), &workers, 1.0)
            .unwrap_or_else(|| panic!("an early sync"));
        assert_eq!(decision.desired_replicas, 2, "{}", status_line(&decision));
        // The next tick comes before a sync period since that decision: a sample, no sync.
        h.burn(&[1.0], Duration::from_millis(400));
        assert!(h.step_at(Duration::from_millis(1000), &workers).is_none());
        // At the maximum, falling behind has nothing to ask for.
        h.burn(&[1.0, 1.0], Duration::from_millis(600));
        assert!(
            h.scaler
                .step_when_behind(at(1600), &h.ready_workers(2), 1.0)
                .is_none()
        );
    }

    #[test]
    fn a_glance_scales_up_once_the_last_second_shows_it_and_leaves_no_other_decision() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 2
            syncPeriodSeconds = 15
            metrics = [{ type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } }]
            "#,
            1,
        );
        let workers = h.ready_workers(1);
        let t0 = h.t0;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        h.burn(&[0.3], secs(0));
        assert!(h.step_at(secs(0), &workers).is_none());
        // 30 % of the request for a second and a half: every glance holds, and is dropped.
        let mut glanced = Vec::new();
        for quarter in 1..=6 {
            h.burn(&[0.3], Duration::from_millis(250));
            glanced.push(h.scaler.glance(at(250 * quarter), &workers, 1.0));
        }
        assert!(glanced.iter().all(Option::is_none));
        assert_eq!(h.scaler.current_replicas(), 1);
        // Then a whole core: a quarter of it in the last second is within the tolerance, half
        // of it is 65 %, and that glance decides, 13 s before the sync period would have.
        h.burn(&[1.0], Duration::from_millis(250));
        assert!(h.scaler.glance(at(1750), &workers, 1.0).is_none());
        h.burn(&[1.0], Duration::from_millis(250));
        let decision = h
            .scaler
            .glance(at(2000), &workers, 1.0)
            .unwrap_or_else(|| panic!("a scale-up at the glance"));
        assert_eq!(decision.desired_replicas, 2, "{}", status_line(&decision));
        assert_eq!(h.scaler.current_replicas(), 2);
        // At the maximum a glance has nothing to ask for.
        h.burn(&[1.0, 1.0], Duration::from_millis(1000));
        assert!(
            h.scaler
                .glance(at(3000), &h.ready_workers(2), 1.0)
                .is_none()
        );
    }

    #[test]
    fn worker_states_map_onto_pod_phases() {
        let mut h = Harness::new(CPU_50, 4);
        let mut workers = h.ready_workers(1);
        let template = workers[0].clone();
        workers.push(WorkerStatus {
            id: 1,
            state: WorkerState::Starting,
            ..template.clone()
        });
        workers.push(WorkerStatus {
            id: 2,
            state: WorkerState::Draining,
            ..template.clone()
        });
        workers.push(WorkerStatus {
            id: 3,
            pid: None,
            state: WorkerState::Backoff { until: h.t0 },
            started_at: None,
            ..template.clone()
        });
        workers.push(WorkerStatus {
            id: 4,
            state: WorkerState::Standby { frozen: true },
            ..template.clone()
        });
        workers.push(WorkerStatus {
            pool: PoolName::new("other").unwrap_or_else(|e| panic!("{e}")),
            ..template
        });
        h.burn(&[0.0, 0.0, 0.0], secs(0));
        h.step_at(secs(0), &workers);
        h.burn(&[0.5, 2.0, 2.0], secs(1));
        let observation = h
            .scaler
            .observation(h.t0 + secs(1), &workers, &Sample::default(), 0.5);
        let phases: Vec<_> = observation
            .workers
            .iter()
            .map(|w| (w.id.as_str(), w.phase, w.ready.map(|r| r.ready)))
            .collect();
        assert_eq!(
            phases,
            [
                ("detect/0", WorkerPhase::Running, Some(true)),
                ("detect/1", WorkerPhase::Running, Some(false)),
                ("detect/2", WorkerPhase::Terminating, None),
            ]
        );
        assert_eq!(observation.workers[0].cpu_request, Some(0.5));
        assert_eq!(
            observation.workers[0].ready.map(|r| r.last_transition),
            Some(Duration::ZERO)
        );

        // The starting worker's CPU is sampled but counts as start-up CPU: 0.5 cores on a
        // 1-core request is 50 %, on target, so the busy loader does not trigger a scale-up.
        let d = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert!(
            matches!(
                d.metrics[0].outcome.as_ref().map(|p| p.current),
                Ok(MetricValue::Utilization { percent: 50, .. })
            ),
            "{}",
            status_line(&d)
        );
    }

    #[test]
    fn pressure_metrics_reach_object_and_external_metrics() {
        let mut h = Harness::new(
            r#"
            maxReplicas = 8
            [[metrics]]
            type = "External"
            external = { metric = { name = "psi_cpu_some_avg10" }, target = { type = "Value", value = 10 } }
            [[metrics]]
            type = "Object"
            object = { metric = { name = "pool_psi_cpu_some_avg10" }, target = { type = "Value", value = 10 } }
            "#,
            2,
        );
        let workers = h.ready_workers(2);
        h.write_host_psi(20.0);
        h.fake.set(
            Path::new(ROOT).join("workers/detect/cpu.pressure"),
            "some avg10=30.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        h.step_at(secs(0), &workers);
        let d = h
            .step_at(secs(1), &workers)
            .unwrap_or_else(|| panic!("sync"));
        let values: Vec<_> = d
            .metrics
            .iter()
            .map(|m| m.outcome.as_ref().map(|p| (p.current, p.replicas)))
            .collect();
        assert_eq!(
            values,
            [
                Ok((MetricValue::Value(20.0), 4)),
                Ok((MetricValue::Value(30.0), 6)),
            ]
        );
        assert_eq!(d.desired_replicas, 4, "legacy cap: {}", status_line(&d));

        // Unreadable pool pressure fails that metric only; scale-up on the others proceeds.
        h.fake
            .remove(Path::new(ROOT).join("workers/detect/cpu.pressure"));
        let d = h
            .step_at(secs(2), &workers)
            .unwrap_or_else(|| panic!("sync"));
        assert!(d.metrics[1].outcome.is_err());
        assert!(
            status_line(&d).contains("unavailable"),
            "{}",
            status_line(&d)
        );
    }

    #[test]
    fn invalid_spec_is_refused_up_front() {
        let result = Autoscaler::new(
            spec("maxReplicas = 2\nminReplicas = 3"),
            pool(),
            PathBuf::from(ROOT),
            FakeReader::default(),
            2,
            Instant::now(),
        );
        assert!(matches!(result, Err(SpecError::MinAboveMax { .. })));
    }
}
