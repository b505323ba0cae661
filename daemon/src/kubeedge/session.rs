//! The node agent's task: credentials, then one CloudHub WebSocket session after another.
//!
//! A session is a single loop over the socket and a few deadlines, so nothing ever waits for a
//! reply while a keepalive is due (the failure behind kubeedge#6184). Requests are matched to
//! replies by `parent_msg_id`; a request unanswered for `request_timeout` ends the session, and
//! the next one starts clean: register again (idempotent), query the lease again, patch the
//! status again (a lease alone does not bring a node back from Unknown).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message as Frame;
use tracing::{debug, error, info, warn};

use super::certs::{self, Credentials};
use super::message::{GROUP_RESOURCE, Message, ObjectResp};
use super::node::{self, Conditions, HostFacts, LEASE_NAMESPACE, NodeHealth};
use super::{KubeEdgeSettings, LinkPhase, LinkState, tls};

/// A frame that cannot be written in this long means the link is dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Registration retry: 100 ms doubling to 7 s, as the kubelet's.
const REGISTER_RETRY_MIN: Duration = Duration::from_millis(100);
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(7);
/// Rotation retry: 2 s doubling, 5 steps, then every 32 s, as edgecore's.
const ROTATE_RETRY_MIN: Duration = Duration::from_secs(2);
const ROTATE_RETRY_MAX: Duration = Duration::from_secs(32);

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Why a session ended.
enum Outcome {
    Shutdown,
    Rotated(Credentials),
    Dropped(String),
}

pub(super) async fn agent(
    settings: KubeEdgeSettings,
    state: watch::Sender<LinkState>,
    mut health: watch::Receiver<Option<NodeHealth>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conditions = Conditions::new(SystemTime::now());
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut creds: Option<Credentials> = None;
    let set_phase = |phase: LinkPhase| state.send_modify(|s| s.phase = phase);
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        let text = format!("{what}: {err}");
        state.send_modify(|s| {
            s.phase = LinkPhase::Disconnected;
            s.registered = false;
            s.last_error = Some(text);
        });
    };
    loop {
        // An expired certificate cannot rotate any more: join again with the token.
        let current = match creds
            .take()
            .filter(|c| c.not_after > SystemTime::now())
            .or_else(|| match certs::load(&settings) {
                Ok(c) => Some(c),
                Err(e @ certs::CertError::NotStored { .. }) => {
                    debug!("kubeedge: {e}");
                    None
                }
                Err(e) => {
                    warn!("kubeedge: {e}; joining again with the token");
                    None
                }
            }) {
            Some(c) => c,
            None => {
                set_phase(LinkPhase::Bootstrapping);
                info!(node = %settings.node_name, host = %settings.cloudcore_host, "kubeedge: joining with the token");
                let result = tokio::select! {
                    r = certs::bootstrap(&settings) => r,
                    _ = stopped(&mut shutdown) => break,
                };
                match result {
                    Ok(c) => {
                        info!(dir = %settings.cert_dir.display(), "kubeedge: node certificate obtained and stored");
                        c
                    }
                    Err(e) => {
                        error!("kubeedge: bootstrap failed: {e}");
                        fail("bootstrap", &e);
                        if wait_or_shutdown(backoff.next(), &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        state.send_modify(|s| s.cert_not_after = Some(current.not_after));
        set_phase(LinkPhase::Connecting);
        let outcome = session(
            &settings,
            &current,
            &mut conditions,
            &mut health,
            &state,
            &mut shutdown,
            &mut backoff,
        )
        .await;
        match outcome {
            Outcome::Shutdown => break,
            Outcome::Rotated(new) => {
                info!("kubeedge: node certificate rotated; reconnecting with it");
                state.send_modify(|s| {
                    s.cert_rotations += 1;
                    s.registered = false;
                });
                creds = Some(new);
            }
            Outcome::Dropped(reason) => {
                warn!("kubeedge: link to cloudcore lost: {reason}");
                fail("link", &reason);
                state.send_modify(|s| s.reconnects += 1);
                creds = Some(current);
                if wait_or_shutdown(backoff.next(), &mut shutdown).await {
                    break;
                }
            }
        }
    }
    state.send_modify(|s| {
        s.phase = LinkPhase::Stopped;
        s.registered = false;
    });
}

/// Resolves once shutdown is asked for (or the handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Sleeps `delay`; true when shutdown was asked for meanwhile.
async fn wait_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = sleep(delay) => false,
        _ = stopped(shutdown) => true,
    }
}

/// [`handshake`] within `connect_timeout`.
async fn connect(
    settings: &KubeEdgeSettings,
    creds: &Credentials,
) -> Result<(Ws, Option<IpAddr>), String> {
    tokio::time::timeout(settings.connect_timeout, handshake(settings, creds))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "connecting to CloudHub at {} timed out after {:?}",
                tls::authority(&settings.cloudcore_host, settings.websocket_port),
                settings.connect_timeout
            ))
        })
}

