//! The node's credentials: bootstrap with the join token, storage in `cert_dir`, rotation
//! (kubeedge-protocol.md §1).
//!
//! Files, in `cert_dir` (mode 0700): `rootCA.crt` and `server.crt` (PEM) and `server.key`
//! (PKCS#8 PEM, mode 0600), the names edgecore uses. They are written only once the CA hash, the
//! token and the signed certificate have all checked out, each through a temporary file and a
//! rename, so a failed join leaves nothing behind and a crash never leaves half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::KubeEdgeSettings;
use super::tls::{self, TransportError};

pub const CA_FILE: &str = "rootCA.crt";
pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";

/// edgecore's HTTP timeout for the certificate requests.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the join token {path}: {source}")]
    ReadToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the join token in {path} is in the wrong format: expected <ca-sha256>.<jwt> (4 dot-separated parts)"
    )]
    TokenFormat { path: PathBuf },
    #[error(
        "cloudcore's CA does not match the join token (token CA hash {token_hash}, CA hash {ca_hash}): \
         wrong token, or cloudcore regenerated its CA; nothing was stored"
    )]
    CaHashMismatch { token_hash: String, ca_hash: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("GET {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot create the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("{what} is not a usable certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("cannot store {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cluster CA, the node certificate and its key, with the certificate's validity.
#[derive(Debug)]
pub struct Credentials {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Credentials {
    /// When to ask for a new certificate: like edgecore, at a jittered 70–90 % of its lifetime.
    /// `jitter` is in `[0, 1)`.
    pub fn rotation_deadline(&self, jitter: f64) -> SystemTime {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + total.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0))
    }

    pub fn client_auth(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        (self.cert.clone(), self.key.clone_key())
    }
}

/// The subject cloudcore (and its authorizer, when enabled) expects of a node's certificate.
pub fn node_common_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// The stored credentials, if they are complete, name this node and have not expired; `None`
/// means a bootstrap is needed (as edgecore's `getCurrent`).
pub fn load(settings: &KubeEdgeSettings) -> Option<Credentials> {
    let read = |name: &str| fs::read(settings.cert_dir.join(name)).ok();
    let ca = CertificateDer::from_pem_slice(&read(CA_FILE)?).ok()?;
    let cert = CertificateDer::from_pem_slice(&read(CERT_FILE)?).ok()?;
    let key = PrivateKeyDer::from_pem_slice(&read(KEY_FILE)?).ok()?;
    let creds = credentials(ca, cert, key, &settings.node_name).ok()?;
    (creds.not_after > SystemTime::now()).then_some(creds)
}

/// Joins with the token: `/ca.crt`, CA hash check, P-256 key and CSR, `/edge.crt`, store.
pub async fn bootstrap(settings: &KubeEdgeSettings) -> Result<Credentials, CertError> {
    let (token_hash, jwt) = read_token(&settings.token_file)?;
    let host = &settings.cloudcore_host;
    let (status, ca) = tls::https_get(
        tls::unverified_config()?,
        host,
        settings.cert_port,
        "/ca.crt",
        &[],
        Vec::new(),
        HTTP_TIMEOUT,
    )
    .await?;
    check_status(settings, "/ca.crt", status, &ca)?;
    let ca_hash = sha256_hex(&ca);
    if ca_hash != token_hash {
        return Err(CertError::CaHashMismatch {
            token_hash,
            ca_hash,
        });
    }
    let ca = CertificateDer::from(ca);
    let bearer = format!("Bearer {jwt}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("NodeName", settings.node_name.as_str()),
    ];
    let creds = request_certificate(settings, ca, None, &headers).await?;
    store(&settings.cert_dir, &creds)?;
    Ok(creds)
}

/// Rotation: a new key and CSR, `/edge.crt` over mutual TLS with the current certificate and no
/// token, then store. The caller re-dials the WebSocket with the result.
pub async fn rotate(
    settings: &KubeEdgeSettings,
    current: &Credentials,
) -> Result<Credentials, CertError> {
    let headers = [("NodeName", settings.node_name.as_str())];
    let creds = request_certificate(
        settings,
        current.ca.clone(),
        Some(current.client_auth()),
        &headers,
    )
    .await?;
    store(&settings.cert_dir, &creds)?;
    Ok(creds)
}

async fn request_certificate(
    settings: &KubeEdgeSettings,
    ca: CertificateDer<'static>,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    headers: &[(&str, &str)],
) -> Result<Credentials, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, node_common_name(&settings.node_name));
    subject.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = subject;
    let csr = params.serialize_request(&key)?;
    let (status, cert) = tls::https_get(
        tls::ca_config(&ca, client)?,
        &settings.cloudcore_host,
        settings.cert_port,
        "/edge.crt",
        headers,
        csr.der().to_vec(),
        HTTP_TIMEOUT,
    )
    .await?;
    check_status(settings, "/edge.crt", status, &cert)?;
    let key =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| CertError::BadCertificate {
            what: "the generated key".into(),
            reason: e.into(),
        })?;
    credentials(ca, CertificateDer::from(cert), key, &settings.node_name)
}

