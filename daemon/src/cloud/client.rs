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

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use helmet_pipelines::Detection;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::breaker::{Admission, Breaker, BreakerSettings, BreakerState};
use super::protocol::{
    self, CloudResponse, CorrelationId, CorrelationIds, HardExampleMeta, ResponseError,
};

/// Ids of timed-out requests remembered to tell a late answer from a stray one.
const EXPIRED_MEMORY: usize = 64;

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
    /// The MQTT session's request queue is full or gone (the broker is unreachable).
    #[error("cannot queue the request: {0}")]
    Publish(String),
    #[error("cloud replica {replica:?} refused: {message}")]
    Refused { message: String, replica: String },
    #[error("unreadable answer: {0}")]
    BadResponse(#[from] ResponseError),
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
    /// Messages on the response topic that matched no request we remember.
    pub unmatched: u64,
}

type Waiter = oneshot::Sender<Result<CloudResponse, ResponseError>>;

struct Shared {
    breaker: Breaker,
    waiting: HashMap<CorrelationId, Waiter>,
    expired: VecDeque<CorrelationId>,
    stats: CloudStats,
}

pub struct CloudClient {
    mqtt: AsyncClient,
    settings: CloudClientSettings,
    request_topic: String,
    response_topic: String,
    ids: CorrelationIds,
    shared: Mutex<Shared>,
}

impl CloudClient {
    pub fn new(mqtt: AsyncClient, settings: CloudClientSettings) -> Self {
        Self {
            request_topic: protocol::request_topic(&settings.topic_prefix),
            response_topic: protocol::response_topic(&settings.topic_prefix, &settings.node),
            shared: Mutex::new(Shared {
                breaker: Breaker::new(settings.breaker),
                waiting: HashMap::new(),
                expired: VecDeque::with_capacity(EXPIRED_MEMORY),
                stats: CloudStats::default(),
            }),
            ids: CorrelationIds::new(),
            mqtt,
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
        self.mqtt
            .try_subscribe(self.response_topic.clone(), QoS::AtLeastOnce)
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
        let (in_flight, answer) = {
            let mut shared = self.lock();
            let probe = match shared.breaker.admit(started) {
                Admission::Refused => {
                    shared.stats.breaker_open_skips += 1;
                    return CloudAnswer::BreakerOpen;
                }
                Admission::Probe => true,
                Admission::Allowed => false,
            };
            shared.stats.asked += 1;
            let id = self.ids.next_id();
            let (tx, rx) = oneshot::channel();
            shared.waiting.insert(id, tx);
            (InFlight::new(self, id, probe), rx)
        };
        let properties = protocol::request_properties(
            &self.settings.node,
            meta,
            &self.response_topic,
            &in_flight.id,
            self.settings.timeout,
        );
        // try_: a full queue means the broker is away; waiting for room would outlast the timeout.
        let published = self.mqtt.try_publish_with_properties(
            self.request_topic.clone(),
            QoS::AtLeastOnce,
            false,
            jpeg,
            properties,
        );
        if let Err(e) = published {
            return in_flight.fail(AskError::Publish(e.to_string()));
        }
        match tokio::time::timeout_at(started + self.settings.timeout, answer).await {
            Ok(Ok(Ok(CloudResponse::Result { detections, .. }))) => {
                in_flight.succeed(detections, started.elapsed())
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

    fn succeed(mut self, detections: Vec<Detection>, rtt: Duration) -> CloudAnswer {
        self.finished = true;
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        shared.stats.answered += 1;
        shared.breaker.record_success();
        CloudAnswer::Answered(detections, rtt)
    }

    fn fail(mut self, error: AskError) -> CloudAnswer {
        self.finished = true;
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        shared.stats.failed += 1;
        shared.breaker.record_failure(Instant::now(), self.probe);
        CloudAnswer::Failed(error)
    }

    fn time_out(mut self) -> CloudAnswer {
        self.finished = true;
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        if shared.expired.len() == EXPIRED_MEMORY {
            shared.expired.pop_front();
        }
        shared.expired.push_back(self.id);
        shared.stats.timed_out += 1;
        shared.breaker.record_failure(Instant::now(), self.probe);
        CloudAnswer::Late
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

    /// Reserves one correlation id so the test knows the salt; requests then get ids 1, 2, …
    fn reserve(client: &CloudClient) -> CorrelationId {
        client.ids.next_id()
    }

    /// The id of the `n`-th request (from 1) after `reserved`.
    fn nth_id(reserved: &CorrelationId, n: u64) -> CorrelationId {
        let mut id = *reserved;
        id[..8].copy_from_slice(&n.to_be_bytes());
        id
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
        let id = nth_id(&reserve(&client), 1);
        let boxes = vec![Detection {
            x1: 1.0,
            y1: 2.0,
            x2: 3.0,
            y2: 4.0,
            score: 0.5,
            class: 1,
        }];
        let reply = answer(
            &client,
            Some(id),
            protocol::result_json(&boxes, "m", 1.0, "r"),
        );
        let (outcome, consumed) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            client.handle_incoming(&reply)
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
        let reserved = reserve(&client);
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
        let late = answer(
            &client,
            Some(nth_id(&reserved, 1)),
            protocol::error_json("x", "r"),
        );
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
        let (meta, reserved) = (meta(), reserve(&client));
        for n in 1..=3 {
            let refusal = answer(
                &client,
                Some(nth_id(&reserved, n)),
                protocol::error_json("overloaded", "r"),
            );
            let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
                client.handle_incoming(&refusal)
            });
            assert!(
                matches!(outcome, CloudAnswer::Failed(AskError::Refused { .. })),
                "{outcome:?}"
            );
        }
        assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        let reply = answer(
            &client,
            Some(nth_id(&reserved, 4)),
            protocol::result_json(&[], "m", 1.0, "r"),
        );
        let (outcome, _) = tokio::join!(client.ask(vec![0xFF, 0xD8], &meta), async {
            client.handle_incoming(&reply)
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
}
