//! A simulated gateway of `bench fleet`: what `helmetd run` builds to ask the cloud, and only
//! that. Its own node name (so its own client id, `helmetd-<node>`, and response topic), its own
//! spool directory, its own uplink session and its own [`JointClient`] (timeout, breaker,
//! pacer) over [`MqttClient::over_uplink`](crate::joint::mqtt::MqttClient::over_uplink), sending
//! hard examples taken from the bundled video at a fixed rate. Every `ask` is tallied by how it
//! ended; late answers are counted by the client itself.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use image::RgbImage;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::joint::protocol::{self, HardExampleMeta};
use crate::joint::{AskError, CloudAnswer, JointClient};
use crate::uplink::{Uplink, UplinkHandle};

/// How long a gateway's session gets to connect and subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the uplink gets to say goodbye.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// One hard example: the letterbox content of a frame and what the edge model found in it.
pub(super) struct Photo {
    pub image: RgbImage,
    pub meta: HardExampleMeta,
}

/// How each `ask` of one gateway ended, as the bench saw it.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    pub in_time: u64,
    /// Round trips of the answers in time, ms.
    pub latency_ms: Vec<f64>,
    /// When each answer in time came, seconds after the phase started.
    pub answered_at: Vec<f64>,
    pub overloaded: u64,
    pub expired: u64,
    /// Other refusals ("shutting down", bad request, inference failed).
    pub refused_other: u64,
    /// No answer within the timeout.
    pub timed_out: u64,
    /// Could not be sent or waited for (broker away, queue full, unreadable answer).
    pub failed: u64,
    /// Not sent: the client paces itself to what the cloud keeps up with.
    pub paced: u64,
    /// Not waited for: the breaker is open (still spooled, so it may be answered late).
    pub breaker: u64,
}

/// The fate of every request one or more gateways sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Fates {
    /// Requests that left the gateway: asked by the guard, plus spooled while the breaker was
    /// open.
    pub sent: u64,
    pub in_time: u64,
    /// Answered (or refused) after the edge stopped waiting and decided alone.
    pub late: u64,
    /// Refused as busy: overloaded or expired at the replica.
    pub refused_busy: u64,
    pub refused_other: u64,
    /// Never answered: the edge decided alone.
    pub unanswered: u64,
    /// `sent` less every fate: requests the bench lost track of. Must be 0.
    pub unaccounted: i64,
    /// Not sent because the client paced itself.
    pub paced: u64,
    /// Answers that matched no request of the gateway.
    pub unmatched: u64,
}

impl Fates {
    pub(super) fn add(&mut self, o: Fates) {
        self.sent += o.sent;
        self.in_time += o.in_time;
        self.late += o.late;
        self.refused_busy += o.refused_busy;
        self.refused_other += o.refused_other;
        self.unanswered += o.unanswered;
        self.unaccounted += o.unaccounted;
        self.paced += o.paced;
        self.unmatched += o.unmatched;
    }

    pub(super) fn refused(&self) -> u64 {
        self.refused_busy + self.refused_other
    }
}

pub(super) struct Gateway {
    node: String,
    uplink: UplinkHandle,
    client: Arc<JointClient>,
    /// Hard examples per second.
    rate: f64,
    tally: Arc<Mutex<Tally>>,
}

impl Gateway {
    /// Opens the session of node `node` (spool in `spool_dir`) on the broker `base` names and
    /// waits until it is connected. Must run inside the bench's runtime.
    pub(super) async fn open(
        base: &Config,
        node: &str,
        spool_dir: &Path,
        rate: f64,
    ) -> anyhow::Result<Gateway> {
        let mut cfg = base.clone();
        cfg.node.name = node.to_string();
        cfg.mqtt.spool_dir = spool_dir.to_path_buf();
        let uplink = Uplink::spawn(
            crate::joint::uplink_settings(&cfg)?,
            &tokio::runtime::Handle::current(),
        )?;
        let client = JointClient::from_config(&cfg, Some(&uplink))?
            .context("the config has no MQTT cloud")?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while !uplink.outbox().connected() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "gateway {node} not connected within {CONNECT_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Gateway {
            node: node.to_string(),
            uplink,
            client: Arc::new(client),
            rate,
            tally: Arc::default(),
        })
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Sends from `start` (the first request `offset` of a period later, so gateways do not
    /// fire together) until `until`, then waits for every request's end (the timeout bounds
    /// it). `started` is the phase's start, for the answer times.
    pub(super) async fn send(
        &self,
        photos: Arc<Vec<Photo>>,
        offset: f64,
        started: Instant,
        until: Instant,
    ) {
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let mut next = started + period.mul_f64(offset);
        let mut asks = JoinSet::new();
        let mut k = (offset * photos.len() as f64) as usize;
        while next < until {
            tokio::time::sleep_until(next).await;
            let (client, photos, tally) = (
                Arc::clone(&self.client),
                Arc::clone(&photos),
                Arc::clone(&self.tally),
            );
            let index = k % photos.len();
            asks.spawn(async move {
                let photo = &photos[index];
                let answer = client.ask(&photo.image, &photo.meta).await;
                record(&tally, answer, started);
            });
            k += 1;
            next += period;
        }
        while asks.join_next().await.is_some() {}
    }

    /// The tally and the client's counters once every request ended and late answers had time
    /// to come.
    pub(super) fn fates(&self) -> (Fates, Tally) {
        let tally = self
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let stats = self.client.stats();
        let gave_up = tally.timed_out + tally.failed + stats.spooled_unwaited;
        let late = stats.late.min(gave_up);
        let mut fates = Fates {
            sent: stats.asked + stats.spooled_unwaited,
            in_time: tally.in_time,
            late,
            refused_busy: tally.overloaded + tally.expired,
            refused_other: tally.refused_other,
            unanswered: gave_up - late,
            unaccounted: 0,
            paced: tally.paced,
            // More late answers than requests given up on: answers the bench cannot place.
            unmatched: stats.unmatched + (stats.late - late),
        };
        let placed = fates.in_time + fates.late + fates.refused() + fates.unanswered;
        fates.unaccounted = fates.sent as i64 - placed as i64;
        (fates, tally)
    }

    /// Closes the session (the uplink publishes its `stopped` status and disconnects).
    pub(super) async fn close(&self) {
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.uplink.shutdown()).await;
    }
}

fn record(tally: &Mutex<Tally>, answer: CloudAnswer, started: Instant) {
    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    match answer {
        CloudAnswer::Answered(_, rtt) => {
            t.in_time += 1;
            t.latency_ms.push(rtt.as_secs_f64() * 1e3);
            t.answered_at.push(started.elapsed().as_secs_f64());
        }
        CloudAnswer::Late => t.timed_out += 1,
        CloudAnswer::Failed(AskError::Refused { message, .. }) => match message.as_str() {
            protocol::OVERLOADED => t.overloaded += 1,
            protocol::EXPIRED => t.expired += 1,
            _ => t.refused_other += 1,
        },
        CloudAnswer::Failed(_) => t.failed += 1,
        CloudAnswer::BreakerOpen => t.breaker += 1,
        CloudAnswer::Paced => t.paced += 1,
    }
}
