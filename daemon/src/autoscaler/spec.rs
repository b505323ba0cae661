//! The part of autoscaling/v2 `HorizontalPodAutoscalerSpec` that applies to local worker
//! processes, with Kubernetes' key spelling so that the `hpa:` block of a Sedna
//! JointInferenceService, converted to TOML, pastes unchanged.
//!
//! Integers that are `int32` in Kubernetes stay `i32` here so that a negative value reaches
//! [`HpaSpec::validate`] and is reported against its field, as the API server would, instead of
//! failing as an anonymous type error.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;

use super::quantity::Quantity;
use super::replica_calc::Tolerances;

/// Tolerance of the usage ratio when the spec does not set one (`--horizontal-pod-autoscaler-tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// Scale-down stabilization of the legacy path, and of `behavior.scaleDown` when it leaves the
/// window unset (`--horizontal-pod-autoscaler-downscale-stabilization`).
pub const DEFAULT_DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);
/// The metric Kubernetes puts in an HPA that lists none.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;
/// Upper bound of `periodSeconds` in Kubernetes validation.
pub const MAX_PERIOD_SECONDS: i32 = 1800;
/// Upper bound of `stabilizationWindowSeconds` in Kubernetes validation.
pub const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;

/// Autoscaling spec: Kubernetes' `HorizontalPodAutoscalerSpec` without `scaleTargetRef` (the
/// target is always this daemon's worker pool), plus two helmetd keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaSpec {
    #[serde(default = "default_min_replicas")]
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Empty means Kubernetes' default: CPU at 80 % of request.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// Absent selects the legacy rules (scale-up cap `max(2×current, 4)`, 300 s scale-down
    /// stabilization); present, each missing field takes the Kubernetes default.
    #[serde(default)]
    pub behavior: Option<HpaBehavior>,
    /// helmetd: seconds between decisions. Kubernetes uses 15 s because metrics-server refreshes
    /// that slowly; the daemon samples cgroups itself and can react within a second.
    #[serde(default = "default_sync_period_seconds")]
    pub sync_period_seconds: u32,
    /// helmetd: host `cpu.pressure` "some avg10" in percent at or above which no scale-up happens,
    /// because another worker on a CPU-starved host adds contention, not capacity.
    #[serde(default)]
    pub host_cpu_pressure_limit: Option<f64>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_sync_period_seconds() -> u32 {
    1
}

/// One metric, tagged by `type` with the source under the lower-case key, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum MetricSpec {
    Resource { resource: ResourceMetricSource },
    Pods { pods: PodsMetricSource },
    Object { object: ObjectMetricSource },
    External { external: ExternalMetricSource },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMetricSource {
    pub name: ResourceName,
    pub target: ResourceTarget,
}

/// Only CPU: memory of an inference worker is its model, it does not track load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ResourceName {
    #[serde(rename = "cpu")]
    Cpu,
}

