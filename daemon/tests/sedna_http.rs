//! Sedna's HTTP joint-inference protocol on both sides (docs/sedna.md):
//!
//! - the edge's `SednaHttpClient` against an in-test server that behaves as Sedna's
//!   `BigModelService` (shapes and status codes from docs/sedna-semantics.md §1.4);
//! - `helmetd cloud --sedna-http` (the built binary, the real big model) against an in-test
//!   client that sends exactly what Sedna's `ModelClient` sends, and against the edge's client
//!   (the load headers, the edge's deadline, requests whose client left).
//!
//! Run with `--nocapture` to see the measured sizes and parse times.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::{HelmetdProcess, default_config, message};
use helmet_pipelines::detect::Detector;
use helmet_pipelines::output::{content_image, encode_jpeg};
use helmet_pipelines::{Detection, still};
use helmetd::cloud::sedna_http::parse_predict;
use helmetd::joint::protocol::HardExampleMeta;
use helmetd::joint::sedna_http::{
    INFER_MS_HEADER, QUEUE_HEADER, SednaHttpClient, SednaHttpError, SednaHttpSettings, WAIT_HEADER,
    load_from_headers,
};
use helmetd::joint::{
    AskError, BigModel, BreakerSettings, BreakerState, CloudAnswer, CloudLoad, JointClient,
    JointSettings,
};
use hyper::HeaderMap;
use image::RgbImage;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Loading the 80 MB big model and warming it up, on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Generous: the big model on 2 shared cores; the tests check answers, not speed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_millis(400);
/// Slack for scheduling on a loaded machine when checking that a timeout was kept.
const SLACK: Duration = Duration::from_secs(1);

fn root() -> PathBuf {
    helmetd_e2e::workspace_root()
}

fn photo_path() -> PathBuf {
    root().join("media/overeasy_construction.jpg")
}

// ---------------------------------------------------------------------------------------------
// The edge's client against a stand-in for Sedna's BigModelService.

/// How the stand-in answers `POST /sedna/predict`.
#[derive(Clone)]
enum Mode {
    /// 200 `{"result": …}` with these boxes (in the pixels of the image received).
    Answer(Value),
    /// Accepts the request and never answers (Sedna's client would hang forever).
    Silent,
    /// This status with FastAPI's / uvicorn's body for it.
    Status(StatusCode),
}

#[derive(Default)]
struct Seen {
    /// `[height, width, channels]` of every `data` received.
    shapes: Vec<[usize; 3]>,
    first_pixel: Option<Value>,
}

struct Stand {
    mode: Mutex<Mode>,
    seen: Mutex<Seen>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn stand_predict(State(stand): State<Arc<Stand>>, body: Bytes) -> Response {
    let mode = lock(&stand.mode).clone();
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(_) => return (StatusCode::UNPROCESSABLE_ENTITY, "{}").into_response(),
    };
    let Some(rows) = body["data"].as_array() else {
        let detail = json!({"detail": [{"loc": ["body", "data"], "msg": "field required", "type": "value_error.missing"}]});
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(detail)).into_response();
    };
    {
        let mut seen = lock(&stand.seen);
        let width = rows.first().and_then(Value::as_array).map_or(0, Vec::len);
        let channels = rows[0][0].as_array().map_or(0, Vec::len);
        seen.shapes.push([rows.len(), width, channels]);
        seen.first_pixel = Some(rows[0][0].clone());
    }
    match mode {
        Mode::Answer(result) => axum::Json(json!({ "result": result })).into_response(),
        Mode::Silent => std::future::pending().await,
        Mode::Status(status) if status == StatusCode::UNPROCESSABLE_ENTITY => {
            let detail = json!({"detail": [{"loc": ["body", "data"], "msg": "value is not a valid list", "type": "type_error.list"}]});
            (status, axum::Json(detail)).into_response()
        }
        Mode::Status(status) => (status, "Internal Server Error").into_response(),
    }
}

