//! `helmetd bench fleet` briefly: 4 gateways, up to 2 replicas with the fake model, 3 s per
//! phase, through a real Mosquitto. The figures are the bench's business; this checks that
//! every request sent is accounted for and that some were answered in time, and that the
//! `--broker-limit` phase reports a delivered rate within what it offered and names its bound.

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

/// `--broker-limit` briefly: two steps of 1 s at rates one broker core carries easily, so the
/// RESULT line must name a bound and report what was delivered, never more than was offered.
#[test]
fn the_broker_limit_phase_reports_what_the_broker_delivered() {
    let bench = BenchResult::run(&[
        "bench",
        "fleet",
        "--broker-limit",
        "--limit-rates",
        "100,200",
        "--limit-step-s",
        "1",
        "--limit-publishers",
        "4",
        "--limit-subscribers",
        "2",
    ]);
    let limit = bench.number("broker_limit_rps");
    let delivered = bench.number("delivered_per_s");
    let offered = bench.number("offered_per_s");
    assert!(limit > 0.0, "{}", bench.stdout);
    assert!(delivered > 0.0, "{}", bench.stdout);
    assert!(delivered <= offered, "{}", bench.line);
    assert!(
        limit <= delivered,
        "answers cannot outnumber deliveries: {}",
        bench.line
    );
    let broker_cpu = bench.number("broker_cpu_at_limit");
    assert!((0.0..=1.5).contains(&broker_cpu), "{}", bench.line);
    assert!(
        ["broker", "generator", "contended", "other", "steps"].contains(&bench.text("bound")),
        "{}",
        bench.line
    );
    assert!(bench.number("bytes_per_request") > 1000.0, "{}", bench.line);
    assert!(bench.number("steps") >= 1.0, "{}", bench.line);
}
