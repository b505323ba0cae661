//! The hard-example request/response between the edge and `helmetd cloud`, on MQTT 5.
//!
//! Request: the JPEG itself is the payload of `<prefix>/hard-example` (Sedna posted the decoded
//! frame as a JSON list of pixel values, ~5× the raw size). Everything else rides in MQTT 5
//! properties so the payload stays a plain JPEG anyone can look at:
//!
//! | property | value |
//! |---|---|
//! | content type | `image/jpeg` |
//! | response topic | `<prefix>/<node>/cloud-result` |
//! | correlation data | 16 random bytes, fresh for every request: unguessable from earlier ones |
//! | message expiry | the edge's timeout rounded up to seconds: later answers are useless |
//! | user `node`, `camera`, `seq` | where the frame comes from |
//! | user `capture_time` | RFC 3339 with milliseconds, UTC |
//! | user `edge_result` | the edge model's boxes, `[[x1,y1,x2,y2,score,class],…]` |
//! | user `orig_w`, `orig_h` | size of the camera frame the boxes refer to |
//! | user `scale` | JPEG pixels per original pixel (the edge sends the letterbox content) |
//!
//! Response on the request's response topic, with the same correlation data and content type
//! `application/json`: `{"result":[[x1,y1,x2,y2,score,class],…],"model":…,"infer_ms":…,
//! "replica":…,"load":{"queue":…,"infer_ms":…}}` with boxes in original-frame pixels, or
//! `{"error":…,"replica":…,"load":…}` when the request cannot be served, so the edge stops
//! waiting at once. `"overloaded"` (the queue is full) and `"expired"` (the edge's deadline comes
//! before an inference could end) say the replica is busy, not broken.
//!
//! `load` is how busy the answering replica is: requests waiting behind its running inference,
//! and its recent time for one inference (a moving average). The edge paces itself by it
//! ([`super::pacer`]). It is optional both ways: older edges ignore unknown fields, and answers
//! without it (older clouds) are read as before.

use std::time::{Duration, SystemTime};

use helmet_pipelines::letterbox::Letterbox;
use helmet_pipelines::{Detection, Frame, MAX_DETECTIONS};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::{Deserialize, Serialize};

pub const JPEG_CONTENT_TYPE: &str = "image/jpeg";
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// A 640×640 letterbox content image at quality 90 is 50–150 KB; 4 MiB leaves room for edges
/// that send whole 4K frames and still bounds what one request can make the cloud decode.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// The ceiling of `cloud.max_image_side` and of any image side a peer may declare.
pub use crate::config::MAX_IMAGE_SIDE;
/// The default of `cloud.max_image_side`: about three times the largest letterbox content an
/// edge sends (640) and above a whole 1080p frame (1920×1080) from a non-helmetd edge, while a
/// decoded 2048² image stays at 12 MiB.
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 2048;
/// Camera frames larger than 16384 px a side do not exist; `orig_w`/`orig_h` beyond are lies.
const MAX_ORIG_SIDE: u32 = 16384;
/// JPEG pixels per original pixel: the edge sends the frame shrunk (≤ 1); ×64 either way is
/// already absurd.
const SCALE_RANGE: std::ops::RangeInclusive<f64> = (1.0 / 64.0)..=64.0;
/// An honest request carries 8 user properties; rumqttc would take as many as the packet holds.
const MAX_USER_PROPERTIES: usize = 16;
/// All user property keys and values together: 300 edge boxes at ~40 bytes each plus the rest.
const MAX_USER_PROPERTY_BYTES: usize = 32 * 1024;
/// Node and camera names: ours are config names, far shorter.
const MAX_NAME_CHARS: usize = 128;
/// The edge's MQTT session must accept packets this large (rumqttc's default is 10 KiB):
/// 300 boxes at ~45 bytes each plus the envelope.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Correlation data is echoed back verbatim; more than this is not an id.
pub const MAX_CORRELATION_BYTES: usize = 64;
/// Strings a peer puts in an answer (model, replica, error) are cut to this many characters
/// before they reach logs and errors.
const MAX_ANSWER_TEXT_CHARS: usize = 200;
/// `infer_ms` beyond an hour is not a measurement.
const MAX_INFER_MS: f64 = 3_600_000.0;
/// The JPEG size must match `orig × scale` within this many pixels (rounding of the content).
const SIZE_TOLERANCE_PX: f64 = 2.0;
/// A replica's queue is a handful of requests (`helmetd cloud` keeps 4); beyond this a reported
/// depth is not a measurement.
pub const MAX_REPORTED_QUEUE: u32 = 100_000;
/// The refusal of a replica whose queue is full.
pub const OVERLOADED: &str = "overloaded";
/// The refusal of a request whose deadline comes before the replica could answer it.
pub const EXPIRED: &str = "expired";

/// Whether a refusal's message says the replica is busy (slow down) rather than unable to serve
/// the request (back off).
pub fn is_busy_refusal(message: &str) -> bool {
    message == OVERLOADED || message == EXPIRED
}

/// How busy a cloud replica is, as its answers and refusals report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudLoad {
    /// Requests waiting behind the running inference when the replica answered.
    pub queue: u32,
    /// The replica's recent time for one inference (a moving average).
    pub recent_infer: Duration,
}

impl CloudLoad {
    /// The queue and the inference time in ms (to 0.1 ms) as a cloud reports them: in the
    /// `"load"` of an MQTT answer, or in Sedna HTTP's response headers.
    pub fn to_wire(self) -> (u32, f64) {
        let wire = WireLoad::from_load(self);
        (wire.queue, wire.infer_ms)
    }

    /// A reported load, checked as the `"load"` of an MQTT answer is.
    pub fn from_wire(queue: u32, infer_ms: f64) -> Result<Self, LoadError> {
        WireLoad { queue, infer_ms }.checked()
    }

    /// How long a request sent now would take to be answered: everyone waiting first, then its
    /// own inference. Transfer times are not included.
    pub fn expected_wait(&self) -> Duration {
        self.recent_infer
            .saturating_mul(self.queue.saturating_add(1))
    }
}

/// `<prefix>/hard-example`
pub fn request_topic(prefix: &str) -> String {
    format!("{prefix}/hard-example")
}

/// `<prefix>/<node>/cloud-result`
pub fn response_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{node}/cloud-result")
}

