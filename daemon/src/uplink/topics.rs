//! The gateway's topics (docs/architecture.md, "MQTT topics").

/// Retained on the status topic while the session is up.
pub const STATUS_ONLINE: &str = "online";
/// The last will: the broker publishes it when the connection dies without a DISCONNECT.
pub const STATUS_OFFLINE: &str = "offline";
/// Published on a clean shutdown, so subscribers can tell a stopped daemon from a lost one.
pub const STATUS_STOPPED: &str = "stopped";

/// Topic names under `<prefix>/<node>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Self {
        Self {
            base: format!("{prefix}/{node}"),
        }
    }

    /// `<prefix>/<node>/<camera>/alert`
    pub fn alert_topic(&self, camera: &str) -> String {
        format!("{}/{camera}/alert", self.base)
    }

    /// `<prefix>/<node>/<camera>/alert/snapshot`
    pub fn snapshot_topic(&self, camera: &str) -> String {
        format!("{}/{camera}/alert/snapshot", self.base)
    }

    /// `<prefix>/<node>/stats`
    pub fn stats_topic(&self) -> String {
        format!("{}/stats", self.base)
    }

    /// `<prefix>/<node>/status`
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.base)
    }
}