impl ResourceName {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceName::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ResourceTarget {
    /// Percent of each worker's CPU request.
    Utilization {
        #[serde(rename = "averageUtilization")]
        average_utilization: i32,
    },
    /// Cores per worker, as a quantity ("500m").
    AverageValue {
        #[serde(rename = "averageValue")]
        average_value: Quantity,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsMetricSource {
    pub metric: MetricIdentifier,
    pub target: AverageValueTarget,
}

/// Kubernetes allows only `AverageValue` for `Pods` metrics; an enum makes anything else a parse
/// error that lists the allowed type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AverageValueTarget {
    AverageValue {
        #[serde(rename = "averageValue")]
        average_value: Quantity,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMetricSource {
    /// Accepted so a Kubernetes block pastes; only its `kind` is used, in messages. The value is
    /// looked up by metric name.
    #[serde(default)]
    pub described_object: Option<ObjectReference>,
    pub metric: MetricIdentifier,
    pub target: ValueTarget,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalMetricSource {
    pub metric: MetricIdentifier,
    pub target: ValueTarget,
}

/// Metric selectors are not accepted: helmetd has one series per name, and silently ignoring a
/// selector would change what the user asked to scale on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricIdentifier {
    pub name: String,
}

/// Target of an `Object` or `External` metric: the whole value, or the value per worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ValueTarget {
    Value {
        value: Quantity,
    },
    AverageValue {
        #[serde(rename = "averageValue")]
        average_value: Quantity,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaBehavior {
    #[serde(default)]
    pub scale_up: Option<HpaScalingRules>,
    #[serde(default)]
    pub scale_down: Option<HpaScalingRules>,
}

/// Every field optional: Kubernetes defaults them one by one (`copyHPAScalingRules`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaScalingRules {
    #[serde(default)]
    pub stabilization_window_seconds: Option<i32>,
    #[serde(default)]
    pub select_policy: Option<SelectPolicy>,
    #[serde(default)]
    pub policies: Option<Vec<HpaScalingPolicy>>,
    #[serde(default)]
    pub tolerance: Option<Quantity>,
}

/// Which policy wins when several allow different changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaScalingPolicy {
    #[serde(rename = "type")]
    pub kind: PolicyType,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PolicyType {
    /// An absolute number of workers per period.
    Pods,
    /// A percentage of the worker count at the start of the period.
    Percent,
}

/// A spec rejected by [`HpaSpec::validate`]; each variant names the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("maxReplicas: must be at least 1, got {0}")]
    MaxReplicas(i32),
    #[error("minReplicas: must be at least 1, got {0}")]
    MinReplicas(i32),
    #[error("minReplicas: must not be greater than maxReplicas ({max}), got {min}")]
    MinAboveMax { min: i32, max: i32 },
    #[error("syncPeriodSeconds: must be at least 1, got 0")]
    SyncPeriod,
    #[error("hostCpuPressureLimit: must be a percentage in (0, 100], got {0}")]
    HostCpuPressureLimit(f64),
    #[error("{field}: must be greater than zero, got {value}")]
    TargetNotPositive { field: String, value: String },
    #[error("{field}: must not be empty")]
    EmptyMetricName { field: String },
    #[error("{field}: must specify at least one policy")]
    NoPolicies { field: String },
    #[error("{field}: must be greater than zero, got {value}")]
    PolicyValue { field: String, value: i32 },
    #[error("{field}: must be in 1..={MAX_PERIOD_SECONDS}, got {value}")]
    PeriodSeconds { field: String, value: i32 },
    #[error("{field}: must be in 0..={MAX_STABILIZATION_WINDOW_SECONDS}, got {value}")]
    StabilizationWindow { field: String, value: i32 },
    #[error("{field}: must not be negative, got {value}")]
    NegativeTolerance { field: String, value: String },
}

impl SpecError {
    /// The key path of the offending value, e.g. `behavior.scaleUp.policies[0].periodSeconds`, so a
    /// config loader can point at the TOML key.
    pub fn field(&self) -> String {
        match self {
            SpecError::MaxReplicas(_) => "maxReplicas".to_owned(),
            SpecError::MinReplicas(_) | SpecError::MinAboveMax { .. } => "minReplicas".to_owned(),
            SpecError::SyncPeriod => "syncPeriodSeconds".to_owned(),
            SpecError::HostCpuPressureLimit(_) => "hostCpuPressureLimit".to_owned(),
            SpecError::TargetNotPositive { field, .. }
            | SpecError::EmptyMetricName { field }
            | SpecError::NoPolicies { field }
            | SpecError::PolicyValue { field, .. }
            | SpecError::PeriodSeconds { field, .. }
            | SpecError::StabilizationWindow { field, .. }
            | SpecError::NegativeTolerance { field, .. } => field.clone(),
        }
    }
}

/// A validated spec with every default applied, in the types the algorithm computes with.
#[derive(Debug, Clone)]
pub(crate) struct Resolved<'a> {
    pub(crate) min_replicas: u32,
    pub(crate) max_replicas: u32,
    pub(crate) metrics: Cow<'a, [MetricSpec]>,
    /// `None` is the legacy path, which Kubernetes keeps for HPAs without `behavior`.
    pub(crate) behavior: Option<ResolvedBehavior>,
    pub(crate) tolerances: Tolerances,
    pub(crate) host_cpu_pressure_limit: Option<f64>,
}

#[derive(Debug, Clone)]
pub(crate) struct ResolvedBehavior {
    pub(crate) scale_up: Rules,
    pub(crate) scale_down: Rules,
}

#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) select: SelectPolicy,
    pub(crate) window: Duration,
    pub(crate) policies: Vec<Policy>,
}

impl Rules {
    /// Scale events older than this can no longer affect any policy of this direction.
    pub(crate) fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) kind: PolicyType,
    pub(crate) value: i64,
    pub(crate) period: Duration,
}

