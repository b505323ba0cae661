//! The KubeEdge node agent against a strict fake cloudcore (tests/kubeedge_fake) on loopback:
//! join, reuse of the stored certificate, a wrong token, a cloudcore restart, keepalive loss,
//! a pushed pod, rotation, and what the fake itself refuses.

mod kubeedge_fake;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::Message as Frame;

use helmetd::kubeedge::certs::{self, CertError};
use helmetd::kubeedge::message::Message;
use helmetd::kubeedge::tls;
use helmetd::kubeedge::{
    DEFAULT_PROJECT_ID, KubeEdge, KubeEdgeHandle, KubeEdgeSettings, LinkPhase, NodeHealth,
};
use kubeedge_fake::{FakeCloud, FakeOptions};

const NODE: &str = "gw-1";
const LIMIT: Duration = Duration::from_secs(10);

fn settings(fake: &FakeCloud, dir: &Path) -> KubeEdgeSettings {
    KubeEdgeSettings {
        node_name: NODE.into(),
        node_labels: BTreeMap::from([("site".to_string(), "plant-3".to_string())]),
        cloudcore_host: "127.0.0.1".into(),
        cert_port: fake.cert_port,
        websocket_port: fake.ws_port,
        project_id: DEFAULT_PROJECT_ID.into(),
        token_file: dir.join("token"),
        cert_dir: dir.join("certs"),
        keepalive: Duration::from_millis(200),
        lease: Duration::from_millis(300),
        status_period: Duration::from_millis(500),
        register_delay: Duration::from_millis(50),
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
    }
}

fn write_token(s: &KubeEdgeSettings, token: &str) {
    std::fs::write(&s.token_file, format!("{token}\n")).unwrap();
}