async fn stand_info() -> axum::Json<Value> {
    axum::Json(json!({"infos": [
        {"path": "/sedna", "name": "model_info"},
        {"path": "/sedna/predict", "name": "predict"},
    ]}))
}

/// Starts the stand-in on a free loopback port.
async fn start_stand(mode: Mode) -> (SocketAddr, Arc<Stand>) {
    let stand = Arc::new(Stand {
        mode: Mutex::new(mode),
        seen: Mutex::new(Seen::default()),
    });
    let router = Router::new()
        .route("/sedna", get(stand_info))
        .route("/sedna/predict", post(stand_predict))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(stand.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, stand)
}

/// The Sedna client behind the joint guard, as the daemon uses it.
fn client(addr: SocketAddr, open_initial: Duration) -> JointClient {
    let sedna = SednaHttpClient::new(&SednaHttpSettings {
        base_url: format!("http://{addr}"),
        job: "sedna".into(),
    })
    .unwrap();
    JointClient::new(
        std::sync::Arc::new(sedna),
        JointSettings {
            timeout: TIMEOUT,
            breaker: BreakerSettings {
                failure_threshold: 3,
                open_initial,
                open_max: open_initial * 4,
            },
        },
    )
}

/// A 64×36 content image of a 1280×720 camera frame (letterbox scale 0.05).
fn hard_example() -> (RgbImage, HardExampleMeta) {
    let image = RgbImage::from_fn(64, 36, |x, y| image::Rgb([x as u8, y as u8, 200]));
    let meta = HardExampleMeta {
        camera: "gate".into(),
        seq: 7,
        capture_time: SystemTime::now(),
        edge_result: Vec::new(),
        orig_w: 1280,
        orig_h: 720,
        scale: 0.05,
    };
    (image, meta)
}

#[tokio::test]
async fn an_answer_in_time_is_used_in_camera_frame_pixels() {
    let (addr, stand) = start_stand(Mode::Answer(json!([
        [10, 5.5, 20, 15, 0.875, 1],
        [0, 0, 64, 36, 0.5, 0.0]
    ])))
    .await;
    let client = client(addr, Duration::from_secs(5));
    let (image, meta) = hard_example();
    let answer = client.ask(&image, &meta).await;
    let CloudAnswer::Answered(boxes, rtt) = answer else {
        panic!("{answer:?}")
    };
    assert!(rtt < TIMEOUT, "{rtt:?}");
    assert_eq!(
        boxes,
        [
            Detection {
                x1: 200.0,
                y1: 110.0,
                x2: 400.0,
                y2: 300.0,
                score: 0.875,
                class: 1
            },
            Detection {
                x1: 0.0,
                y1: 0.0,
                x2: 1280.0,
                y2: 720.0,
                score: 0.5,
                class: 0
            }
        ]
    );
    let seen = lock(&stand.seen);
    assert_eq!(seen.shapes, [[36, 64, 3]], "H×W×3 nested lists");
    assert_eq!(seen.first_pixel, Some(json!([0, 0, 200])));
}

