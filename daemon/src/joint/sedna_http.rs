//! The edge side of joint inference against an unmodified Sedna `BigModelService`
//! (`[cloud] protocol = "sedna-http"`).
//!
//! Wire format as Sedna's `ModelClient` (docs/sedna.md): `POST <cloud.url>/<job>/predict` with
//! `{"data": <H×W×3 nested lists of RGB uint8>}`, answer `200 {"result": [[xmin, ymin, xmax,
//! ymax, score, class], …]}`. What we send is the letterbox content of the frame (the camera
//! frame scaled to the edge model's input), the only pixels a [`Frame`](helmet_pipelines::Frame)
//! keeps; the boxes are mapped back to camera-frame pixels before the edge uses them.
//!
//! Unlike Sedna's client (no timeout, 5 attempts 3 s apart) one `ask` is one attempt; the
//! [`JointClient`](super::JointClient) bounds it by `cloud.timeout_ms` from start to parsed
//! answer, with the same circuit breaker as for MQTT.
//!
//! Against `helmetd cloud --sedna-http` the exchange carries what the MQTT protocol carries in
//! its properties and `"load"`, in headers Sedna's own server ignores and never sends: the edge's
//! wait ([`WAIT_HEADER`]) so the cloud does not run a request the edge no longer waits for, and
//! the replica's load ([`QUEUE_HEADER`], [`INFER_MS_HEADER`]) on every answer and refusal, read
//! into the same [`CloudLoad`] the pacer gets from an MQTT answer.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use helmet_pipelines::Detection;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use image::RgbImage;
use serde::Deserialize;

use super::protocol::{
    BoxFixes, CloudLoad, HardExampleMeta, MAX_WAIT_MS, checked_boxes, detection_from_sedna,
};
use super::{AskError, BigModel, Reply};
use crate::sedna::post::{PostError, post_json};

/// Request header: how long the edge still waits for this answer, in whole milliseconds.
pub const WAIT_HEADER: &str = "x-helmetd-wait-ms";
/// Response header: requests waiting for the replica's model.
pub const QUEUE_HEADER: &str = "x-helmetd-queue";
/// Response header: the replica's recent time for one inference, in milliseconds.
pub const INFER_MS_HEADER: &str = "x-helmetd-infer-ms";

/// 300 boxes of six numbers are ~20 KB; a body beyond this is not an answer to us.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How much of an error body goes into the error message.
const ERROR_BODY_CHARS: usize = 200;

/// `cloud.url` cannot be used for Sedna HTTP.
#[derive(Debug, thiserror::Error)]
#[error("cloud.url {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Why one request failed (a timeout is not an error: it is
/// [`CloudAnswer::Late`](super::CloudAnswer::Late)).
#[derive(Debug, thiserror::Error)]
pub enum SednaHttpError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {authority} failed: {source}")]
    Http {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{authority} sent more than {MAX_RESPONSE_BYTES} bytes or broke off the body")]
    Body { authority: String },
    #[error("{authority} answered {status}: {body}")]
    Status {
        authority: String,
        status: StatusCode,
        body: String,
        /// The load the refusal reported (`helmetd cloud --sedna-http` does, Sedna does not).
        load: Option<CloudLoad>,
    },
    #[error("unreadable answer from {authority}: {reason}")]
    BadResponse { authority: String, reason: String },
}

impl SednaHttpError {
    /// 503 and 429 say the service is there but busy (`helmetd cloud --sedna-http` answers 503
    /// while the bodies in memory are at their budget, and for a request it could not answer
    /// before the edge's wait ends): slow down rather than back off.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::Status { status, .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::TOO_MANY_REQUESTS
        )
    }

    /// The load a refusal reported.
    pub fn load(&self) -> Option<CloudLoad> {
        match self {
            Self::Status { load, .. } => *load,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SednaHttpSettings {
    /// `cloud.url`, e.g. `http://10.0.0.5:5000`.
    pub base_url: String,
    /// `sedna.job_name`.
    pub job: String,
}

impl SednaHttpSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            base_url: cfg.cloud.url.clone(),
            job: cfg.sedna.job_name.clone(),
        }
    }
}

pub struct SednaHttpClient {
    /// `host:port`, what we connect to and send as `Host`.
    authority: String,
    /// `/<job>/predict` under the base URL's path.
    path: String,
    /// How long the edge waits for an answer, told to the cloud as [`WAIT_HEADER`].
    wait: Option<Duration>,
}

/// A successful exchange: the boxes in the pixels of the image sent, what their check repaired,
/// and the load the cloud reported.
type Answered = (Vec<Detection>, BoxFixes, Option<CloudLoad>);