/// TCP, mutual TLS, then the WebSocket upgrade.
async fn handshake(
    settings: &KubeEdgeSettings,
    creds: &Credentials,
) -> Result<(Ws, Option<IpAddr>), String> {
    let config = tls::ca_config(&creds.ca, Some(creds.client_auth())).map_err(|e| e.to_string())?;
    let stream = tls::connect(config, &settings.cloudcore_host, settings.websocket_port)
        .await
        .map_err(|e| e.to_string())?;
    let local_ip = stream.get_ref().0.local_addr().ok().map(|a| a.ip());
    let url = format!(
        "wss://{}/{}/{}/events",
        tls::authority(&settings.cloudcore_host, settings.websocket_port),
        settings.project_id,
        settings.node_name
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    for (name, value) in [
        ("node_id", settings.node_name.as_str()),
        ("project_id", settings.project_id.as_str()),
        // Without it cloudcore accepts the upgrade and never reads the socket.
        ("ConnectionUse", "msg"),
    ] {
        let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
        headers.insert(name, value);
    }
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| format!("WebSocket upgrade at {url}: {e}"))?;
    Ok((ws, local_ip))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Register,
    StatusPatch,
    LeaseQuery,
    LeaseInsert,
    LeaseUpdate,
}

/// The lease as far as this connection knows it; every connection starts from `Unknown`.
enum Lease {
    Unknown,
    Missing,
    Held(Value),
}

#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &KubeEdgeSettings,
    creds: &Credentials,
    conditions: &mut Conditions,
    health: &mut watch::Receiver<Option<NodeHealth>>,
    state: &watch::Sender<LinkState>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Outcome {
    let rotation = rotate_when_due(settings, creds);
    tokio::pin!(rotation);
    let connected = tokio::select! {
        c = connect(settings, creds) => c,
        _ = stopped(shutdown) => return Outcome::Shutdown,
        new = &mut rotation => return Outcome::Rotated(new),
    };
    let (ws, local_ip) = match connected {
        Ok(c) => c,
        Err(e) => return Outcome::Dropped(e),
    };
    info!(node = %settings.node_name, "kubeedge: connected to cloudcore");
    state.send_modify(|s| {
        s.phase = LinkPhase::Connected;
        s.connects += 1;
    });
    let mut s = Session {
        settings,
        ws,
        local_ip,
        host: HostFacts::read(),
        pending: HashMap::new(),
        registered: false,
        lease: Lease::Unknown,
        register_retry: Backoff::new(REGISTER_RETRY_MIN, REGISTER_RETRY_MAX),
        state,
    };
    if let Some(h) = *health.borrow_and_update() {
        conditions.update(&h, SystemTime::now());
    }
    let result = serve(&mut s, conditions, health, shutdown, rotation, backoff).await;
    state.send_modify(|st| st.registered = false);
    result.unwrap_or_else(Outcome::Dropped)
}

/// The connected part of a session: the due messages out, replies and health changes in, until
/// shutdown, a certificate rotation or a broken link (`Err`, the session is dropped).
async fn serve(
    s: &mut Session<'_>,
    conditions: &mut Conditions,
    health: &mut watch::Receiver<Option<NodeHealth>>,
    shutdown: &mut watch::Receiver<bool>,
    mut rotation: Pin<&mut impl Future<Output = Credentials>>,
    backoff: &mut Backoff,
) -> Result<Outcome, String> {
    let mut timers = Timers::new(s.settings);
    let mut health_open = true;
    loop {
        let now = Instant::now();
        s.send_due(&mut timers, conditions, now).await?;
        if let Some(late) = s.overdue(now) {
            return Err(format!(
                "no reply to {late:?} within {:?}",
                s.settings.request_timeout
            ));
        }
        let wake = timers.wake(s.oldest_deadline());
        tokio::select! {
            _ = sleep_until(wake) => {}
            _ = stopped(shutdown) => {
                s.close().await;
                return Ok(Outcome::Shutdown);
            }
            new = &mut rotation => {
                s.close().await;
                return Ok(Outcome::Rotated(new));
            }
            changed = health.changed(), if health_open => {
                health_open = changed.is_ok();
                let report = *health.borrow_and_update();
                if let Some(h) = report
                    && conditions.update(&h, SystemTime::now())
                    && s.registered
                {
                    s.patch_status(conditions).await?;
                }
            }
            frame = s.ws.next() => {
                let Some(text) = frame_text(frame)? else {
                    continue;
                };
                let reply = s.receive(&text).await?;
                timers.after_reply(reply, s, backoff);
            }
        }
    }
}

