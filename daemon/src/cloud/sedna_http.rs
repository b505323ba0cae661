//! `helmetd cloud --sedna-http ADDR`: the big model behind Sedna's `BigModelService` HTTP API,
//! so an unmodified Sedna edge worker can use it (docs/sedna.md).
//!
//! - `GET /<job>` → `{"infos": [{"path": …, "name": …}, …]}`, the routes served.
//! - `POST /<job>/predict` with `{"data": <H×W×3 nested lists of RGB uint8>, "callback": null}`
//!   (other keys, such as the `post_process` Sedna's client sends, are ignored) →
//!   `{"result": [[xmin, ymin, xmax, ymax, score, class], …]}` in the pixels of `data`.
//!
//! Errors use FastAPI's shapes: 422 `{"detail": [{"loc", "msg", "type"}]}` for a body that is
//! not such a request, 413 beyond `sedna.max_body_mb`, 404 `{"detail": "Not Found"}`; 408 for a
//! body not complete within `sedna.body_timeout_s`, 503 while the bodies in memory are at their
//! budget.
//!
//! Connections go through [`crate::http::guard`] (`sedna.max_connections`, the head and body
//! deadlines), and a request takes its inference slot only once its whole body is in, so slow
//! clients hold a connection for at most the deadlines and never the model.
//!
//! Beyond Sedna's API, for helmetd edges (Sedna's clients neither send nor read these): every
//! answer carries the replica's load in `X-Helmetd-Queue` and `X-Helmetd-Infer-Ms`, as the MQTT
//! service's `"load"`; a request with `X-Helmetd-Wait-Ms` is refused (503, `expired`) when its
//! inference would end after the edge stops waiting, by the MQTT service's rule. A request waits
//! for the model in its handler, which hyper drops when the client closes the connection (the
//! edge's timeout does): an abandoned request leaves the line without costing an inference.
//!
//! The body is parsed straight into a flat RGB buffer by serde visitors: a 720p frame is ~13 MB
//! of JSON, and a `serde_json::Value` tree of its 2.7 M numbers would take ~100 MB.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_LENGTH};
use axum::middleware::map_response_with_state;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use helmet_pipelines::detect::Detector;
use helmet_pipelines::{Frame, still};
use http_body_util::BodyExt;
use image::RgbImage;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::service::{answered_too_late, moving_average};
use crate::http::guard::{self, ConnectionLimits, ConnectionStats};
use crate::joint::protocol::{self, CloudLoad, MAX_WAIT_MS};
use crate::joint::sedna_http::{WAIT_HEADER, insert_load};

/// Requests parsed or inferred at once; more wait with their bodies read.
const MAX_IN_FLIGHT: usize = 4;
/// Bodies are read before a request waits for the model, so what they hold in memory is bounded
/// separately: this many full bodies (`sedna.max_body_mb`), counted as bytes arrive.
const BODY_BUDGET_BODIES: usize = 4;
/// The camera name of frames built from requests (it appears in model errors).
const SOURCE: &str = "sedna-http";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SednaServerSettings {
    /// `sedna.job_name`: the routes are `/<job>` and `/<job>/predict`.
    pub job: String,
    /// `sedna.max_body_mb` in bytes.
    pub max_body_bytes: usize,
    /// `sedna.max_connections`, `sedna.header_timeout_s`, `sedna.body_timeout_s`.
    pub limits: ConnectionLimits,
}