impl SednaHttpClient {
    pub fn new(settings: &SednaHttpSettings) -> Result<Self, UrlError> {
        let error = |reason: &str| UrlError {
            url: settings.base_url.clone(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(&settings.base_url).map_err(|e| error(&e.to_string()))?;
        if url.scheme() != "http" {
            // Sedna's BigModelService serves plain HTTP only.
            return Err(error("only http:// is supported for Sedna HTTP"));
        }
        let host = url.host_str().ok_or_else(|| error("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        if settings.job.is_empty() || settings.job.contains(['/', '?', '#']) {
            return Err(error("sedna.job_name must be one non-empty path segment"));
        }
        Ok(Self {
            authority: format!("{host}:{port}"),
            path: format!(
                "{}/{}/predict",
                url.path().trim_end_matches('/'),
                settings.job
            ),
            wait: None,
        })
    }

    /// Tells the cloud in every request that the edge waits `wait` (the guard's timeout) from
    /// the start of the request: `helmetd cloud` then refuses rather than runs what it could
    /// not answer in time.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The URL requests go to, for logs.
    pub fn predict_url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// Sends `image` (the letterbox content of the frame `meta` describes) and returns the big
    /// model's boxes in camera-frame pixels.
    async fn request(&self, image: &RgbImage, meta: &HardExampleMeta) -> Result<Reply, AskError> {
        let started = Instant::now();
        let body = predict_body(image);
        let mut headers = HeaderMap::new();
        if let Some(wait) = self.wait {
            // What building the body took is no longer waited for.
            let left = wait.saturating_sub(started.elapsed()).as_millis();
            let ms = u64::try_from(left)
                .unwrap_or(MAX_WAIT_MS)
                .clamp(1, MAX_WAIT_MS);
            headers.insert(HeaderName::from_static(WAIT_HEADER), HeaderValue::from(ms));
        }
        let (boxes, fixes, load) = self
            .exchange(headers, body, image.width(), image.height())
            .await?;
        Ok(Reply {
            boxes: meta.to_original(&boxes),
            fixes,
            source: self.authority.clone(),
            // Sedna's own server reports none: the guard then paces by the round trips it sees.
            load,
        })
    }

    /// One request on a fresh connection: a hard example is rare and megabytes large, so a
    /// kept-alive connection would save little and add a stale-connection failure mode.
    async fn exchange(
        &self,
        headers: HeaderMap,
        body: Bytes,
        image_w: u32,
        image_h: u32,
    ) -> Result<Answered, SednaHttpError> {
        let authority = &self.authority;
        let (status, answer_headers, body) =
            post_json(authority, &self.path, headers, body, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| match e {
                    PostError::Connect(source) => SednaHttpError::Connect {
                        authority: authority.clone(),
                        source,
                    },
                    PostError::Http(source) => SednaHttpError::Http {
                        authority: authority.clone(),
                        source,
                    },
                    PostError::Request(e) => SednaHttpError::BadResponse {
                        authority: authority.clone(),
                        reason: format!("cannot build the request: {e}"),
                    },
                    PostError::Body => SednaHttpError::Body {
                        authority: authority.clone(),
                    },
                })?;
        let bad = |reason| SednaHttpError::BadResponse {
            authority: authority.clone(),
            reason,
        };
        let load = load_from_headers(&answer_headers).map_err(bad)?;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(SednaHttpError::Status {
                authority: authority.clone(),
                status,
                body: text.trim().chars().take(ERROR_BODY_CHARS).collect(),
                load,
            });
        }
        let (boxes, fixes) = parse_result(&body, image_w, image_h).map_err(bad)?;
        Ok((boxes, fixes, load))
    }
}

/// Writes `load` as [`QUEUE_HEADER`] and [`INFER_MS_HEADER`] (the server's side).
pub fn insert_load(headers: &mut HeaderMap, load: CloudLoad) {
    let (queue, infer_ms) = load.to_wire();
    // A finite number prints as digits, '.' and '-': always a header value.
    let Ok(infer_ms) = HeaderValue::try_from(infer_ms.to_string()) else {
        return;
    };
    headers.insert(
        HeaderName::from_static(QUEUE_HEADER),
        HeaderValue::from(queue),
    );
    headers.insert(HeaderName::from_static(INFER_MS_HEADER), infer_ms);
}

/// The load an answer's headers report: none from a server that reports none (Sedna's), an
/// error for headers that are not a load (one without the other, not numbers, out of the range
/// an MQTT answer's `"load"` must be in).
pub fn load_from_headers(headers: &HeaderMap) -> Result<Option<CloudLoad>, String> {
    match (headers.get(QUEUE_HEADER), headers.get(INFER_MS_HEADER)) {
        (None, None) => Ok(None),
        (Some(queue), Some(infer_ms)) => {
            let load = CloudLoad::from_wire(
                header_number(QUEUE_HEADER, queue)?,
                header_number(INFER_MS_HEADER, infer_ms)?,
            );
            load.map(Some).map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "{QUEUE_HEADER} and {INFER_MS_HEADER} come together or not at all"
        )),
    }
}

fn header_number<T: std::str::FromStr>(name: &str, value: &HeaderValue) -> Result<T, String> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            let shown: String = String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(40)
                .collect();
            format!("{name} {shown:?} is not a number")
        })
}