/// `$share/<group>/<prefix>/hard-example`: replicas in one group split the requests.
pub fn shared_request_filter(group: &str, prefix: &str) -> String {
    format!("$share/{group}/{}", request_topic(prefix))
}

/// The node of `topic` if it is some node's result topic under `prefix`. The cloud answers only
/// there, so a request cannot make it publish onto alert or status topics.
fn response_topic_node<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    topic
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix('/'))
        .and_then(|t| t.strip_suffix("/cloud-result"))
        .filter(|node| {
            !node.is_empty()
                && node.chars().count() <= MAX_NAME_CHARS
                && !node.contains(['/', '+', '#', '\0'])
        })
}

/// Matches an answer to its question.
pub type CorrelationId = [u8; 16];

/// A fresh random id. Random rather than a counter: a peer that sees one id (on the request or
/// the answer topic) must not be able to compute the next and answer it first.
pub fn new_correlation_id() -> CorrelationId {
    rand::random()
}

/// What the cloud needs to know about a hard example besides its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct HardExampleMeta {
    pub camera: String,
    pub seq: u64,
    pub capture_time: SystemTime,
    pub edge_result: Vec<Detection>,
    pub orig_w: u32,
    pub orig_h: u32,
    /// JPEG pixels per original pixel.
    pub scale: f64,
}

impl HardExampleMeta {
    /// The metadata for sending `output::content_image(frame)`, the letterbox content, which
    /// is the frame scaled by the letterbox factor.
    pub fn for_frame(frame: &Frame, edge_result: &[Detection]) -> Self {
        Self {
            camera: frame.camera.to_string(),
            seq: frame.seq,
            capture_time: frame.capture_time,
            edge_result: edge_result.to_vec(),
            orig_w: frame.letterbox.orig_w,
            orig_h: frame.letterbox.orig_h,
            scale: frame.letterbox.scale,
        }
    }

    /// Boxes found in the image sent (the letterbox content) in camera-frame pixels.
    pub fn to_original(&self, boxes: &[Detection]) -> Vec<Detection> {
        Letterbox::content_to_original(boxes, self.scale, self.orig_w, self.orig_h)
    }
}

/// Where an answer goes: taken from the request first, so that even a malformed request can be
/// told it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub topic: String,
    /// The node named by `topic`: requests are queued fairly by it.
    pub node: String,
    pub correlation: Vec<u8>,
}

/// A request that passed every check that does not need decoding the JPEG.
#[derive(Debug, Clone, PartialEq)]
pub struct HardExampleRequest {
    pub node: String,
    pub meta: HardExampleMeta,
    pub jpeg: Vec<u8>,
    /// How long after it arrived an answer can still be used: the edge's own wait (`wait_ms`)
    /// or the message expiry the broker passed on, whichever is shorter; `None` when the request
    /// says neither. Work on it after that is wasted.
    pub usable_for: Option<Duration>,
}

/// The longest `wait_ms` a request may declare: longer is refused as malformed.
pub const MAX_WAIT_MS: u64 = 600_000;

/// Why a request is refused; [`RequestError::kind`] groups them for counting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("no response topic")]
    NoResponseTopic,
    #[error("response topic {0:?} is not <prefix>/<node>/cloud-result")]
    ForeignResponseTopic(String),
    #[error("no correlation data")]
    NoCorrelation,
    #[error("correlation data of {0} bytes (at most {MAX_CORRELATION_BYTES})")]
    CorrelationTooLong(usize),
    #[error("content type {0:?}, expected {JPEG_CONTENT_TYPE:?}")]
    ContentType(Option<String>),
    #[error("payload of {0} bytes exceeds {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error(
        "{count} user properties of {bytes} bytes (at most {MAX_USER_PROPERTIES} of {MAX_USER_PROPERTY_BYTES} bytes)"
    )]
    TooManyProperties { count: usize, bytes: usize },
    #[error("user property {0:?} is missing")]
    MissingProperty(&'static str),
    #[error("user property {key:?} = {value:?}: {reason}")]
    BadProperty {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("payload is not a JPEG (no SOI marker and frame header)")]
    NotJpeg,
    #[error("JPEG is {w}x{h}: {reason}")]
    ImageSize { w: u32, h: u32, reason: String },
    #[error("JPEG does not decode: {0}")]
    Decode(String),
}

/// Kinds of refused requests, counted and logged separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    NoResponseTopic,
    NoCorrelation,
    ContentType,
    TooLarge,
    BadMetadata,
    NotJpeg,
    BadImage,
}

impl RejectKind {
    /// Sizes the per-kind counters.
    pub const COUNT: usize = 7;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoResponseTopic => "no_response_topic",
            Self::NoCorrelation => "no_correlation",
            Self::ContentType => "content_type",
            Self::TooLarge => "too_large",
            Self::BadMetadata => "bad_metadata",
            Self::NotJpeg => "not_jpeg",
            Self::BadImage => "bad_image",
        }
    }
}

// Counters are indexed by kind: adding a kind without raising COUNT must not compile.
const _: () = assert!(RejectKind::BadImage as usize + 1 == RejectKind::COUNT);

impl RequestError {
    pub fn kind(&self) -> RejectKind {
        match self {
            Self::NoResponseTopic | Self::ForeignResponseTopic(_) => RejectKind::NoResponseTopic,
            Self::NoCorrelation | Self::CorrelationTooLong(_) => RejectKind::NoCorrelation,
            Self::ContentType(_) => RejectKind::ContentType,
            Self::TooLarge(_) => RejectKind::TooLarge,
            Self::TooManyProperties { .. }
            | Self::MissingProperty(_)
            | Self::BadProperty { .. } => RejectKind::BadMetadata,
            Self::NotJpeg => RejectKind::NotJpeg,
            Self::ImageSize { .. } | Self::Decode(_) => RejectKind::BadImage,
        }
    }
}

