//! The gateway as a KubeEdge edge node: helmetd speaks to cloudcore what edgecore would
//! (shared/docs/kubeedge-protocol.md), so `kubectl get nodes` lists the gateway, Ready while it is
//! up and Unknown/NotReady when it is cut off. Operator-facing description: docs/kubeedge.md.
//!
//! - [`certs`]: bootstrap with the join token (`/ca.crt`, CA hash check, P-256 CSR, `/edge.crt`),
//!   storage in `cert_dir`, rotation at 70–90 % of the certificate's life.
//! - [`session`]: one mutual-TLS WebSocket to CloudHub: keepalive, Node insert, lease renewal,
//!   node-status patches (periodic, after every reconnect and on health changes), ACKs.
//! - this module: the task that keeps a session up (reconnecting with backoff) and its handle.
//!
//! # Wiring into `helmetd run`
//!
//! ```ignore
//! let kubeedge = config.kubeedge.enabled.then(|| {
//!     KubeEdge::spawn(tokio::runtime::Handle::current(), KubeEdgeSettings::from_config(&config))
//! });
//! // every second, from the daemon's own view of cameras and workers:
//! if let Some(k) = &kubeedge {
//!     k.report(NodeHealth { cameras_streaming, cameras_total, workers_ready, workers_desired });
//!     let link = k.link_state(); // phase, counters, last error: for /metrics, stats, logs
//! }
//! // on exit:
//! if let Some(k) = kubeedge { k.shutdown().await; }
//! ```
//!
//! The task logs every phase change and failure itself (target `helmetd::kubeedge`); the caller
//! only exports [`LinkState`].

pub mod certs;
pub mod message;
pub mod node;
mod session;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

pub use certs::{CertError, Credentials};
pub use node::NodeHealth;

/// edgecore's default project id, the first segment of the WebSocket path.
pub const DEFAULT_PROJECT_ID: &str = "e632aba927ea4ac2b575ec1603d56f10";

/// Everything the node agent needs. [`KubeEdgeSettings::from_config`] fills it from the TOML
/// with edgecore's timings; tests shorten the timings.
#[derive(Debug, Clone)]
pub struct KubeEdgeSettings {
    pub node_name: String,
    /// `[node] labels`, added to the Node's labels.
    pub node_labels: BTreeMap<String, String>,
    pub cloudcore_host: String,
    pub cert_port: u16,
    pub websocket_port: u16,
    pub project_id: String,
    pub token_file: PathBuf,
    pub cert_dir: PathBuf,
    /// Application keepalive; cloudcore drops a node silent for 30 s.
    pub keepalive: Duration,
    /// Lease renewal period; the lease's duration is four times this, as the kubelet's.
    pub lease: Duration,
    /// Node-status patch period (edgecore's node-status update frequency: 10 s).
    pub status_period: Duration,
    /// Wait after connecting before registering: cloudcore creates the session asynchronously
    /// after the upgrade, and a reply in that window is lost (protocol §2.1).
    pub register_delay: Duration,
    /// A request without a reply for this long means the link is dead (edgecore: 60 s).
    pub request_timeout: Duration,
    /// TCP connect, TLS and WebSocket handshakes together: a peer that accepts and then stalls
    /// must not hold the agent.
    pub connect_timeout: Duration,
    /// Reconnect backoff: doubles from `reconnect_min` up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl KubeEdgeSettings {
    pub fn from_config(config: &Config) -> Self {
        let k = &config.kubeedge;
        KubeEdgeSettings {
            node_name: if k.node_name.is_empty() {
                config.node_name()
            } else {
                k.node_name.clone()
            },
            node_labels: config.node.labels.clone(),
            cloudcore_host: k.cloudcore_host.clone(),
            cert_port: k.cert_port,
            websocket_port: k.websocket_port,
            project_id: DEFAULT_PROJECT_ID.into(),
            token_file: k.token_file.clone(),
            cert_dir: k.cert_dir.clone(),
            keepalive: Duration::from_secs(k.keepalive_seconds),
            lease: Duration::from_secs(k.lease_seconds),
            status_period: Duration::from_secs(10),
            register_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Where the link to cloudcore is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkPhase {
    #[default]
    Disconnected,
    /// Getting the node certificate with the join token.
    Bootstrapping,
    Connecting,
    /// WebSocket up; `registered` says whether the Node insert was answered.
    Connected,
    Stopped,
}

impl LinkPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPhase::Disconnected => "disconnected",
            LinkPhase::Bootstrapping => "bootstrapping",
            LinkPhase::Connecting => "connecting",
            LinkPhase::Connected => "connected",
            LinkPhase::Stopped => "stopped",
        }
    }
}

