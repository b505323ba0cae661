//! The `/metrics` registry: every family is set from the loop's latest [`Snapshot`], except the
//! cloud round-trip histogram, which finalize tasks feed as answers arrive.
//!
//! Totals the daemon already counts (cameras, dispatch, [`crate::telemetry::Counters`]) are stored
//! into counters as they are rather than re-counted here, so `/metrics`, the stats topic and the
//! run summary can never disagree.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::telemetry::snapshot::{CameraState, CloudPacingSnapshot, Snapshot, WorkerState};

/// The `Content-Type` of what [`Metrics::encode`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Cloud answers take tens of milliseconds on a LAN and up to the request timeout (seconds)
/// over a poor uplink.
const RTT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraLabels {
    camera: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    pool: String,
    id: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStateLabels {
    pool: String,
    id: u32,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    condition: String,
    status: &'static str,
    reason: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The registry and its families. Share it behind an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    /// Held while families are rebuilt and while they are encoded, so a scrape never sees a
    /// half-applied snapshot (worker and condition families are cleared and refilled).
    consistent: Mutex<()>,
    latest: Mutex<Option<Arc<Snapshot>>>,
    cameras: CameraFamilies,
    workers: WorkerFamilies,
    frames: FrameCounters,
    links: LinkFamilies,
    connections: ConnectionFamilies,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-camera families, from the snapshot's cameras.
struct CameraFamilies {
    frames_in: Family<CameraLabels, Counter>,
    frames_processed: Family<CameraLabels, Counter>,
    frames_dropped: Family<CameraLabels, Counter>,
    frames_still: Family<CameraLabels, Counter>,
    reconnects: Family<CameraLabels, Counter>,
    up: Family<CameraLabels, Gauge>,
    in_schedule: Family<CameraLabels, Gauge>,
}

impl CameraFamilies {
    fn register(registry: &mut Registry) -> Self {
        Self {
            frames_in: register(
                registry,
                "helmetd_camera_frames_in",
                "Decoded frames seen by the camera's sampler",
                Family::default(),
            ),
            frames_processed: register(
                registry,
                "helmetd_camera_frames_processed",
                "Frames of the camera a worker returned a result for",
                Family::default(),
            ),
            frames_dropped: register(
                registry,
                "helmetd_camera_frames_dropped",
                "Sampled frames replaced by a newer one before a worker took them",
                Family::default(),
            ),
            frames_still: register(
                registry,
                "helmetd_camera_frames_still",
                "Sampled frames the motion gate kept from the model: nothing moved",
                Family::default(),
            ),
            reconnects: register(
                registry,
                "helmetd_camera_reconnects",
                "Camera pipeline restarts after a failure",
                Family::default(),
            ),
            up: register(
                registry,
                "helmetd_camera_up",
                "1 while the camera is streaming",
                Family::default(),
            ),
            in_schedule: register(
                registry,
                "helmetd_camera_in_schedule",
                "1 while the camera's schedule is open, so its violations raise alerts",
                Family::default(),
            ),
        }
    }
}

/// Worker slots, their pools and the autoscaler's view of them.
struct WorkerFamilies {
    cpu_cores: Family<WorkerLabels, FloatGauge>,
    state: Family<WorkerStateLabels, Gauge>,
    restarts: Family<WorkerLabels, Counter>,
    pool_cpu_pressure: Family<PoolLabels, FloatGauge>,
    replicas_current: Gauge,
    replicas_desired: Gauge,
    hpa_condition: Family<ConditionLabels, Gauge>,
}

impl WorkerFamilies {
    fn register(registry: &mut Registry) -> Self {
        Self {
            cpu_cores: register(
                registry,
                "helmetd_worker_cpu_cores",
                "CPU cores the worker process used over the last second",
                Family::default(),
            ),
            state: register(
                registry,
                "helmetd_worker_state",
                "1 for the worker slot's current state, 0 for the others",
                Family::default(),
            ),
            restarts: register(
                registry,
                "helmetd_worker_restarts",
                "Starts of the worker slot after its first",
                Family::default(),
            ),
            pool_cpu_pressure: register(
                registry,
                "helmetd_pool_cpu_pressure",
                "Share of the last second some task of the pool waited for CPU (PSI some)",
                Family::default(),
            ),
            replicas_current: register(
                registry,
                "helmetd_replicas_current",
                "Worker slots with a running process",
                Gauge::default(),
            ),
            replicas_desired: register(
                registry,
                "helmetd_replicas_desired",
                "Workers the supervisor is asked to run",
                Gauge::default(),
            ),
            hpa_condition: register(
                registry,
                "helmetd_hpa_condition",
                "The autoscaler's HPA conditions, 1 per current (condition, status, reason)",
                Family::default(),
            ),
        }
    }
}

/// What happened to the frames: the run's counters and the cloud round trip.
struct FrameCounters {
    finalized: Counter,
    hard_examples: Counter,
    cloud_answered: Counter,
    cloud_late: Counter,
    cloud_failed: Counter,
    cloud_skipped: Counter,
    cloud_paced: Counter,
    cloud_over_budget: Counter,
    cloud_already_answered: Counter,
    cloud_off_schedule: Counter,
    cloud_round_trip: Histogram,
    alerts: Counter,
    finalize_dropped: Counter,
    output_errors: Counter,
    upload_ratio: FloatGauge,
    answered_in_time_ratio: FloatGauge,
}

impl FrameCounters {
    fn register(registry: &mut Registry) -> Self {
        Self {
            finalized: register(
                registry,
                "helmetd_frames",
                "Frames finalized over all cameras",
                Counter::default(),
            ),
            hard_examples: register(
                registry,
                "helmetd_hard_examples",
                "Frames judged hard examples",
                Counter::default(),
            ),
            cloud_answered: register(
                registry,
                "helmetd_cloud_answered",
                "Hard examples the cloud answered in time",
                Counter::default(),
            ),
            cloud_late: register(
                registry,
                "helmetd_cloud_late",
                "Hard examples whose cloud answer came too late",
                Counter::default(),
            ),
            cloud_failed: register(
                registry,
                "helmetd_cloud_failed",
                "Hard examples the cloud could not be asked about or refused",
                Counter::default(),
            ),
            cloud_skipped: register(
                registry,
                "helmetd_cloud_skipped",
                "Hard examples not sent because the circuit breaker was open",
                Counter::default(),
            ),
            cloud_paced: register(
                registry,
                "helmetd_cloud_paced",
                "Hard examples not sent because the cloud reported being slow and the client paced itself",
                Counter::default(),
            ),
            cloud_over_budget: register(
                registry,
                "helmetd_cloud_over_budget",
                "Hard examples not sent because the camera had spent cloud.budget_per_s",
                Counter::default(),
            ),
            cloud_already_answered: register(
                registry,
                "helmetd_cloud_already_answered",
                "Hard examples not sent because the cloud had answered about everyone in them within cloud.ask_again_after_s",
                Counter::default(),
            ),
            cloud_off_schedule: register(
                registry,
                "helmetd_cloud_off_schedule",
                "Hard examples not sent because the camera's schedule was closed",
                Counter::default(),
            ),
            cloud_round_trip: register(
                registry,
                "helmetd_cloud_round_trip_seconds",
                "Time from sending a hard example to the cloud's answer",
                Histogram::new(RTT_BUCKETS),
            ),
            alerts: register(
                registry,
                "helmetd_alerts",
                "Alert events (new, update and end together)",
                Counter::default(),
            ),
            finalize_dropped: register(
                registry,
                "helmetd_finalize_dropped",
                "Results dropped because a camera's finalize queue was full",
                Counter::default(),
            ),
            output_errors: register(
                registry,
                "helmetd_output_errors",
                "Failed writes of output folders",
                Counter::default(),
            ),
            upload_ratio: register(
                registry,
                "helmetd_upload_cloud_ratio",
                "Hard examples per finalized frame since start (Sedna's uploadCloudRatio)",
                FloatGauge::default(),
            ),
            answered_in_time_ratio: register(
                registry,
                "helmetd_cloud_answered_in_time_ratio",
                "Hard examples the cloud answered in time per hard example since start",
                FloatGauge::default(),
            ),
        }
    }
}

/// The spool and the daemon's links to MQTT, the cloud and KubeEdge.
struct LinkFamilies {
    spool_depth: Gauge,
    spool_dropped: Counter,
    spool_bypassed: Counter,
    spool_lost: Counter,
    mqtt_connected: Gauge,
    cloud_admitted_per_second: FloatGauge,
    cloud_reported_queue: Gauge,
    cloud_reported_infer: FloatGauge,
    kubeedge_connected: Gauge,
}

impl LinkFamilies {
    fn register(registry: &mut Registry) -> Self {
        Self {
            spool_depth: register(
                registry,
                "helmetd_spool_depth",
                "Messages in the spool not yet acknowledged by the broker",
                Gauge::default(),
            ),
            spool_dropped: register(
                registry,
                "helmetd_spool_dropped",
                "Spool entries dropped unsent (spool full or too old)",
                Counter::default(),
            ),
            spool_bypassed: register(
                registry,
                "helmetd_spool_bypassed",
                "Messages the spool could not store (disk full), sent once as QoS 1 instead",
                Counter::default(),
            ),
            spool_lost: register(
                registry,
                "helmetd_spool_lost",
                "Messages the spool could not store while the broker was not connected",
                Counter::default(),
            ),
            mqtt_connected: register(
                registry,
                "helmetd_mqtt_connected",
                "1 while the MQTT session is up",
                Gauge::default(),
            ),
            cloud_admitted_per_second: register(
                registry,
                "helmetd_cloud_admitted_per_second",
                "Hard examples a second the cloud client sends while the cloud reports being slow; 0 while it is not pacing",
                FloatGauge::default(),
            ),
            cloud_reported_queue: register(
                registry,
                "helmetd_cloud_reported_queue",
                "Requests waiting at the cloud replica that answered last, as it reported (0 before any report)",
                Gauge::default(),
            ),
            cloud_reported_infer: register(
                registry,
                "helmetd_cloud_reported_infer_seconds",
                "Recent time of one inference at the cloud replica that answered last, as it reported (0 before any report)",
                FloatGauge::default(),
            ),
            kubeedge_connected: register(
                registry,
                "helmetd_kubeedge_connected",
                "1 while the KubeEdge node link is up and the node registered; 0 when [kubeedge] is off",
                Gauge::default(),
            ),
        }
    }
}

impl LinkFamilies {
    /// 0 for what is unknown: not pacing, or no load reported yet.
    fn set_cloud_pacing(&self, pacing: Option<&CloudPacingSnapshot>) {
        let pacing = pacing.cloned().unwrap_or_default();
        self.cloud_admitted_per_second
            .set(pacing.admitted_per_s.unwrap_or(0.0));
        self.cloud_reported_queue
            .set(i64::from(pacing.reported_queue.unwrap_or(0)));
        self.cloud_reported_infer
            .set(pacing.reported_infer_ms.unwrap_or(0.0) / 1e3);
    }
}

/// The HTTP endpoint's own connection counts, stored at each scrape.
struct ConnectionFamilies {
    open: Gauge,
    refused: Counter,
    timed_out: Counter,
}

impl ConnectionFamilies {
    fn register(registry: &mut Registry) -> Self {
        Self {
            open: register(
                registry,
                "helmetd_http_connections_open",
                "Connections open to this endpoint (at most http.max_connections)",
                Gauge::default(),
            ),
            refused: register(
                registry,
                "helmetd_http_connections_refused",
                "Connections to this endpoint closed at once: http.max_connections were open",
                Counter::default(),
            ),
            timed_out: register(
                registry,
                "helmetd_http_connections_timed_out",
                "Connections to this endpoint closed by a deadline (request head, idle keep-alive, body or an unread answer)",
                Counter::default(),
            ),
        }
    }
}

/// Registers `metric` and returns the handle to keep: a clone shares the registered values.
/// Counters are registered without `_total`: the encoder appends it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // Families are encoded in registration order, so this order is the order of /metrics.
        let cameras = CameraFamilies::register(&mut registry);
        let workers = WorkerFamilies::register(&mut registry);
        let frames = FrameCounters::register(&mut registry);
        let links = LinkFamilies::register(&mut registry);
        let connections = ConnectionFamilies::register(&mut registry);
        Self {
            registry,
            consistent: Mutex::new(()),
            latest: Mutex::new(None),
            cameras,
            workers,
            frames,
            links,
            connections,
        }
    }

    /// Applies the loop's snapshot to every family and keeps it for `/status` and `/readyz`.
    pub fn update(&self, snapshot: &Snapshot) {
        let _consistent = lock(&self.consistent);
        for camera in &snapshot.cameras {
            let labels = CameraLabels {
                camera: camera.name.clone(),
            };
            set(&self.cameras.frames_in, &labels, camera.frames_in);
            set(
                &self.cameras.frames_processed,
                &labels,
                camera.frames_processed,
            );
            set(&self.cameras.frames_dropped, &labels, camera.frames_dropped);
            set(&self.cameras.frames_still, &labels, camera.frames_still);
            set(&self.cameras.reconnects, &labels, camera.reconnects);
            self.cameras
                .up
                .get_or_create(&labels)
                .set(i64::from(camera.state == CameraState::Streaming));
            self.cameras
                .in_schedule
                .get_or_create(&labels)
                .set(i64::from(camera.in_schedule));
        }

        // Slots come and go with scaling: rebuilt, so a removed slot's series disappear.
        self.workers.cpu_cores.clear();
        self.workers.state.clear();
        self.workers.restarts.clear();
        for worker in &snapshot.workers {
            let labels = WorkerLabels {
                pool: worker.pool.clone(),
                id: worker.id,
            };
            if let Some(cores) = worker.cpu_cores {
                self.workers.cpu_cores.get_or_create(&labels).set(cores);
            }
            set(&self.workers.restarts, &labels, u64::from(worker.restarts));
            for state in WorkerState::ALL {
                let labels = WorkerStateLabels {
                    pool: worker.pool.clone(),
                    id: worker.id,
                    state: state.as_str(),
                };
                self.workers
                    .state
                    .get_or_create(&labels)
                    .set(i64::from(worker.state == state));
            }
        }
        self.workers.pool_cpu_pressure.clear();
        if let Some(pressure) = snapshot.pool_cpu_pressure {
            let pools = snapshot.workers.iter().map(|w| &w.pool);
            for pool in pools.collect::<std::collections::BTreeSet<_>>() {
                let labels = PoolLabels { pool: pool.clone() };
                self.workers
                    .pool_cpu_pressure
                    .get_or_create(&labels)
                    .set(pressure);
            }
        }

        self.workers
            .replicas_current
            .set(i64::from(snapshot.replicas.current));
        self.workers
            .replicas_desired
            .set(i64::from(snapshot.replicas.desired));
        self.workers.hpa_condition.clear();
        for condition in &snapshot.replicas.conditions {
            let labels = ConditionLabels {
                condition: condition.condition.clone(),
                status: if condition.status { "True" } else { "False" },
                reason: condition.reason.clone(),
            };
            self.workers.hpa_condition.get_or_create(&labels).set(1);
        }

        let c = &snapshot.counters;
        store(&self.frames.finalized, c.frames);
        store(&self.frames.hard_examples, c.hard);
        store(&self.frames.cloud_answered, c.cloud_answered);
        store(&self.frames.cloud_late, c.cloud_late);
        store(&self.frames.cloud_failed, c.cloud_failed);
        store(&self.frames.cloud_skipped, c.cloud_skipped);
        store(&self.frames.cloud_paced, c.cloud_paced);
        store(&self.frames.cloud_over_budget, c.cloud_over_budget);
        store(
            &self.frames.cloud_already_answered,
            c.cloud_already_answered,
        );
        store(&self.frames.cloud_off_schedule, c.cloud_off_schedule);
        store(&self.frames.alerts, c.alerts);
        store(&self.frames.finalize_dropped, c.finalize_dropped);
        store(&self.frames.output_errors, c.output_errors);
        self.frames.upload_ratio.set(c.upload_ratio());
        self.frames
            .answered_in_time_ratio
            .set(c.answered_in_time_ratio());

        let uplink = snapshot.uplink.clone().unwrap_or_default();
        self.links
            .spool_depth
            .set(i64::try_from(uplink.spool_depth).unwrap_or(i64::MAX));
        store(&self.links.spool_dropped, uplink.spool_dropped);
        store(&self.links.spool_bypassed, uplink.spool_bypassed);
        store(&self.links.spool_lost, uplink.spool_lost);
        self.links
            .mqtt_connected
            .set(i64::from(uplink.mqtt_connected));
        self.links.set_cloud_pacing(uplink.cloud_pacing.as_ref());
        self.links
            .kubeedge_connected
            .set(i64::from(snapshot.kubeedge_connected));

        *lock(&self.latest) = Some(Arc::new(snapshot.clone()));
    }

    /// One answered cloud request; called by the finalize task that waited for it.
    pub fn observe_cloud_rtt(&self, rtt: Duration) {
        self.frames.cloud_round_trip.observe(rtt.as_secs_f64());
    }

    /// The endpoint's own connection counters, stored at each scrape.
    pub fn store_connections(&self, counts: crate::http::ConnectionCounts) {
        let _consistent = lock(&self.consistent);
        self.connections
            .open
            .set(i64::try_from(counts.open).unwrap_or(i64::MAX));
        store(&self.connections.refused, counts.refused);
        store(&self.connections.timed_out, counts.timed_out);
    }

    /// The last snapshot applied; `None` before the loop's first.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        lock(&self.latest).clone()
    }

    /// Every family in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let _consistent = lock(&self.consistent);
        let mut text = String::new();
        // Writing into a String cannot fail, and every name and label here is valid.
        prometheus_text::encode(&mut text, &self.registry).expect("encoding metrics into a String");
        text
    }
}

