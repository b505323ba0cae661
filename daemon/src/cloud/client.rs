//! The edge side of joint inference: ask the cloud about a hard example, wait a bounded time.
//!
//! `CloudClient` does not own an MQTT connection. The daemon keeps one MQTT session for alerts,
//! status, the spool and this; its event loop hands every publish to [`CloudClient::handle_incoming`]
//! and calls [`CloudClient::subscribe`] after each connect that did not resume a session. The
//! session must accept packets of [`MAX_RESPONSE_BYTES`](super::protocol::MAX_RESPONSE_BYTES).
//!
//! Unlike Sedna's client (no timeout, 5 retries × 3 s, no memory of a dead cloud) an `ask`
//! never takes longer than the timeout, and a [`Breaker`] makes asking free while the cloud is
//! known to be down.
//!
//! # Through the uplink's spool
//!
//! Built by the uplink ([`CloudClient::over_uplink`]) with `hard_examples` in
//! `mqtt.spool_kinds`, every hard example goes into the uplink's crash-safe spool, properties
//! and all, and so reaches the broker even across an outage or a crash. The spool write
//! counts against the timeout. A request only waits for its answer while it can come: while
//! the session is down, or the breaker is open, the request is still spooled but `ask`
//! returns at once (`Failed(Offline)` or `BreakerOpen`). Either way its correlation id is
//! remembered as expired, so the answer to the replayed request counts as late and is not
//! used. Without `hard_examples` in the list a request is sent once, and while the session is
//! down it is not sent at all (`Failed(Offline)`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use helmet_pipelines::Detection;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::SpoolKind;
use crate::uplink::{Delivery, Outbox};

use super::breaker::{Admission, Breaker, BreakerSettings, BreakerState};
use super::protocol::{
    self, BoxFixes, CloudResponse, CorrelationId, HardExampleMeta, ResponseError,
};

/// Ids of requests no longer waited for, remembered to tell a late answer from a stray one.
/// Sized for the hard examples spooled during a long outage, which all get answered late once
/// the spool drains (16 bytes each).
const EXPIRED_MEMORY: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct CloudClientSettings {
    /// This gateway's name: part of the response topic and sent with every request.
    pub node: String,
    pub topic_prefix: String,
    /// How long a hard frame waits for the cloud before the edge answer stands.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
}

impl CloudClientSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            node: cfg.node_name(),
            topic_prefix: cfg.mqtt.topic_prefix.clone(),
            timeout: Duration::from_millis(cfg.cloud.timeout_ms),
            breaker: BreakerSettings::default(),
        }
    }
}

