//! Joint inference end to end: a real mosquitto, the real big model in `helmetd cloud` child
//! processes, and the edge's MQTT client (`joint::mqtt`).
//!
//! These tests live in the daemon crate rather than tests/ because only here does cargo build
//! the `helmetd` binary first and say where it is (`CARGO_BIN_EXE_helmetd`); `cargo test
//! --workspace` does not promise to build another crate's binaries before an integration test.
//!
//! Run with `--nocapture` to see the measured figures (latency, sizes).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use helmet_pipelines::detect::Detector;
use helmet_pipelines::ingest::{Camera, CameraSettings, Pace};
use helmet_pipelines::output::{content_image, encode_jpeg};
use helmet_pipelines::{Detection, Frame, still};
use helmetd::joint::mqtt::MqttSettings;
use helmetd::joint::protocol::{self, CloudResponse, HardExampleMeta};
use helmetd::joint::{BreakerSettings, BreakerState, CloudAnswer, JointSettings};
use helmetd_e2e::mosquitto::Mosquitto;
use rumqttc::NetworkOptions;
use rumqttc::v5::MqttOptions;

use common::{
    HelmetdProcess, RawEdge, default_config, final_stats, message, start_cloud, wait_ready,
};

const PREFIX: &str = "helmetd/v1";

/// The tests start model-running processes; in parallel they would measure each other.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one test's body alone (see [`serial`]) on its own runtime.
fn serially(body: impl std::future::Future<Output = ()>) {
    let _serial = serial();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}

fn root() -> PathBuf {
    helmetd_e2e::workspace_root()
}

/// MQTT options as the daemon uses them on loopback: TCP_NODELAY, answers up to 64 KiB.
fn options(client_id: &str, broker: &Mosquitto) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(Some(u32::try_from(protocol::MAX_RESPONSE_BYTES).unwrap()));
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    o.set_network_options(n);
    o
}

/// A raw edge on `broker`, its requests valid for 30 s.
async fn raw_edge(broker: &Mosquitto, node: &str) -> RawEdge {
    let options = options(&format!("raw-{node}"), broker);
    RawEdge::connect(options, PREFIX, node, Duration::from_secs(30)).await
}

/// A still letterboxed as the edge does it, and the hard example made from it: the letterbox
/// content as JPEG plus its metadata.
fn hard_example(path: &Path, input_w: u32, input_h: u32) -> (Frame, Vec<u8>, HardExampleMeta) {
    let (frame, _) = still::load_still(path, "cam", input_w, input_h).unwrap();
    let jpeg = encode_jpeg(&content_image(&frame), 90).unwrap();
    let meta = HardExampleMeta::for_frame(&frame, &[]);
    (frame, jpeg, meta)
}

fn street2() -> PathBuf {
    root().join("media/overeasy_dense_street2.jpg")
}

