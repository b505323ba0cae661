//! The edge's way to `helmetd cloud` over MQTT 5: a JPEG of the letterbox content out on the
//! request topic, the boxes back on this node's response topic ([`super::protocol`]).
//!
//! `MqttClient` does not own an MQTT connection. Over the uplink ([`MqttClient::over_uplink`])
//! the daemon's one session carries alerts, status, the spool and this: the uplink subscribes to
//! the response topic on every connect (the [`Subscription`] from
//! [`MqttSettings::subscription`], which [`super::uplink_settings`] adds) and hands every publish
//! on it to [`MqttClient::handle_incoming`]. [`MqttClient::new`] queues on a caller's own
//! session instead, whose event loop does both itself.
//!
//! The timeout, the breaker, the pacer and the common counters are the
//! [`JointClient`](super::JointClient)'s. What only MQTT has stays here: correlation ids, and the
//! memory of ids no longer waited for, to tell a late answer from a stray or a forgery. An answer
//! to a request that timed out is the guard's sign of a slow (not a dead) cloud, so it is
//! reported with the load its replica gave ([`LinkStats::last_late`]).
//!
//! # Through the uplink's spool
//!
//! With `hard_examples` in `mqtt.spool_kinds`, every hard example goes into the uplink's
//! crash-safe spool, properties and all, and so reaches the broker even across an outage or a
//! crash. The spool write counts against the timeout. A request only waits for its answer while
//! it can come: while the session is down, or the breaker is open, the request is still spooled
//! but `ask` returns at once (`Failed(Offline)` or `BreakerOpen`). Either way its correlation id
//! is remembered as expired, so the answer to the replayed request counts as late and is not
//! used. Without `hard_examples` in the list a request is sent once, and while the session is
//! down it is not sent at all (`Failed(Offline)`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use helmet_pipelines::output::encode_jpeg;
use image::RgbImage;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;

use super::protocol::{self, CloudResponse, CorrelationId, HardExampleMeta, ResponseError};
use super::{AskError, BigModel, LateAnswer, LinkStats, Reply};
use crate::config::{Config, SpoolKind};
use crate::uplink::{Delivery, IncomingError, Outbox, Subscription, UplinkHandle};

/// Ids of requests no longer waited for, remembered to tell a late answer from a stray one.
/// Sized for the hard examples spooled during a long outage, which all get answered late once
/// the spool drains (16 bytes each).
const EXPIRED_MEMORY: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// This gateway's name: part of the response topic and sent with every request.
    pub node: String,
    pub topic_prefix: String,
    /// The guard's timeout, sent as the request's message expiry: later answers are useless.
    pub timeout: Duration,
    /// `cloud.jpeg_quality` of the JPEG sent.
    pub jpeg_quality: u8,
}

impl MqttSettings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            node: cfg.node_name(),
            topic_prefix: cfg.mqtt.topic_prefix.clone(),
            timeout: Duration::from_millis(cfg.cloud.timeout_ms),
            jpeg_quality: cfg.cloud.jpeg_quality,
        }
    }

    /// What the uplink's session must subscribe to for the answers.
    pub fn subscription(&self) -> Subscription {
        Subscription {
            topic: protocol::response_topic(&self.topic_prefix, &self.node),
            max_payload: protocol::MAX_RESPONSE_BYTES,
        }
    }
}

/// The session's request queue is full or closed: the caller retries on its next ConnAck.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue the subscription to {topic}: the MQTT request queue is full or closed")]
pub struct SubscribeError {
    pub topic: String,
}

/// The uplink was not opened to hand over this client's answers.
#[derive(Debug, thiserror::Error)]
#[error(
    "cloud answers on {topic} cannot arrive (open the uplink with joint::uplink_settings): {source}"
)]
pub struct OverUplinkError {
    pub topic: String,
    #[source]
    pub source: IncomingError,
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

/// Why a request is no longer waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// It was, until the timeout (or the caller gave up): its answer says the cloud is slow.
    TimedOut,
    /// It never was (spooled while offline or with the breaker open): its answer says nothing
    /// about speed.
    Unwaited,
}

/// Who an answer is for.
enum Addressee {
    Waiter(Waiter),
    Expired(Expiry),
    Nobody,
}

