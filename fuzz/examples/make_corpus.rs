//! Writes the seed corpus `fuzz/corpus/<target>/` with the daemon's own encoders and real files:
//! a cloud request as the edge publishes it, a segment the spool wrote, the shipped configs, …
//! Run from `fuzz/` with `cargo run --example make_corpus`; the output is committed, so this
//! is only needed when a format changes. Files are named after what they hold and overwritten.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use helmet_pipelines::{Detection, Detections, Letterbox};
use helmetd::joint::protocol::{self, HardExampleMeta};
use helmetd::joint::sedna_http::predict_body;
use helmetd::kubeedge::message::Message;
use helmetd::spool::{Entry, FsyncPolicy, Spool, SpoolLimits};
use helmetd::worker::protocol::{Infer, InferResult, Ready, ToDaemon, ToWorker};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::json;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut out = Corpus(corpus);
    cloud(&mut out);
    sedna(&mut out);
    kubeedge(&mut out);
    spool(&mut out);
    worker(&mut out);
    config(&mut out);
}

struct Corpus(PathBuf);

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus folder");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}

fn read(path: &str) -> Vec<u8> {
    let path = Path::new(ROOT).join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn packet(mut publish: Publish) -> Vec<u8> {
    // QoS 1 needs a packet id; the broker assigns its own on the way out.
    publish.pkid = 1;
    let mut buf = BytesMut::new();
    publish.write(&mut buf).expect("encode a PUBLISH");
    buf.to_vec()
}

fn detection(x1: f32, score: f32, class: u16) -> Detection {
    Detection {
        x1,
        y1: 10.0,
        x2: x1 + 30.5,
        y2: 80.0,
        score,
        class,
    }
}

fn cloud(out: &mut Corpus) {
    // A real photo scaled down as the edge sends its letterbox content, kept small for the corpus.
    let photo = image::load_from_memory(&read("media/aws_pexels-photo-1108101.jpg"))
        .expect("decode the shipped photo");
    let content = photo.thumbnail_exact(48, 32).into_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 90)
        .encode_image(&content)
        .expect("encode a JPEG");
    let meta = HardExampleMeta {
        camera: "gate-1".into(),
        seq: 42,
        capture_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_950_400_123),
        edge_result: vec![detection(4.0, 0.61, 1), detection(20.0, 0.4, 0)],
        orig_w: 96,
        orig_h: 64,
        scale: 0.5,
    };
    let correlation = protocol::new_correlation_id();
    let properties = protocol::request_properties(
        "edge-1",
        &meta,
        &protocol::response_topic("helmetd/v1", "edge-1"),
        &correlation,
        Duration::from_millis(1500),
    );
    let topic = protocol::request_topic("helmetd/v1");
    let request = Publish::new(&topic, QoS::AtLeastOnce, jpeg.clone(), Some(properties));
    out.put("cloud_request", "edge-request", packet(request));
    out.put(
        "cloud_request",
        "no-properties",
        packet(Publish::new(&topic, QoS::AtMostOnce, jpeg, None)),
    );

    let answer = |payload: Vec<u8>| {
        let props = protocol::response_properties(&correlation);
        let topic = protocol::response_topic("helmetd/v1", "edge-1");
        packet(Publish::new(topic, QoS::AtLeastOnce, payload, Some(props)))
    };
    let boxes = [detection(4.0, 0.9, 1), detection(50.0, 0.75, 0)];
    out.put(
        "cloud_answer",
        "result",
        answer(protocol::result_json(&boxes, "yolo-big", 41.27, "cloud-0")),
    );
    out.put(
        "cloud_answer",
        "error",
        answer(protocol::error_json("model busy", "cloud-0")),
    );
    out.put("cloud_answer", "empty-object", answer(b"{}".to_vec()));
}

