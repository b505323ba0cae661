//! The unit of work that flows from ingest to detection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::letterbox::Letterbox;

/// One sampled camera frame, already letterboxed to the model input.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Camera name from the config (or the input path for `helmetd detect`).
    pub camera: Arc<str>,
    /// Per-camera sequence number of *sampled* frames; it keeps counting across reconnects, so
    /// names built from it never repeat within a run.
    pub seq: u64,
    /// Stream position, when the source has one.
    pub pts: Option<Duration>,
    /// Wall-clock time the frame left the decoder (the closest we get to capture time).
    pub capture_time: SystemTime,
    /// How the original frame was fitted into `pixels`; carries the original size.
    pub letterbox: Letterbox,
    /// Packed RGB, `input_w × input_h × 3`, letterbox bars painted with the training grey.
    pub pixels: Vec<u8>,
}

impl Frame {
    pub fn input_size(&self) -> (u32, u32) {
        (self.letterbox.input_w, self.letterbox.input_h)
    }
}

/// A box in original-image pixels: Sedna's `[xmin, ymin, xmax, ymax, score, class]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
    pub class: u16,
}

/// The most boxes one frame may carry (Ultralytics' `max_det`).
pub const MAX_DETECTIONS: usize = 300;

/// Fixed-capacity box list: the hot path never allocates for detections.
pub type Detections = heapless::Vec<Detection, MAX_DETECTIONS>;

impl Detection {
    /// Intersection over union of the two boxes; 0 when both are empty.
    pub fn iou(&self, other: &Detection) -> f32 {
        let iw = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let ih = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = iw * ih;
        let area = |d: &Detection| (d.x2 - d.x1) * (d.y2 - d.y1);
        let union = area(self) + area(other) - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Sedna's list form, as written to JSON and sent to/received from the cloud.
    pub fn to_sedna(&self) -> [f64; 6] {
        [
            f64::from(self.x1),
            f64::from(self.y1),
            f64::from(self.x2),
            f64::from(self.y2),
            f64::from(self.score),
            f64::from(self.class),
        ]
    }
}
