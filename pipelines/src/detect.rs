//! YOLO helmet detector on ONNX Runtime: letterboxed frame in, boxes in original pixels out.
//!
//! Pre- and post-processing follow models/PROVENANCE.md so that results match the Python
//! reference (scripts/make_reference_detections.py, checked by tests/reference.rs).

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::{Array4, ArrayView2, Ix2};
use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::frame::{Detection, Detections, Frame, MAX_DETECTIONS};
use crate::runtime;

/// PROVENANCE.md's display threshold; alerts use a higher one downstream.
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.25;
/// Ultralytics' default `iou` for NMS, which the reference uses.
pub const DEFAULT_NMS_IOU: f32 = 0.45;
/// One intra-op thread: the daemon shares 2 cores with video decoding (docs/stack.md §2).
pub const DEFAULT_INTRA_THREADS: usize = 1;

/// What the daemon expects a model file to be; checked against the file when it is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub input_w: u32,
    pub input_h: u32,
    pub num_classes: usize,
    /// Boxes whose best class score is below this are dropped (`score >= threshold` is kept).
    pub score_threshold: f32,
    /// Same-class boxes overlapping a better one with IoU strictly above this are suppressed.
    pub nms_iou: f32,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime use every core.
    pub intra_threads: usize,
}

impl ModelSpec {
    pub fn new(path: impl Into<PathBuf>, input_w: u32, input_h: u32, num_classes: usize) -> Self {
        Self {
            path: path.into(),
            input_w,
            input_h,
            num_classes,
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            nms_iou: DEFAULT_NMS_IOU,
            intra_threads: DEFAULT_INTRA_THREADS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot load model {}: ONNX Runtime is not initialised (call init_onnxruntime first)", .model.display())]
    RuntimeNotInitialised { model: PathBuf },
    #[error("invalid model spec for {}: {reason}", .model.display())]
    InvalidSpec { model: PathBuf, reason: String },
    #[error("cannot load model {}: {source}", .model.display())]
    Load {
        model: PathBuf,
        #[source]
        source: ort::Error,
    },
    /// The file is a valid model, but not the one the configuration describes.
    #[error("model {} {found}, config expects {expected}", .model.display())]
    Mismatch {
        model: PathBuf,
        found: String,
        expected: String,
    },
    #[error("frame from {camera} is {found}, model {} needs {expected}", .model.display())]
    FrameSize {
        model: PathBuf,
        camera: String,
        found: String,
        expected: String,
    },
    #[error("inference with model {} failed: {source}", .model.display())]
    Run {
        model: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("cannot register the CPU arena on ONNX Runtime's environment: {source}")]
    Arena {
        #[source]
        source: ort::Error,
    },
    /// ONNX Runtime keeps one CPU allocator per environment, and the environment lives as long
    /// as the process.
    #[error("a CPU arena {registered:?} is already registered; cannot register {requested:?}")]
    ArenaAlreadyRegistered {
        registered: CpuArenaConfig,
        requested: CpuArenaConfig,
    },
}

/// Where a session's CPU tensors (a run's inputs, outputs and intermediates) are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorArena {
    /// The session's own CPU arena, ONNX Runtime's defaults: it grows by doubling regions.
    Session,
    /// The arena [`register_cpu_arena`] put on the process's ONNX Runtime environment (without
    /// one, ONNX Runtime gives the session its own as with `Session`).
    Environment,
}

/// How the environment's CPU arena grows: the fields of ONNX Runtime's `OrtArenaCfg` we set;
/// the others keep ONNX Runtime's defaults (extend by doubling regions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuArenaConfig {
    /// Size of the arena's first region (ONNX Runtime's default is 1 MiB). Chunks never merge
    /// across regions, so a first region big enough for what the model's load keeps and every
    /// tensor of a run puts them in one address range; pages past what is used stay untouched.
    pub initial_chunk_bytes: usize,
}

