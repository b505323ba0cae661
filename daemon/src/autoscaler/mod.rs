//! Horizontal autoscaling of inference workers with Kubernetes HPA semantics.
//!
//! The Kubernetes HPA algorithm (docs: hpa-algorithm.md) as a pure function: [`decide`] takes
//! the spec, what was observed, the autoscaler's memory and the time, and returns the worker
//! count with HPA-style conditions. No I/O and no clock, so the daemon owns sampling and
//! spawning, and tests drive time by hand.
//!
//! - `spec`: the autoscaling/v2 spec fields, Kubernetes defaults and validation.
//! - `samples`: the observation (workers as pods, pool and host values).
//! - `replica_calc`: the replica count each metric proposes.
//! - `controller`: metric combination, stabilization, rate policies, limits, conditions.

mod controller;
mod driver;
mod quantity;
mod replica_calc;
mod sampler;
mod samples;
mod spec;
#[cfg(test)]
mod testutil;

pub use controller::{
    Condition, ConditionReason, ConditionType, Decision, MetricStatus, ScalingState, decide,
};
pub use driver::{
    Autoscaler, DROPPED_FRAMES_PER_SECOND, FRAME_QUEUE_LATENCY_MS, POOL_PSI_CPU_SOME_AVG10,
    PSI_CPU_SOME_AVG10, status_line,
};
pub use quantity::{Quantity, QuantityError};
pub use replica_calc::{
    CPU_INITIALIZATION_PERIOD, INITIAL_READINESS_DELAY, MetricError, MetricProposal, MetricValue,
};
pub use sampler::{
    CgroupReader, CpuUsage, FsReader, HOST_PRESSURE_DIR, ParseError, Pressure, PsiSome, Sample,
    SampleError, Sampler, parse_cpu_stat, parse_psi_some,
};
pub use samples::{CpuSample, Observation, ReadyCondition, Timestamp, WorkerPhase, WorkerSample};
pub use spec::{
    AverageValueTarget, DEFAULT_CPU_UTILIZATION, DEFAULT_DOWNSCALE_STABILIZATION,
    DEFAULT_TOLERANCE, ExternalMetricSource, HpaBehavior, HpaScalingPolicy, HpaScalingRules,
    HpaSpec, MAX_PERIOD_SECONDS, MAX_STABILIZATION_WINDOW_SECONDS, MetricIdentifier, MetricSpec,
    ObjectMetricSource, ObjectReference, PodsMetricSource, PolicyType, ResourceMetricSource,
    ResourceName, ResourceTarget, SelectPolicy, SpecError, ValueTarget,
};
