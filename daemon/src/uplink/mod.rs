//! The daemon's one MQTT 5 session: alerts, snapshots, status and stats out, one subscription in.
//!
//! [`Uplink::open`] returns the session's event loop ([`Uplink::run`], one tokio task) and a
//! cloneable [`UplinkHandle`] for everything else. The uplink is transport only: it knows
//! nothing of what it carries. One other part of the daemon (joint inference, for the cloud's
//! answers) may share the session: it names its [`Subscription`] in the settings, which the event
//! loop subscribes to on every connect, registers a handler for that topic's publishes with
//! [`UplinkHandle::on_incoming`], and sends its own messages through an [`Outbox`].
//!
//! # Session
//!
//! Clean start off with a one-hour session expiry, so the broker keeps the session (the
//! subscription, messages queued for it) across short outages; a retained last will
//! `offline` on `<prefix>/<node>/status`, retained `online` after every CONNACK, retained
//! `stopped` on a clean shutdown. Connection failures are retried after 0.5 s, doubling to 30 s,
//! reset by a successful connect.
//!
//! # Which messages are spooled
//!
//! [`UplinkHandle::publish`] takes the message's [`SpoolKind`]: kinds listed in
//! `mqtt.spool_kinds` go through the spool ([`UplinkHandle::publish_reliable`]), the others are
//! sent once as QoS 1 while the session is up and dropped, counted in
//! [`UplinkStats::once_dropped`], while it is not. A sharer's messages (hard examples) go the
//! same way, through an [`Outbox`]. Every message leaving the spool carries its spool id as the
//! user property [`SPOOL_ID_PROPERTY`], by which subscribers recognise re-sends. MQTT 5 fields
//! other than user properties (content type, response topic, correlation data, message expiry)
//! are stored under reserved keys in the spool entry's property map (see `message.rs`), so a
//! replayed hard example is a complete request.
//!
//! # Reliable delivery
//!
//! [`UplinkHandle::publish_reliable`] returns once the message is in the crash-safe spool, so
//! from then on neither an outage, a crash nor a power cut (under the spool's default fsync
//! policy) loses it. The event loop sends spooled messages as QoS 1 in spool order, keeps at most
//! [`WINDOW`] of them unacknowledged, and acks the spool only up to the newest message whose
//! PUBACK arrived with every message before it acked as well: the spool's position never passes
//! a message the broker has not confirmed.
//!
//! rumqttc reports only packet ids (`Outgoing::Publish(pkid)`, `Incoming::PubAck`), and a
//! sharer's messages sent once draw ids from the same session, so which id is ours cannot be read
//! off the events. Instead our messages bypass rumqttc's request channel: the event loop puts
//! them, one at a time, into the `EventLoop::pending` queue, which rumqttc drains before the
//! channel, and only when that queue is empty. The next event after rumqttc took it from there is
//! necessarily the `Outgoing::Publish` (or `AwaitAck`) for it, which gives its packet id. The
//! price: rumqttc sleeps its `pending_throttle` (zero, which tokio rounds up to its 1 ms timer
//! tick) before each pending request, so reliable messages leave at most about 1000 a second
//! (a backlog drained at ~300/s in the debug-build tests); alerts come a few a second.
//! Pending requests skip rumqttc's in-flight limit, so ours are only queued while fewer than the
//! broker's Receive Maximum are in flight. And rumqttc reads its channel only while `pending` is
//! empty, so after every few of ours the event loop leaves it empty for one round: a backlog
//! drained after an outage must not starve a sharer's messages sent once (the cloud requests,
//! which wait a second at most).
//!
//! On a lost connection rumqttc moves its unacknowledged publishes back into `pending` in
//! packet-id order (not send order), and drops them all if the next session is new. The event
//! loop takes ours out again (recognised by their topic buffers, which rumqttc hands back
//! unchanged) and, after the next CONNACK, sends
//! every unacknowledged one itself, in spool order, before anything newer: under the old packet
//! id with DUP set when the session was resumed (as MQTT 5.0 §4.4 requires), under fresh ids
//! otherwise. That re-sends exactly the messages whose PUBACK was not seen, each once per lost
//! connection. Delivery is therefore at least once and in order: a subscriber may see a message
//! again (alerts carry an `id` for that), never lose one, and never see one before an older one
//! it has not seen.
//!
//! A message the broker refuses in its PUBACK (not authorised, invalid topic, …), or that
//! cannot be sent at all (larger than the broker's maximum packet size), is dropped and counted
//! in [`UplinkStats::rejected`]: sending it again would fail the same way and hold up everything
//! behind it.
//!
//! # When the spool cannot store
//!
//! A spool write that fails (a full disk) does not lose the message while the session is up: it
//! is sent once as QoS 1 on the session instead, like a kind not in `spool_kinds`, and counted in
//! [`UplinkStats::spool_bypassed`]. Such a message is not durable and may overtake older spooled
//! ones. With the session down too it is dropped and counted in [`UplinkStats::spool_lost`].
//! Either is logged once per kind until the spool stores a message again; the spool itself
//! retries writes on a schedule instead of per message (see `spool`).
//!
//! The spool is read and acked from the event-loop task. Saving its position costs flushes, so
//! while PUBACKs stream in it is saved every 100 ms, and at once when nothing is left in flight:
//! a crash may re-send up to 100 ms' worth of confirmed messages, never skip one.
//!
//! # Volatile messages
//!
//! [`UplinkHandle::publish_volatile`] (stats) sends QoS 0 while connected and drops, counting,
//! while not. A message handed over just as the connection breaks may be lost uncounted.

