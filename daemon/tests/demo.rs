//! The README's main command, shortened: the whole system on loopback, run to completion.

use std::process::Command;

#[test]
fn demo_runs_to_completion_with_cloud_answers_and_alerts() {
    assert!(
        std::path::Path::new("/sys/fs/cgroup/unified").exists(),
        "the demo runs its workers under /sys/fs/cgroup/unified/helmetd: this test needs the \
         hybrid cgroup layout of the build machines (a pure cgroup v2 host runs helmetd under \
         systemd, with a delegated cgroup)"
    );
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_helmetd"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["demo", "--cameras", "1", "--duration", "45", "--output"])
        .arg(out.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let result = stdout.lines().last().unwrap_or_default();
    assert!(
        result.starts_with("RESULT "),
        "last line is the RESULT: {stdout}"
    );
    let field = |key: &str| -> u64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {result}"))
    };
    assert!(field("frames") >= 10, "{result}");
    assert!(
        field("cloud_answers") >= 1,
        "the cloud answered hard examples: {result}"
    );
    assert!(
        field("alerts") >= 1,
        "the dense-street photos raise alerts: {result}"
    );
    assert!(field("workers_max") >= 1, "{result}");
    // Sedna's three folders with annotated frames, and nothing left running.
    let all = out.path().join("all_examples_inference_output");
    assert!(std::fs::read_dir(&all).unwrap().count() >= 10);
    // On a hybrid host the workers' cgroups live under unified/helmetd/workers; shutdown
    // removes them with their processes.
    let workers = std::path::Path::new("/sys/fs/cgroup/unified/helmetd/workers");
    assert!(!workers.exists(), "{} left behind", workers.display());
}
