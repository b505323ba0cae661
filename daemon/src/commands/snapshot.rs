//! `helmetd snapshot`: one frame of a configured camera with its zones and masks drawn on it, so
//! an operator can check the fractions they wrote against what the camera sees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use helmet_pipelines::ingest::{Camera, CameraSettings, IngestError};
use helmet_pipelines::output::{self, OutputError};
use image::{Rgb, RgbImage};

use crate::config::{self, CameraConfig, Config};
use crate::zones::{CameraRules, MASK_COLOUR, RulesError, ZONE_COLOUR, draw_areas};

/// How long `helmetd snapshot` waits for a frame by default: an RTSP camera's connection,
/// keyframe and first decode take a few seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no camera named {name:?} in the config (cameras: {})", list(.known))]
    UnknownCamera { name: String, known: Vec<String> },
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("camera {camera:?}: {reason}")]
    Settings { camera: String, reason: String },
    #[error("camera {camera:?}: cannot start")]
    Start {
        camera: String,
        #[source]
        source: IngestError,
    },
    #[error("camera {camera:?}: no frame within {}s{}", timeout.as_secs_f64(), last_error.as_ref().map_or(String::new(), |e| format!(" (last error: {e})")))]
    NoFrame {
        camera: String,
        timeout: Duration,
        last_error: Option<String>,
    },
    #[error("camera {camera:?}: cannot encode the snapshot")]
    Encode {
        camera: String,
        #[source]
        source: OutputError,
    },
    #[error("{}: cannot write the snapshot", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub zones: usize,
    pub masks: usize,
}

/// Takes one frame of camera `name` of `cfg`, draws its zones, masks and a legend, and writes it
/// as a JPEG to `out`, at the camera's own size.
pub fn run(
    cfg: &Config,
    name: &str,
    out: &Path,
    timeout: Duration,
) -> Result<Snapshot, SnapshotError> {
    let cam = cfg.cameras.iter().find(|c| c.name == name).ok_or_else(|| {
        SnapshotError::UnknownCamera {
            name: name.to_string(),
            known: cfg.cameras.iter().map(|c| c.name.clone()).collect(),
        }
    })?;
    let rules = CameraRules::from_config(cam)?;
    let mut image = grab(cfg, cam, timeout)?;
    draw_rules(&mut image, &cam.name, &rules);
    let jpeg = output::encode_jpeg(&image, cfg.output.jpeg_quality).map_err(|source| {
        SnapshotError::Encode {
            camera: cam.name.clone(),
            source,
        }
    })?;
    std::fs::write(out, jpeg).map_err(|source| SnapshotError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Snapshot {
        path: out.to_path_buf(),
        width: image.width(),
        height: image.height(),
        zones: rules.zones.len(),
        masks: rules.masks.len(),
    })
}

