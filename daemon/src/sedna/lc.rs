//! Worker reports to Sedna's Local Controller, as Sedna's `LCReporter` sends them
//! (docs/sedna.md): every `lc_period_s`, `POST {lc_server}/sedna/workers/{worker}/info` with the
//! cumulative frame and hard-example counts, which the LC relays to the GM as the
//! JointInferenceService's `status.metrics`.
//!
//! Kept from Sedna: the message shape, cumulative counts, local `%Y-%m-%d %H:%M:%S` times, and no
//! message for a period without inference. Changed on purpose:
//! - each frame is counted once (Sedna counts a hard frame twice, so its ratio is hard/(frames+hard));
//! - `ownerName` is the service's name (`sedna.service_name`), not the job name `"sedna"`, so
//!   the GM updates the right JointInferenceService;
//! - one attempt per period, bounded by a timeout; a failed report does not end reporting (Sedna's
//!   thread dies on the first unreachable LC), and counts the LC has not acknowledged are sent
//!   again next period even without new inference;
//! - on shutdown, what the LC has not seen yet is sent once more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hyper::body::Bytes;
use hyper::header::HeaderMap;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use super::post::{PostError, post_json};
use crate::config::Config;
use crate::telemetry::snapshot::CounterSnapshot;

/// The LC answers on the node itself in milliseconds; one that does not within this is down.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon has processed since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub frames: u64,
    pub hard: u64,
}

