//! What `helmetd cloud` counts, and its HTTP endpoint (`[http] listen`): `/metrics` for
//! Prometheus (and, through prometheus-adapter, for the Deployment's HPA), `/healthz` and
//! `/readyz` for the kubelet.
//!
//! The service loop owns its counters ([`ServiceStats`]) and its [`LoadAccount`] and, after
//! every event, publishes a copy of both into a `watch` ([`CloudTelemetry::publish`]): the loop
//! never waits for a scrape, and a scrape reads one consistent copy. The time integrals are
//! exact at scrape time: the scrape adds what the current load accrued since its last change.
//!
//! The demand metric is `helmetd_cloud_in_flight_seconds_total`, the time integral of the
//! requests in the replica (running plus waiting): its `rate()` over a window is the mean
//! concurrency, 1.0 for a replica busy all the time with nothing waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::guard::{self, ConnectionCounts, ConnectionLimits, ConnectionStats};
use crate::http::{HttpError, metrics::CONTENT_TYPE};
use crate::joint::protocol::RejectKind;

/// Every [`RejectKind`], in index order: its length is the compile-time check that none is
/// missing (the protocol asserts `COUNT` follows the last kind).
const REJECT_KINDS: [RejectKind; RejectKind::COUNT] = [
    RejectKind::NoResponseTopic,
    RejectKind::NoCorrelation,
    RejectKind::ContentType,
    RejectKind::TooLarge,
    RejectKind::BadMetadata,
    RejectKind::NotJpeg,
    RejectKind::BadImage,
];

/// Counters since start, logged every 10 s and at exit, and served on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStats {
    /// Every publish received on the request topic.
    pub requests: u64,
    pub answered: u64,
    pub rejected: [u64; RejectKind::COUNT],
    /// Refused because more than `MAX_WAITING` requests were waiting.
    pub overloaded: u64,
    /// Refused because the replica was shutting down.
    pub shed: u64,
    /// Refused ("expired") without inference because the edge would stop waiting before an
    /// inference could end.
    pub expired: u64,
    /// Inference errors (answered with an error).
    pub failed: u64,
    /// Edge boxes in accepted requests that were clipped, dropped or over the cap.
    pub edge_boxes_fixed: u64,
    /// Answers that could not be queued for the broker.
    pub publish_failed: u64,
    /// Decode, letterbox and model time of answered requests.
    pub infer_ms_total: f64,
    pub infer_ms_max: f64,
}

impl ServiceStats {
    pub(super) fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected[kind.index()]
    }

    pub(super) fn log(&self, replica: &str, message: &str) {
        let infer_ms_avg = self.infer_ms_total / self.answered.max(1) as f64;
        tracing::info!(
            replica,
            requests = self.requests,
            answered = self.answered,
            overloaded = self.overloaded,
            shed = self.shed,
            expired = self.expired,
            failed = self.failed,
            edge_boxes_fixed = self.edge_boxes_fixed,
            publish_failed = self.publish_failed,
            rejected_no_response_topic = self.rejected(RejectKind::NoResponseTopic),
            rejected_no_correlation = self.rejected(RejectKind::NoCorrelation),
            rejected_content_type = self.rejected(RejectKind::ContentType),
            rejected_too_large = self.rejected(RejectKind::TooLarge),
            rejected_bad_metadata = self.rejected(RejectKind::BadMetadata),
            rejected_not_jpeg = self.rejected(RejectKind::NotJpeg),
            rejected_bad_image = self.rejected(RejectKind::BadImage),
            infer_ms_avg = (infer_ms_avg * 10.0).round() / 10.0,
            infer_ms_max = (self.infer_ms_max * 10.0).round() / 10.0,
            "{message}"
        );
    }

    /// Every refusal reason with its count: the service's own, then the request's faults.
    fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("overloaded", self.overloaded),
            ("shed", self.shed),
            ("expired", self.expired),
        ]
        .into_iter()
        .chain(REJECT_KINDS.map(|kind| (kind.as_str(), self.rejected(kind))))
    }
}