fn sedna(out: &mut Corpus) {
    let image = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 255]));
    out.put("sedna_body", "edge-predict", predict_body(&image));
    out.put(
        "sedna_body",
        "callback",
        br#"{"data":[[[0,0,0]]],"callback":"cb"}"#,
    );
    out.put("sedna_body", "no-data", b"{}");

    let result = json!({"result": [[4.0, 10.5, 34.5, 80.0, 0.9, 1], [50, 10, 80, 80, 0.75, 0.0]]});
    out.put("sedna_answer", "result", result.to_string());
    out.put("sedna_answer", "empty", br#"{"result":[]}"#);

    let http = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let big_model = [
        b"\x00".as_slice(),
        http("200 OK", &result.to_string()).as_bytes(),
    ]
    .concat();
    out.put("http_answer", "sedna-200", big_model);
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"res\r\n0\r\n\r\n";
    out.put(
        "http_answer",
        "sedna-chunked",
        [b"\x02".as_slice(), chunked.as_bytes()].concat(),
    );
    let lc = http("200 OK", r#"{"Status":200,"Message":"ok"}"#);
    out.put(
        "http_answer",
        "lc-200",
        [b"\x01".as_slice(), lc.as_bytes()].concat(),
    );
    let refused = http("500 Internal Server Error", "oops");
    out.put(
        "http_answer",
        "lc-500",
        [b"\x03".as_slice(), refused.as_bytes()].concat(),
    );

    out.put(
        "sedna_import",
        "hpa-example.yaml",
        read("daemon/tests/fixtures/sedna/hpa-example.yaml"),
    );
    out.put(
        "sedna_import",
        "minimal.yaml",
        "apiVersion: sedna.io/v1alpha1\nkind: JointInferenceService\nmetadata:\n  name: x\nspec: {}\n",
    );

    let gm_edge_pod = "BIG_MODEL_IP=helmet-detection-inference-example-cloud.default\n\
        BIG_MODEL_PORT=5000\nHEM_NAME=IBT\n\
        HEM_PARAMETERS=[{\"key\":\"threshold_img\",\"value\":\"0.8\"},{\"key\":\"threshold_box\",\"value\":\"0.7\"}]\n\
        LC_SERVER=http://localhost:9100\nNAMESPACE=default\n\
        SERVICE_NAME=helmet-detection-inference-example\nWORKER_NAME=edgeworker-x7k2p\n\
        video_url=rtsp://localhost/video\nall_examples_inference_output=/data/output\n\
        hard_example_edge_inference_output=/data/hard_example_edge_inference_output\n\
        input_shape=416,736\nLC_PERIOD=30\n";
    out.put("sedna_env", "gm-edge-pod", gm_edge_pod);
    out.put("sedna_env", "big-model-only", "BIG_MODEL_IP=10.0.0.5\n");
}

fn kubeedge(out: &mut Corpus) {
    let request = Message::new(
        "edgecontroller",
        "resource",
        "update",
        "default/pod/helmet",
        json!({"metadata": {"name": "helmet"}}),
    );
    let mut reply = request.clone();
    reply.header.parent_msg_id = request.header.msg_id.clone();
    reply.content = json!({"Object": {"metadata": {"name": "edge-1"}, "spec": {}}, "Err": null});
    let mut refused = reply.clone();
    refused.content =
        json!({"Object": null, "Err": {"ErrStatus": {"reason": "NotFound", "message": "gone"}}});
    let json = |m: &Message| serde_json::to_string(m).expect("serialise a message");
    out.put("kubeedge_message", "pod-push", json(&request));
    out.put("kubeedge_message", "object-reply", json(&reply));
    out.put("kubeedge_message", "err-reply", json(&refused));
    out.put("kubeedge_message", "keepalive", json(&Message::keepalive()));

    // `keadm gettoken`: the CA's SHA-256, then a JWT.
    let token = format!(
        "{}.eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3NjQ5NTA0MDB9.c2ln\n",
        "ab".repeat(32)
    );
    out.put("join_token", "keadm-token", token);
    out.put("join_token", "three-parts", "a.b.c");
}

fn spool(out: &mut Corpus) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let limits = SpoolLimits {
        // Small segments, so the spool rolls over to a second file.
        segment_bytes: 200,
        ..SpoolLimits::new(1 << 20, Duration::from_secs(86_400 * 365 * 100))
    };
    let mut spool = Spool::open(dir.path(), limits, FsyncPolicy::Never).expect("open a spool");
    let entry = |topic: &str, payload: &[u8], retain| Entry {
        topic: topic.into(),
        payload: payload.to_vec(),
        properties: BTreeMap::from([("camera".to_string(), "gate-1".to_string())]),
        retain,
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_950_400),
    };
    for (topic, payload, retain) in [
        (
            "helmetd/v1/edge-1/alert",
            &b"{\"camera\":\"gate-1\",\"count\":1}"[..],
            false,
        ),
        ("helmetd/v1/edge-1/status", &b"online"[..], true),
        (
            "helmetd/v1/edge-1/alert",
            &b"{\"camera\":\"gate-2\",\"count\":2}"[..],
            false,
        ),
        (
            "helmetd/v1/hard-example",
            &[0xFF, 0xD8, 0xFF, 0xD9][..],
            false,
        ),
    ] {
        spool.push(&entry(topic, payload, retain)).expect("push");
    }
    spool.ack(1).expect("ack");
    spool.sync().expect("sync");
    drop(spool);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("list the spool")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let cursor = std::fs::read(dir.path().join("cursor")).expect("the spool wrote a cursor");
    let first = std::fs::read(&segments[0]).expect("read a segment");
    // The fuzz input format is described at `helmetd_fuzz::spool`.
    out.put("spool", "one-segment", [&[0u8][..], &first[..]].concat());
    out.put(
        "spool",
        "cursor-and-segment",
        [&[1u8][..], &cursor[..], &first[..]].concat(),
    );
    let torn = &first[..first.len() - 3];
    out.put("spool", "torn-tail", [&[0u8][..], torn].concat());
    if let Some(second) = segments.get(1) {
        let second_first_id: u64 = second
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("a segment name is its first id");
        let split = u16::try_from(first.len()).expect("a small segment");
        let id = u8::try_from(second_first_id - 1).expect("a small id");
        let second = std::fs::read(second).expect("read a segment");
        let [lo, hi] = split.to_le_bytes();
        let two = [
            &[3u8][..],
            &cursor[..],
            &[lo, hi, id],
            &first[..],
            &second[..],
        ]
        .concat();
        out.put("spool", "two-segments", two);
    }
}

