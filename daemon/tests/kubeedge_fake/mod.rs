//! A strict fake cloudcore, built from shared/docs/kubeedge-protocol.md, on loopback ports.
//!
//! - Cert port (§1.1): TLS that requests but does not require a client certificate; `GET /ca.crt`
//!   (raw DER), `GET /edge.crt` with a DER CSR: a client certificate selects the rotation path
//!   (chain + `system:node:<NodeName>` / `system:nodes` checked, token ignored), otherwise the
//!   token path (`Authorization: Bearer <jwt>`, HS256 over the CA key DER, `exp`). Any method but
//!   GET is 405; an `Accept` without `*/*` is 406 (go-restful).
//! - WebSocket port (§2.1): client certificate required and verified against the CA; ALPN `h2`
//!   is offered and, if chosen, the connection is dropped (cloudcore would speak HTTP/2); missing
//!   `node_id` is refused; an `Origin` other than the host is refused; without `ConnectionUse: msg`
//!   the socket is accepted and never read. One session per node: a new one ends the old.
//! - Session (§2.1, §3–§5): messages must carry `route` and an integer `timestamp`; only
//!   `keepalive` operations reset the keepalive timer, which closes the connection on expiry;
//!   upstream messages with a cloud module as source are dropped; Node insert / nodepatch /
//!   lease query-insert-update are answered with `ObjectResp` (a lease update must carry the
//!   current `resourceVersion`, `renewTime` must have six fractional digits); node creates and
//!   patches push an ACK-required Node `update`; pushed messages are re-sent every
//!   `resend_interval` until ACKed (`response` + `parent_msg_id`).
//! - A lease renewal never changes the node's conditions: like the node-lifecycle controller,
//!   only a posted Ready brings a node back from Unknown (errata).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::Message as Frame;

use helmetd::kubeedge::certs::sha256_hex;
use helmetd::kubeedge::message::Message;

/// The timings of the fake; the real ones are 30 s and 5 s.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub keepalive_timeout: Duration,
    pub resend_interval: Duration,
    /// Lifetime of the node certificates it signs (cloudcore: 365 days).
    pub cert_lifetime: Duration,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            keepalive_timeout: Duration::from_millis(1500),
            resend_interval: Duration::from_millis(300),
            cert_lifetime: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// What the fake saw; tests assert on it.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ca_requests: u64,
    /// `/edge.crt` answers by (path, status): path is "bootstrap" or "rotation".
    pub cert_requests: Vec<(&'static str, u16)>,
    pub connections: u64,
    pub tls_rejects: u64,
    pub handshake_rejects: Vec<String>,
    /// Upgraded without `ConnectionUse: msg`: accepted, never read.
    pub unserved: u64,
    pub keepalives: u64,
    pub keepalive_timeouts: u64,
    pub dropped_messages: Vec<String>,
    pub node_inserts: u64,
    pub status_patches: u64,
    pub lease_renewals: u64,
    pub lease_errors: Vec<String>,
    /// Sends of ACK-required messages beyond the first.
    pub resends: u64,
    /// msg_ids of pushed messages that were ACKed.
    pub acked: Vec<String>,
}

struct Pushed {
    node: String,
    msg: Message,
    sends: u32,
    last_sent: Option<Instant>,
}

#[derive(Default)]
struct Cluster {
    nodes: HashMap<String, Value>,
    leases: HashMap<String, Value>,
    resource_version: u64,
    /// The reliable queue: ACK-required messages by msg_id.
    unacked: HashMap<String, Pushed>,
    sessions: HashMap<String, (u64, mpsc::UnboundedSender<()>)>,
    next_session: u64,
    stats: Stats,
}

impl Cluster {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

struct Shared {
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_key_der: Vec<u8>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    options: FakeOptions,
    cluster: Mutex<Cluster>,
    /// Every task the fake runs, so `stop` ends them all (the "cloudcore restart").
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FakeCloud {
    shared: Arc<Shared>,
    pub cert_port: u16,
    pub ws_port: u16,
}

impl FakeCloud {
    pub async fn start(options: FakeOptions) -> FakeCloud {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let ca_key_der = ca_key.serialize_der();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serial_number = Some(1024u64.into());
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let ca = CertifiedIssuer::self_signed(params, ca_key).unwrap();

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "KubeEdge");
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca).unwrap().der().clone();

