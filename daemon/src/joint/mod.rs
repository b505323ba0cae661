//! Joint inference: asking the big model about a hard example, and waiting a bounded time.
//!
//! Two ways reach a big model, both behind [`BigModel`]: [`mqtt::MqttClient`] sends a JPEG to
//! `helmetd cloud` over the uplink's MQTT 5 session ([`protocol`] is that contract), and
//! [`sedna_http::SednaHttpClient`] posts raw pixels to an unmodified Sedna `BigModelService`.
//! Both get the frame's letterbox content and answer in camera-frame pixels.
//!
//! One [`JointClient`] guards either: it owns the timeout, the circuit [`breaker`], the
//! [`pacer`] and the counters, so both protocols time out, fail and recover alike. Unlike
//! Sedna's own client (no timeout, 5 attempts 3 s apart, no memory of a dead cloud) an `ask`
//! never takes longer than `cloud.timeout_ms` from start to parsed answer, and while the cloud
//! is known to be down asking costs nothing.
//!
//! The guard tells a *slow* cloud from a *down* one. Slow (a refusal as busy, an answer after
//! the timeout, a timeout while the cloud answered others, a reported load the next request
//! would not beat) paces the client: it admits requests at the rate the cloud keeps up with and
//! decides the rest on the edge ([`CloudAnswer::Paced`]). Down (no sign of life: a refused
//! connection, no answer at all, an unreadable one, an error status) feeds the breaker, which
//! backs off.

pub mod breaker;
pub mod budget;
pub mod mqtt;
pub mod pacer;
pub mod protocol;
pub mod sedna_http;

pub use breaker::{BreakerSettings, BreakerState};
pub use pacer::{PacerSettings, PacingState};
pub use protocol::{CloudLoad, HardExampleMeta};

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
use pacer::{Pacer, Timeout, Verdict};
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
    /// How busy the replica said it was; `None` from a cloud that does not say (Sedna's own
    /// server).
    pub load: Option<CloudLoad>,
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
    /// Of `late`, answers to requests that had timed out waiting: the cloud lives but is slow.
    pub late_after_timeout: u64,
    /// The last of those.
    pub last_late: Option<LateAnswer>,
}

