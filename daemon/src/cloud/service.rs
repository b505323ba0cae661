//! `helmetd cloud`: the big model behind an MQTT 5 shared subscription.
//!
//! Replicas subscribe to `$share/<group>/<prefix>/hard-example`, so the broker splits the
//! requests between them and scaling is starting more replicas. A replica runs one inference at
//! a time (ONNX Runtime already spreads it over `cloud.intra_threads` cores) and keeps a short
//! queue: an edge waits about a second, so a request stuck behind several others is refused at
//! once ("overloaded") rather than answered after the edge gave up. Every refused request that
//! carries a reply address gets an `{"error": …}` answer so its edge stops waiting; so does a
//! request skipped because its deadline comes first ("expired"). Answers and refusals say how
//! busy the replica is (`"load"`: the queue and the recent inference time), so edges slow down
//! to what it keeps up with instead of taking a busy replica for a dead one.
//!
//! The queue is fair between edge nodes (the node of each request's response topic): the next
//! request is taken from the nodes in turn, and when the queue is full the one refused is the
//! oldest of the node with the most waiting. One node flooding only pushes out its own
//! requests.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use helmet_pipelines::detect::{DetectError, Detector, ModelSpec};
use helmet_pipelines::letterbox::PAD_VALUE;
use helmet_pipelines::still::{self, StillError};
use helmet_pipelines::{Detection, Detections, Frame, Letterbox};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

pub use super::metrics::ServiceStats;
use super::metrics::{self, CloudTelemetry, LoadAccount};
use super::sedna_http::{self, SednaServerSettings};
use crate::config::Config;
use crate::http::ConnectionLimits;
use crate::joint::protocol::{
    self, CloudLoad, HardExampleRequest, RejectKind, ReplyTo, RequestError,
};
use crate::systemd::Notifier;
use crate::uplink::options::{OptionsError, mqtt_options};

