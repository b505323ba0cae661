//! Motion gating through the real model and the real alert engine (`helmetd bench motion` on
//! the first seconds of the bundled video): fewer frames analysed, less CPU, the same episodes.

use std::process::Command;

#[test]
fn gating_a_mostly_still_scene_saves_model_time_and_keeps_the_episodes() {
    let output = Command::new(env!("CARGO_BIN_EXE_helmetd"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["bench", "motion", "--max-video-frames", "12"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench motion failed:\n{stdout}\n{stderr}"
    );
    let result = stdout.lines().last().unwrap_or_default();
    assert!(result.starts_with("RESULT "), "{stdout}\n{stderr}");
    let value = |key: &str| -> &str {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {result}\n{stderr}"))
    };
    let number = |key: &str| -> f64 {
        value(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e} in {result}"))
    };
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