/// The publish properties of a request.
pub fn request_properties(
    node: &str,
    meta: &HardExampleMeta,
    response_topic: &str,
    correlation: &CorrelationId,
    expiry: Duration,
) -> PublishProperties {
    let edge_result =
        serde_json::to_string(&sedna_boxes(&meta.edge_result)).unwrap_or_else(|_| "[]".to_string());
    let expiry_s = expiry.as_secs() + u64::from(expiry.subsec_nanos() > 0);
    PublishProperties {
        content_type: Some(JPEG_CONTENT_TYPE.to_string()),
        response_topic: Some(response_topic.to_string()),
        correlation_data: Some(correlation.to_vec().into()),
        message_expiry_interval: Some(u32::try_from(expiry_s.max(1)).unwrap_or(u32::MAX)),
        user_properties: vec![
            ("node".into(), node.into()),
            ("camera".into(), meta.camera.clone()),
            ("seq".into(), meta.seq.to_string()),
            (
                "capture_time".into(),
                humantime::format_rfc3339_millis(meta.capture_time).to_string(),
            ),
            ("edge_result".into(), edge_result),
            ("orig_w".into(), meta.orig_w.to_string()),
            ("orig_h".into(), meta.orig_h.to_string()),
            ("scale".into(), meta.scale.to_string()),
            // The expiry above has whole seconds; the cloud drops what it can no longer
            // answer in time to the millisecond.
            ("wait_ms".into(), expiry.as_millis().to_string()),
        ],
        ..Default::default()
    }
}

/// The reply address of a request, checked before anything else.
pub fn reply_to(publish: &Publish, prefix: &str) -> Result<ReplyTo, RequestError> {
    let props = publish.properties.as_ref();
    let topic = props
        .and_then(|p| p.response_topic.clone())
        .ok_or(RequestError::NoResponseTopic)?;
    let Some(node) = response_topic_node(prefix, &topic).map(str::to_string) else {
        return Err(RequestError::ForeignResponseTopic(
            topic.chars().take(MAX_NAME_CHARS).collect(),
        ));
    };
    let correlation = props
        .and_then(|p| p.correlation_data.as_ref())
        .filter(|c| !c.is_empty())
        .ok_or(RequestError::NoCorrelation)?;
    if correlation.len() > MAX_CORRELATION_BYTES {
        return Err(RequestError::CorrelationTooLong(correlation.len()));
    }
    Ok(ReplyTo {
        topic,
        node,
        correlation: correlation.to_vec(),
    })
}

/// Checks a request's content type, size, metadata and JPEG header against `max_image_side`
/// (`cloud.max_image_side`). Decoding is left to the inference thread, which reports failures
/// as [`RequestError::Decode`]. The edge's boxes are made safe by [`checked_boxes`]; what that
/// changed is returned for counting.
pub fn parse_request(
    publish: Publish,
    max_image_side: u32,
) -> Result<(HardExampleRequest, BoxFixes), RequestError> {
    let props = publish.properties.unwrap_or_default();
    if props.content_type.as_deref() != Some(JPEG_CONTENT_TYPE) {
        return Err(RequestError::ContentType(
            props
                .content_type
                .map(|c| c.chars().take(MAX_NAME_CHARS).collect()),
        ));
    }
    if publish.payload.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(publish.payload.len()));
    }
    let user = UserProperties::new(&props.user_properties)?;
    let node = user.name("node")?;
    let response_node = props
        .response_topic
        .as_deref()
        .and_then(|t| t.rsplit('/').nth(1));
    if response_node != Some(node.as_str()) {
        return Err(bad("node", &node, "is not the node of the response topic"));
    }
    let (orig_w, orig_h) = (user.side("orig_w")?, user.side("orig_h")?);
    let scale: f64 = user.parse("scale")?;
    if !SCALE_RANGE.contains(&scale) {
        return Err(bad(
            "scale",
            &scale.to_string(),
            format!(
                "must be within {}..={}",
                SCALE_RANGE.start(),
                SCALE_RANGE.end()
            ),
        ));
    }
    let (edge_result, fixes) = user.get("edge_result").and_then(|v| {
        let boxes: Vec<[f64; 6]> = serde_json::from_str(v).map_err(|e| bad("edge_result", v, e))?;
        let boxes = boxes
            .iter()
            .map(|b| detection_from_sedna(b).map_err(|e| bad("edge_result", v, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(checked_boxes(boxes, orig_w, orig_h))
    })?;
    let meta = HardExampleMeta {
        camera: user.name("camera")?,
        seq: user.parse("seq")?,
        capture_time: user.get("capture_time").and_then(|v| {
            humantime::parse_rfc3339_weak(v).map_err(|e| bad("capture_time", v, e))
        })?,
        edge_result,
        orig_w,
        orig_h,
        scale,
    };
    let (image_w, image_h) = jpeg_size(&publish.payload).ok_or(RequestError::NotJpeg)?;
    check_geometry(&meta, image_w, image_h, max_image_side)?;
    let usable_for = usable_for(&user, props.message_expiry_interval)?;
    Ok((
        HardExampleRequest {
            node,
            meta,
            jpeg: publish.payload.into(),
            usable_for,
        },
        fixes,
    ))
}

/// An edge's declared wait (`wait_ms`, or Sedna HTTP's `X-Helmetd-Wait-Ms`), if it is within
/// `1..=MAX_WAIT_MS`.
pub fn checked_wait(ms: u64) -> Option<Duration> {
    (1..=MAX_WAIT_MS)
        .contains(&ms)
        .then(|| Duration::from_millis(ms))
}

/// The shorter of the edge's `wait_ms` (optional: older edges do not send it) and the message
/// expiry.
fn usable_for(
    user: &UserProperties<'_>,
    expiry_s: Option<u32>,
) -> Result<Option<Duration>, RequestError> {
    let wait = match user.get("wait_ms") {
        Err(RequestError::MissingProperty(_)) => None,
        Err(e) => return Err(e),
        Ok(_) => {
            let ms: u64 = user.parse("wait_ms")?;
            let wait = checked_wait(ms).ok_or_else(|| {
                bad(
                    "wait_ms",
                    &ms.to_string(),
                    format!("must be within 1..={MAX_WAIT_MS}"),
                )
            })?;
            Some(wait)
        }
    };
    let expiry = expiry_s.map(|s| Duration::from_secs(u64::from(s)));
    Ok(match (wait, expiry) {
        (Some(w), Some(e)) => Some(w.min(e)),
        (w, e) => w.or(e),
    })
}

fn bad(key: &'static str, value: &str, reason: impl std::fmt::Display) -> RequestError {
    RequestError::BadProperty {
        key,
        value: value.chars().take(80).collect(),
        reason: reason.to_string(),
    }
}

struct UserProperties<'a>(&'a [(String, String)]);

impl<'a> UserProperties<'a> {
    /// Bounds the properties as a whole before any is parsed.
    fn new(props: &'a [(String, String)]) -> Result<Self, RequestError> {
        let bytes = props.iter().map(|(k, v)| k.len() + v.len()).sum();
        if props.len() > MAX_USER_PROPERTIES || bytes > MAX_USER_PROPERTY_BYTES {
            return Err(RequestError::TooManyProperties {
                count: props.len(),
                bytes,
            });
        }
        Ok(Self(props))
    }

    fn get(&self, key: &'static str) -> Result<&'a str, RequestError> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or(RequestError::MissingProperty(key))
    }

    fn parse<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, RequestError>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.get(key)?;
        value.trim().parse().map_err(|e| bad(key, value, e))
    }

    /// Node and camera names end up in logs and topics: short, printable.
    fn name(&self, key: &'static str) -> Result<String, RequestError> {
        let value = self.get(key)?;
        if value.is_empty()
            || value.chars().count() > MAX_NAME_CHARS
            || value.chars().any(char::is_control)
        {
            return Err(bad(
                key,
                value,
                format!("must be 1..={MAX_NAME_CHARS} printable characters"),
            ));
        }
        Ok(value.to_string())
    }

    /// A camera frame's side in pixels.
    fn side(&self, key: &'static str) -> Result<u32, RequestError> {
        let side: u32 = self.parse(key)?;
        if !(1..=MAX_ORIG_SIDE).contains(&side) {
            return Err(bad(
                key,
                &side.to_string(),
                format!("must be within 1..={MAX_ORIG_SIDE}"),
            ));
        }
        Ok(side)
    }
}