fn check_status(
    settings: &KubeEdgeSettings,
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<(), CertError> {
    if status == 200 {
        return Ok(());
    }
    Err(CertError::Status {
        url: format!(
            "https://{}{path}",
            tls::authority(&settings.cloudcore_host, settings.cert_port)
        ),
        status,
        body: String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect(),
    })
}

fn read_token(path: &Path) -> Result<(String, String), CertError> {
    let token = fs::read_to_string(path).map_err(|source| CertError::ReadToken {
        path: path.into(),
        source,
    })?;
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 4 || parts.iter().any(|p| p.is_empty()) {
        return Err(CertError::TokenFormat { path: path.into() });
    }
    Ok((parts[0].to_ascii_lowercase(), parts[1..].join(".")))
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that the pieces fit together: both certificates parse, the node certificate names
/// this node.
fn credentials(
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    node: &str,
) -> Result<Credentials, CertError> {
    let bad = |what: &str, reason: String| CertError::BadCertificate {
        what: what.into(),
        reason,
    };
    x509_parser::parse_x509_certificate(&ca).map_err(|e| bad("cloudcore's CA", e.to_string()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| bad("the node certificate", e.to_string()))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    let expected = node_common_name(node);
    if cn != expected {
        return Err(bad(
            "the node certificate",
            format!("its CN is {cn:?}, expected {expected:?}"),
        ));
    }
    let time = |t: &x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok(Credentials {
        not_before: time(&parsed.validity().not_before),
        not_after: time(&parsed.validity().not_after),
        ca,
        cert,
        key,
    })
}

fn store(dir: &Path, creds: &Credentials) -> Result<(), CertError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Store { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))?;
    let pem = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der));
    let files = [
        (KEY_FILE, pem("PRIVATE KEY", creds.key.secret_der()), 0o600),
        (CERT_FILE, pem("CERTIFICATE", &creds.cert), 0o644),
        (CA_FILE, pem("CERTIFICATE", &creds.ca), 0o644),
    ];
    for (name, text, mode) in &files {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(*mode)
            .open(&tmp)
            .map_err(err(&tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err(&tmp))?;
    }
    for (name, _, _) in &files {
        let path = dir.join(name);
        fs::rename(dir.join(format!(".{name}.tmp")), &path).map_err(err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_at_70_to_90_percent_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let creds = Credentials {
            ca: CertificateDer::from(Vec::new()),
            cert: CertificateDer::from(Vec::new()),
            key: PrivateKeyDer::Pkcs8(Vec::new().into()),
            not_before: start,
            not_after: start + Duration::from_secs(1000),
        };
        assert_eq!(
            creds.rotation_deadline(0.0),
            start + Duration::from_secs(700)
        );
        assert_eq!(
            creds.rotation_deadline(0.5),
            start + Duration::from_secs(800)
        );
        assert!(creds.rotation_deadline(0.999_999) < start + Duration::from_secs(900));
    }

    #[test]
    fn tokens_need_four_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        // The real example from kubeedge#4270.
        std::fs::write(&path, "681651179dd6a198a70594b043db97652b1157ab8164e267bc5ef6e500586153.eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE2NjQ1MzU2NDN9.NWuVXO40Fhb707Ie26TschW7JQP3BExJGm56gUdGq_w\n").unwrap();
        let (hash, jwt) = read_token(&path).unwrap();
        assert_eq!(
            hash,
            "681651179dd6a198a70594b043db97652b1157ab8164e267bc5ef6e500586153"
        );
        assert_eq!(jwt.split('.').count(), 3);
        std::fs::write(&path, "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(CertError::TokenFormat { .. })
        ));
    }
}
