//! `helmetd cloud`: the service that runs the big model for the edges' hard examples, over
//! MQTT 5 (the wire format is the edge↔cloud contract in [`crate::joint::protocol`]) and, with
//! `--sedna-http`, behind Sedna's `BigModelService` HTTP API. With `[http] listen` set it serves
//! `/metrics`, `/healthz` and `/readyz` there ([`metrics`]).

pub mod metrics;
pub mod sedna_http;
pub mod service;

pub use service::{cloud_main, cloud_model_spec};
