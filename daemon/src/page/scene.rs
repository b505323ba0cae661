//! A camera's view as people see it: the frame with its boxes, the people's track ids, and the
//! camera's zones and masks. Alert snapshots and the page's latest frame are drawn alike.

use std::sync::Arc;

use helmet_pipelines::output::{annotate, content_image, draw_label, encode_jpeg};
use helmet_pipelines::{Detection, Detections, Frame};
use image::{Rgb, RgbImage};

use crate::track::Track;
use crate::zones::{CameraRules, draw_areas};

/// A tracked person's id at their box (original-frame pixels), drawn below the box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackLabel {
    pub track_id: u64,
    pub bbox: [f32; 4],
}

impl TrackLabel {
    pub fn of(track: &Track) -> Self {
        let b = &track.bbox;
        Self {
            track_id: track.id,
            bbox: [b.x1, b.y1, b.x2, b.y2],
        }
    }
}

/// Draws `boxes` with their classes, `labels` below their boxes, and the areas of `rules`, on
/// the frame's content (the frame as the camera sent it, at the model's scale).
pub fn draw(
    frame: &Frame,
    boxes: &[Detection],
    labels: &[TrackLabel],
    rules: &CameraRules,
    class_names: &[String],
) -> RgbImage {
    let mut image = content_image(frame);
    draw_areas(&mut image, rules);
    let scale = frame.letterbox.scale;
    annotate(&mut image, scale, boxes, class_names);
    for label in labels {
        let [x1, _, _, y2] = label.bbox.map(|v| (f64::from(v) * scale).round() as i64);
        draw_label(
            &mut image,
            x1,
            y2 + 3,
            &format!("#{}", label.track_id),
            Rgb([255, 255, 255]),
        );
    }
    image
}

/// The latest concluded frame of a camera with what was decided about it, kept undrawn: it is
/// drawn and encoded only when someone asks for it.
pub struct Scene {
    pub frame: Frame,
    /// The final result: the cloud's when it answered in time, else the edge's.
    pub boxes: Detections,
    /// The people seen in this frame.
    pub labels: Vec<TrackLabel>,
    pub rules: Arc<CameraRules>,
    pub class_names: Arc<[String]>,
}

impl Scene {
    pub fn jpeg(&self, quality: u8) -> Option<Vec<u8>> {
        let image = draw(
            &self.frame,
            &self.boxes,
            &self.labels,
            &self.rules,
            &self.class_names,
        );
        encode_jpeg(&image, quality).ok()
    }
}
