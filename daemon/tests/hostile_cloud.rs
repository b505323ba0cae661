//! The cloud protocol under hostile peers (issue #15, items 3 and 4), against a real mosquitto,
//! real `helmetd cloud` child processes with the big model, and real TCP.
//!
//! Cloud side: images that declare huge sides, property floods and one node flooding must not
//! cost the others their answers. Edge side: answers with absurd boxes, too many boxes, or ids
//! the edge never issued must be repaired, capped, counted or refused, never trusted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use helmet_pipelines::output::{annotate, content_image, encode_jpeg};
use helmet_pipelines::{Detection, MAX_DETECTIONS, still};
use helmetd::joint::mqtt::MqttSettings;
use helmetd::joint::protocol::{self, CloudResponse, HardExampleMeta};
use helmetd::joint::sedna_http::{SednaHttpClient, SednaHttpSettings};
use helmetd::joint::{BreakerSettings, CloudAnswer, JointClient, JointSettings};
use helmetd_e2e::mosquitto::Mosquitto;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Peer, RawEdge, final_stats, start_cloud, wait_ready};

const PREFIX: &str = "helmetd/v1";

/// The tests that run the big model would slow each other down.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Session options of the test's own clients: packets as large as a request.
fn peer_options(broker: &Mosquitto, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    let max = protocol::MAX_REQUEST_BYTES + 64 * 1024;
    options.set_max_packet_size(Some(u32::try_from(max).unwrap()));
    options
}

/// A client of the test subscribed to `topic`.
async fn peer(broker: &Mosquitto, id: &str, topic: String) -> Peer {
    Peer::connect(peer_options(broker, id), topic).await
}

/// An edge node talking the protocol by hand, its requests valid for 60 s.
async fn raw_edge(broker: &Mosquitto, node: &str) -> RawEdge {
    let options = peer_options(broker, &format!("raw-{node}"));
    RawEdge::connect(options, PREFIX, node, Duration::from_secs(60)).await
}

/// A real photo as the edge sends it: letterbox content as JPEG, with its metadata.
fn hard_example() -> (Vec<u8>, HardExampleMeta) {
    let (image, meta) = content_example();
    (encode_jpeg(&image, 90).unwrap(), meta)
}

/// What the edge hands its cloud client: the letterbox content of a frame.
fn content_example() -> (image::RgbImage, HardExampleMeta) {
    let path = helmetd_e2e::workspace_root().join("media/overeasy_construction.jpg");
    let (frame, _) = still::load_still(&path, "cam", 640, 384).unwrap();
    (
        content_image(&frame),
        HardExampleMeta::for_frame(&frame, &[]),
    )
}

/// A real, decodable 8192×8192 grey JPEG: uniform blocks compress to a few bits each, so it is
/// well under the 4 MiB request limit and decodes to 192 MiB of RGB.
fn decodable_bomb() -> Vec<u8> {
    let side = 8192;
    let pixels = vec![128u8; side * side];
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 50)
        .encode(&pixels, 8192, 8192, image::ExtendedColorType::L8)
        .unwrap();
    out
}

/// SOI, SOF0 declaring 8192×8192, EOI: 25 bytes.
fn header_only_bomb() -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    b.extend_from_slice(&8192u16.to_be_bytes());
    b.extend_from_slice(&8192u16.to_be_bytes());
    b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    b
}

fn bomb_meta(meta: &HardExampleMeta) -> HardExampleMeta {
    HardExampleMeta {
        orig_w: 8192,
        orig_h: 8192,
        scale: 1.0,
        ..meta.clone()
    }
}