mod message;
pub mod options;
#[cfg(test)]
mod tests;
mod topics;
mod window;

pub use message::{MessageError, MessageProperties, SPOOL_ID_PROPERTY};
pub use topics::{STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED, Topics};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, LastWill, Packet, PubAck, PubAckReason, Publish, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinError;
use tokio::time::Instant;

use crate::config::{Config, MqttConfig, SpoolKind};
use crate::spool::{Entry, FsyncPolicy, Spool, SpoolError, SpoolLimits, SpoolStats};
use options::{OptionsError, mqtt_options};
use window::{Origin, Window};

/// Our messages handed to rumqttc in a row before its request channel gets a turn.
const FAIR_SHARE: u32 = 4;
/// Our unacknowledged messages at most. Enough to keep a link with 100 ms round trips busy at
/// alert rates, small enough to leave the broker's Receive Maximum room for a sharer's messages
/// (the cloud requests).
pub const WINDOW: usize = 16;
/// Outgoing QoS 1 publishes in flight on the session, ours and a sharer's. Also sizes
/// rumqttc's packet-id table, which would otherwise hold 65 536 entries.
const INFLIGHT_LIMIT: u16 = 32;
/// How long the broker keeps our session while we are away.
const SESSION_EXPIRY_S: u32 = 3600;
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for the broker to confirm `stopped`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// rumqttc's request channel: messages sent once, subscriptions, volatile messages.
const MQTT_QUEUE: usize = 64;
/// What an incoming packet may take besides the subscription's payload: topic and properties.
/// Without a subscription only acks come in, which this holds too.
const INCOMING_ENVELOPE_BYTES: u32 = 4096;
/// How often the spool position is saved while PUBACKs stream in. Each save costs two flushes
/// under `FsyncPolicy::EveryRecord`, which would otherwise cap a backlog's drain at a few
/// hundred messages a second; a crash re-sends at most this much of what was confirmed.
const ACK_SAVE_INTERVAL: Duration = Duration::from_millis(100);
/// MQTT's packet id, which our size check must count although rumqttc adds it later.
const PKID_BYTES: usize = 2;
/// How long a message the spool could not store waits for room in rumqttc's request channel.
/// Short: the caller (an alert emitter) waits as long.
const BYPASS_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything [`Uplink::open`] needs.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub node: String,
    pub topic_prefix: String,
    /// Address, credentials and keep-alive, from [`mqtt_options`]. The uplink sets the session,
    /// the will and the packet limits itself.
    pub mqtt: MqttOptions,
    pub spool_dir: PathBuf,
    pub spool_limits: SpoolLimits,
    pub fsync: FsyncPolicy,
    /// What [`UplinkHandle::publish`] sends through the spool; other kinds are sent once.
    pub spool_kinds: Vec<SpoolKind>,
    /// The one topic this session subscribes to, for whoever shares it (see the module
    /// documentation); `None`: nothing comes in but acks.
    pub subscription: Option<Subscription>,
}

/// A topic the session subscribes to (QoS 1) on every connect, and the largest payload it must
/// accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topic: String,
    pub max_payload: usize,
}

impl UplinkSettings {
    /// Settings from the config's `[mqtt]` and node name, without a subscription.
    pub fn from_config(cfg: &Config) -> Result<Self, UplinkError> {
        Self::from_mqtt(&cfg.mqtt, &cfg.node_name())
    }

