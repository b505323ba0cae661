//! What each fuzz target does with its input, kept apart from libFuzzer so the normal test
//! suite (`daemon/tests/fuzz_regressions.rs`) runs the very same code over the seed corpus and
//! every input that once crashed. Each function feeds the bytes to the parser the daemon uses
//! for that kind of outside input, the way the daemon does, and panics only where the daemon's
//! own invariant is broken: any panic is a finding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use helmetd::cloud::sedna_http as sedna_server;
use helmetd::cloud::service;
use helmetd::config::{self, ConfigSource};
use helmetd::joint::protocol::{self, HardExampleMeta};
use helmetd::joint::sedna_http::{self as sedna_client, SednaHttpClient, SednaHttpSettings};
use helmetd::joint::{BreakerSettings, JointClient, JointSettings};
use helmetd::kubeedge::certs;
use helmetd::kubeedge::message::{Message, ObjectResp};
use helmetd::sedna::env::{self as sedna_env, SednaEnvMode};
use helmetd::sedna::import;
use helmetd::sedna::lc::{LcReporter, LcSettings, Totals};
use helmetd::spool::{Entry, FsyncPolicy, Spool, SpoolLimits};
use helmetd::worker::protocol::{ToDaemon, ToWorker};
use helmetd::zones::CameraRules;
use rumqttc::v5::mqttbytes::v5::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/<name>.rs`, its corpus and regression folders.
pub const TARGETS: [(&str, Target); 12] = [
    ("cloud_request", cloud_request),
    ("cloud_answer", cloud_answer),
    ("sedna_body", sedna_body),
    ("sedna_answer", sedna_answer),
    ("http_answer", http_answer),
    ("kubeedge_message", kubeedge_message),
    ("join_token", join_token),
    ("spool", spool),
    ("worker_protocol", worker_protocol),
    ("config", config),
    ("sedna_import", sedna_import),
    ("sedna_env", sedna_env),
];

/// The prefix `helmetd cloud` checks response topics against by default.
const CLOUD_PREFIX: &str = "helmetd/v1";
/// `cloud.max_image_side` as shipped.
const MAX_SIDE: u32 = protocol::DEFAULT_MAX_IMAGE_SIDE;
/// The cloud letterboxes into its model's input; a small one keeps each run fast, and the
/// decoding (the part that reads outside bytes) is the same at any size.
const CLOUD_INPUT: u32 = 32;

/// An MQTT 5 packet as the cloud service's event loop reads it off the socket, then what the
/// service does with a PUBLISH: the reply address, the request checks and the JPEG decode.
/// No packet size limit here: the daemon's is far above what the fuzzer generates, and
/// `parse_request` enforces its own.
pub fn cloud_request(data: &[u8]) {
    let Some(publish) = publish(data) else {
        return;
    };
    let _ = protocol::reply_to(&publish, CLOUD_PREFIX);
    let Ok((request, _fixes)) = protocol::parse_request(publish, MAX_SIDE) else {
        return;
    };
    let _ = service::letterbox_jpeg(&request.jpeg, CLOUD_INPUT, CLOUD_INPUT, MAX_SIDE);
}

/// An MQTT 5 packet as the edge's uplink reads it, then the answer to a hard example.
pub fn cloud_answer(data: &[u8]) {
    let Some(publish) = publish(data) else {
        return;
    };
    let _ = protocol::response_correlation(&publish);
    let _ = protocol::parse_response(&publish);
}

fn publish(data: &[u8]) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    match Packet::read(&mut BytesMut::from(data), None) {
        Ok(Packet::Publish(publish)) => Some(publish),
        _ => None,
    }
}

/// The body of a `POST /<job>/predict` to `helmetd cloud --sedna-http`.
pub fn sedna_body(data: &[u8]) {
    let _ = sedna_server::parse_predict(data);
}

/// The body of a Sedna big model's answer, as the edge reads it for a 640×384 content image.
pub fn sedna_answer(data: &[u8]) {
    let _ = sedna_client::parse_result(data, 640, 384);
}

/// A whole HTTP/1.1 response from a real loopback server, to the edge's two HTTP clients: the
/// first byte picks a Sedna big model (`SednaHttpClient::ask`, even) or the Local Controller
/// (`LcReporter`, odd); the rest is what the server answers, byte for byte.
pub fn http_answer(data: &[u8]) {
    let Some((&pick, answer)) = data.split_first() else {
        return;
    };
    let server = http_server();
    server.runtime.block_on(async {
        let answered = answer_once(&server.listener, answer);
        if pick % 2 == 0 {
            // A fresh client each time: a shared one's breaker would open and stop asking.
            let settings = SednaHttpSettings {
                base_url: format!("http://{}", server.addr),
                job: "helmet".into(),
            };
            let sedna = SednaHttpClient::new(&settings).expect("a loopback URL is valid");
            let guard = JointSettings {
                timeout: HTTP_TIMEOUT,
                breaker: BreakerSettings::default(),
            };
            let client = JointClient::new(std::sync::Arc::new(sedna), guard);
            let image = image::RgbImage::new(2, 2);
            let meta = HardExampleMeta {
                camera: "fuzz".into(),
                seq: 1,
                capture_time: SystemTime::UNIX_EPOCH,
                edge_result: Vec::new(),
                orig_w: 2,
                orig_h: 2,
                scale: 1.0,
            };
            tokio::join!(answered, client.ask(&image, &meta));
        } else {
            let settings = LcSettings {
                authority: server.addr.to_string(),
                path: "/sedna/workers/fuzz/info".into(),
                worker_name: "fuzz".into(),
                namespace: "default".into(),
                owner_name: "helmet".into(),
                // Only the report sent on shutdown goes out.
                period: Duration::from_secs(3600),
                timeout: HTTP_TIMEOUT,
            };
            let handle = tokio::runtime::Handle::current();
            let reporter = LcReporter::spawn(&handle, settings, || Totals { frames: 1, hard: 0 });
            tokio::join!(answered, reporter.shutdown());
        }
    });
}

/// Bounds a run whose answer never completes; the server closes after answering, so it is
/// only reached by a client that does not notice the close.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// A request is a few hundred bytes of headers and a small JSON or image body.
const MAX_REQUEST: usize = 1 << 20;

struct HttpServer {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

/// One loopback listener for the whole process: a port per run would exhaust ephemeral ports.
fn http_server() -> &'static HttpServer {
    static SERVER: OnceLock<HttpServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        HttpServer {
            runtime,
            listener,
            addr,
        }
    })
}

/// Accepts one connection, reads the request (headers and a `Content-Length` body), answers
/// `answer` and closes. A client that gives up early just ends the exchange.
async fn answer_once(listener: &tokio::net::TcpListener, answer: &[u8]) {
    let Ok(Ok((mut stream, _))) = tokio::time::timeout(HTTP_TIMEOUT, listener.accept()).await
    else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0; 8192];
    while request.len() < MAX_REQUEST && !request_complete(&request) {
        match tokio::time::timeout(HTTP_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}

fn request_complete(request: &[u8]) -> bool {
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
    let body_len = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    request.len() >= end + 4 + body_len
}

/// One CloudHub WebSocket text frame, as the KubeEdge session handles it: the beehive message,
/// the `ObjectResp` in a reply, and the ACK every message of group `resource` gets.
pub fn kubeedge_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(message) = serde_json::from_str::<Message>(text) else {
        return;
    };
    let _ = ObjectResp::parse(&message.content);
    serde_json::to_string(&message.response("OK")).expect("an ACK serialises");
}

/// The join token file `keadm gettoken` prints, as the node agent reads it before bootstrap.
pub fn join_token(data: &[u8]) {
    let path = scratch().join("token");
    std::fs::write(&path, data).expect("write the token file");
    let _ = certs::read_token(&path);
}

/// A spool directory as a crash or a damaged disk may leave it, opened by the uplink.
///
/// Input: a flags byte; bit 0: a `cursor` file of the next 12 bytes follows; bit 1: the data
/// holds two segment files, split at the u16 (LE) that follows, the second one's first id being
/// the byte after it plus one. The rest is segment data; the first segment starts at id 1.
///
/// After opening, everything is read back and the first entry acked; then a new entry is
/// pushed and must be there, intact, when the directory is opened again: the spool promises that
/// an id it returned is never lost, whatever it recovered from.
pub fn spool(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("spool");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create the spool directory");
    if flags & 1 != 0 {
        let (cursor, tail) = rest.split_at(rest.len().min(12));
        std::fs::write(dir.join("cursor"), cursor).expect("write the cursor");
        rest = tail;
    }
    let mut segments = vec![(1, rest)];
    if flags & 2 != 0
        && let Some((&[lo, hi, first], tail)) = rest.split_first_chunk::<3>()
    {
        let (one, two) = tail.split_at(usize::from(u16::from_le_bytes([lo, hi])).min(tail.len()));
        segments = vec![(1, one), (u64::from(first) + 1, two)];
    }
    for (first_id, bytes) in segments {
        let name = format!("{first_id:020}.seg");
        std::fs::write(dir.join(name), bytes).expect("write a segment");
    }

    let limits = SpoolLimits::new(16 << 20, Duration::from_secs(u64::from(u32::MAX)));
    let open = || Spool::open(&dir, limits, FsyncPolicy::Never);
    let Ok(mut spool) = open() else {
        return;
    };
    let oldest = spool.peek(MAX_PEEK).expect("read back what open accepted");
    if let Some((id, _)) = oldest.first() {
        spool.ack(*id).expect("ack an entry the spool holds");
    }
    let entry = Entry {
        topic: "helmetd/v1/fuzz/alert".into(),
        payload: b"{}".to_vec(),
        properties: Default::default(),
        retain: false,
        created: SystemTime::now(),
    };
    let id = spool.push(&entry).expect("push after recovery");
    drop(spool);
    let spool = open().expect("reopen the spool just written");
    let found = spool
        .peek_after(id - 1, 1)
        .expect("read back the new entry");
    assert_eq!(
        found,
        vec![(id, entry)],
        "an entry pushed after recovery is lost"
    );
}

/// Entries read back per run: segments the fuzzer writes hold far fewer.
const MAX_PEEK: usize = 100_000;

/// One message off the worker socket: the first byte picks the direction (even: what a worker
/// reads, odd: what the daemon reads). What decodes must encode to bytes that decode to the
/// same encoding: the two ends must agree on every message either can produce.
pub fn worker_protocol(data: &[u8]) {
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let mut first = Vec::new();
    let mut again = Vec::new();
    if pick % 2 == 0 {
        let Ok(decoded) = ToWorker::decode(message) else {
            return;
        };
        decoded.encode(&mut first);
        let decoded = ToWorker::decode(&first).expect("own encoding decodes");
        decoded.encode(&mut again);
    } else {
        let Ok(decoded) = ToDaemon::decode(message) else {
            return;
        };
        decoded.encode(&mut first);
        let decoded = ToDaemon::decode(&first).expect("own encoding decodes");
        decoded.encode(&mut again);
    }
    assert_eq!(first, again, "encoding is not stable across a round trip");
}

/// A config file and `--set` overrides: the text up to the first NUL is the file, each
/// NUL-separated piece after it one `--set` argument.
pub fn config(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let file = parts.next().unwrap_or_default();
    let overrides: Vec<String> = parts
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let path = scratch().join("helmetd.toml");
    std::fs::write(&path, file).expect("write the config file");
    let Ok(cfg) = config::load(ConfigSource::File(path), &overrides) else {
        return;
    };
    // The daemon builds each camera's rules from a checked config and cannot refuse them then:
    // what check-config accepts, the rules must accept too.
    for camera in &cfg.cameras {
        if let Err(e) = CameraRules::from_config(camera) {
            panic!("check-config accepted rules the daemon refuses: {e}");
        }
    }
}

/// A Sedna JointInferenceService manifest for `helmetd import-sedna`; what it writes must be
/// TOML, or the operator gets a config that cannot even be read.
pub fn sedna_import(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(toml) = import::import_manifest(text, "fuzz.yaml")
        && let Err(e) = toml.parse::<toml_edit::DocumentMut>()
    {
        panic!("import wrote TOML that does not parse: {e}\n{toml}");
    }
}

/// The environment of a Sedna edge worker, one `NAME=value` a line, always applied (as
/// `--sedna-env on`), then loaded over the default config as the daemon does.
pub fn sedna_env(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| vars.get(name).map(|v| (*v).to_string());
    let Ok(mut env) = sedna_env::from_env(SednaEnvMode::On, lookup) else {
        return;
    };
    let overrides = env.merge(&[]);
    if let Err(e) = config::load(ConfigSource::Default, &overrides) {
        let _ = env.attribute(e);
    }
}

/// A directory for the files a target writes, one per process, removed when it exits (libFuzzer
/// ends a run with `exit`; after a crash the directory is left for inspection). Targets
/// overwrite their files on each run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs when there is one: every run writes files.
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::Builder::new()
                .prefix("helmetd-fuzz")
                .tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("create a scratch directory")
        .keep();
        extern "C" fn remove() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: `remove` is a plain function that lives as long as the process.
        unsafe { libc::atexit(remove) };
        dir
    })
}
