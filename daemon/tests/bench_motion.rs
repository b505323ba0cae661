//! Motion gating through the real model and the real alert engine (`helmetd bench motion` on
//! the first seconds of the bundled video): fewer frames analysed, less CPU, the same episodes.

mod common;

use common::BenchResult;

#[test]
fn gating_a_mostly_still_scene_saves_model_time_and_keeps_the_episodes() {
    let bench = BenchResult::run(&["bench", "motion", "--max-video-frames", "12"]);
    let result = &bench.line;
    let stdout = &bench.stdout;
    let number = |key: &str| bench.number(key);
    let value = |key: &str| bench.text(key);
    // 12 video frames at 2 fps: two stretches of 6, each held for 24 frames.
    assert_eq!(number("frames"), 60.0, "{result}");
    assert!(number("analysed") >= 2.0, "{result}");
    assert!(number("analysed") < number("frames"), "{result}");
    assert!(number("cameras_per_core_ratio") > 1.0, "{result}\n{stdout}");
    assert!(number("gate_us") > 0.0, "{result}");
    assert!(
        number("episodes") >= 0.0 && number("episodes_gated") >= 0.0,
        "{result}"
    );
    assert_eq!(value("same_episodes"), "true", "{stdout}");
}