/// Requests waiting behind the running inference before one is refused.
const MAX_WAITING: usize = 4;
const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How long shutdown waits for the running inference.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long the last answers and the DISCONNECT get to leave.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The broker must not send us larger packets (MQTT 5 Maximum Packet Size; rumqttc would drop
/// the connection). Above [`protocol::MAX_REQUEST_BYTES`] so oversized requests still arrive
/// and are counted and answered.
const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
/// Capacity of rumqttc's request queue (answers, subscribe, disconnect).
const MQTT_QUEUE: usize = 64;
/// Publishes handed from the MQTT task to the service loop.
const INCOMING_QUEUE: usize = 64;
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Includes an empty `mqtt.url`: helmetd cloud needs a broker.
    #[error(transparent)]
    Mqtt(#[from] OptionsError),
    #[error(transparent)]
    Model(#[from] DetectError),
    #[error("the inference thread failed: {0}")]
    InferenceThread(#[from] JoinError),
    #[error("the MQTT task ended unexpectedly")]
    MqttTaskEnded,
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen for SIGTERM/SIGINT: {0}")]
    Signals(#[source] std::io::Error),
}

/// `helmetd cloud`: serves until SIGTERM or SIGINT. ONNX Runtime must be initialised.
///
/// With `sedna_http`, Sedna's HTTP API is served there too, or alone when `mqtt.url` is empty.
/// Each protocol then has its own copy of the model. With `simulate_infer` (a benchmark knob,
/// `--simulate-infer-ms`) the MQTT service loads no model: see [`Engine::Simulated`].
///
/// Under systemd (`Type=notify`) it sends `READY=1` once every model is loaded and the Sedna port
/// bound, `STATUS=` at each step, and `WATCHDOG=1` from the runtime. SIGTERM is answered at any
/// point, also while a model loads (that takes minutes on a slow CPU). With `[http] listen` set,
/// `/metrics`, `/healthz` and `/readyz` are served there from the start ([`metrics`]).
pub fn cloud_main(
    cfg: Config,
    sedna_http: Option<SocketAddr>,
    simulate_infer: Option<Duration>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        simulate_infer.is_none() || sedna_http.is_none(),
        "--simulate-infer-ms applies to the MQTT service only, not with --sedna-http"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().map_err(ServiceError::Signals)?;
        let telemetry = Arc::new(CloudTelemetry::new(!cfg.mqtt.url.is_empty()));
        if !cfg.http.listen.is_empty() {
            start_endpoint(&cfg, telemetry.clone()).await;
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stopping = telemetry.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.set_stopping();
            let _ = stop.send(true);
        });
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let systemd = Arc::new(Mutex::new(Notifier::from_env()));
        let watchdog = tokio::spawn(ping_watchdog(Arc::clone(&systemd)));
        let notify = |line: &str| lock(&systemd).status(line);

        notify("loading the big model");
        let mqtt_model = match (cfg.mqtt.url.is_empty(), simulate_infer) {
            (true, _) => None,
            (false, Some(took)) => Some(Engine::simulated(&cfg, took)),
            (false, None) => match load_until(&cfg, until_stopped(stopped.clone())).await? {
                Some((detector, model)) => Some((Engine::Model(Box::new(detector)), model)),
                None => return Ok(()),
            },
        };
        let http = match sedna_http {
            Some(addr) => {
                let listener = sedna_http::bind(addr).await?;
                let Some((detector, _)) = load_until(&cfg, until_stopped(stopped.clone())).await?
                else {
                    return Ok(());
                };
                Some((listener, detector))
            }
            None => None,
        };
        lock(&systemd).ready();
        telemetry.set_loaded();
        notify(&format!(
            "serving: {}",
            match (&mqtt_model, &http) {
                (Some(_), Some(_)) => "MQTT and Sedna HTTP",
                (Some(_), None) => "MQTT",
                _ => "Sedna HTTP",
            }
        ));
        let mqtt = async {
            match mqtt_model {
                Some(loaded) => serve_loaded(
                    &cfg,
                    loaded,
                    telemetry.clone(),
                    until_stopped(stopped.clone()),
                )
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
                None => Ok(()),
            }
        };
        let sedna = async {
            match http {
                Some((listener, detector)) => sedna_http::serve(
                    listener,
                    SednaServerSettings::from_config(&cfg),
                    detector,
                    until_stopped(stopped.clone()),
                )
                .await
                .map_err(anyhow::Error::from),
                None => Ok(()),
            }
        };
        tokio::try_join!(mqtt, sedna)?;
        lock(&systemd).stopping();
        watchdog.abort();
        Ok(())
    });
    // A model load cut short by SIGTERM still runs on a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// `[http] listen`: the endpoint from now on, while the model loads too (a liveness probe must
/// not kill a replica for loading). A port that cannot be bound is logged, not fatal: the
/// default config's address is the gateway daemon's, which may hold it, and replicas started
/// side by side on one host (`bench fleet`, the tests) share that config. In a pod the probes
/// then fail, which shows it.
async fn start_endpoint(cfg: &Config, telemetry: Arc<CloudTelemetry>) {
    match metrics::bind_endpoint(&cfg.http.listen).await {
        Ok(listener) => {
            let addr = listener
                .local_addr()
                .map_or_else(|_| cfg.http.listen.clone(), |a| a.to_string());
            tracing::info!(%addr, "metrics endpoint: /metrics /healthz /readyz");
            let limits = ConnectionLimits::from_http(&cfg.http);
            tokio::spawn(metrics::serve_endpoint(listener, limits, telemetry));
        }
        Err(e) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::error!(
                error = %e,
                cause = cause.unwrap_or_default(),
                "no metrics endpoint: serving without /metrics, /healthz and /readyz"
            );
        }
    }
}

fn lock(notifier: &Mutex<Notifier>) -> std::sync::MutexGuard<'_, Notifier> {
    notifier.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `WATCHDOG=1` while the runtime turns: inference runs on its own threads, so a ping that stops
/// means the service's loop is stuck.
async fn ping_watchdog(systemd: Arc<Mutex<Notifier>>) {
    let Some(every) = lock(&systemd).watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
    loop {
        tick.tick().await;
        lock(&systemd).watchdog_tick(Instant::now());
    }
}

/// Loads and warms the big model on a blocking thread; `None` when `stop` completes first.
async fn load_until(
    cfg: &Config,
    stop: impl Future<Output = ()>,
) -> Result<Option<(Detector, String)>, ServiceError> {
    let spec = cloud_model_spec(cfg);
    tracing::info!(model = %spec.path.display(), "loading the big model");
    let load = tokio::task::spawn_blocking(move || load_big_model(&spec));
    tokio::select! {
        loaded = load => Ok(Some(loaded??)),
        () = stop => {
            tracing::info!("stopped while loading the big model");
            Ok(None)
        }
    }
}

fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Loads the big model, connects, and answers hard examples until `shutdown` completes; then
/// refuses what is queued, finishes the running inference and disconnects.
pub async fn serve(
    cfg: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<ServiceStats, ServiceError> {
    tokio::pin!(shutdown);
    match load_until(cfg, &mut shutdown).await? {
        Some((detector, model)) => {
            // Nobody scrapes an in-process service (demo, benches): its telemetry is unread.
            let telemetry = Arc::new(CloudTelemetry::new(true));
            let engine = (Engine::Model(Box::new(detector)), model);
            serve_loaded(cfg, engine, telemetry, shutdown).await
        }
        None => Ok(ServiceStats::default()),
    }
}

/// [`serve`] with the model already loaded; the loop publishes its state to `telemetry`.
async fn serve_loaded(
    cfg: &Config,
    (engine, model): (Engine, String),
    telemetry: Arc<CloudTelemetry>,
    shutdown: impl Future<Output = ()>,
) -> Result<ServiceStats, ServiceError> {
    let replica = format!("helmetd-cloud-{}-{}", cfg.node_name(), std::process::id());
    let (mqtt, eventloop) = AsyncClient::new(service_options(cfg, &replica)?, MQTT_QUEUE);
    let filter = protocol::shared_request_filter(&cfg.cloud.share_group, &cfg.mqtt.topic_prefix);
    let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
    let driver = tokio::spawn(drive(
        eventloop,
        mqtt.clone(),
        filter.clone(),
        replica.clone(),
        incoming_tx,
        telemetry.clone(),
    ));
    tracing::info!(%replica, %model, subscription = %filter, "cloud service started");
    let service = Service {
        mqtt,
        prefix: cfg.mqtt.topic_prefix.clone(),
        filter,
        replica,
        model,
        max_image_side: cfg.cloud.max_image_side,
        waiting: FairQueue::default(),
        idle: Some(engine),
        stats: ServiceStats::default(),
        warned: [false; RejectKind::COUNT],
        recent_infer: Duration::ZERO,
        load: LoadAccount::new(Instant::now()),
        telemetry,
    };
    service.run(incoming, shutdown, driver).await
}

/// The big model, warmed up, and its file name for answers and logs.
pub(crate) fn load_big_model(spec: &ModelSpec) -> Result<(Detector, String), DetectError> {
    let model = spec.path.file_name().map_or_else(
        || spec.path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let mut detector = Detector::load(spec)?;
    warm_up(&mut detector)?;
    Ok((detector, model))
}

/// What answers a hard example.
enum Engine {
    /// Boxed: the engine moves to the inference thread and back for every job.
    Model(Box<Detector>),
    /// `--simulate-infer-ms`, for `helmetd bench fleet`: the request is decoded and letterboxed
    /// as for the model (so a bad JPEG is refused as usual), then the thread sleeps until
    /// `took` has passed since the job started, and the answer has no boxes. This measures the
    /// protocol, the broker and the scheduling without a second of CPU per request.
    Simulated { took: Duration, input: (u32, u32) },
}

impl Engine {
    /// The simulated engine at `cloud.model_input`, and the model name its answers give.
    fn simulated(cfg: &Config, took: Duration) -> (Engine, String) {
        let [h, w] = cfg.cloud.model_input;
        let name = format!("simulated-{}ms", took.as_millis());
        tracing::info!(model = %name, "no model loaded: inference is a fixed pause (benchmark knob)");
        (
            Engine::Simulated {
                took,
                input: (w, h),
            },
            name,
        )
    }

    fn input_size(&self) -> (u32, u32) {
        match self {
            Engine::Model(detector) => detector.input_size(),
            Engine::Simulated { input, .. } => *input,
        }
    }

    /// Boxes in the letterboxed frame's pixels; `started` is when the job began.
    fn detect(&mut self, frame: &Frame, started: Instant) -> Result<Detections, DetectError> {
        match self {
            Engine::Model(detector) => detector.detect(frame),
            Engine::Simulated { took, .. } => {
                std::thread::sleep(took.saturating_sub(started.elapsed()));
                Ok(Detections::new())
            }
        }
    }
}

/// One hard example between acceptance and answer.
#[derive(Debug)]
struct Job {
    reply: ReplyTo,
    request: HardExampleRequest,
    /// After this the edge no longer waits for the answer (`HardExampleRequest::usable_for`).
    deadline: Option<Instant>,
}

/// What the inference thread hands back: the engine for the next job, and the outcome.
struct Done {
    engine: Engine,
    job: Job,
    outcome: Result<(Vec<Detection>, Duration), JobError>,
}

enum JobError {
    Image(String),
    Inference(DetectError),
}

struct Service {
    mqtt: AsyncClient,
    prefix: String,
    filter: String,
    replica: String,
    model: String,
    /// `cloud.max_image_side`: checked in the JPEG header, then enforced by the decoder.
    max_image_side: u32,
    waiting: FairQueue,
    /// The engine while no inference runs; the inference thread owns it otherwise.
    idle: Option<Engine>,
    stats: ServiceStats,
    /// Kinds of refusal already logged at warn; later ones go to debug.
    warned: [bool; RejectKind::COUNT],
    /// Recent time of one inference (a moving average): a request with less time left than
    /// this would be answered after the edge stopped waiting.
    recent_infer: Duration,
    /// Waiting and running over time, for the demand metric.
    load: LoadAccount,
    /// Where the loop publishes its counters and load after every event.
    telemetry: Arc<CloudTelemetry>,
}

impl Service {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Publish>,
        shutdown: impl Future<Output = ()>,
        mut driver: JoinHandle<()>,
    ) -> Result<ServiceStats, ServiceError> {
        tokio::pin!(shutdown);
        let mut running: Option<JoinHandle<Done>> = None;
        let mut stats_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                publish = incoming.recv() => match publish {
                    Some(publish) => self.accept(publish),
                    None => return Err(ServiceError::MqttTaskEnded),
                },
                done = join(&mut running) => {
                    running = None;
                    self.finish(done?);
                }
                _ = stats_tick.tick() => self.stats.log(&self.replica, "cloud stats"),
            }
            self.start_next(&mut running);
            self.account(running.is_some());
        }

        tracing::info!("shutting down: refusing queued requests, finishing the running one");
        // Unsubscribing first lets the other replicas take new requests.
        let _ = self.mqtt.try_unsubscribe(self.filter.clone());
        while let Some(job) = self.waiting.pop() {
            self.shed(&job.reply);
        }
        self.account(running.is_some());
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while running.is_some() {
            tokio::select! {
                done = join(&mut running) => {
                    running = None;
                    self.finish(done?);
                }
                Some(publish) = incoming.recv() => self.shed_publish(&publish),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("inference still running after {SHUTDOWN_GRACE:?}; leaving it");
                    break;
                }
            }
            self.account(running.is_some());
        }
        let _ = self.mqtt.try_disconnect();
        let flushed = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                tokio::select! {
                    _ = &mut driver => break,
                    Some(publish) = incoming.recv() => self.shed_publish(&publish),
                }
            }
        })
        .await;
        if flushed.is_err() {
            tracing::warn!("broker did not take the DISCONNECT within {DISCONNECT_TIMEOUT:?}");
            driver.abort();
        }
        self.account(false);
        self.stats.log(&self.replica, "cloud service stopped");
        Ok(self.stats)
    }

    /// The load after an event (`busy`: an inference runs), and the counters with it, for
    /// `/metrics`.
    fn account(&mut self, busy: bool) {
        self.load.change(Instant::now(), self.waiting.len(), busy);
        self.telemetry
            .publish(&self.stats, self.load, self.recent_infer);
    }

    fn accept(&mut self, publish: Publish) {
        self.stats.requests += 1;
        let reply = match protocol::reply_to(&publish, &self.prefix) {
            Ok(reply) => reply,
            Err(e) => return self.reject(&e, None),
        };
        let request = match protocol::parse_request(publish, self.max_image_side) {
            Ok((request, fixes)) => {
                self.stats.edge_boxes_fixed += fixes.clipped + fixes.dropped + fixes.over_cap;
                request
            }
            Err(e) => return self.reject(&e, Some(&reply)),
        };
        let deadline = request.usable_for.map(|d| Instant::now() + d);
        if let Some(refused) = self.waiting.push(Job {
            reply,
            request,
            deadline,
        }) {
            self.stats.overloaded += 1;
            tracing::debug!(node = %refused.reply.node, "overloaded: refusing the oldest request of the busiest node");
            self.answer_error(&refused.reply, protocol::OVERLOADED);
        }
    }

    fn start_next(&mut self, running: &mut Option<JoinHandle<Done>>) {
        if running.is_some() || self.waiting.is_empty() {
            return;
        }
        let Some(engine) = self.idle.take() else {
            return;
        };
        let (job, expired) = self.waiting.pop_usable(Instant::now() + self.recent_infer);
        if !expired.is_empty() {
            self.stats.expired += expired.len() as u64;
            tracing::debug!(
                expired = expired.len(),
                "refused requests the edge would stop waiting for first"
            );
        }
        // Told, not dropped: the edge may still be waiting, and the refusal with the load is
        // how it learns this replica is busy rather than gone.
        for late in expired {
            self.answer_error(&late.reply, protocol::EXPIRED);
        }
        let Some(job) = job else {
            self.idle = Some(engine);
            return;
        };
        let max_side = self.max_image_side;
        *running = Some(tokio::task::spawn_blocking(move || {
            infer(engine, job, max_side)
        }));
    }

    fn finish(&mut self, done: Done) {
        self.idle = Some(done.engine);
        let Job { reply, request, .. } = done.job;
        match done.outcome {
            Ok((detections, took)) => {
                let ms = took.as_secs_f64() * 1e3;
                self.recent_infer = moving_average(self.recent_infer, took);
                self.stats.answered += 1;
                self.stats.infer_ms_total += ms;
                self.stats.infer_ms_max = self.stats.infer_ms_max.max(ms);
                tracing::debug!(
                    node = %request.node,
                    camera = %request.meta.camera,
                    seq = request.meta.seq,
                    edge_boxes = request.meta.edge_result.len(),
                    cloud_boxes = detections.len(),
                    infer_ms = ms,
                    "answered"
                );
                let body = protocol::loaded_result_json(
                    &detections,
                    &self.model,
                    ms,
                    &self.replica,
                    Some(self.load()),
                );
                self.publish(&reply, body);
            }
            Err(JobError::Image(reason)) => {
                self.reject(&RequestError::Decode(reason), Some(&reply))
            }
            Err(JobError::Inference(e)) => {
                self.stats.failed += 1;
                tracing::error!(error = %e, "inference failed");
                self.answer_error(&reply, "inference failed");
            }
        }
    }

    fn reject(&mut self, error: &RequestError, reply: Option<&ReplyTo>) {
        let kind = error.kind();
        self.stats.rejected[kind.index()] += 1;
        if std::mem::replace(&mut self.warned[kind.index()], true) {
            tracing::debug!(kind = kind.as_str(), %error, "refused a hard-example request");
        } else {
            tracing::warn!(
                kind = kind.as_str(),
                %error,
                "refused a hard-example request (more of this kind are logged at debug level)"
            );
        }
        if let Some(reply) = reply {
            self.answer_error(reply, &error.to_string());
        }
    }

    fn shed(&mut self, reply: &ReplyTo) {
        self.stats.shed += 1;
        self.answer_error(reply, "shutting down");
    }

    /// A request that arrived after the unsubscribe: answered at once if it can be.
    fn shed_publish(&mut self, publish: &Publish) {
        self.stats.requests += 1;
        match protocol::reply_to(publish, &self.prefix) {
            Ok(reply) => self.shed(&reply),
            Err(e) => self.reject(&e, None),
        }
    }

    fn answer_error(&mut self, reply: &ReplyTo, message: &str) {
        let body = protocol::loaded_error_json(message, &self.replica, Some(self.load()));
        self.publish(reply, body);
    }

    /// How busy this replica is now, for the edges to pace themselves by.
    fn load(&self) -> CloudLoad {
        CloudLoad {
            queue: u32::try_from(self.waiting.len()).unwrap_or(u32::MAX),
            recent_infer: self.recent_infer,
        }
    }

    fn publish(&mut self, reply: &ReplyTo, body: Vec<u8>) {
        let properties = protocol::response_properties(&reply.correlation);
        let queued = self.mqtt.try_publish_with_properties(
            reply.topic.clone(),
            QoS::AtLeastOnce,
            false,
            body,
            properties,
        );
        if let Err(e) = queued {
            // Only while the broker is away; the edge has timed out by then anyway.
            self.stats.publish_failed += 1;
            tracing::debug!(error = %e, "cannot queue an answer");
        }
    }
}