/// The big model run in this process on the original image, for comparison.
fn reference_boxes(path: &Path) -> Vec<Detection> {
    helmet_pipelines::runtime::init_onnxruntime(None)
        .expect("ORT_DYLIB_PATH is set for cargo test");
    let spec = helmetd::cloud::cloud_model_spec(&default_config());
    let mut detector = Detector::load(&spec).unwrap();
    let (w, h) = detector.input_size();
    let (frame, _) = still::load_still(path, "reference", w, h).unwrap();
    detector.detect(&frame).unwrap().to_vec()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[test]
fn hard_example_is_answered_in_original_pixels_with_its_correlation() {
    serially(hard_example_is_answered_in_original_pixels_with_its_correlation_body());
}

async fn hard_example_is_answered_in_original_pixels_with_its_correlation_body() {
    let broker = Mosquitto::start().unwrap();
    let mut cloud = start_cloud(&broker, "cloud-a");
    let mut edge = raw_edge(&broker, "edge-b").await;
    // 3079×4619 portrait, sent as its 640×960 letterbox content.
    let (_, jpeg, meta) = hard_example(&street2(), 640, 960);
    assert_eq!((meta.orig_w, meta.orig_h), (3079, 4619));
    let reference = reference_boxes(&street2());
    wait_ready(&mut cloud);

    let mut rtts = Vec::new();
    let mut infer = Vec::new();
    // Round trip minus the cloud's own processing: MQTT both ways, JPEG upload, queueing.
    let mut overhead = Vec::new();
    let mut boxes = Vec::new();
    for n in 1..=5u8 {
        let sent = Instant::now();
        edge.send(jpeg.clone(), edge.properties(&meta, n)).await;
        let (correlation, answer) = edge.answer().await;
        rtts.push(sent.elapsed());
        assert_eq!(
            correlation, n,
            "answer carries the request's correlation data"
        );
        let CloudResponse::Result {
            detections,
            model,
            infer_ms,
            replica,
            load,
        } = answer
        else {
            panic!("refused: {answer:?}\n{}", cloud.raw_log())
        };
        assert_eq!(model, "helmet_yolov12m_640_fp32.onnx");
        assert!(replica.starts_with("helmetd-cloud-cloud-a-"), "{replica}");
        assert!(infer_ms > 0.0);
        // One request at a time: nobody waits, and the average includes this inference.
        let load = load.expect("helmetd cloud reports its load");
        assert_eq!(load.queue, 0);
        assert!(!load.recent_infer.is_zero(), "{load:?}");
        infer.push(infer_ms);
        overhead.push(rtts[rtts.len() - 1].as_secs_f64() * 1e3 - infer_ms);
        boxes = detections;
    }
    rtts.sort();
    println!(
        "hard example {} bytes ({}x{} JPEG q90 of a {}x{} image): request→answer p50 {:.0} ms, max {:.0} ms over {} requests",
        jpeg.len(),
        640,
        960,
        meta.orig_w,
        meta.orig_h,
        percentile(&rtts, 0.5).as_secs_f64() * 1e3,
        rtts.last().unwrap().as_secs_f64() * 1e3,
        rtts.len()
    );
    println!("cloud-side decode + letterbox + model per request: {infer:?} ms");
    println!("round trip minus cloud processing per request: {overhead:.1?} ms");

    assert!(!boxes.is_empty());
    for b in &boxes {
        assert!(
            b.x1 >= 0.0 && b.x2 <= 3079.0 && b.y1 >= 0.0 && b.y2 <= 4619.0,
            "{b:?}"
        );
    }
    assert!(
        boxes.iter().any(|b| b.x2 > 640.0 || b.y2 > 960.0),
        "boxes are in original pixels, not JPEG pixels"
    );
    // The crowd wears no helmets and the model finds few heads; every confident one must be
    // found again through the JPEG, at the same place in original pixels.
    let confident: Vec<&Detection> = reference.iter().filter(|d| d.score >= 0.5).collect();
    assert!(
        !confident.is_empty(),
        "reference finds someone: {reference:?}"
    );
    for r in &confident {
        let best = boxes
            .iter()
            .filter(|b| b.class == r.class)
            .map(|b| b.iou(r))
            .fold(0.0f32, f32::max);
        println!("reference {r:?}: best IoU with a cloud box {best:.2}");
        assert!(best >= 0.5, "{r:?} not found in {boxes:?}");
    }
    println!(
        "cloud boxes {}, in-process reference boxes {} ({} with score >= 0.5)",
        boxes.len(),
        reference.len(),
        confident.len()
    );
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
}

#[test]
fn garbage_is_counted_and_refused_and_the_service_keeps_answering() {
    serially(garbage_is_counted_and_refused_and_the_service_keeps_answering_body());
}

async fn garbage_is_counted_and_refused_and_the_service_keeps_answering_body() {
    let broker = Mosquitto::start().unwrap();
    let mut cloud = start_cloud(&broker, "cloud-g");
    let mut edge = raw_edge(&broker, "edge-g").await;
    let (_, jpeg, meta) = hard_example(&root().join("media/overeasy_construction.jpg"), 640, 384);
    wait_ready(&mut cloud);

    // Not a JPEG, with a reply address: refused with an answer.
    edge.send(b"GIF89a, honestly".to_vec(), edge.properties(&meta, 1))
        .await;
    // A valid JPEG without a response topic: nobody to answer, only counted.
    let mut no_reply = edge.properties(&meta, 2);
    no_reply.response_topic = None;
    edge.send(jpeg.clone(), no_reply).await;
    // 5 MiB: over the 4 MiB limit.
    let mut huge = jpeg.clone();
    huge.resize(5 * 1024 * 1024, 0);
    edge.send(huge, edge.properties(&meta, 3)).await;
    // Wrong content type.
    let mut png = edge.properties(&meta, 4);
    png.content_type = Some("image/png".into());
    edge.send(jpeg.clone(), png).await;
    // A second one of a kind already seen: counted, logged at debug only.
    edge.send(b"still not a JPEG".to_vec(), edge.properties(&meta, 5))
        .await;
    // And then a good one.
    edge.send(jpeg.clone(), edge.properties(&meta, 6)).await;

    let mut errors = Vec::new();
    loop {
        let (correlation, answer) = edge.answer().await;
        match answer {
            CloudResponse::Error { message, .. } => errors.push((correlation, message)),
            CloudResponse::Result { .. } => {
                assert_eq!(correlation, 6);
                break;
            }
        }
    }
    errors.sort();
    let correlations: Vec<u8> = errors.iter().map(|(c, _)| *c).collect();
    assert_eq!(correlations, [1, 3, 4, 5], "{errors:?}");
    assert!(errors[0].1.contains("not a JPEG"), "{errors:?}");
    assert!(errors[1].1.contains("exceeds"), "{errors:?}");
    assert!(errors[2].1.contains("content type"), "{errors:?}");

    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
    let lines = cloud.log_lines();
    let stopped = lines
        .iter()
        .rfind(|l| message(l) == "cloud service stopped")
        .unwrap_or_else(|| panic!("no final stats:\n{}", cloud.raw_log()));
    let field = |name: &str| stopped["fields"][name].as_u64().unwrap_or(u64::MAX);
    assert_eq!(field("requests"), 6, "{stopped}");
    assert_eq!(field("answered"), 1, "{stopped}");
    assert_eq!(field("rejected_not_jpeg"), 2, "{stopped}");
    assert_eq!(field("rejected_no_response_topic"), 1, "{stopped}");
    assert_eq!(field("rejected_too_large"), 1, "{stopped}");
    assert_eq!(field("rejected_content_type"), 1, "{stopped}");
    let warnings = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && message(l).starts_with("refused"))
        .count();
    assert_eq!(warnings, 4, "one warning per kind:\n{}", cloud.raw_log());
}

