//! One HPA sync (`reconcileAutoscaler` in Kubernetes' `horizontal.go`) as a pure function of the
//! spec, an observation, the autoscaler's memory and the time: the daemon owns the clock and the
//! worker pool, this module only decides.

use std::fmt;
use std::time::Duration;

use super::replica_calc::{
    MetricError, MetricProposal, WorkerMetric, average_value_replicas, cpu_utilization_replicas,
    per_worker_value_replicas, value_replicas,
};
use super::samples::{Observation, Timestamp, to_milli};
use super::spec::{
    AverageValueTarget, DEFAULT_DOWNSCALE_STABILIZATION, HpaSpec, MetricSpec, PolicyType, Resolved,
    ResolvedBehavior, ResourceTarget, Rules, SelectPolicy, SpecError, ValueTarget,
};

/// The three HPA status conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    AbleToScale,
    ScalingActive,
    ScalingLimited,
}

/// Kubernetes' reason strings, so dashboards and runbooks written for HPAs read the same here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionReason {
    // AbleToScale
    SucceededGetScale,
    ReadyForNewScale,
    ScaleUpStabilized,
    ScaleDownStabilized,
    SucceededRescale,
    // ScalingActive
    ValidMetricFound,
    FailedGetResourceMetric,
    FailedGetPodsMetric,
    FailedGetObjectMetric,
    FailedGetExternalMetric,
    ScalingDisabled,
    // ScalingLimited
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
    DesiredWithinRange,
    /// helmetd: scale-up refused because of host CPU pressure.
    HostCpuPressure,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::AbleToScale => "AbleToScale",
            ConditionType::ScalingActive => "ScalingActive",
            ConditionType::ScalingLimited => "ScalingLimited",
        }
    }
}

impl ConditionReason {
    pub fn as_str(self) -> &'static str {
        use ConditionReason::*;
        match self {
            SucceededGetScale => "SucceededGetScale",
            ReadyForNewScale => "ReadyForNewScale",
            ScaleUpStabilized => "ScaleUpStabilized",
            ScaleDownStabilized => "ScaleDownStabilized",
            SucceededRescale => "SucceededRescale",
            ValidMetricFound => "ValidMetricFound",
            FailedGetResourceMetric => "FailedGetResourceMetric",
            FailedGetPodsMetric => "FailedGetPodsMetric",
            FailedGetObjectMetric => "FailedGetObjectMetric",
            FailedGetExternalMetric => "FailedGetExternalMetric",
            ScalingDisabled => "ScalingDisabled",
            ScaleUpLimit => "ScaleUpLimit",
            ScaleDownLimit => "ScaleDownLimit",
            TooManyReplicas => "TooManyReplicas",
            TooFewReplicas => "TooFewReplicas",
            DesiredWithinRange => "DesiredWithinRange",
            HostCpuPressure => "HostCpuPressure",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ConditionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HPA status condition. Conditions persist in [`ScalingState`] between decisions, as on an
/// HPA object: a sync that does not touch one (e.g. the min/max shortcut) leaves it as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: ConditionType,
    pub status: bool,
    pub reason: ConditionReason,
    pub message: String,
    /// When `status` last changed.
    pub last_transition: Timestamp,
}

/// One metric's outcome, in spec order.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricStatus {
    /// Upstream's description, e.g. "cpu resource utilization (percentage of request)".
    pub metric: String,
    pub outcome: Result<MetricProposal, MetricError>,
}

/// What one sync decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub current_replicas: u32,
    /// The worker count to run; equal to `current_replicas` when nothing should change.
    pub desired_replicas: u32,
    /// Empty when no metric was evaluated (scaling disabled, or the count outside min/max).
    pub metrics: Vec<MetricStatus>,
    pub conditions: Vec<Condition>,
    /// Why the count changes (upstream's `SuccessfulRescale` event text); `None` if it does not.
    pub rescale_reason: Option<String>,
    /// Failed metrics, also when the remaining ones still allowed a scale-up.
    pub error: Option<String>,
}