    /// Settings from `[mqtt]` alone, without a subscription. The client id defaults to
    /// `helmetd-<node>`.
    pub fn from_mqtt(mqtt: &MqttConfig, node: &str) -> Result<Self, UplinkError> {
        let client_id = if mqtt.client_id.is_empty() {
            format!("helmetd-{node}")
        } else {
            mqtt.client_id.clone()
        };
        Ok(Self {
            node: node.to_string(),
            topic_prefix: mqtt.topic_prefix.clone(),
            mqtt: mqtt_options(mqtt, &client_id)?,
            spool_dir: mqtt.spool_dir.clone(),
            spool_limits: SpoolLimits::new(
                mqtt.spool_max_mb.saturating_mul(1 << 20),
                Duration::from_secs(mqtt.spool_max_age_s),
            ),
            fsync: FsyncPolicy::EveryRecord,
            spool_kinds: mqtt.spool_kinds.clone(),
            subscription: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("mqtt.topic_prefix and node name give an unusable status topic: {0}")]
    StatusTopic(#[from] MessageError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Why [`UplinkHandle::on_incoming`] refused a handler.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("the session subscribes to nothing")]
    NoSubscription,
    #[error("the session subscribes to {subscribed}, not {wanted}")]
    OtherTopic { subscribed: String, wanted: String },
    #[error("the subscription already has its handler")]
    Taken,
}

/// Takes the publishes on the subscription, on the event loop's task: it must not block.
pub type IncomingHandler = Box<dyn Fn(&Publish) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the uplink has shut down")]
    Stopped,
    #[error("the spool write did not complete: {0}")]
    SpoolTask(#[from] JoinError),
}

/// [`UplinkHandle::shutdown`] after the event loop has ended.
#[derive(Debug, thiserror::Error)]
#[error("the uplink has already shut down")]
pub struct AlreadyStopped;

/// Link state and counters since [`Uplink::open`], for the stats topic and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkStats {
    pub connected: bool,
    /// Successful connects (CONNACKs).
    pub connects: u64,
    /// Connects after the first one.
    pub reconnects: u64,
    /// Reliable PUBLISH packets written, re-sends included.
    pub published: u64,
    /// Of those, re-sends after a lost connection.
    pub resent: u64,
    /// Spool entries confirmed by the broker.
    pub acked: u64,
    /// Spool entries dropped unsent or refused by the broker for good: refused in their PUBACK,
    /// too large for the broker, damaged on disk, or not a valid MQTT message.
    pub rejected: u64,
    /// Reliable and status messages sent but not yet acknowledged, or waiting to be re-sent.
    pub in_flight: usize,
    pub volatile_published: u64,
    /// Volatile messages dropped because the session was down or its queue full.
    pub volatile_dropped: u64,
    /// Messages of kinds not in `spool_kinds`, handed to the session as QoS 1.
    pub once_published: u64,
    /// Of those kinds, dropped because the session was down or its queue full.
    pub once_dropped: u64,
    /// Messages of spooled kinds the spool could not store (a full disk), sent once as QoS 1
    /// instead.
    pub spool_bypassed: u64,
    /// Messages of spooled kinds the spool could not store while the session was down (or its
    /// queue stayed full): lost.
    pub spool_lost: u64,
    /// The spool's depth and drops; as of the shutdown once the uplink has stopped.
    pub spool: SpoolStats,
}

#[derive(Debug)]
struct Counters {
    connects: u64,
    reconnects: u64,
    published: u64,
    resent: u64,
    acked: u64,
    rejected: u64,
    in_flight: usize,
    volatile_published: u64,
    volatile_dropped: u64,
    once_published: u64,
    once_dropped: u64,
    spool_bypassed: u64,
    spool_lost: u64,
    /// Kinds, and whether they were sent, logged since the spool last stored a message.
    bypass_logged: Vec<(SpoolKind, bool)>,
    /// Refreshed when the spool is closed.
    spool: SpoolStats,
}

/// State shared by the handles and the event loop.
struct Shared {
    /// `None` once the event loop has closed it.
    spool: Mutex<Option<Spool>>,
    /// Wakes the event loop when something was spooled.
    wake: Notify,
    /// The spool may hold entries the window has not taken in yet.
    unread: AtomicBool,
    connected: AtomicBool,
    counters: Mutex<Counters>,
    /// The subscription's handler, once registered.
    incoming: OnceLock<IncomingHandler>,
}

impl Shared {
    /// Nothing under these locks panics; a poisoned lock still guards consistent data.
    fn spool(&self) -> MutexGuard<'_, Option<Spool>> {
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> UplinkStats {
        let spool = self.spool().as_ref().map(Spool::stats);
        let c = self.counters();
        UplinkStats {
            connected: self.connected.load(Ordering::Acquire),
            connects: c.connects,
            reconnects: c.reconnects,
            published: c.published,
            resent: c.resent,
            acked: c.acked,
            rejected: c.rejected,
            in_flight: c.in_flight,
            volatile_published: c.volatile_published,
            volatile_dropped: c.volatile_dropped,
            once_published: c.once_published,
            once_dropped: c.once_dropped,
            spool_bypassed: c.spool_bypassed,
            spool_lost: c.spool_lost,
            spool: spool.unwrap_or(c.spool),
        }
    }
}

enum Command {
    Shutdown(oneshot::Sender<UplinkStats>),
}

/// What became of a spool write.
enum Pushed {
    Stored(u64),
    /// Not stored; the message comes back with the reason.
    Refused(Entry, SpoolError),
}

/// How [`UplinkHandle::publish`] handled a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the spool under this id: durable, sent until the broker confirms it.
    Spooled(u64),
    /// Handed to the session once, as QoS 1: a kind not spooled, or one the spool could not
    /// store.
    Sent,
    /// Not spooled and the session was down (or its queue full): dropped and counted.
    Dropped,
}

/// What sends messages on the session: shared by the handles and a sharer of the session. Holds
/// no command sender, so a sharer reached from the event loop (through its incoming handler)
/// does not keep it running.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    client: AsyncClient,
    spool_kinds: Vec<SpoolKind>,
}

impl Outbox {
    /// Whether the session is up right now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Whether messages of `kind` go through the spool.
    pub fn spools(&self, kind: SpoolKind) -> bool {
        self.spool_kinds.contains(&kind)
    }