/// Waiting requests, one FIFO per edge node, served by turns.
#[derive(Debug, Default)]
struct FairQueue {
    /// Each job with its arrival number.
    by_node: HashMap<String, VecDeque<(u64, Job)>>,
    /// Nodes with waiting requests, in serving order.
    turns: VecDeque<String>,
    len: usize,
    arrivals: u64,
}

impl FairQueue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Queues `job`; when that makes more than [`MAX_WAITING`], takes back the oldest request
    /// of the node with the most waiting for the caller to refuse. Between nodes with as many,
    /// the oldest request goes, as without nodes: it is the likeliest to be too late anyway.
    fn push(&mut self, job: Job) -> Option<Job> {
        let node = job.reply.node.clone();
        let queue = self.by_node.entry(node.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(node);
        }
        queue.push_back((self.arrivals, job));
        self.arrivals += 1;
        self.len += 1;
        if self.len <= MAX_WAITING {
            return None;
        }
        let busiest = self
            .by_node
            .iter()
            .max_by_key(|(_, q)| (q.len(), q.front().map(|(n, _)| std::cmp::Reverse(*n))))
            .map(|(node, _)| node.clone())?;
        self.take_from(&busiest)
    }

    /// The next request: the oldest of the node whose turn it is.
    fn pop(&mut self) -> Option<Job> {
        let node = self.turns.pop_front()?;
        let job = self.take_from(&node);
        if self.by_node.contains_key(&node) {
            self.turns.push_back(node);
        }
        job
    }

    /// The next request whose answer can still be used at `answer_at`, and those taken out on
    /// the way because their deadline comes first.
    fn pop_usable(&mut self, answer_at: Instant) -> (Option<Job>, Vec<Job>) {
        let mut expired = Vec::new();
        while let Some(job) = self.pop() {
            if answered_too_late(job.deadline, answer_at) {
                expired.push(job);
                continue;
            }
            return (Some(job), expired);
        }
        (None, expired)
    }

    /// The oldest request of `node`, forgetting the node when it has no more.
    fn take_from(&mut self, node: &str) -> Option<Job> {
        let queue = self.by_node.get_mut(node)?;
        let (_, job) = queue.pop_front()?;
        if queue.is_empty() {
            self.by_node.remove(node);
            self.turns.retain(|n| n != node);
        }
        self.len -= 1;
        Some(job)
    }
}