#[test]
fn two_replicas_share_the_work() {
    serially(two_replicas_share_the_work_body());
}

async fn two_replicas_share_the_work_body() {
    let broker = Mosquitto::start().unwrap();
    let mut first = start_cloud(&broker, "cloud-1");
    let mut second = start_cloud(&broker, "cloud-2");
    let mut edge = raw_edge(&broker, "edge-s").await;
    let (_, jpeg, meta) = hard_example(&root().join("media/overeasy_construction.jpg"), 640, 384);
    wait_ready(&mut first);
    wait_ready(&mut second);

    for n in 1..=6u8 {
        edge.send(jpeg.clone(), edge.properties(&meta, n)).await;
    }
    let mut replicas = std::collections::BTreeMap::<String, u32>::new();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (correlation, answer) = edge.answer().await;
        let CloudResponse::Result { replica, .. } = answer else {
            panic!("refused: {answer:?}")
        };
        *replicas.entry(replica).or_default() += 1;
        seen.push(correlation);
    }
    seen.sort();
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    println!("answers per replica: {replicas:?}");
    assert_eq!(replicas.len(), 2, "both replicas answered: {replicas:?}");
    assert!(first.terminate().success());
    assert!(second.terminate().success());
}

#[test]
fn client_times_out_opens_the_breaker_and_closes_it_when_the_cloud_returns() {
    serially(client_times_out_opens_the_breaker_and_closes_it_when_the_cloud_returns_body());
}

