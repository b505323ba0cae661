//! The gateway's own page (`/` of `[http] listen`): what an operator wants to see in a browser.
//!
//! The page itself is one HTML file with its script and style, embedded in the binary
//! ([`INDEX_HTML`]); it polls `/status` and draws from it, so the page, `helmetd status` and
//! other dashboards read the same facts. What `/status` did not have before the page is kept
//! here, on the [`PageBoard`], written by the finalize tasks and the snapshot reader and read
//! by the HTTP handlers, each behind its own short lock:
//!
//! - the latest concluded frame of each camera with its final boxes, track ids and areas
//!   ([`Scene`]), drawn and JPEG-encoded only when someone asks, and then once per frame;
//! - the open and recently ended alert episodes with their snapshots ([`EpisodeBook`]);
//! - the worker pool over the last ten minutes ([`History`]).
//!
//! Nothing here changes the daemon's state, and nothing the daemon does waits for a reader.

pub mod episodes;
pub mod history;
pub mod scene;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;

pub use episodes::{EpisodeBook, EpisodeView, EpisodesView};
pub use history::{History, HistoryPoint};
pub use scene::{Scene, TrackLabel};

use crate::alerts::AlertEvent;
use crate::telemetry::Snapshot;

/// The page: HTML, script and style in one file, no external resources (a gateway has no
/// internet).
pub const INDEX_HTML: &str = include_str!("index.html");

/// JPEG quality of the latest frames: a glance, not evidence (alert snapshots keep
/// `mqtt.snapshot_jpeg_quality`).
const FRAME_JPEG_QUALITY: u8 = 75;

/// A camera's latest scene and, once someone asked, its JPEG.
struct Latest {
    scene: Arc<Scene>,
    jpeg: Option<Bytes>,
}

#[derive(Default)]
pub struct PageBoard {
    latest: Mutex<HashMap<String, Latest>>,
    episodes: Mutex<EpisodeBook>,
    history: Mutex<History>,
    /// Held while a frame is drawn and encoded: one at a time, so a page open in several
    /// browsers costs one encode per frame and at most one core, whatever the connections.
    encoding: Mutex<()>,
}

/// A reader or writer that panicked left nothing half-done that matters to a page.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PageBoard {
    /// A camera's newest concluded frame.
    pub fn show(&self, camera: &str, scene: Scene) {
        let latest = Latest {
            scene: Arc::new(scene),
            jpeg: None,
        };
        lock(&self.latest).insert(camera.to_string(), latest);
    }

    /// An alert event as it is published, with its snapshot.
    pub fn record_alert(&self, event: &AlertEvent, snapshot: Option<&[u8]>) {
        lock(&self.episodes).record(event, snapshot);
    }

    /// Every snapshot: one point of history, and the scenes of cameras no longer configured go.
    pub fn observe(&self, snapshot: &Snapshot, at: SystemTime) {
        lock(&self.history).push(HistoryPoint::of(snapshot, at));
        lock(&self.latest).retain(|name, _| snapshot.cameras.iter().any(|c| &c.name == name));
    }

    pub fn episodes(&self) -> EpisodesView {
        lock(&self.episodes).view()
    }

    pub fn alert_snapshot(&self, id: &str) -> Option<Bytes> {
        lock(&self.episodes).snapshot(id)
    }

    pub fn history(&self) -> Vec<HistoryPoint> {
        lock(&self.history).points()
    }

    /// The camera's latest frame as a JPEG, encoded now if nobody asked for this frame before.
    /// `None` before the camera's first concluded frame. Encoding runs outside the lock (it
    /// takes milliseconds); call it from a blocking thread.
    pub fn frame_jpeg(&self, camera: &str) -> Option<Bytes> {
        let cached = || {
            let latest = lock(&self.latest);
            let latest = latest.get(camera)?;
            Some(latest.jpeg.clone().ok_or_else(|| latest.scene.clone()))
        };
        if let Ok(jpeg) = cached()? {
            return Some(jpeg);
        }
        let _encoding = lock(&self.encoding);
        // Whoever held the lock before may have encoded this very frame.
        let scene = match cached()? {
            Ok(jpeg) => return Some(jpeg),
            Err(scene) => scene,
        };
        let jpeg = Bytes::from(scene.jpeg(FRAME_JPEG_QUALITY)?);
        if let Some(latest) = lock(&self.latest).get_mut(camera)
            && Arc::ptr_eq(&latest.scene, &scene)
        {
            latest.jpeg = Some(jpeg.clone());
        }
        Some(jpeg)
    }
}

#[cfg(test)]
mod tests {
    use helmet_pipelines::letterbox::Letterbox;
    use helmet_pipelines::{Detection, Frame};

    use super::*;
    use crate::telemetry::snapshot::CameraSnapshot;
    use crate::zones::CameraRules;

    fn scene(seq: u64) -> Scene {
        let letterbox = Letterbox::new(128, 72, 128, 128);
        Scene {
            frame: Frame {
                camera: Arc::from("gate"),
                seq,
                pts: None,
                capture_time: SystemTime::now(),
                letterbox,
                pixels: vec![90; 128 * 128 * 3],
            },
            boxes: [Detection {
                x1: 10.0,
                y1: 10.0,
                x2: 40.0,
                y2: 50.0,
                score: 0.9,
                class: 1,
            }]
            .into_iter()
            .collect(),
            labels: vec![TrackLabel {
                track_id: 7,
                bbox: [10.0, 10.0, 40.0, 50.0],
            }],
            rules: Arc::new(CameraRules::default()),
            class_names: ["With Helmet".to_string(), "Without Helmet".to_string()].into(),
        }
    }

    #[test]
    fn a_frame_is_encoded_once_when_asked_and_goes_with_its_camera() {
        let board = PageBoard::default();
        assert_eq!(board.frame_jpeg("gate"), None, "no frame yet");
        board.show("gate", scene(1));
        let first = board.frame_jpeg("gate").expect("a JPEG");
        let image =
            image::load_from_memory_with_format(&first, image::ImageFormat::Jpeg).expect("decodes");
        assert_eq!(
            (image.width(), image.height()),
            (128, 72),
            "the content only"
        );
        let again = board.frame_jpeg("gate").expect("a JPEG");
        assert_eq!(again.as_ptr(), first.as_ptr(), "the cached encoding");
        board.show("gate", scene(2));
        let next = board.frame_jpeg("gate").expect("a JPEG");
        assert_ne!(next.as_ptr(), first.as_ptr(), "a new frame is encoded anew");

        let without_gate = Snapshot {
            cameras: vec![CameraSnapshot {
                name: "yard".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        board.observe(&without_gate, SystemTime::now());
        assert_eq!(
            board.frame_jpeg("gate"),
            None,
            "a removed camera's frame goes"
        );
        assert_eq!(board.history().len(), 1);
    }
}