impl SednaServerSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            job: cfg.sedna.job_name.clone(),
            max_body_bytes: usize::try_from(cfg.sedna.max_body_mb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024),
            limits: ConnectionLimits::from_sedna(&cfg.sedna),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SednaServerError {
    #[error("sedna.job_name {0:?} must be one path segment of letters, digits, '-', '_' or '.'")]
    JobName(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the Sedna HTTP server's listener has no address: {0}")]
    Address(#[source] std::io::Error),
}

struct AppState {
    settings: SednaServerSettings,
    /// Awaited in the handler, not on the inference thread: a request whose client is gone is
    /// dropped while it waits, before it costs an inference. Fair: first come, first served.
    model: Arc<tokio::sync::Mutex<Detector>>,
    in_flight: Semaphore,
    /// Bytes of request bodies in memory: [`BODY_BUDGET_BODIES`] × `max_body_bytes`.
    body_budget: Arc<Semaphore>,
    /// Requests with their whole body in that wait for the model (parsing included): the queue
    /// depth answers report.
    waiting: AtomicUsize,
    /// Recent time of one inference (letterbox and model, a moving average): a request whose
    /// edge stops waiting sooner is refused rather than run.
    recent_infer: Mutex<Duration>,
    stats: SednaStats,
}

impl AppState {
    fn recent_infer(&self) -> Duration {
        *self
            .recent_infer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How busy this replica is now, for the edges to pace themselves by.
    fn load(&self) -> CloudLoad {
        CloudLoad {
            queue: u32::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            recent_infer: self.recent_infer(),
        }
    }

    /// Refuses a request whose edge waits until `deadline` when an inference started now would
    /// end later (the MQTT service's rule).
    fn refuse_if_late(&self, deadline: Option<Instant>) -> Result<(), WaitRefusal> {
        let recent = self.recent_infer();
        if !answered_too_late(deadline, Instant::now() + recent) {
            return Ok(());
        }
        self.stats.expired.fetch_add(1, Ordering::Relaxed);
        Err(WaitRefusal::Expired {
            recent_ms: recent.as_millis(),
        })
    }
}

/// Refusals by the edge's `X-Helmetd-Wait-Ms`.
#[derive(Debug, thiserror::Error)]
enum WaitRefusal {
    #[error("{WAIT_HEADER} must be whole milliseconds within 1..={MAX_WAIT_MS}")]
    Malformed,
    #[error(
        "{}: the deadline of {WAIT_HEADER} passes before an inference could end (recent \
         inference {recent_ms} ms)",
        protocol::EXPIRED
    )]
    Expired { recent_ms: u128 },
}

impl IntoResponse for WaitRefusal {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Malformed => StatusCode::BAD_REQUEST,
            // What edges take as busy, as an MQTT "expired".
            Self::Expired { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        failure(status, &self.to_string())
    }
}

/// Predict requests since start, logged when the server stops (as the MQTT service's counters).
#[derive(Debug, Default)]
struct SednaStats {
    requests: AtomicU64,
    /// Inferences that gave boxes (the answer goes out unless the client left during it).
    answered: AtomicU64,
    /// Refused ("expired") without inference: the edge's `X-Helmetd-Wait-Ms` ends first.
    expired: AtomicU64,
    /// Dropped without inference: the connection closed while the request waited.
    abandoned: AtomicU64,
    /// Inference errors (answered 500).
    failed: AtomicU64,
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A request with its whole body in, counted in `waiting` until it gets the model or a
/// refusal. Dropped before that, hyper dropped its handler: the connection closed.
struct Queued<'a> {
    waiting: &'a AtomicUsize,
    abandoned: &'a AtomicU64,
    settled: bool,
}

impl<'a> Queued<'a> {
    fn join(state: &'a AppState) -> Self {
        Self::count_in(&state.waiting, &state.stats.abandoned)
    }

    fn count_in(waiting: &'a AtomicUsize, abandoned: &'a AtomicU64) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self {
            waiting,
            abandoned,
            settled: false,
        }
    }

    /// Out of the line, to the model or with a refusal.
    fn leave(mut self) {
        self.settled = true;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if !self.settled {
            self.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropped a Sedna request whose connection closed before inference");
        }
    }
}

