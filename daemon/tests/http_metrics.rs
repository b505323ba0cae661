//! The HTTP endpoint end to end on loopback: probes follow the loop's ticks and snapshots,
//! `/metrics` parses as Prometheus text, and `helmetd status` renders `/status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use helmetd::http::{ConnectionLimits, HttpServer, Telemetry, status_command};
use helmetd::telemetry::Snapshot;
use helmetd::telemetry::snapshot::{CameraSnapshot, CameraState, WorkerSnapshot, WorkerState};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Short, so the test sees `/healthz` fail without waiting the daemon's 5 s.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Reply {
    let request = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body");
        Reply {
            status,
            content_type,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"))
}

fn snapshot(camera: CameraState, worker: WorkerState) -> Snapshot {
    Snapshot {
        node: "gw-test".into(),
        cameras: vec![CameraSnapshot {
            name: "gate".into(),
            state: camera,
            frames_in: 100,
            frames_processed: 40,
            fps: 5.0,
            ..Default::default()
        }],
        workers: vec![WorkerSnapshot {
            pool: "edge".into(),
            id: 0,
            pid: Some(1234),
            state: worker,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_status() {
    let telemetry = Arc::new(Telemetry::new(HEALTH_TIMEOUT));
    let limits =
        ConnectionLimits::from_http(&helmetd::config::Config::embedded_default().unwrap().http);
    let server = HttpServer::start(
        "127.0.0.1:0",
        limits,
        telemetry.clone(),
        &tokio::runtime::Handle::current(),
    )
    .expect("binds a free loopback port");
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());

    let before = get(addr, "/readyz").await;
    assert_eq!(before.status, 503);
    assert!(before.body.contains("not reported yet"), "{}", before.body);
    assert_eq!(get(addr, "/status").await.status, 503);

    telemetry.health.tick();
    let health = get(addr, "/healthz").await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    telemetry
        .metrics
        .update(&snapshot(CameraState::Starting, WorkerState::Starting));
    let not_ready = get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    let body: serde_json::Value = serde_json::from_str(&not_ready.body).expect("JSON body");
    assert_eq!(
        body["missing"],
        serde_json::json!(["camera gate is starting", "no worker is ready"])
    );

    telemetry
        .metrics
        .update(&snapshot(CameraState::Streaming, WorkerState::Ready));
    assert_eq!(get(addr, "/readyz").await.status, 200);

    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let scrape = prometheus_parse::Scrape::parse(metrics.body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let processed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "helmetd_camera_frames_processed_total")
        .expect("per-camera counter");
    assert_eq!(processed.labels.get("camera"), Some("gate"));
    assert!(matches!(processed.value, prometheus_parse::Value::Counter(v) if v == 40.0));

    telemetry.health.tick();
    let address = addr.to_string();
    let summary = tokio::task::spawn_blocking(move || status_command(&address))
        .await
        .expect("status thread")
        .expect("status command");
    assert!(summary.starts_with("node gw-test, up "), "{summary}");
    assert!(summary.contains(", ready\n"), "{summary}");
    assert!(summary.contains("gate  streaming"), "{summary}");
    assert!(summary.contains("workers: 1 ready"), "{summary}");

    // The loop stops ticking: liveness fails within the timeout plus a margin.
    let deadline = Instant::now() + HEALTH_TIMEOUT + Duration::from_secs(3);
    let stuck = loop {
        let reply = get(addr, "/healthz").await;
        if reply.status != 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stuck.status, 503, "{}", stuck.body);
    assert!(stuck.body.contains("silent"), "{}", stuck.body);

    server.stop().await.expect("stops gracefully");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after stop"
    );
}

#[test]
fn status_command_names_an_unreachable_daemon() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("address").to_string();
    drop(listener);
    let error = status_command(&addr).expect_err("nothing listens");
    assert!(format!("{error:#}").contains(&addr), "{error:#}");
}