/// How one `ask` ended. Only `Answered` replaces the edge result.
#[derive(Debug)]
pub enum CloudAnswer {
    /// The cloud's boxes in original-frame pixels, and the round-trip time.
    Answered(Vec<Detection>, Duration),
    /// No answer within the timeout. An answer that comes later is only counted.
    Late,
    Failed(AskError),
    /// The cloud is known to be down; nothing was sent.
    BreakerOpen,
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The MQTT session's request queue is full or gone (the broker is unreachable), or the
    /// spool refused the request.
    #[error("cannot queue the request: {0}")]
    Publish(String),
    /// The session to the broker is down: no answer can come. A spooled request is sent
    /// after the reconnect.
    #[error("not connected to the broker")]
    Offline,
    #[error("cloud replica {replica:?} refused: {message}")]
    Refused { message: String, replica: String },
    #[error("unreadable answer: {0}")]
    BadResponse(#[from] ResponseError),
    /// The Sedna HTTP cloud (`protocol = "sedna-http"`) failed to answer.
    #[error(transparent)]
    SednaHttp(#[from] crate::sedna::http_client::SednaHttpError),
}

/// The session's request queue is full or closed: the caller retries on its next ConnAck.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue the subscription to {topic}: the MQTT request queue is full or closed")]
pub struct SubscribeError {
    pub topic: String,
}

/// Counters since the client was created. The upload ratio is hard ÷ frames, the caller's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloudStats {
    /// Requests sent (breaker skips excluded).
    pub asked: u64,
    pub answered: u64,
    pub timed_out: u64,
    /// Answers that arrived after their request had timed out.
    pub late: u64,
    /// Publish errors, refusals and unreadable answers.
    pub failed: u64,
    pub breaker_open_skips: u64,
    /// Requests spooled but not waited for (breaker open, or the broker away).
    pub spooled_unwaited: u64,
    /// Messages on the response topic that matched no request we remember: strays, and
    /// forgeries with an id we never issued.
    pub unmatched: u64,
    /// Boxes of used answers that reached outside the frame and were cut to it.
    pub boxes_clipped: u64,
    /// Boxes of used answers thrown away (non-finite, score outside 0..=1, empty in the frame).
    pub boxes_dropped: u64,
    /// Boxes of used answers beyond 300, the lowest-scoring.
    pub boxes_over_cap: u64,
}

impl CloudStats {
    fn record_fixes(&mut self, fixes: BoxFixes) {
        self.boxes_clipped += fixes.clipped;
        self.boxes_dropped += fixes.dropped;
        self.boxes_over_cap += fixes.over_cap;
    }
}

type Waiter = oneshot::Sender<Result<CloudResponse, ResponseError>>;

/// Where a request went.
enum Sent {
    /// Out to the broker, or will be shortly: its answer may come in time.
    Waitable,
    /// Into the spool while the session is down: it is sent after the reconnect.
    Spooled,
    /// Nowhere: not spooled and the session is down.
    Dropped,
}

struct Shared {
    breaker: Breaker,
    waiting: HashMap<CorrelationId, Waiter>,
    expired: VecDeque<CorrelationId>,
    stats: CloudStats,
    /// Whether a repaired answer was logged at warn yet; later ones go to debug.
    fixes_warned: bool,
}

impl Shared {
    /// Remembers a request no longer waited for, so its answer counts as late.
    fn expire(&mut self, id: CorrelationId) {
        if self.expired.len() == EXPIRED_MEMORY {
            self.expired.pop_front();
        }
        self.expired.push_back(id);
    }
}

/// How requests leave.
enum Requests {
    /// Straight into the session's request queue, for a client whose caller drives the event
    /// loop itself.
    Direct(AsyncClient),
    /// Through the uplink, honouring `mqtt.spool_kinds`.
    Uplink(Outbox),
}

pub struct CloudClient {
    requests: Requests,
    settings: CloudClientSettings,
    request_topic: String,
    response_topic: String,
    shared: Mutex<Shared>,
}

impl CloudClient {
    /// A client that queues requests on `mqtt` directly: no spool, and no view of whether the
    /// session is up.
    pub fn new(mqtt: AsyncClient, settings: CloudClientSettings) -> Self {
        Self::with_requests(Requests::Direct(mqtt), settings)
    }

    /// The client the uplink builds on its own session.
    pub fn over_uplink(outbox: Outbox, settings: CloudClientSettings) -> Self {
        Self::with_requests(Requests::Uplink(outbox), settings)
    }

    fn with_requests(requests: Requests, settings: CloudClientSettings) -> Self {
        Self {
            request_topic: protocol::request_topic(&settings.topic_prefix),
            response_topic: protocol::response_topic(&settings.topic_prefix, &settings.node),
            shared: Mutex::new(Shared {
                breaker: Breaker::new(settings.breaker),
                waiting: HashMap::new(),
                expired: VecDeque::with_capacity(EXPIRED_MEMORY),
                stats: CloudStats::default(),
                fixes_warned: false,
            }),
            requests,
            settings,
        }
    }

    /// The topic answers come back on.
    pub fn response_topic(&self) -> &str {
        &self.response_topic
    }

    /// Subscribes to the response topic. Never waits, so the session's event loop may call it
    /// from its own task on ConnAck.
    pub fn subscribe(&self) -> Result<(), SubscribeError> {
        let mqtt = match &self.requests {
            Requests::Direct(mqtt) => mqtt,
            Requests::Uplink(outbox) => outbox.client(),
        };
        mqtt.try_subscribe(self.response_topic.clone(), QoS::AtLeastOnce)
            .map_err(|_| SubscribeError {
                topic: self.response_topic.clone(),
            })
    }

