//! `helmetd cloud --sedna-http ADDR`: the big model behind Sedna's `BigModelService` HTTP API,
//! so an unmodified Sedna edge worker can use it (docs/sedna.md).
//!
//! - `GET /<job>` → `{"infos": [{"path": …, "name": …}, …]}`, the routes served.
//! - `POST /<job>/predict` with `{"data": <H×W×3 nested lists of RGB uint8>, "callback": null}`
//!   (other keys, such as the `post_process` Sedna's client sends, are ignored) →
//!   `{"result": [[xmin, ymin, xmax, ymax, score, class], …]}` in the pixels of `data`.
//!
//! Errors use FastAPI's shapes: 422 `{"detail": [{"loc", "msg", "type"}]}` for a body that is
//! not such a request, 413 beyond `sedna.max_body_mb`, 404 `{"detail": "Not Found"}`.
//!
//! The body is parsed straight into a flat RGB buffer by serde visitors: a 720p frame is ~13 MB
//! of JSON, and a `serde_json::Value` tree of its 2.7 M numbers would take ~100 MB.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_LENGTH};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use helmet_pipelines::detect::Detector;
use helmet_pipelines::{Frame, still};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use image::RgbImage;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::sync::Semaphore;

/// Requests whose bodies may be in memory at once; more wait, unread, in the kernel's buffers.
const MAX_IN_FLIGHT: usize = 4;
/// The camera name of frames built from requests (it appears in model errors).
const SOURCE: &str = "sedna-http";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SednaServerSettings {
    /// `sedna.job_name`: the routes are `/<job>` and `/<job>/predict`.
    pub job: String,
    /// `sedna.max_body_mb` in bytes.
    pub max_body_bytes: usize,
}

impl SednaServerSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            job: cfg.sedna.job_name.clone(),
            max_body_bytes: usize::try_from(cfg.sedna.max_body_mb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024),
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
    #[error("the Sedna HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

struct AppState {
    settings: SednaServerSettings,
    model: Mutex<Detector>,
    in_flight: Semaphore,
}

/// Binds `addr` (port 0 picks a free port; the log says which).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, SednaServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SednaServerError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then finishes the requests in progress.
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
    let state = Arc::new(AppState {
        settings,
        model: Mutex::new(detector),
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
    });
    let router = Router::new()
        .route(&format!("/{job}"), get(info))
        .route(&format!("/{job}/predict"), post(predict))
        .fallback(not_found)
        .with_state(state);
    let addr = listener.local_addr().map_err(SednaServerError::Serve)?;
    tracing::info!(%addr, predict = %format!("/{job}/predict"), "serving Sedna HTTP");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(SednaServerError::Serve)
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
    let limit = state.settings.max_body_bytes;
    // Refused before reading a byte when the client says how much is coming.
    if declared_length(&headers).is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let Ok(_permit) = state.in_flight.acquire().await else {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "the server is closing");
    };
    let bytes = match read_body(body, limit).await {
        Ok(bytes) => bytes,
        Err(refusal) => return refusal,
    };
    let received = bytes.len();
    let worker = state.clone();
    let job = tokio::task::spawn_blocking(move || answer(&worker, &bytes)).await;
    match job {
        Ok(Ok((result, timing))) => {
            tracing::debug!(
                bytes = received,
                boxes = result.len(),
                parse_ms = timing.parse_ms,
                infer_ms = timing.infer_ms,
                "answered a Sedna request"
            );
            Json(json!({ "result": result })).into_response()
        }
        Ok(Err(Refusal::Body(e))) => {
            tracing::warn!(bytes = received, error = %e, "refused a Sedna request");
            unprocessable(&e)
        }
        Ok(Err(Refusal::Model(message))) => {
            tracing::error!(error = %message, "inference failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("inference task failed: {e}"),
        ),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The whole body, or 413 as soon as more than `limit` bytes came (chunked bodies).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(failure(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {e}"),
        )),
    }
}

/// Sedna's box: `[xmin, ymin, xmax, ymax, score, class]` with an integer class.
type SednaBox = (f32, f32, f32, f32, f32, u16);

struct Timing {
    parse_ms: f64,
    infer_ms: f64,
}

enum Refusal {
    Body(BodyError),
    Model(String),
}

/// The blocking part: parse, letterbox, run the model (one request at a time).
fn answer(state: &AppState, body: &[u8]) -> Result<(Vec<SednaBox>, Timing), Refusal> {
    let started = Instant::now();
    let request = parse_predict(body).map_err(Refusal::Body)?;
    let parse_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut model = state.model.lock().unwrap_or_else(PoisonError::into_inner);
    let (input_w, input_h) = model.input_size();
    let (letterbox, pixels) = still::letterbox_rgb(&request.image, input_w, input_h)
        .map_err(|reason| Refusal::Model(format!("cannot letterbox the image: {reason}")))?;
    let frame = Frame {
        camera: Arc::from(SOURCE),
        seq: 0,
        pts: None,
        capture_time: SystemTime::now(),
        letterbox,
        pixels,
    };
    let infer_started = Instant::now();
    let boxes = model
        .detect(&frame)
        .map_err(|e| Refusal::Model(format!("inference failed: {e}")))?;
    let result = boxes
        .iter()
        .map(|d| (d.x1, d.y1, d.x2, d.y2, d.score, d.class))
        .collect();
    let timing = Timing {
        parse_ms,
        infer_ms: infer_started.elapsed().as_secs_f64() * 1e3,
    };
    Ok((result, timing))
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
        return Err(BodyError::Callback(callback));
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
    async fn bodies_over_the_limit_are_413() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(declared_length(&headers), Some(11));
        assert_eq!(declared_length(&HeaderMap::new()), None);
        let refusal = read_body(Body::from(vec![b' '; 11]), 10).await.unwrap_err();
        assert_eq!(refusal.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = read_body(Body::from(vec![b' '; 10]), 10).await.unwrap();
        assert_eq!(body.len(), 10);
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
}