/// One frame at the camera's own size, so pixel positions in the picture divide into the
/// configured fractions. The first frame, letterboxed to the model input as the daemon reads
/// it, tells that size; a second capture at that size gives the sharp picture, and the first,
/// scaled up, stands in if the second does not come in time.
fn grab(cfg: &Config, cam: &CameraConfig, timeout: Duration) -> Result<RgbImage, SnapshotError> {
    let deadline = std::time::Instant::now() + timeout;
    let [h, w] = cfg.edge.model.input;
    let frame = capture(settings(cam, w, h)?, cam, timeout)?;
    let lb = &frame.letterbox;
    let (w, h) = (
        lb.orig_w.min(config::MAX_IMAGE_SIDE),
        lb.orig_h.min(config::MAX_IMAGE_SIDE),
    );
    let content = output::content_image(&frame);
    if content.dimensions() == (w, h) {
        return Ok(content);
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match capture(settings(cam, w, h)?, cam, left.max(Duration::from_secs(1))) {
        Ok(native) => Ok(output::content_image(&native)),
        Err(e) => {
            tracing::warn!(camera = %cam.name, error = %e, "no frame at the camera's size; using the model's view, scaled up");
            Ok(image::imageops::resize(
                &content,
                w,
                h,
                image::imageops::FilterType::Triangle,
            ))
        }
    }
}

fn capture(
    settings: CameraSettings,
    cam: &CameraConfig,
    timeout: Duration,
) -> Result<helmet_pipelines::Frame, SnapshotError> {
    let camera = Camera::start(settings).map_err(|source| SnapshotError::Start {
        camera: cam.name.clone(),
        source,
    })?;
    let frame = camera.next_frame(timeout);
    let last_error = camera.stats().last_error;
    camera.stop();
    frame.ok_or_else(|| SnapshotError::NoFrame {
        camera: cam.name.clone(),
        timeout,
        last_error,
    })
}

/// The camera's ingest settings as `helmetd run` builds them, letterboxed to `w × h`, not
/// looped, and sampled often so the first decoded frame is not held back.
fn settings(cam: &CameraConfig, w: u32, h: u32) -> Result<CameraSettings, SnapshotError> {
    let mut s = crate::run::ingest_settings(cam, w, h).map_err(|e| SnapshotError::Settings {
        camera: cam.name.clone(),
        reason: format!("{e:#}"),
    })?;
    s.detect_fps = 25.0;
    s.loop_file = false;
    Ok(s)
}

/// The camera's areas (see [`draw_areas`]) and a legend.
pub fn draw_rules(image: &mut RgbImage, camera: &str, rules: &CameraRules) {
    draw_areas(image, rules);
    let white = Rgb([255, 255, 255]);
    let schedule = if rules.schedule.is_always() {
        "always active".to_string()
    } else {
        format!(
            "active in {} schedule window(s), local time",
            rules.schedule.windows().len()
        )
    };
    let lines = [
        (
            format!(
                "helmetd snapshot: camera {camera}, {}x{}",
                image.width(),
                image.height()
            ),
            white,
        ),
        (
            format!(
                "zones ({}): outlined; foot point inside counts",
                rules.zones.len()
            ),
            ZONE_COLOUR,
        ),
        (
            format!("masks ({}): hatched; detections ignored", rules.masks.len()),
            MASK_COLOUR,
        ),
        (schedule, white),
    ];
    let bottom = i64::from(image.height()) - 12 * lines.len() as i64 - 4;
    for (i, (text, colour)) in lines.iter().enumerate() {
        output::draw_label(image, 6, bottom + 12 * i as i64, text, *colour);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video_url() -> String {
        let video = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../media/helmet-test.mp4"
        ));
        let video = video.canonicalize().unwrap();
        url::Url::from_file_path(video).unwrap().to_string()
    }

    fn config_with_yard() -> Config {
        let camera = format!(
            "name = \"yard\"\nurl = \"{}\"\nrequired_zones = [\"scaffold\"]\n\
             [[zone]]\nname = \"scaffold\"\npolygon = [[0.10, 0.20], [0.90, 0.20], [0.90, 0.95], [0.10, 0.95]]\n\
             [[mask]]\nname = \"street\"\npolygon = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4]]\n",
            video_url()
        );
        let mut cfg = Config::embedded_default().unwrap();
        cfg.cameras = vec![toml::from_str(&camera).unwrap()];
        cfg.output.jpeg_quality = 95;
        cfg
    }

    fn near(pixel: Rgb<u8>, colour: Rgb<u8>) -> bool {
        pixel
            .0
            .iter()
            .zip(colour.0)
            .all(|(&a, b)| (i16::from(a) - i16::from(b)).abs() <= 60)
    }

    #[test]
    fn snapshot_of_a_file_camera_draws_its_zones() {
        let cfg = config_with_yard();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("yard.jpg");
        let shot = run(&cfg, "yard", &out, DEFAULT_TIMEOUT).unwrap();
        assert_eq!((shot.zones, shot.masks), (1, 1));
        let decoded = image::open(&out).unwrap().to_rgb8();
        // The bundled video is 1280×720; the picture is the camera's size, not the model's.
        assert_eq!(decoded.dimensions(), (1280, 720));
        assert_eq!((shot.width, shot.height), (1280, 720));
        // Along the zone's bottom edge (y = 0.95 · 720 = 684) and right edge (x = 0.9 · 1280).
        for x in (450..1100).step_by(50) {
            let p = *decoded.get_pixel(x, 684);
            assert!(near(p, ZONE_COLOUR), "({x}, 684) is {p:?}");
        }
        for y in (250..600).step_by(50) {
            let p = *decoded.get_pixel(1152, y);
            assert!(near(p, ZONE_COLOUR), "(1152, {y}) is {p:?}");
        }
        // Along the mask's top edge, right of its label.
        let p = *decoded.get_pixel(300, 0);
        assert!(near(p, MASK_COLOUR), "(300, 0) is {p:?}");
    }

    #[test]
    fn unknown_camera_lists_the_configured_ones() {
        let cfg = config_with_yard();
        let e = run(
            &cfg,
            "gate",
            Path::new("/nonexistent/x.jpg"),
            DEFAULT_TIMEOUT,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no camera named \"gate\" in the config (cameras: yard)"
        );
    }
}