impl HpaSpec {
    /// Checks what the Kubernetes API server checks for these fields (plus the helmetd keys).
    pub fn validate(&self) -> Result<(), SpecError> {
        self.resolve().map(|_| ())
    }

    /// How often the daemon should call [`decide`](super::decide).
    pub fn sync_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.sync_period_seconds))
    }

    pub(crate) fn resolve(&self) -> Result<Resolved<'_>, SpecError> {
        let max_replicas = u32::try_from(self.max_replicas)
            .ok()
            .filter(|&m| m >= 1)
            .ok_or(SpecError::MaxReplicas(self.max_replicas))?;
        let min_replicas = u32::try_from(self.min_replicas)
            .ok()
            .filter(|&m| m >= 1)
            .ok_or(SpecError::MinReplicas(self.min_replicas))?;
        if min_replicas > max_replicas {
            return Err(SpecError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if self.sync_period_seconds == 0 {
            return Err(SpecError::SyncPeriod);
        }
        if let Some(limit) = self.host_cpu_pressure_limit
            && !(limit > 0.0 && limit <= 100.0)
        {
            return Err(SpecError::HostCpuPressureLimit(limit));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            validate_metric(metric, &format!("metrics[{i}]"))?;
        }
        let metrics = if self.metrics.is_empty() {
            Cow::Owned(vec![MetricSpec::Resource {
                resource: ResourceMetricSource {
                    name: ResourceName::Cpu,
                    target: ResourceTarget::Utilization {
                        average_utilization: DEFAULT_CPU_UTILIZATION,
                    },
                },
            }])
        } else {
            Cow::Borrowed(self.metrics.as_slice())
        };

        let mut tolerances = Tolerances {
            scale_down: DEFAULT_TOLERANCE,
            scale_up: DEFAULT_TOLERANCE,
        };
        let behavior = match &self.behavior {
            None => None,
            Some(b) => {
                let up = b.scale_up.as_ref();
                let down = b.scale_down.as_ref();
                if let Some(t) = tolerance(up, "behavior.scaleUp.tolerance")? {
                    tolerances.scale_up = t;
                }
                if let Some(t) = tolerance(down, "behavior.scaleDown.tolerance")? {
                    tolerances.scale_down = t;
                }
                Some(ResolvedBehavior {
                    scale_up: resolve_rules(
                        up,
                        "behavior.scaleUp",
                        Duration::ZERO,
                        &[(PolicyType::Pods, 4, 15), (PolicyType::Percent, 100, 15)],
                    )?,
                    scale_down: resolve_rules(
                        down,
                        "behavior.scaleDown",
                        DEFAULT_DOWNSCALE_STABILIZATION,
                        &[(PolicyType::Percent, 100, 15)],
                    )?,
                })
            }
        };

        Ok(Resolved {
            min_replicas,
            max_replicas,
            metrics,
            behavior,
            tolerances,
            host_cpu_pressure_limit: self.host_cpu_pressure_limit,
        })
    }
}

fn validate_metric(metric: &MetricSpec, path: &str) -> Result<(), SpecError> {
    let positive = |q: &Quantity, field: String| {
        if q.milli_value() > 0 {
            Ok(())
        } else {
            Err(SpecError::TargetNotPositive {
                field,
                value: q.to_string(),
            })
        }
    };
    let named = |id: &MetricIdentifier, field: String| {
        if id.name.is_empty() {
            Err(SpecError::EmptyMetricName { field })
        } else {
            Ok(())
        }
    };
    match metric {
        MetricSpec::Resource { resource } => match &resource.target {
            ResourceTarget::Utilization {
                average_utilization,
            } => {
                if *average_utilization > 0 {
                    Ok(())
                } else {
                    Err(SpecError::TargetNotPositive {
                        field: format!("{path}.resource.target.averageUtilization"),
                        value: average_utilization.to_string(),
                    })
                }
            }
            ResourceTarget::AverageValue { average_value } => positive(
                average_value,
                format!("{path}.resource.target.averageValue"),
            ),
        },
        MetricSpec::Pods { pods } => {
            named(&pods.metric, format!("{path}.pods.metric.name"))?;
            let AverageValueTarget::AverageValue { average_value } = &pods.target;
            positive(average_value, format!("{path}.pods.target.averageValue"))
        }
        MetricSpec::Object { object } => {
            named(&object.metric, format!("{path}.object.metric.name"))?;
            validate_value_target(&object.target, &format!("{path}.object.target"), positive)
        }
        MetricSpec::External { external } => {
            named(&external.metric, format!("{path}.external.metric.name"))?;
            validate_value_target(
                &external.target,
                &format!("{path}.external.target"),
                positive,
            )
        }
    }
}

