//! `helmetd bench sedna-loop`, shortened: the real daemon (edge only, then joint over Sedna HTTP)
//! and a Sedna-style synchronous loop against one in-process `helmetd cloud --sedna-http`, on
//! one loopback RTSP camera. Judged by what each phase did, not by the rates (a shared machine).

mod common;

use std::process::Command;

#[test]
fn every_phase_finalizes_frames_and_the_sedna_loop_gets_an_answer() {
    let root = common::TestRoot::new("bench_sedna_loop");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_helmetd"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["bench", "sedna-loop", "--seconds", "8", "--set"])
        .arg(root.arg());
    let output = common::test_daemon_env(&mut cmd, "info,ort=warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench sedna-loop failed:\n{stdout}\n{stderr}"
    );
    let result = stdout.lines().last().unwrap_or_default();
    assert!(result.starts_with("RESULT "), "last line: {stdout}");
    let field = |key: &str| -> String {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {result}"))
            .to_owned()
    };
    let number = |key: &str| -> f64 {
        field(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e} in {result}"))
    };
    for key in ["decided_per_min", "fps", "edge_only_fps", "sedna_fps"] {
        assert!(number(key) >= 0.0, "{key} in {result}");
    }
    // A ratio is `nan` only when its denominator is 0, which the checks below rule out.
    for key in ["decided_ratio", "fps_ratio"] {
        assert!(number(key).is_finite(), "{key} in {result}");
    }
    assert!(
        number("edge_only_fps") > 0.0,
        "phase E finalized frames: {result}"
    );
    assert!(number("fps") > 0.0, "phase H finalized frames: {result}");
    assert!(number("sedna_fps") > 0.0, "phase S ran frames: {result}");
    assert!(
        number("sedna_decided_per_min") > 0.0,
        "the Sedna-style loop got at least one answer of the big model:\n{stdout}"
    );
}
