//! Both HTTP servers under hostile clients, started as the product starts them (the built
//! binary: `helmetd cloud --sedna-http` with the real big model, `helmetd run`'s `[http]`
//! endpoint with real workers), against real TCP clients on loopback, with short deadlines and a
//! small cap set through the config.
//!
//! `helmetd run` needs root and a writable cgroup2 hierarchy (as tests/run_daemon.rs); without
//! them its test fails and says why.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{HelmetdProcess, TestRoot, message};
use serde_json::Value;

/// Loading the 80 MB big model and warming it up, on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The big model on 2 shared cores; the tests check answers, not speed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waits for the server to close a stalled connection, well beyond the
/// deadlines set here, so a loaded machine does not fail the test.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The deadline for a request's head; the body's is set per test.
const HEADER_TIMEOUT_S: u64 = 1;

// ---------------------------------------------------------------------------------------------
// Plain-socket clients.

/// Connects and sends `bytes`, then stalls: the server sees a client that stopped mid-request.
fn stall(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
}

/// Everything the server sends until it closes the connection; fails the test if it is still
/// open after `within`. A reset counts as closed.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server kept the connection open for {within:?}; received {:?}",
            String::from_utf8_lossy(&received)
        );
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Whether the server still holds the connection open: nothing to read, no EOF.
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 1];
    let open = matches!(stream.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    open
}

/// [`common::http_exchange`] with the body as text.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Option<(u16, String)> {
    let (status, body) = common::http_exchange(addr, method, path, body).await?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn count_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's /proc/<pid>/fd")
        .count()
}

// ---------------------------------------------------------------------------------------------
// `helmetd cloud --sedna-http`: slow clients must not stop predictions.

/// Sedna's body for a 4×2 image, as its edge worker sends it.
fn tiny_predict_body() -> Vec<u8> {
    let row = "[[120, 110, 100], [90, 80, 70], [60, 50, 40], [30, 20, 10]]";
    format!(r#"{{"post_process": null, "data": [{row}, {row}]}}"#).into_bytes()
}

#[test]
fn stalled_clients_do_not_stop_sedna_predictions() {
    /// More than the server's 4 inference slots, of each kind.
    const STALLED: usize = 6;
    /// Long enough that the predict below is answered while the stalled bodies still hold their
    /// connections: the answer must not come from their deadline freeing a slot.
    const BODY_TIMEOUT_S: u64 = 30;
    let header = format!("sedna.header_timeout_s={HEADER_TIMEOUT_S}");
    let body = format!("sedna.body_timeout_s={BODY_TIMEOUT_S}");
    let mut cloud = HelmetdProcess::start(&[
        "cloud",
        "--sedna-http",
        "127.0.0.1:0",
        "--set",
        &header,
        "--set",
        &body,
    ]);
    let addr: SocketAddr = cloud.wait_for(READY_TIMEOUT, "serving Sedna HTTP", |line| {
        (message(line) == "serving Sedna HTTP")
            .then(|| line["fields"]["addr"].as_str()?.parse().ok())?
    });

    let mut partial_heads: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            stall(
                addr,
                b"POST /sedna/predict HTTP/1.1\r\nHost: x\r\nContent-Ty",
            )
        })
        .collect();
    let head = format!(
        "POST /sedna/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n{{\"post_process\": null, \"data\": [[[1, 2, 3]"
    );
    let mut partial_bodies: Vec<TcpStream> =
        (0..STALLED).map(|_| stall(addr, head.as_bytes())).collect();
    // Time for the server to read their heads: a server that takes an inference slot before the
    // body would now have given all of them away.
    std::thread::sleep(Duration::from_millis(500));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(async {
        tokio::time::timeout(
            ANSWER_TIMEOUT,
            exchange(addr, "POST", "/sedna/predict", tiny_predict_body()),
        )
        .await
    });
    let Ok(Some((status, answer))) = answer else {
        panic!(
            "no answer to a predict within {ANSWER_TIMEOUT:?} while {STALLED} clients stalled in \
             their heads and {STALLED} in their bodies:\n{}",
            cloud.raw_log()
        );
    };
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    assert!(answer["result"].is_array(), "{answer}");
    for stream in &partial_bodies {
        assert!(
            still_open(stream),
            "a stalled body's connection closed before the predict was answered, so the answer \
             may have waited for its deadline"
        );
    }

    // Each stalled client is closed by the server after its deadline; the stalled bodies hear why.
    for stream in &mut partial_heads {
        read_until_closed(stream, CLOSE_TIMEOUT);
    }
    for stream in &mut partial_bodies {
        let reply = read_until_closed(stream, Duration::from_secs(BODY_TIMEOUT_S) + CLOSE_TIMEOUT);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("not complete within 30s"), "{reply}");
    }

    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
    let stopped = cloud
        .log_lines()
        .into_iter()
        .find(|line| message(line) == "Sedna HTTP stopped")
        .unwrap_or_else(|| panic!("no counters at shutdown:\n{}", cloud.raw_log()));
    let timed_out = stopped["fields"]["connections_timed_out"]
        .as_u64()
        .unwrap_or(0);
    assert!(timed_out >= 2 * STALLED as u64, "{stopped}");
    // Each kind of deadline is logged once, not once per connection.
    let warnings = cloud
        .log_lines()
        .into_iter()
        .filter(|line| message(line).starts_with("closed a connection"))
        .count();
    assert_eq!(warnings, 2, "{}", cloud.raw_log());
}

// ---------------------------------------------------------------------------------------------
// `helmetd run`'s `[http]` endpoint: idle and stalled clients must not take its descriptors.