/// The link's state and counters since start, for logs, `/metrics` and the stats topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    pub phase: LinkPhase,
    /// The Node insert was accepted (or the node already existed) on the current connection.
    pub registered: bool,
    /// Successful WebSocket connections.
    pub connects: u64,
    /// Connections lost or refused after the first attempt.
    pub reconnects: u64,
    /// ACKs (`response` "OK") sent for cloud `resource` messages.
    pub messages_acked: u64,
    /// Pods the cloud pushed to this node, which runs none.
    pub pods_refused: u64,
    pub lease_renewals: u64,
    pub status_patches: u64,
    pub cert_rotations: u64,
    /// Expiry of the node certificate in use.
    pub cert_not_after: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// The running node agent. Dropping it without [`KubeEdgeHandle::shutdown`] aborts the task.
pub struct KubeEdgeHandle {
    state: watch::Receiver<LinkState>,
    health: watch::Sender<Option<NodeHealth>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

pub struct KubeEdge;

/// See [`KubeEdgeHandle::health_reporter`].
#[derive(Clone)]
pub struct HealthReporter(watch::Sender<Option<NodeHealth>>);

impl HealthReporter {
    pub fn report(&self, health: NodeHealth) {
        self.0.send_if_modified(|current| {
            let changed = *current != Some(health);
            *current = Some(health);
            changed
        });
    }
}

impl KubeEdge {
    /// Starts the node agent on `runtime`: bootstrap if needed, then connect, register and stay
    /// connected until [`KubeEdgeHandle::shutdown`].
    pub fn spawn(runtime: &tokio::runtime::Handle, settings: KubeEdgeSettings) -> KubeEdgeHandle {
        let (state_tx, state) = watch::channel(LinkState::default());
        let (health, health_rx) = watch::channel(None);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = runtime.spawn(session::agent(settings, state_tx, health_rx, shutdown_rx));
        KubeEdgeHandle {
            state,
            health,
            shutdown,
            task: Some(task),
        }
    }
}

impl KubeEdgeHandle {
    pub fn link_state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of the link state.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// The daemon's health, reported every second; a change of what operators see is patched
    /// into the node's conditions at once.
    pub fn report(&self, health: NodeHealth) {
        self.health_reporter().report(health);
    }

    /// Reports from another task than the handle's owner.
    pub fn health_reporter(&self) -> HealthReporter {
        HealthReporter(self.health.clone())
    }

    /// Closes the WebSocket and waits for the task (at most 5 s).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for KubeEdgeHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_config() {
        // Deserialised only: validation would also want the model files.
        let mut config = Config::embedded_default().unwrap();
        config.node.name = "gw-7".into();
        config.kubeedge.node_name = String::new();
        config.kubeedge.keepalive_seconds = 7;
        let s = KubeEdgeSettings::from_config(&config);
        assert_eq!(s.node_name, "gw-7", "empty node_name: the [node] name");
        assert_eq!(s.keepalive, Duration::from_secs(7));
        assert_eq!(s.lease, Duration::from_secs(config.kubeedge.lease_seconds));
        config.kubeedge.node_name = "edge-a".into();
        assert_eq!(KubeEdgeSettings::from_config(&config).node_name, "edge-a");
    }
}