struct Shared {
    waiting: HashMap<CorrelationId, Waiter>,
    expired: VecDeque<(CorrelationId, Expiry)>,
    stats: LinkStats,
}

impl Shared {
    /// Remembers a request no longer waited for, so its answer counts as late.
    fn expire(&mut self, id: CorrelationId, why: Expiry) {
        if self.expired.len() == EXPIRED_MEMORY {
            self.expired.pop_front();
        }
        self.expired.push_back((id, why));
    }

    /// Forgets who `id` was for once told: a QoS 1 duplicate then counts as unmatched.
    fn addressee(&mut self, id: &CorrelationId) -> Addressee {
        if let Some(waiter) = self.waiting.remove(id) {
            return Addressee::Waiter(waiter);
        }
        match self.expired.iter().position(|(e, _)| e == id) {
            Some(pos) => self
                .expired
                .remove(pos)
                .map_or(Addressee::Nobody, |(_, why)| Addressee::Expired(why)),
            None => Addressee::Nobody,
        }
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

pub struct MqttClient {
    requests: Requests,
    settings: MqttSettings,
    request_topic: String,
    response_topic: String,
    shared: Mutex<Shared>,
}

impl MqttClient {
    /// A client that queues requests on `mqtt` directly: no spool, and no view of whether the
    /// session is up. The caller subscribes ([`subscribe`](Self::subscribe)) and hands over the
    /// publishes ([`handle_incoming`](Self::handle_incoming)).
    pub fn new(mqtt: AsyncClient, settings: MqttSettings) -> Self {
        Self::with_requests(Requests::Direct(mqtt), settings)
    }

    /// A client on the uplink's session, which must have been opened with its
    /// [`MqttSettings::subscription`]. The uplink holds it only weakly.
    pub fn over_uplink(
        uplink: &UplinkHandle,
        settings: MqttSettings,
    ) -> Result<Arc<Self>, OverUplinkError> {
        let client = Arc::new(Self::with_requests(
            Requests::Uplink(uplink.outbox().clone()),
            settings,
        ));
        // Weak: the client holds the outbox, which holds the handler.
        let weak = Arc::downgrade(&client);
        let handler = Box::new(move |publish: &Publish| {
            if let Some(client) = weak.upgrade() {
                client.handle_incoming(publish);
            }
        });
        uplink
            .on_incoming(&client.response_topic, handler)
            .map_err(|source| OverUplinkError {
                topic: client.response_topic.clone(),
                source,
            })?;
        Ok(client)
    }

    fn with_requests(requests: Requests, settings: MqttSettings) -> Self {
        Self {
            request_topic: protocol::request_topic(&settings.topic_prefix),
            response_topic: protocol::response_topic(&settings.topic_prefix, &settings.node),
            shared: Mutex::new(Shared {
                waiting: HashMap::new(),
                expired: VecDeque::with_capacity(EXPIRED_MEMORY),
                stats: LinkStats::default(),
            }),
            requests,
            settings,
        }
    }

    /// The topic answers come back on.
    pub fn response_topic(&self) -> &str {
        &self.response_topic
    }

    /// Subscribes a client made with [`new`](Self::new) to the response topic. Never waits, so
    /// the session's event loop may call it from its own task on ConnAck. Over the uplink the
    /// uplink subscribes itself, and this does nothing.
    pub fn subscribe(&self) -> Result<(), SubscribeError> {
        let Requests::Direct(mqtt) = &self.requests else {
            return Ok(());
        };
        mqtt.try_subscribe(self.response_topic.clone(), QoS::AtLeastOnce)
            .map_err(|_| SubscribeError {
                topic: self.response_topic.clone(),
            })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing in the critical sections panics; a poisoned lock still holds consistent data.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request, waited for until its answer comes or the guard drops this future.
    async fn request(&self, image: &RgbImage, meta: &HardExampleMeta) -> Result<Reply, AskError> {
        let jpeg = encode_jpeg(image, self.settings.jpeg_quality)?;
        let (tx, answer) = oneshot::channel();
        let pending = Pending::new(self, tx);
        match self.send(jpeg, meta, &pending.id).await {
            Ok(Sent::Waitable) => {}
            Ok(Sent::Spooled) => {
                pending.offline();
                return Err(AskError::Offline);
            }
            Ok(Sent::Dropped) => {
                pending.forget();
                return Err(AskError::Offline);
            }
            Err(e) => {
                pending.forget();
                return Err(AskError::Publish(e));
            }
        }
        let answer = answer.await;
        pending.forget();
        match answer {
            Ok(Ok(CloudResponse::Result {
                detections,
                replica,
                load,
                ..
            })) => {
                let (boxes, fixes) = protocol::checked_boxes(detections, meta.orig_w, meta.orig_h);
                Ok(Reply {
                    boxes,
                    fixes,
                    source: replica,
                    load,
                })
            }
            Ok(Ok(CloudResponse::Error {
                message,
                replica,
                load,
            })) => Err(AskError::Refused {
                message,
                replica,
                load,
            }),
            Ok(Err(e)) => Err(AskError::BadResponse(e)),
            // The waiter is only dropped by `Pending`, which we still hold.
            Err(_) => Err(AskError::Publish("request was abandoned".into())),
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
    async fn spool_unwaited(&self, image: &RgbImage, meta: &HardExampleMeta) {
        let jpeg = match encode_jpeg(image, self.settings.jpeg_quality) {
            Ok(jpeg) => jpeg,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a hard example");
                return;
            }
        };
        let id = protocol::new_correlation_id();
        self.lock().expire(id, Expiry::Unwaited);
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
        let Some(id) = protocol::response_correlation(publish) else {
            self.lock().stats.unmatched += 1;
            tracing::debug!("cloud answer without our correlation data, ignored");
            return true;
        };
        let addressee = self.lock().addressee(&id);
        match addressee {
            // The asker may have just timed out and dropped the receiver; the guard counted that.
            Addressee::Waiter(waiter) => {
                let _ = waiter.send(protocol::parse_response(publish));
            }
            Addressee::Expired(Expiry::Unwaited) => self.lock().stats.late += 1,
            Addressee::Expired(Expiry::TimedOut) => {
                // Read only for the load; parsed outside the lock (up to 64 KiB of JSON).
                let load = protocol::parse_response(publish)
                    .ok()
                    .and_then(|r| r.load());
                let mut shared = self.lock();
                shared.stats.late += 1;
                shared.stats.late_after_timeout += 1;
                shared.stats.last_late = Some(LateAnswer {
                    at: tokio::time::Instant::now(),
                    load,
                });
            }
            Addressee::Nobody => self.lock().stats.unmatched += 1,
        }
        true
    }
}

impl BigModel for MqttClient {
    fn ask<'a>(
        &'a self,
        image: &'a RgbImage,
        meta: &'a HardExampleMeta,
    ) -> BoxFuture<'a, Result<Reply, AskError>> {
        Box::pin(self.request(image, meta))
    }

    fn skipped<'a>(&'a self, image: &'a RgbImage, meta: &'a HardExampleMeta) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.spools() {
                self.spool_unwaited(image, meta).await;
            }
        })
    }

    fn link_stats(&self) -> LinkStats {
        self.lock().stats
    }
}

