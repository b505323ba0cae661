//! One person, one alert: moving people with known truth through the real model and the real
//! alert engine (`helmetd bench tracking`, a subset of its scenarios), judged by outcome, not time.

mod common;

use common::BenchResult;

#[test]
fn each_violating_person_gets_exactly_one_episode_and_nobody_outside_the_rules_gets_one() {
    let scenarios = [
        "crossing", "occluded", "reenter", "zone", "mask", "schedule",
    ];
    let mut args = vec!["bench", "tracking"];
    args.extend(scenarios.iter().flat_map(|s| ["--scenario", *s]));
    let bench = BenchResult::run(&args);
    let result = &bench.line;
    let stderr = &bench.stderr;
    let field = |key: &str| bench.number(key);
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
