//! helmetd's data path: camera frames in, helmet detections and hard-example decisions out.
//! Knows nothing of processes, MQTT or the daemon's config file.

pub mod cpu;
pub mod detect;
pub mod frame;
pub mod hem;
pub mod ingest;
pub mod letterbox;
pub mod output;
pub mod output_dir;
pub mod redact;
pub mod rtsp_server;
pub mod runtime;
pub mod still;

pub use frame::{Detection, Detections, Frame, MAX_DETECTIONS};
pub use letterbox::Letterbox;