#[test]
fn huge_images_and_property_floods_are_refused_before_decoding() {
    let _serial = serial();
    runtime().block_on(async {
        let broker = Mosquitto::start().unwrap();
        let mut cloud = start_cloud(&broker, "cloud-h");
        let mut edge = raw_edge(&broker, "edge-h").await;
        let (jpeg, meta) = hard_example();
        let bomb = decodable_bomb();
        println!("decodable 8192x8192 JPEG: {} bytes", bomb.len());
        assert!(bomb.len() < protocol::MAX_REQUEST_BYTES);
        wait_ready(&mut cloud);

        edge.send(bomb, edge.properties(&bomb_meta(&meta), 1)).await;
        edge.send(header_only_bomb(), edge.properties(&bomb_meta(&meta), 2))
            .await;
        // A thousand small properties, then one of 60 KB (an MQTT string holds up to 64 KiB).
        let mut many = edge.properties(&meta, 3);
        many.user_properties
            .extend((0..1000).map(|i| (format!("k{i}"), "v".repeat(64))));
        edge.send(jpeg.clone(), many).await;
        let mut one_huge = edge.properties(&meta, 4);
        one_huge
            .user_properties
            .push(("note".into(), "x".repeat(60_000)));
        edge.send(jpeg.clone(), one_huge).await;
        // And an ordinary request behind them.
        edge.send(jpeg, edge.properties(&meta, 5)).await;

        let mut errors = Vec::new();
        let mut answered = Vec::new();
        for _ in 0..5 {
            match edge.answer().await {
                (n, CloudResponse::Error { message, .. }) => errors.push((n, message)),
                (n, CloudResponse::Result { .. }) => answered.push(n),
            }
        }
        errors.sort();
        assert_eq!(answered, [5], "{errors:?}");
        let refused: Vec<u8> = errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(refused, [1, 2, 3, 4], "{errors:?}");
        for (_, reason) in &errors[..2] {
            assert!(reason.contains("cloud.max_image_side"), "{errors:?}");
        }
        for (_, reason) in &errors[2..] {
            assert!(reason.contains("user properties"), "{errors:?}");
        }

        let stats = final_stats(&mut cloud);
        let field = |name: &str| stats["fields"][name].as_u64().unwrap_or(u64::MAX);
        assert_eq!(field("rejected_bad_image"), 2, "{stats}");
        assert_eq!(field("rejected_bad_metadata"), 2, "{stats}");
        assert_eq!(field("answered"), 1, "{stats}");
    });
}

#[test]
fn a_flooding_node_does_not_starve_a_calm_one() {
    let _serial = serial();
    runtime().block_on(async {
        let broker = Mosquitto::start().unwrap();
        let mut cloud = start_cloud(&broker, "cloud-f");
        let mut calm = raw_edge(&broker, "edge-calm").await;
        let mut flood = raw_edge(&broker, "edge-flood").await;
        let (jpeg, meta) = hard_example();
        wait_ready(&mut cloud);

        // The flooder sends 50 requests a second, far more than one replica can run.
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (stop, jpeg, properties) = (stop.clone(), jpeg.clone(), flood.properties(&meta, 0));
            let client = flood.peer.client.clone();
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) && sent < 5_000 {
                    client
                        .publish_with_properties(
                            protocol::request_topic(PREFIX),
                            QoS::AtLeastOnce,
                            false,
                            jpeg.clone(),
                            properties.clone(),
                        )
                        .await
                        .unwrap();
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent
            })
        };
        // Let the flood fill the queue first.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut calm_results = 0;
        for n in 1..=5u8 {
            calm.send(jpeg.clone(), calm.properties(&meta, n)).await;
            let (correlation, answer) = calm.answer().await;
            assert_eq!(correlation, n);
            match answer {
                CloudResponse::Result { .. } => calm_results += 1,
                CloudResponse::Error { message, .. } => println!("calm request {n}: {message}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flood_sent = flooder.await.unwrap();

        let (mut flood_results, mut flood_overloaded) = (0, 0);
        while let Ok(p) = flood.peer.received.try_recv() {
            match protocol::parse_response(&p) {
                Ok(CloudResponse::Result { .. }) => flood_results += 1,
                Ok(CloudResponse::Error { message, .. }) if message == "overloaded" => {
                    flood_overloaded += 1;
                }
                _ => {}
            }
        }
        println!(
            "flooder sent {flood_sent}: {flood_results} answered, {flood_overloaded} overloaded so far; calm node {calm_results} of 5 answered"
        );
        assert!(flood_overloaded > 0, "the flood never filled the queue");
        assert_eq!(calm_results, 5, "the calm node was starved");
        let stats = final_stats(&mut cloud);
        assert!(stats["fields"]["overloaded"].as_u64().unwrap() > 0, "{stats}");
    });
}

/// A rogue answering requests on the request topic with `bodies`, one per request, in order,
/// under the request's own correlation id and response topic. The task hands its session back
/// so the last answer is not cut off by closing it.
async fn rogue_cloud(broker: &Mosquitto, bodies: Vec<Vec<u8>>) -> tokio::task::JoinHandle<Peer> {
    let mut rogue = peer(broker, "rogue-cloud", protocol::request_topic(PREFIX)).await;
    tokio::spawn(async move {
        for body in bodies {
            let request = rogue.next().await;
            let props = request.properties.unwrap();
            let topic = props.response_topic.unwrap();
            let answer = protocol::response_properties(&props.correlation_data.unwrap());
            rogue.publish(&topic, body, answer).await;
        }
        rogue
    })
}

