//! The daemon's HTTP endpoint (`[http] listen`) for Prometheus and probes, and the
//! `helmetd status` client.
//!
//! The daemon hands every [`crate::telemetry::Snapshot`] to [`Metrics::update`]; the control
//! loop calls [`Health::tick`] every time it wakes. The server only reads those
//! copies, so scrapes and probes never wait on the loop, nor the loop on them.
//!
//! [`guard`] is the accept loop this server and `helmetd cloud --sedna-http` share: a cap on
//! open connections and deadlines for a request's head, body and answer.

pub mod guard;
pub mod metrics;
pub mod server;
pub mod status;

pub use guard::{ConnectionCounts, ConnectionLimits, ConnectionStats};
pub use metrics::Metrics;
pub use server::{HEALTH_TIMEOUT, Health, HttpError, HttpServer, Telemetry, readiness};
pub use status::{DEFAULT_ADDRESS, StatusError, StatusReport, fetch_status, status_command};