fn validate_value_target(
    target: &ValueTarget,
    path: &str,
    positive: impl Fn(&Quantity, String) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    match target {
        ValueTarget::Value { value } => positive(value, format!("{path}.value")),
        ValueTarget::AverageValue { average_value } => {
            positive(average_value, format!("{path}.averageValue"))
        }
    }
}

fn tolerance(rules: Option<&HpaScalingRules>, field: &str) -> Result<Option<f64>, SpecError> {
    let Some(q) = rules.and_then(|r| r.tolerance.as_ref()) else {
        return Ok(None);
    };
    if q.as_f64() < 0.0 {
        return Err(SpecError::NegativeTolerance {
            field: field.to_owned(),
            value: q.to_string(),
        });
    }
    Ok(Some(q.as_f64()))
}

/// Applies Kubernetes' field-by-field defaulting, then its validation, to one direction.
fn resolve_rules(
    given: Option<&HpaScalingRules>,
    path: &str,
    default_window: Duration,
    default_policies: &[(PolicyType, i64, u64)],
) -> Result<Rules, SpecError> {
    let window = match given.and_then(|r| r.stabilization_window_seconds) {
        None => default_window,
        Some(secs) if (0..=MAX_STABILIZATION_WINDOW_SECONDS).contains(&secs) => {
            Duration::from_secs(secs.unsigned_abs().into())
        }
        Some(secs) => {
            return Err(SpecError::StabilizationWindow {
                field: format!("{path}.stabilizationWindowSeconds"),
                value: secs,
            });
        }
    };
    let policies = match given.and_then(|r| r.policies.as_ref()) {
        None => default_policies
            .iter()
            .map(|&(kind, value, period)| Policy {
                kind,
                value,
                period: Duration::from_secs(period),
            })
            .collect(),
        Some(list) if list.is_empty() => {
            return Err(SpecError::NoPolicies {
                field: format!("{path}.policies"),
            });
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| resolve_policy(p, &format!("{path}.policies[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    Ok(Rules {
        select: given
            .and_then(|r| r.select_policy)
            .unwrap_or(SelectPolicy::Max),
        window,
        policies,
    })
}

fn resolve_policy(p: &HpaScalingPolicy, path: &str) -> Result<Policy, SpecError> {
    if p.value <= 0 {
        return Err(SpecError::PolicyValue {
            field: format!("{path}.value"),
            value: p.value,
        });
    }
    if !(1..=MAX_PERIOD_SECONDS).contains(&p.period_seconds) {
        return Err(SpecError::PeriodSeconds {
            field: format!("{path}.periodSeconds"),
            value: p.period_seconds,
        });
    }
    Ok(Policy {
        kind: p.kind,
        value: i64::from(p.value),
        period: Duration::from_secs(p.period_seconds.unsigned_abs().into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HpaSpec, toml::de::Error> {
        toml::from_str(toml_text)
    }

    fn parse_ok(toml_text: &str) -> HpaSpec {
        parse(toml_text).unwrap_or_else(|e| panic!("spec should parse: {e}"))
    }

    fn resolved(spec: &HpaSpec) -> Resolved<'_> {
        spec.resolve()
            .unwrap_or_else(|e| panic!("spec should validate: {e}"))
    }

    fn parse_err(toml_text: &str) -> String {
        match parse(toml_text) {
            Ok(spec) => panic!("spec should not parse: {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn validation_err(toml_text: &str) -> SpecError {
        match parse_ok(toml_text).validate() {
            Ok(()) => panic!("spec should not validate"),
            Err(e) => e,
        }
    }

    /// A Sedna JointInferenceService `hpa:` block (all four metric types and a full behavior),
    /// converted from YAML to TOML key for key.
    const SEDNA_HPA: &str = r#"
        minReplicas = 2
        maxReplicas = 8

        [[metrics]]
        type = "Resource"
        resource = { name = "cpu", target = { type = "Utilization", averageUtilization = 70 } }

        [[metrics]]
        type = "Resource"
        resource = { name = "cpu", target = { type = "AverageValue", averageValue = "500m" } }

        [[metrics]]
        type = "Pods"
        pods = { metric = { name = "queue_latency_ms" }, target = { type = "AverageValue", averageValue = 200 } }

        [[metrics]]
        type = "Object"
        [metrics.object]
        describedObject = { apiVersion = "v1", kind = "Pool", name = "edge" }
        metric = { name = "pool_cpu_pressure" }
        target = { type = "Value", value = "20" }

        [[metrics]]
        type = "External"
        external = { metric = { name = "drop_rate" }, target = { type = "AverageValue", averageValue = "0.05" } }

        [behavior.scaleUp]
        stabilizationWindowSeconds = 0
        selectPolicy = "Max"
        policies = [
            { type = "Pods", value = 4, periodSeconds = 15 },
            { type = "Percent", value = 100, periodSeconds = 15 },
        ]

        [behavior.scaleDown]
        stabilizationWindowSeconds = 300
        selectPolicy = "Min"
        policies = [{ type = "Percent", value = 10, periodSeconds = 60 }]
        tolerance = "0.05"
    "#;

    #[test]
    fn kubernetes_style_spec_deserializes_from_toml() {
        let spec = parse_ok(SEDNA_HPA);
        assert_eq!((spec.min_replicas, spec.max_replicas), (2, 8));
        assert_eq!(spec.metrics.len(), 5);
        assert_eq!(
            spec.metrics[0],
            MetricSpec::Resource {
                resource: ResourceMetricSource {
                    name: ResourceName::Cpu,
                    target: ResourceTarget::Utilization {
                        average_utilization: 70
                    },
                },
            }
        );
        let MetricSpec::Resource {
            resource:
                ResourceMetricSource {
                    target: ResourceTarget::AverageValue { average_value },
                    ..
                },
        } = &spec.metrics[1]
        else {
            panic!(
                "second metric should be a CPU AverageValue: {:?}",
                spec.metrics[1]
            );
        };
        assert_eq!(average_value.milli_value(), 500);
        let MetricSpec::Object { object } = &spec.metrics[3] else {
            panic!("fourth metric should be an Object metric");
        };
        assert_eq!(object.metric.name, "pool_cpu_pressure");
        assert_eq!(
            object.described_object.as_ref().map(|o| o.kind.as_str()),
            Some("Pool")
        );

        let r = resolved(&spec);
        let Some(b) = &r.behavior else {
            panic!("behavior was given");
        };
        assert_eq!(b.scale_down.select, SelectPolicy::Min);
        assert_eq!(b.scale_down.window, Duration::from_secs(300));
        assert_eq!(b.scale_down.policies.len(), 1);
        assert_eq!(b.scale_down.policies[0].value, 10);
        assert_eq!(b.scale_down.policies[0].period, Duration::from_secs(60));
        assert!((r.tolerances.scale_down - 0.05).abs() < 1e-12);
        assert!((r.tolerances.scale_up - DEFAULT_TOLERANCE).abs() < 1e-12);
    }

    #[test]
    fn minimal_spec_takes_kubernetes_defaults_and_the_legacy_path() {
        let spec = parse_ok("maxReplicas = 4");
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.sync_period(), Duration::from_secs(1));
        assert_eq!(spec.host_cpu_pressure_limit, None);
        let r = resolved(&spec);
        assert!(r.behavior.is_none(), "no behavior block means legacy rules");
        assert_eq!(
            r.metrics.as_ref(),
            &[MetricSpec::Resource {
                resource: ResourceMetricSource {
                    name: ResourceName::Cpu,
                    target: ResourceTarget::Utilization {
                        average_utilization: 80
                    },
                },
            }]
        );
        assert_eq!(r.tolerances.scale_up, 0.1);
        assert_eq!(r.tolerances.scale_down, 0.1);
    }

    #[test]
    fn empty_behavior_gets_both_default_directions() {
        let spec = parse_ok("maxReplicas = 4\nbehavior = {}");
        let r = resolved(&spec);
        let Some(b) = &r.behavior else {
            panic!("behavior was given");
        };
        assert_eq!(b.scale_up.select, SelectPolicy::Max);
        assert_eq!(b.scale_up.window, Duration::ZERO);
        let up: Vec<_> = b
            .scale_up
            .policies
            .iter()
            .map(|p| (p.kind, p.value, p.period.as_secs()))
            .collect();
        assert_eq!(
            up,
            [(PolicyType::Pods, 4, 15), (PolicyType::Percent, 100, 15)]
        );
        assert_eq!(b.scale_down.select, SelectPolicy::Max);
        assert_eq!(b.scale_down.window, Duration::from_secs(300));
        let down: Vec<_> = b
            .scale_down
            .policies
            .iter()
            .map(|p| (p.kind, p.value, p.period.as_secs()))
            .collect();
        assert_eq!(down, [(PolicyType::Percent, 100, 15)]);
    }

    #[test]
    fn behavior_fields_are_defaulted_one_by_one() {
        let spec = parse_ok(
            r#"
            maxReplicas = 4
            [behavior.scaleDown]
            selectPolicy = "Disabled"
            [behavior.scaleUp]
            stabilizationWindowSeconds = 60
            tolerance = 0
        "#,
        );
        let r = resolved(&spec);
        let Some(b) = &r.behavior else {
            panic!("behavior was given");
        };
        assert_eq!(b.scale_down.select, SelectPolicy::Disabled);
        assert_eq!(b.scale_down.window, Duration::from_secs(300));
        assert_eq!(b.scale_down.policies.len(), 1);
        assert_eq!(b.scale_up.window, Duration::from_secs(60));
        assert_eq!(b.scale_up.select, SelectPolicy::Max);
        assert_eq!(b.scale_up.policies.len(), 2);
        assert_eq!(r.tolerances.scale_up, 0.0);
        assert_eq!(r.tolerances.scale_down, 0.1);
    }

    #[test]
    fn unknown_fields_are_errors_at_every_level() {
        for (toml_text, key) in [
            ("maxReplicas = 4\nmaxReplica = 5", "maxReplica"),
            ("maxReplicas = 4\nbehavior = { scaleup = {} }", "scaleup"),
            (
                "maxReplicas = 4\nbehavior.scaleUp.policies = [{ type = \"Pods\", value = 1, periodSeconds = 15, extra = 1 }]",
                "extra",
            ),
            (
                "maxReplicas = 4\nmetrics = [{ type = \"Resource\", resource = { name = \"cpu\", container = \"w\", target = { type = \"Utilization\", averageUtilization = 50 } } }]",
                "container",
            ),
            (
                "maxReplicas = 4\nmetrics = [{ type = \"Resource\", resource = { name = \"cpu\", target = { type = \"Utilization\", averageUtilization = 50, averageValue = \"1\" } } }]",
                "averageValue",
            ),
            (
                "maxReplicas = 4\nmetrics = [{ type = \"External\", external = { metric = { name = \"q\", selector = {} }, target = { type = \"Value\", value = 1 } } }]",
                "selector",
            ),
            (
                "maxReplicas = 4\nmetrics = [{ type = \"Pods\", pods = { metric = { name = \"q\" }, target = { type = \"AverageValue\", averageValue = 1 } }, object = {} }]",
                "object",
            ),
        ] {
            let err = parse_err(toml_text);
            assert!(
                err.contains("unknown field") && err.contains(key),
                "{toml_text:?}: {err}"
            );
        }
    }

    #[test]
    fn unsupported_kinds_are_parse_errors() {
        let memory = parse_err(
            "maxReplicas = 4\nmetrics = [{ type = \"Resource\", resource = { name = \"memory\", target = { type = \"Utilization\", averageUtilization = 50 } } }]",
        );
        assert!(memory.contains("memory"), "{memory}");
        let pods_utilization = parse_err(
            "maxReplicas = 4\nmetrics = [{ type = \"Pods\", pods = { metric = { name = \"q\" }, target = { type = \"Utilization\", averageUtilization = 50 } } }]",
        );
        assert!(
            pods_utilization.contains("Utilization"),
            "{pods_utilization}"
        );
        let container = parse_err(
            "maxReplicas = 4\nmetrics = [{ type = \"ContainerResource\", containerResource = {} }]",
        );
        assert!(container.contains("ContainerResource"), "{container}");
        let policy = parse_err("maxReplicas = 4\nbehavior.scaleUp.selectPolicy = \"Fastest\"");
        assert!(policy.contains("Fastest"), "{policy}");
        let quantity = parse_err(
            "maxReplicas = 4\nmetrics = [{ type = \"Pods\", pods = { metric = { name = \"q\" }, target = { type = \"AverageValue\", averageValue = \"5 cores\" } } }]",
        );
        assert!(quantity.contains("invalid quantity"), "{quantity}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases: &[(&str, &str)] = &[
            ("maxReplicas = 0", "maxReplicas"),
            ("maxReplicas = 2\nminReplicas = 0", "minReplicas"),
            ("maxReplicas = 2\nminReplicas = 3", "minReplicas"),
            (
                "maxReplicas = 2\nsyncPeriodSeconds = 0",
                "syncPeriodSeconds",
            ),
            (
                "maxReplicas = 2\nhostCpuPressureLimit = 0.0",
                "hostCpuPressureLimit",
            ),
            (
                "maxReplicas = 2\nhostCpuPressureLimit = 150.0",
                "hostCpuPressureLimit",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleUp.policies = []",
                "behavior.scaleUp.policies",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleDown.policies = [{ type = \"Pods\", value = 0, periodSeconds = 15 }]",
                "behavior.scaleDown.policies[0].value",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleUp.policies = [{ type = \"Pods\", value = 1, periodSeconds = 15 }, { type = \"Percent\", value = 10, periodSeconds = 1801 }]",
                "behavior.scaleUp.policies[1].periodSeconds",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleUp.policies = [{ type = \"Pods\", value = 1, periodSeconds = 0 }]",
                "behavior.scaleUp.policies[0].periodSeconds",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleDown.stabilizationWindowSeconds = 3601",
                "behavior.scaleDown.stabilizationWindowSeconds",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleUp.stabilizationWindowSeconds = -1",
                "behavior.scaleUp.stabilizationWindowSeconds",
            ),
            (
                "maxReplicas = 2\nbehavior.scaleDown.tolerance = \"-0.1\"",
                "behavior.scaleDown.tolerance",
            ),
            (
                "maxReplicas = 2\nmetrics = [{ type = \"Resource\", resource = { name = \"cpu\", target = { type = \"Utilization\", averageUtilization = 0 } } }]",
                "metrics[0].resource.target.averageUtilization",
            ),
            (
                "maxReplicas = 2\nmetrics = [{ type = \"Pods\", pods = { metric = { name = \"q\" }, target = { type = \"AverageValue\", averageValue = \"0\" } } }]",
                "metrics[0].pods.target.averageValue",
            ),
            (
                "maxReplicas = 2\nmetrics = [{ type = \"Pods\", pods = { metric = { name = \"\" }, target = { type = \"AverageValue\", averageValue = \"1\" } } }]",
                "metrics[0].pods.metric.name",
            ),
            (
                "maxReplicas = 2\nmetrics = [{ type = \"Resource\", resource = { name = \"cpu\", target = { type = \"Utilization\", averageUtilization = 50 } } }, { type = \"External\", external = { metric = { name = \"q\" }, target = { type = \"Value\", value = \"-1\" } } }]",
                "metrics[1].external.target.value",
            ),
        ];
        for (toml_text, field) in cases {
            let err = validation_err(toml_text);
            assert_eq!(err.field(), *field, "{toml_text:?}: {err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn boundary_values_are_valid() {
        let spec = parse_ok(
            r#"
            minReplicas = 3
            maxReplicas = 3
            hostCpuPressureLimit = 100.0
            [behavior.scaleUp]
            stabilizationWindowSeconds = 3600
            policies = [{ type = "Pods", value = 1, periodSeconds = 1800 }]
            [behavior.scaleDown]
            stabilizationWindowSeconds = 0
            policies = [{ type = "Percent", value = 1, periodSeconds = 1 }]
        "#,
        );
        assert_eq!(spec.validate(), Ok(()));
    }
}