/// An MQTT cloud client on its own session, as the uplink drives it.
async fn edge_client(broker: &Mosquitto, node: &str, timeout: Duration) -> JointClient {
    let settings = MqttSettings {
        node: node.into(),
        topic_prefix: PREFIX.into(),
        timeout,
        jpeg_quality: 90,
    };
    let guard = JointSettings {
        timeout,
        // Never open: every request must go out, so every answer is seen.
        breaker: BreakerSettings {
            failure_threshold: 1000,
            ..BreakerSettings::default()
        },
    };
    let mut options = MqttOptions::new(node, "127.0.0.1", broker.port());
    options.set_max_packet_size(Some(u32::try_from(protocol::MAX_RESPONSE_BYTES).unwrap()));
    let (client, _driver) = common::subscribed_cloud_client(options, settings, guard).await;
    client
}

fn inside(boxes: &[Detection], w: u32, h: u32) -> bool {
    boxes.iter().all(|b| {
        [b.x1, b.y1, b.x2, b.y2, b.score]
            .iter()
            .all(|v| v.is_finite())
            && b.x1 >= 0.0
            && b.y1 >= 0.0
            && b.x2 <= w as f32
            && b.y2 <= h as f32
            && b.x1 < b.x2
            && b.y1 < b.y2
    })
}

#[test]
fn absurd_answers_are_clipped_capped_counted_or_refused() {
    runtime().block_on(async {
        let broker = Mosquitto::start().unwrap();
        let (image, meta) = content_example();
        let (w, h) = (meta.orig_w, meta.orig_h);
        let compact = |n: usize| {
            let one = "[1,1,9,9,1,0]";
            format!(r#"{{"result":[{}],"replica":"rogue"}}"#, vec![one; n].join(",")).into_bytes()
        };
        let bodies = vec![
            // Beyond f32 (a cast makes them infinite), negative, reversed, outside the frame.
            br#"{"result":[[-1e39,-5,1e39,1e300,0.9,1],[50,50,10,10,0.8,1],[5000,5000,6000,6000,0.7,0],[10,10,100,100,2.5,1]],"replica":"rogue"}"#.to_vec(),
            // 4000 boxes still fit in 64 KiB.
            compact(4000),
            // 10 000 do not: the broker withholds a packet the session refused to take.
            compact(10_000),
            // NaN is no JSON.
            br#"{"result":[[NaN,0,1,1,0.5,0]],"replica":"rogue"}"#.to_vec(),
            protocol::result_json(
                &[Detection {
                    x1: 10.0,
                    y1: 20.0,
                    x2: 110.0,
                    y2: 220.0,
                    score: 0.9,
                    class: 1,
                }],
                "m",
                1.0,
                "rogue",
            ),
        ];
        assert!(bodies[1].len() < protocol::MAX_RESPONSE_BYTES);
        assert!(bodies[2].len() > protocol::MAX_RESPONSE_BYTES);
        let rogue = rogue_cloud(&broker, bodies).await;
        let client = edge_client(&broker, "edge-a", Duration::from_secs(2)).await;
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(client.ask(&image, &meta).await);
        }
        let _rogue = rogue.await.unwrap();

        let CloudAnswer::Answered(absurd, _) = &answers[0] else {
            panic!("{:?}", answers[0])
        };
        assert_eq!(absurd.len(), 1, "{absurd:?}");
        assert!(inside(absurd, w, h), "{absurd:?}");
        let CloudAnswer::Answered(many, _) = &answers[1] else {
            panic!("{:?}", answers[1])
        };
        assert_eq!(many.len(), MAX_DETECTIONS);
        assert!(matches!(answers[2], CloudAnswer::Late), "{:?}", answers[2]);
        assert!(matches!(answers[3], CloudAnswer::Failed(_)), "{:?}", answers[3]);
        let CloudAnswer::Answered(normal, _) = &answers[4] else {
            panic!("{:?}", answers[4])
        };
        assert_eq!(normal.len(), 1);

        let stats = client.stats();
        println!("client stats: {stats:?}");
        assert_eq!(
            (stats.boxes_clipped, stats.boxes_dropped, stats.boxes_over_cap),
            (1, 3, 4000 - MAX_DETECTIONS as u64)
        );
        assert_eq!(
            (stats.answered, stats.timed_out, stats.failed),
            (3, 1, 1)
        );
        // What was used can be drawn as it is (a debug build panics on overflow).
        let (frame, _) = still::load_still(
            helmetd_e2e::workspace_root().join("media/overeasy_construction.jpg"),
            "cam",
            640,
            384,
        )
        .unwrap();
        let mut image = content_image(&frame);
        for boxes in [absurd, many, normal] {
            annotate(&mut image, frame.letterbox.scale, boxes, &[]);
        }
    });
}