/// The JPEG must be the original scaled by `scale`, or the boxes would land in the wrong place.
fn check_geometry(
    meta: &HardExampleMeta,
    w: u32,
    h: u32,
    max_side: u32,
) -> Result<(), RequestError> {
    let size_error = |reason: String| RequestError::ImageSize { w, h, reason };
    if w == 0 || h == 0 || w > max_side || h > max_side {
        return Err(size_error(format!(
            "each side must be within 1..={max_side} (cloud.max_image_side)"
        )));
    }
    let expected_w = f64::from(meta.orig_w) * meta.scale;
    let expected_h = f64::from(meta.orig_h) * meta.scale;
    if (f64::from(w) - expected_w).abs() > SIZE_TOLERANCE_PX
        || (f64::from(h) - expected_h).abs() > SIZE_TOLERANCE_PX
    {
        return Err(size_error(format!(
            "orig {}x{} × scale {} is {expected_w:.0}x{expected_h:.0}",
            meta.orig_w, meta.orig_h, meta.scale
        )));
    }
    Ok(())
}

/// Width and height from the JPEG frame header, read before decoding so that a small file
/// declaring a huge image is refused without allocating for it. `None` if there is no SOI
/// marker followed by a frame header.
pub fn jpeg_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let at = |i: usize| bytes.get(i).copied();
    let mut i = 2;
    loop {
        if at(i)? != 0xFF {
            return None;
        }
        while at(i)? == 0xFF {
            i += 1;
        }
        let marker = at(i)?;
        i += 1;
        match marker {
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD8 => continue,
            // End of image or start of scan before any frame header.
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([at(i)?, at(i + 1)?]));
        if len < 2 {
            return None;
        }
        // SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let h = u16::from_be_bytes([at(i + 3)?, at(i + 4)?]);
            let w = u16::from_be_bytes([at(i + 5)?, at(i + 6)?]);
            return Some((u32::from(w), u32::from(h)));
        }
        i += len;
    }
}

/// The cloud's answer, as the edge sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudResponse {
    Result {
        detections: Vec<Detection>,
        model: String,
        infer_ms: f64,
        replica: String,
        /// `None` from a cloud that does not report it.
        load: Option<CloudLoad>,
    },
    Error {
        message: String,
        replica: String,
        load: Option<CloudLoad>,
    },
}

impl CloudResponse {
    pub fn load(&self) -> Option<CloudLoad> {
        match self {
            Self::Result { load, .. } | Self::Error { load, .. } => *load,
        }
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    #[error("content type {0:?}, expected {JSON_CONTENT_TYPE:?}")]
    ContentType(Option<String>),
    #[error("answer of {0} bytes exceeds {MAX_RESPONSE_BYTES}")]
    TooLarge(usize),
    #[error("answer is not the expected JSON: {0}")]
    Json(String),
    #[error("box {index}: {reason}")]
    BadBox { index: usize, reason: String },
    #[error("answer has neither \"result\" nor \"error\"")]
    Empty,
}

#[derive(Serialize, Deserialize)]
struct WireResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Vec<[f64; 6]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    infer_ms: Option<f64>,
    #[serde(default)]
    replica: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    load: Option<WireLoad>,
}

/// A reported load that is not a measurement.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("load.queue {0} exceeds {MAX_REPORTED_QUEUE}")]
    Queue(u32),
    #[error("load.infer_ms {0} is not within 0..={MAX_INFER_MS}")]
    InferMs(f64),
}

/// `"load":{"queue":…,"infer_ms":…}`
#[derive(Serialize, Deserialize)]
struct WireLoad {
    queue: u32,
    infer_ms: f64,
}

impl WireLoad {
    fn from_load(load: CloudLoad) -> Self {
        Self {
            queue: load.queue,
            infer_ms: (load.recent_infer.as_secs_f64() * 1e4).round() / 10.0,
        }
    }

    fn checked(&self) -> Result<CloudLoad, LoadError> {
        if self.queue > MAX_REPORTED_QUEUE {
            return Err(LoadError::Queue(self.queue));
        }
        if !(0.0..=MAX_INFER_MS).contains(&self.infer_ms) {
            return Err(LoadError::InferMs(self.infer_ms));
        }
        Ok(CloudLoad {
            queue: self.queue,
            // In range (checked above), so the cast neither saturates nor wraps.
            recent_infer: Duration::from_nanos((self.infer_ms * 1e6).round() as u64),
        })
    }
}

