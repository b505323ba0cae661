//! Joint inference: asking the big model about a hard example, and waiting a bounded time.
//!
//! Two ways reach a big model, both behind [`BigModel`]: [`mqtt::MqttClient`] sends a JPEG to
//! `helmetd cloud` over the uplink's MQTT 5 session ([`protocol`] is that contract), and
//! [`sedna_http::SednaHttpClient`] posts raw pixels to an unmodified Sedna `BigModelService`.
//! Both get the frame's letterbox content and answer in camera-frame pixels.
//!
//! One [`JointClient`] guards either: it owns the timeout, the circuit [`breaker`] and the
//! counters, so both protocols time out, fail and recover alike. Unlike Sedna's own client (no
//! timeout, 5 attempts 3 s apart, no memory of a dead cloud) an `ask` never takes longer than
//! `cloud.timeout_ms` from start to parsed answer, and while the cloud is known to be down
//! asking costs nothing.

pub mod breaker;
pub mod budget;
pub mod mqtt;
pub mod protocol;
pub mod sedna_http;

pub use breaker::{BreakerSettings, BreakerState};
pub use protocol::HardExampleMeta;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use helmet_pipelines::Detection;
use helmet_pipelines::output::OutputError;
use image::RgbImage;
use tokio::time::Instant;

use crate::config::{CloudProtocol, Config};
use crate::uplink::{UplinkError, UplinkHandle, UplinkSettings};
use breaker::{Admission, Breaker};
use protocol::{BoxFixes, ResponseError};

/// A big model's answer to one request.
#[derive(Debug)]
pub struct Reply {
    /// In camera-frame pixels, already made safe by [`protocol::checked_boxes`].
    pub boxes: Vec<Detection>,
    /// What the check repaired, for counting.
    pub fixes: BoxFixes,
    /// Who answered (a cloud replica, a Sedna host), for logs.
    pub source: String,
}

/// Counters a way to the cloud keeps itself, beyond what the guard sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Answers that arrived after their request was no longer waited for.
    pub late: u64,
    /// Answers that matched no request we remember: strays, and forgeries with an id we never
    /// issued.
    pub unmatched: u64,
    /// Requests spooled but not waited for (breaker open, or the broker away).
    pub spooled_unwaited: u64,
}

/// One way to ask the big model. Object-safe (boxed futures) so the guard holds either.
pub trait BigModel: Send + Sync {
    /// Sends `image` (the letterbox content of the frame `meta` describes) and waits for the
    /// boxes, however long that takes: the guard bounds it, and drops the future at the deadline.
    fn ask<'a>(
        &'a self,
        image: &'a RgbImage,
        meta: &'a HardExampleMeta,
    ) -> BoxFuture<'a, Result<Reply, AskError>>;

    /// The breaker refused this request: nothing is waited for. A way that can deliver it later
    /// anyway (the MQTT spool) may still do so.
    fn skipped<'a>(
        &'a self,
        _image: &'a RgbImage,
        _meta: &'a HardExampleMeta,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn link_stats(&self) -> LinkStats {
        LinkStats::default()
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
    /// The cloud is known to be down; nothing was waited for.
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
    SednaHttp(#[from] sedna_http::SednaHttpError),
    /// The hard example could not be encoded: nothing was sent.
    #[error("cannot encode a hard example: {0}")]
    Encode(#[from] OutputError),
}

impl AskError {
    /// Failures of this edge, not of the cloud: they say nothing about whether it is up.
    fn is_local(&self) -> bool {
        matches!(self, Self::Encode(_))
    }
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
    /// Publish errors, refusals, unreadable answers and requests that could not be encoded.
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

/// The guard's own settings, the same for either protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JointSettings {
    /// How long a hard frame waits for the cloud before the edge answer stands.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
}

impl JointSettings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            timeout: Duration::from_millis(cfg.cloud.timeout_ms),
            breaker: BreakerSettings::default(),
        }
    }
}

/// Why the way to the cloud `[cloud]` asks for cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum JointError {
    #[error(transparent)]
    SednaUrl(#[from] sedna_http::UrlError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::OverUplinkError),
}

/// The uplink's settings with the subscription the MQTT cloud answers on, when `[cloud]`
/// reaches the cloud by MQTT: what every caller that opens the daemon's session uses.
pub fn uplink_settings(cfg: &Config) -> Result<UplinkSettings, UplinkError> {
    let mut settings = UplinkSettings::from_config(cfg)?;
    if cfg.cloud.protocol == CloudProtocol::Mqtt {
        settings.subscription = Some(mqtt::MqttSettings::from_config(cfg).subscription());
    }
    Ok(settings)
}

struct GuardState {
    breaker: Breaker,
    stats: CloudStats,
    /// Whether a repaired answer was logged at warn yet; later ones go to debug.
    fixes_warned: bool,
}

/// A [`BigModel`] behind the timeout, the breaker and the counters.
pub struct JointClient {
    model: Arc<dyn BigModel>,
    timeout: Duration,
    state: Mutex<GuardState>,
}

