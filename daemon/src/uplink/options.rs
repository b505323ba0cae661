//! Broker connection options from `[mqtt]`, shared by the daemon's uplink and `helmetd cloud`.
//!
//! Only what both need lives here (address, credentials, TLS, keep-alive, TCP_NODELAY); each
//! caller adds its own session semantics on top: the uplink a persistent session with a last
//! will, the cloud service a clean one.
//!
//! `mqtts://` uses rustls with the ring provider installed explicitly: rumqttc's default
//! provider (aws-lc-rs) is a slow native build, and a process-wide default provider would have
//! to be installed before any connection, by whoever runs first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttConfig;

/// rumqttc refuses (by assertion) keep-alives below 5 s.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);
const DEFAULT_PORT: u16 = 1883;
const DEFAULT_TLS_PORT: u16 = 8883;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("mqtt.url is empty: no broker to connect to")]
    NoBroker,
    #[error("mqtt.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading mqtt.password_file {}: {source}", .path.display())]
    Password {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `key` is the config key naming the file (`mqtt.ca_file`, …).
    #[error("reading {key} {}: {source}", .path.display())]
    ReadFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {}: not valid PEM: {source}", .path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{key} {}: no PEM certificate in it", .path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("mqtt.ca_file {}: unusable CA certificate: {source}", .path.display())]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// An empty `mqtt.ca_file` trusts the system's roots, so there must be some.
    #[error(
        "mqtt.ca_file is empty and no system CA certificates could be loaded ({0}); \
         set mqtt.ca_file to the broker's CA"
    )]
    NoSystemRoots(String),
    #[error("mqtt.key_file {}: no PEM private key in it", .path.display())]
    NoKey { path: PathBuf },
    #[error("mqtt.key_file {}: not a usable PEM private key: {source}", .path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// A client certificate cannot be presented without its key, nor a key without its
    /// certificate.
    #[error("mqtt.cert_file and mqtt.key_file go together, but only {0} is set")]
    CertWithoutKey(&'static str),
    /// The key does not belong to the certificate, or rustls cannot sign with it.
    #[error(
        "mqtt.cert_file {} with mqtt.key_file {}: {source}",
        .cert.display(),
        .key.display()
    )]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Options for a connection to the broker in `mqtt.url` as `client_id`, with the configured
/// credentials and keep-alive, over TLS for `mqtts://` (port 8883 unless given). The TLS files
/// are read here, once, so a bad one fails at startup rather than on every reconnect.
/// Everything about sessions is left at rumqttc's defaults for the caller to set.
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
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, DEFAULT_PORT),
        "mqtts" => (true, DEFAULT_TLS_PORT),
        other => {
            return Err(url_error(format!(
                "scheme {other:?} is not mqtt:// or mqtts://"
            )));
        }
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(addr)) => addr.to_string(),
        Some(host) => host.to_string(),
        None => return Err(url_error("no host".into())),
    };
    let mut options = MqttOptions::new(client_id, host, url.port().unwrap_or(default_port));
    options.set_keep_alive(Duration::from_secs(mqtt.keep_alive_s).max(MIN_KEEP_ALIVE));
    // Without TCP_NODELAY on both ends small packets wait 44–88 ms (docs/stack.md §3).
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if tls {
        let config = tls_config(mqtt)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
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

/// The rustls client configuration for `mqtts://`: the roots of `mqtt.ca_file` (or the
/// system's), and the client certificate of `mqtt.cert_file` and `mqtt.key_file` if set. The
/// broker's name is checked against the host in `mqtt.url`, by rumqttc.
fn tls_config(mqtt: &MqttConfig) -> Result<ClientConfig, OptionsError> {
    let roots = if mqtt.ca_file.as_os_str().is_empty() {
        system_roots()?
    } else {
        ca_roots(&crate::config::resolve_path(&mqtt.ca_file))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3, the safe defaults")
        .with_root_certificates(roots);
    match (
        mqtt.cert_file.as_os_str().is_empty(),
        mqtt.key_file.as_os_str().is_empty(),
    ) {
        (true, true) => Ok(builder.with_no_client_auth()),
        (false, true) => Err(OptionsError::CertWithoutKey("mqtt.cert_file")),
        (true, false) => Err(OptionsError::CertWithoutKey("mqtt.key_file")),
        (false, false) => {
            let cert = crate::config::resolve_path(&mqtt.cert_file);
            let key = crate::config::resolve_path(&mqtt.key_file);
            let chain = certificates("mqtt.cert_file", &cert)?;
            let private_key = private_key(&key)?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|source| OptionsError::ClientAuth { cert, key, source })
        }
    }
}

/// What rustls-native-certs finds (the `SSL_CERT_FILE`/`SSL_CERT_DIR` overrides, else the
/// distribution's bundle). Certificates it cannot parse are skipped, as a TLS library would.
fn system_roots() -> Result<RootCertStore, OptionsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        let reason = if errors.is_empty() {
            "none installed".to_string()
        } else {
            errors.join("; ")
        };
        return Err(OptionsError::NoSystemRoots(reason));
    }
    Ok(roots)
}

