//! Broker connection options from `[mqtt]`, shared by the daemon's uplink and `helmetd cloud`.
//!
//! Only what both need lives here (address, credentials, keep-alive, TCP_NODELAY); each caller
//! adds its own session semantics on top: the uplink a persistent session with a last will, the
//! cloud service a clean one.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::NetworkOptions;
use rumqttc::v5::MqttOptions;

use crate::config::MqttConfig;

/// rumqttc refuses (by assertion) keep-alives below 5 s.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);
const DEFAULT_PORT: u16 = 1883;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("mqtt.url is empty: no broker to connect to")]
    NoBroker,
    #[error("mqtt.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// rumqttc's TLS needs a crate feature this build does not enable (docs/stack.md §3).
    #[error("mqtt.url {0:?}: mqtts:// needs TLS support, which this build lacks")]
    TlsUnsupported(String),
    #[error("reading mqtt.password_file {}: {source}", .path.display())]
    Password {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Options for a connection to the broker in `mqtt.url` as `client_id`, with the configured
/// credentials and keep-alive. Everything about sessions is left at rumqttc's defaults for the
/// caller to set.
pub fn mqtt_options(mqtt: &MqttConfig, client_id: &str) -> Result<MqttOptions, OptionsError> {
    let raw = &mqtt.url;
    if raw.is_empty() {
        return Err(OptionsError::NoBroker);
    }
    let url_error = |reason: String| OptionsError::Url {
        url: raw.clone(),
        reason,
    };
    let url = url::Url::parse(raw).map_err(|e| url_error(e.to_string()))?;
    match url.scheme() {
        "mqtt" => {}
        "mqtts" => return Err(OptionsError::TlsUnsupported(raw.clone())),
        other => return Err(url_error(format!("scheme {other:?} is not mqtt://"))),
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(addr)) => addr.to_string(),
        Some(host) => host.to_string(),
        None => return Err(url_error("no host".into())),
    };
    let mut options = MqttOptions::new(client_id, host, url.port().unwrap_or(DEFAULT_PORT));
    options.set_keep_alive(Duration::from_secs(mqtt.keep_alive_s).max(MIN_KEEP_ALIVE));
    // Without TCP_NODELAY on both ends small packets wait 44–88 ms (docs/stack.md §3).
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if !mqtt.username.is_empty() {
        let password = if mqtt.password_file.as_os_str().is_empty() {
            String::new()
        } else {
            let path = crate::config::resolve_path(&mqtt.password_file);
            std::fs::read_to_string(&path)
                .map_err(|source| OptionsError::Password { path, source })?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        };
        options.set_credentials(mqtt.username.clone(), password);
    }
    Ok(options)
}
