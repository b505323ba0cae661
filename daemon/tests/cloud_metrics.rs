//! `helmetd cloud`'s `/metrics` while a queue builds: a real Mosquitto, a `helmetd cloud` child
//! with the fake 300 ms model (`--simulate-infer-ms`) and its endpoint on a free loopback port,
//! a raw edge sending four real hard examples at once, and scrapes during the burst and after.
//!
//! Four at once on a replica that runs one at a time: the first runs while three wait, so the
//! in-flight integral is about 0.3 × (1 + 2 + 3 + 4) = 3 s against 1.2 s busy.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use helmet_pipelines::output::{content_image, encode_jpeg};
use helmet_pipelines::still;
use helmetd::joint::protocol::{self, CloudResponse, HardExampleMeta};
use helmetd_e2e::mosquitto::Mosquitto;
use prometheus_parse::{Scrape, Value};
use rumqttc::v5::MqttOptions;

use common::{HelmetdProcess, RawEdge, http_exchange, message, wait_ready};

const PREFIX: &str = "helmetd/v1";
const SIMULATED: Duration = Duration::from_millis(300);
const BURST: u8 = 4;
/// Between scrapes during the burst: several scrapes per inference.
const SCRAPE_EVERY: Duration = Duration::from_millis(40);
/// The burst takes 1.2 s; this bounds the wait for its answers on a busy machine.
const BURST_TIMEOUT: Duration = Duration::from_secs(30);

/// `helmetd cloud` with the fake model and its endpoint on a free port, and that address (read
/// from its log once bound).
fn start_cloud(broker: &Mosquitto) -> (HelmetdProcess, SocketAddr) {
    let url = format!("mqtt.url={}", broker.url());
    let simulated = SIMULATED.as_millis().to_string();
    let mut cloud = HelmetdProcess::start(&[
        "cloud",
        "--simulate-infer-ms",
        &simulated,
        "--set",
        &url,
        "--set",
        "node.name=cloud-metrics",
        "--set",
        "http.listen=127.0.0.1:0",
    ]);
    let addr = cloud.wait_for(Duration::from_secs(30), "the metrics endpoint", |l| {
        (message(l) == "metrics endpoint: /metrics /healthz /readyz")
            .then(|| l["fields"]["addr"].as_str()?.parse().ok())
            .flatten()
    });
    (cloud, addr)
}

/// A hard example as the edge makes it: the letterbox content of a bundled photo as JPEG.
fn hard_example() -> (Vec<u8>, HardExampleMeta) {
    let path = helmetd_e2e::workspace_root().join("media/overeasy_construction.jpg");
    let (frame, _) = still::load_still(Path::new(&path), "cam", 640, 384).unwrap();
    let jpeg = encode_jpeg(&content_image(&frame), 90).unwrap();
    (jpeg, HardExampleMeta::for_frame(&frame, &[]))
}

async fn raw_edge(broker: &Mosquitto) -> RawEdge {
    let mut options = MqttOptions::new("raw-metrics-edge", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(Some(u32::try_from(protocol::MAX_RESPONSE_BYTES).unwrap()));
    RawEdge::connect(options, PREFIX, "metrics-edge", Duration::from_secs(30)).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = http_exchange(addr, "GET", path, Vec::new())
        .await
        .unwrap_or_else(|| panic!("GET {path} on {addr} answered"));
    (status, String::from_utf8(body).expect("a text body"))
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parsable metrics")
}

fn value(scrape: &Scrape, name: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("no {name}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn the_demand_metric_follows_a_queue_building_and_draining() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(queue_building_and_draining());
}

async fn queue_building_and_draining() {
    let broker = Mosquitto::start().unwrap();
    let (mut cloud, addr) = start_cloud(&broker);
    wait_ready(&mut cloud);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    // The MQTT task marks the subscription granted before it logs so: ready now.
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let idle = scrape(addr).await;
    assert_eq!(value(&idle, "helmetd_cloud_requests_total"), 0.0);
    assert_eq!(value(&idle, "helmetd_cloud_in_flight_seconds_total"), 0.0);

    let mut edge = raw_edge(&broker).await;
    let (jpeg, meta) = hard_example();
    for n in 0..BURST {
        edge.send(jpeg.clone(), edge.properties(&meta, n)).await;
    }
    let (scrapes, answers) = scrape_until_answered(addr, &mut edge).await;
    let answered = answers
        .iter()
        .filter(|a| matches!(a, CloudResponse::Result { .. }))
        .count();
    assert_eq!(answered, usize::from(BURST), "{answers:?}");

    let seen = |name: &str| {
        scrapes
            .iter()
            .map(move |s| value(s, name))
            .collect::<Vec<f64>>()
    };
    let deepest = seen("helmetd_cloud_queue_depth")
        .into_iter()
        .fold(0.0, f64::max);
    assert!(deepest > 0.0, "no scrape saw a queue");
    assert!(seen("helmetd_cloud_busy").contains(&1.0), "never busy");
    let integral = seen("helmetd_cloud_in_flight_seconds_total");
    assert!(integral.windows(2).all(|w| w[0] <= w[1]), "{integral:?}");

    let after = scrape(addr).await;
    let busy_s = value(&after, "helmetd_cloud_busy_seconds_total");
    let in_flight_s = value(&after, "helmetd_cloud_in_flight_seconds_total");
    println!(
        "deepest queue {deepest}, busy {busy_s:.3} s, in flight {in_flight_s:.3} s, {} scrapes",
        scrapes.len()
    );
    assert_eq!(
        value(&after, "helmetd_cloud_requests_answered_total"),
        answered as f64
    );
    assert_eq!(
        value(&after, "helmetd_cloud_requests_total"),
        f64::from(BURST)
    );
    let expected_busy = SIMULATED.as_secs_f64() * answered as f64;
    assert!(
        (expected_busy..expected_busy * 1.25).contains(&busy_s),
        "busy {busy_s} s for {answered} answers of {SIMULATED:?}"
    );
    // The three that waited add their waits: about 2.5 × the busy time.
    assert!(in_flight_s >= 1.8 * busy_s, "in flight {in_flight_s} s");
    for gauge in [
        "helmetd_cloud_queue_depth",
        "helmetd_cloud_busy",
        "helmetd_cloud_in_flight",
    ] {
        assert_eq!(value(&after, gauge), 0.0, "{gauge} after the burst");
    }
    // Idle: the integral stands still between scrapes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = scrape(addr).await;
    assert_eq!(
        value(&later, "helmetd_cloud_in_flight_seconds_total"),
        in_flight_s
    );
    assert!(cloud.terminate().success(), "{}", cloud.raw_log());
}

/// Scrapes every [`SCRAPE_EVERY`] until the burst's answers are in; returns the scrapes and
/// the answers.
async fn scrape_until_answered(
    addr: SocketAddr,
    edge: &mut RawEdge,
) -> (Vec<Scrape>, Vec<CloudResponse>) {
    let deadline = Instant::now() + BURST_TIMEOUT;
    let mut scrapes = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < usize::from(BURST) {
        assert!(
            Instant::now() < deadline,
            "{} answers within {BURST_TIMEOUT:?}",
            answers.len()
        );
        scrapes.push(scrape(addr).await);
        while let Ok(publish) = edge.peer.received.try_recv() {
            answers.push(protocol::parse_response(&publish).expect("a valid answer"));
        }
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
    (scrapes, answers)
}
