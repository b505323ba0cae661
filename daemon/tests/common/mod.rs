//! Helpers shared by the test binaries that need real worker cgroups.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use helmetd::supervisor::Layout;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const MOUNT: &str = "/sys/fs/cgroup";

/// A test-unique cgroup root (`helmetd-test-<pid>-<n>`) in the cgroup2 hierarchy; on drop
/// everything in it is killed and all its directories, v1 mirrors included, are removed
/// depth-first.
pub struct TestRoot {
    pub layout: Layout,
    pub name: String,
}

impl TestRoot {
    /// Fails the test, with the reason, where the cgroup2 hierarchy cannot be written: these
    /// tests exist to run against the real kernel (run them as root).
    pub fn new(test: &str) -> TestRoot {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let layout = Layout::detect(Path::new(MOUNT))
            .unwrap_or_else(|e| panic!("{test}: no usable cgroup2 hierarchy: {e}"));
        let name = format!(
            "helmetd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = layout.unified_mount().join(&name);
        if let Err(e) = fs::create_dir(&dir) {
            panic!(
                "{test}: cannot create {} ({e}): the real-cgroup tests need root",
                dir.display()
            );
        }
        TestRoot { layout, name }
    }

    pub fn path(&self) -> PathBuf {
        self.layout.unified_mount().join(&self.name)
    }

    /// `edge.worker.cgroup_root=<path>`, for `--set`.
    pub fn arg(&self) -> String {
        format!("edge.worker.cgroup_root={}", self.path().display())
    }

    /// Our directory in the v1 hierarchy of `controller` ("cpu" or "memory"), on hybrid hosts.
    pub fn v1(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::Hybrid { cpu, memory, .. } => match controller {
                "cpu" => cpu.as_ref(),
                "memory" => memory.as_ref(),
                _ => None,
            }
            .map(|mount| mount.join(&self.name)),
            Layout::Unified { .. } => None,
        }
    }

    /// Every tree of ours: the cgroup2 one first, then the v1 mirrors.
    pub fn trees(&self) -> Vec<PathBuf> {
        std::iter::once(self.path())
            .chain(self.v1("cpu"))
            .chain(self.v1("memory"))
            .collect()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = fs::write(self.path().join("cgroup.kill"), "1");
        for tree in self.trees() {
            let mut all = Vec::new();
            dirs_below(&tree, &mut all);
            all.push(tree);
            // v1 has no cgroup.kill: the pids listed in our own directories.
            for dir in &all {
                for pid in pids_in(dir) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            for dir in &all {
                while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if dir.exists() {
                    eprintln!("warning: could not remove {}", dir.display());
                }
            }
        }
    }
}

/// Every directory below `dir`, children before their parents.
pub fn dirs_below(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs_below(&entry.path(), out);
                out.push(entry.path());
            }
        }
    }
}

/// The pids listed in a cgroup's `cgroup.procs`.
pub fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The environment of a daemon a test starts (workers inherit it): text logs without colour at
/// `rust_log`, and never the journald stream or systemd notify socket of whatever runs the tests.
pub fn test_daemon_env<'c>(
    cmd: &'c mut std::process::Command,
    rust_log: &str,
) -> &'c mut std::process::Command {
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", rust_log)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
}

/// How a [`HelmetdProcess`] is started besides its arguments.
pub struct Options<'a> {
    /// Names the process in failure messages.
    pub name: &'a str,
    /// `RUST_LOG` of the process (and its workers).
    pub rust_log: &'a str,
    /// Extra environment variables, set after the test defaults (so `NOTIFY_SOCKET` can name a
    /// test's own socket).
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
    /// Keep stdout (else thrown away), for [`HelmetdProcess::stdout_lines`].
    pub keep_stdout: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            name: "helmetd",
            rust_log: "info,ort=warn",
            env: &[],
            keep_stdout: false,
        }
    }
}

/// A file a [`HelmetdProcess`] writes (its JSON log, its stdout), readable while it runs and
/// after it is gone: the handle keeps the directory.
#[derive(Clone)]
pub struct ProcessOutput {
    dir: std::sync::Arc<tempfile::TempDir>,
    file: &'static str,
}

impl ProcessOutput {
    pub fn raw(&self) -> String {
        fs::read_to_string(self.dir.path().join(self.file)).unwrap_or_default()
    }

    pub fn lines(&self) -> Vec<String> {
        self.raw().lines().map(str::to_owned).collect()
    }

    /// The lines that parse as JSON (a line still being written does not).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.raw()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A `helmetd` child process (the binary under test, run from the workspace root with
/// `--log-format json`) whose log goes to a file, and its stdout too if asked; signalled only by
/// its own pid, every wait bounded; killed and reaped on drop if still running.
pub struct HelmetdProcess {
    name: String,
    child: std::process::Child,
    log: ProcessOutput,
    stdout: Option<ProcessOutput>,
}

impl HelmetdProcess {
    /// `helmetd --log-format json <args…>`.
    pub fn start(args: &[&str]) -> HelmetdProcess {
        Self::start_with(args, Options::default())
    }

