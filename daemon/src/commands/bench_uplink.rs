//! `helmetd bench uplink`: what a hard example costs on the wire against Sedna's JSON body for
//! the same frame, and how long a violation takes from the glass to a published alert against
//! what the edge model alone takes.
//!
//! **Bytes.** One frame per 1.5 s of the video (the bundled one shows each of its 12 photos for
//! 1.5 s, letterboxed onto 1280×720), decoded twice by the real ingest with
//! `Pace::AsFastAsPossible`: at the edge model's input, as the daemon sees it, and at the
//! video's own size (letterbox scale 1, no bars), as Sedna's client would have read it. Ours is
//! the whole MQTT 5 PUBLISH packet the edge sends for that frame: fixed header, topic, packet
//! id, every property (content type, response topic, correlation data, expiry, the user
//! properties with the edge model's real boxes for the frame) and the payload, the letterbox
//! content at `cloud.jpeg_quality`. Sedna's is only the HTTP body,
//! `{"post_process": null, "data": [[[R, G, B], …], …]}` of the full-resolution RGB frame with
//! Python's default separators (docs/sedna-semantics.md §1.4); its HTTP headers are not counted,
//! which favours Sedna.
//!
//! **Latency.** The real system in this process, like `helmetd demo` with one camera: an
//! embedded MQTT 5 broker, the loopback RTSP server, the cloud service on its own thread and
//! `run::run` with a supervised worker process. Measured per `new`/`update` event: from the
//! capture time of the frame that caused it (`Frame::capture_time`, the wall clock when the
//! frame left the decoder, recovered from the frame's file name in the Sedna output folder by
//! `frame_seq`) to the moment an MQTT subscriber on the broker received the alert. The time the
//! daemon handed the event to its uplink (the `AlertWatcher` call) and, for `new`, the time
//! from the episode's `start_time` (the first confirming frame) are shown too.
//!
//! **Model.** The edge model alone on the densest frame (`Detector::last_inference`, median of
//! 10 runs after 2 warm-up runs), in this process with nothing else running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use helmet_pipelines::detect::Detector;
use helmet_pipelines::ingest::{Camera, CameraSettings, Pace};
use helmet_pipelines::output::{ALL_EXAMPLES, content_image, encode_jpeg};
use helmet_pipelines::rtsp_server::{RtspServer, VideoProbe, probe_video};
use helmet_pipelines::{Frame, runtime};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::nearest_rank;
use crate::alerts::{AlertEvent, EventKind};
use crate::config::{self, Config, ConfigSource};
use crate::joint::mqtt::MqttSettings;
use crate::joint::protocol::{self, HardExampleMeta};
use crate::run::{ConfigOrigin, Control, Daemon, DaemonOptions};

/// The bundled video shows each photo this long.
const PHOTO_PERIOD: Duration = Duration::from_millis(1500);
const MODEL_WARMUP: usize = 2;
const MODEL_RUNS: usize = 10;
const DECODE_TIMEOUT: Duration = Duration::from_secs(120);
const CAMERA: &str = "cam1";
const NODE: &str = "bench";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchUplinkArgs {
    /// Seconds the whole system runs for the latency half (the bundled video's violations are
    /// at 13.5–18 s of each 18 s pass).
    #[arg(long, default_value_t = 40)]
    pub seconds: u64,
    /// Video to measure (default: the bundled media/helmet-test.mp4).
    #[arg(long)]
    pub video: Option<PathBuf>,
}

/// One sampled frame's sizes.
#[derive(Debug, Clone)]
struct FrameBytes {
    pts: Duration,
    jpeg: usize,
    packet: usize,
    sedna: usize,
    boxes: usize,
}

/// One `new`/`update` event as seen by the bench.
#[derive(Debug, Clone)]
struct AlertTiming {
    kind: EventKind,
    frame_seq: u64,
    /// Capture time of the frame that caused the event.
    capture: Option<SystemTime>,
    /// Episode start (first confirming frame).
    start: SystemTime,
    /// When the daemon called the watcher, just before handing the event to its uplink.
    handed: SystemTime,
    /// When the subscriber received it from the broker.
    received: Option<SystemTime>,
}