impl Decision {
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

/// What the autoscaler remembers between syncs: recent recommendations (for stabilization),
/// recent scale events (for rate policies) and the status conditions. One per worker pool; keep
/// it across spec reloads as Kubernetes keeps it across HPA updates.
#[derive(Debug, Clone, Default)]
pub struct ScalingState {
    recommendations: Vec<Recommendation>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recommendation {
    replicas: u32,
    at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: u32,
    at: Timestamp,
    /// Older than every policy period of its direction; the slot may be reused. Upstream still
    /// counts such events until the slot is overwritten, and so does this.
    outdated: bool,
}

impl ScalingState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Runs one HPA sync.
///
/// The returned count is assumed to be applied: it is recorded as a scale event for the rate
/// policies, and the next [`Observation::current_replicas`] should be this `desired_replicas`.
/// Fails only on an invalid spec (see [`HpaSpec::validate`]); metric failures are reported in the
/// decision, as Kubernetes reports them in HPA status.
pub fn decide(
    spec: &HpaSpec,
    observation: &Observation,
    state: &mut ScalingState,
    now: Timestamp,
) -> Result<Decision, SpecError> {
    let spec = spec.resolve()?;
    let current = observation.current_replicas;
    state.record_initial_recommendation(current, now);
    state.set_condition(
        now,
        ConditionType::AbleToScale,
        true,
        ConditionReason::SucceededGetScale,
        "the HPA controller was able to get the target's current scale",
    );

    let mut notes = Notes::default();
    let mut desired = if current == 0 {
        state.set_condition(
            now,
            ConditionType::ScalingActive,
            false,
            ConditionReason::ScalingDisabled,
            "scaling is disabled since the replica count of the target is zero",
        );
        current
    } else if current > spec.max_replicas {
        notes.rescale_reason = Some("Current number of replicas above Spec.MaxReplicas".into());
        spec.max_replicas
    } else if current < spec.min_replicas {
        notes.rescale_reason = Some("Current number of replicas below Spec.MinReplicas".into());
        spec.min_replicas
    } else {
        state.metric_driven_replicas(&spec, observation, now, &mut notes)
    };

    if desired > current
        && let (Some(limit), Some(pressure)) =
            (spec.host_cpu_pressure_limit, observation.host_cpu_pressure)
        && pressure >= limit
    {
        state.set_condition(
            now,
            ConditionType::ScalingLimited,
            true,
            ConditionReason::HostCpuPressure,
            format!(
                "host CPU pressure (some avg10) is {pressure}%, at or above \
                 hostCpuPressureLimit {limit}%: not scaling up from {current} to {desired}"
            ),
        );
        desired = current;
    }

    if desired == current {
        notes.rescale_reason = None;
    } else {
        state.set_condition(
            now,
            ConditionType::AbleToScale,
            true,
            ConditionReason::SucceededRescale,
            format!("the HPA controller was able to update the target scale to {desired}"),
        );
        state.store_scale_event(spec.behavior.as_ref(), current, desired, now);
    }

    Ok(Decision {
        current_replicas: current,
        desired_replicas: desired,
        metrics: notes.metrics,
        conditions: state.conditions.clone(),
        rescale_reason: notes.rescale_reason,
        error: notes.error,
    })
}

/// Parts of the decision gathered along the way.
#[derive(Default)]
struct Notes {
    metrics: Vec<MetricStatus>,
    rescale_reason: Option<String>,
    error: Option<String>,
}

impl ScalingState {
    /// `computeReplicasForMetrics` followed by normalization; returns `current` when the metrics
    /// do not allow a decision.
    fn metric_driven_replicas(
        &mut self,
        spec: &Resolved<'_>,
        observation: &Observation,
        now: Timestamp,
        notes: &mut Notes,
    ) -> u32 {
        let current = observation.current_replicas;
        notes.metrics = spec
            .metrics
            .iter()
            .map(|metric| MetricStatus {
                metric: describe(metric),
                outcome: compute_metric(metric, spec, observation, now),
            })
            .collect();

        // Highest proposal wins; among equals the first listed names the cause.
        let mut proposed = 0;
        let mut cause = None;
        for status in &notes.metrics {
            if let Ok(p) = &status.outcome
                && (proposed == 0 || p.replicas > proposed)
            {
                proposed = p.replicas;
                cause = Some(status.metric.as_str());
            }
        }

        let total = notes.metrics.len();
        let mut failures = spec
            .metrics
            .iter()
            .zip(&notes.metrics)
            .filter_map(|(spec, status)| status.outcome.as_ref().err().map(|e| (spec, status, e)));
        if let Some((failed_spec, failed, err)) = failures.next() {
            let invalid = 1 + failures.count();
            let first = format!("failed to get {}: {err}", failed.metric);
            notes.error = Some(format!(
                "invalid metrics ({invalid} invalid out of {total}), first error is: {first}"
            ));
            // Scaling down on the metrics that still work could remove capacity the broken one
            // would have asked for (kubernetes#99394), so only a scale-up may proceed.
            if invalid >= total || proposed < current {
                self.set_condition(
                    now,
                    ConditionType::ScalingActive,
                    false,
                    failure_reason(failed_spec),
                    format!("the HPA was unable to compute the replica count: {first}"),
                );
                return current;
            }
        }
        let cause = cause.unwrap_or_default();
        self.set_condition(
            now,
            ConditionType::ScalingActive,
            true,
            ConditionReason::ValidMetricFound,
            format!("the HPA was able to successfully calculate a replica count from {cause}"),
        );
        if proposed > current {
            notes.rescale_reason = Some(format!("{cause} above target"));
        } else if proposed < current {
            notes.rescale_reason = Some("All metrics below target".into());
        }

        match &spec.behavior {
            None => self.normalize_legacy(spec, current, proposed, now),
            Some(behavior) => self.normalize_with_behavior(spec, behavior, current, proposed, now),
        }
    }

    /// `normalizeDesiredReplicas`: the path for specs without `behavior`.
    fn normalize_legacy(
        &mut self,
        spec: &Resolved<'_>,
        current: u32,
        proposed: u32,
        now: Timestamp,
    ) -> u32 {
        let stabilized = self.stabilize_legacy(proposed, now);
        if stabilized == proposed {
            self.set_condition(
                now,
                ConditionType::AbleToScale,
                true,
                ConditionReason::ReadyForNewScale,
                "recommended size matches current size",
            );
        } else {
            self.set_condition(
                now,
                ConditionType::AbleToScale,
                true,
                ConditionReason::ScaleDownStabilized,
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            );
        }
        let (desired, reason, message) =
            legacy_limits(current, stabilized, spec.min_replicas, spec.max_replicas);
        self.set_condition(
            now,
            ConditionType::ScalingLimited,
            desired != stabilized,
            reason,
            message,
        );
        desired
    }

    /// `stabilizeRecommendation`: the highest recommendation of the last 300 s, cutoff inclusive.
    fn stabilize_legacy(&mut self, proposed: u32, now: Timestamp) -> u32 {
        let mut highest = proposed;
        let mut old_slot = None;
        for (i, rec) in self.recommendations.iter().enumerate() {
            if is_before_cutoff(rec.at, now, DEFAULT_DOWNSCALE_STABILIZATION) {
                old_slot = Some(i);
            } else {
                highest = highest.max(rec.replicas);
            }
        }
        self.store_recommendation(old_slot, proposed, now);
        highest
    }

    /// `normalizeDesiredReplicasWithBehaviors`: stabilization windows, then rate policies.
    fn normalize_with_behavior(
        &mut self,
        spec: &Resolved<'_>,
        behavior: &ResolvedBehavior,
        current: u32,
        proposed: u32,
        now: Timestamp,
    ) -> u32 {
        let stabilized = self.stabilize_with_behavior(behavior, current, proposed, now);
        if stabilized == proposed {
            self.set_condition(
                now,
                ConditionType::AbleToScale,
                true,
                ConditionReason::ReadyForNewScale,
                "recommended size matches current size",
            );
        } else if proposed >= current {
            self.set_condition(
                now,
                ConditionType::AbleToScale,
                true,
                ConditionReason::ScaleUpStabilized,
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            );
        } else {
            self.set_condition(
                now,
                ConditionType::AbleToScale,
                true,
                ConditionReason::ScaleDownStabilized,
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            );
        }
        let (desired, reason, message) = self.rate_limits(spec, behavior, current, stabilized, now);
        self.set_condition(
            now,
            ConditionType::ScalingLimited,
            desired != stabilized,
            reason,
            message,
        );
        desired
    }