impl CpuArenaConfig {
    /// The keys and values `CreateArenaCfgV2` takes.
    fn entries(&self) -> [(&'static CStr, usize); 1] {
        [(c"initial_chunk_size_bytes", self.initial_chunk_bytes)]
    }
}

/// The configuration registered on the environment, if any.
static REGISTERED_ARENA: Mutex<Option<CpuArenaConfig>> = Mutex::new(None);

/// Registers a CPU arena with `config` on the process's ONNX Runtime environment, for sessions
/// loaded with [`TensorArena::Environment`]. Once per process: registering the same config again
/// does nothing, another config is refused.
pub fn register_cpu_arena(config: CpuArenaConfig) -> Result<(), DetectError> {
    let arena_error = |source| DetectError::Arena { source };
    let env = runtime::environment().ok_or_else(|| {
        arena_error(ort::Error::new(
            "ONNX Runtime is not initialised (call init_onnxruntime first)",
        ))
    })?;
    // A poisoned lock only means another registration panicked; the value is still consistent.
    let mut registered = REGISTERED_ARENA.lock().unwrap_or_else(|e| e.into_inner());
    match *registered {
        Some(same) if same == config => return Ok(()),
        Some(other) => {
            return Err(DetectError::ArenaAlreadyRegistered {
                registered: other,
                requested: config,
            });
        }
        None => {}
    }
    let memory_info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(arena_error)?;
    let entries = config.entries();
    let keys: Vec<*const c_char> = entries.iter().map(|(key, _)| key.as_ptr()).collect();
    let values: Vec<usize> = entries.iter().map(|&(_, value)| value).collect();
    let api = ort::api();
    let mut arena_cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: `keys` and `values` hold `keys.len()` elements each and outlive the call; every
    // key is a NUL-terminated static string; `arena_cfg` is a valid place for the result. The
    // returned status is owned by `result_from_status`.
    unsafe {
        ort::Error::result_from_status((api.CreateArenaCfgV2)(
            keys.as_ptr(),
            values.as_ptr(),
            keys.len(),
            &mut arena_cfg,
        ))
    }
    .map_err(arena_error)?;
    // SAFETY: the environment is a `'static` one that lives until the process ends; ONNX Runtime
    // synchronises its allocator registry itself (it is the same cast `ort` makes for its own
    // environment calls); `memory_info` and `arena_cfg` are valid for the call, which copies
    // what it needs from both.
    let status = unsafe {
        ort::Error::result_from_status((api.CreateAndRegisterAllocator)(
            env.ptr().cast_mut(),
            memory_info.ptr(),
            arena_cfg,
        ))
    };
    // SAFETY: `arena_cfg` came from CreateArenaCfgV2 above and is released once, here.
    unsafe { (api.ReleaseArenaCfg)(arena_cfg) };
    status.map_err(arena_error)?;
    *registered = Some(config);
    Ok(())
}

/// A decoded box before NMS, in model-input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
    pub class: u16,
    /// Column in the model output; breaks score ties so NMS is deterministic.
    pub anchor: u32,
}

/// Decodes a YOLOv8-style head output `[4 + nc, N]` (rows cx, cy, w, h, then nc sigmoid class
/// scores; no objectness) into `out`, which is cleared first and reused to avoid allocating per
/// frame. Keeps anchors whose best class score is `>= score_threshold`; NaN scores and
/// non-finite boxes are dropped. An output with fewer than 5 rows yields nothing.
pub fn decode_yolo(output: ArrayView2<'_, f32>, score_threshold: f32, out: &mut Vec<Candidate>) {
    out.clear();
    let rows = output.nrows();
    if rows < 5 {
        return;
    }
    for (anchor, col) in output.columns().into_iter().enumerate() {
        let (mut best, mut class) = (f32::NEG_INFINITY, 0usize);
        for c in 0..rows - 4 {
            // `>` is false for NaN, so a NaN score can never win.
            if col[4 + c] > best {
                best = col[4 + c];
                class = c;
            }
        }
        if best < score_threshold {
            continue;
        }
        let (cx, cy, w, h) = (col[0], col[1], col[2], col[3]);
        if !(cx.is_finite() && cy.is_finite() && w.is_finite() && h.is_finite()) {
            continue;
        }
        out.push(Candidate {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
            score: best,
            class: u16::try_from(class).unwrap_or(u16::MAX),
            anchor: u32::try_from(anchor).unwrap_or(u32::MAX),
        });
    }
}

