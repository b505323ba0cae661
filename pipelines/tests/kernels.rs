//! The shipped little model scores the same people alike on every x86-64 CPU (issue #22).
//!
//! ONNX Runtime runs the INT8 convolutions with VNNI instructions where the CPU has them, and with
//! AVX2's saturating 16-bit pair sums where it does not. The first shipped model used the full s8
//! weight range and scored a box 0.36 on one and 0.70 on the other. This test detects on the
//! shipped photos natively and, in a child process, under `qemu-x86_64 -cpu Haswell` (user-mode
//! emulation of a CPU with AVX2 and without AVX-512 or VNNI, so ONNX Runtime's CPU detection picks
//! the AVX2 kernels; the child reports what it detected, and the test checks it). On a machine
//! without VNNI both sides run AVX2 kernels and the test still holds, but proves less: its output
//! names both families.

use std::path::{Path, PathBuf};
use std::process::Command;

use helmet_pipelines::cpu::CpuFeatures;
use helmet_pipelines::detect::{Detector, ModelSpec};
use helmet_pipelines::runtime::init_onnxruntime;
use helmet_pipelines::still::load_still;
use helmet_pipelines::{Detection, Detections};

const LITTLE_MODEL: &str = "models/helmet_yolov12m_384x640_int8qdq.onnx";
/// Kept few, since emulation runs the model about a hundred times slower: the photos on which the
/// first shipped model differed most between the two kernel families (a box at 0.70 with VNNI
/// and 0.36 with AVX2; 0.73 against 0.50; 0.57 against none).
const PHOTOS: [&str; 3] = [
    "overeasy_construction.jpg",
    "overeasy_dense_street2.jpg",
    "aws_pexels-photo-901941.jpg",
];
/// The goal for boxes at or above `COMPARED_SCORE`: a same-class partner with IoU ≥ 0.9
/// and a score within 0.05.
const COMPARED_SCORE: f32 = 0.5;
const MIN_IOU: f32 = 0.9;
const MAX_SCORE_DIFF: f32 = 0.05;
const CHILD_ENV: &str = "HELMETD_KERNELS_CHILD";
const QEMU: &str = "qemu-x86_64";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(photo, boxes)` for every photo of [`PHOTOS`], with the CPU's own kernels.
fn detect_photos() -> Vec<(String, Vec<Detection>)> {
    init_onnxruntime(None).expect("ONNX Runtime (cargo sets ORT_DYLIB_PATH)");
    let mut spec = ModelSpec::new(workspace().join(LITTLE_MODEL), 640, 384, 2);
    spec.intra_threads = 1;
    let mut detector = Detector::load(&spec).expect("little model loads");
    PHOTOS
        .iter()
        .map(|photo| {
            let (frame, _) = load_still(workspace().join("media").join(photo), photo, 640, 384)
                .expect("photo decodes");
            let boxes: Detections = detector.detect(&frame).expect("detect");
            (photo.to_string(), boxes.into_iter().collect())
        })
        .collect()
}

/// The child: prints its CPU features and its detections as one JSON line.
#[test]
#[ignore = "the emulated child of the_little_model_scores_alike_with_avx2_and_native_kernels"]
fn emulated_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run by the parent test only"
    );
    let report = serde_json::json!({
        "cpu": CpuFeatures::detect(),
        "photos": detect_photos(),
    });
    println!("CHILD {report}");
}

fn parse_child(stdout: &str) -> (CpuFeatures, Vec<(String, Vec<Detection>)>) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD "))
        .unwrap_or_else(|| panic!("the child printed no report:\n{stdout}"));
    let report: serde_json::Value = serde_json::from_str(line).expect("child JSON");
    let cpu = serde_json::from_value(report["cpu"].clone()).expect("child cpu");
    let photos = report["photos"]
        .as_array()
        .expect("photos")
        .iter()
        .map(|pair| {
            let boxes = pair[1]
                .as_array()
                .expect("boxes")
                .iter()
                .map(|b| Detection {
                    x1: b["x1"].as_f64().unwrap() as f32,
                    y1: b["y1"].as_f64().unwrap() as f32,
                    x2: b["x2"].as_f64().unwrap() as f32,
                    y2: b["y2"].as_f64().unwrap() as f32,
                    score: b["score"].as_f64().unwrap() as f32,
                    class: b["class"].as_u64().unwrap() as u16,
                })
                .collect();
            (pair[0].as_str().unwrap().to_string(), boxes)
        })
        .collect();
    (cpu, photos)
}

/// Every box of `from` at or above [`COMPARED_SCORE`] has a same-class partner in `to` (looked
/// for down to 0.1 below, so a box on either side of the line is not a false alarm).
fn disagreements(photo: &str, side: &str, from: &[Detection], to: &[Detection]) -> Vec<String> {
    from.iter()
        .filter(|d| d.score >= COMPARED_SCORE)
        .filter_map(|d| {
            let best = to
                .iter()
                .filter(|o| o.class == d.class && o.score >= COMPARED_SCORE - 0.1)
                .map(|o| (d.iou(o), o))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((iou, o)) if iou >= MIN_IOU && (o.score - d.score).abs() <= MAX_SCORE_DIFF => {
                    None
                }
                Some((iou, o)) => Some(format!(
                    "{photo}: {side} box {d:?}: best partner {o:?} at IoU {iou:.3}"
                )),
                None => Some(format!("{photo}: {side} box {d:?} has no partner")),
            }
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "emulates an x86-64 CPU; the ARM kernels' question is NEON dot product, not tested here"
)]
fn the_little_model_scores_alike_with_avx2_and_native_kernels() {
    let exe = std::env::current_exe().expect("test binary path");
    let child = Command::new(QEMU)
        .args(["-cpu", "Haswell"])
        .arg(&exe)
        .args(["--ignored", "--exact", "emulated_child", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap_or_else(|e| panic!("{QEMU} (Debian's qemu-user, scripts/setup installs it): {e}"));
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "emulated child failed: {}\n{stdout}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stderr)
    );
    let (emulated_cpu, emulated) = parse_child(&stdout);
    assert_eq!(
        emulated_cpu.int8_kernels, "avx2",
        "qemu's Haswell should make ONNX Runtime choose the AVX2 kernels: {emulated_cpu:?}"
    );

    let native_cpu = CpuFeatures::detect();
    let native = detect_photos();
    let mut failures = Vec::new();
    let (mut compared, mut max_diff) = (0usize, 0f32);
    for ((photo, ours), (_, theirs)) in native.iter().zip(&emulated) {
        failures.extend(disagreements(photo, "native", ours, theirs));
        failures.extend(disagreements(photo, "avx2", theirs, ours));
        for d in ours.iter().filter(|d| d.score >= COMPARED_SCORE) {
            compared += 1;
            if let Some(o) = theirs
                .iter()
                .filter(|o| o.class == d.class)
                .max_by(|a, b| d.iou(a).total_cmp(&d.iou(b)))
            {
                max_diff = max_diff.max((o.score - d.score).abs());
            }
        }
    }
    println!(
        "native {} vs emulated {}: {compared} native boxes >= {COMPARED_SCORE} on {} photos, \
         max |score diff| {max_diff:.4}",
        native_cpu.summary(),
        emulated_cpu.summary(),
        PHOTOS.len()
    );
    assert!(compared > 0, "no box to compare: the photos changed?");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
