//! `helmetd bench footprint` end to end with short phases: real daemons as child processes, a
//! real worker with the real model, loopback RTSP cameras. Needs root (worker cgroups). Judged by
//! the RESULT line's keys and by relations that hold on any machine, not by absolute sizes.

mod common;

use common::BenchResult;

#[test]
fn footprint_reports_daemon_worker_and_per_camera_memory_and_a_cold_start() {
    let bench = BenchResult::run(&[
        "bench",
        "footprint",
        "--daemon-seconds",
        "2",
        "--worker-seconds",
        "4",
        "--cameras",
        "2",
    ]);
    let result = &bench.line;
    let stdout = &bench.stdout;
    let field = |key: &str| bench.number(key);
    let worker = field("worker_rss_mb");
    let worker_peak = field("worker_hwm_mb");
    let daemon = field("daemon_rss_mb");
    let daemon_peak = field("daemon_hwm_mb");
    let per_camera = field("per_camera_mb");
    assert_eq!(field("cameras"), 2.0, "{result}");
    // A process that runs GStreamer (daemon) or ONNX Runtime with a model (worker) is resident
    // in megabytes, not kilobytes, and not in gigabytes.
    for (name, mb) in [("worker", worker), ("daemon", daemon)] {
        assert!((5.0..4096.0).contains(&mb), "{name} {mb} MiB: {result}");
    }
    assert!(worker_peak >= worker && daemon_peak >= daemon, "{result}");
    // A camera is a decoder and a few frames; the model, its weights and ONNX Runtime's arena
    // weigh more.
    assert!(per_camera < worker, "{result}");
    assert!(per_camera > -daemon, "{result}");
    let cold_start = field("cold_start_s");
    assert!(cold_start > 0.0 && cold_start < 180.0, "{result}");
    assert!(
        field("fps") > 0.0,
        "the worker analysed frames: {result}\n{stdout}"
    );
}
