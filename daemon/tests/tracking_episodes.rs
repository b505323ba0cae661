//! One person, one alert: moving people with known truth through the real model and the real
//! alert engine (`helmetd bench tracking`, a subset of its scenarios), judged by outcome, not time.

use std::process::Command;

#[test]
fn each_violating_person_gets_exactly_one_episode_and_nobody_outside_the_rules_gets_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_helmetd"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["bench", "tracking"])
        .args(
            [
                "crossing", "occluded", "reenter", "zone", "mask", "schedule",
            ]
            .iter()
            .flat_map(|s| ["--scenario", s]),
        )
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench tracking failed:\n{stdout}\n{stderr}"
    );
    let result = stdout.lines().last().unwrap_or_default();
    let field = |key: &str| -> f64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {result}\n{stderr}"))
    };
    // Two crossing, two hidden for 1 and 2 frames, one leaving and coming back, one inside a
    // required zone, one outside a mask.
    assert_eq!(field("violating_people"), 7.0, "{result}");
    assert_eq!(field("one_alert_ratio"), 1.0, "{result}\n{stderr}");
    assert_eq!(field("split_episodes"), 0.0, "{result}\n{stderr}");
    assert_eq!(field("alerts_outside_zones"), 0.0, "{result}\n{stderr}");
    assert_eq!(field("alerts_outside_schedule"), 0.0, "{result}\n{stderr}");
    assert_eq!(field("id_switches"), 0.0, "{result}\n{stderr}");
    // People who stay in view are asked about once, not at every hard frame.
    assert!(field("asked_every") > 0.0, "{result}");
    assert!(
        field("asked_once") <= field("asked_every") / 2.0,
        "asking once per person saves at least half the questions: {result}"
    );
}