fn spawn(s: &KubeEdgeSettings) -> KubeEdgeHandle {
    KubeEdge::spawn(&tokio::runtime::Handle::current(), s.clone())
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(fake: &FakeCloud, kind: &str) -> String {
    fake.condition(NODE, kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Starts an agent with a valid token and waits until the node is registered and leased.
async fn joined(fake: &FakeCloud, dir: &Path) -> (KubeEdgeSettings, KubeEdgeHandle) {
    let s = settings(fake, dir);
    write_token(&s, &fake.token(Duration::from_secs(3600)));
    let h = spawn(&s);
    eventually("registration", || h.link_state().registered).await;
    eventually("a lease", || fake.stats().lease_renewals >= 1).await;
    (s, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_join_registers_a_ready_node_and_keeps_it_ready() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (s, h) = joined(&fake, dir.path()).await;
    eventually("three lease renewals and two status patches", || {
        let st = fake.stats();
        st.lease_renewals >= 3 && st.status_patches >= 2
    })
    .await;

    let node = fake.node(NODE).unwrap();
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["node-role.kubernetes.io/edge"], "");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels["kubernetes.io/arch"].is_string());
    assert_eq!(labels["helmetd/version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["site"], "plant-3");
    assert!(
        node["status"]["capacity"]["cpu"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(
        node["status"]["allocatable"]["memory"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert_eq!(node["spec"]["taints"][0]["effect"], "NoSchedule");
    assert!(
        node["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == "127.0.0.1")
    );
    let ready = fake.condition(NODE, "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "EdgeReady");
    let lease = fake.lease(NODE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], NODE);

    // Credentials: exactly the fetched CA, a node cert, a private key only the owner reads.
    let ca = std::fs::read(s.cert_dir.join(certs::CA_FILE)).unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(&ca).unwrap().to_vec(),
        fake.ca_der()
    );
    let key = std::fs::metadata(s.cert_dir.join(certs::KEY_FILE)).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert!(s.cert_dir.join(certs::CERT_FILE).exists());

    // Health problems become conditions the operator reads; Ready stays True.
    h.report(NodeHealth {
        cameras_streaming: 0,
        cameras_total: 2,
        workers_ready: 1,
        workers_desired: 2,
    });
    eventually("CamerasStreaming=False", || {
        status_of(&fake, "CamerasStreaming") == "False"
    })
    .await;
    let cams = fake.condition(NODE, "CamerasStreaming").unwrap();
    assert_eq!(cams["reason"], "NoCameraStreaming");
    assert_eq!(cams["message"], "0 of 2 cameras streaming");
    assert_eq!(status_of(&fake, "WorkersRunning"), "True");
    assert_eq!(status_of(&fake, "Ready"), "True");

    // Every ACK-required push (the Node updates) was ACKed.
    eventually("all pushes ACKed", || fake.unacked() == 0).await;
    let st = fake.stats();
    assert_eq!(st.ca_requests, 1);
    assert_eq!(st.cert_requests, vec![("bootstrap", 200)]);
    assert_eq!(st.connections, 1);
    assert_eq!(st.keepalive_timeouts, 0);
    assert!(st.keepalives >= 2);
    assert!(st.dropped_messages.is_empty(), "{:?}", st.dropped_messages);
    assert!(st.lease_errors.is_empty(), "{:?}", st.lease_errors);
    assert!(
        st.handshake_rejects.is_empty(),
        "{:?}",
        st.handshake_rejects
    );
    let link = h.link_state();
    assert_eq!(link.phase, LinkPhase::Connected);
    assert!(link.messages_acked >= 1 && link.lease_renewals >= 3 && link.status_patches >= 2);
    assert_eq!(link.reconnects, 0);

    let state = h.subscribe();
    h.shutdown().await;
    assert_eq!(state.borrow().phase, LinkPhase::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_the_stored_certificate() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (s, h) = joined(&fake, dir.path()).await;
    h.shutdown().await;
    // The token is gone after the join, as keadm removes it.
    std::fs::remove_file(&s.token_file).unwrap();

    let h = spawn(&s);
    eventually("registration again", || h.link_state().registered).await;
    let st = fake.stats();
    assert_eq!(st.cert_requests.len(), 1, "{:?}", st.cert_requests);
    assert_eq!(st.ca_requests, 1);
    assert_eq!(st.connections, 2);
    assert_eq!(
        st.node_inserts, 2,
        "the second insert is answered AlreadyExists"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_ca_is_refused_and_nothing_is_stored() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let other = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&fake, dir.path());
    write_token(&s, &other.token(Duration::from_secs(3600)));

    let err = certs::bootstrap(&s).await.unwrap_err();
    assert!(matches!(err, CertError::CaHashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the join token"),
        "{err}"
    );
    assert!(!s.cert_dir.exists());
    assert!(fake.stats().cert_requests.is_empty());

    // The agent keeps the error for operators, and retries without storing anything.
    let h = spawn(&s);
    eventually("the error in the link state", || {
        h.link_state()
            .last_error
            .is_some_and(|e| e.contains("does not match"))
    })
    .await;
    assert_ne!(h.link_state().phase, LinkPhase::Connected);
    h.shutdown().await;
    assert!(!s.cert_dir.exists());

    // The right CA but an expired token: cloudcore's 401 is reported, nothing stored.
    write_token(&s, &fake.token(Duration::ZERO));
    match certs::bootstrap(&s).await.unwrap_err() {
        CertError::Status { status, body, .. } => {
            assert_eq!(status, 401);
            assert!(body.contains("token validation failure"), "{body}");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(!s.cert_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudcore_restart_brings_the_node_back_to_ready() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_s, h) = joined(&fake, dir.path()).await;

    fake.stop().await;
    // Silent for the grace period: the node-lifecycle controller marks it Unknown.
    fake.mark_node_unknown(NODE);
    eventually("the link to notice", || {
        h.link_state().phase != LinkPhase::Connected
    })
    .await;
    assert_eq!(status_of(&fake, "Ready"), "Unknown");

    fake.restart().await;
    eventually("Ready=True again", || status_of(&fake, "Ready") == "True").await;
    let renewals = fake.stats().lease_renewals;
    eventually("lease renewals to continue", || {
        fake.stats().lease_renewals > renewals
    })
    .await;
    let link = h.link_state();
    assert!(link.connects >= 2 && link.reconnects >= 1, "{link:?}");
    assert!(link.registered);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_loss_ends_the_session_and_the_agent_reconnects() {
    let fake = FakeCloud::start(FakeOptions {
        keepalive_timeout: Duration::from_millis(400),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&fake, dir.path());
    // Slower than the cloud's timeout: cloudcore drops the session between keepalives.
    s.keepalive = Duration::from_millis(1500);
    write_token(&s, &fake.token(Duration::from_secs(3600)));
    let h = spawn(&s);
    eventually("a keepalive timeout and a reconnect", || {
        fake.stats().keepalive_timeouts >= 1 && h.link_state().connects >= 2
    })
    .await;
    let link = h.link_state();
    assert!(link.reconnects >= 1);
    assert!(link.last_error.is_some());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_pod_is_acked_and_refused() {
    let fake = FakeCloud::start(FakeOptions {
        resend_interval: Duration::from_secs(2),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_s, h) = joined(&fake, dir.path()).await;
    let id = fake.push_pod(NODE, "default", "nginx");
    eventually("the pod ACKed", || fake.stats().acked.contains(&id)).await;
    eventually("the refusal counted", || h.link_state().pods_refused == 1).await;
    assert_eq!(fake.stats().resends, 0, "ACKed before any resend");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_rotated_before_it_expires() {
    let fake = FakeCloud::start(FakeOptions {
        cert_lifetime: Duration::from_secs(4),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_s, h) = joined(&fake, dir.path()).await;
    eventually(
        "a rotation and a reconnect with the new certificate",
        || {
            let link = h.link_state();
            link.cert_rotations >= 1 && link.connects >= 2 && link.registered
        },
    )
    .await;
    let st = fake.stats();
    assert!(
        st.cert_requests.contains(&("rotation", 200)),
        "{:?}",
        st.cert_requests
    );
    assert_eq!(st.cert_requests[0], ("bootstrap", 200));
    h.shutdown().await;
}

/// Opens a CloudHub WebSocket by hand with the given headers.
async fn raw_ws(
    fake: &FakeCloud,
    creds: &certs::Credentials,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    let config = tls::ca_config(&creds.ca, Some(creds.client_auth())).unwrap();
    let stream = tls::connect(config, "127.0.0.1", fake.ws_port)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "wss://127.0.0.1:{}/{DEFAULT_PROJECT_ID}/{NODE}/events",
        fake.ws_port
    );
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn send(msg: &Message) -> Frame {
    Frame::text(serde_json::to_string(msg).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_what_cloudcore_refuses_and_resends_until_acked() {
    let fake = FakeCloud::start(FakeOptions {
        resend_interval: Duration::from_millis(150),
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&fake, dir.path());
    let token = fake.token(Duration::from_secs(3600));
    write_token(&s, &token);
    let creds = certs::bootstrap(&s).await.unwrap();

    // Cert port: an Accept without */* is 406; a client certificate selects the rotation path,
    // where the token is ignored and the certificate must name the node.
    let ca_only = tls::ca_config(&creds.ca, None).unwrap();
    let get = |config, headers: Vec<(&'static str, String)>| {
        let port = fake.cert_port;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            tls::https_get(config, "127.0.0.1", port, "/ca.crt", &h, vec![], LIMIT)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(
        get(ca_only.clone(), vec![("Accept", "application/json".into())]).await,
        406
    );
    assert_eq!(
        get(
            ca_only.clone(),
            vec![("Accept", "application/json, */*".into())]
        )
        .await,
        200
    );
    let jwt = token.split_once('.').unwrap().1;
    let (status, body) = tls::https_get(
        tls::ca_config(&creds.ca, Some(creds.client_auth())).unwrap(),
        "127.0.0.1",
        fake.cert_port,
        "/edge.crt",
        &[
            ("Authorization", &format!("Bearer {jwt}")),
            ("NodeName", "gw-2"),
        ],
        vec![1, 2, 3],
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    // WebSocket port: no client certificate, no node_id, h2 offered, no ConnectionUse.
    let no_cert = tls::connect(ca_only, "127.0.0.1", fake.ws_port).await;
    if let Ok(mut stream) = no_cert {
        // TLS 1.3 reports the refused certificate on the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut buf = [0u8; 16];
        assert!(matches!(stream.read(&mut buf).await, Err(_) | Ok(0)));
    }
    eventually("the TLS refusal", || fake.stats().tls_rejects >= 1).await;
    assert!(
        raw_ws(&fake, &creds, &[("ConnectionUse", "msg")])
            .await
            .is_err()
    );
    let mut h2 = (*tls::ca_config(&creds.ca, Some(creds.client_auth())).unwrap()).clone();
    h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let stream = tls::connect(Arc::new(h2), "127.0.0.1", fake.ws_port)
        .await
        .unwrap();
    let req = format!("wss://127.0.0.1:{}/x/{NODE}/events", fake.ws_port);
    assert!(tokio_tungstenite::client_async(req, stream).await.is_err());

    let mut unserved = raw_ws(&fake, &creds, &[("node_id", NODE)]).await.unwrap();
    unserved.send(send(&Message::keepalive())).await.unwrap();
    eventually("the unserved connection", || fake.stats().unserved == 1).await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.stats().keepalives,
        0,
        "never read without ConnectionUse"
    );
    drop(unserved);

    // A session that does not ACK: the pod comes again every resend interval until ACKed.
    let mut ws = raw_ws(
        &fake,
        &creds,
        &[
            ("node_id", NODE),
            ("project_id", DEFAULT_PROJECT_ID),
            ("ConnectionUse", "msg"),
        ],
    )
    .await
    .unwrap();
    ws.send(send(&Message::keepalive())).await.unwrap();
    eventually("the keepalive", || fake.stats().keepalives == 1).await;
    let id = fake.push_pod(NODE, "default", "nginx");
    let mut copies = 0;
    let mut pushed = None;
    while copies < 3 {
        let frame = tokio::time::timeout(LIMIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let msg: Message = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if msg.header.msg_id == id {
            copies += 1;
            pushed = Some(msg);
        }
    }
    assert!(fake.stats().resends >= 2);
    ws.send(send(&pushed.unwrap().response("OK")))
        .await
        .unwrap();
    eventually("the ACK", || fake.stats().acked.contains(&id)).await;
    assert_eq!(fake.unacked(), 0);

    // A message with `router` instead of `route` is dropped.
    let text = serde_json::to_string(&Message::keepalive())
        .unwrap()
        .replace("\"route\"", "\"router\"");
    ws.send(Frame::text(text)).await.unwrap();
    eventually("the drop", || !fake.stats().dropped_messages.is_empty()).await;
}

// ---- Hostile or broken peers and files (issue #15) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_and_never_speaks_tls_does_not_hang_the_agent() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut s, joined_agent) = joined(&fake, dir.path()).await;
    joined_agent.shutdown().await;

    // Accepts every connection and holds it open, silent.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.websocket_port = silent.local_addr().unwrap().port();
    s.connect_timeout = Duration::from_millis(300);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let peer = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 100 {
            let Ok((socket, _)) = silent.accept().await else {
                break;
            };
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });

    let h = spawn(&s);
    eventually("the handshake to time out, and a second attempt", || {
        accepted.load(Ordering::SeqCst) >= 2
            && h.link_state()
                .last_error
                .is_some_and(|e| e.contains("timed out"))
    })
    .await;
    let link = h.link_state();
    assert!(!link.registered);
    assert!(link.reconnects >= 1, "{link:?}");
    assert_eq!(link.connects, 0);
    h.shutdown().await;
    peer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_key_that_is_not_the_certificates_means_a_new_join() {
    let fake = FakeCloud::start(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (s, joined_agent) = joined(&fake, dir.path()).await;
    joined_agent.shutdown().await;
    assert_eq!(fake.stats().cert_requests, vec![("bootstrap", 200)]);

    // Another key in place of the node's (half a rotation of a tool that renames file by file).
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(s.cert_dir.join(certs::KEY_FILE), other.serialize_pem()).unwrap();
    assert!(matches!(
        certs::load(&s),
        Err(certs::CertError::Unusable { .. })
    ));

    let h = spawn(&s);
    eventually("registration after a second join", || {
        h.link_state().registered
    })
    .await;
    let st = fake.stats();
    assert_eq!(
        st.cert_requests,
        vec![("bootstrap", 200), ("bootstrap", 200)],
        "the join token was used again"
    );
    assert_eq!(st.ca_requests, 2);
    // What is stored now holds together.
    assert!(certs::load(&s).is_ok());
    h.shutdown().await;
}
