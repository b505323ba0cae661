//! TLS to cloudcore: the three client configurations the protocol needs, and one HTTPS request.
//!
//! - `/ca.crt` is fetched without verifying the server: the CA is not known yet, and the join
//!   token's hash checks the answer afterwards (edgecore uses `InsecureSkipVerify` there).
//! - `/edge.crt` is fetched trusting only that CA and presenting **no** client certificate on
//!   bootstrap (any certificate switches cloudcore to its rotation path and the token is ignored),
//!   and the current node certificate on rotation.
//! - The WebSocket uses mutual TLS with the node certificate, and offers no ALPN: with `h2` offered
//!   cloudcore would switch to HTTP/2 and the upgrade would fail.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// cloudcore's HTTP handlers read at most 1 MiB; nothing it sends back is larger.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{host:?} is not a valid server name for TLS")]
    ServerName { host: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP request to {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()
}

/// For `/ca.crt` only: any server certificate is accepted; the token's CA hash is the check.
pub fn unverified_config() -> Result<Arc<ClientConfig>, TransportError> {
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts only the cluster's CA; presents `client` (certificate, key) when given.
pub fn ca_config(
    ca: &CertificateDer<'static>,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let builder = builder()?.with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Whether `key` is the private key of `cert`'s public key.
pub fn check_key_pair(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let signing = provider().key_provider.load_private_key(key.clone_key())?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signing).keys_match()
}

/// `host:port` as it appears in URLs and the `Host` header (IPv6 literals bracketed).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// TCP then TLS to `host:port`, checking the server's name against `host`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> Result<TlsStream<TcpStream>, TransportError> {
    let addr = authority(host, port);
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| TransportError::ServerName { host: host.into() })?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| TransportError::Connect {
            addr: addr.clone(),
            source,
        })?;
    // Small frames (keepalives, ACKs) must leave at once.
    tcp.set_nodelay(true)
        .map_err(|source| TransportError::Connect {
            addr: addr.clone(),
            source,
        })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| TransportError::Connect { addr, source })
}

/// One `GET` with a body (cloudcore's `/edge.crt` is a GET carrying the CSR) and exactly the given
/// headers besides `Host`: in particular no `Accept`, which go-restful would answer with 406
/// unless it contains `*/*`. Returns the status and the body.
pub async fn https_get(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), TransportError> {
    let url = format!("https://{}{path}", authority(host, port));
    let request = async {
        let stream = connect(config, host, port).await?;
        let http_err = |e: &dyn std::fmt::Display| TransportError::Http {
            url: url.clone(),
            reason: e.to_string(),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http_err(&e))?;
        let conn = tokio::spawn(conn);
        let mut builder =
            hyper::Request::get(path).header(hyper::header::HOST, authority(host, port));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http_err(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_err(&e))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes.to_vec()))
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| TransportError::Timeout {
            what: format!("GET {url}"),
            after: timeout,
        })?
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