    /// `stabilizeRecommendationWithBehaviors`: move from `current` at least to the lowest
    /// recommendation of the scale-up window and at most to the highest of the scale-down window.
    /// Starting from `current` means stabilization can slow a move but never reverse it
    /// (kubernetes#96671, #98174).
    fn stabilize_with_behavior(
        &mut self,
        behavior: &ResolvedBehavior,
        current: u32,
        proposed: u32,
        now: Timestamp,
    ) -> u32 {
        let up_window = behavior.scale_up.window;
        let down_window = behavior.scale_down.window;
        let mut up_floor = proposed;
        let mut down_ceiling = proposed;
        let mut old_slot = None;
        for (i, rec) in self.recommendations.iter().enumerate() {
            if is_after_cutoff(rec.at, now, up_window) {
                up_floor = up_floor.min(rec.replicas);
            }
            if is_after_cutoff(rec.at, now, down_window) {
                down_ceiling = down_ceiling.max(rec.replicas);
            }
            if is_before_cutoff(rec.at, now, up_window)
                && is_before_cutoff(rec.at, now, down_window)
            {
                old_slot = Some(i);
            }
        }
        self.store_recommendation(old_slot, proposed, now);
        current.max(up_floor).min(down_ceiling)
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn rate_limits(
        &self,
        spec: &Resolved<'_>,
        behavior: &ResolvedBehavior,
        current: u32,
        desired: u32,
        now: Timestamp,
    ) -> (u32, ConditionReason, &'static str) {
        let current_i = i64::from(current);
        if desired > current {
            // Never below current: past events may have used up the budget, not reversed it.
            let limit = self
                .scale_up_limit(&behavior.scale_up, current_i, now)
                .max(current_i);
            let (allowed, reason, message) = if i64::from(spec.max_replicas) > limit {
                (
                    clamp_u32(limit),
                    ConditionReason::ScaleUpLimit,
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    spec.max_replicas,
                    ConditionReason::TooManyReplicas,
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if desired > allowed {
                return (allowed, reason, message);
            }
        } else if desired < current {
            let limit = self
                .scale_down_limit(&behavior.scale_down, current_i, now)
                .min(current_i);
            let (allowed, reason, message) = if i64::from(spec.min_replicas) < limit {
                (
                    clamp_u32(limit),
                    ConditionReason::ScaleDownLimit,
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    spec.min_replicas,
                    ConditionReason::TooFewReplicas,
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if desired < allowed {
                return (allowed, reason, message);
            }
        }
        (
            desired,
            ConditionReason::DesiredWithinRange,
            "the desired count is within the acceptable range",
        )
    }

    /// The replica count each policy started its period from: changes inside the period are
    /// undone, in both directions, so a period's budget is shared by all syncs within it.
    fn period_start(&self, current: i64, period: Duration, now: Timestamp) -> i64 {
        current - changes_within(&self.scale_up_events, period, now)
            + changes_within(&self.scale_down_events, period, now)
    }

    /// `calculateScaleUpLimitWithScalingRules`.
    fn scale_up_limit(&self, rules: &Rules, current: i64, now: Timestamp) -> i64 {
        let proposals = rules.policies.iter().map(|p| {
            let start = self.period_start(current, p.period, now);
            match p.kind {
                PolicyType::Pods => start.saturating_add(p.value),
                // Rounded up, or a small pool could never grow by a percentage.
                PolicyType::Percent => {
                    (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i64
                }
            }
        });
        match rules.select {
            SelectPolicy::Disabled => current,
            SelectPolicy::Max => proposals.fold(i64::MIN, i64::max),
            SelectPolicy::Min => proposals.fold(i64::MAX, i64::min),
        }
    }

    /// `calculateScaleDownLimitWithBehaviors`; a lower floor is a larger change, so `Max` picks
    /// the lowest proposal.
    fn scale_down_limit(&self, rules: &Rules, current: i64, now: Timestamp) -> i64 {
        let proposals = rules.policies.iter().map(|p| {
            let start = self.period_start(current, p.period, now);
            match p.kind {
                PolicyType::Pods => start.saturating_sub(p.value),
                // Truncated towards zero, as Go's int32 conversion does.
                PolicyType::Percent => (start as f64 * (1.0 - p.value as f64 / 100.0)) as i64,
            }
        });
        match rules.select {
            SelectPolicy::Disabled => current,
            SelectPolicy::Max => proposals.fold(i64::MAX, i64::min),
            SelectPolicy::Min => proposals.fold(i64::MIN, i64::max),
        }
    }

    /// Seeds the windows with the count found at first sight, so a daemon restart does not
    /// scale down before a full stabilization window has been observed.
    fn record_initial_recommendation(&mut self, current: u32, now: Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push(Recommendation {
                replicas: current,
                at: now,
            });
        }
    }

    /// Overwrites one expired slot, or grows: the history stays as long as the windows need.
    fn store_recommendation(&mut self, old_slot: Option<usize>, replicas: u32, now: Timestamp) {
        let rec = Recommendation { replicas, at: now };
        match old_slot.and_then(|i| self.recommendations.get_mut(i)) {
            Some(slot) => *slot = rec,
            None => self.recommendations.push(rec),
        }
    }

    /// `storeScaleEvent`: only the behavior path has rate policies to feed.
    fn store_scale_event(
        &mut self,
        behavior: Option<&ResolvedBehavior>,
        previous: u32,
        new: u32,
        now: Timestamp,
    ) {
        let Some(behavior) = behavior else {
            return;
        };
        let (events, longest, change) = if new > previous {
            (
                &mut self.scale_up_events,
                behavior.scale_up.longest_period(),
                new - previous,
            )
        } else {
            (
                &mut self.scale_down_events,
                behavior.scale_down.longest_period(),
                previous - new,
            )
        };
        for event in events.iter_mut() {
            if is_before_cutoff(event.at, now, longest) {
                event.outdated = true;
            }
        }
        let event = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter_mut().rev().find(|e| e.outdated) {
            Some(slot) => *slot = event,
            None => events.push(event),
        }
    }

    fn set_condition(
        &mut self,
        now: Timestamp,
        kind: ConditionType,
        status: bool,
        reason: ConditionReason,
        message: impl Into<String>,
    ) {
        let message = message.into();
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition = now;
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
            }
            None => self.conditions.push(Condition {
                kind,
                status,
                reason,
                message,
                last_transition: now,
            }),
        }
    }
}

/// `convertDesiredReplicasWithRules`: min/max plus the `max(2×current, 4)` cap that guards
/// against a bogus CPU report (kubernetes#32304) when no policies are configured.
fn legacy_limits(
    current: u32,
    desired: u32,
    min: u32,
    max: u32,
) -> (u32, ConditionReason, &'static str) {
    let scale_up_limit = clamp_u32(i64::from(current).saturating_mul(2).max(4));
    let (max_allowed, reason, message) = if max > scale_up_limit {
        (
            scale_up_limit,
            ConditionReason::ScaleUpLimit,
            "the desired replica count is increasing faster than the maximum scale rate",
        )
    } else {
        (
            max,
            ConditionReason::TooManyReplicas,
            "the desired replica count is more than the maximum replica count",
        )
    };
    if desired < min {
        (
            min,
            ConditionReason::TooFewReplicas,
            "the desired replica count is less than the minimum replica count",
        )
    } else if desired > max_allowed {
        (max_allowed, reason, message)
    } else {
        (
            desired,
            ConditionReason::DesiredWithinRange,
            "the desired count is within the acceptable range",
        )
    }
}

fn compute_metric(
    metric: &MetricSpec,
    spec: &Resolved<'_>,
    observation: &Observation,
    now: Timestamp,
) -> Result<MetricProposal, MetricError> {
    let current = observation.current_replicas;
    let tolerances = spec.tolerances;
    let workers = &observation.workers;
    match metric {
        MetricSpec::Resource { resource } => match &resource.target {
            ResourceTarget::Utilization {
                average_utilization,
            } => cpu_utilization_replicas(current, *average_utilization, tolerances, workers, now),
            ResourceTarget::AverageValue { average_value } => average_value_replicas(
                current,
                average_value.milli_value(),
                tolerances,
                workers,
                WorkerMetric::Cpu,
                now,
            ),
        },
        MetricSpec::Pods { pods } => {
            let AverageValueTarget::AverageValue { average_value } = &pods.target;
            average_value_replicas(
                current,
                average_value.milli_value(),
                tolerances,
                workers,
                WorkerMetric::Named(&pods.metric.name),
                now,
            )
        }
        MetricSpec::Object { object } => {
            let usage = pool_value(&observation.object_metrics, &object.metric.name)?;
            Ok(value_target(&object.target, usage, spec, observation))
        }
        MetricSpec::External { external } => {
            let usage = pool_value(&observation.external_metrics, &external.metric.name)?;
            Ok(value_target(&external.target, usage, spec, observation))
        }
    }
}

fn pool_value(
    values: &std::collections::BTreeMap<String, f64>,
    name: &str,
) -> Result<i64, MetricError> {
    values
        .get(name)
        .copied()
        .and_then(to_milli)
        .ok_or_else(|| MetricError::MissingValue(name.to_owned()))
}

fn value_target(
    target: &ValueTarget,
    usage_milli: i64,
    spec: &Resolved<'_>,
    observation: &Observation,
) -> MetricProposal {
    match target {
        ValueTarget::Value { value } => value_replicas(
            observation.current_replicas,
            observation.ready_replicas(),
            usage_milli,
            value.milli_value(),
            spec.tolerances,
        ),
        ValueTarget::AverageValue { average_value } => per_worker_value_replicas(
            observation.status_replicas(),
            usage_milli,
            average_value.milli_value(),
            spec.tolerances,
        ),
    }
}

/// Upstream's name for a metric in condition messages and events.
fn describe(metric: &MetricSpec) -> String {
    match metric {
        MetricSpec::Resource { resource } => match resource.target {
            ResourceTarget::Utilization { .. } => format!(
                "{} resource utilization (percentage of request)",
                resource.name.as_str()
            ),
            ResourceTarget::AverageValue { .. } => {
                format!("{} resource", resource.name.as_str())
            }
        },
        MetricSpec::Pods { pods } => format!("pods metric {}", pods.metric.name),
        MetricSpec::Object { object } => format!(
            "{} metric {}",
            object
                .described_object
                .as_ref()
                .map_or("Object", |o| o.kind.as_str()),
            object.metric.name
        ),
        MetricSpec::External { external } => format!("external metric {}", external.metric.name),
    }
}

fn failure_reason(metric: &MetricSpec) -> ConditionReason {
    match metric {
        MetricSpec::Resource { .. } => ConditionReason::FailedGetResourceMetric,
        MetricSpec::Pods { .. } => ConditionReason::FailedGetPodsMetric,
        MetricSpec::Object { .. } => ConditionReason::FailedGetObjectMetric,
        MetricSpec::External { .. } => ConditionReason::FailedGetExternalMetric,
    }
}

fn changes_within(events: &[ScaleEvent], period: Duration, now: Timestamp) -> i64 {
    events
        .iter()
        .filter(|e| is_after_cutoff(e.at, now, period))
        .map(|e| i64::from(e.change))
        .sum()
}

/// Go's `t.After(now.Add(-window))`; a cutoff before the epoch makes everything recent.
fn is_after_cutoff(t: Timestamp, now: Timestamp, window: Duration) -> bool {
    now.checked_sub(window).is_none_or(|cutoff| t > cutoff)
}

/// Go's `t.Before(now.Add(-window))`.
fn is_before_cutoff(t: Timestamp, now: Timestamp, window: Duration) -> bool {
    now.checked_sub(window).is_some_and(|cutoff| t < cutoff)
}

fn clamp_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::replica_calc::MetricValue;
    use crate::autoscaler::samples::{WorkerPhase, WorkerSample};
    use crate::autoscaler::testutil::*;

    use ConditionReason::*;
    use ConditionType::*;

    const CPU_50: &str = r#"metrics = [{ type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } }]"#;

    fn spec(toml_text: &str) -> HpaSpec {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("test spec should parse: {e}"))
    }

    /// A spec with a CPU target of 50 % and the given extra keys (top-level first, tables last).
    fn cpu_spec(extra: &str) -> HpaSpec {
        spec(&format!("maxReplicas = 10\n{CPU_50}\n{extra}"))
    }

    fn workers(levels: &[i64]) -> Vec<WorkerSample> {
        levels
            .iter()
            .enumerate()
            .map(|(i, &l)| cpu_worker(&format!("w{i}"), l, 1000))
            .collect()
    }

    fn observe(current: u32, levels: &[i64]) -> Observation {
        Observation {
            current_replicas: current,
            workers: workers(levels),
            ..Observation::default()
        }
    }

    fn run(spec: &HpaSpec, obs: &Observation, state: &mut ScalingState, at: u64) -> Decision {
        decide(spec, obs, state, NOW + secs(at))
            .unwrap_or_else(|e| panic!("decide should accept the spec: {e}"))
    }

    /// Decides with a fresh state at [`NOW`].
    fn once(spec: &HpaSpec, obs: &Observation) -> Decision {
        run(spec, obs, &mut ScalingState::new(), 0)
    }

    fn cond(d: &Decision, kind: ConditionType) -> (bool, ConditionReason) {
        d.condition(kind)
            .map(|c| (c.status, c.reason))
            .unwrap_or_else(|| panic!("no {kind} condition in {:?}", d.conditions))
    }

    fn message(d: &Decision, kind: ConditionType) -> &str {
        d.condition(kind).map_or("", |c| c.message.as_str())
    }

    fn proposals(d: &Decision) -> Vec<Option<u32>> {
        d.metrics
            .iter()
            .map(|m| m.outcome.as_ref().ok().map(|p| p.replicas))
            .collect()
    }

    // --- tolerance, direction, multiple metrics ---

    #[test]
    fn within_tolerance_nothing_changes() {
        let d = once(&cpu_spec(""), &observe(3, &[500, 520, 480]));
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(d.rescale_reason, None);
        assert_eq!(d.error, None);
        assert_eq!(cond(&d, AbleToScale), (true, ReadyForNewScale));
        assert_eq!(cond(&d, ScalingActive), (true, ValidMetricFound));
        assert_eq!(
            message(&d, ScalingActive),
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
        );
        assert_eq!(cond(&d, ScalingLimited), (false, DesiredWithinRange));
        assert_eq!(
            d.metrics[0].outcome,
            Ok(MetricProposal {
                replicas: 3,
                current: MetricValue::Utilization {
                    percent: 50,
                    average_value: 0.5
                }
            })
        );
    }

    #[test]
    fn scales_up_by_utilization() {
        // 83 % against 50 %: ceil(1.66 × 3) = 5, inside the legacy cap of 6.
        let d = once(&cpu_spec(""), &observe(3, &[800, 800, 900]));
        assert_eq!(d.desired_replicas, 5);
        assert_eq!(cond(&d, AbleToScale), (true, SucceededRescale));
        assert_eq!(
            message(&d, AbleToScale),
            "the HPA controller was able to update the target scale to 5"
        );
        assert_eq!(cond(&d, ScalingLimited), (false, DesiredWithinRange));
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("cpu resource utilization (percentage of request) above target")
        );
    }