/// Boxes as Sedna lists, rounded to 0.1 px and 4 score digits: more is noise on the wire.
fn sedna_boxes(detections: &[Detection]) -> Vec<[f64; 6]> {
    let round = |v: f64, k: f64| (v * k).round() / k;
    detections
        .iter()
        .map(|d| {
            let [x1, y1, x2, y2, score, class] = d.to_sedna();
            [
                round(x1, 10.0),
                round(y1, 10.0),
                round(x2, 10.0),
                round(y2, 10.0),
                round(score, 1e4),
                class,
            ]
        })
        .collect()
}

/// A box in Sedna's list form as a [`Detection`]. Coordinates are saturated into `f32`'s range
/// (a plain cast turns 1e39 into infinity) and left for [`checked_boxes`] to clip; a value that
/// is not a number at all, or a class that is not one, makes the box unusable.
pub(crate) fn detection_from_sedna(b: &[f64; 6]) -> Result<Detection, String> {
    if !b.iter().all(|v| v.is_finite()) {
        return Err("non-finite value".into());
    }
    let class = b[5];
    if class.fract() != 0.0 || !(0.0..=f64::from(u16::MAX)).contains(&class) {
        return Err(format!("class {class} is not an integer in 0..=65535"));
    }
    let f32_range = |v: f64| v.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32;
    Ok(Detection {
        x1: f32_range(b[0]),
        y1: f32_range(b[1]),
        x2: f32_range(b[2]),
        y2: f32_range(b[3]),
        score: f32_range(b[4]),
        class: class as u16,
    })
}

/// What [`checked_boxes`] changed, for counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoxFixes {
    /// Boxes that reached outside the frame and were cut to it.
    pub clipped: u64,
    /// Boxes thrown away: a non-finite value, a score outside 0..=1, or nothing left inside
    /// the frame (reversed boxes included).
    pub dropped: u64,
    /// Boxes beyond [`MAX_DETECTIONS`], the lowest-scoring ones.
    pub over_cap: u64,
}

impl BoxFixes {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn add(&mut self, other: BoxFixes) {
        self.clipped += other.clipped;
        self.dropped += other.dropped;
        self.over_cap += other.over_cap;
    }
}

/// The one gate for boxes from outside (cloud answers on MQTT and Sedna HTTP, the edge's boxes
/// in a request): every value finite, every box inside the `frame_w × frame_h` frame and not
/// empty, at most [`MAX_DETECTIONS`] boxes, the best-scoring kept. Whatever comes out can be
/// drawn, scaled and published as is.
pub fn checked_boxes(
    boxes: Vec<Detection>,
    frame_w: u32,
    frame_h: u32,
) -> (Vec<Detection>, BoxFixes) {
    let (w, h) = (frame_w as f32, frame_h as f32);
    let mut fixes = BoxFixes::default();
    let mut kept: Vec<Detection> = boxes
        .into_iter()
        .filter_map(|d| {
            let values = [d.x1, d.y1, d.x2, d.y2, d.score];
            if !values.iter().all(|v| v.is_finite()) || !(0.0..=1.0).contains(&d.score) {
                fixes.dropped += 1;
                return None;
            }
            let clipped = Detection {
                x1: d.x1.clamp(0.0, w),
                y1: d.y1.clamp(0.0, h),
                x2: d.x2.clamp(0.0, w),
                y2: d.y2.clamp(0.0, h),
                ..d
            };
            if clipped.x2 <= clipped.x1 || clipped.y2 <= clipped.y1 {
                fixes.dropped += 1;
                return None;
            }
            if clipped != d {
                fixes.clipped += 1;
            }
            Some(clipped)
        })
        .collect();
    if kept.len() > MAX_DETECTIONS {
        // Stable: an answer already in score order keeps its order.
        kept.sort_by(|a, b| b.score.total_cmp(&a.score));
        fixes.over_cap = (kept.len() - MAX_DETECTIONS) as u64;
        kept.truncate(MAX_DETECTIONS);
    }
    (kept, fixes)
}

/// `{"result":…,"model":…,"infer_ms":…,"replica":…}`, as a cloud that reports no load answers.
pub fn result_json(detections: &[Detection], model: &str, infer_ms: f64, replica: &str) -> Vec<u8> {
    loaded_result_json(detections, model, infer_ms, replica, None)
}

/// `{"result":…,"model":…,"infer_ms":…,"replica":…,"load":…}`
pub fn loaded_result_json(
    detections: &[Detection],
    model: &str,
    infer_ms: f64,
    replica: &str,
    load: Option<CloudLoad>,
) -> Vec<u8> {
    to_json(&WireResponse {
        result: Some(sedna_boxes(detections)),
        error: None,
        model: Some(model.to_string()),
        infer_ms: Some((infer_ms * 10.0).round() / 10.0),
        replica: replica.to_string(),
        load: load.map(WireLoad::from_load),
    })
}

/// `{"error":…,"replica":…}`, as a cloud that reports no load refuses.
pub fn error_json(message: &str, replica: &str) -> Vec<u8> {
    loaded_error_json(message, replica, None)
}

/// `{"error":…,"replica":…,"load":…}`
pub fn loaded_error_json(message: &str, replica: &str, load: Option<CloudLoad>) -> Vec<u8> {
    to_json(&WireResponse {
        result: None,
        error: Some(message.to_string()),
        model: None,
        infer_ms: None,
        replica: replica.to_string(),
        load: load.map(WireLoad::from_load),
    })
}

fn to_json(wire: &WireResponse) -> Vec<u8> {
    // Serialising plain strings and finite numbers cannot fail; an empty body reads as Empty.
    serde_json::to_vec(wire).unwrap_or_default()
}

/// The publish properties of an answer.
pub fn response_properties(correlation: &[u8]) -> PublishProperties {
    PublishProperties {
        content_type: Some(JSON_CONTENT_TYPE.to_string()),
        correlation_data: Some(correlation.to_vec().into()),
        ..Default::default()
    }
}

/// The correlation id of an answer, if it carries one of ours (16 bytes).
pub fn response_correlation(publish: &Publish) -> Option<CorrelationId> {
    let data = publish.properties.as_ref()?.correlation_data.as_ref()?;
    CorrelationId::try_from(data.as_ref()).ok()
}