/// Prints the tables and returns `RESULT bytes_ratio=… alert_p50_ms=… alert_p99_ms=… model_ms=…
/// alerts=…`.
pub fn run(args: BenchUplinkArgs) -> anyhow::Result<String> {
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| config::resolve_path(Path::new("media/helmet-test.mp4")))
        .canonicalize()
        .context("the video to measure")?;
    let cfg = config::load(ConfigSource::Default, &[])?;
    let configured = cfg.inference.onnxruntime.as_os_str();
    runtime::init_onnxruntime((!configured.is_empty()).then_some(Path::new(configured)))?;
    let probe = probe_video(&video)?;
    println!(
        "helmetd bench uplink: {} ({:.1} s, {}x{}), {} s live",
        video.display(),
        probe.duration.as_secs_f64(),
        probe.width,
        probe.height,
        args.seconds
    );

    // Bytes and model time first, while nothing else runs.
    let spec = super::detect::edge_model_spec(&cfg, None, None);
    let mut detector = Detector::load(&spec)
        .with_context(|| format!("loading the edge model {}", spec.path.display()))?;
    let targets = photo_times(probe.duration);
    let edge = sample_frames(&video, spec.input_w, spec.input_h, &targets)?;
    let full = sample_frames(&video, probe.width, probe.height, &targets)?;
    let bytes = measure_bytes(&cfg, &mut detector, &edge, &full)?;
    let densest = bytes
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| b.boxes)
        .map_or(0, |(i, _)| i);
    let model = time_model(&mut detector, &edge[densest])?;
    drop(detector);

    let bytes_ratio = print_bytes(&cfg, &probe, &edge, &bytes, densest, model);

    println!();
    println!(
        "  live: broker, RTSP camera, cloud service and daemon for {} s …",
        args.seconds
    );
    let (timings, summary) = live(&video, Duration::from_secs(args.seconds.max(1)))?;
    Ok(report_live(&timings, &summary, model, bytes_ratio))
}

/// The bytes table; returns ours ÷ Sedna's over all frames.
fn print_bytes(
    cfg: &config::Config,
    probe: &VideoProbe,
    edge: &[Frame],
    bytes: &[FrameBytes],
    densest: usize,
    model: Duration,
) -> f64 {
    println!();
    println!(
        "  bytes per hard example (edge: MQTT 5 PUBLISH, JPEG q{} of the {}x{} letterbox content; Sedna: JSON body of the {}x{} frame)",
        cfg.cloud.jpeg_quality,
        edge[0].letterbox.content_w,
        edge[0].letterbox.content_h,
        probe.width,
        probe.height
    );
    println!(
        "  {:>7}  {:>5}  {:>9}  {:>9}  {:>11}  {:>7}",
        "pts s", "boxes", "JPEG B", "PUBLISH B", "Sedna B", "ratio %"
    );
    for b in bytes {
        println!(
            "  {:>7.2}  {:>5}  {:>9}  {:>9}  {:>11}  {:>7.3}",
            b.pts.as_secs_f64(),
            b.boxes,
            b.jpeg,
            b.packet,
            b.sedna,
            100.0 * b.packet as f64 / b.sedna as f64
        );
    }
    let ours: usize = bytes.iter().map(|b| b.packet).sum();
    let sedna: usize = bytes.iter().map(|b| b.sedna).sum();
    let bytes_ratio = ours as f64 / sedna as f64;
    println!(
        "  total {} frames: ours {} B, Sedna {} B, ratio {:.3} % (goal ≤ 1 %)",
        bytes.len(),
        ours,
        sedna,
        100.0 * bytes_ratio
    );
    println!(
        "  edge model alone: median {:.1} ms over {MODEL_RUNS} runs (frame at {:.2} s, {} boxes)",
        ms(model),
        bytes[densest].pts.as_secs_f64(),
        bytes[densest].boxes
    );

    bytes_ratio
}