    /// A message of `kind`: through the spool if `spool_kinds` lists it
    /// ([`publish_reliable`](Self::publish_reliable)), otherwise once as QoS 1 while the
    /// session is up and dropped, counted, while it is not.
    pub async fn publish(
        &self,
        kind: SpoolKind,
        topic: String,
        payload: Vec<u8>,
        properties: MessageProperties,
        retain: bool,
    ) -> Result<Delivery, PublishError> {
        if self.spools(kind) {
            let entry = message::to_entry(topic, payload, properties, retain)?;
            return Ok(match self.push(entry).await? {
                Pushed::Stored(id) => Delivery::Spooled(id),
                Pushed::Refused(entry, error) => self.bypass_spool(kind, entry, &error).await,
            });
        }
        let properties = message::to_properties(&topic, properties)?;
        let sent = self.connected()
            && self
                .client
                .try_publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, properties)
                .is_ok();
        let mut counters = self.shared.counters();
        if sent {
            counters.once_published += 1;
            Ok(Delivery::Sent)
        } else {
            counters.once_dropped += 1;
            Ok(Delivery::Dropped)
        }
    }

    /// Stores a message in the spool and returns its spool id; the event loop publishes it as
    /// QoS 1 as soon as the broker can take it (see the module documentation). Once this returns
    /// `Ok` the message is durable. The spool write runs on the blocking pool: under
    /// `FsyncPolicy::EveryRecord` it waits for the disk. A message the spool cannot store is an
    /// error here; [`publish`](Self::publish) sends it directly instead.
    pub async fn publish_reliable(
        &self,
        topic: String,
        payload: Vec<u8>,
        properties: MessageProperties,
        retain: bool,
    ) -> Result<u64, PublishError> {
        let entry = message::to_entry(topic, payload, properties, retain)?;
        match self.push(entry).await? {
            Pushed::Stored(id) => Ok(id),
            Pushed::Refused(_, error) => Err(error.into()),
        }
    }

    async fn push(&self, entry: Entry) -> Result<Pushed, PublishError> {
        let shared = Arc::clone(&self.shared);
        // Waking from the blocking task too means a caller that stops waiting still gets its
        // stored message sent promptly.
        tokio::task::spawn_blocking(move || {
            let pushed = match shared.spool().as_mut() {
                Some(spool) => spool.push(&entry),
                None => return Err(PublishError::Stopped),
            };
            let id = match pushed {
                Ok(id) => id,
                Err(error) => return Ok(Pushed::Refused(entry, error)),
            };
            shared.unread.store(true, Ordering::Release);
            shared.wake.notify_one();
            tracing::debug!(id, topic = entry.topic, "spooled");
            // The trouble is over: log the next episode's first message again.
            shared.counters().bypass_logged.clear();
            Ok(Pushed::Stored(id))
        })
        .await?
    }

    /// A message of `kind` the spool refused with `error`: sent once as QoS 1 while the session
    /// is up, dropped while it is not (see the module documentation).
    async fn bypass_spool(&self, kind: SpoolKind, entry: Entry, error: &SpoolError) -> Delivery {
        let sent = self.connected() && self.send_once(entry).await;
        let mut counters = self.shared.counters();
        let first = !counters.bypass_logged.contains(&(kind, sent));
        if first {
            counters.bypass_logged.push((kind, sent));
        }
        if sent {
            counters.spool_bypassed += 1;
            if first {
                tracing::warn!(
                    ?kind,
                    %error,
                    "the spool cannot store messages; sending them once as QoS 1, not durable, \
                     until it can (see spool_bypassed)"
                );
            }
            Delivery::Sent
        } else {
            counters.spool_lost += 1;
            if first {
                tracing::error!(
                    ?kind,
                    %error,
                    "the spool cannot store messages and the session cannot take them (broker \
                     not connected, or its queue full); dropping them (see spool_lost)"
                );
            }
            Delivery::Dropped
        }
    }

    /// Hands a message built for the spool to the session as QoS 1; whether it took it.
    async fn send_once(&self, entry: Entry) -> bool {
        let properties = match message::to_publish_properties(entry.properties) {
            Ok(properties) => properties,
            Err(e) => {
                // to_entry built the map a moment ago; it cannot hold anything else.
                tracing::error!(error = %e, "message cannot be sent");
                return false;
            }
        };
        let publish = self.client.publish_with_properties(
            entry.topic,
            QoS::AtLeastOnce,
            entry.retain,
            entry.payload,
            properties,
        );
        matches!(
            tokio::time::timeout(BYPASS_TIMEOUT, publish).await,
            Ok(Ok(()))
        )
    }
}

/// The sending side of the session, cheap to clone.
#[derive(Clone)]
pub struct UplinkHandle {
    outbox: Outbox,
    commands: mpsc::Sender<Command>,
    topics: Topics,
    subscription: Option<Subscription>,
}

impl UplinkHandle {
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// What sends messages on this session, for a sharer of it.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Hands every publish on the subscription's `topic` to `handler` from now on. One handler
    /// per session; `topic` must be the subscription's, so a sharer notices a session opened
    /// without it instead of waiting for publishes that never come.
    pub fn on_incoming(&self, topic: &str, handler: IncomingHandler) -> Result<(), IncomingError> {
        let subscribed = &self
            .subscription
            .as_ref()
            .ok_or(IncomingError::NoSubscription)?
            .topic;
        if subscribed != topic {
            return Err(IncomingError::OtherTopic {
                subscribed: subscribed.clone(),
                wanted: topic.to_string(),
            });
        }
        self.outbox
            .shared
            .incoming
            .set(handler)
            .map_err(|_| IncomingError::Taken)
    }