fn worker(out: &mut Corpus) {
    let mut put = |name: &str, to_worker: bool, encode: &dyn Fn(&mut Vec<u8>)| {
        let mut message = Vec::new();
        encode(&mut message);
        let direction = u8::from(!to_worker);
        out.put(
            "worker_protocol",
            name,
            [&[direction][..], &message].concat(),
        );
    };
    let infer = ToWorker::Infer(Infer {
        job: 7,
        slot: 1,
        seq: 1234,
        letterbox: Letterbox::new(1280, 720, 640, 384),
    });
    put("infer", true, &|b| infer.encode(b));
    put("drain", true, &|b| ToWorker::Drain.encode(b));
    let ready = ToDaemon::Ready(Ready {
        pid: 4242,
        input_w: 640,
        input_h: 384,
        num_classes: 2,
        load_ms: 350,
    });
    put("ready", false, &|b| ready.encode(b));
    let mut detections = Detections::new();
    for d in [detection(4.0, 0.9, 1), detection(50.0, 0.75, 0)] {
        detections.push(d).expect("room for two boxes");
    }
    let result = ToDaemon::Result(InferResult {
        job: 7,
        infer_us: 18_000,
        detections,
    });
    put("result", false, &|b| result.encode(b));
    let failed = ToDaemon::Failed {
        job: Some(7),
        reason: "model load failed: bad ONNX".into(),
    };
    put("failed", false, &|b| failed.encode(b));
    let heartbeat = ToDaemon::Heartbeat {
        jobs_done: 99,
        busy_ms: 12,
    };
    put("heartbeat", false, &|b| heartbeat.encode(b));
}

fn config(out: &mut Corpus) {
    out.put("config", "helmetd.toml", read("config/helmetd.toml"));
    for example in ["local-file.toml", "joint-local.toml"] {
        out.put(
            "config",
            example,
            read(&format!("config/examples/{example}")),
        );
    }
    let overrides = [
        "[node]\nname = \"edge-1\"\n",
        "mqtt.url=\"mqtt://127.0.0.1:1883\"",
        "camera.0.name=\"gate\"",
        "edge.worker.max_replicas=3",
    ]
    .join("\0");
    out.put("config", "file-and-sets", overrides);
}