    pub fn stats(&self) -> CloudStats {
        self.lock().stats
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.lock().breaker.state()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing in the critical sections panics; a poisoned lock still holds consistent data.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `jpeg` (the letterbox content of the frame, see [`HardExampleMeta::for_frame`]) and
    /// waits at most the timeout for the cloud's boxes.
    pub async fn ask(&self, jpeg: Vec<u8>, meta: &HardExampleMeta) -> CloudAnswer {
        let started = Instant::now();
        let admitted = {
            let mut shared = self.lock();
            match shared.breaker.admit(started) {
                Admission::Refused => {
                    shared.stats.breaker_open_skips += 1;
                    None
                }
                admission => {
                    shared.stats.asked += 1;
                    let id = protocol::new_correlation_id();
                    let (tx, rx) = oneshot::channel();
                    shared.waiting.insert(id, tx);
                    Some((InFlight::new(self, id, admission == Admission::Probe), rx))
                }
            }
        };
        let Some((in_flight, answer)) = admitted else {
            if self.spools() {
                self.spool_unwaited(jpeg, meta).await;
            }
            return CloudAnswer::BreakerOpen;
        };
        match self.send(jpeg, meta, &in_flight.id).await {
            Ok(Sent::Waitable) => {}
            Ok(Sent::Spooled) => return in_flight.offline(),
            Ok(Sent::Dropped) => return in_flight.fail(AskError::Offline),
            Err(e) => return in_flight.fail(AskError::Publish(e)),
        }
        match tokio::time::timeout_at(started + self.settings.timeout, answer).await {
            Ok(Ok(Ok(CloudResponse::Result {
                detections,
                replica,
                ..
            }))) => {
                let (detections, fixes) =
                    protocol::checked_boxes(detections, meta.orig_w, meta.orig_h);
                in_flight.succeed(detections, fixes, &replica, started.elapsed())
            }
            Ok(Ok(Ok(CloudResponse::Error { message, replica }))) => {
                in_flight.fail(AskError::Refused { message, replica })
            }
            Ok(Ok(Err(e))) => in_flight.fail(AskError::BadResponse(e)),
            // The waiter is only dropped by `InFlight`, which we still hold.
            Ok(Err(_)) => in_flight.fail(AskError::Publish("request was abandoned".into())),
            Err(_) => in_flight.time_out(),
        }
    }

    /// Whether hard examples go through the uplink's spool.
    fn spools(&self) -> bool {
        matches!(&self.requests, Requests::Uplink(outbox) if outbox.spools(SpoolKind::HardExamples))
    }

    /// Publishes a request: see the module documentation for which way.
    async fn send(
        &self,
        jpeg: Vec<u8>,
        meta: &HardExampleMeta,
        id: &CorrelationId,
    ) -> Result<Sent, String> {
        let properties = protocol::request_properties(
            &self.settings.node,
            meta,
            &self.response_topic,
            id,
            self.settings.timeout,
        );
        let topic = self.request_topic.clone();
        match &self.requests {
            // try_: a full queue means the broker is away; waiting for room would outlast the
            // timeout.
            Requests::Direct(mqtt) => mqtt
                .try_publish_with_properties(topic, QoS::AtLeastOnce, false, jpeg, properties)
                .map(|()| Sent::Waitable)
                .map_err(|e| e.to_string()),
            Requests::Uplink(outbox) => {
                let delivery = outbox
                    .publish(
                        SpoolKind::HardExamples,
                        topic,
                        jpeg,
                        properties.into(),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(match delivery {
                    Delivery::Spooled(_) if !outbox.connected() => Sent::Spooled,
                    Delivery::Spooled(_) | Delivery::Sent => Sent::Waitable,
                    Delivery::Dropped => Sent::Dropped,
                })
            }
        }
    }

    /// Spools a request nobody waits for (the breaker is open), so the cloud still gets the
    /// hard example; its answer will count as late.
    async fn spool_unwaited(&self, jpeg: Vec<u8>, meta: &HardExampleMeta) {
        let id = protocol::new_correlation_id();
        self.lock().expire(id);
        match self.send(jpeg, meta, &id).await {
            Ok(_) => self.lock().stats.spooled_unwaited += 1,
            Err(e) => tracing::warn!(error = %e, "hard example not spooled"),
        }
    }

    /// Takes a publish from the session's event loop. Returns whether it was on the response
    /// topic (and so consumed here).
    pub fn handle_incoming(&self, publish: &Publish) -> bool {
        if publish.topic != self.response_topic.as_bytes() {
            return false;
        }
        let id = protocol::response_correlation(publish);
        let mut shared = self.lock();
        let Some(id) = id else {
            shared.stats.unmatched += 1;
            tracing::debug!("cloud answer without our correlation data, ignored");
            return true;
        };
        if let Some(waiter) = shared.waiting.remove(&id) {
            // The asker may have just timed out and dropped the receiver; it counted that.
            let _ = waiter.send(protocol::parse_response(publish));
        } else if let Some(pos) = shared.expired.iter().position(|e| *e == id) {
            // Forgotten once counted, so a QoS 1 duplicate does not count twice.
            shared.expired.remove(pos);
            shared.stats.late += 1;
        } else {
            shared.stats.unmatched += 1;
        }
        true
    }
}

/// A request between publish and outcome. Dropping it unfinished (the caller cancelled `ask`)
/// forgets the request and, if it was the breaker's probe, counts as a failed probe so the
/// breaker cannot stay half-open forever.
struct InFlight<'a> {
    client: &'a CloudClient,
    id: CorrelationId,
    probe: bool,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn new(client: &'a CloudClient, id: CorrelationId, probe: bool) -> Self {
        Self {
            client,
            id,
            probe,
            finished: false,
        }
    }

    /// Marks the request finished and forgets its waiter; the caller records the outcome.
    fn close(&mut self) -> MutexGuard<'a, Shared> {
        self.finished = true;
        let client = self.client;
        let mut shared = client.lock();
        shared.waiting.remove(&self.id);
        shared
    }