    /// See [`Outbox::publish`].
    pub async fn publish(
        &self,
        kind: SpoolKind,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        properties: MessageProperties,
        retain: bool,
    ) -> Result<Delivery, PublishError> {
        self.outbox
            .publish(kind, topic.into(), payload.into(), properties, retain)
            .await
    }

    /// See [`Outbox::publish_reliable`].
    pub async fn publish_reliable(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        properties: MessageProperties,
        retain: bool,
    ) -> Result<u64, PublishError> {
        self.outbox
            .publish_reliable(topic.into(), payload.into(), properties, retain)
            .await
    }

    /// Sends a QoS 0 message if the session is up. Returns whether it was handed to the
    /// session; if not it is dropped and counted in [`UplinkStats::volatile_dropped`].
    pub fn publish_volatile(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<bool, MessageError> {
        message::check_topic(topic)?;
        let sent = self.outbox.connected()
            && self
                .outbox
                .client
                .try_publish(topic, QoS::AtMostOnce, retain, payload.into())
                .is_ok();
        let mut counters = self.outbox.shared.counters();
        if sent {
            counters.volatile_published += 1;
        } else {
            counters.volatile_dropped += 1;
        }
        Ok(sent)
    }

    pub fn stats(&self) -> UplinkStats {
        self.outbox.shared.stats()
    }

    /// The spooled messages not yet acked (at most `max`), as the event loop would publish
    /// them: for tests of what a sharer of the session spools.
    #[cfg(test)]
    pub(crate) fn spooled(&self, max: usize) -> Vec<Publish> {
        let peeked = self.outbox.shared.spool().as_ref().unwrap().peek(max);
        peeked
            .unwrap()
            .into_iter()
            .map(|(id, entry)| message::to_publish(id, entry).unwrap())
            .collect()
    }

    /// Publishes the retained `stopped` status, waits (at most 5 s) for the broker to confirm
    /// it, disconnects, and closes the spool; returns the final counters. Messages not yet
    /// acknowledged stay in the spool for the next start. While disconnected it stops at once.
    pub async fn shutdown(&self) -> Result<UplinkStats, AlreadyStopped> {
        let (reply, stats) = oneshot::channel();
        self.commands
            .send(Command::Shutdown(reply))
            .await
            .map_err(|_| AlreadyStopped)?;
        stats.await.map_err(|_| AlreadyStopped)
    }
}

/// The session's connection as the event loop sees it.
struct Link {
    connected: bool,
    ever_connected: bool,
    /// No connection attempt before this.
    retry_at: Option<Instant>,
    backoff: Duration,
    outage_logged: bool,
    /// Outgoing QoS 1 publishes the broker lets us have in flight, capped by ours.
    inflight_cap: u16,
    /// The broker's Maximum Packet Size.
    max_packet: Option<u32>,
    retain_available: bool,
}

/// A clean shutdown in progress.
struct Stopping {
    reply: Option<oneshot::Sender<UplinkStats>>,
    deadline: Instant,
}

/// What an event means for a shutdown in progress.
enum Progress {
    Nothing,
    StoppedConfirmed,
    Disconnected,
}

/// The session's event loop. Run it as one tokio task: [`Uplink::run`].
pub struct Uplink {
    eventloop: EventLoop,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// The session's client, to subscribe on connect.
    client: AsyncClient,
    subscription: Option<Subscription>,
    status_topic: String,
    window: Window,
    link: Link,
    /// Newest spool id whose ack is not yet written to the spool.
    unsaved_ack: Option<u64>,
    ack_saved_at: Instant,
    /// Saving the spool position failed last time (logged once until it works again).
    ack_save_failing: bool,
    /// Our messages handed to rumqttc since its channel last had a turn.
    in_row: u32,
}

impl Uplink {
    /// Opens the spool (recovering what an earlier run left) and prepares the session; nothing
    /// connects until [`run`](Self::run) is polled.
    pub fn open(settings: UplinkSettings) -> Result<(Uplink, UplinkHandle), UplinkError> {
        let topics = Topics::new(&settings.topic_prefix, &settings.node);
        let status_topic = topics.status_topic();
        message::check_topic(&status_topic)?;

        let mut options = settings.mqtt;
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(SESSION_EXPIRY_S));
        options.set_last_will(LastWill::new(
            status_topic.clone(),
            STATUS_OFFLINE,
            QoS::AtLeastOnce,
            true,
            None,
        ));
        let max_payload = settings.subscription.as_ref().map_or(0, |s| s.max_payload);
        options.set_max_packet_size(Some(
            u32::try_from(max_payload)
                .unwrap_or(u32::MAX)
                .saturating_add(INCOMING_ENVELOPE_BYTES),
        ));
        options.set_outgoing_inflight_upper_limit(INFLIGHT_LIMIT);