/// Class-wise greedy NMS (torchvision semantics): sorts by score descending, keeps the best box
/// and suppresses same-class boxes with IoU strictly above `iou_threshold`, at most `max_keep`
/// boxes. Works in place without allocating; on return `candidates` holds the kept boxes, best
/// first.
pub fn nms(candidates: &mut Vec<Candidate>, iou_threshold: f32, max_keep: usize) {
    candidates.sort_unstable_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.anchor.cmp(&b.anchor))
    });
    let mut len = candidates.len();
    let mut kept = 0;
    while kept < len && kept < max_keep {
        let best = candidates[kept];
        let mut write = kept + 1;
        for read in kept + 1..len {
            let other = candidates[read];
            if !(other.class == best.class && iou(&best, &other) > iou_threshold) {
                candidates[write] = other;
                write += 1;
            }
        }
        len = write;
        kept += 1;
    }
    candidates.truncate(kept);
}

fn iou(a: &Candidate, b: &Candidate) -> f32 {
    let iw = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let ih = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = iw * ih;
    let union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Packed RGB HWC u8 → planar CHW f32 in [0, 1]. Divides (rather than multiplying by 1/255) so
/// the values are bit-identical to numpy's `x.astype(float32) / 255`.
fn fill_nchw(pixels: &[u8], chw: &mut [f32]) {
    let plane = chw.len() / 3;
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in pixels.chunks_exact(3).take(plane).enumerate() {
        r[i] = f32::from(px[0]) / 255.0;
        g[i] = f32::from(px[1]) / 255.0;
        b[i] = f32::from(px[2]) / 255.0;
    }
}

/// One loaded model with its reusable input tensor and decode scratch space.
pub struct Detector {
    session: Session,
    model: PathBuf,
    input_w: u32,
    input_h: u32,
    num_classes: usize,
    score_threshold: f32,
    nms_iou: f32,
    input: Array4<f32>,
    candidates: Vec<Candidate>,
    last_inference: Option<Duration>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.model)
            .field("input", &(self.input_w, self.input_h))
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Loads the model and checks that its input and output are what `spec` says, so a wrong
    /// file is reported at start-up instead of producing garbage boxes.
    pub fn load(spec: &ModelSpec) -> Result<Self, DetectError> {
        Self::load_with_arena(spec, TensorArena::Session)
    }

    /// [`Detector::load`], with the run's tensors in `arena`.
    pub fn load_with_arena(spec: &ModelSpec, arena: TensorArena) -> Result<Self, DetectError> {
        let model = spec.path.clone();
        validate_spec(spec)?;
        let env = runtime::environment().ok_or_else(|| DetectError::RuntimeNotInitialised {
            model: model.clone(),
        })?;
        let load = || -> ort::Result<Session> {
            let builder = Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(spec.intra_threads)?
                // Spinning threads double CPU use when decoders compete for the cores.
                .with_intra_op_spinning(false)?
                .with_inter_threads(1)?
                // The memory pattern pre-plans one block for every intermediate tensor of a run
                // and keeps it: 22 MiB of the worker's 147 MiB peak for no gain in frames/s on
                // this fixed-shape model (`helmetd bench footprint`, docs/benchmarks.md).
                .with_memory_pattern(false)?;
            let mut builder = match arena {
                TensorArena::Session => builder,
                // Uses the environment's allocators instead of creating the session's own.
                TensorArena::Environment => builder.with_env_allocators()?,
            };
            builder.commit_from_file(&spec.path)
        };
        let session = load().map_err(|source| DetectError::Load {
            model: model.clone(),
            source,
        })?;
        let anchors = check_io(&session, spec)?;

        let (w, h) = (spec.input_w as usize, spec.input_h as usize);
        Ok(Self {
            session,
            model,
            input_w: spec.input_w,
            input_h: spec.input_h,
            num_classes: spec.num_classes,
            score_threshold: spec.score_threshold,
            nms_iou: spec.nms_iou,
            input: Array4::zeros((1, 3, h, w)),
            candidates: Vec::with_capacity(anchors.unwrap_or(0)),
            last_inference: None,
        })
    }

    /// Model input size as (width, height).
    pub fn input_size(&self) -> (u32, u32) {
        (self.input_w, self.input_h)
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn model_path(&self) -> &Path {
        &self.model
    }

    /// Wall time of the last ONNX Runtime `run` alone (no pre- or post-processing).
    pub fn last_inference(&self) -> Option<Duration> {
        self.last_inference
    }

    /// Runs the model on a letterboxed frame; boxes come back in the frame's original pixels,
    /// best first.
    pub fn detect(&mut self, frame: &Frame) -> Result<Detections, DetectError> {
        let (w, h) = (self.input_w as usize, self.input_h as usize);
        if frame.input_size() != (self.input_w, self.input_h) || frame.pixels.len() != w * h * 3 {
            return Err(DetectError::FrameSize {
                model: self.model.clone(),
                camera: frame.camera.to_string(),
                found: format!(
                    "{}x{} ({} bytes)",
                    frame.letterbox.input_w,
                    frame.letterbox.input_h,
                    frame.pixels.len()
                ),
                expected: format!("{w}x{h} RGB ({} bytes)", w * h * 3),
            });
        }
        let chw = self
            .input
            .as_slice_mut()
            .expect("Array4::zeros is in standard layout");
        fill_nchw(&frame.pixels, chw);

        let run_error = |source| DetectError::Run {
            model: self.model.clone(),
            source,
        };
        let tensor = TensorRef::from_array_view(&self.input).map_err(run_error)?;
        let started = Instant::now();
        let outputs = self.session.run(ort::inputs![tensor]).map_err(run_error)?;
        self.last_inference = Some(started.elapsed());
        let output = outputs[0].try_extract_array::<f32>().map_err(run_error)?;

        let rows = 4 + self.num_classes;
        let output = match output.shape() {
            [1, r, _] if *r == rows => output
                .index_axis_move(ndarray::Axis(0), 0)
                .into_dimensionality::<Ix2>()
                .map_err(|e| run_error(ort::Error::new(e.to_string())))?,
            found => {
                return Err(DetectError::Mismatch {
                    model: self.model.clone(),
                    found: format!("returned output {}", fmt_dims(found)),
                    expected: format!("[1,{rows},N] (4 box values + {} classes)", self.num_classes),
                });
            }
        };
        decode_yolo(output, self.score_threshold, &mut self.candidates);
        nms(&mut self.candidates, self.nms_iou, MAX_DETECTIONS);

        let mut detections = Detections::new();
        for c in &self.candidates {
            let (x1, y1) = frame.letterbox.to_original(c.x1, c.y1);
            let (x2, y2) = frame.letterbox.to_original(c.x2, c.y2);
            let det = Detection {
                x1,
                y1,
                x2,
                y2,
                score: c.score,
                class: c.class,
            };
            if detections.push(det).is_err() {
                break;
            }
        }
        Ok(detections)
    }
}

fn validate_spec(spec: &ModelSpec) -> Result<(), DetectError> {
    let reason = if spec.input_w == 0 || spec.input_h == 0 {
        "input size must be non-zero"
    } else if spec.num_classes == 0 || spec.num_classes > usize::from(u16::MAX) {
        "num_classes must be between 1 and 65535"
    } else if !(0.0..=1.0).contains(&spec.score_threshold) {
        "score_threshold must be within [0, 1]"
    } else if !(0.0..=1.0).contains(&spec.nms_iou) {
        "nms_iou must be within [0, 1]"
    } else {
        return Ok(());
    };
    Err(DetectError::InvalidSpec {
        model: spec.path.clone(),
        reason: reason.to_owned(),
    })
}

/// Checks the session's single float32 input `[1,3,H,W]` and its first output `[1,4+nc,N]`
/// against `spec` (dynamic dimensions accept anything). Returns N when it is fixed.
fn check_io(session: &Session, spec: &ModelSpec) -> Result<Option<usize>, DetectError> {
    let mismatch = |found: String, expected: String| DetectError::Mismatch {
        model: spec.path.clone(),
        found,
        expected,
    };
    let expected_input = [1, 3, i64::from(spec.input_h), i64::from(spec.input_w)];
    let expected_input_text = format!("float32 {}", fmt_dims(&expected_input));
    let [input] = session.inputs() else {
        return Err(mismatch(
            format!("has {} inputs", session.inputs().len()),
            format!("one input {expected_input_text}"),
        ));
    };
    match input.dtype() {
        ValueType::Tensor { ty, shape, .. }
            if *ty == TensorElementType::Float32 && dims_match(shape, &expected_input) => {}
        ValueType::Tensor { ty, shape, .. } if *ty == TensorElementType::Float32 => {
            return Err(mismatch(
                format!("has input {}", fmt_dims(shape)),
                fmt_dims(&expected_input),
            ));
        }
        other => {
            return Err(mismatch(
                format!("has input `{}` of type {other}", input.name()),
                expected_input_text,
            ));
        }
    }

    let rows = i64::try_from(4 + spec.num_classes).unwrap_or(i64::MAX);
    let expected_output = format!(
        "float32 [1,{rows},N] (4 box values + {} classes)",
        spec.num_classes
    );
    let Some(output) = session.outputs().first() else {
        return Err(mismatch("has no outputs".into(), expected_output));
    };
    match output.dtype() {
        ValueType::Tensor { ty, shape, .. }
            if *ty == TensorElementType::Float32
                && shape.len() == 3
                && dims_match(&shape[..2], &[1, rows]) =>
        {
            Ok(usize::try_from(shape[2]).ok())
        }
        ValueType::Tensor { shape, .. } => Err(mismatch(
            format!("has output {}", fmt_dims(shape)),
            expected_output,
        )),
        other => Err(mismatch(
            format!("has output of type {other}"),
            expected_output,
        )),
    }
}

/// Equal rank and every fixed dimension equal; ONNX Runtime reports dynamic dimensions as -1.
fn dims_match(found: &[i64], expected: &[i64]) -> bool {
    found.len() == expected.len() && found.iter().zip(expected).all(|(&f, &e)| f < 0 || f == e)
}

fn fmt_dims<T: std::fmt::Display>(dims: &[T]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Builds a `[4 + nc, N]` head output from per-anchor `(cx, cy, w, h, scores)`.
    fn head(anchors: &[(f32, f32, f32, f32, &[f32])]) -> Array2<f32> {
        let nc = anchors.first().map_or(0, |a| a.4.len());
        Array2::from_shape_fn((4 + nc, anchors.len()), |(r, j)| {
            let (cx, cy, w, h, s) = anchors[j];
            match r {
                0 => cx,
                1 => cy,
                2 => w,
                3 => h,
                _ => s[r - 4],
            }
        })
    }

    fn cand(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class: u16, anchor: u32) -> Candidate {
        Candidate {
            x1,
            y1,
            x2,
            y2,
            score,
            class,
            anchor,
        }
    }

    #[test]
    fn decode_takes_argmax_class_and_converts_to_corners() {
        let out = head(&[
            (50.0, 40.0, 20.0, 10.0, &[0.1, 0.8]),
            (5.0, 5.0, 2.0, 2.0, &[0.3, 0.2]),
        ]);
        let mut c = Vec::new();
        decode_yolo(out.view(), 0.25, &mut c);
        assert_eq!(
            c,
            vec![
                cand(40.0, 35.0, 60.0, 45.0, 0.8, 1, 0),
                cand(4.0, 4.0, 6.0, 6.0, 0.3, 0, 1)
            ]
        );
    }

    #[test]
    fn score_equal_to_threshold_is_kept_and_below_is_dropped() {
        let out = head(&[
            (10.0, 10.0, 4.0, 4.0, &[0.25, 0.0]),
            (10.0, 10.0, 4.0, 4.0, &[0.0, 0.2499]),
        ]);
        let mut c = Vec::new();
        decode_yolo(out.view(), 0.25, &mut c);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].anchor, 0);
    }

    #[test]
    fn nan_scores_and_boxes_are_dropped_without_panicking() {
        let out = head(&[
            (10.0, 10.0, 4.0, 4.0, &[f32::NAN, f32::NAN]),
            (10.0, 10.0, 4.0, 4.0, &[f32::NAN, 0.9]),
            (f32::NAN, 10.0, 4.0, 4.0, &[0.9, 0.1]),
            (10.0, 10.0, f32::INFINITY, 4.0, &[0.9, 0.1]),
        ]);
        let mut c = Vec::new();
        decode_yolo(out.view(), 0.25, &mut c);
        // Anchor 1: the NaN class is skipped, the 0.9 one still counts.
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].anchor, c[0].class, c[0].score), (1, 1, 0.9));

        let mut c = vec![
            cand(0.0, 0.0, 1.0, 1.0, f32::NAN, 0, 0),
            cand(0.0, 0.0, 1.0, 1.0, 0.5, 0, 1),
        ];
        nms(&mut c, 0.45, 300);
        assert!(c.len() <= 2);
    }

    #[test]
    fn decode_of_a_headless_output_is_empty() {
        let mut c = vec![cand(0.0, 0.0, 1.0, 1.0, 1.0, 0, 0)];
        decode_yolo(Array2::<f32>::zeros((4, 10)).view(), 0.0, &mut c);
        assert!(c.is_empty());
        decode_yolo(Array2::<f32>::zeros((6, 0)).view(), 0.0, &mut c);
        assert!(c.is_empty());
    }

    #[test]
    fn nms_is_class_wise() {
        let mut c = vec![
            cand(0.0, 0.0, 10.0, 10.0, 0.9, 0, 0),
            cand(0.0, 0.0, 10.0, 10.0, 0.8, 1, 1),
            cand(1.0, 0.0, 11.0, 10.0, 0.7, 0, 2),
        ];
        nms(&mut c, 0.45, 300);
        let kept: Vec<u32> = c.iter().map(|c| c.anchor).collect();
        assert_eq!(kept, vec![0, 1]);
    }

    #[test]
    fn iou_equal_to_threshold_is_not_suppressed() {
        // Intersection 1, union 2: IoU exactly 0.5.
        let boxes = [
            cand(0.0, 0.0, 2.0, 1.0, 0.9, 0, 0),
            cand(0.0, 0.0, 1.0, 1.0, 0.8, 0, 1),
        ];
        let mut c = boxes.to_vec();
        nms(&mut c, 0.5, 300);
        assert_eq!(c.len(), 2);
        let mut c = boxes.to_vec();
        nms(&mut c, 0.49, 300);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].anchor, 0);
    }

    #[test]
    fn nms_sorts_by_score_and_breaks_ties_by_anchor() {
        let mut c = vec![
            cand(0.0, 0.0, 10.0, 10.0, 0.5, 0, 3),
            cand(0.0, 0.0, 10.0, 10.0, 0.7, 0, 2),
            cand(0.0, 0.0, 10.0, 10.0, 0.7, 0, 1),
            cand(50.0, 50.0, 60.0, 60.0, 0.6, 0, 0),
        ];
        nms(&mut c, 0.45, 300);
        let kept: Vec<(u32, f32)> = c.iter().map(|c| (c.anchor, c.score)).collect();
        assert_eq!(kept, vec![(1, 0.7), (0, 0.6)]);
    }

    #[test]
    fn nms_caps_at_max_detections() {
        let mut c: Vec<Candidate> = (0..400u32)
            .map(|i| {
                let x = (i * 20) as f32;
                cand(x, 0.0, x + 10.0, 10.0, 0.5 + (i as f32) / 1000.0, 0, i)
            })
            .collect();
        nms(&mut c, 0.45, MAX_DETECTIONS);
        assert_eq!(c.len(), MAX_DETECTIONS);
        assert_eq!(c[0].anchor, 399, "best score first");
    }

    #[test]
    fn degenerate_boxes_do_not_suppress() {
        let mut c = vec![
            cand(5.0, 5.0, 5.0, 5.0, 0.9, 0, 0),
            cand(5.0, 5.0, 5.0, 5.0, 0.8, 0, 1),
        ];
        nms(&mut c, 0.45, 300);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn pixels_become_planar_and_scaled_like_numpy() {
        let pixels = [0u8, 128, 255, 10, 20, 30];
        let mut chw = [0f32; 6];
        fill_nchw(&pixels, &mut chw);
        assert_eq!(
            chw,
            [
                0.0,
                10.0 / 255.0,
                128.0 / 255.0,
                20.0 / 255.0,
                1.0,
                30.0 / 255.0
            ]
        );
    }

    #[test]
    fn dynamic_dimensions_match_anything() {
        assert!(dims_match(&[1, 3, -1, -1], &[1, 3, 384, 640]));
        assert!(!dims_match(&[1, 3, 640, 640], &[1, 3, 384, 640]));
        assert!(!dims_match(&[1, 3, 384], &[1, 3, 384, 640]));
        assert_eq!(fmt_dims(&[1i64, 3, 640, 640]), "[1,3,640,640]");
    }

    #[test]
    fn detector_moves_to_threads_and_errors_convert_to_anyhow() {
        fn is_send<T: Send>() {}
        fn is_error<T: std::error::Error + Send + Sync + 'static>() {}
        is_send::<Detector>();
        is_error::<DetectError>();
        is_error::<crate::still::StillError>();
        is_error::<crate::runtime::RuntimeError>();
    }

    #[test]
    fn arena_config_names_onnx_runtime_keys() {
        let config = CpuArenaConfig {
            initial_chunk_bytes: 64 << 20,
        };
        assert_eq!(
            config.entries(),
            [(c"initial_chunk_size_bytes", 67_108_864)]
        );
    }

    /// The registered arena is used by ONNX Runtime when the session is created with it: the
    /// boxes must be those of a session with its own arena, and registration is once per
    /// process.
    #[test]
    fn a_session_on_the_environment_arena_finds_the_same_boxes() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        crate::runtime::init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
        let config = CpuArenaConfig {
            initial_chunk_bytes: 64 << 20,
        };
        register_cpu_arena(config).expect("the arena registers");
        register_cpu_arena(config).expect("the same arena again changes nothing");
        let other = CpuArenaConfig {
            initial_chunk_bytes: 1 << 20,
        };
        match register_cpu_arena(other) {
            Err(DetectError::ArenaAlreadyRegistered {
                registered,
                requested,
            }) => assert_eq!((registered, requested), (config, other)),
            result => panic!("a second arena config: {result:?}"),
        }

        let spec = ModelSpec::new(
            workspace.join("models/helmet_yolov12m_384x640_int8qdq.onnx"),
            640,
            384,
            2,
        );
        let (frame, _) = crate::still::load_still(
            workspace.join("media/overeasy_construction.jpg"),
            "cam",
            640,
            384,
        )
        .expect("media decodes");
        let own_arena = Detector::load(&spec)
            .and_then(|mut d| d.detect(&frame))
            .expect("session with its own arena");
        let environment_arena = Detector::load_with_arena(&spec, TensorArena::Environment)
            .and_then(|mut d| d.detect(&frame))
            .expect("session on the environment's arena");
        assert!(!own_arena.is_empty(), "the photo shows workers");
        assert_eq!(own_arena, environment_arena);
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_path() {
        let mut spec = ModelSpec::new("models/x.onnx", 640, 384, 2);
        assert!(validate_spec(&spec).is_ok());
        spec.score_threshold = f32::NAN;
        let err = validate_spec(&spec).unwrap_err().to_string();
        assert!(
            err.contains("models/x.onnx") && err.contains("score_threshold"),
            "{err}"
        );
    }
}