/// Binds `addr` (port 0 picks a free port; the log says which).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, SednaServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SednaServerError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then finishes the requests in progress (bounded by the
/// deadlines and the inference in progress).
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: SednaServerSettings,
    detector: Detector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SednaServerError> {
    let job = settings.job.clone();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if job.is_empty() || !job.chars().all(valid) {
        return Err(SednaServerError::JobName(job));
    }
    let limits = settings.limits;
    let budget = settings
        .max_body_bytes
        .saturating_mul(BODY_BUDGET_BODIES)
        .min(Semaphore::MAX_PERMITS);
    let state = Arc::new(AppState {
        settings,
        model: Arc::new(tokio::sync::Mutex::new(detector)),
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        body_budget: Arc::new(Semaphore::new(budget)),
        waiting: AtomicUsize::new(0),
        recent_infer: Mutex::new(Duration::ZERO),
        stats: SednaStats::default(),
    });
    let router = Router::new()
        .route(&format!("/{job}"), get(info))
        .route(&format!("/{job}/predict"), post(predict))
        .fallback(not_found)
        .layer(map_response_with_state(state.clone(), with_load))
        .with_state(state.clone());
    let addr = listener.local_addr().map_err(SednaServerError::Address)?;
    tracing::info!(%addr, predict = %format!("/{job}/predict"), "serving Sedna HTTP");
    let stats = Arc::new(ConnectionStats::default());
    guard::serve(
        "sedna-http",
        listener,
        router,
        limits,
        stats.clone(),
        shutdown,
    )
    .await;
    // This server has no /metrics: its counters go to the log.
    let counts = stats.counts();
    let served = &state.stats;
    tracing::info!(
        connections_refused = counts.refused,
        connections_timed_out = counts.timed_out,
        requests = count(&served.requests),
        answered = count(&served.answered),
        expired = count(&served.expired),
        abandoned = count(&served.abandoned),
        failed = count(&served.failed),
        "Sedna HTTP stopped"
    );
    Ok(())
}

/// Every answer, refusal included, says how busy the replica is.
async fn with_load(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    insert_load(response.headers_mut(), state.load());
    response
}

/// Sedna lists its FastAPI app's routes; ours are these two (no OpenAPI pages).
async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let job = &state.settings.job;
    Json(json!({"infos": [
        {"path": format!("/{job}"), "name": "model_info"},
        {"path": format!("/{job}/predict"), "name": "predict"},
    ]}))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

async fn predict(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let deadline = match edge_wait(&headers) {
        Ok(wait) => wait.map(|wait| arrived + wait),
        Err(refusal) => return refusal.into_response(),
    };
    let limit = state.settings.max_body_bytes;
    // Refused before reading a byte when the client says how much is coming.
    if declared_length(&headers).is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    // The whole body first (under the guard's deadline): a slow client must not hold the model.
    let (bytes, _in_memory) = match read_body(body, limit, &state.body_budget).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    let received = bytes.len();
    let queued = Queued::join(&state);
    let ready = take_model(&state, bytes, deadline).await;
    queued.leave();
    let (_permit, request, model) = match ready {
        Ok(ready) => ready,
        Err(refusal) => return refusal,
    };
    let worker = state.clone();
    let job = tokio::task::spawn_blocking(move || infer(&worker, model, &request.image)).await;
    match job {
        Ok(Ok((result, infer_ms))) => {
            tracing::debug!(
                bytes = received,
                boxes = result.len(),
                infer_ms,
                "answered a Sedna request"
            );
            Json(json!({ "result": result })).into_response()
        }
        Ok(Err(message)) => {
            tracing::error!(error = %message, "inference failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("inference task failed: {e}"),
        ),
    }
}

/// The edge's wait from `X-Helmetd-Wait-Ms`; none without the header (Sedna's clients).
fn edge_wait(headers: &HeaderMap) -> Result<Option<Duration>, WaitRefusal> {
    let Some(value) = headers.get(WAIT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .and_then(protocol::checked_wait)
        .map(Some)
        .ok_or(WaitRefusal::Malformed)
}

/// The request's inference slot, its parsed body and the model, in turn; or the refusal. The
/// deadline is checked before the parse and again once the model is free, when the wait for it
/// is over. Dropped on the way (the client left), nothing more is spent on the request.
async fn take_model<'a>(
    state: &'a AppState,
    body: Vec<u8>,
    deadline: Option<Instant>,
) -> Result<
    (
        tokio::sync::SemaphorePermit<'a>,
        PredictRequest,
        OwnedMutexGuard<Detector>,
    ),
    Response,
> {
    state
        .refuse_if_late(deadline)
        .map_err(IntoResponse::into_response)?;
    let Ok(permit) = state.in_flight.acquire().await else {
        return Err(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is closing",
        ));
    };
    let received = body.len();
    let started = Instant::now();
    let parsed = tokio::task::spawn_blocking(move || parse_predict(&body)).await;
    let request = match parsed {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::warn!(bytes = received, error = %e, "refused a Sedna request");
            return Err(unprocessable(&e));
        }
        Err(e) => {
            return Err(failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("parse task failed: {e}"),
            ));
        }
    };
    let parse_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(bytes = received, parse_ms, "parsed a Sedna request");
    let model = state.model.clone().lock_owned().await;
    state
        .refuse_if_late(deadline)
        .map_err(IntoResponse::into_response)?;
    Ok((permit, request, model))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The whole body with its share of `budget` (one permit per byte), or the refusal: 413 as soon