    #[test]
    fn scales_down_by_utilization_once_the_window_has_passed() {
        let spec = cpu_spec("");
        let obs = observe(5, &[100, 300, 500, 250, 250]);
        let mut state = ScalingState::new();
        let held = run(&spec, &obs, &mut state, 0);
        assert_eq!(proposals(&held), [Some(3)]);
        assert_eq!(
            held.desired_replicas, 5,
            "the first sight of 5 holds for 300 s"
        );
        assert_eq!(cond(&held, AbleToScale), (true, ScaleDownStabilized));
        assert_eq!(run(&spec, &obs, &mut state, 300).desired_replicas, 5);
        let d = run(&spec, &obs, &mut state, 301);
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("All metrics below target")
        );
    }

    #[test]
    fn unready_workers_never_turn_a_scale_up_into_a_scale_down() {
        let mut obs = observe(3, &[600, 600, 600]);
        obs.workers[1].phase = WorkerPhase::Pending;
        obs.workers[2].phase = WorkerPhase::Pending;
        // The one ready worker is at 120 % of a 50 % target, yet ceil(1.2 × 1) = 2 would remove
        // one; counting the pending two as idle (20 %) flips the direction, so nothing changes.
        let d = once(&cpu_spec(""), &obs);
        assert_eq!(proposals(&d), [Some(3)]);
        assert_eq!(d.desired_replicas, 3);
    }