        let spool = Spool::open(&settings.spool_dir, settings.spool_limits, settings.fsync)?;
        let shared = Arc::new(Shared {
            counters: Mutex::new(Counters {
                connects: 0,
                reconnects: 0,
                published: 0,
                resent: 0,
                acked: 0,
                rejected: 0,
                in_flight: 0,
                volatile_published: 0,
                volatile_dropped: 0,
                once_published: 0,
                once_dropped: 0,
                spool_bypassed: 0,
                spool_lost: 0,
                bypass_logged: Vec::new(),
                spool: spool.stats(),
            }),
            spool: Mutex::new(Some(spool)),
            wake: Notify::new(),
            unread: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            incoming: OnceLock::new(),
        });
        let (client, eventloop) = AsyncClient::new(options, MQTT_QUEUE);
        let outbox = Outbox {
            shared: Arc::clone(&shared),
            client,
            spool_kinds: settings.spool_kinds,
        };
        let (commands_tx, commands) = mpsc::channel(4);
        let uplink = Uplink {
            eventloop,
            shared: Arc::clone(&shared),
            commands,
            client: outbox.client.clone(),
            subscription: settings.subscription.clone(),
            status_topic,
            window: Window::new(WINDOW),
            link: Link {
                connected: false,
                ever_connected: false,
                retry_at: None,
                backoff: RECONNECT_MIN,
                outage_logged: false,
                inflight_cap: INFLIGHT_LIMIT,
                max_packet: None,
                retain_available: true,
            },
            unsaved_ack: None,
            ack_saved_at: Instant::now(),
            ack_save_failing: false,
            in_row: 0,
        };
        let handle = UplinkHandle {
            outbox,
            commands: commands_tx,
            topics,
            subscription: settings.subscription,
        };
        Ok((uplink, handle))
    }

    /// Runs the session until [`UplinkHandle::shutdown`], or until every handle is dropped.
    /// [`Uplink::open`] and its event loop started on `runtime`: what every caller does.
    pub fn spawn(
        settings: UplinkSettings,
        runtime: &tokio::runtime::Handle,
    ) -> Result<UplinkHandle, UplinkError> {
        let (uplink, handle) = {
            let _inside = runtime.enter();
            Uplink::open(settings)?
        };
        runtime.spawn(uplink.run());
        Ok(handle)
    }

    pub async fn run(mut self) {
        let mut stopping: Option<Stopping> = None;
        loop {
            let turn = self.link.connected && self.submit(stopping.is_some());
            self.shared.counters().in_flight = self.window.len();
            let retry_at = self.link.retry_at;
            let deadline = stopping.as_ref().map(|s| s.deadline);
            let ack_due = self
                .unsaved_ack
                .map(|_| self.ack_saved_at + ACK_SAVE_INTERVAL);
            // Biased: the poll must come before the wake-up, which a steady stream of pushes
            // keeps ready, and before the end of the channel's turn.
            tokio::select! {
                biased;
                command = self.commands.recv(), if stopping.is_none() => {
                    let reply = command.map(|Command::Shutdown(reply)| reply);
                    if !self.link.connected {
                        tracing::info!("uplink stopping while disconnected; `stopped` not published");
                        return self.finish(reply);
                    }
                    self.window.push(Origin::Stopped, status(&self.status_topic, STATUS_STOPPED));
                    stopping = Some(Stopping { reply, deadline: Instant::now() + SHUTDOWN_TIMEOUT });
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!("the broker did not confirm `stopped` within {SHUTDOWN_TIMEOUT:?}");
                    break;
                }
                () = sleep_until(retry_at), if retry_at.is_some() => self.link.retry_at = None,
                () = sleep_until(ack_due), if ack_due.is_some() => self.save_ack(),
                event = self.eventloop.poll(), if retry_at.is_none() => match event {
                    Ok(event) => match self.on_event(event) {
                        Progress::StoppedConfirmed => {
                            self.eventloop.pending.push_back(Request::Disconnect);
                        }
                        // rumqttc also reports DISCONNECTs of its own (protocol errors).
                        Progress::Disconnected if stopping.is_some() => break,
                        Progress::Disconnected | Progress::Nothing => {}
                    },
                    Err(e) => {
                        self.on_error(&e);
                        if stopping.is_some() {
                            break;
                        }
                    }
                },
                () = self.shared.wake.notified(),
                    if self.link.connected && stopping.is_none() && !turn => {}
                // The poll above had its chance to take a request from the channel.
                () = std::future::ready(()), if turn => {}
            }
            // Idle, nothing more to confirm soon: save now, the next ack may be long off.
            if self.window.len() == 0 || ack_due.is_some_and(|due| Instant::now() >= due) {
                self.save_ack();
            }
        }
        self.finish(stopping.and_then(|s| s.reply));
    }