/// The replica's load over time: requests waiting and whether an inference runs, and the time
/// integrals of both since start. Changed by the service loop with the instant of each change,
/// so the integrals are exact and tests can inject the instants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAccount {
    /// The last change.
    since: Instant,
    waiting: u32,
    busy: bool,
    busy_total: Duration,
    in_flight_total: Duration,
}

/// [`LoadAccount`]'s integrals at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadTotals {
    /// Time an inference ran: `rate()` of it is the busy fraction.
    pub busy: Duration,
    /// The integral of the requests in the replica (running plus waiting): `rate()` of it is
    /// the mean concurrency.
    pub in_flight: Duration,
}

impl LoadAccount {
    /// Idle, nothing accrued, from `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            waiting: 0,
            busy: false,
            busy_total: Duration::ZERO,
            in_flight_total: Duration::ZERO,
        }
    }

    /// The load became `waiting` queued and `busy` at `now`: what the previous load accrued
    /// until then is added first. An instant before the last change counts as that change.
    pub fn change(&mut self, now: Instant, waiting: usize, busy: bool) {
        let totals = self.totals_at(now);
        *self = Self {
            since: now.max(self.since),
            waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
            busy,
            busy_total: totals.busy,
            in_flight_total: totals.in_flight,
        };
    }

    pub fn waiting(&self) -> u32 {
        self.waiting
    }

    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Requests in the replica now: the running one and those waiting.
    pub fn in_flight(&self) -> u32 {
        self.waiting.saturating_add(u32::from(self.busy))
    }

    /// The integrals up to `now`, the current load included since its change.
    pub fn totals_at(&self, now: Instant) -> LoadTotals {
        let elapsed = now.saturating_duration_since(self.since);
        LoadTotals {
            busy: self.busy_total + elapsed * u32::from(self.busy),
            in_flight: self.in_flight_total + elapsed * self.in_flight(),
        }
    }
}

/// What a scrape reads: the loop's last published state.
#[derive(Debug, Clone)]
struct ServiceSnapshot {
    stats: ServiceStats,
    load: LoadAccount,
    recent_infer: Duration,
}

/// What keeps the replica from taking requests; an atomic each, so the MQTT task and the
/// signal handler set them without waiting.
#[derive(Debug, Default)]
struct Readiness {
    loaded: AtomicBool,
    /// Whether the MQTT service runs: then its subscription must be granted too.
    needs_subscription: bool,
    subscribed: AtomicBool,
    stopping: AtomicBool,
}

/// Shared by the service loop, the MQTT task, `cloud_main` and the HTTP handlers.
#[derive(Debug)]
pub struct CloudTelemetry {
    service: watch::Sender<ServiceSnapshot>,
    readiness: Readiness,
    /// The endpoint's own connection counters (refused, timed out).
    connections: Arc<ConnectionStats>,
}

impl CloudTelemetry {
    /// `needs_subscription`: the MQTT service runs (`mqtt.url` set), so `/readyz` also waits
    /// for its subscription.
    pub fn new(needs_subscription: bool) -> Self {
        let (service, _) = watch::channel(ServiceSnapshot {
            stats: ServiceStats::default(),
            load: LoadAccount::new(Instant::now()),
            recent_infer: Duration::ZERO,
        });
        Self {
            service,
            readiness: Readiness {
                needs_subscription,
                ..Readiness::default()
            },
            connections: Arc::default(),
        }
    }

    /// The service loop's state after an event. `send_modify` takes the write lock only as
    /// long as the copy, and a scrape holds the read lock only as long as its own copy.
    pub fn publish(&self, stats: &ServiceStats, load: LoadAccount, recent_infer: Duration) {
        self.service.send_modify(|snapshot| {
            snapshot.stats.clone_from(stats);
            snapshot.load = load;
            snapshot.recent_infer = recent_infer;
        });
    }

    /// Every model is loaded (and the Sedna port bound).
    pub fn set_loaded(&self) {
        self.readiness.loaded.store(true, Ordering::Relaxed);
    }

