//! Horizontal autoscaling of inference workers with Kubernetes HPA semantics.
