//! `helmetd status`: asks a running daemon for `/status` and prints a short summary.

use std::time::Duration;

use helmet_pipelines::cpu::CpuFeatures;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::page::EpisodesView;
use crate::telemetry::snapshot::{Snapshot, WorkerState};

/// `helmetd status`'s default: the daemon's default `[http] listen`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

/// A request to a daemon on this host answers in milliseconds; one that does not is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/status` document: the last snapshot plus what only the server knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub uptime_s: f64,
    /// `/healthz`: the control loop ticked recently.
    pub live: bool,
    /// `/readyz`'s reasons; empty when ready.
    pub missing: Vec<String>,
    /// Which INT8 kernels this gateway's CPU runs: scores and timings depend on it.
    pub cpu: CpuFeatures,
    /// Open and recently ended alert episodes.
    #[serde(default)]
    pub alerts: EpisodesView,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot start the client runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to {addr} (is helmetd running with [http] listen = {addr:?}?)")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP request to {addr} failed")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("{addr} sent an unreadable /status")]
    Json {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
}

/// GET `/status` from the daemon at `addr` (`host:port`), bounded by a timeout.
pub fn fetch_status(addr: &str) -> Result<StatusReport, StatusError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatusError::Runtime)?;
    let (status, body) = runtime
        // The timer must be created inside the runtime: `block_on` enters it.
        .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, get(addr, "/status")).await })
        .map_err(|_| StatusError::Timeout {
            addr: addr.to_string(),
            timeout: REQUEST_TIMEOUT,
        })??;
    if status != 200 {
        return Err(StatusError::Status {
            addr: addr.to_string(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| StatusError::Json {
        addr: addr.to_string(),
        source,
    })
}

async fn get(addr: &str, path: &str) -> Result<(u16, Bytes), StatusError> {
    let http = |source| StatusError::Http {
        addr: addr.to_string(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| StatusError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection future drives the socket; it ends when the response is read.
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, addr)
        .body(Empty::<Bytes>::new())
        // `connect` accepted `addr`, so it is a valid host:port and header value.
        .expect("a connectable address is a valid Host header");
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(http)?;
    Ok((status, body.to_bytes()))
}

/// `helmetd status [--address ADDR]`: the summary to print.
pub fn status_command(addr: &str) -> anyhow::Result<String> {
    Ok(render(&fetch_status(addr)?))
}

/// A few lines for a person at the gateway's console.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;

    let s = &report.snapshot;
    let uptime = humantime::format_duration(Duration::from_secs(report.uptime_s as u64));
    let health = match (report.live, report.missing.is_empty()) {
        (false, _) => "NOT LIVE: the control loop is stuck".to_string(),
        (true, true) => "ready".to_string(),
        (true, false) => format!("not ready: {}", report.missing.join("; ")),
    };
    let mut out = format!("node {}, up {uptime}, {health}\n", s.node);
    let _ = writeln!(out, "cpu: {}", report.cpu.summary());
    let _ = writeln!(out, "cameras:");
    let width = s.cameras.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &s.cameras {
        let _ = writeln!(
            out,
            "  {:width$}  {:9}  {:5.1} fps  ({} still, {} dropped, {} reconnects){}",
            c.name,
            c.state.as_str(),
            c.fps,
            c.frames_still,
            c.frames_dropped,
            c.reconnects,
            if c.in_schedule {
                ""
            } else {
                ", off schedule: no alerts"
            },
        );
    }
    let ready = s
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    let _ = writeln!(
        out,
        "workers: {ready} ready / {} desired ({} running)",
        s.replicas.desired, s.replicas.current
    );
    let c = &s.counters;
    let _ = writeln!(
        out,
        "frames {}, hard {}, cloud {} answered / {} late / {} failed / {} skipped, alerts {}",
        c.frames, c.hard, c.cloud_answered, c.cloud_late, c.cloud_failed, c.cloud_skipped, c.alerts
    );
    render_alerts(&mut out, &report.alerts);
    let _ = match &s.uplink {
        Some(u) => writeln!(
            out,
            "mqtt: {} ({} reconnects), spool {} waiting ({} bytes, {} dropped)",
            if u.mqtt_connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            u.reconnects,
            u.spool_depth,
            u.spool_bytes,
            u.spool_dropped
        ),
        None => writeln!(out, "mqtt: off"),
    };
    out
}

/// Unix milliseconds as RFC 3339 UTC; the number itself when it is no time humantime can write
/// (it comes from the network).
fn utc(ms: u64) -> String {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    match std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) if ms < YEAR_10000_MS => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("{ms} ms after 1970"),
    }
}

/// Open alerts listed on the console; the page shows them all.
const OPEN_ALERTS_LISTED: usize = 10;

fn render_alerts(out: &mut String, alerts: &EpisodesView) {
    use std::fmt::Write;

    let _ = writeln!(
        out,
        "alerts: {} open, {} ended recently",
        alerts.open.len(),
        alerts.recent.len()
    );
    for e in alerts.open.iter().rev().take(OPEN_ALERTS_LISTED) {
        let zones = match e.zones.is_empty() {
            true => String::new(),
            false => format!(" in {}", e.zones.join(", ")),
        };
        let _ = writeln!(
            out,
            "  {} #{}  {} {:.2}{zones}, since {}, {} frames",
            e.camera,
            e.track_id,
            e.label,
            e.top_score,
            utc(e.start_ms),
            e.frames,
        );
    }
    if alerts.open.len() > OPEN_ALERTS_LISTED {
        let _ = writeln!(
            out,
            "  … and {} more (oldest not listed)",
            alerts.open.len() - OPEN_ALERTS_LISTED
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::snapshot::{CameraSnapshot, CameraState, UplinkSnapshot};

    #[test]
    fn render_summarises_the_report() {
        let report = StatusReport {
            uptime_s: 3723.4,
            live: true,
            missing: vec!["no worker is ready".into()],
            cpu: CpuFeatures {
                arch: "x86_64".into(),
                features: vec!["avx2".into()],
                int8_kernels: "avx2".into(),
            },
            alerts: EpisodesView {
                open: vec![crate::page::EpisodeView {
                    camera: "gate".into(),
                    track_id: 4,
                    label: "Without Helmet".into(),
                    top_score: 0.812,
                    zones: vec!["scaffold".into()],
                    start_ms: 1_700_000_000_000,
                    frames: 9,
                    ..Default::default()
                }],
                ..Default::default()
            },
            snapshot: Snapshot {
                node: "gw-1".into(),
                cameras: vec![CameraSnapshot {
                    name: "gate".into(),
                    state: CameraState::Streaming,
                    fps: 4.96,
                    ..Default::default()
                }],
                uplink: Some(UplinkSnapshot {
                    spool_depth: 7,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let text = render(&report);
        assert!(
            text.starts_with("node gw-1, up 1h 2m 3s, not ready: no worker is ready\n"),
            "{text}"
        );
        assert!(text.contains("  gate  streaming    5.0 fps"), "{text}");
        assert!(
            text.contains("cpu: x86_64 avx2 (INT8 kernels: avx2)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "alerts: 1 open, 0 ended recently\n  gate #4  Without Helmet 0.81 in scaffold, \
                 since 2023-11-14T22:13:20Z, 9 frames\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("mqtt: DISCONNECTED (0 reconnects), spool 7 waiting"),
            "{text}"
        );
        assert_eq!(utc(u64::MAX), format!("{} ms after 1970", u64::MAX));
        let json = serde_json::to_string(&report).expect("serializes");
        assert_eq!(
            serde_json::from_str::<StatusReport>(&json).expect("reads back"),
            report
        );
    }
}