/// Whether an answer ready at `answer_at` (now plus the recent inference time) comes when the
/// edge waits no longer (`deadline`): the request is then refused as expired instead of run.
/// Both protocols apply it just before an inference.
pub(super) fn answered_too_late(deadline: Option<Instant>, answer_at: Instant) -> bool {
    deadline.is_some_and(|d| d <= answer_at)
}

/// A quarter of each new inference time: follows a change of load within a few requests, and
/// one slow outlier does not close the door on every request behind it.
pub(super) fn moving_average(average: Duration, latest: Duration) -> Duration {
    if average.is_zero() {
        return latest;
    }
    (average * 3 + latest) / 4
}

/// Awaits the running inference, or never if there is none.
async fn join(running: &mut Option<JoinHandle<Done>>) -> Result<Done, JoinError> {
    match running {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// The blocking part of a job: decode, letterbox, run the model, map boxes to the original.
fn infer(mut engine: Engine, job: Job, max_side: u32) -> Done {
    let started = Instant::now();
    let (input_w, input_h) = engine.input_size();
    let outcome = letterbox_jpeg(&job.request.jpeg, input_w, input_h, max_side)
        .map_err(JobError::Image)
        .and_then(|frame| engine.detect(&frame, started).map_err(JobError::Inference))
        // The detector answers in JPEG pixels; the edge wants its camera frame's pixels.
        .map(|boxes| (job.request.meta.to_original(&boxes), started.elapsed()));
    Done {
        engine,
        job,
        outcome,
    }
}

/// The model spec of the big model from `[cloud]`: this service runs it, and `helmetd detect`
/// and the benches load the same.
pub fn cloud_model_spec(cfg: &Config) -> ModelSpec {
    let [h, w] = cfg.cloud.model_input;
    let path = crate::config::resolve_path(&cfg.cloud.model);
    let mut spec = ModelSpec::new(path, w, h, cfg.edge.model.classes.len());
    spec.score_threshold = cfg.edge.model.score_threshold;
    spec.nms_iou = cfg.edge.model.nms_iou;
    spec.intra_threads = cfg.cloud.intra_threads;
    spec
}

/// Decodes and letterboxes a JPEG held in memory, exactly as the edge letterboxes a file. The
/// header was checked against `max_side` already; the decoder enforces it again, with an
/// allocation cap, in case the JPEG declares another size further on. Public for the fuzz
/// target of hard-example requests (fuzz/).
pub fn letterbox_jpeg(
    jpeg: &[u8],
    input_w: u32,
    input_h: u32,
    max_side: u32,
) -> Result<Frame, String> {
    let label = std::path::Path::new("<hard example>");
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    // The decoder's output at its widest (RGBA) for the largest image allowed: 16 MiB at the
    // default 2048, instead of the `image` crate's 512 MiB.
    limits.max_alloc = Some(4 * u64::from(max_side) * u64::from(max_side));
    match still::decode_still(jpeg, label, "hard-example", input_w, input_h, limits) {
        Ok((frame, _original)) => Ok(frame),
        Err(StillError::Decode { source, .. }) => Err(source.to_string()),
        Err(other) => Err(other.to_string()),
    }
}

/// The first run of an ONNX Runtime session allocates and is several times slower; without
/// this each replica's first hard example would miss the edge's timeout.
fn warm_up(detector: &mut Detector) -> Result<(), DetectError> {
    let (w, h) = detector.input_size();
    let frame = Frame {
        camera: Arc::from("warm-up"),
        seq: 0,
        pts: None,
        capture_time: SystemTime::now(),
        letterbox: Letterbox::new(w, h, w, h),
        pixels: vec![PAD_VALUE; w as usize * h as usize * 3],
    };
    detector.detect(&frame).map(drop)
}

/// The shared `[mqtt]` options with this service's session.
fn service_options(cfg: &Config, client_id: &str) -> Result<MqttOptions, OptionsError> {
    let mut options = mqtt_options(&cfg.mqtt, client_id)?;
    // No session: requests queued for a dead replica would be stale when it returns; with a
    // clean start the broker gives them to the live members of the share group.
    options.set_clean_start(true);
    options.set_max_packet_size(Some(MAX_PACKET_BYTES));
    Ok(options)
}

/// Polls the MQTT connection: subscribes on every connect (clean sessions forget
/// subscriptions), forwards requests to the service loop, reconnects with backoff.
async fn drive(
    mut eventloop: EventLoop,
    mqtt: AsyncClient,
    filter: String,
    replica: String,
    incoming: mpsc::Sender<Publish>,
    telemetry: Arc<CloudTelemetry>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut outage_logged = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = RECONNECT_MIN;
                outage_logged = false;
                if let Err(e) = mqtt.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "cannot queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                telemetry.set_subscribed(granted);
                if granted {
                    tracing::info!(subscription = %filter, %replica, "ready for hard examples");
                } else {
                    tracing::error!(subscription = %filter, codes = ?ack.return_codes, "broker refused the subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if incoming.send(publish).await.is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                telemetry.set_subscribed(false);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                // A clean session: the subscription is gone with the connection.
                telemetry.set_subscribed(false);
                if incoming.is_closed() {
                    return;
                }
                if outage_logged {
                    tracing::debug!(error = %e, "MQTT connection still failing");
                } else {
                    tracing::warn!(error = %e, "MQTT connection failed; reconnecting with backoff up to {RECONNECT_MAX:?}");
                    outage_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::joint::protocol::{DEFAULT_MAX_IMAGE_SIDE, HardExampleMeta, MAX_IMAGE_SIDE};

    #[test]
    fn in_memory_jpegs_are_letterboxed_and_garbage_is_an_error() {
        let media = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        let jpeg = std::fs::read(media.join("overeasy_construction.jpg")).unwrap();
        let frame = letterbox_jpeg(&jpeg, 640, 640, DEFAULT_MAX_IMAGE_SIDE).unwrap();
        let (expected, _) =
            still::load_still(media.join("overeasy_construction.jpg"), "x", 640, 640).unwrap();
        assert_eq!(frame.letterbox, expected.letterbox);
        assert!(frame.pixels == expected.pixels);
        assert!(letterbox_jpeg(&jpeg[..jpeg.len() / 2], 640, 640, DEFAULT_MAX_IMAGE_SIDE).is_err());
        assert!(letterbox_jpeg(b"garbage", 640, 640, DEFAULT_MAX_IMAGE_SIDE).is_err());
    }

    #[test]
    fn the_decoder_enforces_the_side_limit_itself() {
        let media = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        // 3079×4619: refused by the decoder's limits, whatever the header check said.
        let jpeg = std::fs::read(media.join("overeasy_dense_street2.jpg")).unwrap();
        let error = letterbox_jpeg(&jpeg, 640, 640, DEFAULT_MAX_IMAGE_SIDE).unwrap_err();
        assert!(error.contains("limit"), "{error}");
        assert!(letterbox_jpeg(&jpeg, 640, 640, MAX_IMAGE_SIDE).is_ok());
    }

    fn job(node: &str, n: u8) -> Job {
        let reply = ReplyTo {
            topic: protocol::response_topic("p", node),
            node: node.into(),
            correlation: vec![n],
        };
        let request = HardExampleRequest {
            node: node.into(),
            meta: HardExampleMeta {
                camera: "c".into(),
                seq: u64::from(n),
                capture_time: SystemTime::UNIX_EPOCH,
                edge_result: Vec::new(),
                orig_w: 1,
                orig_h: 1,
                scale: 1.0,
            },
            jpeg: Vec::new(),
            usable_for: None,
        };
        Job {
            reply,
            request,
            deadline: None,
        }
    }

    #[test]
    fn a_simulated_inference_decodes_then_pauses_and_finds_nothing() {
        let media = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        let took = Duration::from_millis(60);
        let engine = || Engine::Simulated {
            took,
            input: (640, 640),
        };
        let mut good = job("a", 0);
        good.request.jpeg = std::fs::read(media.join("overeasy_construction.jpg")).unwrap();
        let done = infer(engine(), good, DEFAULT_MAX_IMAGE_SIDE);
        match done.outcome {
            Ok((boxes, elapsed)) => assert!(boxes.is_empty() && elapsed >= took, "{elapsed:?}"),
            Err(_) => panic!("a real JPEG must be answered"),
        }
        let mut bad = job("a", 1);
        bad.request.jpeg = b"garbage".to_vec();
        let started = Instant::now();
        let done = infer(engine(), bad, DEFAULT_MAX_IMAGE_SIDE);
        assert!(matches!(done.outcome, Err(JobError::Image(_))));
        assert!(started.elapsed() < took, "a refused JPEG is not paused for");
    }

    #[test]
    fn requests_past_their_deadline_are_dropped_before_inference() {
        let now = Instant::now();
        let mut queue = FairQueue::default();
        let mut late = job("a", 0);
        late.deadline = Some(now - Duration::from_millis(1));
        let mut due_now = job("b", 1);
        due_now.deadline = Some(now);
        let mut usable = job("a", 2);
        usable.deadline = Some(now + Duration::from_millis(500));
        for j in [late, due_now, usable, job("b", 3)] {
            assert!(queue.push(j).is_none());
        }
        let ids = |jobs: Vec<Job>| jobs.iter().map(id).collect::<Vec<_>>();
        let (next, expired) = queue.pop_usable(now);
        assert_eq!(
            (next.as_ref().map(id), ids(expired)),
            (
                Some(("a".into(), 2)),
                vec![("a".into(), 0), ("b".into(), 1)]
            ),
            "the expired are handed back to be refused"
        );
        let (next, expired) = queue.pop_usable(now + Duration::from_secs(60));
        assert_eq!(
            (next.as_ref().map(id), expired.len()),
            (Some(("b".into(), 3)), 0),
            "no deadline: always answered"
        );
        let (next, expired) = queue.pop_usable(now);
        assert!(next.is_none() && expired.is_empty());
    }

    #[test]
    fn the_expected_inference_time_follows_the_recent_ones() {
        let ms = Duration::from_millis;
        assert_eq!(moving_average(Duration::ZERO, ms(800)), ms(800));
        assert_eq!(moving_average(ms(800), ms(400)), ms(700));
        let mut average = ms(800);
        for _ in 0..20 {
            average = moving_average(average, ms(200));
        }
        assert!(average < ms(210), "{average:?}");
    }

    fn id(job: &Job) -> (String, u8) {
        (job.reply.node.clone(), job.reply.correlation[0])
    }

    #[test]
    fn a_flooding_node_only_pushes_out_its_own_requests() {
        let mut queue = FairQueue::default();
        let mut refused = Vec::new();
        for n in 0..3 {
            assert!(queue.push(job("flood", n)).is_none());
        }
        assert!(queue.push(job("calm", 0)).is_none());
        for n in 3..100 {
            refused.extend(queue.push(job("flood", n)).map(|j| id(&j)));
        }
        assert_eq!(refused.len(), 97);
        assert!(
            refused.iter().all(|(node, _)| node == "flood"),
            "{refused:?}"
        );
        // Served by turns: the flooder's oldest still waiting, then the calm node.
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).map(|j| id(&j)).collect();
        assert_eq!(
            order,
            [
                ("flood".into(), 97),
                ("calm".into(), 0),
                ("flood".into(), 98),
                ("flood".into(), 99)
            ]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn between_equal_nodes_the_oldest_request_is_refused() {
        let mut queue = FairQueue::default();
        for (n, node) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert!(queue.push(job(node, n as u8)).is_none());
        }
        let refused = queue.push(job("e", 4)).map(|j| id(&j));
        assert_eq!(refused, Some(("a".into(), 0)));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|j| id(&j).1)
            .collect();
        assert_eq!(order, [1, 2, 3, 4]);
    }

    #[test]
    fn broker_urls() {
        let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
        let overrides = [
            format!("edge.model.path={models}/helmet_yolov12m_384x640_int8qdq.onnx"),
            format!("cloud.model={models}/helmet_yolov12m_640_fp32.onnx"),
        ];
        let mut cfg =
            crate::config::load(crate::config::ConfigSource::Default, &overrides).unwrap();
        // URL parsing itself is tested with `uplink::options`.
        assert!(matches!(
            service_options(&cfg, "c"),
            Err(OptionsError::NoBroker)
        ));
        cfg.mqtt.url = "mqtt://[::1]".into();
        let options = service_options(&cfg, "c").unwrap();
        assert_eq!(options.broker_address(), ("::1".to_string(), 1883));
        assert_eq!(options.max_packet_size(), Some(MAX_PACKET_BYTES));
        assert!(options.clean_start());
    }
}