#[tokio::test]
async fn a_silent_cloud_costs_the_timeout_then_nothing_and_a_probe_recovers() {
    let (addr, stand) = start_stand(Mode::Silent).await;
    let open = Duration::from_millis(500);
    let client = client(addr, open);
    let (image, meta) = hard_example();
    for _ in 0..3 {
        let t0 = Instant::now();
        let answer = client.ask(&image, &meta).await;
        let took = t0.elapsed();
        assert!(matches!(answer, CloudAnswer::Late), "{answer:?}");
        assert!(
            took >= TIMEOUT && took < TIMEOUT + SLACK,
            "a silent cloud cost {took:?}"
        );
    }
    assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
    let t0 = Instant::now();
    let answer = client.ask(&image, &meta).await;
    assert!(matches!(answer, CloudAnswer::BreakerOpen), "{answer:?}");
    // Nothing is sent or awaited: far below the timeout even on a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(lock(&stand.seen).shapes.len(), 3, "nothing sent while open");

    // The cloud comes back: after the open interval one probe goes through and closes.
    *lock(&stand.mode) = Mode::Answer(json!([]));
    tokio::time::sleep(open).await;
    let answer = client.ask(&image, &meta).await;
    assert!(matches!(answer, CloudAnswer::Answered(..)), "{answer:?}");
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn error_statuses_and_garbage_count_as_failures() {
    let (addr, stand) = start_stand(Mode::Status(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let client = client(addr, Duration::from_secs(5));
    let (image, meta) = hard_example();
    let answer = client.ask(&image, &meta).await;
    let CloudAnswer::Failed(AskError::SednaHttp(SednaHttpError::Status { status, body, .. })) =
        answer
    else {
        panic!("{answer:?}")
    };
    assert_eq!(status, 500);
    assert_eq!(body, "Internal Server Error");

    *lock(&stand.mode) = Mode::Status(StatusCode::UNPROCESSABLE_ENTITY);
    let answer = client.ask(&image, &meta).await;
    assert!(
        matches!(
            &answer,
            CloudAnswer::Failed(AskError::SednaHttp(SednaHttpError::Status { status, .. }))
                if *status == 422
        ),
        "{answer:?}"
    );
    assert_eq!(client.breaker_state(), BreakerState::Closed, "two failures");

    *lock(&stand.mode) = Mode::Answer(json!([[1, 2, 3]]));
    let answer = client.ask(&image, &meta).await;
    assert!(
        matches!(
            answer,
            CloudAnswer::Failed(AskError::SednaHttp(SednaHttpError::BadResponse { .. }))
        ),
        "{answer:?}"
    );
    assert!(
        matches!(client.breaker_state(), BreakerState::Open { .. }),
        "the third failure in a row opens the breaker"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_quick_failure() {
    // A port that was free a moment ago.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client(addr, Duration::from_secs(5));
    let (image, meta) = hard_example();
    let t0 = Instant::now();
    let answer = client.ask(&image, &meta).await;
    assert!(
        matches!(
            answer,
            CloudAnswer::Failed(AskError::SednaHttp(SednaHttpError::Connect { .. }))
        ),
        "{answer:?}"
    );
    assert!(t0.elapsed() < TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// `helmetd cloud --sedna-http` against what Sedna's edge sends.

/// `helmetd cloud --sedna-http 127.0.0.1:0` (HTTP only: no broker configured).
fn start_sedna_cloud(max_body_mb: u64) -> HelmetdProcess {
    let limit = format!("sedna.max_body_mb={max_body_mb}");
    HelmetdProcess::start(&["cloud", "--sedna-http", "127.0.0.1:0", "--set", &limit])
}

/// Waits until the model is loaded and the server listens; returns its address.
fn serving_addr(cloud: &mut HelmetdProcess) -> SocketAddr {
    cloud.wait_for(READY_TIMEOUT, "serving Sedna HTTP", |line| {
        (message(line) == "serving Sedna HTTP")
            .then(|| line["fields"]["addr"].as_str()?.parse().ok())?
    })
}

/// Sedna's request body, byte for byte: `requests.post(json={"post_process": None,
/// "data": frame.tolist()})` serialises with Python's default separators.
fn sedna_body(image: &RgbImage) -> Vec<u8> {
    use std::fmt::Write;
    let mut s = String::from(r#"{"post_process": null, "data": ["#);
    for (y, row) in image
        .as_raw()
        .chunks_exact(image.width() as usize * 3)
        .enumerate()
    {
        if y > 0 {
            s.push_str(", ");
        }
        s.push('[');
        for (x, p) in row.chunks_exact(3).enumerate() {
            if x > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "[{}, {}, {}]", p[0], p[1], p[2]);
        }
        s.push(']');
    }
    s.push_str("]}");
    s.into_bytes()
}

/// One exchange as Sedna's `requests` makes it ([`common::http_exchange`]), its body as JSON.
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let (status, body) = tokio::time::timeout(
        ANSWER_TIMEOUT,
        common::http_exchange(addr, method, path, body),
    )
    .await
    .expect("helmetd cloud answers")
    .expect("an HTTP answer");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

#[test]
fn helmetd_cloud_answers_sednas_edge_worker() {
    const LIMIT_MB: u64 = 16;
    let mut cloud = start_sedna_cloud(LIMIT_MB);

    // Sedna sends whole frames: a photo as decoded, and a busy street as a 720p camera frame.
    let photo = image::open(photo_path()).unwrap().into_rgb8();
    let street = street_720p();
    // The big model run in this process on the same pixels, for comparison.
    helmet_pipelines::runtime::init_onnxruntime(None)
        .expect("ORT_DYLIB_PATH is set for cargo test");
    let spec = helmetd::cloud::cloud_model_spec(&default_config());
    let mut detector = Detector::load(&spec).unwrap();
    let (w, h) = detector.input_size();
    let mut reference = |image: &RgbImage| {
        let (letterbox, pixels) = still::letterbox_rgb(image, w, h).unwrap();
        let frame = helmet_pipelines::Frame {
            camera: "reference".into(),
            seq: 0,
            pts: None,
            capture_time: SystemTime::now(),
            letterbox,
            pixels,
        };
        detector.detect(&frame).unwrap().to_vec()
    };
    let images = [
        ("photo", reference(&photo), photo),
        ("street", reference(&street), street),
    ];
    drop(detector);

    let addr = serving_addr(&mut cloud);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (status, info) = exchange(addr, "GET", "/sedna", Vec::new()).await;
        assert_eq!(status, 200);
        assert!(
            info["infos"]
                .as_array()
                .unwrap()
                .contains(&json!({"path": "/sedna/predict", "name": "predict"})),
            "{info}"
        );

        for (name, reference, image) in &images {
            assert!(!reference.is_empty(), "the {name} shows people");
            let body = sedna_body(image);
            let started = Instant::now();
            let (status, answer) = exchange(addr, "POST", "/sedna/predict", body.clone()).await;
            let took = started.elapsed();
            assert_eq!(status, 200, "{answer}");
            let boxes: Vec<Detection> = answer["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let v: Vec<f64> = serde_json::from_value(b.clone()).unwrap();
                    assert!(
                        b[5].is_u64(),
                        "class is an integer, as Sedna's big model sends"
                    );
                    Detection {
                        x1: v[0] as f32,
                        y1: v[1] as f32,
                        x2: v[2] as f32,
                        y2: v[3] as f32,
                        score: v[4] as f32,
                        class: v[5] as u16,
                    }
                })
                .collect();
            assert_eq!(boxes.len(), reference.len(), "{boxes:?} vs {reference:?}");
            for r in reference {
                let best = boxes
                    .iter()
                    .filter(|b| b.class == r.class)
                    .map(|b| b.iou(r))
                    .fold(0.0, f32::max);
                assert!(best > 0.95, "{name}: {r:?} not found in {boxes:?}");
            }
            println!(
                "{name} {}x{}: Sedna JSON body {} B; answered {} boxes in {took:?}",
                image.width(),
                image.height(),
                body.len(),
                boxes.len(),
            );
        }

        let (status, error) = exchange(
            addr,
            "POST",
            "/sedna/predict",
            br#"{"post_process": null}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 422);
        assert_eq!(error["detail"][0]["loc"], json!(["body", "data"]));
        assert_eq!(error["detail"][0]["type"], "value_error.missing");

        let (status, error) = exchange(
            addr,
            "POST",
            "/sedna/predict",
            br#"{"data": [[[1, 2, 3]], [[4, 5, 6], [7, 8, 9]]]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 422);
        let message = error["detail"][0]["msg"].as_str().unwrap();
        assert!(message.contains("row 1 has 2 pixels"), "{message}");

        let (status, _) = exchange(addr, "POST", "/other/predict", Vec::new()).await;
        assert_eq!(status, 404);

        // Over the limit: refused on the declared length, before the body is sent.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /sedna/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            (LIMIT_MB << 20) + 1
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_end(&mut response))
            .await
            .expect("a prompt answer")
            .unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("sedna.max_body_mb"), "{response}");
    });
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
}

/// One exchange on a fresh connection with extra request `headers`: the status, the answer's
/// headers and its JSON body.
async fn exchange_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, HeaderMap, Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        (parts.status.as_u16(), parts.headers, json)
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .expect("helmetd cloud answers")
}

/// The load an answer reports; every answer of `helmetd cloud --sedna-http` has one.
fn reported_load(headers: &HeaderMap) -> CloudLoad {
    load_from_headers(headers)
        .expect("well-formed load headers")
        .unwrap_or_else(|| panic!("no load headers in {headers:?}"))
}

/// The counters `helmetd cloud --sedna-http` logs when it stops.
fn stop_counters(cloud: &mut HelmetdProcess) -> Value {
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
    cloud
        .log_lines()
        .into_iter()
        .find(|line| message(line) == "Sedna HTTP stopped")
        .unwrap_or_else(|| panic!("no stop line:\n{}", cloud.raw_log()))["fields"]
        .clone()
}

fn helmetd_cloud_client(addr: SocketAddr) -> SednaHttpClient {
    SednaHttpClient::new(&SednaHttpSettings {
        base_url: format!("http://{addr}"),
        job: "sedna".into(),
    })
    .unwrap()
}

#[test]
fn a_request_whose_client_left_costs_no_inference() {
    let mut cloud = start_sedna_cloud(16);
    let addr = serving_addr(&mut cloud);
    let (image, _) = hard_example();
    let body = sedna_body(&image);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The first request takes the model (its tiny body parses in milliseconds)...
        let first = tokio::spawn(exchange(addr, "POST", "/sedna/predict", body.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...a second one arrives whole and waits for it, and its client gives up, as the
        // edge's timeout does: the socket closes.
        let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /sedna/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        gone.write_all(head.as_bytes()).await.unwrap();
        gone.write_all(&body).await.unwrap();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let (_, headers, _) = exchange_with_headers(addr, "GET", "/sedna", &[], vec![]).await;
            if reported_load(&headers).queue == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the second request never waited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(gone);
        let (status, answer) = first.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        // The model is free again for the next one.
        let (status, answer) = exchange(addr, "POST", "/sedna/predict", body).await;
        assert_eq!(status, 200, "{answer}");
    });
    let counters = stop_counters(&mut cloud);
    assert_eq!(counters["requests"], 3, "{counters}");
    assert_eq!(counters["abandoned"], 1, "{counters}");
    assert_eq!(
        counters["answered"], 2,
        "the model ran for the others only: {counters}"
    );
}

#[test]
fn helmetd_clouds_load_and_deadline_reach_the_edge() {
    let mut cloud = start_sedna_cloud(16);
    let addr = serving_addr(&mut cloud);
    let (image, meta) = hard_example();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Before any inference: nothing waits, no inference time yet.
        let (status, headers, _) = exchange_with_headers(addr, "GET", "/sedna", &[], vec![]).await;
        assert_eq!(status, 200);
        assert_eq!(headers[QUEUE_HEADER], "0");
        assert_eq!(headers[INFER_MS_HEADER], "0");

        // The edge's client reads the load of an answer, as from an MQTT answer.
        let sedna = helmetd_cloud_client(addr).with_wait(ANSWER_TIMEOUT);
        let reply = tokio::time::timeout(ANSWER_TIMEOUT, sedna.ask(&image, &meta))
            .await
            .expect("an answer")
            .expect("boxes");
        let load = reply.load.expect("helmetd cloud reports its load");
        assert_eq!(load.queue, 0);
        assert!(load.recent_infer > Duration::ZERO, "{load:?}");

        // A wait shorter than an inference: refused as expired, before the model, with the
        // load. Sedna's body (no wait header) is answered as always.
        let body = sedna_body(&image);
        let (status, headers, refusal) = exchange_with_headers(
            addr,
            "POST",
            "/sedna/predict",
            &[(WAIT_HEADER, "1")],
            body.clone(),
        )
        .await;
        assert_eq!(status, 503, "{refusal}");
        let detail = refusal["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("expired") && detail.contains("deadline"),
            "{detail}"
        );
        assert_eq!(reported_load(&headers).recent_infer, load.recent_infer);
        let (status, headers, refusal) = exchange_with_headers(
            addr,
            "POST",
            "/sedna/predict",
            &[(WAIT_HEADER, "soon")],
            body,
        )
        .await;
        assert_eq!(status, 400, "{refusal}");
        reported_load(&headers);
        let (status, headers, _) = exchange_with_headers(addr, "GET", "/other", &[], vec![]).await;
        assert_eq!(status, 404);
        reported_load(&headers);

        // Behind the guard, an edge that waits less than an inference: the refusal is a busy
        // cloud with a known load (paced, as an MQTT "expired"), not a dead one.
        let guard = JointClient::new(
            Arc::new(helmetd_cloud_client(addr).with_wait(Duration::from_millis(1))),
            JointSettings {
                timeout: ANSWER_TIMEOUT,
                breaker: BreakerSettings::default(),
            },
        );
        let answer = guard.ask(&image, &meta).await;
        let CloudAnswer::Failed(AskError::SednaHttp(refusal)) = &answer else {
            panic!("{answer:?}")
        };
        assert!(refusal.is_busy(), "{refusal}");
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        assert_eq!(guard.pacing().load, refusal.load());
        assert!(guard.pacing().load.is_some());
        assert_eq!(guard.stats().slow, 1);
    });
    let counters = stop_counters(&mut cloud);
    assert_eq!(counters["requests"], 4, "{counters}");
    assert_eq!(counters["answered"], 1, "{counters}");
    assert_eq!(counters["expired"], 2, "{counters}");
    assert_eq!(counters["abandoned"], 0, "{counters}");
}

// ---------------------------------------------------------------------------------------------
// Measurements for docs/sedna.md.

/// A 16:9 photo of a busy street scaled to 1280×720, as a camera would deliver it.
fn street_720p() -> RgbImage {
    let path = root().join("media/overeasy_dense_street1.jpg");
    let (frame, _) = still::load_still(&path, "street", 1280, 720).unwrap();
    let image = content_image(&frame);
    assert_eq!(image.dimensions(), (1280, 720));
    image
}

#[test]
fn measure_body_sizes_and_parse_time_for_720p() {
    let image = street_720p();
    let sedna = sedna_body(&image);
    let started = Instant::now();
    let ours = helmetd::joint::sedna_http::predict_body(&image);
    let serialise = started.elapsed();
    let jpeg = encode_jpeg(&image, default_config().cloud.jpeg_quality).unwrap();

    let mut parse = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let request = parse_predict(&sedna).unwrap();
        parse = parse.min(started.elapsed());
        assert!(request.image == image, "the parse gives back the pixels");
    }
    // Our compact body parses to the same pixels.
    assert!(parse_predict(&ours).unwrap().image == image);
    println!(
        "1280x720: raw {} B, Sedna JSON body {} B, compact JSON {} B (serialised in {:?}), \
         JPEG q{} {} B (Sedna/JPEG {:.0}x); server parse of the Sedna body {:?}",
        image.as_raw().len(),
        sedna.len(),
        ours.len(),
        serialise,
        default_config().cloud.jpeg_quality,
        jpeg.len(),
        sedna.len() as f64 / jpeg.len() as f64,
        parse
    );
    assert!(sedna.len() > 4 * image.as_raw().len());
    assert!(sedna.len() > 20 * jpeg.len());
}