/// as more than `limit` bytes came (chunked bodies), 408 past the body deadline, 503 when the
/// bodies in memory are at the budget (refused rather than waited for: readers waiting on each
/// other's bytes would all run into the deadline).
async fn read_body(
    mut body: Body,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Response> {
    let mut bytes = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if guard::is_body_timeout(&e) {
                closing(failure(StatusCode::REQUEST_TIMEOUT, &e.to_string()))
            } else {
                failure(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}"),
                )
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if bytes.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        let permit = u32::try_from(data.len())
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many request bodies in memory; retry later",
                )
            })?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes, held))
}

/// Tells the client the connection ends with this answer: what is left of its body is not read.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Sedna's box: `[xmin, ymin, xmax, ymax, score, class]` with an integer class.
type SednaBox = (f32, f32, f32, f32, f32, u16);

/// The blocking part, with the model held: letterbox and run it. Counted and timed here, so an
/// inference whose client left while it ran still counts.
fn infer(
    state: &AppState,
    mut model: OwnedMutexGuard<Detector>,
    image: &RgbImage,
) -> Result<(Vec<SednaBox>, f64), String> {
    let started = Instant::now();
    let (input_w, input_h) = model.input_size();
    let outcome = still::letterbox_rgb(image, input_w, input_h)
        .map_err(|reason| format!("cannot letterbox the image: {reason}"))
        .and_then(|(letterbox, pixels)| {
            let frame = Frame {
                camera: Arc::from(SOURCE),
                seq: 0,
                pts: None,
                capture_time: SystemTime::now(),
                letterbox,
                pixels,
            };
            model
                .detect(&frame)
                .map_err(|e| format!("inference failed: {e}"))
        });
    let boxes = match outcome {
        Ok(boxes) => boxes,
        Err(message) => {
            state.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(message);
        }
    };
    let took = started.elapsed();
    {
        let mut recent = state
            .recent_infer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *recent = moving_average(*recent, took);
    }
    state.stats.answered.fetch_add(1, Ordering::Relaxed);
    let result = boxes
        .iter()
        .map(|d| (d.x1, d.y1, d.x2, d.y2, d.score, d.class))
        .collect();
    Ok((result, took.as_secs_f64() * 1e3))
}

fn too_large(limit: usize) -> Response {
    let mib = limit / (1024 * 1024);
    failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {mib} MiB (sedna.max_body_mb)"),
    )
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "detail": message }))).into_response()
}

/// FastAPI's validation error shape, so Sedna-side tooling reads it as usual.
fn unprocessable(error: &BodyError) -> Response {
    let (loc, kind) = match error {
        BodyError::MissingData => (json!(["body", "data"]), "value_error.missing"),
        BodyError::Callback(_) => (json!(["body", "callback"]), "value_error"),
        BodyError::Json(_) => (json!(["body"]), "value_error"),
    };
    let detail = json!([{ "loc": loc, "msg": error.to_string(), "type": kind }]);
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "detail": detail })),
    )
        .into_response()
}

/// A predict request's body after parsing.
#[derive(Debug)]
pub struct PredictRequest {
    pub image: RgbImage,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// FastAPI's wording for a missing required field.
    #[error("field required: data")]
    MissingData,
    #[error("callback {0:?} is not registered: helmetd runs no post-process callbacks")]
    Callback(String),
    /// Not JSON, or `data` is not an H×W×3 list of integers 0–255 (with line and column).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Parses `{"data": [[[r, g, b], …], …], "callback": null, …}` into an RGB image.
pub fn parse_predict(body: &[u8]) -> Result<PredictRequest, BodyError> {
    let raw: RawBody = serde_json::from_slice(body)?;
    if let Some(callback) = raw.callback {
        // Echoed in the 422 and the log: a name, not the megabytes a body may hold.
        return Err(BodyError::Callback(callback.chars().take(80).collect()));
    }
    let image = raw.data.ok_or(BodyError::MissingData)?;
    Ok(PredictRequest { image })
}

struct RawBody {
    data: Option<RgbImage>,
    callback: Option<String>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Data,
    Callback,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a \"data\" list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody, A::Error> {
        let mut body = RawBody {
            data: None,
            callback: None,
        };
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Data => body.data = Some(map.next_value_seed(ImageSeed)?),
                Field::Callback => body.callback = map.next_value()?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(body)
    }
}

