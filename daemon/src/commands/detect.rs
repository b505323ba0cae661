//! `helmetd detect`: the edge pipeline on images, video files and RTSP URLs, one JSON line per
//! frame. Also the engine of the demo and of `bench pipeline`'s model-only half.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use helmet_pipelines::detect::{Detector, ModelSpec};
use helmet_pipelines::hem::HardExampleMining;
use helmet_pipelines::ingest::{Camera, CameraSettings, Pace};
use helmet_pipelines::output::{Outcome, SednaOutputs};
use helmet_pipelines::{Detection, Frame, still};
use rand::SeedableRng;

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// What one `detect` run reads and how.
pub struct DetectJob {
    pub model: ModelSpec,
    pub hem: HardExampleMining,
    pub class_names: Vec<String>,
    pub inputs: Vec<String>,
    /// Sampling rate for video and RTSP inputs, by stream time.
    pub fps: f64,
    /// Stop each stream input after this many frames (RTSP streams never end by themselves).
    pub max_frames: Option<u64>,
    /// Stop each stream input after this long.
    pub duration: Option<Duration>,
    pub outputs: Option<SednaOutputs>,
}

/// The decision for one frame.
pub struct FrameResult<'a> {
    pub source: &'a str,
    pub frame: &'a Frame,
    pub detections: &'a [Detection],
    pub hard: bool,
    pub infer: Duration,
}

impl FrameResult<'_> {
    /// `{"source":…,"frame":…,"detections":[[x1,y1,x2,y2,score,class],…],"hard":bool}`
    pub fn to_json(&self) -> serde_json::Value {
        let round = |v: f32, places: i32| {
            let k = 10f64.powi(places);
            (f64::from(v) * k).round() / k
        };
        let boxes: Vec<serde_json::Value> = self
            .detections
            .iter()
            .map(|d| {
                serde_json::json!([
                    round(d.x1, 1),
                    round(d.y1, 1),
                    round(d.x2, 1),
                    round(d.y2, 1),
                    round(d.score, 4),
                    d.class
                ])
            })
            .collect();
        serde_json::json!({
            "source": self.source,
            "frame": self.frame.seq,
            "detections": boxes,
            "hard": self.hard,
            "infer_ms": (self.infer.as_secs_f64() * 1e4).round() / 10.0,
        })
    }
}

/// Totals over a run.
#[derive(Debug, Default, Clone)]
pub struct DetectSummary {
    pub frames: u64,
    pub hard: u64,
    pub boxes_per_class: Vec<u64>,
    pub dropped: u64,
    pub infer_times: Vec<Duration>,
    pub wall: Duration,
}

impl DetectSummary {
    pub fn infer_percentile(&self, q: f64) -> Duration {
        let mut t = self.infer_times.clone();
        t.sort_unstable();
        let idx = ((t.len() as f64 - 1.0) * q).round().max(0.0) as usize;
        t.get(idx).copied().unwrap_or_default()
    }
}

enum Input {
    Image(PathBuf),
    Stream { url: String, file: bool },
}

fn classify(input: &str) -> anyhow::Result<Input> {
    if input.starts_with("rtsp://")
        || input.starts_with("rtsps://")
        || input.starts_with("rtspt://")
    {
        return Ok(Input::Stream {
            url: input.to_string(),
            file: false,
        });
    }
    let path = match input.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(input),
    };
    let path = path
        .canonicalize()
        .with_context(|| format!("{input}: cannot open"))?;
    if is_image(&path) {
        return Ok(Input::Image(path));
    }
    let url = url::Url::from_file_path(&path)
        .map_err(|()| anyhow::anyhow!("{input}: not a usable path"))?;
    Ok(Input::Stream {
        url: url.to_string(),
        file: true,
    })
}

/// Whether `path` names a still image (by its extension), as `detect` and `bench joint` read it.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A camera-like name for an input: its file name, with anything unsafe in file names and MQTT
/// topics replaced.
fn source_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "input".to_string()
    } else {
        safe
    }
}