    /// [`HelmetdProcess::start`] with extra environment variables (set after the test defaults,
    /// so `NOTIFY_SOCKET` can name a test's own socket).
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> HelmetdProcess {
        Self::start_with(
            args,
            Options {
                env,
                ..Options::default()
            },
        )
    }

    /// `helmetd --log-format json <args…>`, started as `options` say.
    pub fn start_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
        args: &[S],
        options: Options<'_>,
    ) -> HelmetdProcess {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let log = ProcessOutput {
            dir: dir.clone(),
            file: "helmetd.log",
        };
        let stdout = options.keep_stdout.then(|| ProcessOutput {
            dir: dir.clone(),
            file: "stdout.log",
        });
        let create = |out: &ProcessOutput| fs::File::create(dir.path().join(out.file)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_helmetd"));
        cmd.args(["--log-format", "json"])
            .args(args)
            .current_dir(helmetd_e2e::workspace_root());
        let child = test_daemon_env(&mut cmd, options.rust_log)
            .envs(options.env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(match &stdout {
                Some(out) => std::process::Stdio::from(create(out)),
                None => std::process::Stdio::null(),
            })
            .stderr(create(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {args:?}: {e}", options.name));
        HelmetdProcess {
            name: options.name.to_owned(),
            child,
            log,
            stdout,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JSON log, as a handle that outlives `self`'s borrows.
    pub fn log(&self) -> ProcessOutput {
        self.log.clone()
    }

    pub fn raw_log(&self) -> String {
        self.log.raw()
    }

    /// The process id, e.g. to look at `/proc/<pid>`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log.json_lines()
    }

    /// The log's last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        self.log.tail(n)
    }

    /// Stdout so far; fails the test unless started with [`Options::keep_stdout`].
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .as_ref()
            .expect("started with keep_stdout")
            .lines()
    }

    /// Whether the process still runs (reaps it once it has exited).
    pub fn running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait on our own child")
    }

    /// Waits up to `timeout` for a log line that `found` accepts; fails the test if the process
    /// exits first or the time runs out, with the log.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self.log_lines().iter().find_map(&mut found) {
                return hit;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before {what}:\n{}",
                    self.name,
                    self.raw_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{}",
                self.raw_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to this process (its pid only); does not wait.
    pub fn send_sigterm(&self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM to our own child");
    }

    /// SIGTERM, then waits (up to 40 s) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.terminate_within(Duration::from_secs(40))
    }

    /// SIGTERM, then waits up to `timeout` for the exit; fails the test, with the log, after.
    pub fn terminate_within(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.send_sigterm();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited_after_sigterm(deadline, timeout) {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One poll of a wait for the exit after [`HelmetdProcess::send_sigterm`], for a caller
    /// that sleeps its own way between polls: the status once exited; fails the test, with the
    /// log, past `deadline` (`timeout` after the signal).
    pub fn exited_after_sigterm(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let status = self.exit_status();
        assert!(
            status.is_some() || Instant::now() < deadline,
            "{} ignored SIGTERM for {timeout:?}:\n{}",
            self.name,
            self.raw_log()
        );
        status
    }

    /// SIGKILL (its pid only) and reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL to our own child");
        self.child.wait().expect("reaping our own child");
    }
}

impl Drop for HelmetdProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals exactly this pid; workers die with their TestRoot.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A log line's message.
pub fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// The embedded default config with the models' paths made absolute, so it loads from any
/// directory.
pub fn default_config() -> helmetd::config::Config {
    let models = helmetd_e2e::workspace_root().join("models");
    let overrides = [
        format!(
            "edge.model.path={}/helmet_yolov12m_384x640_int8qdq.onnx",
            models.display()
        ),
        format!(
            "cloud.model={}/helmet_yolov12m_640_fp32.onnx",
            models.display()
        ),
    ];
    helmetd::config::load(helmetd::config::ConfigSource::Default, &overrides).unwrap()
}

/// `helmetd cloud` on the test broker, as node `node`.
pub fn start_cloud(broker: &helmetd_e2e::mosquitto::Mosquitto, node: &str) -> HelmetdProcess {
    let url = format!("mqtt.url={}", broker.url());
    let name = format!("node.name={node}");
    HelmetdProcess::start(&["cloud", "--set", &url, "--set", &name])
}

/// Stops `helmetd cloud` with SIGTERM and returns the final counters it logs then.
pub fn final_stats(cloud: &mut HelmetdProcess) -> serde_json::Value {
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
    cloud
        .log_lines()
        .into_iter()
        .rfind(|l| message(l) == "cloud service stopped")
        .unwrap_or_else(|| panic!("no final stats:\n{}", cloud.raw_log()))
}

/// Waits for `helmetd cloud`'s subscription to be granted: loading and warming the 80 MB big
/// model on a busy 2-core machine takes up to 120 s.
pub fn wait_ready(cloud: &mut HelmetdProcess) {
    cloud.wait_for(Duration::from_secs(120), "ready for hard examples", |l| {
        (message(l) == "ready for hard examples").then_some(())
    });
}

/// How long a test waits for one answer of `helmetd cloud`. Generous: the big model on 2 shared
/// cores; the tests measure, they do not race.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An MQTT cloud client on its own session, as the uplink drives it, behind the joint guard:
/// the event loop runs in the returned task. Returns once the answer subscription is granted
/// (at most 10 s).
pub async fn subscribed_cloud_client(
    options: rumqttc::v5::MqttOptions,
    settings: helmetd::joint::mqtt::MqttSettings,
    guard: helmetd::joint::JointSettings,
) -> (helmetd::joint::JointClient, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event};

    let (handle, mut eventloop) = AsyncClient::new(options, 64);
    let client = std::sync::Arc::new(helmetd::joint::mqtt::MqttClient::new(handle, settings));
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1);
    let driven = client.clone();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => driven.subscribe().unwrap(),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    driven.handle_incoming(&p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("answer subscription granted within 10 s");
    (helmetd::joint::JointClient::new(client, guard), driver)
}

/// An MQTT client of the test subscribed to one topic; everything it receives goes to a channel.
pub struct Peer {
    pub client: rumqttc::v5::AsyncClient,
    pub received: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Returns once the subscription is granted (at most 10 s). The request queue holds 256, so
    /// a test flooding the broker is not held up by the client.
    pub async fn connect(options: rumqttc::v5::MqttOptions, topic: String) -> Self {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{AsyncClient, Event};

        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1);
        let handle = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        handle
                            .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready.recv())
            .await
            .expect("subscription granted within 10 s");
        Self {
            client,
            received,
            task,
        }
    }

    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload,
                properties,
            )
            .await
            .unwrap();
    }

    /// The next message, within [`ANSWER_TIMEOUT`].
    pub async fn next(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        tokio::time::timeout(ANSWER_TIMEOUT, self.received.recv())
            .await
            .expect("a message within the timeout")
            .expect("session alive")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An edge node talking the hard-example protocol by hand: publishes requests with chosen
/// properties and collects what comes back on its result topic.
pub struct RawEdge {
    node: String,
    prefix: String,
    /// The requests' message expiry.
    expiry: Duration,
    pub peer: Peer,
}

impl RawEdge {
    /// Subscribed to `node`'s result topic under `prefix`, on a session made with `options`.
    pub async fn connect(
        options: rumqttc::v5::MqttOptions,
        prefix: &str,
        node: &str,
        expiry: Duration,
    ) -> Self {
        use helmetd::joint::protocol;

        let topic = protocol::response_topic(prefix, node);
        Self {
            node: node.into(),
            prefix: prefix.into(),
            expiry,
            peer: Peer::connect(options, topic).await,
        }
    }

    /// A request's properties with the correlation id `[correlation; 16]`.
    pub fn properties(
        &self,
        meta: &helmetd::joint::protocol::HardExampleMeta,
        correlation: u8,
    ) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
        use helmetd::joint::protocol;

        protocol::request_properties(
            &self.node,
            meta,
            &protocol::response_topic(&self.prefix, &self.node),
            &[correlation; 16],
            self.expiry,
        )
    }

    pub async fn send(
        &self,
        payload: Vec<u8>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        let topic = helmetd::joint::protocol::request_topic(&self.prefix);
        self.peer.publish(&topic, payload, properties).await;
    }

    /// The next answer: its correlation byte and body.
    pub async fn answer(&mut self) -> (u8, helmetd::joint::protocol::CloudResponse) {
        let p = self.peer.next().await;
        let props = p.properties.as_ref().expect("answer has properties");
        let correlation = props.correlation_data.as_ref().expect("correlation echoed");
        assert_eq!(correlation.len(), 16);
        assert!(correlation.iter().all(|&b| b == correlation[0]));
        (
            correlation[0],
            helmetd::joint::protocol::parse_response(&p).expect("a valid answer"),
        )
    }
}