/// The live run's table and summary, and the `RESULT` line.
fn report_live(
    timings: &[AlertTiming],
    summary: &crate::run::RunSummary,
    model: Duration,
    bytes_ratio: f64,
) -> String {
    let ms_between = |to: SystemTime, from: SystemTime| match to.duration_since(from) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    };
    println!(
        "  {:<6}  {:>6}  {:>12}  {:>14}  {:>12}",
        "event", "seq", "to uplink ms", "to subscriber ms", "from start ms"
    );
    let mut glass_to_alert = Vec::new();
    let mut to_uplink = Vec::new();
    for t in timings {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        let handed = t.capture.map(|c| ms_between(t.handed, c));
        let received = t.capture.zip(t.received).map(|(c, r)| ms_between(r, c));
        let from_start =
            (t.kind == EventKind::New).then(|| ms_between(t.received.unwrap_or(t.handed), t.start));
        println!(
            "  {:<6}  {:>6}  {:>12}  {:>14}  {:>12}",
            format!("{:?}", t.kind).to_lowercase(),
            t.frame_seq,
            opt(handed),
            opt(received),
            opt(from_start)
        );
        glass_to_alert.extend(received);
        to_uplink.extend(handed);
    }
    glass_to_alert.sort_by(f64::total_cmp);
    to_uplink.sort_by(f64::total_cmp);
    let fmt = |v: Option<f64>| v.map_or_else(|| "nan".to_string(), |v| format!("{v:.0}"));
    println!(
        "  frames {} | hard {} | cloud answered {} | events {} ({} new/update, {} timed)",
        summary.frames,
        summary.hard,
        summary.cloud_answered,
        summary.alerts,
        timings.len(),
        glass_to_alert.len()
    );
    println!(
        "  glass → alert at a subscriber: p50 {} ms, p99 {} ms; glass → uplink: p50 {} ms, p99 {} ms; edge model {:.1} ms",
        fmt(nearest_rank(&glass_to_alert, 0.50)),
        fmt(nearest_rank(&glass_to_alert, 0.99)),
        fmt(nearest_rank(&to_uplink, 0.50)),
        fmt(nearest_rank(&to_uplink, 0.99)),
        ms(model)
    );
    format!(
        "RESULT bytes_ratio={:.5} alert_p50_ms={} alert_p99_ms={} model_ms={:.1} alerts={}",
        bytes_ratio,
        fmt(nearest_rank(&glass_to_alert, 0.50)),
        fmt(nearest_rank(&glass_to_alert, 0.99)),
        ms(model),
        glass_to_alert.len()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The middle of each 1.5 s photo slot that fits in the video.
pub(crate) fn photo_times(duration: Duration) -> Vec<Duration> {
    (0u32..)
        .map(|k| PHOTO_PERIOD / 2 + PHOTO_PERIOD * k)
        .take_while(|t| *t < duration)
        .collect()
}

/// The first sampled frame at or after each of `targets`, letterboxed to `w × h` by the ingest.
pub(crate) fn sample_frames(
    video: &Path,
    w: u32,
    h: u32,
    targets: &[Duration],
) -> anyhow::Result<Vec<Frame>> {
    let url = format!("file://{}", video.display());
    let mut settings = CameraSettings::new("bench", &url, w, h);
    settings.pace = Pace::AsFastAsPossible;
    settings.detect_fps = 2.0;
    let camera =
        Camera::start(settings).with_context(|| format!("decoding {}", video.display()))?;
    let deadline = Instant::now() + DECODE_TIMEOUT;
    let mut frames = Vec::with_capacity(targets.len());
    while frames.len() < targets.len() && Instant::now() < deadline {
        match camera.next_frame(Duration::from_millis(200)) {
            Some(frame) if frame.pts.is_some_and(|p| p >= targets[frames.len()]) => {
                frames.push(frame);
            }
            Some(_) => {}
            None if camera.is_finished() => break,
            None => {}
        }
    }
    camera.stop();
    anyhow::ensure!(
        frames.len() == targets.len(),
        "{}: {} of {} frames decoded at {w}x{h}",
        video.display(),
        frames.len(),
        targets.len()
    );
    Ok(frames)
}

fn measure_bytes(
    cfg: &Config,
    detector: &mut Detector,
    edge: &[Frame],
    full: &[Frame],
) -> anyhow::Result<Vec<FrameBytes>> {
    let cloud = MqttSettings::from_config(cfg);
    edge.iter()
        .zip(full)
        .map(|(e, f)| {
            anyhow::ensure!(
                f.letterbox.scale == 1.0,
                "the full-size decode was scaled ({})",
                f.letterbox.scale
            );
            let boxes = detector.detect(e)?;
            let jpeg = encode_jpeg(&content_image(e), cfg.cloud.jpeg_quality)?;
            let meta = HardExampleMeta::for_frame(e, &boxes);
            Ok(FrameBytes {
                pts: e.pts.unwrap_or_default(),
                jpeg: jpeg.len(),
                packet: request_packet_len(&cloud, &meta, jpeg),
                sedna: sedna_json_len(&f.pixels, f.letterbox.input_w as usize),
                boxes: boxes.len(),
            })
        })
        .collect()
}

/// Bytes of the whole MQTT 5 PUBLISH an edge sends for one hard example: fixed header, topic,
/// packet id, every property and the JPEG.
pub(crate) fn request_packet_len(
    cloud: &MqttSettings,
    meta: &HardExampleMeta,
    jpeg: Vec<u8>,
) -> usize {
    let properties = protocol::request_properties(
        &cloud.node,
        meta,
        &protocol::response_topic(&cloud.topic_prefix, &cloud.node),
        &protocol::new_correlation_id(),
        cloud.timeout,
    );
    let topic = protocol::request_topic(&cloud.topic_prefix);
    let mut publish = Publish::new(topic.as_str(), QoS::AtLeastOnce, jpeg, Some(properties));
    // QoS 1 carries a packet id; 0 would leave those two bytes out of `size`.
    publish.pkid = 1;
    publish.size()
}

/// Length of `json.dumps({"post_process": None, "data": frame.tolist()})` for a packed RGB
/// frame `width` pixels wide: `{"post_process": null, "data": [[[R, G, B], …], …]}`.
fn sedna_json_len(rgb: &[u8], width: usize) -> usize {
    const HEAD: &str = r#"{"post_process": null, "data": "#;
    let pixels = rgb.len() / 3;
    let rows = pixels.checked_div(width).unwrap_or(0);
    let digits: usize = rgb
        .iter()
        .map(|&v| match v {
            0..=9 => 1,
            10..=99 => 2,
            _ => 3,
        })
        .sum();
    HEAD.len()
        + 2 // [ ] of data
        + 2 * rows.saturating_sub(1) // ", " between rows
        + 2 * rows // [ ] of each row
        + 2 * rows * width.saturating_sub(1) // ", " between pixels
        + 6 * pixels // "[", ", ", ", ", "]" of each pixel
        + digits
        + 1 // }
}

fn time_model(detector: &mut Detector, frame: &Frame) -> anyhow::Result<Duration> {
    let mut runs = Vec::with_capacity(MODEL_RUNS);
    for i in 0..MODEL_WARMUP + MODEL_RUNS {
        detector.detect(frame)?;
        if i >= MODEL_WARMUP {
            runs.extend(detector.last_inference());
        }
    }
    runs.sort();
    runs.get(runs.len() / 2)
        .copied()
        .context("the model reported no inference time")
}

type Received = Arc<Mutex<HashMap<(String, u64), SystemTime>>>;
/// `(kind, frame_seq, start_time, when the watcher was called)` of each `new`/`update`.
type Seen = Arc<Mutex<Vec<(EventKind, u64, SystemTime, SystemTime)>>>;

/// A plain MQTT 5 subscriber to the bench node's alert topics: records when each
/// `(type, frame_seq)` arrived. Returns once the subscription is acknowledged.
fn subscribe_alerts(
    runtime: &tokio::runtime::Runtime,
    port: u16,
    filter: String,
) -> anyhow::Result<Received> {
    let received: Received = Arc::default();
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("bench-alert-watch", "127.0.0.1", port), 64);
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    let sink = received.clone();
    runtime.spawn(async move {
        let _client = client.clone();
        if client.subscribe(filter, QoS::AtLeastOnce).await.is_err() {
            return;
        }
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = SystemTime::now();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                        continue;
                    };
                    if let (Some(kind), Some(seq)) = (v["type"].as_str(), v["frame_seq"].as_u64()) {
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry((kind.to_string(), seq))
                            .or_insert(at);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    subscribed_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the alert subscriber got no SUBACK")?;
    Ok(received)
}

/// `20261128T215106.123Z_cam1_000042` → (capture time, camera, seq).
fn parse_stem(stem: &str) -> Option<(SystemTime, &str, u64)> {
    let (time, rest) = stem.split_once('_')?;
    let (camera, seq) = rest.rsplit_once('_')?;
    let b = time.as_bytes();
    if b.len() < 16 || b[8] != b'T' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}",
        &time[0..4],
        &time[4..6],
        &time[6..8],
        &time[9..11],
        &time[11..13],
        &time[13..]
    );
    let at = humantime::parse_rfc3339(&rfc3339).ok()?;
    Some((at, camera, seq.parse().ok()?))
}

