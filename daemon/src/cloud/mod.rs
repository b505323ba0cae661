//! Joint inference with the cloud over MQTT 5: the hard-example protocol, the edge's client
//! with its timeout and circuit breaker, and the `helmetd cloud` service that runs the big model.

pub mod breaker;
pub mod client;
pub mod protocol;
pub mod service;

pub use breaker::{BreakerSettings, BreakerState};
pub use client::{
    AskError, CloudAnswer, CloudClient, CloudClientSettings, CloudStats, SubscribeError,
};
pub use protocol::HardExampleMeta;
pub use service::cloud_main;