/// Every certificate in the CA bundle at `path`; one that rustls refuses is an error rather
/// than skipped, since the broker's CA may be the one missing.
fn ca_roots(path: &Path) -> Result<RootCertStore, OptionsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("mqtt.ca_file", path)? {
        roots
            .add(cert)
            .map_err(|source| OptionsError::CaCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(roots)
}

/// The PEM certificates in the file of config key `key`, at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, OptionsError> {
    let pem_text = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| OptionsError::Pem {
            key,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(OptionsError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS #8, PKCS #1 or SEC1) in `mqtt.key_file`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, OptionsError> {
    let pem_text = read("mqtt.key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem_text).map_err(|source| match source {
        pem::Error::NoItemsFound => OptionsError::NoKey {
            path: path.to_path_buf(),
        },
        source => OptionsError::Key {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|source| OptionsError::ReadFile {
        key,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rcgen::{CertificateParams, KeyPair};
    use rumqttc::Transport;

    use super::{OptionsError, mqtt_options};
    use crate::config::{Config, MqttConfig};

    fn mqtts(dir: &Path) -> MqttConfig {
        MqttConfig {
            url: "mqtts://broker.example".into(),
            ca_file: dir.join("ca.pem"),
            spool_dir: dir.join("spool"),
            spool_kinds: Vec::new(),
            ..Config::embedded_default().unwrap().mqtt
        }
    }

    /// A self-signed certificate and its key in `dir` as `<name>.pem` and `<name>.key`.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn error(cfg: &MqttConfig) -> String {
        mqtt_options(cfg, "c").unwrap_err().to_string()
    }

    #[test]
    fn mqtts_uses_tls_on_port_8883() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = mqtts(dir.path());
        (cfg.ca_file, _) = self_signed(dir.path(), "ca");
        (cfg.cert_file, cfg.key_file) = self_signed(dir.path(), "client");
        let options = mqtt_options(&cfg, "c").unwrap();
        assert_eq!(options.broker_address(), ("broker.example".into(), 8883));
        assert!(matches!(options.transport(), Transport::Tls(_)));
        cfg.url = "mqtts://127.0.0.1:18883".into();
        let options = mqtt_options(&cfg, "c").unwrap();
        assert_eq!(options.broker_address(), ("127.0.0.1".into(), 18883));
    }

    #[test]
    fn tls_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = mqtts(dir.path());
        let missing = cfg.ca_file.display().to_string();
        let text = error(&cfg);
        assert!(
            text.starts_with(&format!("reading mqtt.ca_file {missing}: ")),
            "{text}"
        );

        let (ca, ca_key) = self_signed(dir.path(), "ca");
        cfg.ca_file = ca_key.clone();
        let text = error(&cfg);
        assert_eq!(
            text,
            format!(
                "mqtt.ca_file {}: no PEM certificate in it",
                ca_key.display()
            )
        );

        cfg.ca_file = ca;
        let (cert, key) = self_signed(dir.path(), "client");
        cfg.cert_file = cert.clone();
        assert!(matches!(
            mqtt_options(&cfg, "c"),
            Err(OptionsError::CertWithoutKey("mqtt.cert_file"))
        ));
        assert_eq!(
            error(&cfg),
            "mqtt.cert_file and mqtt.key_file go together, but only mqtt.cert_file is set"
        );

        cfg.key_file = cert.clone();
        assert_eq!(
            error(&cfg),
            format!("mqtt.key_file {}: no PEM private key in it", cert.display())
        );

        cfg.key_file = ca_key;
        let text = error(&cfg);
        assert!(matches!(
            mqtt_options(&cfg, "c"),
            Err(OptionsError::ClientAuth { .. })
        ));
        assert!(
            text.contains(&key.with_file_name("ca.key").display().to_string()),
            "{text}"
        );
    }
}