/// Reads an answer. Its boxes are converted but not yet made safe: that needs the frame the
/// request described, so the asker applies [`checked_boxes`].
pub fn parse_response(publish: &Publish) -> Result<CloudResponse, ResponseError> {
    let content_type = publish
        .properties
        .as_ref()
        .and_then(|p| p.content_type.clone());
    if content_type.as_deref() != Some(JSON_CONTENT_TYPE) {
        return Err(ResponseError::ContentType(
            content_type.map(|c| answer_text(&c)),
        ));
    }
    if publish.payload.len() > MAX_RESPONSE_BYTES {
        return Err(ResponseError::TooLarge(publish.payload.len()));
    }
    let wire: WireResponse =
        serde_json::from_slice(&publish.payload).map_err(|e| ResponseError::Json(e.to_string()))?;
    let replica = answer_text(&wire.replica);
    let load = wire
        .load
        .as_ref()
        .map(|load| {
            load.checked()
                .map_err(|e| ResponseError::Json(e.to_string()))
        })
        .transpose()?;
    match (wire.result, wire.error) {
        (Some(boxes), _) => {
            let infer_ms = wire.infer_ms.unwrap_or_default();
            if !(0.0..=MAX_INFER_MS).contains(&infer_ms) {
                return Err(ResponseError::Json(format!(
                    "infer_ms {infer_ms} is not within 0..={MAX_INFER_MS}"
                )));
            }
            Ok(CloudResponse::Result {
                detections: boxes
                    .iter()
                    .enumerate()
                    .map(|(index, b)| {
                        detection_from_sedna(b)
                            .map_err(|reason| ResponseError::BadBox { index, reason })
                    })
                    .collect::<Result<_, _>>()?,
                model: answer_text(wire.model.as_deref().unwrap_or_default()),
                infer_ms,
                replica,
                load,
            })
        }
        (None, Some(message)) => Ok(CloudResponse::Error {
            message: answer_text(&message),
            replica,
            load,
        }),
        (None, None) => Err(ResponseError::Empty),
    }
}

