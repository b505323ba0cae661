//! The Rust detection pipeline against the Python reference made by
//! scripts/make_reference_detections.py with onnxruntime + OpenCV, pre-processing as Ultralytics'
//! `yolo predict` does (issue #18), on the shipped media. The
//! reference is made when the test runs, on the machine it runs on, by the Python environment
//! scripts/setup installs: ONNX Runtime's INT8 kernels depend on the CPU (see
//! `helmet_pipelines::cpu`), so a reference recorded on one machine is not the truth on another
//! (issue #22). The shipped little model no longer depends on the kernel family, and a test in
//! tests/tests/ checks that; this file checks the Rust pipeline against Python's. Two checks:
//!
//! 1. **Exact** (`exact_input_gives_the_reference_detections`, the requirement): the Rust
//!    [`Detector`] is fed the very model input onnxruntime got in Python (a lossless PNG written
//!    by the script), so the ONNX Runtime session, the decoding of the output tensor, NMS and the
//!    mapping back to original pixels are compared with nothing else in between. Every box scoring
//!    at least 0.25 on either side must have a same-class partner with IoU >= 0.9 and a score
//!    within 0.01. No extra tolerance.
//! 2. **Full pipeline** (`full_pipeline_from_jpeg_is_within_quantisation_steps`): the Rust JPEG
//!    decoder and resizer ([`load_still`]) are included. The resize is OpenCV's INTER_LINEAR bit
//!    for bit, but zune-jpeg's pixels differ from libjpeg-turbo's by a few grey levels here and
//!    there, and the INT8 model turns that into whole quantisation steps of score (see
//!    `SCORE_LOGIT_STEP`), so this check allows one step, says per image how many boxes needed
//!    it, and prints the worst difference. It is *not* the 0.01 requirement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use helmet_pipelines::detect::{DetectError, Detector, ModelSpec};
use helmet_pipelines::letterbox::PAD_VALUE;
use helmet_pipelines::runtime::init_onnxruntime;
use helmet_pipelines::still::load_still;
use helmet_pipelines::{Detection, Detections, Frame, Letterbox};
use sha2::{Digest, Sha256};

const LITTLE_MODEL: &str = "models/helmet_yolov12m_384x640_int8qdq.onnx";
const BIG_MODEL: &str = "models/helmet_yolov12m_640_fp32.onnx";
/// The reference script and where scripts/setup puts the Python that runs it.
const REFERENCE_SCRIPT: &str = "scripts/make_reference_detections.py";
const REFERENCE_VENV: &str = "helmetd/reference-venv";
const INPUT_W: u32 = 640;
const INPUT_H: u32 = 384;
/// The requirement: same boxes at IoU >= 0.9 ...
const MIN_IOU: f32 = 0.9;
/// ... and scores within 0.01. The exact check applies this to every box; the full-pipeline check
/// calls a score within it "0 steps".
const MAX_SCORE_DIFF: f32 = 0.01;

// ---- Full-pipeline tolerance (check 2 only) ----

/// The fixture was made at the 0.25 display threshold, but a box scoring near 0.25 may be on
/// one side of it in Python and on the other in Rust because of small decoder differences (see
/// `SCORE_LOGIT_STEP`). The full-pipeline check therefore compares only boxes at or above 0.30:
/// one score step below 0.30 (0.272) is still above 0.25, so the partner box exists. The exact
/// check compares every box from 0.25 up.
const COMPARE_ABOVE: f32 = 0.30;
/// Why full-pipeline scores may differ by more than `MAX_SCORE_DIFF`, and by how much.
///
/// The little model's INT8 QDQ head quantises the class logits before the sigmoid, per detection
/// scale: on the shipped media every score of the stride-8 head is sigmoid(k · 0.14058) and every
/// stride-16 score sigmoid(k · 0.09898), for integers k (within 1e-6). Scores therefore move in
/// whole steps, 0.030 near 0.3 and 0.035 near 0.5 for the stride-8 head, which produced every
/// box above 0.30 here. The Rust and Python inputs differ only by the JPEG decoder: the resize is
/// OpenCV's INTER_LINEAR bit for bit (no value of the bundled photos differs given the same
/// decoded pixels), while zune-jpeg and libjpeg-turbo differ by up to 5 grey levels on 1–9 % of
/// the decoded values, which reach the model input almost unchanged because a non-antialiased
/// resize reads only 4 source pixels per value. That moves some boxes by one step (3 of 23
/// compared boxes on the shipped media; none by two). The exact check shows that with identical
/// pixels the scores are identical, so the steps come from the pixels alone. Hence, in this check
/// only, a score must agree within `MAX_SCORE_DIFF` or be at most `MAX_SCORE_STEPS` stride-8 steps
/// away in logit space. (Until issue #18 the resize was Pillow-like antialiasing on both sides,
/// with ±1 rounding differences of its own, and the tolerance was two steps.)
const SCORE_LOGIT_STEP: f32 = 0.140_58;
const MAX_SCORE_STEPS: f32 = 1.0;

fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `HELMETD_REFERENCE_PYTHON`, else the virtual environment scripts/setup makes in the cache.
fn reference_python() -> PathBuf {
    if let Some(python) = std::env::var_os("HELMETD_REFERENCE_PYTHON") {
        return PathBuf::from(python);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join(REFERENCE_VENV).join("bin/python3")
}

/// Runs the reference script once per test process into a folder of its own, and returns that
/// folder: the JSON and its `inputs/` PNGs.
fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("reference folder");
        let python = reference_python();
        assert!(
            python.exists(),
            "{} is missing: scripts/setup installs the Python (onnxruntime 1.32.0, numpy, OpenCV) \
             that makes the reference detections on this machine",
            python.display()
        );
        let output = Command::new(&python)
            .arg(workspace().join(REFERENCE_SCRIPT))
            .arg("--media")
            .arg(workspace().join("media"))
            .arg("--out")
            .arg(dir.join(FIXTURE_FILE))
            .output()
            .expect("run the reference script");
        assert!(
            output.status.success(),
            "{REFERENCE_SCRIPT} with {} failed (scripts/setup brings its packages up to date): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

const FIXTURE_FILE: &str = "reference_detections.json";

fn little_spec() -> ModelSpec {
    ModelSpec::new(workspace().join(LITTLE_MODEL), INPUT_W, INPUT_H, 2)
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the fixture and checks that it was made from the model, thresholds and input size the
/// tests use. Returns the fixture's images, the spec and a loaded detector.
fn load_fixture() -> (Vec<serde_json::Value>, ModelSpec, Detector) {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join(FIXTURE_FILE)).expect("reference JSON"),
    )
    .expect("fixture is JSON");
    let spec = little_spec();
    assert_eq!(
        sha256_hex(&spec.path),
        fixture["model_sha256"].as_str().expect("model_sha256"),
        "the reference script ran another model than {LITTLE_MODEL}"
    );
    assert_eq!(
        fixture["onnxruntime"], "1.32.0",
        "the reference's onnxruntime"
    );
    let as_f32 = |key: &str| fixture[key].as_f64().map(|v| v as f32);
    assert_eq!(as_f32("score_threshold"), Some(spec.score_threshold));
    assert_eq!(as_f32("nms_iou"), Some(spec.nms_iou));
    assert_eq!(
        fixture["input"],
        serde_json::json!([INPUT_W, INPUT_H]),
        "fixture input size"
    );

    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let detector = Detector::load(&spec).expect("little model loads");
    let images = fixture["images"].as_array().expect("images").clone();
    assert!(!images.is_empty());
    (images, spec, detector)
}

fn json_u32(value: &serde_json::Value, key: &str) -> u32 {
    value[key]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or_else(|| panic!("{key}: {}", value[key]))
}

/// The best same-class partner of `det` in `others` by IoU.
fn best_match<'a>(det: &Detection, others: &'a [Detection]) -> Option<(f32, &'a Detection)> {
    others
        .iter()
        .filter(|o| o.class == det.class)
        .map(|o| (det.iou(o), o))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

fn reference_boxes(image: &serde_json::Value) -> Vec<Detection> {
    image["detections"]
        .as_array()
        .expect("detections array")
        .iter()
        .map(|row| {
            let v: Vec<f64> = row
                .as_array()
                .expect("box row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect();
            Detection {
                x1: v[0] as f32,
                y1: v[1] as f32,
                x2: v[2] as f32,
                y2: v[3] as f32,
                // The script writes the float32 score's shortest round-trip decimal: exact.
                score: v[4] as f32,
                class: v[5] as u16,
            }
        })
        .collect()
}

// ---- Check 1: exact model input ----

/// Reads the script's PNG of the model input for `image` and makes the [`Frame`] the Rust
/// pipeline would have made, after checking that the PNG is the letterbox the geometry says.
fn frame_from_reference_input(image: &serde_json::Value) -> Frame {
    let file = image["file"].as_str().expect("file");
    let rel = image["input_png"].as_str().expect("input_png");
    let path = fixture_dir().join(rel);
    assert_eq!(
        sha256_hex(&path),
        image["input_png_sha256"]
            .as_str()
            .expect("input_png_sha256"),
        "{rel} is not the PNG the reference script wrote"
    );
    let rgb = match image::open(&path).unwrap_or_else(|e| panic!("{rel}: {e}")) {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => panic!("{rel} is {:?}, expected 8-bit RGB", other.color()),
    };
    assert_eq!(rgb.dimensions(), (INPUT_W, INPUT_H), "{rel} size");

    let (orig_w, orig_h) = (json_u32(image, "width"), json_u32(image, "height"));
    let lb = Letterbox::new(orig_w, orig_h, INPUT_W, INPUT_H);
    let rect = [lb.pad_left, lb.pad_top, lb.content_w, lb.content_h];
    assert_eq!(
        image["content"],
        serde_json::json!(rect),
        "{file}: Python's letterbox rectangle [left, top, w, h] differs from Letterbox::new"
    );
    // Outside the content rectangle everything is the pad grey; the non-grey pixels reach every
    // edge of the rectangle, so the PNG's picture sits exactly where the geometry says.
    let (right, bottom) = (lb.pad_left + lb.content_w, lb.pad_top + lb.content_h);
    let (mut x_min, mut y_min, mut x_max, mut y_max) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, px) in rgb.enumerate_pixels() {
        let inside = (lb.pad_left..right).contains(&x) && (lb.pad_top..bottom).contains(&y);
        if px.0 != [PAD_VALUE; 3] {
            assert!(
                inside,
                "{rel}: pixel ({x}, {y}) = {:?} is in the padding",
                px.0
            );
            (x_min, y_min) = (x_min.min(x), y_min.min(y));
            (x_max, y_max) = (x_max.max(x), y_max.max(y));
        }
    }
    assert_eq!(
        [x_min, y_min, x_max + 1 - x_min, y_max + 1 - y_min],
        rect,
        "{rel}: non-padding region [left, top, w, h] vs the letterbox content rectangle"
    );

    Frame {
        camera: Arc::from(file),
        seq: 0,
        pts: None,
        capture_time: SystemTime::now(),
        letterbox: lb,
        pixels: rgb.into_raw(),
    }
}

/// Every box of `from` must have a same-class partner in `to` with IoU >= `MIN_IOU` and a score
/// within `MAX_SCORE_DIFF`. Records the worst IoU and score difference seen.
fn check_exact(
    file: &str,
    direction: &str,
    from: &[Detection],
    to: &[Detection],
    worst: &mut (f32, f32),
) -> Vec<String> {
    let mut failures = Vec::new();
    for det in from {
        let Some((iou, partner)) = best_match(det, to) else {
            failures.push(format!(
                "{file}: {direction} box {det:?} has no same-class match"
            ));
            continue;
        };
        let diff = (partner.score - det.score).abs();
        worst.0 = worst.0.min(iou);
        worst.1 = worst.1.max(diff);
        if iou < MIN_IOU || diff > MAX_SCORE_DIFF {
            failures.push(format!(
                "{file}: {direction} box {det:?}: best match {partner:?}, IoU {iou:.4}, \
                 score diff {diff:.5}"
            ));
        }
    }
    failures
}

#[test]
fn exact_input_gives_the_reference_detections() {
    let (images, spec, mut detector) = load_fixture();
    let mut failures = Vec::new();
    // (min IoU, max |score diff|) over all matched boxes.
    let mut worst = (1.0f32, 0.0f32);
    let (mut rust_total, mut reference_total) = (0, 0);
    for image in &images {
        let file = image["file"].as_str().expect("file");
        let frame = frame_from_reference_input(image);
        let ours: Detections = detector.detect(&frame).expect("detect");
        let ours: Vec<Detection> = ours.into_iter().collect();
        let reference: Vec<Detection> = reference_boxes(image)
            .into_iter()
            .filter(|d| d.score >= spec.score_threshold)
            .collect();
        assert!(
            ours.iter().all(|d| d.score >= spec.score_threshold),
            "{file}: Detector returned a box below the threshold"
        );
        rust_total += ours.len();
        reference_total += reference.len();
        if ours.len() != reference.len() {
            failures.push(format!(
                "{file}: {} reference boxes, {} rust boxes",
                reference.len(),
                ours.len()
            ));
        }
        failures.extend(check_exact(
            file,
            "reference",
            &reference,
            &ours,
            &mut worst,
        ));
        failures.extend(check_exact(file, "rust", &ours, &reference, &mut worst));
    }
    println!(
        "exact check (Python's model input PNGs, cpu {}): {} images, {reference_total} \
         reference / {rust_total} rust boxes at >= {}; min IoU {:.6}, max |score diff| {:.6} \
         (requirement: IoU >= {MIN_IOU}, |score diff| <= {MAX_SCORE_DIFF})",
        helmet_pipelines::cpu::CpuFeatures::detect().summary(),
        images.len(),
        spec.score_threshold,
        worst.0,
        worst.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- Check 2: full pipeline, with the quantisation-step tolerance ----

/// What the full-pipeline check saw in one direction, for one image or all of them.
#[derive(Debug, Default, Clone, Copy)]
struct StepTally {
    /// Boxes whose partner's score is within `MAX_SCORE_DIFF` ("0 steps"), or farther but within
    /// `MAX_SCORE_STEPS`.
    at_steps: [usize; 2],
    /// Boxes without a partner within the tolerance (each is also a failure).
    beyond: usize,
    min_iou: Option<f32>,
    max_score_diff: f32,
}

impl StepTally {
    fn add(&mut self, other: &StepTally) {
        for (total, n) in self.at_steps.iter_mut().zip(other.at_steps) {
            *total += n;
        }
        self.beyond += other.beyond;
        self.min_iou = match (self.min_iou, other.min_iou) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_score_diff = self.max_score_diff.max(other.max_score_diff);
    }

    fn compared(&self) -> usize {
        self.at_steps[0] + self.at_steps[1] + self.beyond
    }

    /// Compared boxes whose partner's score is more than `MAX_SCORE_DIFF` away, or missing.
    fn differing(&self) -> usize {
        self.at_steps[1] + self.beyond
    }

    fn show(&self) -> String {
        format!(
            "{} within {MAX_SCORE_DIFF} / {} within {MAX_SCORE_STEPS} step(s) / {} beyond",
            self.at_steps[0], self.at_steps[1], self.beyond
        )
    }
}

/// Every box of `from` scoring at least `COMPARE_ABOVE` must have a same-class partner in `to`
/// with IoU >= `MIN_IOU` and a score within `MAX_SCORE_DIFF` or at most `MAX_SCORE_STEPS` logit
/// steps away.
fn check_within_steps(
    file: &str,
    direction: &str,
    from: &[Detection],
    to: &[Detection],
    tally: &mut StepTally,
) -> Vec<String> {
    let mut failures = Vec::new();
    for det in from.iter().filter(|d| d.score >= COMPARE_ABOVE) {
        let Some((iou, partner)) = best_match(det, to) else {
            tally.beyond += 1;
            failures.push(format!(
                "{file}: {direction} box {det:?} has no same-class match"
            ));
            continue;
        };
        let diff = (partner.score - det.score).abs();
        let steps = (logit(partner.score) - logit(det.score)).abs() / SCORE_LOGIT_STEP;
        tally.min_iou = Some(tally.min_iou.map_or(iou, |m| m.min(iou)));
        tally.max_score_diff = tally.max_score_diff.max(diff);
        let bucket = if diff <= MAX_SCORE_DIFF {
            Some(0)
        } else if steps <= MAX_SCORE_STEPS * 1.01 {
            Some(1)
        } else {
            None
        };
        match bucket {
            Some(b) if iou >= MIN_IOU => tally.at_steps[b] += 1,
            _ => tally.beyond += 1,
        }
        if iou < MIN_IOU || bucket.is_none() {
            failures.push(format!(
                "{file}: {direction} box {det:?}: best match {partner:?}, IoU {iou:.4}, \
                 score diff {diff:.4} ({steps:.3} logit steps)"
            ));
        }
    }
    failures
}

#[test]
fn full_pipeline_from_jpeg_is_within_quantisation_steps() {
    let (images, _spec, mut detector) = load_fixture();
    let root = workspace();
    let mut failures = Vec::new();
    let (mut from_reference, mut from_rust) = (StepTally::default(), StepTally::default());
    let (mut rust_total, mut reference_total) = (0, 0);
    for image in &images {
        let file = image["file"].as_str().expect("file");
        let path = root.join("media").join(file);
        assert_eq!(
            sha256_hex(&path),
            image["sha256"].as_str().expect("sha256"),
            "{file} changed since the fixture was made"
        );
        let (frame, original) = load_still(&path, file, INPUT_W, INPUT_H).expect("media decodes");
        assert_eq!(
            original.dimensions(),
            (json_u32(image, "width"), json_u32(image, "height"))
        );
        let ours: Detections = detector.detect(&frame).expect("detect");
        let reference = reference_boxes(image);
        rust_total += ours.len();
        reference_total += reference.len();
        let (mut image_reference, mut image_rust) = (StepTally::default(), StepTally::default());
        failures.extend(check_within_steps(
            file,
            "reference",
            &reference,
            &ours,
            &mut image_reference,
        ));
        failures.extend(check_within_steps(
            file,
            "rust",
            &ours,
            &reference,
            &mut image_rust,
        ));
        // Per image, so a change of decoder or resizer shows where the scores moved.
        println!(
            "  {file}: {} reference / {} rust boxes at >= 0.25; at >= {COMPARE_ABOVE}, {} of {} \
             reference and {} of {} rust boxes differ by more than {MAX_SCORE_DIFF}; \
             max |score diff| {:.4}",
            reference.len(),
            ours.len(),
            image_reference.differing(),
            image_reference.compared(),
            image_rust.differing(),
            image_rust.compared(),
            image_reference
                .max_score_diff
                .max(image_rust.max_score_diff)
        );
        from_reference.add(&image_reference);
        from_rust.add(&image_rust);
    }
    println!(
        "full-pipeline check (Rust JPEG decoder and resize, NOT the 0.01 requirement; \
         tolerance {MAX_SCORE_STEPS} quantisation step(s) of {SCORE_LOGIT_STEP} in logit): {} images, \
         {reference_total} reference / {rust_total} rust boxes at >= 0.25; compared at >= \
         {COMPARE_ABOVE}: reference boxes {}, rust boxes {}; min IoU {:.4}, max |score diff| {:.4}",
        images.len(),
        from_reference.show(),
        from_rust.show(),
        from_reference
            .min_iou
            .into_iter()
            .chain(from_rust.min_iou)
            .fold(1.0f32, f32::min),
        from_reference.max_score_diff.max(from_rust.max_score_diff)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn big_model_with_the_little_spec_is_a_clear_shape_error() {
    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let spec = ModelSpec {
        path: workspace().join(BIG_MODEL),
        ..little_spec()
    };
    let err = Detector::load(&spec).expect_err("640×640 model must not load as 384×640");
    assert!(matches!(err, DetectError::Mismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(
            "helmet_yolov12m_640_fp32.onnx has input [1,3,640,640], config expects [1,3,384,640]"
        ),
        "{text}"
    );
}

#[test]
fn wrong_class_count_names_the_output_shape() {
    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let spec = ModelSpec {
        num_classes: 80,
        ..little_spec()
    };
    let text = Detector::load(&spec)
        .expect_err("2-class model")
        .to_string();
    assert!(
        text.contains("has output [1,6,5040]") && text.contains("[1,84,N]"),
        "{text}"
    );
}

#[test]
fn missing_model_file_names_the_path() {
    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let spec = ModelSpec::new("/nonexistent/model.onnx", 640, 384, 2);
    let err = Detector::load(&spec).expect_err("no such file");
    assert!(matches!(err, DetectError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
}

#[test]
fn frame_of_the_wrong_size_is_rejected() {
    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let mut detector = Detector::load(&little_spec()).expect("little model loads");
    assert_eq!(detector.input_size(), (640, 384));
    assert_eq!(detector.num_classes(), 2);
    let (frame, _) = load_still(
        workspace().join("media/overeasy_construction.jpg"),
        "cam",
        640,
        640,
    )
    .expect("media decodes");
    let err = detector
        .detect(&frame)
        .expect_err("640×640 frame into a 384×640 model");
    assert!(matches!(err, DetectError::FrameSize { .. }), "{err:?}");
    assert!(detector.last_inference().is_none());
}