#[test]
fn answers_under_predicted_ids_are_not_used() {
    runtime().block_on(async {
        let broker = Mosquitto::start().unwrap();
        let (image, meta) = content_example();
        // A peer that reads the request topic (or any one answer) learns an id.
        let mut spy = peer(&broker, "spy", protocol::request_topic(PREFIX)).await;
        let client = edge_client(&broker, "edge-p", Duration::from_secs(1)).await;

        // Nobody answers the first request; the spy sees its id.
        assert!(matches!(client.ask(&image, &meta).await, CloudAnswer::Late));
        let seen = spy.next().await;
        let props = seen.properties.unwrap();
        let topic = props.response_topic.unwrap();
        let seen: [u8; 16] = props.correlation_data.unwrap().as_ref().try_into().unwrap();
        // Guesses at the next id: a counter in either half, counting up.
        let guesses: Vec<[u8; 16]> = [7usize, 15]
            .into_iter()
            .flat_map(|lsb| {
                (1..=3u8).map(move |k| {
                    let mut id = seen;
                    let half = lsb - 7..=lsb;
                    let n = u64::from_be_bytes(id[half.clone()].try_into().unwrap());
                    id[half].copy_from_slice(&n.wrapping_add(u64::from(k)).to_be_bytes());
                    id
                })
            })
            .collect();
        let forged = protocol::result_json(
            &[Detection {
                x1: 0.0,
                y1: 0.0,
                x2: 5.0,
                y2: 5.0,
                score: 1.0,
                class: 1,
            }],
            "m",
            1.0,
            "forger",
        );
        // The forger sprays its guesses while the next request waits.
        let stop = Arc::new(AtomicBool::new(false));
        let sprayer = {
            let (stop, client) = (stop.clone(), spy.client.clone());
            tokio::spawn(async move {
                let mut sprayed = 0u32;
                while !stop.load(Ordering::Relaxed) && sprayed < 2_000 {
                    for id in &guesses {
                        client
                            .publish_with_properties(
                                topic.clone(),
                                QoS::AtLeastOnce,
                                false,
                                forged.clone(),
                                protocol::response_properties(id),
                            )
                            .await
                            .unwrap();
                        sprayed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sprayed
            })
        };
        let started = Instant::now();
        let answer = client.ask(&image, &meta).await;
        stop.store(true, Ordering::Relaxed);
        let sprayed = sprayer.await.unwrap();
        println!(
            "{sprayed} forged answers in {:?}; stats {:?}",
            started.elapsed(),
            client.stats()
        );
        assert!(
            matches!(answer, CloudAnswer::Late),
            "a forged answer was used: {answer:?}"
        );
        let stats = client.stats();
        assert_eq!(stats.answered, 0);
        assert!(stats.unmatched > 0, "{stats:?}");
    });
}

/// A rogue Sedna big-model service on loopback: answers one predict request with `body`.
async fn rogue_sedna(body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        // Headers, then as many body bytes as Content-Length says (bounded: the test's own image).
        let body_len = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before its request ended");
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a Content-Length");
                break end + 4 + length;
            }
        };
        while request.len() < body_len {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before its body ended");
            request.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    (url, task)
}

#[test]
fn a_rogue_sedna_service_cannot_flood_or_stretch_the_boxes() {
    runtime().block_on(async {
        let mut body = String::from(r#"{"result": [[-1e39, -5, 1e39, 1e300, 0.99, 1]"#);
        for _ in 0..10_000 {
            body.push_str(", [1, 1, 2, 2, 0.5, 0]");
        }
        body.push_str("]}");
        let (url, server) = rogue_sedna(body.into_bytes()).await;
        let sedna = SednaHttpClient::new(&SednaHttpSettings {
            base_url: url,
            job: "sedna".into(),
        })
        .unwrap();
        let client = JointClient::new(
            Arc::new(sedna),
            JointSettings {
                timeout: Duration::from_secs(10),
                breaker: BreakerSettings::default(),
            },
        );
        let path = helmetd_e2e::workspace_root().join("media/overeasy_construction.jpg");
        let (frame, _) = still::load_still(&path, "cam", 640, 384).unwrap();
        let meta = HardExampleMeta::for_frame(&frame, &[]);
        let answer = client.ask(&content_image(&frame), &meta).await;
        server.await.unwrap();
        let CloudAnswer::Answered(boxes, _) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(boxes.len(), MAX_DETECTIONS);
        assert!(
            inside(&boxes, meta.orig_w, meta.orig_h),
            "{:?}",
            &boxes[..3]
        );
        assert_eq!(
            (boxes[0].x1, boxes[0].x2),
            (0.0, meta.orig_w as f32),
            "the stretched box is cut to the frame"
        );
        let stats = client.stats();
        assert_eq!(
            (stats.boxes_clipped, stats.boxes_over_cap),
            (1, 10_001 - 300)
        );
    });
}