/// An answer that came after its request timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateAnswer {
    pub at: Instant,
    /// The load its replica reported.
    pub load: Option<CloudLoad>,
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
    /// The cloud is slow and the client already sends what it keeps up with: not sent.
    Paced,
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
    Refused {
        message: String,
        replica: String,
        load: Option<CloudLoad>,
    },
    #[error("unreadable answer: {0}")]
    BadResponse(#[from] ResponseError),
    /// The Sedna HTTP cloud (`protocol = "sedna-http"`) failed to answer.
    #[error(transparent)]
    SednaHttp(#[from] sedna_http::SednaHttpError),
    /// The hard example could not be encoded: nothing was sent.
    #[error("cannot encode a hard example: {0}")]
    Encode(#[from] OutputError),
}

/// What a failed request says about the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// A failure of this edge: nothing about the cloud.
    Local,
    /// The cloud lives but is too busy for this request.
    Busy(Option<CloudLoad>),
    /// No sign that the cloud can serve: for the breaker.
    Down,
}

impl AskError {
    fn signal(&self) -> Signal {
        match self {
            Self::Encode(_) => Signal::Local,
            Self::Refused { message, load, .. } if protocol::is_busy_refusal(message) => {
                Signal::Busy(*load)
            }
            Self::SednaHttp(e) if e.is_busy() => Signal::Busy(e.load()),
            _ => Signal::Down,
        }
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
    /// Hard examples not sent because the client paced itself for a slow cloud.
    pub paced: u64,
    /// Signs of a slow cloud: busy refusals, late answers, timeouts while the cloud answered
    /// others, answers whose reported load the next request would not beat.
    pub slow: u64,
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
    pacer: Pacer,
    stats: CloudStats,
    /// Whether a repaired answer was logged at warn yet; later ones go to debug.
    fixes_warned: bool,
    /// `LinkStats::late_after_timeout` as last seen.
    late_seen: u64,
}

impl GuardState {
    /// Late answers that arrived since the last look: the cloud lives, and is slow.
    fn note_late(&mut self, link: &LinkStats) {
        if link.late_after_timeout <= self.late_seen {
            return;
        }
        self.late_seen = link.late_after_timeout;
        if let Some(late) = link.last_late {
            self.stats.slow += 1;
            self.pacer.on_slow(late.at, late.load);
            self.breaker.record_success();
        }
    }
}

/// What the guard lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Send { probe: bool },
    BreakerOpen,
    Paced,
}

/// A [`BigModel`] behind the timeout, the breaker, the pacer and the counters.
pub struct JointClient {
    model: Arc<dyn BigModel>,
    timeout: Duration,
    state: Mutex<GuardState>,
}

impl JointClient {
    /// Paces with the default [`PacerSettings`] for `settings.timeout`.
    pub fn new(model: Arc<dyn BigModel>, settings: JointSettings) -> Self {
        let pacer = PacerSettings {
            deadline: settings.timeout,
            ..PacerSettings::default()
        };
        Self::with_pacer(model, settings, pacer)
    }

    pub fn with_pacer(
        model: Arc<dyn BigModel>,
        settings: JointSettings,
        pacer: PacerSettings,
    ) -> Self {
        Self {
            model,
            timeout: settings.timeout,
            state: Mutex::new(GuardState {
                breaker: Breaker::new(settings.breaker),
                pacer: Pacer::new(pacer),
                stats: CloudStats::default(),
                fixes_warned: false,
                late_seen: 0,
            }),
        }
    }

    /// The client `[cloud] protocol` asks for; the MQTT one shares the uplink's session, which
    /// must have been opened with [`uplink_settings`]. `None` without a cloud.
    pub fn from_config(
        cfg: &Config,
        uplink: Option<&UplinkHandle>,
    ) -> Result<Option<Self>, JointError> {
        let settings = JointSettings::from_config(cfg);
        let model: Arc<dyn BigModel> = match (cfg.cloud.protocol, uplink) {
            (CloudProtocol::SednaHttp, _) => {
                let client = sedna_http::SednaHttpClient::new(
                    &sedna_http::SednaHttpSettings::from_config(cfg),
                )?
                .with_wait(settings.timeout);
                tracing::info!(url = %helmet_pipelines::redact::redact(&client.predict_url()), "hard examples go to a Sedna cloud");
                Arc::new(client)
            }
            (CloudProtocol::Mqtt, Some(uplink)) => {
                mqtt::MqttClient::over_uplink(uplink, mqtt::MqttSettings::from_config(cfg))?
            }
            (CloudProtocol::Mqtt, None) | (CloudProtocol::None, _) => return Ok(None),
        };
        Ok(Some(Self::new(model, settings)))
    }

    pub fn stats(&self) -> CloudStats {
        let link = self.model.link_stats();
        let mut state = self.lock();
        state.note_late(&link);
        CloudStats {
            late: link.late,
            unmatched: link.unmatched,
            spooled_unwaited: link.spooled_unwaited,
            ..state.stats
        }
    }

    /// How long a question waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.lock().breaker.state()
    }

    pub fn pacing(&self) -> PacingState {
        self.synced().pacer.state()
    }

    /// The guard's state with the link's news applied.
    fn synced(&self) -> MutexGuard<'_, GuardState> {
        // Read before locking: the link has its own lock, never taken inside ours.
        let link = self.model.link_stats();
        let mut state = self.lock();
        state.note_late(&link);
        state
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
        let probe = match self.admit(started) {
            Gate::Send { probe } => probe,
            Gate::BreakerOpen => {
                self.model.skipped(image, meta).await;
                return CloudAnswer::BreakerOpen;
            }
            // Not spooled either: more requests are what a slow cloud has too many of.
            Gate::Paced => return CloudAnswer::Paced,
        };
        let attempt = Attempt {
            client: self,
            probe,
            started,
            finished: false,
        };
        match tokio::time::timeout_at(started + self.timeout, self.model.ask(image, meta)).await {
            Ok(Ok(reply)) => attempt.succeed(reply, started.elapsed()),
            Ok(Err(e)) => attempt.fail(e),
            Err(_) => attempt.time_out(),
        }
    }

    /// The breaker first (a cloud that is down is not asked at all), then the pace. The
    /// breaker's probe goes whatever the pace: it alone can close the breaker.
    fn admit(&self, now: Instant) -> Gate {
        let mut state = self.synced();
        let gate = match state.breaker.admit(now) {
            Admission::Refused => Gate::BreakerOpen,
            Admission::Probe => {
                state.pacer.sent(now);
                Gate::Send { probe: true }
            }
            Admission::Allowed if state.pacer.admit(now) => Gate::Send { probe: false },
            Admission::Allowed => Gate::Paced,
        };
        match gate {
            Gate::Send { .. } => state.stats.asked += 1,
            Gate::BreakerOpen => state.stats.breaker_open_skips += 1,
            Gate::Paced => state.stats.paced += 1,
        }
        gate
    }
}