impl BigModel for SednaHttpClient {
    fn ask<'a>(
        &'a self,
        image: &'a RgbImage,
        meta: &'a HardExampleMeta,
    ) -> BoxFuture<'a, Result<Reply, AskError>> {
        Box::pin(self.request(image, meta))
    }
}

/// Sedna's request body for an RGB image: `{"data":[[[r,g,b],…],…]}`, compact (Python's
/// `json.dumps` adds a space after every comma; the receiving FastAPI does not care).
///
/// Written by hand, a pixel at a time from a digit table: serde_json would visit 3·W·H values
/// through the generic serializer, and this is on the path of every hard frame.
pub fn predict_body(image: &RgbImage) -> Bytes {
    let (w, h) = (image.width() as usize, image.height() as usize);
    // At most "[255,255,255]," per pixel and "[]," per row.
    let mut out = Vec::with_capacity(16 + w * h * 14 + h * 3);
    out.extend_from_slice(b"{\"data\":[");
    for (y, row) in image.as_raw().chunks_exact(w * 3).enumerate() {
        if y > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (x, px) in row.chunks_exact(3).enumerate() {
            if x > 0 {
                out.push(b',');
            }
            push_pixel(&mut out, px);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// The decimal digits of every byte value, left-aligned, with their count.
static DIGITS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut v = 0;
    while v < 256 {
        let (h, t, o) = ((v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8);
        table[v] = match v {
            0..=9 => ([b'0' + o, 0, 0], 1),
            10..=99 => ([b'0' + t, b'0' + o, 0], 2),
            _ => ([b'0' + h, b'0' + t, b'0' + o], 3),
        };
        v += 1;
    }
    table
};

/// `[r,g,b]`, assembled on the stack and appended at once.
fn push_pixel(out: &mut Vec<u8>, px: &[u8]) {
    let mut buf = [0u8; 16];
    buf[0] = b'[';
    let mut n = 1;
    for (k, &v) in px.iter().enumerate() {
        if k > 0 {
            buf[n] = b',';
            n += 1;
        }
        let (digits, len) = DIGITS[usize::from(v)];
        // Three bytes always fit (n ≤ 9 here); only `len` of them are kept.
        buf[n..n + 3].copy_from_slice(&digits);
        n += usize::from(len);
    }
    buf[n] = b']';
    out.extend_from_slice(&buf[..=n]);
}

#[derive(Deserialize)]
struct PredictResult {
    result: Vec<[f64; 6]>,
}

/// `{"result": [[xmin, ymin, xmax, ymax, score, class], …]}` in the pixels of the
/// `image_w × image_h` image sent, made safe by [`checked_boxes`] (what it repaired is returned
/// for counting). Extra keys are ignored; a class may come as `2` or `2.0` (Sedna passes the
/// model's dtype).
pub fn parse_result(
    body: &[u8],
    image_w: u32,
    image_h: u32,
) -> Result<(Vec<Detection>, BoxFixes), String> {
    let parsed: PredictResult = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let boxes = parsed
        .result
        .iter()
        .enumerate()
        .map(|(i, b)| detection_from_sedna(b).map_err(|e| format!("box {i} {b:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(checked_boxes(boxes, image_w, image_h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queue: u32, infer_ms: u64) -> CloudLoad {
        CloudLoad {
            queue,
            recent_infer: Duration::from_millis(infer_ms),
        }
    }

    #[test]
    fn the_load_round_trips_through_headers_and_junk_is_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(load_from_headers(&headers), Ok(None), "Sedna's own server");
        insert_load(&mut headers, load(3, 812));
        assert_eq!(headers[QUEUE_HEADER], "3");
        assert_eq!(headers[INFER_MS_HEADER], "812");
        assert_eq!(load_from_headers(&headers), Ok(Some(load(3, 812))));
        let mut fractional = HeaderMap::new();
        insert_load(
            &mut fractional,
            CloudLoad {
                queue: 0,
                recent_infer: Duration::from_micros(1_550),
            },
        );
        assert_eq!(fractional[INFER_MS_HEADER], "1.6");

        for (queue, infer_ms, says) in [
            (Some("3"), None, "come together"),
            (None, Some("812"), "come together"),
            (Some("-1"), Some("812"), "not a number"),
            (Some("three"), Some("812"), "not a number"),
            (Some("3"), Some("NaN"), "not within"),
            (Some("3"), Some("-5"), "not within"),
            (Some("3"), Some("1e99"), "not within"),
            (Some("100001"), Some("812"), "exceeds"),
        ] {
            let mut headers = HeaderMap::new();
            for (name, value) in [(QUEUE_HEADER, queue), (INFER_MS_HEADER, infer_ms)] {
                if let Some(value) = value {
                    headers.insert(name, HeaderValue::from_static(value));
                }
            }
            let error = load_from_headers(&headers).expect_err(says);
            assert!(error.contains(says), "{queue:?} {infer_ms:?}: {error}");
        }
        let mut binary = HeaderMap::new();
        binary.insert(QUEUE_HEADER, HeaderValue::from_bytes(&[0xff; 100]).unwrap());
        binary.insert(INFER_MS_HEADER, HeaderValue::from_static("1"));
        let error = load_from_headers(&binary).unwrap_err();
        assert!(error.len() < 200, "the value is cut: {error}");
    }

    #[test]
    fn a_refusal_keeps_its_load() {
        let refusal = SednaHttpError::Status {
            authority: "cloud:5000".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
            load: Some(load(2, 500)),
        };
        assert!(refusal.is_busy());
        assert_eq!(refusal.load(), Some(load(2, 500)));
    }

    fn settings(url: &str, job: &str) -> SednaHttpSettings {
        SednaHttpSettings {
            base_url: url.into(),
            job: job.into(),
        }
    }

    #[test]
    fn urls() {
        let client = SednaHttpClient::new(&settings("http://10.0.0.5:5000", "sedna")).unwrap();
        assert_eq!(client.predict_url(), "http://10.0.0.5:5000/sedna/predict");
        let client = SednaHttpClient::new(&settings("http://cloud/base/", "ji")).unwrap();
        assert_eq!(client.predict_url(), "http://cloud:80/base/ji/predict");
        let client = SednaHttpClient::new(&settings("http://[::1]:5000", "s")).unwrap();
        assert_eq!(client.predict_url(), "http://[::1]:5000/s/predict");
        assert!(SednaHttpClient::new(&settings("https://cloud:5000", "s")).is_err());
        assert!(SednaHttpClient::new(&settings("http://cloud:5000", "a/b")).is_err());
        assert!(SednaHttpClient::new(&settings("not a url", "s")).is_err());
    }

    #[test]
    fn the_body_is_sednas_nested_lists() {
        let image =
            RgbImage::from_raw(2, 2, vec![0, 9, 10, 99, 100, 255, 1, 2, 3, 4, 5, 6]).unwrap();
        let body = predict_body(&image);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"data":[[[0,9,10],[99,100,255]],[[1,2,3],[4,5,6]]]}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["data"][1][0], serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn results_parse_with_int_or_float_classes_and_junk_is_refused() {
        let (boxes, fixes) = parse_result(
            br#"{"result": [[1, 2.5, 30, 40, 0.9, 2], [0, 0, 1, 1, 0.5, 1.0]], "x": 1}"#,
            640,
            360,
        )
        .unwrap();
        assert!(fixes.is_empty());
        assert_eq!(
            boxes[0],
            Detection {
                x1: 1.0,
                y1: 2.5,
                x2: 30.0,
                y2: 40.0,
                score: 0.9,
                class: 2
            }
        );
        assert_eq!(boxes[1].class, 1);
        assert_eq!(parse_result(br#"{"result": []}"#, 640, 360).unwrap().0, []);
        for junk in [
            &br#"{"detail": "x"}"#[..],
            br#"{"result": [[1, 2, 3]]}"#,
            br#"{"result": [[1, 2, 3, 4, 0.5, 1.5]]}"#,
            br#"{"result": [[1, 2, 3, 4, 0.5, -1]]}"#,
            br#"{"result": [[1, 2, 3, 4, "a", 1]]}"#,
            b"<html>",
        ] {
            assert!(
                parse_result(junk, 640, 360).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn absurd_results_are_clipped_and_capped() {
        let mut body = String::from(r#"{"result": [[-1e39, -5, 1e39, 1e300, 0.99, 1]"#);
        for _ in 0..10_000 {
            body.push_str(", [1, 1, 2, 2, 0.5, 0]");
        }
        body.push_str("]}");
        let (boxes, fixes) = parse_result(body.as_bytes(), 640, 360).unwrap();
        assert_eq!(boxes.len(), 300);
        assert_eq!(
            boxes[0],
            Detection {
                x1: 0.0,
                y1: 0.0,
                x2: 640.0,
                y2: 360.0,
                score: 0.99,
                class: 1
            }
        );
        assert_eq!((fixes.clipped, fixes.over_cap), (1, 10_001 - 300));
    }
}