impl JointClient {
    pub fn new(model: Arc<dyn BigModel>, settings: JointSettings) -> Self {
        Self {
            model,
            timeout: settings.timeout,
            state: Mutex::new(GuardState {
                breaker: Breaker::new(settings.breaker),
                stats: CloudStats::default(),
                fixes_warned: false,
            }),
        }
    }

    /// The client `[cloud] protocol` asks for; the MQTT one shares the uplink's session, which
    /// must have been opened with [`uplink_settings`]. `None` without a cloud.
    pub fn from_config(
        cfg: &Config,
        uplink: Option<&UplinkHandle>,
    ) -> Result<Option<Self>, JointError> {
        let model: Arc<dyn BigModel> = match (cfg.cloud.protocol, uplink) {
            (CloudProtocol::SednaHttp, _) => {
                let client = sedna_http::SednaHttpClient::new(
                    &sedna_http::SednaHttpSettings::from_config(cfg),
                )?;
                tracing::info!(url = %helmet_pipelines::redact::redact(&client.predict_url()), "hard examples go to a Sedna cloud");
                Arc::new(client)
            }
            (CloudProtocol::Mqtt, Some(uplink)) => {
                mqtt::MqttClient::over_uplink(uplink, mqtt::MqttSettings::from_config(cfg))?
            }
            (CloudProtocol::Mqtt, None) | (CloudProtocol::None, _) => return Ok(None),
        };
        Ok(Some(Self::new(model, JointSettings::from_config(cfg))))
    }

    pub fn stats(&self) -> CloudStats {
        let link = self.model.link_stats();
        CloudStats {
            late: link.late,
            unmatched: link.unmatched,
            spooled_unwaited: link.spooled_unwaited,
            ..self.lock().stats
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.lock().breaker.state()
    }

    fn lock(&self) -> MutexGuard<'_, GuardState> {
        // Nothing in the critical sections panics; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks about `image` (the letterbox content of the frame `meta` describes, see
    /// [`HardExampleMeta::for_frame`]) and waits at most the timeout for the boxes, in
    /// camera-frame pixels. The timeout counts from here: encoding and any spool write
    /// included.
    pub async fn ask(&self, image: &RgbImage, meta: &HardExampleMeta) -> CloudAnswer {
        let started = Instant::now();
        let admission = {
            let mut state = self.lock();
            let admission = state.breaker.admit(started);
            if admission == Admission::Refused {
                state.stats.breaker_open_skips += 1;
            } else {
                state.stats.asked += 1;
            }
            admission
        };
        if admission == Admission::Refused {
            self.model.skipped(image, meta).await;
            return CloudAnswer::BreakerOpen;
        }
        let attempt = Attempt {
            client: self,
            probe: admission == Admission::Probe,
            finished: false,
        };
        match tokio::time::timeout_at(started + self.timeout, self.model.ask(image, meta)).await {
            Ok(Ok(reply)) => attempt.succeed(reply, started.elapsed()),
            Ok(Err(e)) => attempt.fail(e),
            Err(_) => attempt.time_out(),
        }
    }
}

/// One admitted request. Dropped unfinished (the caller cancelled `ask`), a probe counts as
/// failed so the breaker cannot stay half-open forever.
struct Attempt<'a> {
    client: &'a JointClient,
    probe: bool,
    finished: bool,
}

impl<'a> Attempt<'a> {
    /// Marks the attempt finished; the caller records the outcome.
    fn finish(&mut self) -> MutexGuard<'a, GuardState> {
        self.finished = true;
        self.client.lock()
    }

    fn succeed(mut self, reply: Reply, rtt: Duration) -> CloudAnswer {
        let mut state = self.finish();
        state.stats.answered += 1;
        let fixes = reply.fixes;
        if !fixes.is_empty() {
            state.stats.boxes_clipped += fixes.clipped;
            state.stats.boxes_dropped += fixes.dropped;
            state.stats.boxes_over_cap += fixes.over_cap;
            let source = &reply.source;
            if std::mem::replace(&mut state.fixes_warned, true) {
                tracing::debug!(source, ?fixes, "repaired the boxes of a cloud answer");
            } else {
                tracing::warn!(
                    source,
                    ?fixes,
                    "repaired the boxes of a cloud answer (more are logged at debug level)"
                );
            }
        }
        // Any answer is evidence the cloud works, probe or not.
        state.breaker.record_success();
        CloudAnswer::Answered(reply.boxes, rtt)
    }

    fn fail(mut self, error: AskError) -> CloudAnswer {
        let probe = self.probe;
        let mut state = self.finish();
        state.stats.failed += 1;
        // A local failure says nothing about the cloud; only a probe must still end, or the
        // breaker would stay half-open.
        if !error.is_local() || probe {
            state.breaker.record_failure(Instant::now(), probe);
        }
        CloudAnswer::Failed(error)
    }

    fn time_out(mut self) -> CloudAnswer {
        let probe = self.probe;
        let mut state = self.finish();
        state.stats.timed_out += 1;
        state.breaker.record_failure(Instant::now(), probe);
        CloudAnswer::Late
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.client
                .lock()
                .breaker
                .record_failure(Instant::now(), true);
        }
    }
}
