//! `helmetd bench sedna-loop`, shortened: the real daemon (edge only, then joint over Sedna HTTP)
//! and a Sedna-style synchronous loop against one in-process `helmetd cloud --sedna-http`, on
//! one loopback RTSP camera. Judged by what each phase did, not by the rates (a shared machine).

mod common;

use common::BenchResult;

#[test]
fn every_phase_finalizes_frames_and_the_sedna_loop_gets_an_answer() {
    let root = common::TestRoot::new("bench_sedna_loop");
    let set = root.arg();
    let bench = BenchResult::run(&["bench", "sedna-loop", "--seconds", "8", "--set", &set]);
    let result = &bench.line;
    let stdout = &bench.stdout;
    let number = |key: &str| bench.number(key);
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