async fn client_times_out_opens_the_breaker_and_closes_it_when_the_cloud_returns_body() {
    let broker = Mosquitto::start().unwrap();
    let timeout = Duration::from_millis(2000);
    let settings = MqttSettings {
        node: "edge-c".into(),
        topic_prefix: PREFIX.into(),
        timeout,
        jpeg_quality: 90,
    };
    let guard = JointSettings {
        timeout,
        breaker: BreakerSettings {
            failure_threshold: 3,
            open_initial: Duration::from_secs(2),
            open_max: Duration::from_secs(8),
        },
    };
    let (cloud_client, driver) =
        common::subscribed_cloud_client(options("edge-c", &broker), settings, guard).await;
    let (frame, _, _) = hard_example(&root().join("media/overeasy_construction.jpg"), 640, 384);
    let image = content_image(&frame);
    let meta = HardExampleMeta::for_frame(&frame, &[]);

    // (e) Nobody serves the topic: each ask waits out the timeout (how much longer depends on the
    // machine's load: bench uplink measures it), then the breaker opens.
    for _ in 0..3 {
        let t0 = Instant::now();
        let answer = cloud_client.ask(&image, &meta).await;
        let took = t0.elapsed();
        assert!(matches!(answer, CloudAnswer::Late), "{answer:?}");
        assert!(
            took >= timeout,
            "answered Late before the timeout: {took:?}"
        );
        println!(
            "ask with no cloud: {:.1} ms (timeout {timeout:?})",
            took.as_secs_f64() * 1e3
        );
    }
    assert!(matches!(
        cloud_client.breaker_state(),
        BreakerState::Open { .. }
    ));
    // With the breaker open an ask neither sends nor waits: counted as a skip, not as a request
    // or a timeout.
    let before = cloud_client.stats();
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let t0 = Instant::now();
        let answer = cloud_client.ask(&image, &meta).await;
        slowest = slowest.max(t0.elapsed());
        assert!(matches!(answer, CloudAnswer::BreakerOpen), "{answer:?}");
    }
    let after = cloud_client.stats();
    println!(
        "ask with the breaker open: slowest of 100 {:.3} ms",
        slowest.as_secs_f64() * 1e3
    );
    assert_eq!(after.asked, before.asked, "no request sent while open");
    assert_eq!(after.timed_out, before.timed_out, "no timeout waited out");
    assert_eq!(after.breaker_open_skips, before.breaker_open_skips + 100);
    assert!(slowest < timeout, "{slowest:?}");

    // (f) The cloud comes back: a probe gets through and closes the breaker.
    let mut cloud = start_cloud(&broker, "cloud-f");
    wait_ready(&mut cloud);
    let deadline = Instant::now() + Duration::from_secs(60);
    let rtt = loop {
        assert!(
            Instant::now() < deadline,
            "breaker never closed:\n{}",
            cloud.raw_log()
        );
        match cloud_client.ask(&image, &meta).await {
            CloudAnswer::Answered(_, rtt) => break rtt,
            CloudAnswer::BreakerOpen => tokio::time::sleep(Duration::from_millis(50)).await,
            other => println!("probe did not succeed yet: {other:?}"),
        }
    };
    assert_eq!(cloud_client.breaker_state(), BreakerState::Closed);
    println!("probe answered in {:.0} ms", rtt.as_secs_f64() * 1e3);
    let answer = cloud_client.ask(&image, &meta).await;
    assert!(matches!(answer, CloudAnswer::Answered(..)), "{answer:?}");
    let stats = cloud_client.stats();
    println!("client stats: {stats:?}");
    assert!(stats.timed_out >= 3 && stats.breaker_open_skips >= 100 && stats.answered >= 2);
    driver.abort();
    assert!(cloud.terminate().success());
}