    fn succeed(
        mut self,
        detections: Vec<Detection>,
        fixes: BoxFixes,
        replica: &str,
        rtt: Duration,
    ) -> CloudAnswer {
        let mut shared = self.close();
        shared.stats.answered += 1;
        if !fixes.is_empty() {
            shared.stats.record_fixes(fixes);
            if std::mem::replace(&mut shared.fixes_warned, true) {
                tracing::debug!(replica, ?fixes, "repaired the boxes of a cloud answer");
            } else {
                tracing::warn!(
                    replica,
                    ?fixes,
                    "repaired the boxes of a cloud answer (more are logged at debug level)"
                );
            }
        }
        shared.breaker.record_success();
        CloudAnswer::Answered(detections, rtt)
    }

    fn fail(mut self, error: AskError) -> CloudAnswer {
        let probe = self.probe;
        let mut shared = self.close();
        shared.stats.failed += 1;
        shared.breaker.record_failure(Instant::now(), probe);
        CloudAnswer::Failed(error)
    }

    fn time_out(mut self) -> CloudAnswer {
        let (id, probe) = (self.id, self.probe);
        let mut shared = self.close();
        shared.expire(id);
        shared.stats.timed_out += 1;
        shared.breaker.record_failure(Instant::now(), probe);
        CloudAnswer::Late
    }