    #[test]
    fn the_highest_metric_wins() {
        let spec = spec(
            r#"
            maxReplicas = 10
            metrics = [
                { type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } },
                { type = "Pods", pods = { metric = { name = "queue" }, target = { type = "AverageValue", averageValue = 10 } } },
                { type = "Object", object = { metric = { name = "pool_pressure" }, target = { type = "Value", value = 20 } } },
            ]
        "#,
        );
        let mut obs = observe(4, &[500, 500, 500, 500]);
        for w in &mut obs.workers {
            w.metrics.insert(QUEUE.into(), 15.0);
        }
        obs.object_metrics.insert("pool_pressure".into(), 25.0);
        let d = once(&spec, &obs);
        assert_eq!(proposals(&d), [Some(4), Some(6), Some(5)]);
        assert_eq!(d.desired_replicas, 6);
        assert!(message(&d, ScalingActive).ends_with("from pods metric queue"));
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("pods metric queue above target")
        );
        assert_eq!(d.metrics[2].metric, "Object metric pool_pressure");
    }

    #[test]
    fn object_and_external_metrics_use_ready_and_live_worker_counts() {
        let spec = spec(
            r#"
            maxReplicas = 10
            [[metrics]]
            type = "Object"
            object = { describedObject = { kind = "Pool", name = "edge" }, metric = { name = "pool_pressure" }, target = { type = "Value", value = 20 } }
            [[metrics]]
            type = "External"
            external = { metric = { name = "drop_rate" }, target = { type = "AverageValue", averageValue = 2 } }
        "#,
        );
        let mut obs = observe(4, &[500, 500, 500, 500]);
        obs.workers[3].phase = WorkerPhase::Pending;
        obs.object_metrics.insert("pool_pressure".into(), 30.0);
        obs.external_metrics.insert("drop_rate".into(), 13.0);
        let d = once(&spec, &obs);
        // Object: 1.5 × 3 ready = 5. External: 13 / 2 per worker = 7 (4 live workers: outside tolerance).
        assert_eq!(proposals(&d), [Some(5), Some(7)]);
        assert_eq!(d.desired_replicas, 7);
        assert_eq!(d.metrics[0].metric, "Pool metric pool_pressure");
        assert_eq!(d.metrics[1].metric, "external metric drop_rate");
        assert_eq!(
            d.metrics[1].outcome.as_ref().map(|p| p.current),
            Ok(MetricValue::AverageValue(3.25))
        );
    }

    // --- metric failures ---

    #[test]
    fn all_metrics_failing_changes_nothing() {
        let mut obs = observe(3, &[0, 0, 0]);
        obs.workers.iter_mut().for_each(|w| w.cpu = None);
        let mut state = ScalingState::new();
        let d = run(&cpu_spec(""), &obs, &mut state, 0);
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(d.metrics[0].outcome, Err(MetricError::NoMetrics));
        assert_eq!(cond(&d, ScalingActive), (false, FailedGetResourceMetric));
        assert_eq!(
            message(&d, ScalingActive),
            "the HPA was unable to compute the replica count: failed to get cpu resource \
             utilization (percentage of request): did not receive metrics for targeted workers \
             (workers might be unready)"
        );
        assert!(
            d.error
                .as_deref()
                .is_some_and(|e| e.starts_with("invalid metrics (1 invalid out of 1)"))
        );
        assert!(d.condition(ScalingLimited).is_none());
        assert_eq!(
            state.recommendations.len(),
            1,
            "a failed sync records no recommendation"
        );
    }

    fn cpu_and_object_spec() -> HpaSpec {
        spec(
            r#"
            maxReplicas = 10
            metrics = [
                { type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 50 } } },
                { type = "Object", object = { metric = { name = "pool_pressure" }, target = { type = "Value", value = 20 } } },
            ]
            behavior.scaleDown.stabilizationWindowSeconds = 0
        "#,
        )
    }

    #[test]
    fn a_failing_metric_blocks_scale_down() {
        let spec = cpu_and_object_spec();
        let mut obs = observe(5, &[100, 300, 500, 250, 250]);
        let d = once(&spec, &obs);
        assert_eq!(proposals(&d), [Some(3), None]);
        assert_eq!(d.desired_replicas, 5);
        assert_eq!(cond(&d, ScalingActive), (false, FailedGetObjectMetric));
        obs.object_metrics.insert("pool_pressure".into(), 1.0);
        assert_eq!(
            once(&spec, &obs).desired_replicas,
            3,
            "with the value it scales down"
        );
    }

    #[test]
    fn a_failing_metric_does_not_block_scale_up() {
        let spec = cpu_and_object_spec();
        let d = once(&spec, &observe(3, &[900, 900, 900]));
        assert_eq!(proposals(&d), [Some(6), None]);
        assert_eq!(d.desired_replicas, 6);
        assert_eq!(cond(&d, ScalingActive), (true, ValidMetricFound));
        assert!(d.error.as_deref().is_some_and(|e| e.contains(
            "(1 invalid out of 2), first error is: failed to get Object metric pool_pressure: no value for metric pool_pressure"
        )));
    }

    // --- shortcuts before the metrics ---

    #[test]
    fn zero_replicas_disable_scaling() {
        let d = once(&cpu_spec(""), &observe(0, &[]));
        assert_eq!(d.desired_replicas, 0);
        assert!(d.metrics.is_empty());
        assert_eq!(cond(&d, ScalingActive), (false, ScalingDisabled));
        assert_eq!(cond(&d, AbleToScale), (true, SucceededGetScale));
    }

    #[test]
    fn counts_outside_min_max_are_corrected_without_metrics() {
        let d = once(&cpu_spec(""), &observe(12, &[]));
        assert_eq!(d.desired_replicas, 10);
        assert!(d.metrics.is_empty());
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("Current number of replicas above Spec.MaxReplicas")
        );
        assert_eq!(cond(&d, AbleToScale), (true, SucceededRescale));
        let d = once(&cpu_spec("minReplicas = 2"), &observe(1, &[]));
        assert_eq!(d.desired_replicas, 2);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("Current number of replicas below Spec.MinReplicas")
        );
    }

    // --- min/max clamps and the legacy cap ---

    #[test]
    fn legacy_path_caps_scale_up_at_twice_current_or_four() {
        let d = once(&cpu_spec(""), &observe(1, &[5000]));
        assert_eq!(proposals(&d), [Some(10)]);
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleUpLimit));
        assert_eq!(
            once(&cpu_spec(""), &observe(3, &[5000, 5000, 5000])).desired_replicas,
            6
        );
        let d = once(&cpu_spec(""), &observe(5, &[1000; 5]));
        assert_eq!(d.desired_replicas, 10, "cap 10, max 10");
        let mut state = ScalingState::new();
        run(&cpu_spec(""), &observe(5, &[1000; 5]), &mut state, 0);
        assert!(state.scale_up_events.is_empty(), "legacy keeps no events");
    }

    #[test]
    fn clamps_report_too_many_and_too_few_replicas() {
        let legacy_max = spec(&format!("maxReplicas = 8\n{CPU_50}"));
        let d = once(&legacy_max, &observe(5, &[1000; 5]));
        assert_eq!(d.desired_replicas, 8);
        assert_eq!(cond(&d, ScalingLimited), (true, TooManyReplicas));
        assert_eq!(
            message(&d, ScalingLimited),
            "the desired replica count is more than the maximum replica count"
        );

        let legacy_min = cpu_spec("minReplicas = 2");
        let mut state = ScalingState::new();
        let obs = observe(3, &[100, 100, 100]);
        run(&legacy_min, &obs, &mut state, 0);
        let d = run(&legacy_min, &obs, &mut state, 301);
        assert_eq!(d.desired_replicas, 2);
        assert_eq!(cond(&d, ScalingLimited), (true, TooFewReplicas));

        let behavior_min =
            cpu_spec("minReplicas = 2\nbehavior.scaleDown.stabilizationWindowSeconds = 0");
        let d = once(&behavior_min, &obs);
        assert_eq!(d.desired_replicas, 2);
        assert_eq!(cond(&d, ScalingLimited), (true, TooFewReplicas));

        let behavior_max = spec(&format!("maxReplicas = 5\n{CPU_50}\nbehavior = {{}}"));
        let d = once(&behavior_max, &observe(4, &[1250; 4]));
        assert_eq!(proposals(&d), [Some(10)]);
        assert_eq!(d.desired_replicas, 5);
        assert_eq!(cond(&d, ScalingLimited), (true, TooManyReplicas));
    }

    // --- stabilization windows ---

    #[test]
    fn scale_down_window_holds_the_highest_recommendation() {
        let spec = cpu_spec("behavior.scaleDown.stabilizationWindowSeconds = 60");
        let mut state = ScalingState::new();
        let step = |state: &mut ScalingState, at, current, levels: &[i64]| {
            run(&spec, &observe(current, levels), state, at)
        };
        assert_eq!(step(&mut state, 0, 4, &[500; 4]).desired_replicas, 4);
        let d = step(&mut state, 10, 4, &[250; 4]);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(2), 4));
        assert_eq!(cond(&d, AbleToScale), (true, ScaleDownStabilized));
        assert_eq!(
            message(&d, AbleToScale),
            "recent recommendations were higher than current one, applying the highest recent recommendation"
        );
        let d = step(&mut state, 30, 4, &[375; 4]);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(3), 4));
        // The 4s of t=0 have left the window; 3 (t=30) is now the highest.
        let d = step(&mut state, 61, 4, &[250; 4]);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(2), 3));
        let d = step(&mut state, 91, 3, &[333; 3]);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(2), 2));
    }

    #[test]
    fn first_sight_seeds_the_window() {
        let d = once(&cpu_spec("behavior = {}"), &observe(5, &[100; 5]));
        assert_eq!(proposals(&d), [Some(1)]);
        assert_eq!(d.desired_replicas, 5);
        assert_eq!(cond(&d, AbleToScale), (true, ScaleDownStabilized));
    }

    #[test]
    fn scale_up_window_holds_the_lowest_recommendation() {
        let spec = cpu_spec("behavior.scaleUp.stabilizationWindowSeconds = 60");
        let mut state = ScalingState::new();
        assert_eq!(
            run(&spec, &observe(2, &[500; 2]), &mut state, 0).desired_replicas,
            2
        );
        let d = run(&spec, &observe(2, &[1500; 2]), &mut state, 10);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(6), 2));
        assert_eq!(cond(&d, AbleToScale), (true, ScaleUpStabilized));
        let d = run(&spec, &observe(2, &[1500; 2]), &mut state, 61);
        assert_eq!(d.desired_replicas, 6);
    }

    #[test]
    fn stabilization_never_moves_against_the_recommendation() {
        let spec = cpu_spec("behavior = {}");
        let mut state = ScalingState::new();
        run(&spec, &observe(5, &[500; 5]), &mut state, 0);
        // The count went to 3 (e.g. a reload); the window still remembers 5, but a recommendation
        // of 1 must never raise the count (kubernetes#98174).
        let d = run(&spec, &observe(3, &[100; 3]), &mut state, 10);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(1), 3));
    }

    // --- rate policies ---

    fn scale_up_spec(policies: &str, select: &str) -> HpaSpec {
        spec(&format!(
            "maxReplicas = 100\n{CPU_50}\n[behavior.scaleUp]\nselectPolicy = \"{select}\"\npolicies = [{policies}]"
        ))
    }

    #[test]
    fn pods_policy_limits_the_rate_across_decisions() {
        let spec = scale_up_spec(r#"{ type = "Pods", value = 2, periodSeconds = 60 }"#, "Max");
        let mut state = ScalingState::new();
        let d = run(&spec, &observe(2, &[5000; 2]), &mut state, 0);
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(20), 4));
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleUpLimit));
        assert_eq!(
            message(&d, ScalingLimited),
            "the desired replica count is increasing faster than the maximum scale rate"
        );
        let d = run(&spec, &observe(4, &[5000; 4]), &mut state, 15);
        assert_eq!(d.desired_replicas, 4, "the period's budget of 2 is spent");
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleUpLimit));
        let d = run(&spec, &observe(4, &[5000; 4]), &mut state, 61);
        assert_eq!(d.desired_replicas, 6);
    }

    #[test]
    fn percent_policy_limits_the_rate_across_decisions() {
        let spec = scale_up_spec(
            r#"{ type = "Percent", value = 100, periodSeconds = 60 }"#,
            "Max",
        );
        let mut state = ScalingState::new();
        assert_eq!(
            run(&spec, &observe(2, &[5000; 2]), &mut state, 0).desired_replicas,
            4
        );
        assert_eq!(
            run(&spec, &observe(4, &[5000; 4]), &mut state, 30).desired_replicas,
            4
        );
        assert_eq!(
            run(&spec, &observe(4, &[5000; 4]), &mut state, 61).desired_replicas,
            8
        );
    }

    #[test]
    fn select_policy_max_min_and_disabled() {
        let both = r#"{ type = "Pods", value = 4, periodSeconds = 60 }, { type = "Percent", value = 100, periodSeconds = 60 }"#;
        let obs = observe(10, &[2500; 10]);
        let max = once(&scale_up_spec(both, "Max"), &obs);
        assert_eq!((proposals(&max)[0], max.desired_replicas), (Some(50), 20));
        let min = once(&scale_up_spec(both, "Min"), &obs);
        assert_eq!(min.desired_replicas, 14);
        let disabled = once(&scale_up_spec(both, "Disabled"), &obs);
        assert_eq!(disabled.desired_replicas, 10);
        assert_eq!(cond(&disabled, ScalingLimited), (true, ScaleUpLimit));

        let down_disabled = cpu_spec(
            "[behavior.scaleDown]\nstabilizationWindowSeconds = 0\nselectPolicy = \"Disabled\"",
        );
        let d = once(&down_disabled, &observe(5, &[100; 5]));
        assert_eq!((proposals(&d)[0], d.desired_replicas), (Some(1), 5));
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleDownLimit));
    }

    fn scale_down_spec(policies: &str, select: &str) -> HpaSpec {
        cpu_spec(&format!(
            "[behavior.scaleDown]\nstabilizationWindowSeconds = 0\nselectPolicy = \"{select}\"\npolicies = [{policies}]"
        ))
    }

    #[test]
    fn scale_down_percent_truncates() {
        let spec = scale_down_spec(
            r#"{ type = "Percent", value = 50, periodSeconds = 15 }"#,
            "Max",
        );
        // 5 × 50 % = 2.5, truncated to 2: three workers go in one step.
        let d = once(&spec, &observe(5, &[100; 5]));
        assert_eq!(d.desired_replicas, 2);
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleDownLimit));
        assert_eq!(
            message(&d, ScalingLimited),
            "the desired replica count is decreasing faster than the maximum scale rate"
        );
    }

    #[test]
    fn scale_down_policies_select_and_rate() {
        let both = r#"{ type = "Pods", value = 1, periodSeconds = 60 }, { type = "Percent", value = 50, periodSeconds = 60 }"#;
        let obs = |n: usize| observe(n as u32, &vec![50; n]);
        assert_eq!(
            once(&scale_down_spec(both, "Max"), &obs(10)).desired_replicas,
            5
        );
        let spec = scale_down_spec(both, "Min");
        let mut state = ScalingState::new();
        assert_eq!(run(&spec, &obs(10), &mut state, 0).desired_replicas, 9);
        let d = run(&spec, &obs(9), &mut state, 15);
        assert_eq!(d.desired_replicas, 9, "one worker per minute");
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleDownLimit));
        assert_eq!(run(&spec, &obs(9), &mut state, 61).desired_replicas, 8);
    }

    #[test]
    fn a_period_starts_from_the_count_before_changes_in_both_directions() {
        let spec = spec(&format!(
            r#"
            maxReplicas = 20
            {CPU_50}
            [behavior.scaleUp]
            policies = [{{ type = "Pods", value = 2, periodSeconds = 60 }}]
            [behavior.scaleDown]
            stabilizationWindowSeconds = 0
            policies = [{{ type = "Pods", value = 10, periodSeconds = 60 }}]
        "#
        ));
        let mut state = ScalingState::new();
        assert_eq!(
            run(&spec, &observe(2, &[5000; 2]), &mut state, 0).desired_replicas,
            4
        );
        assert_eq!(
            run(&spec, &observe(4, &[50; 4]), &mut state, 10).desired_replicas,
            1
        );
        // Start of period: 1 − 2 (added) + 3 (removed) = 2, so up to 4 is allowed.
        assert_eq!(
            run(&spec, &observe(1, &[5000]), &mut state, 20).desired_replicas,
            4
        );
    }

    #[test]
    fn scale_event_slots_are_reused() {
        let spec = scale_up_spec(r#"{ type = "Pods", value = 1, periodSeconds = 15 }"#, "Max");
        let mut state = ScalingState::new();
        for i in 0..10u32 {
            let d = run(
                &spec,
                &observe(1 + i, &vec![5000; 1 + i as usize]),
                &mut state,
                u64::from(i) * 20,
            );
            assert_eq!(d.desired_replicas, 2 + i);
        }
        assert_eq!(state.scale_up_events.len(), 1);
        assert!(state.scale_down_events.is_empty());
    }

    // --- helmetd's host pressure guard ---

    #[test]
    fn host_pressure_refuses_scale_up() {
        let spec = cpu_spec("hostCpuPressureLimit = 50.0\nbehavior = {}");
        let mut obs = observe(3, &[800, 800, 900]);
        for (pressure, expected) in [(Some(60.0), 3), (Some(50.0), 3), (Some(49.9), 5), (None, 5)] {
            obs.host_cpu_pressure = pressure;
            let mut state = ScalingState::new();
            let d = run(&spec, &obs, &mut state, 0);
            assert_eq!(d.desired_replicas, expected, "pressure {pressure:?}");
            if expected == 3 {
                assert_eq!(cond(&d, ScalingLimited), (true, HostCpuPressure));
                assert!(message(&d, ScalingLimited).contains("not scaling up from 3 to 5"));
                assert_eq!(d.rescale_reason, None);
                assert!(state.scale_up_events.is_empty());
            }
        }
    }

    #[test]
    fn host_pressure_does_not_block_scale_down() {
        let spec = cpu_spec(
            "hostCpuPressureLimit = 50.0\nbehavior.scaleDown.stabilizationWindowSeconds = 0",
        );
        let mut obs = observe(5, &[100, 300, 500, 250, 250]);
        obs.host_cpu_pressure = Some(90.0);
        assert_eq!(once(&spec, &obs).desired_replicas, 3);
    }

    #[test]
    fn host_pressure_also_holds_the_min_replicas_correction() {
        let spec = cpu_spec("minReplicas = 2\nhostCpuPressureLimit = 50.0");
        let mut obs = observe(1, &[]);
        obs.host_cpu_pressure = Some(80.0);
        let d = once(&spec, &obs);
        assert_eq!(d.desired_replicas, 1);
        assert_eq!(cond(&d, ScalingLimited), (true, HostCpuPressure));
    }

    // --- conditions, errors, robustness ---

    #[test]
    fn condition_transition_time_moves_only_with_status() {
        let spec = cpu_spec("");
        let mut state = ScalingState::new();
        run(&spec, &observe(3, &[500; 3]), &mut state, 0);
        let d = run(&spec, &observe(3, &[5000; 3]), &mut state, 10);
        assert_eq!(cond(&d, ScalingLimited), (true, ScaleUpLimit));
        let d = run(&spec, &observe(6, &[5000; 6]), &mut state, 20);
        assert_eq!(cond(&d, ScalingLimited), (true, TooManyReplicas));
        let limited = d.condition(ScalingLimited).map(|c| c.last_transition);
        assert_eq!(limited, Some(NOW + secs(10)));
        let active = d.condition(ScalingActive).map(|c| c.last_transition);
        assert_eq!(active, Some(NOW));
        assert_eq!(state.conditions(), d.conditions.as_slice());
    }

    #[test]
    fn invalid_spec_is_refused_before_touching_state() {
        let mut state = ScalingState::new();
        let bad = spec("maxReplicas = 0");
        assert_eq!(
            decide(&bad, &observe(1, &[500]), &mut state, NOW),
            Err(SpecError::MaxReplicas(0))
        );
        assert!(state.conditions().is_empty());
        assert!(state.recommendations.is_empty());
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let specs = [
            spec(&format!("maxReplicas = 2147483647\n{CPU_50}")),
            spec(&format!(
                "maxReplicas = 2147483647\n{CPU_50}\nhostCpuPressureLimit = 1.0\n[behavior.scaleUp]\npolicies = [{{ type = \"Percent\", value = 2147483647, periodSeconds = 1800 }}]\n[behavior.scaleDown]\nstabilizationWindowSeconds = 0\npolicies = [{{ type = \"Percent\", value = 2147483647, periodSeconds = 1 }}]"
            )),
            spec(
                r#"
                maxReplicas = 2147483647
                metrics = [
                    { type = "Pods", pods = { metric = { name = "queue" }, target = { type = "AverageValue", averageValue = "1n" } } },
                    { type = "Object", object = { metric = { name = "o" }, target = { type = "Value", value = "1n" } } },
                    { type = "External", external = { metric = { name = "e" }, target = { type = "AverageValue", averageValue = "9P" } } },
                ]
            "#,
            ),
        ];
        let odd = [f64::NAN, f64::INFINITY, -1e300, 1e300, -0.0, 1e-300];
        let mut observations = Vec::new();
        for (i, &x) in odd.iter().enumerate() {
            for current in [0, 1, 3, 2_000_000_000, u32::MAX] {
                let mut w = cpu_worker("w", 0, 1000);
                if let Some(s) = w.cpu.as_mut() {
                    s.usage = x;
                    s.window = Duration::MAX;
                }
                w.cpu_request = Some(odd[(i + 1) % odd.len()]);
                w.metrics.insert(QUEUE.into(), x);
                w.started_at = Some(Duration::MAX);
                let mut plain = cpu_worker("v", 700, 1000);
                plain.metrics.insert(QUEUE.into(), 1e12);
                observations.push(Observation {
                    current_replicas: current,
                    workers: vec![w, plain],
                    object_metrics: [("o".to_owned(), x)].into(),
                    external_metrics: [("e".to_owned(), -x)].into(),
                    host_cpu_pressure: Some(x),
                });
            }
        }
        for spec in &specs {
            let mut state = ScalingState::new();
            for (n, obs) in observations.iter().enumerate() {
                // Time jumps around, including backwards and to the end of representable time.
                let at = [NOW, Duration::ZERO, Duration::MAX, NOW + secs(n as u64)][n % 4];
                let d = decide(spec, obs, &mut state, at)
                    .unwrap_or_else(|e| panic!("spec is valid: {e}"));
                assert!(
                    d.desired_replicas == d.current_replicas || d.desired_replicas <= 2_147_483_647
                );
            }
        }
    }
}
