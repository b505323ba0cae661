//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`, and the page (`/`,
//! `/history`, `/cameras/<name>/latest.jpg`, `/alerts/<id>/snapshot.jpg`), served by axum on
//! the daemon's tokio runtime behind [`super::guard`] (connection cap and deadlines). Handlers
//! read only [`Telemetry`]: atomics, the last snapshot and the [`PageBoard`]. Every route is a
//! GET: nothing served here changes the daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::guard::{self, ConnectionLimits, ConnectionStats};
use super::metrics::{CONTENT_TYPE, Metrics};
use super::status::StatusReport;
use crate::page::{INDEX_HTML, PageBoard};
use crate::telemetry::snapshot::{CameraState, Snapshot, WorkerState};

/// `/healthz` fails once the control loop has not ticked for this long: the loop ticks every
/// 20 ms, so 5 s means it is stuck, not busy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`HttpServer::stop`] waits for requests in progress before it aborts the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {addr:?} is not an address like 127.0.0.1:9464")]
    Address {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server on {addr} did not stop within {timeout:?}; aborted")]
    StopTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP server task on {addr} ended abnormally")]
    Task {
        addr: SocketAddr,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Liveness of the control loop: it calls [`Health::tick`] every iteration.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last tick; an atomic so ticking costs the loop nothing.
    last_tick_ms: AtomicU64,
    timeout: Duration,
}

impl Health {
    /// Creation counts as a tick: start-up (camera pipelines, the worker sweep) runs before the
    /// loop's first iteration and must not read as a hang.
    pub fn new(timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            timeout,
        }
    }

    pub fn tick(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn is_live(&self) -> bool {
        self.silence() <= self.timeout
    }

    /// Time since the daemon created its telemetry, i.e. since it started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// What the control loop writes and the server reads.
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
    /// The server's own: refused and timed-out connections, for `/metrics`.
    pub connections: Arc<ConnectionStats>,
    /// What the page shows beyond the snapshot: latest frames, alert episodes, history.
    pub page: PageBoard,
}

impl Telemetry {
    /// `health_timeout`: [`HEALTH_TIMEOUT`] in the daemon, shorter in tests.
    pub fn new(health_timeout: Duration) -> Self {
        Self {
            metrics: Metrics::new(),
            health: Health::new(health_timeout),
            connections: Arc::default(),
            page: PageBoard::default(),
        }
    }

    /// The `/status` document; `None` before the loop's first snapshot.
    pub fn status(&self) -> Option<StatusReport> {
        let snapshot = self.metrics.latest()?;
        Some(StatusReport {
            uptime_s: self.health.uptime().as_secs_f64(),
            live: self.health.is_live(),
            missing: readiness(Some(&snapshot)),
            cpu: helmet_pipelines::cpu::CpuFeatures::detect(),
            alerts: self.page.episodes(),
            snapshot: Snapshot::clone(&snapshot),
        })
    }
}

/// What keeps the daemon from being ready; empty when it is: every enabled camera streaming and
/// at least one worker ready (a frame can be detected end to end).
pub fn readiness(snapshot: Option<&Snapshot>) -> Vec<String> {
    let Some(snapshot) = snapshot else {
        return vec!["the control loop has not reported yet".to_string()];
    };
    let mut missing: Vec<String> = snapshot
        .cameras
        .iter()
        .filter(|c| c.state != CameraState::Streaming)
        .map(|c| format!("camera {} is {}", c.name, c.state.as_str()))
        .collect();
    if !snapshot
        .workers
        .iter()
        .any(|w| w.state == WorkerState::Ready)
    {
        missing.push("no worker is ready".to_string());
    }
    missing
}

/// The running server. Dropping it also stops the server (the stop channel closes), without
/// waiting; [`HttpServer::stop`] waits, bounded.
pub struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` (e.g. `127.0.0.1:9464`; port 0 picks a free one, see
    /// [`HttpServer::local_addr`]) at once, so a taken port fails the start-up rather than a
    /// background task, then serves on `runtime` under `limits`.
    pub fn start(
        listen: &str,
        limits: ConnectionLimits,
        telemetry: Arc<Telemetry>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, HttpError> {
        let requested: SocketAddr = listen.parse().map_err(|source| HttpError::Address {
            addr: listen.to_string(),
            source,
        })?;
        let bind = |source| HttpError::Bind {
            addr: requested,
            source,
        };
        let std_listener = std::net::TcpListener::bind(requested).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let addr = std_listener.local_addr().map_err(bind)?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
        };
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/", get(page))
            .route("/history", get(history))
            .route("/cameras/:camera/latest.jpg", get(camera_frame))
            .route("/alerts/:id/snapshot.jpg", get(alert_snapshot))
            .with_state(telemetry.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(guard::serve(
            "http",
            listener,
            app,
            limits,
            telemetry.connections.clone(),
            async {
                // A dropped sender stops the server as well.
                let _ = stopped.await;
            },
        ));
        tracing::info!(%addr, "HTTP endpoint: the page at http://{addr}/, /metrics /healthz /readyz /status");
        Ok(Self { addr, stop, task })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish, and aborts after a short timeout.
    pub async fn stop(self) -> Result<(), HttpError> {
        let Self {
            addr,
            stop,
            mut task,
        } = self;
        let _ = stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, &mut task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(HttpError::Task { addr, source }),
            Err(_) => {
                task.abort();
                Err(HttpError::StopTimeout {
                    addr,
                    timeout: STOP_TIMEOUT,
                })
            }
        }
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> Response {
    telemetry
        .metrics
        .store_connections(telemetry.connections.counts());
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        telemetry.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    if telemetry.health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let silence = telemetry.health.silence();
        let body = format!("control loop silent for {:.1} s\n", silence.as_secs_f64());
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let missing = readiness(telemetry.metrics.latest().as_deref());
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = json!({ "ready": false, "missing": missing });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn status(State(telemetry): State<Arc<Telemetry>>) -> Response {
    match telemetry.status() {
        Some(report) => axum::Json(report).into_response(),
        None => {
            let body = json!({ "error": "the control loop has not reported yet" });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// The page's script and style are inline and it loads nothing from elsewhere; the policy says
/// so, so that nothing injected into a camera name or an error could load or send anything.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn history(State(telemetry): State<Arc<Telemetry>>) -> Response {
    axum::Json(json!({ "points": telemetry.page.history() })).into_response()
}

/// The camera's latest frame, drawn and encoded on a blocking thread (milliseconds of CPU).
async fn camera_frame(
    State(telemetry): State<Arc<Telemetry>>,
    Path(camera): Path<String>,
) -> Response {
    let encoded = tokio::task::spawn_blocking(move || telemetry.page.frame_jpeg(&camera)).await;
    match encoded {
        Ok(Some(jpeg)) => jpeg_response(jpeg),
        Ok(None) => (StatusCode::NOT_FOUND, "no frame from this camera yet\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn alert_snapshot(
    State(telemetry): State<Arc<Telemetry>>,
    Path(id): Path<String>,
) -> Response {
    match telemetry.page.alert_snapshot(&id) {
        Some(jpeg) => jpeg_response(jpeg),
        None => (StatusCode::NOT_FOUND, "no snapshot for this alert\n").into_response(),
    }
}

fn jpeg_response(jpeg: bytes::Bytes) -> Response {
    let mut response = jpeg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::snapshot::{CameraSnapshot, WorkerSnapshot};

    #[test]
    fn readiness_names_what_is_missing() {
        assert_eq!(readiness(None).len(), 1);
        let mut snapshot = Snapshot {
            cameras: vec![CameraSnapshot {
                name: "gate".into(),
                state: CameraState::Backoff,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            readiness(Some(&snapshot)),
            ["camera gate is backoff", "no worker is ready"]
        );
        snapshot.cameras[0].state = CameraState::Streaming;
        snapshot.workers.push(WorkerSnapshot {
            state: WorkerState::Ready,
            ..Default::default()
        });
        assert!(readiness(Some(&snapshot)).is_empty());
    }

    #[test]
    fn health_expires_without_ticks() {
        let health = Health::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.is_live());
        let health = Health::new(Duration::from_secs(60));
        health.tick();
        assert!(health.is_live());
    }

    #[test]
    fn bind_errors_name_the_address() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let telemetry = Arc::new(Telemetry::new(HEALTH_TIMEOUT));
        let limits =
            ConnectionLimits::from_http(&crate::config::Config::embedded_default().unwrap().http);
        let first = HttpServer::start("127.0.0.1:0", limits, telemetry.clone(), runtime.handle())
            .expect("free port");
        let taken = first.local_addr().to_string();
        let Err(e) = HttpServer::start(&taken, limits, telemetry.clone(), runtime.handle()) else {
            panic!("second bind on {taken} succeeded");
        };
        assert!(matches!(e, HttpError::Bind { .. }), "{e:?}");
        assert!(e.to_string().contains(&taken), "{e}");
        let Err(e) = HttpServer::start("localhost", limits, telemetry, runtime.handle()) else {
            panic!("no port accepted");
        };
        assert!(e.to_string().contains("\"localhost\""), "{e}");
        runtime.block_on(first.stop()).expect("stops");
    }
}