    /// Hands rumqttc our next message, if it may take one now (see the module documentation).
    /// Returns whether it is the turn of rumqttc's request channel instead: `pending` is left
    /// empty for one poll.
    fn submit(&mut self, draining: bool) -> bool {
        let state = &self.eventloop.state;
        if self.window.is_queued()
            || !self.eventloop.pending.is_empty()
            || state.collision.is_some()
            || state.inflight() >= self.link.inflight_cap
        {
            return false;
        }
        if self.in_row >= FAIR_SHARE {
            // Buffered events make the next poll return without looking at the channel.
            if !state.events.is_empty() {
                return false;
            }
            self.in_row = 0;
            return true;
        }
        if !draining {
            self.refill();
        }
        while let Some(mut publish) = self.window.queue_next() {
            let fits = self
                .link
                .max_packet
                .is_none_or(|max| publish.size() + PKID_BYTES <= max as usize);
            if fits {
                publish.retain &= self.link.retain_available;
                self.eventloop.pending.push_back(Request::Publish(publish));
                self.in_row += 1;
                return false;
            }
            let origin = self.window.refuse_queued();
            tracing::error!(
                ?origin,
                bytes = publish.size(),
                max = ?self.link.max_packet,
                "message larger than the broker accepts; dropped"
            );
            if let Some(Origin::Spool(_)) = origin {
                self.shared.counters().rejected += 1;
            }
            self.pop_done();
        }
        false
    }

    /// Takes spooled entries into the window while it has room.
    fn refill(&mut self) {
        let room = self.window.room();
        if room == 0 || !self.shared.unread.swap(false, Ordering::AcqRel) {
            return;
        }
        let peeked = match self.shared.spool().as_ref() {
            Some(spool) => spool.peek_after(self.window.last_taken(), room),
            None => return,
        };
        match peeked {
            Ok(entries) => {
                if entries.len() == room {
                    self.shared.unread.store(true, Ordering::Release);
                }
                for (id, entry) in entries {
                    self.take_in(id, entry);
                }
            }
            // The batch failed as a whole; read it one by one to step over the damaged entry.
            Err(SpoolError::Corrupt { .. }) => {
                self.shared.unread.store(true, Ordering::Release);
                self.take_in_one();
            }
            Err(e) => {
                // Retried on the next push or connect.
                tracing::warn!(error = %e, "cannot read the spool");
            }
        }
    }