/// The largest side of an image in a request: the body limit already bounds the pixels, this
/// bounds the shape (a 1×8M-pixel strip letterboxes into nothing useful).
const MAX_SIDE: usize = crate::config::MAX_IMAGE_SIDE as usize;

/// `data`: rows of pixels of three values each, all rows equally long, into one flat buffer.
struct ImageSeed;

impl<'de> DeserializeSeed<'de> for ImageSeed {
    type Value = RgbImage;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RgbImage, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ImageSeed {
    type Value = RgbImage;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an H×W×3 list of RGB values 0-255")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut rows: A) -> Result<RgbImage, A::Error> {
        let mut pixels = Vec::new();
        let mut width = None;
        let mut height = 0usize;
        while rows
            .next_element_seed(RowSeed {
                pixels: &mut pixels,
                width: &mut width,
                row: height,
            })?
            .is_some()
        {
            height += 1;
            if height > MAX_SIDE {
                return Err(de::Error::custom(format!(
                    "data has more than {MAX_SIDE} rows"
                )));
            }
        }
        let width = width.unwrap_or(0);
        if width == 0 || height == 0 {
            return Err(de::Error::custom(format!(
                "data is an empty image ({height} rows of {width} pixels)"
            )));
        }
        let too_big = || de::Error::custom("data has more than 2^32 rows or columns");
        let (w, h) = (
            u32::try_from(width).map_err(|_| too_big())?,
            u32::try_from(height).map_err(|_| too_big())?,
        );
        RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| de::Error::custom("pixel count does not match the shape"))
    }
}

