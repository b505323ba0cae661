//! `helmetd bench fleet` briefly: 4 gateways, up to 2 replicas with the fake model, 3 s per
//! phase, through a real Mosquitto. The figures are the bench's business; this checks that
//! every request sent is accounted for and that some were answered in time.

mod common;

use common::BenchResult;

#[test]
fn every_request_of_the_fleet_is_accounted_for() {
    let bench = BenchResult::run(&[
        "bench",
        "fleet",
        "--gateways",
        "4",
        "--replicas",
        "2",
        "--seconds",
        "3",
    ]);
    assert_eq!(bench.number("unaccounted"), 0.0, "{}", bench.stdout);
    assert!(bench.number("answered_in_time") > 0.0, "{}", bench.stdout);
    let sent = bench.number("sent");
    let fates = ["answered_in_time", "late", "refused", "unanswered"]
        .map(|key| bench.number(key))
        .iter()
        .sum::<f64>();
    assert_eq!(fates, sent, "{}", bench.line);
    assert!(bench.number("scaling_efficiency") > 0.0, "{}", bench.line);
    assert!(bench.number("bytes_per_request") > 1000.0, "{}", bench.line);
    assert_eq!(bench.text("largest_k"), "2");
}