        let shared = Arc::new(Shared {
            ca,
            ca_key_der,
            server_cert,
            server_key: server_key.serialize_der(),
            options,
            cluster: Mutex::new(Cluster::default()),
            tasks: Mutex::new(Vec::new()),
        });
        let cert = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeCloud {
            cert_port: cert.local_addr().unwrap().port(),
            ws_port: ws.local_addr().unwrap().port(),
            shared,
        };
        fake.serve(cert, ws);
        fake
    }

    /// Ends every listener and connection, as a cloudcore crash would. The cluster (nodes,
    /// leases) survives, as it lives in the API server.
    pub async fn stop(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.shared.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.cluster().sessions.clear();
    }

    /// Starts again on the same ports with the same CA.
    pub async fn restart(&self) {
        let cert = bind(self.cert_port).await;
        let ws = bind(self.ws_port).await;
        self.serve(cert, ws);
    }

    fn serve(&self, cert: TcpListener, ws: TcpListener) {
        let s = self.shared.clone();
        let cert_task = tokio::spawn(cert_listener(s.clone(), cert));
        let ws_task = tokio::spawn(ws_listener(s.clone(), ws));
        s.tasks.lock().unwrap().extend([cert_task, ws_task]);
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.shared.cluster.lock().unwrap()
    }

    pub fn ca_der(&self) -> Vec<u8> {
        self.shared.ca.der().to_vec()
    }

    /// A join token as `keadm gettoken` prints it, expiring `valid_for` from now.
    pub fn token(&self, valid_for: Duration) -> String {
        let exp = (SystemTime::now() + valid_for)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        format!(
            "{}.{}",
            sha256_hex(self.shared.ca.der()),
            jwt(&self.shared.ca_key_der, exp)
        )
    }

    pub fn stats(&self) -> Stats {
        self.cluster().stats.clone()
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.cluster().nodes.get(name).cloned()
    }

    pub fn lease(&self, name: &str) -> Option<Value> {
        self.cluster().leases.get(name).cloned()
    }

    /// The node's condition of `kind`, as `kubectl describe node` shows it.
    pub fn condition(&self, name: &str, kind: &str) -> Option<Value> {
        let node = self.node(name)?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
    }

    /// What kube-controller-manager does to a silent node: every condition becomes Unknown.
    pub fn mark_node_unknown(&self, name: &str) {
        let mut c = self.cluster();
        if let Some(conds) = c
            .nodes
            .get_mut(name)
            .and_then(|n| n["status"]["conditions"].as_array_mut())
        {
            for cond in conds {
                cond["status"] = "Unknown".into();
                cond["reason"] = "NodeStatusUnknown".into();
                cond["message"] = "Kubelet stopped posting node status.".into();
            }
        }
    }

    /// Schedules a pod onto `node`: an ACK-required `insert` of `<ns>/pod/<name>`. Returns its msg_id.
    pub fn push_pod(&self, node: &str, ns: &str, name: &str) -> String {
        let mut c = self.cluster();
        let rv = c.next_rv();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv},
            "spec": {"nodeName": node, "containers": [{"name": "nginx", "image": "nginx"}]},
            "status": {"phase": "Pending"}});
        let mut msg = Message::new(
            "edgecontroller",
            "resource",
            "insert",
            &format!("{ns}/pod/{name}"),
            pod,
        );
        msg.header.resourceversion = rv;
        enqueue(&mut c, node, msg)
    }

    pub fn unacked(&self) -> usize {
        self.cluster().unacked.len()
    }
}

async fn bind(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {port}: {e}");
                sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {port}: {e}"),
        }
    }
}

fn enqueue(c: &mut Cluster, node: &str, msg: Message) -> String {
    let id = msg.header.msg_id.clone();
    c.unacked.insert(
        id.clone(),
        Pushed {
            node: node.into(),
            msg,
            sends: 0,
            last_sent: None,
        },
    );
    if let Some((_, wake)) = c.sessions.get(node) {
        let _ = wake.send(());
    }
    id
}

pub fn jwt(key: &[u8], exp: u64) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(json!({ "exp": exp }).to_string());
    let signing = format!("{header}.{claims}");
    let sig = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        signing.as_bytes(),
    );
    format!("{signing}.{}", B64.encode(sig.as_ref()))
}