#[test]
fn an_overloaded_cloud_paces_the_edge_instead_of_opening_its_breaker() {
    serially(an_overloaded_cloud_paces_the_edge_instead_of_opening_its_breaker_body());
}

async fn an_overloaded_cloud_paces_the_edge_instead_of_opening_its_breaker_body() {
    let broker = Mosquitto::start().unwrap();
    let mut cloud = start_cloud(&broker, "cloud-p");
    // Generous, so that what the cloud is asked can be answered in time on 2 shared cores.
    let timeout = Duration::from_millis(3000);
    let settings = MqttSettings {
        node: "edge-p".into(),
        topic_prefix: PREFIX.into(),
        timeout,
        jpeg_quality: 90,
    };
    // The daemon's breaker: before pacing, three "overloaded" in a row opened it.
    let guard = JointSettings {
        timeout,
        breaker: BreakerSettings::default(),
    };
    let (client, driver) =
        common::subscribed_cloud_client(options("edge-p", &broker), settings, guard).await;
    let (frame, _, _) = hard_example(&root().join("media/overeasy_construction.jpg"), 640, 384);
    let image = content_image(&frame);
    let meta = HardExampleMeta::for_frame(&frame, &[]);
    wait_ready(&mut cloud);

    // Eight cameras' hard frames at once, five times a second each, for 20 s: far more than
    // one replica runs (a queue of 4 behind one inference).
    let started = Instant::now();
    let (client, image, meta) = (&client, &image, &meta);
    let camera = move |_| async move {
        let mut seen = Vec::new();
        while started.elapsed() < Duration::from_secs(20) {
            let answer = client.ask(image, meta).await;
            assert!(
                !matches!(answer, CloudAnswer::BreakerOpen),
                "the breaker opened: {:?}",
                client.stats()
            );
            seen.push(match answer {
                CloudAnswer::Answered(..) => "answered",
                CloudAnswer::Late => "late",
                CloudAnswer::Failed(_) => "refused or failed",
                CloudAnswer::BreakerOpen => "breaker open",
                CloudAnswer::Paced => "paced",
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    };
    let outcomes = futures_util::future::join_all((0..8).map(camera)).await;
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for outcome in outcomes.into_iter().flatten() {
        *counts.entry(outcome).or_default() += 1;
    }
    let stats = client.stats();
    let pacing = client.pacing();
    println!("outcomes {counts:?}\nclient stats {stats:?}\npacing {pacing:?}");
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(stats.breaker_open_skips, 0, "{stats:?}");
    assert!(stats.slow > 0 && stats.paced > 0, "{stats:?}");
    assert!(
        stats.paced > stats.asked,
        "most hard frames were decided on the edge without asking: {stats:?}"
    );
    assert!(pacing.load.is_some(), "{pacing:?}");
    driver.abort();

    let stopped = final_stats(&mut cloud);
    println!("cloud: {}", stopped["fields"]);
    let field = |name: &str| stopped["fields"][name].as_u64().unwrap_or(0);
    assert!(
        field("overloaded") + field("expired") > 0,
        "the cloud was never too busy: {stopped}"
    );
}

#[test]
fn service_resubscribes_after_the_broker_restarts() {
    serially(service_resubscribes_after_the_broker_restarts_body());
}

async fn service_resubscribes_after_the_broker_restarts_body() {
    let mut broker = Mosquitto::start().unwrap();
    let mut cloud = start_cloud(&broker, "cloud-r");
    let (_, jpeg, meta) = hard_example(&root().join("media/overeasy_construction.jpg"), 640, 384);
    wait_ready(&mut cloud);
    let readiness = |cloud: &HelmetdProcess| {
        cloud
            .log_lines()
            .iter()
            .filter(|l| message(l) == "ready for hard examples")
            .count()
    };
    // SIGTERM (database saved), then SIGKILL (power cut): the service reconnects after both.
    for (round, kill) in [(1u8, false), (2, true)] {
        if kill {
            broker.kill().unwrap();
        } else {
            broker.stop().unwrap();
        }
        broker.restart().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while readiness(&cloud) <= usize::from(round) {
            assert!(
                Instant::now() < deadline,
                "no resubscription after restart {round}:\n{}\nbroker:\n{}",
                cloud.raw_log(),
                broker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut edge = raw_edge(&broker, &format!("edge-r{round}")).await;
        edge.send(jpeg.clone(), edge.properties(&meta, round)).await;
        let (correlation, answer) = edge.answer().await;
        assert_eq!(correlation, round);
        assert!(matches!(answer, CloudResponse::Result { .. }), "{answer:?}");
    }
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
}

/// Sedna posts `json.dumps({"post_process": None, "data": frame.tolist()})`; Python's default
/// separators are ", " and ": ".
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[derive(serde::Serialize)]
struct SednaBody {
    post_process: Option<()>,
    data: Vec<Vec<[u8; 3]>>,
}

/// The frame of the test video at `at` (the video letterboxes each photo onto 1280×720),
/// letterboxed to `input_w × input_h` by the real ingest pipeline.
fn video_frame(at: Duration, input_w: u32, input_h: u32) -> Frame {
    let video = root().join("media/helmet-test.mp4");
    let url = format!("file://{}", video.display());
    let mut settings = CameraSettings::new("video", &url, input_w, input_h);
    settings.pace = Pace::AsFastAsPossible;
    settings.detect_fps = 2.0;
    let camera = Camera::start(settings).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match camera.next_frame(Duration::from_millis(200)) {
            Some(frame) if frame.pts.is_some_and(|p| p >= at) => {
                camera.stop();
                return frame;
            }
            Some(_) => {}
            None if camera.is_finished() => break,
            None => {}
        }
    }
    camera.stop();
    panic!("no frame at {at:?} in {}", video.display());
}

#[test]
fn hard_example_jpeg_vs_sedna_json() {
    let _serial = serial();
    // dense_street2 is shown from 15.0 s to 16.5 s (media/frames.txt, 1.5 s per photo).
    let at = Duration::from_millis(15_500);
    let full = video_frame(at, 1280, 720);
    assert_eq!(full.input_size(), (1280, 720));
    assert_eq!(full.letterbox.scale, 1.0);
    let data: Vec<Vec<[u8; 3]>> = full
        .pixels
        .chunks_exact(1280 * 3)
        .map(|row| row.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect())
        .collect();
    let mut sedna = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut sedna, PythonSeparators);
    serde::Serialize::serialize(
        &SednaBody {
            post_process: None,
            data,
        },
        &mut serializer,
    )
    .unwrap();
    assert!(sedna.starts_with(b"{\"post_process\": null, \"data\": [[["));

    // What the edge sends for the same frame: its letterbox content at the edge model input.
    let edge = video_frame(at, 640, 384);
    let content = content_image(&edge);
    let jpeg = encode_jpeg(&content, 90).unwrap();
    println!(
        "1280x720 frame at {at:?}: Sedna JSON {} bytes ({:.1} MB), hard example JPEG {}x{} q90 {} bytes ({:.1} KB): {:.0}x smaller",
        sedna.len(),
        sedna.len() as f64 / 1e6,
        content.width(),
        content.height(),
        jpeg.len(),
        jpeg.len() as f64 / 1e3,
        sedna.len() as f64 / jpeg.len() as f64
    );
    assert_eq!((content.width(), content.height()), (640, 360));
    assert!(jpeg.len() * 50 < sedna.len());
}