/// The text of a data frame; `None` for the control frames (ping, pong) the library answers.
fn frame_text(frame: Option<Result<Frame, WsError>>) -> Result<Option<String>, String> {
    match frame {
        Some(Ok(Frame::Text(t))) => Ok(Some(t.to_string())),
        Some(Ok(Frame::Binary(b))) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Some(Ok(Frame::Close(c))) => Err(format!(
            "cloudcore closed the connection{}",
            c.map(|c| format!(": {}", c.reason)).unwrap_or_default()
        )),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(format!("read: {e}")),
        None => Err("connection closed".into()),
    }
}

/// When each periodic message of one connection is next due. Registration starts after
/// `register_delay`; status and lease only once cloudcore confirmed the registration, so those
/// are `None` until then.
struct Timers {
    keepalive: Instant,
    register: Option<Instant>,
    status: Option<Instant>,
    lease: Option<Instant>,
    /// Registered once on this connection, so the reconnect backoff was reset: a link that
    /// registers is healthy even if it drops later.
    stable: bool,
}

impl Timers {
    fn new(settings: &KubeEdgeSettings) -> Self {
        let now = Instant::now();
        Timers {
            keepalive: now,
            register: Some(now + settings.register_delay),
            status: None,
            lease: None,
            stable: false,
        }
    }

    /// The next timer, or the reply deadline of the oldest request if that comes first.
    fn wake(&self, reply_deadline: Option<Instant>) -> Instant {
        [
            Some(self.keepalive),
            self.register,
            self.status,
            self.lease,
            reply_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.keepalive)
    }

    /// Schedules what a reply to `reply` makes due.
    fn after_reply(&mut self, reply: Option<Request>, s: &mut Session<'_>, backoff: &mut Backoff) {
        match reply {
            Some(Request::Register) if s.registered => {
                // Registered: post Ready right away (after a reconnect the node may
                // be Unknown) and start the lease from a query.
                self.register = None;
                self.status = Some(Instant::now());
                self.lease = Some(Instant::now());
                if !self.stable {
                    self.stable = true;
                    backoff.reset();
                }
            }
            Some(Request::LeaseQuery | Request::LeaseInsert)
                if !matches!(s.lease, Lease::Held(_)) =>
            {
                self.lease = Some(Instant::now());
            }
            Some(Request::LeaseUpdate) if matches!(s.lease, Lease::Unknown) => {
                self.lease = Some(Instant::now());
            }
            Some(Request::Register) => {
                self.register = Some(Instant::now() + s.register_retry.next());
            }
            _ => {}
        }
    }
}

fn node_resource(settings: &KubeEdgeSettings, kind: &str) -> String {
    format!("null/{kind}/{}", settings.node_name)
}

struct Session<'a> {
    settings: &'a KubeEdgeSettings,
    ws: Ws,
    local_ip: Option<IpAddr>,
    host: HostFacts,
    pending: HashMap<String, (Request, Instant)>,
    registered: bool,
    lease: Lease,
    register_retry: Backoff,
    state: &'a watch::Sender<LinkState>,
}