    /// Spooled while the session is down: no answer can come in time, so none is waited for;
    /// it will count as late. A failure to the breaker: the cloud cannot be reached.
    fn offline(self) -> CloudAnswer {
        let (client, id) = (self.client, self.id);
        let answer = self.fail(AskError::Offline);
        let mut shared = client.lock();
        shared.expire(id);
        shared.stats.spooled_unwaited += 1;
        answer
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        if self.probe {
            shared.breaker.record_failure(Instant::now(), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{EventLoop, MqttOptions};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    /// A client whose requests pile up in the (never polled) event loop's queue.
    fn client() -> (CloudClient, EventLoop) {
        let (mqtt, eventloop) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 10);
        let settings = CloudClientSettings {
            node: "edge-a".into(),
            topic_prefix: "helmetd/v1".into(),
            timeout: TIMEOUT,
            breaker: BreakerSettings::default(),
        };
        (CloudClient::new(mqtt, settings), eventloop)
    }

    fn meta() -> HardExampleMeta {
        HardExampleMeta {
            camera: "gate-1".into(),
            seq: 1,
            capture_time: SystemTime::UNIX_EPOCH,
            edge_result: Vec::new(),
            orig_w: 1280,
            orig_h: 720,
            scale: 0.5,
        }
    }

    /// The id of the one request waiting for its answer.
    fn pending(client: &CloudClient) -> CorrelationId {
        let shared = client.lock();
        assert_eq!(shared.waiting.len(), 1);
        *shared.waiting.keys().next().unwrap()
    }

    fn answer(client: &CloudClient, id: Option<CorrelationId>, body: Vec<u8>) -> Publish {
        let props = PublishProperties {
            content_type: Some(protocol::JSON_CONTENT_TYPE.into()),
            correlation_data: id.map(|id| id.to_vec().into()),
            ..Default::default()
        };
        Publish::new(client.response_topic(), QoS::AtLeastOnce, body, Some(props))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_is_returned_with_its_round_trip() {
        let (client, _eventloop) = client();
        let meta = meta();
        let boxes = vec![Detection {
            x1: 1.0,
            y1: 2.0,
            x2: 3.0,
            y2: 4.0,
            score: 0.5,
            class: 1,
        }];
        let (outcome, consumed) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let body = protocol::result_json(&boxes, "m", 1.0, "r");
            client.handle_incoming(&answer(&client, Some(pending(&client)), body))
        });
        assert!(consumed);
        let CloudAnswer::Answered(detections, rtt) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(detections, boxes);
        assert_eq!(rtt, Duration::from_millis(250));
        let stats = client.stats();
        assert_eq!((stats.asked, stats.answered, stats.failed), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_cost_the_timeout_then_the_breaker_makes_asking_free() {
        let (client, _eventloop) = client();
        for _ in 0..3 {
            let t0 = Instant::now();
            assert!(matches!(
                client.ask(vec![0xFF, 0xD8], &meta()).await,
                CloudAnswer::Late
            ));
            assert_eq!(t0.elapsed(), TIMEOUT);
        }
        let t0 = Instant::now();
        assert!(matches!(
            client.ask(vec![0xFF, 0xD8], &meta()).await,
            CloudAnswer::BreakerOpen
        ));
        assert_eq!(t0.elapsed(), Duration::ZERO);

        // The late answer to the first request is counted, once, and not returned.
        let first = *client.lock().expired.front().unwrap();
        let late = answer(&client, Some(first), protocol::error_json("x", "r"));
        assert!(client.handle_incoming(&late));
        assert!(client.handle_incoming(&late));
        assert!(client.handle_incoming(&answer(&client, None, Vec::new())));
        let other_topic =
            Publish::new("helmetd/v1/edge-b/cloud-result", QoS::AtLeastOnce, "", None);
        assert!(!client.handle_incoming(&other_topic));
        let stats = client.stats();
        assert_eq!(
            (stats.asked, stats.timed_out, stats.breaker_open_skips),
            (3, 3, 1)
        );
        assert_eq!((stats.late, stats.unmatched), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_count_as_failures_and_a_successful_probe_closes() {
        let (client, _eventloop) = client();
        let meta = meta();
        for _ in 0..3 {
            let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
                let body = protocol::error_json("overloaded", "r");
                client.handle_incoming(&answer(&client, Some(pending(&client)), body))
            });
            assert!(
                matches!(outcome, CloudAnswer::Failed(AskError::Refused { .. })),
                "{outcome:?}"
            );
        }
        assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            let body = protocol::result_json(&[], "m", 1.0, "r");
            client.handle_incoming(&answer(&client, Some(pending(&client)), body))
        });
        assert!(matches!(outcome, CloudAnswer::Answered(..)), "{outcome:?}");
        assert_eq!(client.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_reopens_the_breaker() {
        let (client, _eventloop) = client();
        for _ in 0..3 {
            client.ask(vec![0xFF, 0xD8], &meta()).await;
        }
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            client.ask(vec![0xFF, 0xD8], &meta()),
        )
        .await;
        assert!(cancelled.is_err());
        assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
        assert!(client.lock().waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_with_ids_we_never_issued_are_not_used() {
        let (client, _eventloop) = client();
        let meta = meta();
        let absurd = [Detection {
            x1: -1e30,
            y1: 0.0,
            x2: 1e30,
            y2: 1e30,
            score: 1.0,
            class: 1,
        }];
        let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            // What a forger who saw this request's id would guess for its neighbours.
            let seen = pending(&client);
            for byte in [7, 15] {
                let mut guess = seen;
                guess[byte] = guess[byte].wrapping_add(1);
                let body = protocol::result_json(&absurd, "m", 1.0, "rogue");
                assert!(client.handle_incoming(&answer(&client, Some(guess), body)));
            }
        });
        assert!(matches!(outcome, CloudAnswer::Late), "{outcome:?}");
        let stats = client.stats();
        assert_eq!((stats.answered, stats.unmatched), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_boxes_are_clipped_to_the_frame_and_counted() {
        let (client, _eventloop) = client();
        let meta = meta();
        let boxes = [
            Detection {
                x1: -50.0,
                y1: 10.0,
                x2: 1e30,
                y2: 700.0,
                score: 0.9,
                class: 1,
            },
            Detection {
                x1: 5000.0,
                y1: 10.0,
                x2: 6000.0,
                y2: 20.0,
                score: 0.9,
                class: 1,
            },
        ];
        let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            let body = protocol::result_json(&boxes, "m", 1.0, "r");
            client.handle_incoming(&answer(&client, Some(pending(&client)), body))
        });
        let CloudAnswer::Answered(detections, _) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            detections,
            [Detection {
                x1: 0.0,
                y1: 10.0,
                x2: 1280.0,
                y2: 700.0,
                score: 0.9,
                class: 1
            }]
        );
        let stats = client.stats();
        assert_eq!(
            (
                stats.boxes_clipped,
                stats.boxes_dropped,
                stats.boxes_over_cap
            ),
            (1, 1, 0)
        );
    }
}