    fn take_in_one(&mut self) {
        let peeked = match self.shared.spool().as_ref() {
            Some(spool) => spool.peek_after(self.window.last_taken(), 1),
            None => return,
        };
        match peeked {
            Ok(entries) => {
                for (id, entry) in entries {
                    self.take_in(id, entry);
                }
            }
            Err(SpoolError::Corrupt { id, .. }) => {
                tracing::error!(id, "spool entry damaged on disk; dropped");
                self.shared.counters().rejected += 1;
                self.window.push_refused(id);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the spool"),
        }
    }

    fn take_in(&mut self, id: u64, entry: Entry) {
        match message::to_publish(id, entry) {
            Ok(publish) => self.window.push(Origin::Spool(id), publish),
            Err(e) => {
                tracing::error!(id, error = %e, "spooled message cannot be published; dropped");
                self.shared.counters().rejected += 1;
                self.window.push_refused(id);
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Progress {
        if self.window.is_queued() && self.eventloop.pending.is_empty() {
            // rumqttc took our queued message; this is the event it made of it.
            match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some((origin, resend)) = self.window.queued_written(pkid) {
                        self.count_written(origin, resend);
                    }
                    return Progress::Nothing;
                }
                Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                    self.window.queued_collided(pkid);
                    return Progress::Nothing;
                }
                _ => {
                    tracing::error!(
                        ?event,
                        "rumqttc took a message without a packet id; resending it"
                    );
                    self.window.queued_lost();
                }
            }
        }
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => self.on_connack(&ack),
            Event::Incoming(Packet::PubAck(ack)) => return self.on_puback(&ack),
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(&publish),
            Event::Incoming(Packet::SubAck(ack)) => {
                let refused: Vec<_> = ack
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .collect();
                if !refused.is_empty() {
                    tracing::error!(codes = ?refused, "the broker refused a subscription");
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some((origin, resend)) = self.window.collision_written(pkid) {
                    self.count_written(origin, resend);
                }
            }
            Event::Outgoing(Outgoing::Disconnect) => return Progress::Disconnected,
            _ => {}
        }
        Progress::Nothing
    }

    fn on_connack(&mut self, ack: &ConnAck) {
        let props = ack.properties.as_ref();
        let receive_max = props.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        self.link.inflight_cap = receive_max.clamp(1, INFLIGHT_LIMIT);
        self.link.max_packet = props.and_then(|p| p.max_packet_size);
        self.link.retain_available = props.and_then(|p| p.retain_available) != Some(0);
        self.link.connected = true;
        self.link.backoff = RECONNECT_MIN;
        self.link.outage_logged = false;
        self.shared.connected.store(true, Ordering::Release);
        {
            let mut counters = self.shared.counters();
            counters.connects += 1;
            if self.link.ever_connected {
                counters.reconnects += 1;
            }
        }
        self.link.ever_connected = true;
        self.window.session_started(ack.session_present);
        let unacked = self.window.len();
        self.window
            .push(Origin::Online, status(&self.status_topic, STATUS_ONLINE));
        // Also retries a spool read that failed while disconnected.
        self.shared.unread.store(true, Ordering::Release);
        // Never waits: a full request queue means the broker is away again, and the next
        // CONNACK retries.
        if let Some(subscription) = &self.subscription
            && self
                .client
                .try_subscribe(subscription.topic.clone(), QoS::AtLeastOnce)
                .is_err()
        {
            tracing::warn!(
                topic = subscription.topic,
                "cannot queue the subscription: the MQTT request queue is full or closed; its \
                 publishes will not arrive on this connection"
            );
        }
        tracing::info!(
            session_present = ack.session_present,
            receive_max,
            unacked,
            "connected to the broker"
        );
    }

    fn on_puback(&mut self, ack: &PubAck) -> Progress {
        let Some(origin) = self.window.acked(ack.pkid) else {
            return Progress::Nothing;
        };
        let accepted = matches!(
            ack.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        );
        if !accepted {
            tracing::error!(?origin, reason = ?ack.reason, "the broker refused a message; dropped");
        }
        if let Origin::Spool(_) = origin {
            let mut counters = self.shared.counters();
            if accepted {
                counters.acked += 1;
            } else {
                counters.rejected += 1;
            }
        }
        self.pop_done();
        if origin == Origin::Stopped {
            Progress::StoppedConfirmed
        } else {
            Progress::Nothing
        }
    }

    fn on_publish(&self, publish: &Publish) {
        let subscribed = self
            .subscription
            .as_ref()
            .is_some_and(|s| publish.topic == s.topic.as_bytes());
        let handler = self.shared.incoming.get().filter(|_| subscribed);
        if let Some(handler) = handler {
            handler(publish);
        } else {
            tracing::debug!(topic = ?publish.topic, "unexpected publish ignored");
        }
    }

    /// rumqttc has closed the connection and moved what it had in flight back to `pending`.
    fn on_error(&mut self, error: &ConnectionError) {
        let was_connected = self.link.connected;
        self.link.connected = false;
        self.shared.connected.store(false, Ordering::Release);
        // Events read before the failure: their acks and answers are real.
        let buffered: Vec<Event> = self.eventloop.state.events.drain(..).collect();
        for event in buffered {
            match event {
                Event::Incoming(Packet::PubAck(ack)) => {
                    self.on_puback(&ack);
                }
                Event::Incoming(Packet::Publish(publish)) => self.on_publish(&publish),
                _ => {}
            }
        }
        let window = &self.window;
        self.eventloop
            .pending
            .retain(|request| !matches!(request, Request::Publish(p) if window.owns(p)));
        // rumqttc keeps a publish held by a packet-id collision across reconnects, where no ack
        // will ever free it, and it would block every later request. Ours is re-sent anyway.
        self.eventloop.state.collision = None;
        self.window.connection_lost();
        self.pop_done();
        self.save_ack();

        let backoff = self.link.backoff;
        self.link.retry_at = Some(Instant::now() + backoff);
        self.link.backoff = (backoff * 2).min(RECONNECT_MAX);
        if was_connected {
            tracing::warn!(%error, unacked = self.window.len(), "connection to the broker lost; reconnecting in {backoff:?}");
        } else if !self.link.outage_logged {
            tracing::warn!(%error, "cannot connect to the broker; retrying with backoff up to {RECONNECT_MAX:?}");
            self.link.outage_logged = true;
        } else {
            tracing::debug!(%error, "still cannot connect to the broker; next attempt in {backoff:?}");
        }
    }

    fn count_written(&self, origin: Origin, resend: bool) {
        if let Origin::Spool(_) = origin {
            let mut counters = self.shared.counters();
            counters.published += 1;
            if resend {
                counters.resent += 1;
            }
        }
    }

    fn pop_done(&mut self) {
        if let Some(id) = self.window.pop_done() {
            self.unsaved_ack = Some(id);
        }
    }

    /// Acks the spool up to the newest confirmed id (see [`ACK_SAVE_INTERVAL`]).
    fn save_ack(&mut self) {
        let Some(id) = self.unsaved_ack.take() else {
            return;
        };
        self.ack_saved_at = Instant::now();
        let Some(saved) = self.shared.spool().as_mut().map(|spool| spool.ack(id)) else {
            return;
        };
        match saved {
            // The position moved in memory; only a crash before the next save re-sends. On a
            // full disk this fails every save, so it is logged once until a save works.
            Err(e) if !self.ack_save_failing => {
                tracing::warn!(error = %e, "cannot save the spool position; retrying with every ack");
                self.ack_save_failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "still cannot save the spool position"),
            Ok(()) if self.ack_save_failing => {
                tracing::info!("the spool position is saved again");
                self.ack_save_failing = false;
            }
            Ok(()) => {}
        }
    }

    fn finish(mut self, reply: Option<oneshot::Sender<UplinkStats>>) {
        self.save_ack();
        self.shared.connected.store(false, Ordering::Release);
        self.shared.counters().in_flight = self.window.len();
        {
            let mut slot = self.shared.spool();
            if let Some(mut spool) = slot.take() {
                if let Err(e) = spool.sync() {
                    tracing::warn!(error = %e, "cannot flush the spool; acked entries may be re-sent");
                }
                self.shared.counters().spool = spool.stats();
            }
        }
        let stats = self.shared.stats();
        tracing::info!(?stats, "uplink stopped");
        if let Some(reply) = reply {
            let _ = reply.send(stats);
        }
    }
}

fn status(topic: &str, status: &str) -> Publish {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, status.as_bytes().to_vec(), None);
    publish.retain = true;
    publish
}

/// Sleeps until `at`; forever without one (the caller's branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