/// The samples of `/metrics` by name (labels ignored: these families have none).
async fn scrape(addr: SocketAddr) -> Option<HashMap<String, f64>> {
    let (status, text) = exchange(addr, "GET", "/metrics", Vec::new()).await?;
    (status == 200).then_some(())?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
    Some(
        scrape
            .samples
            .into_iter()
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some((s.metric, v)),
                _ => None,
            })
            .collect(),
    )
}

/// Retries `get` every 100 ms until it gives a value: the endpoint may be full of stalled
/// clients until their deadline frees it.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut get: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = get().await {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cap the `[http]` tests set.
const CAP: usize = 16;

/// `helmetd run` with its default config (no camera, one worker in `root`), the endpoint on a
/// free loopback port with [`CAP`] and short deadlines; returns once `/status` answers.
struct RunDaemon {
    daemon: HelmetdProcess,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    // Dropped after the daemon: its workers' cgroups and its spool.
    _spool: tempfile::TempDir,
    _root: TestRoot,
}

impl RunDaemon {
    fn start(test: &str) -> RunDaemon {
        let root = TestRoot::new(test);
        let spool = tempfile::tempdir().unwrap();
        let sets = [
            root.arg(),
            format!("mqtt.spool_dir={}", spool.path().display()),
            "http.listen=127.0.0.1:0".to_string(),
            format!("http.max_connections={CAP}"),
            format!("http.header_timeout_s={HEADER_TIMEOUT_S}"),
            "http.body_timeout_s=2".to_string(),
        ];
        let mut args = vec!["run"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let mut daemon = HelmetdProcess::start(&args);
        let addr: SocketAddr = daemon.wait_for(READY_TIMEOUT, "the HTTP endpoint", |line| {
            message(line)
                .starts_with("HTTP endpoint")
                .then(|| line["fields"]["addr"].as_str()?.parse().ok())?
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(eventually("/status 200", READY_TIMEOUT, || async {
            let (status, _) = exchange(addr, "GET", "/status", Vec::new()).await?;
            (status == 200).then_some(())
        }));
        RunDaemon {
            daemon,
            addr,
            runtime,
            _spool: spool,
            _root: root,
        }
    }

    fn stop(mut self) {
        assert!(
            self.daemon.terminate().success(),
            "{}",
            self.daemon.raw_log()
        );
    }
}

#[test]
fn an_idle_flood_cannot_take_the_daemons_descriptors() {
    /// Idle connections opened at once, far more than the cap.
    const FLOOD: usize = 300;
    /// Descriptors the daemon may open beyond its count before the flood plus the cap (a
    /// worker respawn, a spool segment).
    const SLACK: usize = 16;
    let run = RunDaemon::start("an_idle_flood_cannot_take_the_daemons_descriptors");
    let (addr, pid) = (run.addr, run.daemon.pid());

    let before = count_fds(pid);
    let mut flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(addr).expect("the kernel accepts the connection"))
        .collect();
    let mut most = before;
    for _ in 0..40 {
        most = most.max(count_fds(pid));
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        most <= before + CAP + SLACK,
        "the daemon held {most} descriptors with {FLOOD} idle clients (before: {before}, cap \
         {CAP})"
    );
    // Every flood connection is closed by the server: at once beyond the cap, after the head
    // deadline within it.
    for stream in &mut flood {
        let reply = read_until_closed(stream, CLOSE_TIMEOUT);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 503"),
            "{reply}"
        );
    }
    drop(flood);

    let samples = run
        .runtime
        .block_on(eventually("/metrics", CLOSE_TIMEOUT, || scrape(addr)));
    let refused = samples["helmetd_http_connections_refused_total"];
    let timed_out = samples["helmetd_http_connections_timed_out_total"];
    // Each flood connection was refused or closed by the head deadline (slots freed by the
    // deadline while the flood was still being accepted took more of it in).
    assert!(refused >= 1.0, "refused {refused}");
    assert!(
        refused + timed_out >= FLOOD as f64,
        "refused {refused}, timed out {timed_out}"
    );
    assert!(
        samples["helmetd_http_connections_open"] <= CAP as f64,
        "{samples:?}"
    );
    let (status, body) = run
        .runtime
        .block_on(eventually("/status", CLOSE_TIMEOUT, || {
            exchange(addr, "GET", "/status", Vec::new())
        }));
    assert_eq!(status, 200, "{body}");
    assert!(
        count_fds(pid) <= before + SLACK,
        "descriptors not given back after the flood"
    );
    run.stop();
}

#[test]
fn a_client_that_never_reads_is_cut_off() {
    let run = RunDaemon::start("a_client_that_never_reads_is_cut_off");
    let addr = run.addr;
    // Asks for /metrics over and over on one connection and reads nothing: once the socket
    // buffers are full, the server's write stalls and must give up after http.body_timeout_s.
    let mut greedy = TcpStream::connect(addr).expect("connect");
    greedy
        .set_write_timeout(Some(CLOSE_TIMEOUT))
        .expect("write timeout");
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    // The server stops reading while its answers wait, so this write may stall, then be reset.
    let _ = greedy.write_all(requests.as_bytes());
    run.runtime.block_on(eventually(
        "a stalled answer cut off",
        CLOSE_TIMEOUT,
        || async {
            let samples = scrape(addr).await?;
            let timed_out = samples.get("helmetd_http_connections_timed_out_total")?;
            (*timed_out >= 1.0).then_some(())
        },
    ));
    drop(greedy);
    run.stop();
}