/// Runs the job; `on_frame` sees every decision as it is made.
pub fn run(
    job: &DetectJob,
    mut on_frame: impl FnMut(&FrameResult<'_>),
) -> anyhow::Result<DetectSummary> {
    let mut detector = Detector::load(&job.model)?;
    let (input_w, input_h) = detector.input_size();
    let num_classes = detector.num_classes();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut summary = DetectSummary {
        boxes_per_class: vec![0; num_classes],
        ..Default::default()
    };
    let started = Instant::now();

    let mut decide =
        |source: &str, frame: &Frame, summary: &mut DetectSummary| -> anyhow::Result<()> {
            let t0 = Instant::now();
            let detections = detector.detect(frame)?;
            let infer = t0.elapsed();
            let hard = job.hem.is_hard(&detections, num_classes, &mut rng);
            summary.frames += 1;
            summary.hard += u64::from(hard);
            summary.infer_times.push(infer);
            for d in &detections {
                if let Some(n) = summary.boxes_per_class.get_mut(usize::from(d.class)) {
                    *n += 1;
                }
            }
            if let Some(outputs) = &job.outputs {
                let outcome = Outcome {
                    is_hard: hard,
                    final_result: &detections,
                    edge_result: &detections,
                    cloud_result: None,
                };
                outputs.write(frame, &outcome)?;
            }
            on_frame(&FrameResult {
                source,
                frame,
                detections: &detections,
                hard,
                infer,
            });
            Ok(())
        };

    for input in &job.inputs {
        // Each JSON line names its input; an rtsp:// input's password stays out of it.
        let shown = helmet_pipelines::redact::redact(input);
        match classify(input)? {
            Input::Image(path) => {
                let (frame, _) = still::load_still(&path, &source_name(&path), input_w, input_h)?;
                decide(&shown, &frame, &mut summary)?;
            }
            Input::Stream { url, file } => {
                let name = if file {
                    source_name(Path::new(&url))
                } else {
                    "rtsp".to_string()
                };
                let mut settings = CameraSettings::new(&name, &url, input_w, input_h);
                settings.detect_fps = job.fps;
                // A file is read completely, frame by frame; a live stream keeps the latest frame.
                settings.pace = if file {
                    Pace::AsFastAsPossible
                } else {
                    Pace::Realtime
                };
                let camera = Camera::start(settings)?;
                let stream_started = Instant::now();
                let mut frames = 0u64;
                loop {
                    if job.max_frames.is_some_and(|m| frames >= m)
                        || job.duration.is_some_and(|d| stream_started.elapsed() >= d)
                    {
                        break;
                    }
                    match camera.next_frame(Duration::from_millis(200)) {
                        Some(frame) => {
                            frames += 1;
                            decide(&shown, &frame, &mut summary)?;
                        }
                        None if camera.is_finished() => break,
                        None => {}
                    }
                }
                summary.dropped += camera.stats().dropped;
                camera.stop();
                if frames == 0 {
                    let why = camera
                        .stats()
                        .last_error
                        .unwrap_or_else(|| "no frames".into());
                    bail!("{shown}: no frame was decoded: {why}");
                }
            }
        }
    }
    summary.wall = started.elapsed();
    Ok(summary)
}

/// The human summary printed after a run (stderr for `detect`, stdout for the demo).
pub fn summary_lines(summary: &DetectSummary, class_names: &[String]) -> Vec<String> {
    let mut lines = vec![format!(
        "{} frame(s) in {:.1} s, {} hard ({:.1} %), {} dropped by the sampler",
        summary.frames,
        summary.wall.as_secs_f64(),
        summary.hard,
        100.0 * summary.hard as f64 / summary.frames.max(1) as f64,
        summary.dropped
    )];
    for (i, n) in summary.boxes_per_class.iter().enumerate() {
        let name = class_names.get(i).map_or("?", String::as_str);
        lines.push(format!("  {name:<16} {n} box(es)"));
    }
    lines.push(format!(
        "  model p50 {:.1} ms, p99 {:.1} ms per frame",
        summary.infer_percentile(0.5).as_secs_f64() * 1e3,
        summary.infer_percentile(0.99).as_secs_f64() * 1e3
    ));
    lines
}

/// A model spec from the config's `[edge.model]`, with the path resolved.
pub fn edge_model_spec(
    cfg: &crate::config::Config,
    model_override: Option<&Path>,
    input_override: Option<[u32; 2]>,
) -> ModelSpec {
    let m = &cfg.edge.model;
    let [h, w] = input_override.unwrap_or(m.input);
    let path = crate::config::resolve_path(model_override.unwrap_or(&m.path));
    let mut spec = ModelSpec::new(path, w, h, m.classes.len());
    spec.score_threshold = m.score_threshold;
    spec.nms_iou = m.nms_iou;
    spec.intra_threads = m.intra_threads;
    spec
}
