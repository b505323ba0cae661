//! `helmetd cloud` as systemd runs it (`Type=notify`): READY=1 only once the big model is loaded,
//! STATUS= at each step, and SIGTERM answered at any point, also while the model still loads
//! (issue #23: on a slow CPU the load takes minutes, and systemd's stop timed out). The notify
//! socket is a real datagram socket of the test's; the broker a real Mosquitto.

mod common;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{HelmetdProcess, message};
use helmetd_e2e::mosquitto::Mosquitto;

/// Generous: the big model loads and warms up in a few seconds here, on a loaded machine in more.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// Every datagram that arrives within `within`.
    fn drain(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }

    /// Waits up to `timeout` for `wanted`; returns everything received until then.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.iter().any(|m| m == wanted) {
            assert!(
                Instant::now() < deadline,
                "no {wanted} within {timeout:?}: {got:?}"
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }
}

fn start_cloud(broker: &Mosquitto, notify: &NotifySocket) -> HelmetdProcess {
    let url = format!("mqtt.url={}", broker.url());
    HelmetdProcess::start_with_env(
        &["cloud", "--set", &url, "--set", "node.name=cloud-lifecycle"],
        &[("NOTIFY_SOCKET", notify.path.as_os_str())],
    )
}

#[test]
fn sigterm_while_the_big_model_loads_stops_the_service_at_once() {
    let broker = Mosquitto::start().unwrap();
    let notify = NotifySocket::new();
    let mut cloud = start_cloud(&broker, &notify);
    // The log line comes right before the load starts; the load and warm-up take seconds.
    cloud.wait_for(LOAD_TIMEOUT, "the model load", |l| {
        (message(l) == "loading the big model").then_some(())
    });
    let status = cloud.terminate();
    assert!(status.success(), "{status:?}:\n{}", cloud.raw_log());
    assert_eq!(status.signal(), None);
    let log = cloud.raw_log();
    assert!(
        log.contains("stopped while loading the big model"),
        "SIGTERM did not reach the load:\n{log}"
    );
    let said = notify.drain(Duration::from_millis(200));
    assert!(
        said.iter().any(|m| m == "STATUS=loading the big model"),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|m| m == "READY=1"),
        "READY before the model was loaded: {said:?}"
    );
}

#[test]
fn ready_is_sent_once_the_model_is_loaded_and_stopping_at_sigterm() {
    let broker = Mosquitto::start().unwrap();
    let notify = NotifySocket::new();
    let mut cloud = start_cloud(&broker, &notify);
    let said = notify.wait_for("READY=1", LOAD_TIMEOUT);
    assert_eq!(
        said.first().map(String::as_str),
        Some("STATUS=loading the big model")
    );
    let log = cloud.raw_log();
    assert!(
        !log.contains("stopped while loading"),
        "the load was cut short:\n{log}"
    );
    let said = notify.wait_for("STATUS=serving: MQTT", Duration::from_secs(5));
    assert!(
        !said.iter().any(|m| m == "READY=1"),
        "READY twice: {said:?}"
    );
    let status = cloud.terminate();
    assert!(status.success(), "{status:?}:\n{}", cloud.raw_log());
    let said = notify.drain(Duration::from_millis(200));
    assert!(said.iter().any(|m| m == "STOPPING=1"), "{said:?}");
}