/// Capture time of every frame the daemon finalised, by sequence number, from the names of the
/// Sedna output folder that holds all frames.
fn capture_times(output: &Path) -> anyhow::Result<HashMap<u64, SystemTime>> {
    let dir = output.join(ALL_EXAMPLES);
    let mut times = HashMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jpeg")) else {
            continue;
        };
        if let Some((at, camera, seq)) = parse_stem(stem)
            && camera == CAMERA
        {
            times.insert(seq, at);
        }
    }
    Ok(times)
}

fn live(
    video: &Path,
    seconds: Duration,
) -> anyhow::Result<(Vec<AlertTiming>, crate::run::RunSummary)> {
    let work = std::env::temp_dir().join(format!("helmetd-bench-uplink-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = live_in(video, seconds, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn live_in(
    video: &Path,
    seconds: Duration,
    work: &Path,
) -> anyhow::Result<(Vec<AlertTiming>, crate::run::RunSummary)> {
    let broker_url = super::demo::start_embedded_broker()?;
    let port: u16 = broker_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("broker port")?;
    let server =
        RtspServer::start(video, &["/cam1"]).context("starting the loopback RTSP server")?;
    let mut text = config::DEFAULT_CONFIG.to_string();
    text.push_str(&format!(
        "\n# ---- added by helmetd bench uplink ----\n[[camera]]\nname = \"{CAMERA}\"\nurl = \"{}\"\ndetect_fps = 2.0\n",
        server.url("/cam1")
    ));
    let config_path = work.join("helmetd-bench-uplink.toml");
    std::fs::write(&config_path, text)?;
    let output = work.join("out");
    let origin = ConfigOrigin {
        source: ConfigSource::File(config_path),
        overrides: vec![
            format!("mqtt.url={broker_url}"),
            format!("node.name={NODE}"),
            format!("mqtt.spool_dir={}", work.join("spool").display()),
            format!("output.dir={}", output.display()),
            // The cloud shares this machine's cores here; in production it has its own.
            "cloud.intra_threads=1".into(),
        ],
    };
    let cfg = origin.load()?;
    let prefix = cfg.mqtt.topic_prefix.clone();

    let (runtime, control) = Control::with_runtime()?;
    let received = subscribe_alerts(&runtime, port, format!("{prefix}/{NODE}/+/alert"))?;

    let cloud = super::demo::InProcessCloud::start(&cfg, "bench-cloud")?;

    let seen: Seen = Arc::default();
    let mut options = DaemonOptions::default();
    {
        let seen = seen.clone();
        options.watcher = Some(Arc::new(move |event: &AlertEvent| {
            let now = SystemTime::now();
            if event.kind != EventKind::End {
                seen.lock().unwrap_or_else(PoisonError::into_inner).push((
                    event.kind,
                    event.frame_seq,
                    event.start_time,
                    now,
                ));
            }
        }));
    }
    let until = Instant::now() + seconds;
    let result = Daemon::start(origin, cfg, runtime.handle(), &control, options)
        .and_then(|daemon| daemon.run(&control, Some(until)));
    // Alerts handed over in the last moments are still on their way through the broker.
    std::thread::sleep(Duration::from_millis(500));
    cloud.stop();
    drop(server);
    runtime.shutdown_timeout(Duration::from_secs(2));
    let summary = result?;

    let captures = capture_times(&output)?;
    let received = received.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let timings = seen
        .iter()
        .map(|&(kind, frame_seq, start, handed)| {
            let key = (
                if kind == EventKind::New {
                    "new"
                } else {
                    "update"
                }
                .to_string(),
                frame_seq,
            );
            AlertTiming {
                kind,
                frame_seq,
                capture: captures.get(&frame_seq).copied(),
                start,
                handed,
                received: received.get(&key).copied(),
            }
        })
        .collect();
    Ok((timings, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sedna_json_len_matches_python_json_dumps() {
        // json.dumps({"post_process": None, "data": [[[0, 10, 255], [7, 8, 9]], [[100, 1, 99], [5, 50, 200]]]})
        let python = r#"{"post_process": null, "data": [[[0, 10, 255], [7, 8, 9]], [[100, 1, 99], [5, 50, 200]]]}"#;
        let rgb = [0, 10, 255, 7, 8, 9, 100, 1, 99, 5, 50, 200];
        assert_eq!(sedna_json_len(&rgb, 2), python.len());
        let one = r#"{"post_process": null, "data": [[[1, 2, 3]]]}"#;
        assert_eq!(sedna_json_len(&[1, 2, 3], 1), one.len());
    }

    #[test]
    fn frame_stems_give_capture_time_and_seq() {
        let (at, camera, seq) = parse_stem("20261128T215106.123Z_cam1_000042").unwrap();
        assert_eq!(camera, "cam1");
        assert_eq!(seq, 42);
        assert_eq!(
            at,
            humantime::parse_rfc3339("2026-11-28T21:51:06.123Z").unwrap()
        );
        assert!(parse_stem("garbage").is_none());
    }

    #[test]
    fn photo_slots_of_the_bundled_video() {
        let t = photo_times(Duration::from_secs(18));
        assert_eq!(t.len(), 12);
        assert_eq!(t[0], Duration::from_millis(750));
        assert_eq!(t[11], Duration::from_millis(17_250));
    }

    /// The whole bench except the worker processes can run from the test binary; the live half
    /// spawns `current_exe() worker …`, so it needs the real `helmetd` binary.
    #[test]
    #[ignore = "decodes the bundled video and runs the edge model"]
    fn bytes_of_the_bundled_video() {
        let cfg = config::load(ConfigSource::Default, &[]).unwrap();
        runtime::init_onnxruntime(None).unwrap();
        let video = config::resolve_path(Path::new("media/helmet-test.mp4"));
        let spec = super::super::detect::edge_model_spec(&cfg, None, None);
        let mut detector = Detector::load(&spec).unwrap();
        let targets = photo_times(probe_video(&video).unwrap().duration);
        let edge = sample_frames(&video, spec.input_w, spec.input_h, &targets).unwrap();
        let full = sample_frames(&video, 1280, 720, &targets).unwrap();
        let bytes = measure_bytes(&cfg, &mut detector, &edge, &full).unwrap();
        let ours: usize = bytes.iter().map(|b| b.packet).sum();
        let sedna: usize = bytes.iter().map(|b| b.sedna).sum();
        println!("{bytes:#?}\nratio {:.5}", ours as f64 / sedna as f64);
        assert!(ours * 100 <= sedna);
    }
}