    /// The broker granted the request subscription (`true`) or the connection was lost.
    pub fn set_subscribed(&self, subscribed: bool) {
        self.readiness
            .subscribed
            .store(subscribed, Ordering::Relaxed);
    }

    /// SIGTERM or SIGINT: the replica drains and takes no more work.
    pub fn set_stopping(&self) {
        self.readiness.stopping.store(true, Ordering::Relaxed);
    }

    /// What keeps the replica from being ready; empty when it is.
    pub fn missing(&self) -> Vec<&'static str> {
        let r = &self.readiness;
        let mut missing = Vec::new();
        if r.stopping.load(Ordering::Relaxed) {
            missing.push("shutting down");
        }
        if !r.loaded.load(Ordering::Relaxed) {
            missing.push("the big model is loading");
        }
        if r.needs_subscription && !r.subscribed.load(Ordering::Relaxed) {
            missing.push("the broker has not granted the request subscription");
        }
        missing
    }

    /// `/metrics` as of `now`.
    pub fn encode(&self, now: Instant) -> String {
        let snapshot = self.service.borrow().clone();
        encode(&snapshot, now, self.connections.counts())
    }
}

/// Binds `listen` (validated as an address by the config; port 0 picks a free one).
pub async fn bind_endpoint(listen: &str) -> Result<TcpListener, HttpError> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|source| HttpError::Address {
        addr: listen.to_string(),
        source,
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` behind the daemon's connection
/// guard until the runtime ends (the process's last moment: scrapes and probes see the drain).
pub async fn serve_endpoint(
    listener: TcpListener,
    limits: ConnectionLimits,
    telemetry: Arc<CloudTelemetry>,
) {
    let connections = telemetry.connections.clone();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    guard::serve(
        "cloud-http",
        listener,
        router,
        limits,
        connections,
        std::future::pending(),
    )
    .await;
}

async fn metrics(State(telemetry): State<Arc<CloudTelemetry>>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        telemetry.encode(Instant::now()),
    )
        .into_response()
}

/// The runtime is single-threaded and the service loop never blocks it (inference runs on its
/// own thread), so a handler that runs means the loop turns too: the same reasoning as the
/// systemd watchdog's ping.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(telemetry): State<Arc<CloudTelemetry>>) -> Response {
    let missing = telemetry.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = json!({ "ready": false, "missing": missing });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The exposition of `snapshot` as of `now`. A registry of constants made for the scrape: every
/// value comes from the one copy, so nothing is shared with the loop and no lock is needed.
/// Counters are registered without `_total`: the encoder appends it.
fn encode(snapshot: &ServiceSnapshot, now: Instant, connections: ConnectionCounts) -> String {
    let s = &snapshot.stats;
    let load = &snapshot.load;
    let totals = load.totals_at(now);
    let mut r = Registry::default();
    let counters = [
        (
            "helmetd_cloud_requests",
            "Publishes received on the request topic",
            s.requests,
        ),
        (
            "helmetd_cloud_requests_answered",
            "Requests answered with the big model's boxes",
            s.answered,
        ),
        (
            "helmetd_cloud_requests_failed",
            "Requests whose inference failed (answered with an error)",
            s.failed,
        ),
        (
            "helmetd_cloud_edge_boxes_fixed",
            "Edge boxes of accepted requests that were clipped, dropped or over the cap",
            s.edge_boxes_fixed,
        ),
        (
            "helmetd_cloud_answers_unsent",
            "Answers that could not be queued for the broker",
            s.publish_failed,
        ),
    ];
    for (name, help, value) in counters {
        r.register(name, help, ConstCounter::new(value));
    }
    let refused = Family::<ReasonLabels, Counter>::default();
    for (reason, count) in s.refusals() {
        refused
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }
    r.register(
        "helmetd_cloud_requests_refused",
        "Requests refused without inference, by reason (overloaded, shed, expired, or what was wrong with the request)",
        refused,
    );
    let gauges = [
        (
            "helmetd_cloud_queue_depth",
            "Requests waiting behind the running inference",
            load.waiting(),
        ),
        (
            "helmetd_cloud_busy",
            "1 while an inference runs",
            u32::from(load.busy()),
        ),
        (
            "helmetd_cloud_in_flight",
            "Requests in the replica: the running one and those waiting",
            load.in_flight(),
        ),
    ];
    for (name, help, value) in gauges {
        r.register(name, help, ConstGauge::new(value));
    }
    let seconds = [
        (
            "helmetd_cloud_busy_seconds",
            "Time an inference ran; rate() is the busy fraction",
            totals.busy.as_secs_f64(),
        ),
        (
            "helmetd_cloud_in_flight_seconds",
            "Time integral of helmetd_cloud_in_flight; rate() is the mean concurrency, the demand in replicas",
            totals.in_flight.as_secs_f64(),
        ),
        (
            "helmetd_cloud_infer_seconds",
            "Decode, letterbox and model time of answered requests",
            s.infer_ms_total / 1e3,
        ),
    ];
    for (name, help, value) in seconds {
        r.register(name, help, ConstCounter::new(value));
    }
    r.register(
        "helmetd_cloud_recent_infer_seconds",
        "Recent time of one inference (the moving average the replica reports to the edges)",
        ConstGauge::new(snapshot.recent_infer.as_secs_f64()),
    );
    register_connections(&mut r, connections);
    let mut text = String::new();
    // Writing into a String cannot fail, and every name and label here is valid.
    prometheus_text::encode(&mut text, &r).expect("encoding metrics into a String");
    text
}

/// The endpoint's own connection counts, named as the daemon's endpoint names them.
fn register_connections(r: &mut Registry, counts: ConnectionCounts) {
    r.register(
        "helmetd_http_connections_open",
        "Connections open to this endpoint (at most http.max_connections)",
        ConstGauge::new(counts.open),
    );
    r.register(
        "helmetd_http_connections_refused",
        "Connections to this endpoint closed at once: http.max_connections were open",
        ConstCounter::new(counts.refused),
    );
    r.register(
        "helmetd_http_connections_timed_out",
        "Connections to this endpoint closed by a deadline (request head, idle keep-alive, body or an unread answer)",
        ConstCounter::new(counts.timed_out),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::metrics::exposition::{scrape, value};
    use prometheus_parse::Value;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_integrals_add_each_load_for_as_long_as_it_lasted() {
        let t0 = Instant::now();
        let mut load = LoadAccount::new(t0);
        // Idle for 100 ms, then one running and two waiting for 300 ms, then one running
        // alone for 200 ms, then idle.
        load.change(t0 + 100 * MS, 2, true);
        load.change(t0 + 400 * MS, 0, true);
        load.change(t0 + 600 * MS, 0, false);
        let totals = load.totals_at(t0 + 1000 * MS);
        assert_eq!(totals.busy, 500 * MS);
        assert_eq!(totals.in_flight, 3 * 300 * MS + 200 * MS);
        assert_eq!(
            (load.waiting(), load.busy(), load.in_flight()),
            (0, false, 0)
        );
    }

    #[test]
    fn a_scrape_between_changes_counts_the_current_load_up_to_then() {
        let t0 = Instant::now();
        let mut load = LoadAccount::new(t0);
        load.change(t0, 3, true);
        // Nothing has changed for 250 ms: four in flight all along.
        assert_eq!(load.totals_at(t0 + 250 * MS).in_flight, 1000 * MS);
        assert_eq!(load.totals_at(t0 + 250 * MS).busy, 250 * MS);
        // Scrapes do not change the account: a later one sees the whole stretch.
        assert_eq!(load.totals_at(t0 + 500 * MS).in_flight, 2000 * MS);
        // An instant from before the last change adds nothing and moves nothing back.
        load.change(t0 + 500 * MS, 1, true);
        load.change(t0 + 400 * MS, 1, true);
        assert_eq!(
            load.totals_at(t0 + 600 * MS).in_flight,
            2000 * MS + 2 * 100 * MS
        );
    }

    #[test]
    fn the_exposition_has_every_family_with_the_loop_s_values() {
        let telemetry = CloudTelemetry::new(true);
        let t0 = Instant::now();
        let mut load = LoadAccount::new(t0);
        load.change(t0 + 1000 * MS, 2, true);
        let mut stats = ServiceStats {
            requests: 9,
            answered: 4,
            overloaded: 1,
            expired: 2,
            failed: 1,
            infer_ms_total: 1200.0,
            ..ServiceStats::default()
        };
        stats.rejected[RejectKind::NotJpeg.index()] = 1;
        telemetry.publish(&stats, load, 300 * MS);
        let text = telemetry.encode(t0 + 1500 * MS);
        let s = scrape(&text);
        assert_eq!(value(&s, "helmetd_cloud_requests_total", &[]), 9.0);
        assert_eq!(value(&s, "helmetd_cloud_requests_answered_total", &[]), 4.0);
        assert_eq!(value(&s, "helmetd_cloud_requests_failed_total", &[]), 1.0);
        let refused = |reason| {
            value(
                &s,
                "helmetd_cloud_requests_refused_total",
                &[("reason", reason)],
            )
        };
        assert_eq!(refused("overloaded"), 1.0);
        assert_eq!(refused("expired"), 2.0);
        assert_eq!(refused("not_jpeg"), 1.0);
        assert_eq!(refused("shed"), 0.0, "every reason is exposed, zero too");
        assert_eq!(refused("bad_image"), 0.0);
        assert_eq!(value(&s, "helmetd_cloud_queue_depth", &[]), 2.0);
        assert_eq!(value(&s, "helmetd_cloud_busy", &[]), 1.0);
        assert_eq!(value(&s, "helmetd_cloud_in_flight", &[]), 3.0);
        assert_eq!(value(&s, "helmetd_cloud_busy_seconds_total", &[]), 0.5);
        assert_eq!(value(&s, "helmetd_cloud_in_flight_seconds_total", &[]), 1.5);
        assert_eq!(value(&s, "helmetd_cloud_infer_seconds_total", &[]), 1.2);
        assert_eq!(value(&s, "helmetd_cloud_recent_infer_seconds", &[]), 0.3);
        assert_eq!(value(&s, "helmetd_http_connections_open", &[]), 0.0);
        let kinds = [
            ("helmetd_cloud_requests_total", "counter"),
            ("helmetd_cloud_requests_refused_total", "counter"),
            ("helmetd_cloud_in_flight_seconds_total", "counter"),
            ("helmetd_cloud_in_flight", "gauge"),
            ("helmetd_cloud_recent_infer_seconds", "gauge"),
            ("helmetd_http_connections_refused_total", "counter"),
        ];
        for (name, expected) in kinds {
            let sample = s.samples.iter().find(|s| s.metric == name).expect(name);
            let kind = match sample.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                _ => "other",
            };
            assert_eq!(kind, expected, "{name}:\n{text}");
        }
    }

    #[test]
    fn ready_once_loaded_and_subscribed_and_not_while_stopping() {
        let telemetry = CloudTelemetry::new(true);
        assert_eq!(telemetry.missing().len(), 2);
        telemetry.set_loaded();
        assert_eq!(
            telemetry.missing(),
            ["the broker has not granted the request subscription"]
        );
        telemetry.set_subscribed(true);
        assert!(telemetry.missing().is_empty());
        telemetry.set_subscribed(false);
        assert_eq!(
            telemetry.missing().len(),
            1,
            "a lost connection loses the subscription"
        );
        telemetry.set_subscribed(true);
        telemetry.set_stopping();
        assert_eq!(telemetry.missing(), ["shutting down"]);

        let sedna_only = CloudTelemetry::new(false);
        sedna_only.set_loaded();
        assert!(
            sedna_only.missing().is_empty(),
            "no subscription to wait for"
        );
    }
}