/// A request between publish and outcome, its waiter registered under a fresh id. Dropped
/// unfinished (the guard's timeout, or a cancelled `ask`) it is no longer waited for: the id is
/// remembered as expired, so its answer counts as late.
struct Pending<'a> {
    client: &'a MqttClient,
    id: CorrelationId,
    finished: bool,
}

impl<'a> Pending<'a> {
    fn new(client: &'a MqttClient, waiter: Waiter) -> Self {
        let id = protocol::new_correlation_id();
        client.lock().waiting.insert(id, waiter);
        Self {
            client,
            id,
            finished: false,
        }
    }

    /// Finished: its waiter is answered or no answer can come.
    fn forget(mut self) {
        self.finished = true;
        self.client.lock().waiting.remove(&self.id);
    }

    /// Spooled while the session is down: no answer can come in time, so none is waited for;
    /// it will count as late.
    fn offline(mut self) {
        self.finished = true;
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        shared.expire(self.id, Expiry::Unwaited);
        shared.stats.spooled_unwaited += 1;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut shared = self.client.lock();
        shared.waiting.remove(&self.id);
        shared.expire(self.id, Expiry::TimedOut);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use helmet_pipelines::Detection;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{EventLoop, MqttOptions};
    use tokio::time::Instant;

    use super::*;
    use crate::config::{Config, MqttConfig};
    use crate::joint::{
        BreakerSettings, BreakerState, CloudAnswer, CloudLoad, JointClient, JointSettings,
    };
    use crate::spool::FsyncPolicy;
    use crate::uplink::{SPOOL_ID_PROPERTY, Uplink, UplinkSettings};

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn settings() -> MqttSettings {
        MqttSettings {
            node: "edge-a".into(),
            topic_prefix: "helmetd/v1".into(),
            timeout: TIMEOUT,
            jpeg_quality: 90,
        }
    }

    fn guarded(mqtt: Arc<MqttClient>) -> JointClient {
        JointClient::new(
            mqtt,
            JointSettings {
                timeout: TIMEOUT,
                breaker: BreakerSettings::default(),
            },
        )
    }

    /// A client whose requests pile up in the (never polled) event loop's queue, and its guard.
    fn client() -> (Arc<MqttClient>, JointClient, EventLoop) {
        // Room for every request a test sends: a full queue would be a publish failure.
        let (mqtt, eventloop) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 1000);
        let client = Arc::new(MqttClient::new(mqtt, settings()));
        (client.clone(), guarded(client), eventloop)
    }

