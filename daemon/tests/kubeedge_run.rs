//! `helmetd run` with `[kubeedge] enabled`: the real binary, model worker and cgroups against the
//! strict fake cloudcore (tests/kubeedge_fake) on loopback. The gateway joins with the token and
//! registers its node; Ready, CamerasStreaming and WorkersRunning turn True from the daemon's own
//! health; `/metrics` and the stats line follow the link through a cloudcore crash and restart;
//! SIGTERM ends the daemon cleanly with no worker left behind.
//!
//! Needs root and a writable cgroup2 hierarchy, as tests/run_daemon.rs; elsewhere it fails and
//! says why.

mod common;
// Only part of the fake is needed here; tests/kubeedge.rs uses the rest.
#[allow(dead_code)]
mod kubeedge_fake;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use common::{TestRoot, dirs_below, pids_in};
use kubeedge_fake::{FakeCloud, FakeOptions};

const EXAMPLE: &str = "config/examples/local-file.toml";
const CONDITIONS: [&str; 3] = ["Ready", "CamerasStreaming", "WorkersRunning"];

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

/// A running `helmetd run` and its log lines (stderr); SIGKILLed on drop if still running.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    metrics: SocketAddr,
}

impl Daemon {
    fn start(sets: &[String], metrics: SocketAddr) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_helmetd"));
        cmd.current_dir(repo_root())
            .args(["--log-format", "json", "run", "--config", EXAMPLE]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let mut child = common::test_daemon_env(&mut cmd, "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting helmetd run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        // Detached: the pipe closes when the daemon and its workers have ended.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Daemon {
            child,
            log,
            metrics,
        }
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log[log.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `check` until it is `Ok`, failing with the log tail on timeout or if the daemon ends.
    fn wait<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Daemon) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match check(self) {
                Ok(found) => return found,
                Err(why) => why,
            };
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "daemon exited ({status}) waiting for {what} ({why}):\n{}",
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {why}\nlog tail:\n{}",
                self.tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `kubeedge` object of the latest `stats {…}` line.
    fn kubeedge_stats(&self) -> Option<Value> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().rev().find_map(|line| {
            let json: Value = serde_json::from_str(line).ok()?;
            let stats = json["fields"]["message"].as_str()?.strip_prefix("stats ")?;
            let stats: Value = serde_json::from_str(stats).ok()?;
            stats.get("kubeedge").cloned()
        })
    }

    /// `helmetd_kubeedge_connected` as `/metrics` serves it now.
    fn connected_gauge(&self) -> Result<f64, String> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))
            .map_err(|e| format!("connect {}: {e}", self.metrics))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        // HTTP/1.0: the body ends with the connection, never chunked.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| format!("reading /metrics: {e}"))?;
        let (head, body) = reply.split_once("\r\n\r\n").ok_or("no HTTP body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("/metrics answered {head}"));
        }
        body.lines()
            .find_map(|l| l.strip_prefix("helmetd_kubeedge_connected "))
            .ok_or("no helmetd_kubeedge_connected sample")?
            .trim()
            .parse()
            .map_err(|e| format!("gauge value: {e}"))
    }

    /// Waits until the stats line and the gauge both agree on whether the link is up.
    fn wait_link(&mut self, up: bool) -> Value {
        let what = if up { "link up" } else { "link down" };
        self.wait(Duration::from_secs(15), what, |d| {
            let stats = d
                .kubeedge_stats()
                .ok_or("no stats line with a kubeedge object yet")?;
            let connected = stats["phase"] == "connected" && stats["registered"] == true;
            let gauge = d.connected_gauge()?;
            match connected == up && gauge == f64::from(u8::from(up)) {
                true => Ok(stats),
                false => Err(format!("stats kubeedge {stats}, gauge {gauge}")),
            }
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every condition in [`CONDITIONS`] True on the fake's node, or what is not.
fn node_ready(fake: &FakeCloud, node: &str) -> Result<(), String> {
    let not_true: Vec<String> = CONDITIONS
        .iter()
        .filter_map(|kind| match fake.condition(node, kind) {
            Some(c) if c["status"] == "True" => None,
            Some(c) => Some(format!("{kind}={} ({})", c["status"], c["message"])),
            None => Some(format!("{kind} missing")),
        })
        .collect();
    match not_true.is_empty() {
        true => Ok(()),
        false => Err(not_true.join(", ")),
    }
}

#[test]
fn node_follows_the_daemon_and_the_link() {
    let started = Instant::now();
    let root = TestRoot::new("node_follows_the_daemon_and_the_link");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime for the fake");
    // The daemon's keepalive is whole seconds: the fake's timeout leaves room for a loaded host.
    let fake = rt.block_on(FakeCloud::start(FakeOptions {
        keepalive_timeout: Duration::from_secs(5),
        ..FakeOptions::default()
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        format!("{}\n", fake.token(Duration::from_secs(600))),
    )
    .expect("token file");
    let node = format!("kubeedge-run-{}", std::process::id());
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let d = dir.path().display();
    let sets = vec![
        root.arg(),
        format!("output.dir={d}/out"),
        format!("mqtt.spool_dir={d}/spool"),
        "mqtt.stats_interval_s=1".into(),
        "edge.worker.replicas=1".into(),
        format!("http.listen={metrics}"),
        format!("node.name={node}"),
        "kubeedge.enabled=true".into(),
        "kubeedge.cloudcore_host=127.0.0.1".into(),
        format!("kubeedge.cert_port={}", fake.cert_port),
        format!("kubeedge.websocket_port={}", fake.ws_port),
        format!("kubeedge.token_file={}", token.display()),
        format!("kubeedge.cert_dir={d}/kubeedge"),
        "kubeedge.keepalive_seconds=1".into(),
        "kubeedge.lease_seconds=1".into(),
    ];
    let mut daemon = Daemon::start(&sets, metrics);

    // Joined and registered under the node name; the camera streams and the worker serves.
    daemon.wait(Duration::from_secs(30), "a Ready node", |_| {
        node_ready(&fake, &node)
    });
    let registered = fake.node(&node).expect("node object");
    assert_eq!(registered["metadata"]["name"], node.as_str());
    let workers = fake.condition(&node, "WorkersRunning").expect("condition");
    assert_eq!(workers["message"], "1 of 1 inference workers ready");
    let before = daemon.wait_link(true);
    assert_eq!(fake.stats().cert_requests, vec![("bootstrap", 200)]);

    // Cloudcore crashes; the node-lifecycle controller marks the silent node Unknown.
    rt.block_on(fake.stop());
    fake.mark_node_unknown(&node);
    daemon.wait_link(false);

    // Back: reconnected with the stored certificate, and the node posted Ready again.
    rt.block_on(fake.restart());
    let after = daemon.wait_link(true);
    assert!(
        after["reconnects"].as_u64() > before["reconnects"].as_u64(),
        "before {before}, after {after}"
    );
    daemon.wait(Duration::from_secs(10), "the node Ready again", |_| {
        node_ready(&fake, &node)
    });
    assert_eq!(fake.stats().cert_requests.len(), 1, "no second bootstrap");

    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).expect("SIGTERM our daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM:\n{}",
            daemon.tail()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit}\n{}", daemon.tail());
    let mut cgroups = vec![root.path()];
    dirs_below(&root.path(), &mut cgroups);
    let left: Vec<i32> = cgroups.iter().flat_map(|c| pids_in(c)).collect();
    assert!(left.is_empty(), "processes left in our cgroups: {left:?}");
    rt.block_on(fake.stop());
    println!("kubeedge_run took {:?}", started.elapsed());
}
