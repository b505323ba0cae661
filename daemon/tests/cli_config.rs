//! The binary's config commands: what an operator sees, and the exit codes systemd sees.

use std::process::Command;

fn helmetd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_helmetd"));
    // Relative model paths in the default config resolve from the repository root.
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

#[test]
fn print_default_config_round_trips_through_check_config() {
    let out = helmetd().arg("print-default-config").output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("helmetd.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = helmetd().arg("check-config").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(": ok"));
}

#[test]
fn broken_config_exits_78_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    let text = String::from_utf8(
        helmetd()
            .arg("print-default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
        + "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\nfpss = 3\n";
    let line = text.lines().count();
    std::fs::write(&file, &text).unwrap();
    let out = helmetd().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "broken.toml:{line}:1: unknown field 'fpss' in [[camera]]"
        )),
        "{stderr}"
    );
}

#[test]
fn bad_override_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        helmetd()
            .arg("print-default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = helmetd()
        .args(["check-config"])
        .arg(&file)
        .args(["--set", "edge.worker.replicas=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--set edge.worker.replicas=0: edge.worker.replicas")
    );
}

#[test]
fn missing_file_is_a_config_error() {
    let out = helmetd()
        .args(["check-config", "/nonexistent/helmetd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/helmetd.toml: cannot read")
    );
}

#[test]
fn declared_input_shape_is_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shape.toml");
    let text = String::from_utf8(
        helmetd()
            .arg("print-default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .replace("input = [384, 640]", "input = [640, 640]");
    let line = text
        .lines()
        .position(|l| l.starts_with("input = [640, 640]"))
        .unwrap()
        + 1;
    std::fs::write(&file, &text).unwrap();
    let out = helmetd().arg("check-config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("shape.toml:{line}:1:")),
        "{stderr}"
    );
    assert!(
        stderr.contains("384"),
        "the message says what the file has: {stderr}"
    );
}