    fn image() -> RgbImage {
        RgbImage::new(8, 8)
    }

    fn meta(seq: u64) -> HardExampleMeta {
        HardExampleMeta {
            camera: "gate-1".into(),
            seq,
            capture_time: SystemTime::UNIX_EPOCH,
            edge_result: Vec::new(),
            orig_w: 1280,
            orig_h: 720,
            scale: 0.5,
        }
    }

    /// The id of the one request waiting for its answer.
    fn pending(client: &MqttClient) -> CorrelationId {
        let shared = client.lock();
        assert_eq!(shared.waiting.len(), 1);
        *shared.waiting.keys().next().unwrap()
    }

    fn answer(client: &MqttClient, id: Option<CorrelationId>, body: Vec<u8>) -> Publish {
        let props = PublishProperties {
            content_type: Some(protocol::JSON_CONTENT_TYPE.into()),
            correlation_data: id.map(|id| id.to_vec().into()),
            ..Default::default()
        };
        Publish::new(client.response_topic(), QoS::AtLeastOnce, body, Some(props))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_is_returned_with_its_round_trip() {
        let (client, guard, _eventloop) = client();
        let (image, meta) = (image(), meta(1));
        let boxes = vec![Detection {
            x1: 1.0,
            y1: 2.0,
            x2: 3.0,
            y2: 4.0,
            score: 0.5,
            class: 1,
        }];
        let (outcome, consumed) = tokio::join!(guard.ask(&image, &meta), async {
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
        let stats = guard.stats();
        assert_eq!((stats.asked, stats.answered, stats.failed), (1, 1, 0));
        assert!(client.lock().waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_cost_the_timeout_then_the_breaker_makes_asking_free() {
        let (client, guard, _eventloop) = client();
        for seq in 0..3 {
            let t0 = Instant::now();
            assert!(matches!(
                guard.ask(&image(), &meta(seq)).await,
                CloudAnswer::Late
            ));
            assert_eq!(t0.elapsed(), TIMEOUT);
        }
        let t0 = Instant::now();
        assert!(matches!(
            guard.ask(&image(), &meta(3)).await,
            CloudAnswer::BreakerOpen
        ));
        assert_eq!(t0.elapsed(), Duration::ZERO);

        // The late answer to the first request is counted, once, and not returned.
        let (first, why) = *client.lock().expired.front().unwrap();
        assert_eq!(why, Expiry::TimedOut);
        let late = answer(&client, Some(first), protocol::error_json("x", "r"));
        assert!(client.handle_incoming(&late));
        assert!(client.handle_incoming(&late));
        assert!(client.handle_incoming(&answer(&client, None, Vec::new())));
        let other_topic =
            Publish::new("helmetd/v1/edge-b/cloud-result", QoS::AtLeastOnce, "", None);
        assert!(!client.handle_incoming(&other_topic));
        let stats = guard.stats();
        assert_eq!(
            (stats.asked, stats.timed_out, stats.breaker_open_skips),
            (3, 3, 1)
        );
        assert_eq!((stats.late, stats.unmatched), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_count_as_failures_and_a_successful_probe_closes() {
        let (client, guard, _eventloop) = client();
        let (image, meta) = (image(), meta(1));
        for _ in 0..3 {
            let (outcome, _) = tokio::join!(guard.ask(&image, &meta), async {
                let body = protocol::error_json("inference failed", "r");
                client.handle_incoming(&answer(&client, Some(pending(&client)), body))
            });
            assert!(
                matches!(outcome, CloudAnswer::Failed(AskError::Refused { .. })),
                "{outcome:?}"
            );
        }
        assert!(matches!(guard.breaker_state(), BreakerState::Open { .. }));
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        let (outcome, _) = tokio::join!(guard.ask(&image, &meta), async {
            let body = protocol::result_json(&[], "m", 1.0, "r");
            client.handle_incoming(&answer(&client, Some(pending(&client)), body))
        });
        assert!(matches!(outcome, CloudAnswer::Answered(..)), "{outcome:?}");
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
    }

    /// Asks once; `reply` (if any) is what the cloud sends back after `after`.
    async fn ask_answered(
        client: &MqttClient,
        guard: &JointClient,
        after: Duration,
        reply: Option<Vec<u8>>,
    ) -> CloudAnswer {
        let (image, meta) = (image(), meta(1));
        let (outcome, ()) = tokio::join!(guard.ask(&image, &meta), async {
            tokio::time::sleep(after).await;
            if let Some(body) = reply {
                let waiting = client.lock().waiting.keys().next().copied();
                if let Some(id) = waiting {
                    client.handle_incoming(&answer(client, Some(id), body));
                }
            }
        });
        outcome
    }

    fn busy(queue: u32, infer_ms: u64) -> Option<CloudLoad> {
        Some(CloudLoad {
            queue,
            recent_infer: Duration::from_millis(infer_ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_cloud_paces_the_client_and_leaves_the_breaker_closed() {
        let (client, guard, _eventloop) = client();
        let overloaded = || protocol::loaded_error_json(protocol::OVERLOADED, "r", busy(4, 500));
        for _ in 0..3 {
            let outcome = ask_answered(&client, &guard, Duration::ZERO, Some(overloaded())).await;
            assert!(
                matches!(outcome, CloudAnswer::Failed(AskError::Refused { .. })),
                "{outcome:?}"
            );
            // Asked again at once: the first refusal set the pace, so these stay local.
            let outcome = ask_answered(&client, &guard, Duration::ZERO, None).await;
            assert!(matches!(outcome, CloudAnswer::Paced), "{outcome:?}");
            // Long enough for the next request at the lowest pace so far.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        let pacing = guard.pacing();
        assert_eq!(pacing.load, busy(4, 500));
        let rate = pacing.admitted_per_s.unwrap();
        assert!(rate > 0.0 && rate <= 0.4, "{rate}");
        let stats = guard.stats();
        assert_eq!(
            (stats.asked, stats.failed, stats.paced, stats.slow),
            (3, 3, 3, 3)
        );
        assert_eq!(stats.breaker_open_skips, 0);

        // The queue drained: answers in time raise the pace until pacing ends.
        let mut answered = 0;
        while guard.pacing().admitted_per_s.is_some() {
            let body = protocol::loaded_result_json(&[], "m", 1.0, "r", busy(0, 200));
            match ask_answered(&client, &guard, Duration::from_millis(250), Some(body)).await {
                CloudAnswer::Answered(..) => answered += 1,
                CloudAnswer::Paced => {}
                other => panic!("{other:?}"),
            }
            assert!(answered < 200, "{:?}", guard.pacing());
        }
        assert!(answered > 3, "{answered}");
    }

    #[tokio::test(start_paused = true)]
    async fn late_answers_pace_instead_of_opening_the_breaker() {
        let (client, guard, _eventloop) = client();
        for round in 0..6u64 {
            // Nobody answers within the timeout...
            let outcome = ask_answered(&client, &guard, Duration::ZERO, None).await;
            assert!(
                matches!(outcome, CloudAnswer::Late | CloudAnswer::Paced),
                "{round}: {outcome:?}"
            );
            // ...but the answer comes, late, with a load that explains why.
            let expired = client.lock().expired.back().copied();
            if let Some((id, Expiry::TimedOut)) = expired {
                let body = protocol::loaded_result_json(&[], "m", 1.0, "r", busy(3, 600));
                assert!(client.handle_incoming(&answer(&client, Some(id), body)));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        let stats = guard.stats();
        assert!(stats.late >= 2 && stats.slow >= 2, "{stats:?}");
        assert!(stats.paced >= 1, "{stats:?}");
        assert_eq!(guard.pacing().load, busy(3, 600));

        // Silence with no sign of life at all is an outage: the breaker opens.
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            outcomes.push(ask_answered(&client, &guard, Duration::ZERO, None).await);
            if matches!(guard.breaker_state(), BreakerState::Open { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert!(
            matches!(guard.breaker_state(), BreakerState::Open { .. }),
            "{outcomes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_reopens_the_breaker() {
        let (client, guard, _eventloop) = client();
        for seq in 0..3 {
            guard.ask(&image(), &meta(seq)).await;
        }
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        let (image, meta) = (image(), meta(3));
        let cancelled =
            tokio::time::timeout(Duration::from_millis(10), guard.ask(&image, &meta)).await;
        assert!(cancelled.is_err());
        assert!(matches!(guard.breaker_state(), BreakerState::Open { .. }));
        assert!(client.lock().waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_with_ids_we_never_issued_are_not_used() {
        let (client, guard, _eventloop) = client();
        let (image, meta) = (image(), meta(1));
        let absurd = [Detection {
            x1: -1e30,
            y1: 0.0,
            x2: 1e30,
            y2: 1e30,
            score: 1.0,
            class: 1,
        }];
        let (outcome, _) = tokio::join!(guard.ask(&image, &meta), async {
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
        let stats = guard.stats();
        assert_eq!((stats.answered, stats.unmatched), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_boxes_are_clipped_to_the_frame_and_counted() {
        let (client, guard, _eventloop) = client();
        let (image, meta) = (image(), meta(1));
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
        let (outcome, _) = tokio::join!(guard.ask(&image, &meta), async {
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
        let stats = guard.stats();
        assert_eq!(
            (
                stats.boxes_clipped,
                stats.boxes_dropped,
                stats.boxes_over_cap
            ),
            (1, 1, 0)
        );
    }

    /// An uplink whose event loop never runs (the session stays down), subscribed for this
    /// client's answers, and the client on it.
    fn offline_uplink(
        spool_dir: &std::path::Path,
        kinds: Vec<SpoolKind>,
    ) -> (Uplink, UplinkHandle, Arc<MqttClient>) {
        let mqtt = MqttConfig {
            url: "mqtt://127.0.0.1:1".into(),
            spool_dir: spool_dir.to_path_buf(),
            spool_kinds: kinds,
            ..Config::embedded_default().unwrap().mqtt
        };
        let mut uplink_settings = UplinkSettings::from_mqtt(&mqtt, "edge-a").unwrap();
        uplink_settings.fsync = FsyncPolicy::Never;
        uplink_settings.subscription = Some(settings().subscription());
        let (uplink, handle) = Uplink::open(uplink_settings).unwrap();
        let client = MqttClient::over_uplink(&handle, settings()).unwrap();
        (uplink, handle, client)
    }

    #[tokio::test]
    async fn the_uplink_must_subscribe_for_the_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mqtt = MqttConfig {
            url: "mqtt://127.0.0.1:1".into(),
            spool_dir: dir.path().to_path_buf(),
            ..Config::embedded_default().unwrap().mqtt
        };
        let (_uplink, handle) =
            Uplink::open(UplinkSettings::from_mqtt(&mqtt, "edge-a").unwrap()).unwrap();
        let error = MqttClient::over_uplink(&handle, settings()).err().unwrap();
        assert!(matches!(error.source, IncomingError::NoSubscription));

        let dir = tempfile::tempdir().unwrap();
        let (_uplink, handle, _client) = offline_uplink(dir.path(), Vec::new());
        let error = MqttClient::over_uplink(&handle, settings()).err().unwrap();
        assert!(matches!(error.source, IncomingError::Taken), "{error}");
    }

    #[tokio::test]
    async fn hard_examples_not_spooled_are_not_sent_while_offline() {
        let dir = tempfile::tempdir().unwrap();
        let (_uplink, handle, client) = offline_uplink(dir.path(), vec![SpoolKind::Alerts]);
        let guard = guarded(client);
        // Not spooled, so not sent at all while offline: the cloud is asked nothing and not
        // waited for.
        let t0 = std::time::Instant::now();
        let answer = guard.ask(&image(), &meta(1)).await;
        assert!(
            matches!(answer, CloudAnswer::Failed(AskError::Offline)),
            "{answer:?}"
        );
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert_eq!(handle.stats().once_dropped, 1);
        assert_eq!(guard.stats().spooled_unwaited, 0);
    }

    /// A hard example's request properties, as the client makes them, come out of the spool as
    /// they went in (plus the spool id), so `helmetd cloud` can answer a replayed request.
    #[tokio::test]
    async fn hard_example_properties_survive_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (_uplink, handle, _client) = offline_uplink(dir.path(), vec![SpoolKind::HardExamples]);
        let correlation = [0u8, 1, 0xAB, 0xFF, 7, 0, 0, 0, 9, 8, 7, 6, 5, 4, 3, 2];
        let sent = protocol::request_properties(
            "edge-a",
            &meta(42),
            "helmetd/v1/edge-a/cloud-result",
            &correlation,
            Duration::from_millis(1500),
        );
        let jpeg = vec![0xFF, 0xD8, 0xFF];
        handle
            .publish_reliable(
                "helmetd/v1/hard-example",
                jpeg.clone(),
                sent.clone().into(),
                false,
            )
            .await
            .unwrap();
        let publish = handle.spooled(1).pop().unwrap();
        assert_eq!(publish.payload, jpeg);
        let mut got = publish.properties.unwrap();
        assert_eq!(
            got.user_properties.pop(),
            Some((SPOOL_ID_PROPERTY.to_string(), "1".to_string()))
        );
        // User properties come back sorted by name: the spool keeps a map.
        let mut want = sent;
        want.user_properties.sort();
        assert_eq!(got, want);
        assert_eq!(got.correlation_data.as_deref(), Some(&correlation[..]));
        assert_eq!(got.message_expiry_interval, Some(2));
        assert_eq!(
            protocol::reply_to(
                &Publish::new("t", QoS::AtLeastOnce, jpeg, Some(got)),
                "helmetd/v1"
            )
            .unwrap()
            .correlation,
            correlation
        );
    }

    /// Spooled hard examples are not waited for while the session is down or the breaker open,
    /// and the answer to a replayed one counts as late.
    #[tokio::test]
    async fn spooled_hard_examples_are_not_waited_for_offline_and_their_answers_count_as_late() {
        let dir = tempfile::tempdir().unwrap();
        let (_uplink, handle, client) = offline_uplink(dir.path(), vec![SpoolKind::HardExamples]);
        let guard = guarded(client.clone());
        let t0 = std::time::Instant::now();
        for seq in 1..=3 {
            let answer = guard.ask(&image(), &meta(seq)).await;
            assert!(
                matches!(answer, CloudAnswer::Failed(AskError::Offline)),
                "{answer:?}"
            );
        }
        // Three failures open the breaker: still spooled, still not waited for.
        let answer = guard.ask(&image(), &meta(4)).await;
        assert!(matches!(answer, CloudAnswer::BreakerOpen), "{answer:?}");
        assert!(t0.elapsed() < Duration::from_millis(500));
        let stats = guard.stats();
        assert_eq!(
            (
                stats.failed,
                stats.breaker_open_skips,
                stats.spooled_unwaited
            ),
            (3, 1, 4)
        );

        let spooled = handle.spooled(10);
        assert_eq!(spooled.len(), 4);
        let mut seqs = Vec::new();
        for request in spooled {
            let props = request.properties.as_ref().unwrap();
            let seq = props.user_properties.iter().find(|(k, _)| k == "seq");
            seqs.push(seq.unwrap().1.clone());
            let reply = protocol::reply_to(&request, "helmetd/v1").unwrap();
            assert_eq!(reply.topic, client.response_topic());
            let answer = Publish::new(
                reply.topic,
                QoS::AtLeastOnce,
                protocol::result_json(&[], "m", 1.0, "r"),
                Some(protocol::response_properties(&reply.correlation)),
            );
            assert!(client.handle_incoming(&answer));
        }
        assert_eq!(seqs, ["1", "2", "3", "4"]);
        let stats = guard.stats();
        assert_eq!((stats.late, stats.unmatched, stats.answered), (4, 0, 0));
    }
}
