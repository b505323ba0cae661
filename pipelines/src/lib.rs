//! helmetd's data path: camera frames in, helmet detections and hard-example decisions out.
//! Knows nothing of processes, MQTT or the daemon's config file.

pub mod frame;
pub mod hem;
pub mod letterbox;

pub use frame::{Detection, Detections, Frame, MAX_DETECTIONS};
pub use letterbox::Letterbox;