fn verify_jwt(key: &[u8], token: &str) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, sig] = parts[..] else {
        return Err("token contains an invalid number of segments".into());
    };
    let header: Value = B64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("malformed header")?;
    if header["alg"] != "HS256" {
        return Err("signing method is not HS256".into());
    }
    let sig = B64.decode(sig).map_err(|_| "malformed signature")?;
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        format!("{}.{claims}", parts[0]).as_bytes(),
        &sig,
    )
    .map_err(|_| "signature is invalid")?;
    let claims: Value = B64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("malformed claims")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    match claims["exp"].as_u64() {
        Some(exp) if exp > now => Ok(()),
        _ => Err("Token is expired".into()),
    }
}

fn server_config(
    shared: &Shared,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_client_cert_verifier(verifier)
    .with_single_cert(
        vec![shared.server_cert.clone()],
        PrivateKeyDer::try_from(shared.server_key.clone()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

fn client_verifier(
    shared: &Shared,
    optional: bool,
) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(shared.ca.der().clone()).unwrap();
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().unwrap()
}

fn track(shared: &Shared, task: JoinHandle<()>) {
    let mut tasks = shared.tasks.lock().unwrap();
    tasks.retain(|t| !t.is_finished());
    tasks.push(task);
}

// ---------------------------------------------------------------------------------------------
// Cert port

async fn cert_listener(shared: Arc<Shared>, listener: TcpListener) {
    let acceptor = TlsAcceptor::from(server_config(
        &shared,
        client_verifier(&shared, true),
        vec![],
    ));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (shared2, acceptor) = (shared.clone(), acceptor.clone());
        let task = tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                shared2.cluster.lock().unwrap().stats.tls_rejects += 1;
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned());
            let service = hyper::service::service_fn(move |req| {
                let (shared, peer) = (shared2.clone(), peer.clone());
                async move { Ok::<_, hyper::Error>(cert_request(&shared, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
        track(&shared, task);
    }
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

async fn cert_request(
    shared: &Shared,
    peer: Option<CertificateDer<'static>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path != "/ca.crt" && path != "/edge.crt" {
        return reply(404, "404 page not found");
    }
    if req.method() != hyper::Method::GET {
        return reply(405, "405: Method Not Allowed");
    }
    if let Some(accept) = req.headers().get(hyper::header::ACCEPT)
        && !accept.to_str().unwrap_or_default().contains("*/*")
    {
        return reply(406, "406: Not Acceptable");
    }
    if path == "/ca.crt" {
        shared.cluster.lock().unwrap().stats.ca_requests += 1;
        return reply(200, shared.ca.der().to_vec());
    }
    let header = |name: &str| header(req.headers(), name);
    let node = header("NodeName");
    let auth = header("Authorization");
    let usages = header("ExtKeyUsages");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (kind, outcome) = match peer {
        Some(cert) => ("rotation", check_node_cert(&cert, &node)),
        None => ("bootstrap", {
            let parts: Vec<&str> = auth.split(' ').collect();
            if parts.len() != 2 {
                Err(
                    "token validation failure, err: token credentials are in the wrong format"
                        .to_string(),
                )
            } else {
                verify_jwt(&shared.ca_key_der, parts[1])
                    .map_err(|e| format!("token validation failure, err: {e}"))
            }
        }),
    };
    let response = match outcome {
        Err(e) => reply(401, e),
        Ok(()) => match sign(shared, &body, &usages) {
            Ok(der) => reply(200, der),
            Err(e) => reply(
                500,
                format!("failed to sign certs for edgenode {node}, err: {e}"),
            ),
        },
    };
    shared
        .cluster
        .lock()
        .unwrap()
        .stats
        .cert_requests
        .push((kind, response.status().as_u16()));
    response
}

/// A header's value, empty when absent (header names match in any case).
fn header(headers: &hyper::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn check_node_cert(cert: &CertificateDer<'_>, node: &str) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    let o = subject
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok());
    if o == Some("system:nodes") && cn == Some(&format!("system:node:{node}")) {
        Ok(())
    } else {
        Err(format!(
            "failed to verify the certificate for edgenode {node}"
        ))
    }
}

fn sign(shared: &Shared, csr: &[u8], usages: &str) -> Result<Vec<u8>, String> {
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
        .map_err(|e| format!("parse CSR: {e}"))?;
    let mut signed = csr;
    let subject = &signed.params.distinguished_name;
    let mut dn = rcgen::DistinguishedName::new();
    for ty in [DnType::CommonName, DnType::OrganizationName] {
        if let Some(v) = subject.get(&ty) {
            dn.push(ty, v.clone());
        }
    }
    signed.params.distinguished_name = dn;
    signed.params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let usages: Vec<u32> = if usages.is_empty() {
        vec![2]
    } else {
        serde_json::from_str(usages).map_err(|e| e.to_string())?
    };
    signed.params.extended_key_usages = usages
        .iter()
        .map(|u| match u {
            1 => ExtendedKeyUsagePurpose::ServerAuth,
            _ => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    let now = SystemTime::now();
    signed.params.not_before = now.into();
    signed.params.not_after = (now + shared.options.cert_lifetime).into();
    signed.params.serial_number = Some(rand::random::<u64>().into());
    Ok(signed
        .signed_by(&shared.ca)
        .map_err(|e| e.to_string())?
        .der()
        .to_vec())
}

// ---------------------------------------------------------------------------------------------
// WebSocket port

async fn ws_listener(shared: Arc<Shared>, listener: TcpListener) {
    let acceptor = TlsAcceptor::from(server_config(
        &shared,
        client_verifier(&shared, false),
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    ));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (shared2, acceptor) = (shared.clone(), acceptor.clone());
        let task = tokio::spawn(async move { ws_connection(shared2, acceptor, tcp).await });
        track(&shared, task);
    }
}

#[derive(Default)]
struct Handshake {
    node: String,
    connection_use: String,
}

// The handshake callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn ws_connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let stats = |f: &dyn Fn(&mut Stats)| f(&mut shared.cluster.lock().unwrap().stats);
    let Ok(tls) = acceptor.accept(tcp).await else {
        stats(&|s| s.tls_rejects += 1);
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        stats(&|s| {
            s.handshake_rejects
                .push("client offered h2; cloudcore would speak HTTP/2".into())
        });
        return;
    }
    let seen = Arc::new(Mutex::new(Handshake::default()));
    let seen2 = seen.clone();
    let callback = move |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let h = |n: &str| header(req.headers(), n);
        let refuse = |why: &str| {
            let mut r = ErrorResponse::new(Some(why.to_string()));
            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
            Err(r)
        };
        if h("node_id").is_empty() {
            return refuse("missing node_id");
        }
        let origin = h("Origin");
        if !origin.is_empty() && !origin.ends_with(&h("Host")) {
            return refuse("origin not allowed");
        }
        *seen2.lock().unwrap() = Handshake {
            node: h("node_id"),
            connection_use: h("ConnectionUse"),
        };
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(tls, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            stats(&|s| s.handshake_rejects.push(e.to_string()));
            return;
        }
    };
    let Handshake {
        node,
        connection_use,
    } = std::mem::take(&mut *seen.lock().unwrap());
    if connection_use != "msg" {
        // cloudcore's ServeConn starts no reader without it: hold the socket, never read.
        stats(&|s| s.unserved += 1);
        let _ws = ws;
        return std::future::pending::<()>().await;
    }
    session(shared, ws, node).await;
}

async fn session<S>(shared: Arc<Shared>, ws: tokio_tungstenite::WebSocketStream<S>, node: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (wake_tx, mut wake) = mpsc::unbounded_channel();
    let id = {
        let mut c = shared.cluster.lock().unwrap();
        c.stats.connections += 1;
        c.next_session += 1;
        let id = c.next_session;
        // One session per node: the old one ends (its wake sender is dropped).
        c.sessions.insert(node.clone(), (id, wake_tx));
        id
    };
    let opts = shared.options.clone();
    let mut keepalive_deadline = Instant::now() + opts.keepalive_timeout;
    let mut resend_tick = tokio::time::interval(opts.resend_interval / 3);
    loop {
        let outgoing = due_messages(&shared, &node, opts.resend_interval);
        for msg in outgoing {
            if tx
                .send(Frame::text(serde_json::to_string(&msg).unwrap()))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            _ = sleep_until(keepalive_deadline) => {
                shared.cluster.lock().unwrap().stats.keepalive_timeouts += 1;
                let _ = tx.close().await;
                break;
            }
            _ = resend_tick.tick() => {}
            w = wake.recv() => if w.is_none() { break },
            frame = rx.next() => {
                let text = match frame {
                    Some(Ok(Frame::Text(t))) => t.to_string(),
                    Some(Ok(Frame::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Some(msg) = accept_upstream(&shared, &text) else { continue };
                if msg.route.operation == "keepalive" {
                    keepalive_deadline = Instant::now() + opts.keepalive_timeout;
                    shared.cluster.lock().unwrap().stats.keepalives += 1;
                    continue;
                }
                if let Some(resp) = upstream(&shared, &node, msg)
                    && tx.send(Frame::text(serde_json::to_string(&resp).unwrap())).await.is_err()
                {
                    break;
                }
            }
        }
    }
    let mut c = shared.cluster.lock().unwrap();
    if c.sessions.get(&node).is_some_and(|(s, _)| *s == id) {
        c.sessions.remove(&node);
    }
}

/// Pushed messages for `node` never sent, or unACKed for `resend_interval`.
fn due_messages(shared: &Shared, node: &str, resend_interval: Duration) -> Vec<Message> {
    let mut c = shared.cluster.lock().unwrap();
    let now = Instant::now();
    let mut out = Vec::new();
    let mut resends = 0;
    for p in c.unacked.values_mut().filter(|p| p.node == node) {
        if p.last_sent.is_none_or(|t| now >= t + resend_interval) {
            if p.sends > 0 {
                resends += 1;
            }
            p.sends += 1;
            p.last_sent = Some(now);
            out.push(p.msg.clone());
        }
    }
    c.stats.resends += resends;
    out
}

/// Wire-level checks cloudhub makes before dispatching.
fn accept_upstream(shared: &Shared, text: &str) -> Option<Message> {
    let drop = |why: String| {
        shared
            .cluster
            .lock()
            .unwrap()
            .stats
            .dropped_messages
            .push(why);
        None
    };
    let raw: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return drop(format!("not JSON: {e}")),
    };
    if raw.get("route").is_none() {
        return drop(format!("no route: {text}"));
    }
    if !raw["header"]["timestamp"].is_i64() {
        return drop(format!("timestamp is not an integer: {text}"));
    }
    let msg: Message = match serde_json::from_value(raw) {
        Ok(m) => m,
        Err(e) => return drop(format!("not a message: {e}")),
    };
    if [
        "cloudhub",
        "cloudStream",
        "devicecontroller",
        "edgecontroller",
        "synccontroller",
    ]
    .contains(&msg.route.source.as_str())
        && msg.route.operation != "response"
    {
        return drop(format!("source {} is a cloud module", msg.route.source));
    }
    Some(msg)
}

fn object_resp(
    req: &Message,
    object: Value,
    err: Option<(&str, u16, String)>,
    rv: &str,
) -> Message {
    let mut resp = Message::new(
        "edgecontroller",
        "resource",
        "response",
        &req.route.resource,
        Value::Null,
    );
    resp.header.parent_msg_id = req.header.msg_id.clone();
    resp.header.resourceversion = rv.into();
    resp.content = json!({
        "Object": object,
        "Err": err.map(|(reason, code, message)| json!({"ErrStatus": {
            "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}})),
    });
    resp
}

/// edgecontroller's upstream handling; returns the reply.
fn upstream(shared: &Shared, node_id: &str, msg: Message) -> Option<Message> {
    let mut c = shared.cluster.lock().unwrap();
    if msg.route.operation == "response" {
        if c.unacked.remove(&msg.header.parent_msg_id).is_some() {
            c.stats.acked.push(msg.header.parent_msg_id.clone());
        }
        return None;
    }
    let parts: Vec<&str> = msg.route.resource.split('/').collect();
    let (ns, kind, name) = match parts[..] {
        [ns, kind, name] => (ns, kind, name.to_string()),
        _ => {
            c.stats
                .dropped_messages
                .push(format!("resource {}", msg.route.resource));
            return None;
        }
    };
    if ns.is_empty() {
        c.stats
            .dropped_messages
            .push(format!("empty namespace in {}", msg.route.resource));
        return None;
    }
    match (kind, msg.route.operation.as_str()) {
        ("node", "insert") => {
            c.stats.node_inserts += 1;
            if c.nodes.contains_key(&name) {
                let err = (
                    "AlreadyExists",
                    409,
                    format!("nodes \"{name}\" already exists"),
                );
                return Some(object_resp(&msg, json!({"metadata": {}}), Some(err), ""));
            }
            let rv = c.next_rv();
            let mut node = msg.content.clone();
            node["metadata"]["uid"] = format!("uid-{name}").into();
            node["metadata"]["resourceVersion"] = rv.clone().into();
            node["metadata"]["annotations"]["cloudcore"] = "127.0.0.1".into();
            c.nodes.insert(name.clone(), node.clone());
            push_node_update(&mut c, node_id, &name);
            Some(object_resp(&msg, node, None, &rv))
        }
        ("nodepatch", "patch") => {
            let Some(patch) = msg
                .content
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
            else {
                let err = (
                    "BadRequest",
                    400,
                    "patch content is not a JSON string".to_string(),
                );
                return Some(object_resp(&msg, Value::Null, Some(err), ""));
            };
            let rv = c.next_rv();
            let Some(node) = c.nodes.get_mut(&name) else {
                let err = ("NotFound", 404, format!("nodes \"{name}\" not found"));
                return Some(object_resp(&msg, Value::Null, Some(err), ""));
            };
            merge_conditions(node, &patch);
            node["metadata"]["resourceVersion"] = rv.clone().into();
            let node = node.clone();
            c.stats.status_patches += 1;
            push_node_update(&mut c, node_id, &name);
            Some(object_resp(&msg, node, None, &rv))
        }
        ("lease", op) => Some(lease(&mut c, &msg, &name, op)),
        _ => None,
    }
}

/// Strategic merge of `status.conditions` by `type`.
fn merge_conditions(node: &mut Value, patch: &Value) {
    let Some(new) = patch["status"]["conditions"].as_array() else {
        return;
    };
    if !node["status"]["conditions"].is_array() {
        node["status"]["conditions"] = json!([]);
    }
    let conds = node["status"]["conditions"].as_array_mut().unwrap();
    for n in new {
        match conds.iter_mut().find(|c| c["type"] == n["type"]) {
            Some(c) => {
                for (k, v) in n.as_object().unwrap() {
                    c[k] = v.clone();
                }
            }
            None => conds.push(n.clone()),
        }
    }
}

fn push_node_update(c: &mut Cluster, node_id: &str, name: &str) {
    let node = c.nodes[name].clone();
    let mut msg = Message::new(
        "edgecontroller",
        "resource",
        "update",
        &format!("null/node/{name}"),
        node.clone(),
    );
    msg.header.resourceversion = node["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .into();
    // Newer versions of the same object replace older ones in the queue.
    c.unacked
        .retain(|_, p| p.msg.route.resource != msg.route.resource);
    enqueue(c, node_id, msg);
}

fn lease(c: &mut Cluster, msg: &Message, name: &str, op: &str) -> Message {
    let not_found = || {
        (
            "NotFound",
            404,
            format!("lease.coordination.k8s.io \"{name}\" not found"),
        )
    };
    let renew_ok = |l: &Value| {
        let t = l["spec"]["renewTime"].as_str().unwrap_or_default();
        let frac = t.split('.').nth(1).unwrap_or_default();
        frac.len() == 7 && frac.ends_with('Z') && frac[..6].bytes().all(|b| b.is_ascii_digit())
    };
    match op {
        "query" => match c.leases.get(name) {
            Some(l) => object_resp(msg, l.clone(), None, ""),
            None => object_resp(msg, Value::Null, Some(not_found()), ""),
        },
        "insert" | "update" => {
            let mut l = msg.content.clone();
            let err = if !renew_ok(&l) {
                Some((
                    "Invalid",
                    422,
                    format!("renewTime {} is not a MicroTime", l["spec"]["renewTime"]),
                ))
            } else if op == "insert" && c.leases.contains_key(name) {
                Some((
                    "AlreadyExists",
                    409,
                    format!("leases \"{name}\" already exists"),
                ))
            } else if op == "update" {
                match (
                    c.leases.get(name),
                    l["metadata"]["resourceVersion"].as_str(),
                ) {
                    (Some(_), None) => Some((
                        "Invalid",
                        422,
                        "metadata.resourceVersion: must be specified for an update".into(),
                    )),
                    (Some(cur), Some(rv)) if cur["metadata"]["resourceVersion"] != rv => {
                        Some(("Conflict", 409, "the object has been modified".into()))
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(e) = err {
                c.stats.lease_errors.push(e.2.clone());
                return object_resp(msg, Value::Null, Some(e), "");
            }
            let rv = c.next_rv();
            l["metadata"]["resourceVersion"] = rv.clone().into();
            c.leases.insert(name.into(), l.clone());
            c.stats.lease_renewals += 1;
            object_resp(msg, l, None, &rv)
        }
        _ => object_resp(
            msg,
            Value::Null,
            Some(("MethodNotAllowed", 405, op.into())),
            "",
        ),
    }
}
