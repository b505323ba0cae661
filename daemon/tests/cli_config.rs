//! The binary's config commands: what an operator sees, and the exit codes systemd sees.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn helmetd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_helmetd"));
    // Relative model paths in the default config resolve from the repository root.
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

/// `helmetd print-default-config`: the commented default.
fn default_config_text() -> String {
    String::from_utf8(
        helmetd()
            .arg("print-default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

/// Writes `text` to `file` and runs `check-config` on it, which must refuse it with exit 78;
/// returns what it printed. `case` names the case in a failure.
fn refused(file: &std::path::Path, text: &str, case: &str) -> String {
    std::fs::write(file, text).unwrap();
    let out = helmetd().arg("check-config").arg(file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{case}: {stderr}");
    stderr
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
    let text = default_config_text()
        + "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\nfpss = 3\n";
    let line = text.lines().count();
    let stderr = refused(&file, &text, "fpss");
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
    std::fs::write(&file, default_config_text()).unwrap();
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
    let text = default_config_text().replace("input = [384, 640]", "input = [640, 640]");
    let line = text
        .lines()
        .position(|l| l.starts_with("input = [640, 640]"))
        .unwrap()
        + 1;
    let stderr = refused(&file, &text, "input");
    assert!(
        stderr.contains(&format!("shape.toml:{line}:1:")),
        "{stderr}"
    );
    assert!(
        stderr.contains("384"),
        "the message says what the file has: {stderr}"
    );
}

/// Values `check-config` used to pass and `run` could not survive (a panic, a busy loop, an
/// overflow, a camera ingest refuses): each is now exit 78 naming file, line and key.
#[test]
fn values_run_cannot_live_with_exit_78_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x.y.z.w\n").unwrap();
    let default = default_config_text()
        // KubeEdge on, with what it needs, so only the case's key is wrong.
        .replace("enabled = false", "enabled = true")
        .replace("cloudcore_host = \"\"", "cloudcore_host = \"127.0.0.1\"")
        .replace(
            "token_file = \"\"",
            &format!("token_file = \"{}\"", token.display()),
        )
        .replace("node_name = \"\"", "node_name = \"gw-1\"");
    let file = dir.path().join("helmetd.toml");
    std::fs::write(&file, &default).unwrap();
    let ok = helmetd().arg("check-config").arg(&file).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let camera = "\n[[camera]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:8554/x\"\n";
    for (from, to, key) in [
        (
            "restart_backoff_max_s = 60.0",
            "restart_backoff_max_s = inf",
            "edge.worker.restart_backoff_max_s",
        ),
        (
            "end_after_s = 10.0",
            "end_after_s = nan",
            "alerts.end_after_s",
        ),
        (
            "keepalive_seconds = 15",
            "keepalive_seconds = 0",
            "kubeedge.keepalive_seconds",
        ),
        (
            "keepalive_seconds = 15",
            "keepalive_seconds = 18446744073709551",
            "kubeedge.keepalive_seconds",
        ),
        (
            "lease_seconds = 10",
            "lease_seconds = 4611686018427387904",
            "kubeedge.lease_seconds",
        ),
        (
            "node_name = \"gw-1\"",
            "node_name = \"Gate_1\"",
            "kubeedge.node_name",
        ),
        ("cert_port = 10002", "cert_port = 0", "kubeedge.cert_port"),
        (
            "stats_interval_s = 10",
            "stats_interval_s = 9223372036854775807",
            "mqtt.stats_interval_s",
        ),
        ("[output]", "[output]", "camera[0].url"),
    ] {
        let mut text = default.replacen(from, to, 1);
        if key.starts_with("camera") {
            text += &camera.replace("rtsp://", "rtsps://");
        }
        let line = text
            .lines()
            .position(|l| {
                if key.starts_with("camera") {
                    l.starts_with("url = \"rtsps://")
                } else {
                    l == to
                }
            })
            .unwrap()
            + 1;
        let stderr = refused(&file, &text, to);
        assert!(
            stderr.contains(&format!("helmetd.toml:{line}:1: {key}: ")),
            "{to}: expected line {line} and {key}: {stderr}"
        );
    }
}

/// The start-up lock is in the service's runtime directory, and one that is not the daemon's is
/// refused before anything is started: a local user cannot hold a gateway down with a file.
#[test]
fn run_refuses_a_start_up_lock_someone_else_owns() {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "the lock file is given to another user: this test needs root (as scripts/test runs)"
    );
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let root = "/sys/fs/cgroup/helmetd-cli-lock-test";
    // The name the daemon uses for this root (systemd-style escaping, run/lock.rs).
    let lock = runtime
        .path()
        .join("cgroup-sys-fs-cgroup-helmetd\\x2dcli\\x2dlock\\x2dtest.lock");
    std::fs::write(&lock, "").unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let out = helmetd()
        .args(["run", "--duration", "5", "--set", "http.listen="])
        .arg("--set")
        .arg(format!("edge.worker.cgroup_root={root}"))
        .env("RUNTIME_DIRECTORY", runtime.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: not a regular file of uid 0 (owner uid 65534",
            lock.display()
        )),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(root).exists(),
        "refused before any cgroup was made"
    );
}