impl Session<'_> {
    /// Sends whichever of keepalive, registration, status patch and lease renewal is due.
    async fn send_due(
        &mut self,
        timers: &mut Timers,
        conditions: &Conditions,
        now: Instant,
    ) -> Result<(), String> {
        let settings = self.settings;
        if now >= timers.keepalive {
            self.send(Message::keepalive()).await?;
            timers.keepalive = now + settings.keepalive;
        }
        if timers.register.is_some_and(|t| now >= t) {
            timers.register = None;
            let object = node::node_object(
                &settings.node_name,
                &settings.node_labels,
                &self.host,
                self.local_ip,
                conditions,
                SystemTime::now(),
            );
            let resource = node_resource(settings, "node");
            self.request(Request::Register, "insert", &resource, object)
                .await?;
        }
        if timers.status.is_some_and(|t| now >= t) {
            timers.status = Some(now + settings.status_period);
            self.patch_status(conditions).await?;
        }
        if timers.lease.is_some_and(|t| now >= t) {
            timers.lease = Some(now + settings.lease);
            self.renew_lease().await?;
        }
        Ok(())
    }

    /// A close frame, at most [`SEND_TIMEOUT`]: a peer that stopped reading must not hold up a
    /// shutdown or a rotation.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.ws.close(None)).await;
    }

    async fn send(&mut self, msg: Message) -> Result<(), String> {
        let text = serde_json::to_string(&msg).map_err(|e| e.to_string())?;
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Frame::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("write blocked for {SEND_TIMEOUT:?}")),
        }
    }

    async fn request(
        &mut self,
        kind: Request,
        operation: &str,
        resource: &str,
        content: Value,
    ) -> Result<(), String> {
        let msg = Message::request(operation, resource, content);
        self.pending
            .insert(msg.header.msg_id.clone(), (kind, Instant::now()));
        self.send(msg).await
    }

    fn is_pending(&self, kind: Request) -> bool {
        self.pending.values().any(|(k, _)| *k == kind)
    }

    fn oldest_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|(_, sent)| *sent + self.settings.request_timeout)
            .min()
    }

    fn overdue(&self, now: Instant) -> Option<Request> {
        self.pending
            .values()
            .find(|(_, sent)| now >= *sent + self.settings.request_timeout)
            .map(|(kind, _)| *kind)
    }

    async fn patch_status(&mut self, conditions: &Conditions) -> Result<(), String> {
        let patch = node::status_patch(conditions, SystemTime::now());
        let resource = node_resource(self.settings, "nodepatch");
        self.request(Request::StatusPatch, "patch", &resource, patch)
            .await
    }

    /// One step of the kubelet's lease controller: query, insert if missing, else update the last
    /// returned lease. Never two lease requests in flight.
    async fn renew_lease(&mut self) -> Result<(), String> {
        if [
            Request::LeaseQuery,
            Request::LeaseInsert,
            Request::LeaseUpdate,
        ]
        .iter()
        .any(|k| self.is_pending(*k))
        {
            return Ok(());
        }
        let resource = format!("{LEASE_NAMESPACE}/lease/{}", self.settings.node_name);
        let lease = |previous| {
            node::lease_object(
                &self.settings.node_name,
                previous,
                self.settings.lease * 4,
                SystemTime::now(),
            )
        };
        let (kind, op, content) = match &self.lease {
            Lease::Unknown => (Request::LeaseQuery, "query", Value::Null),
            Lease::Missing => (Request::LeaseInsert, "insert", lease(None)),
            Lease::Held(previous) => (Request::LeaseUpdate, "update", lease(Some(previous))),
        };
        self.request(kind, op, &resource, content).await
    }

    /// Handles one frame from the cloud; returns the request it answered, if any.
    async fn receive(&mut self, text: &str) -> Result<Option<Request>, String> {
        let msg: Message = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                warn!(
                    "kubeedge: ignoring a message that is not a beehive message ({e}): {:.200}",
                    text
                );
                return Ok(None);
            }
        };
        if matches!(msg.route.operation.as_str(), "ping" | "pong" | "config") {
            self.send(msg.response("ack")).await?;
            return Ok(None);
        }
        let answered = self
            .pending
            .remove(&msg.header.parent_msg_id)
            .map(|(k, _)| k);
        if msg.route.group == GROUP_RESOURCE {
            // Everything of group `resource` is ACKed: cloudhub's reliable queue resends what it
            // needs ACKed and ignores ACKs for the rest.
            self.send(msg.response("OK")).await?;
            self.state.send_modify(|s| s.messages_acked += 1);
        }
        match answered {
            Some(kind) => {
                self.answered(kind, &msg);
                Ok(Some(kind))
            }
            None => {
                self.pushed(&msg);
                Ok(None)
            }
        }
    }

    fn answered(&mut self, kind: Request, msg: &Message) {
        let reply = ObjectResp::parse(&msg.content);
        let err = |reply: &Option<ObjectResp>| match reply {
            Some(ObjectResp::Err { reason, message }) => Some((reason.clone(), message.clone())),
            Some(ObjectResp::Ok(_)) => None,
            None => match msg.content.as_str() {
                Some("OK") => None,
                _ => Some((String::new(), msg.content.to_string())),
            },
        };
        let failed = err(&reply);
        match kind {
            Request::Register => match failed {
                Some((reason, message)) if reason != "AlreadyExists" => {
                    warn!("kubeedge: node registration refused ({reason}): {message}");
                    self.state
                        .send_modify(|s| s.last_error = Some(format!("register: {message}")));
                }
                _ => {
                    info!(node = %self.settings.node_name, "kubeedge: node registered");
                    self.registered = true;
                    self.state.send_modify(|s| {
                        s.registered = true;
                        s.last_error = None;
                    });
                }
            },
            Request::StatusPatch => match failed {
                None => self.state.send_modify(|s| s.status_patches += 1),
                Some((reason, message)) => {
                    warn!("kubeedge: node status patch refused ({reason}): {message}")
                }
            },
            Request::LeaseQuery => {
                self.lease = match (failed, reply) {
                    (None, Some(ObjectResp::Ok(lease))) if is_lease(&lease) => Lease::Held(lease),
                    (None, _) => Lease::Missing,
                    (Some((reason, _)), _) if reason == "NotFound" => Lease::Missing,
                    (Some((reason, message)), _) => {
                        warn!("kubeedge: lease query failed ({reason}): {message}");
                        Lease::Unknown
                    }
                };
            }
            Request::LeaseInsert | Request::LeaseUpdate => {
                self.lease = match (failed, reply) {
                    (None, Some(ObjectResp::Ok(lease))) if is_lease(&lease) => {
                        self.state.send_modify(|s| s.lease_renewals += 1);
                        Lease::Held(lease)
                    }
                    (None, _) => Lease::Unknown,
                    (Some((reason, message)), _) => {
                        // Conflict or AlreadyExists: someone else's version; start over.
                        debug!("kubeedge: lease {kind:?} failed ({reason}): {message}");
                        Lease::Unknown
                    }
                };
            }
        }
    }

    /// Something the cloud pushed on its own (already ACKed).
    fn pushed(&mut self, msg: &Message) {
        let mut parts = msg.route.resource.split('/');
        let (ns, kind, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        match (kind, msg.route.operation.as_str()) {
            ("pod", "delete") => info!("kubeedge: pod {ns}/{name} removed from this node"),
            ("pod", op) => {
                warn!(
                    "kubeedge: pod {ns}/{name} ({op}) was assigned to this node, but helmetd runs no \
                     pods (its node is tainted {}); acknowledged and ignored",
                    node::NO_WORKLOADS_TAINT
                );
                self.state.send_modify(|s| s.pods_refused += 1);
            }
            ("node", "delete") => {
                warn!(
                    "kubeedge: the Node object was deleted in the cluster; it is registered again on the next connection"
                )
            }
            _ => debug!(
                "kubeedge: {} {} from {} acknowledged",
                msg.route.operation, msg.route.resource, msg.route.source
            ),
        }
    }
}

/// A lease object [`node::lease_object`] can renew (a cloud reply is input like any other).
fn is_lease(value: &Value) -> bool {
    value.is_object() && value.get("spec").is_none_or(Value::is_object)
}

/// Resolves with new credentials once the current ones are due for rotation; retries failures.
async fn rotate_when_due(settings: &KubeEdgeSettings, creds: &Credentials) -> Credentials {
    let deadline = creds.rotation_deadline(rand::random());
    // Wall-clock deadline, months away: re-check daily so clock steps are followed.
    while let Ok(wait) = deadline.duration_since(SystemTime::now()) {
        sleep(wait.min(Duration::from_secs(24 * 3600))).await;
    }
    let mut retry = Backoff::new(ROTATE_RETRY_MIN, ROTATE_RETRY_MAX);
    loop {
        match certs::rotate(settings, creds).await {
            Ok(new) => return new,
            Err(e) => {
                warn!("kubeedge: certificate rotation failed, retrying: {e}");
                sleep(retry.next()).await;
            }
        }
    }
}

/// Exponential backoff with ±10 % jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        current.mul_f64(0.9 + 0.2 * rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}