/// A peer's string, cut and with control characters replaced, fit for a log line.
fn answer_text(text: &str) -> String {
    text.chars()
        .take(MAX_ANSWER_TEXT_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;

    const PREFIX: &str = "helmetd/v1";

    fn meta() -> HardExampleMeta {
        HardExampleMeta {
            camera: "gate-1".into(),
            seq: 42,
            capture_time: humantime::parse_rfc3339("2026-01-02T03:04:05.678Z").unwrap(),
            edge_result: vec![Detection {
                x1: 10.25,
                y1: 20.0,
                x2: 110.0,
                y2: 220.0,
                score: 0.51234,
                class: 1,
            }],
            orig_w: 1280,
            orig_h: 720,
            scale: 0.5,
        }
    }

    /// A minimal baseline JPEG header: SOI, an APP0 segment, SOF0 declaring `w × h`.
    fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    fn request(payload: Vec<u8>, props: PublishProperties) -> Publish {
        Publish::new(
            request_topic(PREFIX),
            QoS::AtLeastOnce,
            payload,
            Some(props),
        )
    }

    fn good_props() -> PublishProperties {
        request_properties(
            "edge-a",
            &meta(),
            &response_topic(PREFIX, "edge-a"),
            &[7; 16],
            Duration::from_millis(1500),
        )
    }

    #[test]
    fn request_round_trips_through_properties() {
        let p = request(jpeg_header(640, 360), good_props());
        let reply = reply_to(&p, PREFIX).unwrap();
        assert_eq!(reply.topic, "helmetd/v1/edge-a/cloud-result");
        assert_eq!(reply.node, "edge-a");
        assert_eq!(reply.correlation, vec![7; 16]);
        assert_eq!(
            p.properties.as_ref().unwrap().message_expiry_interval,
            Some(2)
        );
        let (req, fixes) = parse_request(p, DEFAULT_MAX_IMAGE_SIDE).unwrap();
        assert!(fixes.is_empty());
        assert_eq!(req.node, "edge-a");
        let mut expected = meta();
        expected.edge_result[0].x1 = 10.3; // rounded to 0.1 px on the wire
        expected.edge_result[0].score = 0.5123;
        assert_eq!(req.meta, expected);
        // The edge waits 1.5 s; the expiry says 2 s in whole seconds: the shorter one counts.
        assert_eq!(req.usable_for, Some(Duration::from_millis(1500)));
    }

    /// A good 640×360 request with `edit` applied to its properties, parsed.
    fn parse_edited(
        edit: &dyn Fn(&mut PublishProperties),
    ) -> Result<(HardExampleRequest, BoxFixes), RequestError> {
        let mut props = good_props();
        edit(&mut props);
        parse_request(
            request(jpeg_header(640, 360), props),
            DEFAULT_MAX_IMAGE_SIDE,
        )
    }

    #[test]
    fn the_usable_time_is_the_shorter_of_wait_ms_and_expiry_and_bad_waits_are_refused() {
        let usable = |edit: &dyn Fn(&mut PublishProperties)| {
            parse_edited(edit).map(|(req, _)| req.usable_for)
        };
        assert_eq!(
            usable(&|p| set(p, "wait_ms", "5000")),
            Ok(Some(Duration::from_secs(2))),
            "the expiry is shorter"
        );
        assert_eq!(
            usable(&|p| p.user_properties.retain(|(k, _)| k != "wait_ms")),
            Ok(Some(Duration::from_secs(2))),
            "an older edge: the expiry alone"
        );
        assert_eq!(
            usable(&|p| {
                p.user_properties.retain(|(k, _)| k != "wait_ms");
                p.message_expiry_interval = None;
            }),
            Ok(None),
            "neither: always answered"
        );
        for bad in ["0", "-1", "600001", "soon"] {
            assert_eq!(
                usable(&|p| set(p, "wait_ms", bad)).map_err(|e| e.kind()),
                Err(RejectKind::BadMetadata),
                "{bad}"
            );
        }
    }

    #[test]
    fn reply_address_is_required_and_confined_to_result_topics() {
        let mut props = good_props();
        props.response_topic = None;
        let p = request(jpeg_header(640, 360), props.clone());
        assert_eq!(reply_to(&p, PREFIX), Err(RequestError::NoResponseTopic));

        for foreign in [
            "helmetd/v1/edge-a/gate-1/alert",
            "helmetd/v1/cloud-result",
            "helmetd/v1/a/b/cloud-result",
            "other/edge-a/cloud-result",
        ] {
            props.response_topic = Some(foreign.into());
            let p = request(jpeg_header(640, 360), props.clone());
            assert_eq!(
                reply_to(&p, PREFIX).map_err(|e| e.kind()),
                Err(RejectKind::NoResponseTopic),
                "{foreign}"
            );
        }

        let mut props = good_props();
        props.correlation_data = Some(Vec::new().into());
        let p = request(jpeg_header(640, 360), props.clone());
        assert_eq!(reply_to(&p, PREFIX), Err(RequestError::NoCorrelation));
        props.correlation_data = Some(vec![1; 65].into());
        let p = request(jpeg_header(640, 360), props);
        assert_eq!(
            reply_to(&p, PREFIX),
            Err(RequestError::CorrelationTooLong(65))
        );
    }

    #[test]
    fn garbage_is_refused_by_kind() {
        let kind = |payload: Vec<u8>, edit: &dyn Fn(&mut PublishProperties)| {
            let mut props = good_props();
            edit(&mut props);
            parse_request(request(payload, props), DEFAULT_MAX_IMAGE_SIDE)
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        let ok = jpeg_header(640, 360);
        assert_eq!(kind(ok.clone(), &|_| {}), Ok(()));
        assert_eq!(
            kind(ok.clone(), &|p| p.content_type = Some("image/png".into())),
            Err(RejectKind::ContentType)
        );
        assert_eq!(
            kind(ok.clone(), &|p| p.content_type = None),
            Err(RejectKind::ContentType)
        );
        assert_eq!(
            kind(vec![0xFF; MAX_REQUEST_BYTES + 1], &|_| {}),
            Err(RejectKind::TooLarge)
        );
        assert_eq!(
            kind(b"not a jpeg".to_vec(), &|_| {}),
            Err(RejectKind::NotJpeg)
        );
        assert_eq!(
            kind(vec![0xFF, 0xD8, 0xFF, 0xD9], &|_| {}),
            Err(RejectKind::NotJpeg)
        );
        assert_eq!(
            kind(vec![0xFF, 0xD8, 0xFF], &|_| {}),
            Err(RejectKind::NotJpeg)
        );
        assert_eq!(
            kind(jpeg_header(640, 480), &|_| {}),
            Err(RejectKind::BadImage),
            "size disagrees with orig × scale"
        );
        assert_eq!(
            kind(jpeg_header(60000, 60000), &|p| set(p, "scale", "46.875")),
            Err(RejectKind::BadImage),
            "bomb"
        );
        assert_eq!(
            kind(jpeg_header(2049, 1153), &|p| set(p, "scale", "1.6")),
            Err(RejectKind::BadImage),
            "over cloud.max_image_side, though orig × scale agrees"
        );
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        for (key, value) in [
            ("seq", "-1"),
            ("scale", "NaN"),
            ("scale", "0"),
            ("scale", "1e-300"),
            ("scale", "inf"),
            ("orig_h", "0"),
            ("orig_w", "16385"),
            ("camera", long.as_str()),
            ("camera", "gate\n1"),
            ("camera", ""),
            ("node", "edge-b"),
            ("orig_w", "wide"),
            ("capture_time", "yesterday"),
            ("edge_result", "[[1,2,3]]"),
            ("edge_result", "[[1,2,3,4,0.5,1.5]]"),
        ] {
            assert_eq!(
                kind(ok.clone(), &|p| set(p, key, value)),
                Err(RejectKind::BadMetadata),
                "{key}={value}"
            );
        }
        assert_eq!(
            kind(ok, &|p| p.user_properties.retain(|(k, _)| k != "camera")),
            Err(RejectKind::BadMetadata)
        );
    }

    fn set(props: &mut PublishProperties, key: &str, value: &str) {
        for (k, v) in &mut props.user_properties {
            if k == key {
                *v = value.to_string();
            }
        }
    }

    #[test]
    fn jpeg_size_reads_real_files_and_survives_truncation() {
        let media = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        let bytes = std::fs::read(media.join("overeasy_dense_street2.jpg")).unwrap();
        assert_eq!(jpeg_size(&bytes), Some((3079, 4619)));
        for keep in 0..64.min(bytes.len()) {
            let _ = jpeg_size(&bytes[..keep]);
        }
        assert_eq!(jpeg_size(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x01]), None);
    }

    fn response(payload: Vec<u8>, content_type: Option<&str>) -> Publish {
        let mut props = response_properties(&[9; 16]);
        props.content_type = content_type.map(str::to_string);
        Publish::new("t", QoS::AtLeastOnce, payload, Some(props))
    }

    #[test]
    fn responses_round_trip_and_errors_are_typed() {
        let dets = meta().edge_result;
        let p = response(
            result_json(&dets, "big.onnx", 123.45, "r1"),
            Some(JSON_CONTENT_TYPE),
        );
        assert_eq!(response_correlation(&p), Some([9; 16]));
        let CloudResponse::Result {
            detections,
            model,
            infer_ms,
            replica,
            load,
        } = parse_response(&p).unwrap()
        else {
            panic!("not a result")
        };
        assert_eq!((detections.len(), detections[0].class), (1, 1));
        assert_eq!(
            (model.as_str(), infer_ms, replica.as_str(), load),
            ("big.onnx", 123.5, "r1", None)
        );

        let p = response(error_json("overloaded", "r2"), Some(JSON_CONTENT_TYPE));
        assert_eq!(
            parse_response(&p),
            Ok(CloudResponse::Error {
                message: "overloaded".into(),
                replica: "r2".into(),
                load: None,
            })
        );

        let p = response(b"{}".to_vec(), Some(JSON_CONTENT_TYPE));
        assert_eq!(parse_response(&p), Err(ResponseError::Empty));
        let p = response(b"[1,2".to_vec(), Some(JSON_CONTENT_TYPE));
        assert!(matches!(parse_response(&p), Err(ResponseError::Json(_))));
        let p = response(b"{}".to_vec(), None);
        assert_eq!(parse_response(&p), Err(ResponseError::ContentType(None)));
        let p = response(
            br#"{"result":[[1,2,3,4,0.5,70000]]}"#.to_vec(),
            Some(JSON_CONTENT_TYPE),
        );
        assert!(matches!(
            parse_response(&p),
            Err(ResponseError::BadBox { index: 0, .. })
        ));
    }

    #[test]
    fn the_load_rides_along_and_stays_optional_and_bounded() {
        let load = CloudLoad {
            queue: 3,
            recent_infer: Duration::from_micros(412_540),
        };
        assert_eq!(load.expected_wait(), Duration::from_micros(1_650_160));
        let parsed = |body: Vec<u8>| parse_response(&response(body, Some(JSON_CONTENT_TYPE)));
        // Rounded to 0.1 ms on the wire.
        let sent = CloudLoad {
            recent_infer: Duration::from_micros(412_500),
            ..load
        };
        let answer = parsed(loaded_result_json(&[], "m", 1.0, "r", Some(load))).unwrap();
        assert_eq!(answer.load(), Some(sent));
        let refusal = parsed(loaded_error_json(OVERLOADED, "r", Some(load))).unwrap();
        assert_eq!(refusal.load(), Some(sent));
        assert!(is_busy_refusal(OVERLOADED) && is_busy_refusal(EXPIRED));
        assert!(!is_busy_refusal("inference failed"));

        // What an older edge reads: the same fields, the load ignored.
        #[derive(serde::Deserialize)]
        struct OldWire {
            result: Option<Vec<[f64; 6]>>,
            replica: String,
        }
        let body = loaded_result_json(&meta().edge_result, "m", 1.0, "r", Some(load));
        let old: OldWire = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (old.result.map(|r| r.len()), old.replica.as_str()),
            (Some(1), "r")
        );

        for junk in [
            &br#"{"result":[],"load":{"queue":-1,"infer_ms":1}}"#[..],
            br#"{"result":[],"load":{"queue":100001,"infer_ms":1}}"#,
            br#"{"result":[],"load":{"queue":1,"infer_ms":-1}}"#,
            br#"{"result":[],"load":{"queue":1,"infer_ms":3600001}}"#,
            br#"{"error":"overloaded","load":{"queue":1}}"#,
            br#"{"error":"overloaded","load":"busy"}"#,
        ] {
            assert!(
                parsed(junk.to_vec()).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn correlation_ids_are_random() {
        let (a, b) = (new_correlation_id(), new_correlation_id());
        assert_ne!(a, b);
        // A counter would leave most bytes equal between consecutive ids.
        let equal = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(equal < 8, "{a:?} {b:?}");
    }

    #[test]
    fn property_floods_are_refused_before_parsing() {
        let refused = |edit: &dyn Fn(&mut PublishProperties)| parse_edited(edit).map(|_| ());
        assert_eq!(
            refused(&|p| p
                .user_properties
                .extend((0..1000).map(|i| (format!("k{i}"), "v".into()))))
            .map_err(|e| e.kind()),
            Err(RejectKind::BadMetadata)
        );
        assert!(matches!(
            refused(&|p| p.user_properties.push(("x".into(), "y".repeat(1 << 20)))),
            Err(RequestError::TooManyProperties { count: 10, .. })
        ));
        assert!(matches!(
            refused(&|p| set(p, "edge_result", &"[0,0,1,1,0.5,0],".repeat(4000))),
            Err(RequestError::TooManyProperties { .. })
        ));
    }

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Detection {
        Detection {
            x1,
            y1,
            x2,
            y2,
            score,
            class: 1,
        }
    }

    #[test]
    fn boxes_from_outside_are_finite_clipped_and_capped() {
        let inside = det(10.0, 20.0, 30.0, 40.0, 0.9);
        let (kept, fixes) = checked_boxes(
            vec![
                inside,
                det(-5.0, -1e30, f32::MAX, 1e30, 0.8),
                det(f32::NAN, 0.0, 1.0, 1.0, 0.5),
                det(0.0, 0.0, f32::INFINITY, 1.0, 0.5),
                det(0.0, 0.0, 1.0, 1.0, f32::NAN),
                det(0.0, 0.0, 1.0, 1.0, 1.5),
                det(0.0, 0.0, 1.0, 1.0, -0.1),
                det(50.0, 50.0, 10.0, 10.0, 0.5),
                det(200.0, 0.0, 300.0, 10.0, 0.5),
            ],
            100,
            60,
        );
        assert_eq!(kept, [inside, det(0.0, 0.0, 100.0, 60.0, 0.8)]);
        assert_eq!(
            fixes,
            BoxFixes {
                clipped: 1,
                dropped: 7,
                over_cap: 0
            }
        );

        let many: Vec<Detection> = (0..10_000)
            .map(|i| det(0.0, 0.0, 10.0, 10.0, (i % 1000) as f32 / 1000.0))
            .collect();
        let (kept, fixes) = checked_boxes(many, 100, 100);
        assert_eq!(kept.len(), MAX_DETECTIONS);
        assert_eq!(fixes.over_cap, 10_000 - MAX_DETECTIONS as u64);
        assert!(kept.iter().all(|d| d.score >= 0.97), "the best are kept");
    }

    #[test]
    fn wire_values_beyond_f32_saturate_instead_of_becoming_infinite() {
        let p = response(
            br#"{"result":[[-1e39,0,1e39,1e300,0.5,0]],"infer_ms":1}"#.to_vec(),
            Some(JSON_CONTENT_TYPE),
        );
        let Ok(CloudResponse::Result { detections, .. }) = parse_response(&p) else {
            panic!("not a result")
        };
        assert!(
            detections
                .iter()
                .all(|d| d.x1.is_finite() && d.x2.is_finite() && d.y2.is_finite())
        );
        let (kept, _) = checked_boxes(detections, 640, 480);
        assert_eq!(
            kept,
            [det(0.0, 0.0, 640.0, 480.0, 0.5)].map(|d| Detection { class: 0, ..d })
        );
        for junk in [
            &br#"{"result":[[NaN,0,1,1,0.5,0]]}"#[..],
            br#"{"result":[[1e400,0,1,1,0.5,0]]}"#,
            br#"{"result":[],"infer_ms":-1}"#,
        ] {
            let p = response(junk.to_vec(), Some(JSON_CONTENT_TYPE));
            assert!(
                parse_response(&p).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
        let p = response(
            format!(
                r#"{{"error":"\u0007{}","replica":"r"}}"#,
                "e".repeat(10_000)
            )
            .into_bytes(),
            Some(JSON_CONTENT_TYPE),
        );
        let Ok(CloudResponse::Error { message, .. }) = parse_response(&p) else {
            panic!("not an error")
        };
        assert_eq!(message.chars().count(), MAX_ANSWER_TEXT_CHARS);
        assert!(!message.chars().any(char::is_control));
    }
}