impl From<&CounterSnapshot> for Totals {
    fn from(c: &CounterSnapshot) -> Self {
        Self {
            frames: c.frames,
            hard: c.hard,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcSettings {
    /// `host:port` of the LC.
    pub authority: String,
    /// `/sedna/workers/<worker>/info`, under `lc_server`'s own path.
    pub path: String,
    pub worker_name: String,
    pub namespace: String,
    pub owner_name: String,
    pub period: Duration,
    pub timeout: Duration,
}

/// `[sedna]` cannot be used for reports (read by the config, which checks the same).
pub use crate::config::LcConfigError as LcSettingsError;

impl LcSettings {
    /// `None` when `sedna.lc_server` is empty: no reports. The worker name defaults to the job
    /// name (Sedna's default) and the owner to the service name, else the job name.
    pub fn from_config(cfg: &Config) -> Result<Option<Self>, LcSettingsError> {
        let s = &cfg.sedna;
        Ok(s.lc_endpoint()?.map(|lc| Self {
            authority: lc.authority,
            path: lc.path,
            worker_name: lc.worker_name,
            namespace: s.namespace.clone(),
            owner_name: lc.owner_name,
            period: Duration::from_secs(s.lc_period_s),
            timeout: REPORT_TIMEOUT.min(Duration::from_secs(s.lc_period_s)),
        }))
    }
}

/// Sedna's `MessageContent` with its `ownerInfo` (times local, as Python's `strftime`).
pub fn report_body(
    settings: &LcSettings,
    totals: Totals,
    start: SystemTime,
    update: SystemTime,
) -> serde_json::Value {
    let time = |t: SystemTime| {
        chrono::DateTime::<chrono::Local>::from(t)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    json!({
        "name": settings.worker_name,
        "namespace": settings.namespace,
        "ownerName": settings.owner_name,
        "ownerKind": "jointinferenceservice",
        "kind": "inference",
        "results": [],
        "ownerInfo": {
            "startTime": time(start),
            "updateTime": time(update),
            "inferenceNumber": totals.frames,
            "hardExampleNumber": totals.hard,
            "uploadCloudRatio": totals.hard as f64 / totals.frames.max(1) as f64,
        },
    })
}

/// Reports sent and acknowledged so far.
#[derive(Debug, Default)]
struct Stats {
    attempts: AtomicU64,
    delivered: AtomicU64,
}

/// The running reporter; [`LcReporter::shutdown`] sends what is pending and stops it.
pub struct LcReporter {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
}

impl LcReporter {
    /// Starts reporting on `runtime`; `source` is read once per period.
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        settings: LcSettings,
        source: impl Fn() -> Totals + Send + 'static,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let stats = Arc::new(Stats::default());
        tracing::info!(
            url = %format!("http://{}{}", settings.authority, settings.path),
            period_s = settings.period.as_secs(),
            "Sedna LC reports"
        );
        let task = runtime.spawn(report_loop(settings, source, stopped, stats.clone()));
        Self {
            stop: Some(stop),
            task,
            stats,
        }
    }

    /// Reports attempted (sent, or failed to be) so far.
    pub fn attempts(&self) -> u64 {
        self.stats.attempts.load(Ordering::Relaxed)
    }

    /// Reports the LC answered 200 to so far.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// Sends the counts the LC has not acknowledged yet (within the timeout), then stops.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn report_loop(
    settings: LcSettings,
    source: impl Fn() -> Totals,
    mut stopped: oneshot::Receiver<()>,
    stats: Arc<Stats>,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + settings.period, settings.period);
    // After a slow report, the next one is a period later, not a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut outage = Outage::default();
    let mut acknowledged = 0;
    let mut period_start = SystemTime::now();
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = &mut stopped => true,
        };
        let now = SystemTime::now();
        let totals = source();
        if totals.frames > acknowledged {
            let body = report_body(&settings, totals, period_start, now).to_string();
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(settings.timeout, post(&settings, body)).await {
                Ok(Ok(())) => {
                    acknowledged = totals.frames;
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    outage.recovered();
                }
                Ok(Err(failure)) => outage.failed(failure),
                Err(_) => outage.failed(Failure {
                    kind: FailureKind::Timeout,
                    detail: format!("no answer within {:?}", settings.timeout),
                }),
            }
        }
        period_start = now;
        if stopping {
            break;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Connect,
    Http,
    Timeout,
    Status(u16),
}

#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    detail: String,
}

/// Logs the first failure of each kind in an outage, and its end, instead of one line a period.
#[derive(Debug, Default)]
struct Outage {
    failed: u64,
    logged: Vec<FailureKind>,
}

impl Outage {
    fn failed(&mut self, failure: Failure) {
        self.failed += 1;
        if self.logged.contains(&failure.kind) {
            tracing::debug!(error = %failure.detail, "Sedna LC report failed again");
        } else {
            self.logged.push(failure.kind);
            tracing::warn!(
                error = %failure.detail,
                "Sedna LC report failed; reports go on, this kind of failure is logged once"
            );
        }
    }

    fn recovered(&mut self) {
        if self.failed > 0 {
            tracing::info!(failed = self.failed, "Sedna LC reports delivered again");
        }
        *self = Self::default();
    }
}

/// The LC answers `{"Status":…,"Message":…}`; only the status matters, so little is read.
const MAX_LC_ANSWER: usize = 64 << 10;

/// One report on a fresh connection (one every `period`: nothing to keep alive).
async fn post(settings: &LcSettings, body: String) -> Result<(), Failure> {
    let authority = &settings.authority;
    let failure = |kind, detail: String| Failure {
        kind,
        detail: format!("http://{authority}{}: {detail}", settings.path),
    };
    let answer = post_json(
        authority,
        &settings.path,
        HeaderMap::new(),
        Bytes::from(body),
        MAX_LC_ANSWER,
    )
    .await;
    let (status, _, _) = answer.map_err(|e| match e {
        PostError::Connect(e) => failure(FailureKind::Connect, e.to_string()),
        PostError::Http(e) => failure(FailureKind::Http, e.to_string()),
        PostError::Request(e) => failure(FailureKind::Http, e.to_string()),
        PostError::Body => failure(FailureKind::Http, "the answer broke off".into()),
    })?;
    if status.is_success() {
        Ok(())
    } else {
        Err(failure(
            FailureKind::Status(status.as_u16()),
            format!("answered {status}"),
        ))
    }
}