/// Nothing panics while these locks are held; a poisoned one still guards consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters mirror totals kept elsewhere: stored, not incremented.
fn store(counter: &Counter, total: u64) {
    counter.inner().store(total, Ordering::Relaxed);
}

fn set<L>(family: &Family<L, Counter>, labels: &L, total: u64)
where
    L: Clone + std::hash::Hash + Eq,
{
    store(&family.get_or_create(labels), total);
}

/// Reading an exposition back in tests: the daemon's and the cloud's endpoints.
#[cfg(test)]
pub(crate) mod exposition {
    use prometheus_parse::{Scrape, Value};

    pub(crate) fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parsable metrics")
    }

    /// The value of the sample `name` with `labels` (others may be present).
    pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"));
        match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exposition::{scrape, value};
    use super::*;
    use crate::telemetry::snapshot::{
        CameraSnapshot, CameraState, CloudPacingSnapshot, ConditionSnapshot, CounterSnapshot,
        ReplicaSnapshot, UplinkSnapshot, WorkerSnapshot,
    };
    use prometheus_parse::Value;

    /// Every family and the kind of its samples, as a scraper reads them.
    const FAMILIES: &[(&str, &str)] = &[
        ("helmetd_camera_frames_in_total", "counter"),
        ("helmetd_camera_frames_processed_total", "counter"),
        ("helmetd_camera_frames_dropped_total", "counter"),
        ("helmetd_camera_frames_still_total", "counter"),
        ("helmetd_camera_reconnects_total", "counter"),
        ("helmetd_camera_up", "gauge"),
        ("helmetd_worker_cpu_cores", "gauge"),
        ("helmetd_worker_state", "gauge"),
        ("helmetd_worker_restarts_total", "counter"),
        ("helmetd_pool_cpu_pressure", "gauge"),
        ("helmetd_replicas_current", "gauge"),
        ("helmetd_replicas_desired", "gauge"),
        ("helmetd_hpa_condition", "gauge"),
        ("helmetd_frames_total", "counter"),
        ("helmetd_hard_examples_total", "counter"),
        ("helmetd_cloud_answered_total", "counter"),
        ("helmetd_cloud_late_total", "counter"),
        ("helmetd_cloud_failed_total", "counter"),
        ("helmetd_cloud_skipped_total", "counter"),
        ("helmetd_cloud_paced_total", "counter"),
        ("helmetd_cloud_over_budget_total", "counter"),
        ("helmetd_cloud_already_answered_total", "counter"),
        ("helmetd_cloud_off_schedule_total", "counter"),
        ("helmetd_cloud_round_trip_seconds", "histogram"),
        ("helmetd_alerts_total", "counter"),
        ("helmetd_finalize_dropped_total", "counter"),
        ("helmetd_output_errors_total", "counter"),
        ("helmetd_upload_cloud_ratio", "gauge"),
        ("helmetd_cloud_answered_in_time_ratio", "gauge"),
        ("helmetd_spool_depth", "gauge"),
        ("helmetd_spool_dropped_total", "counter"),
        ("helmetd_spool_bypassed_total", "counter"),
        ("helmetd_spool_lost_total", "counter"),
        ("helmetd_mqtt_connected", "gauge"),
        ("helmetd_cloud_admitted_per_second", "gauge"),
        ("helmetd_cloud_reported_queue", "gauge"),
        ("helmetd_cloud_reported_infer_seconds", "gauge"),
        ("helmetd_kubeedge_connected", "gauge"),
        ("helmetd_http_connections_open", "gauge"),
        ("helmetd_http_connections_refused_total", "counter"),
        ("helmetd_http_connections_timed_out_total", "counter"),
    ];

    fn sample_snapshot() -> Snapshot {
        Snapshot {
            node: "gw-1".into(),
            cameras: vec![CameraSnapshot {
                name: "gate".into(),
                state: CameraState::Streaming,
                frames_in: 250,
                frames_processed: 90,
                frames_dropped: 10,
                reconnects: 2,
                fps: 5.0,
                last_error: None,
                in_schedule: true,
                frames_still: 7,
            }],
            workers: vec![WorkerSnapshot {
                pool: "edge".into(),
                id: 0,
                pid: Some(4242),
                state: WorkerState::Ready,
                restarts: 1,
                cpu_cores: Some(0.75),
            }],
            pool_cpu_pressure: Some(0.125),
            replicas: ReplicaSnapshot {
                current: 1,
                desired: 2,
                conditions: vec![ConditionSnapshot {
                    condition: "AbleToScale".into(),
                    status: true,
                    reason: "ReadyForNewScale".into(),
                    message: String::new(),
                }],
                summary: None,
            },
            counters: CounterSnapshot {
                frames: 90,
                hard: 12,
                cloud_answered: 9,
                cloud_late: 1,
                cloud_failed: 1,
                cloud_skipped: 1,
                cloud_paced: 2,
                cloud_over_budget: 0,
                cloud_already_answered: 0,
                cloud_off_schedule: 0,
                frames_still: 7,
                alerts: 3,
                finalize_dropped: 0,
                output_errors: 0,
            },
            uplink: Some(UplinkSnapshot {
                mqtt_connected: true,
                spool_depth: 7,
                spool_dropped: 2,
                cloud_pacing: Some(CloudPacingSnapshot {
                    admitted_per_s: Some(0.4),
                    reported_queue: Some(4),
                    reported_infer_ms: Some(500.0),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram(_) => "histogram",
            Value::Summary(_) => "summary",
            Value::Untyped(_) => "untyped",
        }
    }

    #[test]
    fn every_family_is_exposed_with_its_type() {
        let metrics = Metrics::new();
        metrics.update(&sample_snapshot());
        metrics.observe_cloud_rtt(Duration::from_millis(80));
        let scrape = scrape(&metrics.encode());
        for (name, expected) in FAMILIES {
            let sample = scrape
                .samples
                .iter()
                .find(|s| s.metric == *name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(kind(&sample.value), *expected, "{name}");
        }
        let Some(Value::Histogram(buckets)) = scrape
            .samples
            .iter()
            .find(|s| s.metric == "helmetd_cloud_round_trip_seconds")
            .map(|s| &s.value)
        else {
            panic!("no histogram");
        };
        let le_100ms = buckets.iter().find(|b| b.less_than == 0.1).expect("0.1 s");
        assert_eq!(le_100ms.count, 1.0);
    }

    #[test]
    fn values_follow_the_snapshot() {
        let metrics = Metrics::new();
        let mut snapshot = sample_snapshot();
        metrics.update(&snapshot);
        let s = scrape(&metrics.encode());
        let gate = [("camera", "gate")];
        assert_eq!(value(&s, "helmetd_camera_frames_in_total", &gate), 250.0);
        assert_eq!(value(&s, "helmetd_camera_up", &gate), 1.0);
        let ready = [("pool", "edge"), ("id", "0"), ("state", "ready")];
        assert_eq!(value(&s, "helmetd_worker_state", &ready), 1.0);
        let starting = [("pool", "edge"), ("id", "0"), ("state", "starting")];
        assert_eq!(value(&s, "helmetd_worker_state", &starting), 0.0);
        assert_eq!(value(&s, "helmetd_worker_cpu_cores", &[("id", "0")]), 0.75);
        assert_eq!(value(&s, "helmetd_pool_cpu_pressure", &[]), 0.125);
        let able = [
            ("condition", "AbleToScale"),
            ("status", "True"),
            ("reason", "ReadyForNewScale"),
        ];
        assert_eq!(value(&s, "helmetd_hpa_condition", &able), 1.0);
        assert_eq!(value(&s, "helmetd_replicas_desired", &[]), 2.0);
        assert_eq!(value(&s, "helmetd_spool_depth", &[]), 7.0);
        assert_eq!(value(&s, "helmetd_mqtt_connected", &[]), 1.0);
        assert_eq!(value(&s, "helmetd_cloud_paced_total", &[]), 2.0);
        assert_eq!(value(&s, "helmetd_cloud_admitted_per_second", &[]), 0.4);
        assert_eq!(value(&s, "helmetd_cloud_reported_queue", &[]), 4.0);
        assert_eq!(value(&s, "helmetd_cloud_reported_infer_seconds", &[]), 0.5);

        // A removed worker slot and a camera gone down.
        snapshot.workers.clear();
        snapshot.cameras[0].state = CameraState::Backoff;
        snapshot.uplink = None;
        metrics.update(&snapshot);
        let text = metrics.encode();
        let s = scrape(&text);
        assert_eq!(value(&s, "helmetd_camera_up", &gate), 0.0);
        assert!(!text.contains("helmetd_worker_state{"), "{text}");
        assert_eq!(value(&s, "helmetd_mqtt_connected", &[]), 0.0);
        assert_eq!(metrics.latest().as_deref(), Some(&snapshot));
    }
}