/// One admitted request. Dropped unfinished (the caller cancelled `ask`), a probe counts as
/// failed so the breaker cannot stay half-open forever.
struct Attempt<'a> {
    client: &'a JointClient,
    probe: bool,
    started: Instant,
    finished: bool,
}

impl<'a> Attempt<'a> {
    /// Marks the attempt finished; the caller records the outcome.
    fn finish(&mut self) -> MutexGuard<'a, GuardState> {
        self.finished = true;
        self.client.synced()
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
        if state.pacer.on_answer(Instant::now(), rtt, reply.load) == Verdict::Slow {
            state.stats.slow += 1;
        }
        CloudAnswer::Answered(reply.boxes, rtt)
    }

    fn fail(mut self, error: AskError) -> CloudAnswer {
        let probe = self.probe;
        let mut state = self.finish();
        state.stats.failed += 1;
        let now = Instant::now();
        match error.signal() {
            // A local failure says nothing about the cloud; only a probe must still end, or
            // the breaker would stay half-open.
            Signal::Local if probe => state.breaker.record_failure(now, true),
            Signal::Local => {}
            // A busy cloud answered: it is up, and gets fewer requests rather than none.
            Signal::Busy(load) => {
                state.stats.slow += 1;
                state.breaker.record_success();
                state.pacer.on_slow(now, load);
            }
            Signal::Down => state.breaker.record_failure(now, probe),
        }
        CloudAnswer::Failed(error)
    }

    fn time_out(mut self) -> CloudAnswer {
        let (probe, started) = (self.probe, self.started);
        let mut state = self.finish();
        state.stats.timed_out += 1;
        let now = Instant::now();
        match state.pacer.on_timeout(now, started) {
            Timeout::Slow => {
                state.stats.slow += 1;
                // A probe that met a living cloud ends the back-off like an answer would.
                if probe {
                    state.breaker.record_success();
                }
            }
            Timeout::Down => state.breaker.record_failure(now, probe),
        }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::SystemTime;

    use hyper::StatusCode;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);
    /// Longer than the slowest pace (0.2/s): the next ask is admitted.
    const PAUSE: Duration = Duration::from_secs(6);

    /// What the scripted cloud does with the next request.
    enum Step {
        Answer(Option<CloudLoad>),
        Fail(AskError),
        Silent,
    }

    /// A cloud that follows a script, and a link whose late answers the test sets.
    #[derive(Default)]
    struct Scripted {
        steps: std::sync::Mutex<VecDeque<Step>>,
        link: std::sync::Mutex<LinkStats>,
    }

    impl Scripted {
        fn then(&self, step: Step) {
            self.steps.lock().unwrap().push_back(step);
        }

        fn late_answer(&self, load: Option<CloudLoad>) {
            let mut link = self.link.lock().unwrap();
            link.late += 1;
            link.late_after_timeout += 1;
            link.last_late = Some(LateAnswer {
                at: Instant::now(),
                load,
            });
        }
    }

    impl BigModel for Scripted {
        fn ask<'a>(
            &'a self,
            _image: &'a RgbImage,
            _meta: &'a HardExampleMeta,
        ) -> BoxFuture<'a, Result<Reply, AskError>> {
            let step = self.steps.lock().unwrap().pop_front();
            Box::pin(async move {
                match step {
                    Some(Step::Answer(load)) => Ok(Reply {
                        boxes: Vec::new(),
                        fixes: BoxFixes::default(),
                        source: "scripted".into(),
                        load,
                    }),
                    Some(Step::Fail(error)) => Err(error),
                    Some(Step::Silent) | None => std::future::pending().await,
                }
            })
        }

        fn link_stats(&self) -> LinkStats {
            *self.link.lock().unwrap()
        }
    }

    fn guarded() -> (Arc<Scripted>, JointClient) {
        let cloud = Arc::new(Scripted::default());
        let settings = JointSettings {
            timeout: TIMEOUT,
            breaker: BreakerSettings::default(),
        };
        (cloud.clone(), JointClient::new(cloud, settings))
    }

    async fn ask(guard: &JointClient) -> CloudAnswer {
        let meta = HardExampleMeta {
            camera: "c".into(),
            seq: 1,
            capture_time: SystemTime::UNIX_EPOCH,
            edge_result: Vec::new(),
            orig_w: 8,
            orig_h: 8,
            scale: 1.0,
        };
        guard.ask(&RgbImage::new(8, 8), &meta).await
    }

    fn refused(message: &str) -> AskError {
        AskError::Refused {
            message: message.into(),
            replica: "r".into(),
            load: Some(CloudLoad {
                queue: 4,
                recent_infer: Duration::from_millis(500),
            }),
        }
    }

    fn sedna_status(status: StatusCode) -> AskError {
        sedna_refusal(status, None)
    }

    fn sedna_refusal(status: StatusCode, load: Option<CloudLoad>) -> AskError {
        AskError::SednaHttp(sedna_http::SednaHttpError::Status {
            authority: "cloud:5000".into(),
            status,
            body: String::new(),
            load,
        })
    }

    #[test]
    fn a_sedna_refusal_is_busy_with_its_load_as_an_mqtt_one() {
        let load = CloudLoad {
            queue: 4,
            recent_infer: Duration::from_millis(500),
        };
        let busy = sedna_refusal(StatusCode::SERVICE_UNAVAILABLE, Some(load));
        assert_eq!(busy.signal(), refused(protocol::EXPIRED).signal());
        assert_eq!(busy.signal(), Signal::Busy(Some(load)));
        assert_eq!(
            sedna_status(StatusCode::SERVICE_UNAVAILABLE).signal(),
            Signal::Busy(None),
            "Sedna's own server reports no load"
        );
        assert_eq!(
            sedna_status(StatusCode::INTERNAL_SERVER_ERROR).signal(),
            Signal::Down
        );
    }

    fn is_open(guard: &JointClient) -> bool {
        matches!(guard.breaker_state(), BreakerState::Open { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn busy_refusals_pace_and_errors_without_a_sign_of_life_open_the_breaker() {
        let (cloud, guard) = guarded();
        for busy in [
            refused(protocol::OVERLOADED),
            refused(protocol::EXPIRED),
            sedna_status(StatusCode::SERVICE_UNAVAILABLE),
            sedna_status(StatusCode::TOO_MANY_REQUESTS),
        ] {
            cloud.then(Step::Fail(busy));
            assert!(matches!(ask(&guard).await, CloudAnswer::Failed(_)));
            assert!(matches!(ask(&guard).await, CloudAnswer::Paced));
            tokio::time::sleep(PAUSE).await;
        }
        assert!(!is_open(&guard), "busy is not down");
        assert!(guard.pacing().admitted_per_s.is_some());
        let stats = guard.stats();
        assert_eq!((stats.slow, stats.paced, stats.failed), (4, 4, 4));

        // Errors that say nothing about load: three in a row open the breaker, pace or not.
        for down in [
            refused("inference failed"),
            sedna_status(StatusCode::INTERNAL_SERVER_ERROR),
            AskError::Publish("queue full".into()),
        ] {
            assert!(!is_open(&guard));
            cloud.then(Step::Fail(down));
            assert!(matches!(ask(&guard).await, CloudAnswer::Failed(_)));
            tokio::time::sleep(PAUSE).await;
        }
        assert!(is_open(&guard));
        assert_eq!(guard.stats().slow, 4);

        // The probe meets a busy cloud: it lives, so the breaker closes and the pace holds.
        tokio::time::sleep(BreakerSettings::default().open_initial).await;
        cloud.then(Step::Fail(refused(protocol::OVERLOADED)));
        assert!(matches!(ask(&guard).await, CloudAnswer::Failed(_)));
        assert_eq!(guard.breaker_state(), BreakerState::Closed);
        assert!(matches!(ask(&guard).await, CloudAnswer::Paced));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_slow_silence_is_down() {
        let (cloud, guard) = guarded();
        // Silent, then answered late each time: the breaker never opens.
        for _ in 0..5 {
            cloud.then(Step::Silent);
            assert!(matches!(ask(&guard).await, CloudAnswer::Late));
            cloud.late_answer(Some(CloudLoad {
                queue: 3,
                recent_infer: Duration::from_millis(600),
            }));
            tokio::time::sleep(PAUSE).await;
        }
        assert!(!is_open(&guard));
        let stats = guard.stats();
        assert_eq!((stats.timed_out, stats.late, stats.slow), (5, 5, 5));
        assert!(guard.pacing().admitted_per_s.is_some());

        // In time again, and quick: the pace rises, and ends.
        for _ in 0..200 {
            if guard.pacing().admitted_per_s.is_none() {
                break;
            }
            cloud.then(Step::Answer(Some(CloudLoad {
                queue: 0,
                recent_infer: Duration::from_millis(100),
            })));
            if !matches!(ask(&guard).await, CloudAnswer::Answered(..)) {
                cloud.steps.lock().unwrap().clear();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(guard.pacing().admitted_per_s, None);

        // Silence with nothing late: an outage.
        for _ in 0..3 {
            cloud.then(Step::Silent);
            assert!(matches!(ask(&guard).await, CloudAnswer::Late));
        }
        assert!(is_open(&guard));
    }
}