/// One row: appends its pixels and checks its length against the first row's.
struct RowSeed<'a> {
    pixels: &'a mut Vec<u8>,
    width: &'a mut Option<usize>,
    row: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} as a list of [r, g, b] pixels", self.row)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut row: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        while let Some(rgb) = row.next_element::<[u8; 3]>()? {
            self.pixels.extend_from_slice(&rgb);
            count += 1;
            if count > MAX_SIDE {
                return Err(de::Error::custom(format!(
                    "row {} has more than {MAX_SIDE} pixels",
                    self.row
                )));
            }
        }
        match *self.width {
            None => *self.width = Some(count),
            Some(width) if width != count => {
                return Err(de::Error::custom(format!(
                    "row {} has {count} pixels but row 0 has {width}",
                    self.row
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RgbImage, BodyError> {
        parse_predict(body.as_bytes()).map(|r| r.image)
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_over_the_budget_503() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(declared_length(&headers), Some(11));
        assert_eq!(declared_length(&HeaderMap::new()), None);
        let budget = Arc::new(Semaphore::new(15));
        let refusal = read_body(Body::from(vec![b' '; 11]), 10, &budget)
            .await
            .unwrap_err();
        assert_eq!(refusal.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let (body, held) = read_body(Body::from(vec![b' '; 10]), 10, &budget)
            .await
            .unwrap();
        assert_eq!(body.len(), 10);
        assert_eq!(budget.available_permits(), 5);
        // The budget is spent while the first body is held: refused, not waited for.
        let refusal = read_body(Body::from(vec![b' '; 10]), 10, &budget)
            .await
            .unwrap_err();
        assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert_eq!(budget.available_permits(), 15);
    }

    #[test]
    fn the_edges_wait_is_optional_and_checked() {
        let wait = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(WAIT_HEADER, value.parse().unwrap());
            edge_wait(&headers).map_err(|refusal| refusal.into_response().status())
        };
        assert_eq!(
            edge_wait(&HeaderMap::new()).ok(),
            Some(None),
            "Sedna's clients"
        );
        assert_eq!(wait("1000"), Ok(Some(Duration::from_secs(1))));
        assert_eq!(wait(" 1 "), Ok(Some(Duration::from_millis(1))));
        for bad in ["0", "600001", "-5", "1.5", "soon", ""] {
            assert_eq!(wait(bad), Err(StatusCode::BAD_REQUEST), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_waits_counts_as_abandoned() {
        let (waiting, abandoned) = (AtomicUsize::new(0), AtomicU64::new(0));
        let model = Arc::new(tokio::sync::Mutex::new(()));
        let busy = model.clone().lock_owned().await;
        let served = Queued::count_in(&waiting, &abandoned);
        let left = Queued::count_in(&waiting, &abandoned);
        assert_eq!(waiting.load(Ordering::Relaxed), 2);
        served.leave();
        // As hyper drops a handler when its client closes the connection.
        let wait = async {
            let _model = model.clone().lock_owned().await;
            left.leave();
        };
        let dropped = tokio::time::timeout(Duration::from_millis(10), wait).await;
        assert!(dropped.is_err(), "the model is busy");
        drop(busy);
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
        assert_eq!(abandoned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sednas_body_parses_into_flat_rgb() {
        let image = parse(
            r#"{"post_process": null, "data": [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [250, 251, 255]]], "callback": null}"#,
        )
        .unwrap();
        assert_eq!(image.dimensions(), (2, 2));
        assert_eq!(image.as_raw(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 250, 251, 255]);
    }

    #[test]
    fn non_conforming_bodies_are_refused_with_a_reason() {
        assert!(matches!(
            parse(r#"{"post_process": null}"#),
            Err(BodyError::MissingData)
        ));
        assert!(matches!(
            parse(r#"{"data": [[[1, 2, 3]]], "callback": "draw"}"#),
            Err(BodyError::Callback(name)) if name == "draw"
        ));
        for (body, says) in [
            (
                r#"{"data": [[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]]}"#,
                "row 1 has 2 pixels",
            ),
            (r#"{"data": [[[1, 2]]]}"#, "invalid length 2"),
            (r#"{"data": [[[1, 2, 3, 4]]]}"#, "line 1"),
            (r#"{"data": [[[1, 2, 256]]]}"#, "256"),
            (r#"{"data": [[[1, 2, -1]]]}"#, "-1"),
            (r#"{"data": [[[1, 2, 3.5]]]}"#, "3.5"),
            (r#"{"data": [[1, 2, 3]]}"#, "invalid type"),
            (r#"{"data": []}"#, "empty image"),
            (r#"{"data": [[]]}"#, "empty image"),
            (r#"{"data": null}"#, "invalid type: null"),
            (r#"[1, 2]"#, "invalid type"),
            (r#"{"data": [[[1, 2, 3]]"#, "EOF"),
        ] {
            let error = parse(body).expect_err(body).to_string();
            assert!(error.contains(says), "{body}: {error}");
        }
    }

    #[test]
    fn a_huge_callback_name_is_cut_before_it_is_echoed() {
        let body = format!(
            r#"{{"data": [[[1, 2, 3]]], "callback": "{}"}}"#,
            "c".repeat(100_000)
        );
        let Err(BodyError::Callback(name)) = parse(&body) else {
            panic!("not refused for its callback")
        };
        assert_eq!(name.len(), 80);
    }

    #[test]
    fn image_sides_are_bounded_while_parsing() {
        let pixels = |n: usize| vec!["[0, 0, 0]"; n].join(", ");
        let wide = format!(r#"{{"data": [[{}]]}}"#, pixels(MAX_SIDE + 1));
        let error = parse(&wide).unwrap_err().to_string();
        assert!(error.contains("more than 8192 pixels"), "{error}");
        let tall = format!(
            r#"{{"data": [{}]}}"#,
            vec!["[[0, 0, 0]]"; MAX_SIDE + 1].join(", ")
        );
        let error = parse(&tall).unwrap_err().to_string();
        assert!(error.contains("more than 8192 rows"), "{error}");
        let edge = format!(r#"{{"data": [[{}]]}}"#, pixels(MAX_SIDE));
        assert_eq!(parse(&edge).unwrap().dimensions(), (8192, 1));
    }
}