/// One HTTP/1.1 exchange on a fresh connection, as Python's `requests` makes it (JSON content
/// type, Content-Length): the status and body, `None` if the server refused or closed it.
pub async fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Option<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body.to_vec()))
}

/// What `helmetd bench …` printed: its `RESULT key=value …` line, read by key.
pub struct BenchResult {
    pub line: String,
    pub stdout: String,
    pub stderr: String,
}

impl BenchResult {
    /// Runs `helmetd <args…>` (a bench) from the workspace root with the test environment, and
    /// fails the test with its output when it fails or its last line is not `RESULT …`.
    pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> BenchResult {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_helmetd"));
        cmd.current_dir(helmetd_e2e::workspace_root()).args(args);
        let output = test_daemon_env(&mut cmd, "info,ort=warn")
            .output()
            .unwrap_or_else(|e| panic!("starting helmetd: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "the bench failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let line = stdout.lines().last().unwrap_or_default().to_owned();
        assert!(
            line.starts_with("RESULT "),
            "no RESULT line:\n{stdout}\n{stderr}"
        );
        BenchResult {
            line,
            stdout,
            stderr,
        }
    }

    pub fn text(&self, key: &str) -> &str {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {}\n{}", self.line, self.stderr))
    }

    pub fn number(&self, key: &str) -> f64 {
        self.text(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e} in {}", self.line))
    }
}
