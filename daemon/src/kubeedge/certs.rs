//! The node's credentials: bootstrap with the join token, storage in `cert_dir`, rotation
//! (kubeedge-protocol.md §1).
//!
//! Files, in `cert_dir` (mode 0700): `rootCA.crt` and `server.crt` (PEM) and `server.key`
//! (PKCS#8 PEM, mode 0600), the names edgecore uses. They are written only once the CA hash, the
//! token and the signed certificate have all checked out, so a failed join leaves nothing behind.
//!
//! The three only work together, so they are replaced together: each set is written, synced,
//! into its own directory `set-<n>`, and the symlink `current` is swapped to it with one rename
//! (the commit), then the directory is synced. The top-level names are symlinks into `current/`
//! for tools that expect edgecore's layout; they are not read when `current` exists. A crash at
//! any point leaves the old set or the new one in force, never a key of one and a certificate of
//! the other; a set that does not hold together anyway (the key is not the certificate's, a file
//! is unreadable, the certificate expired) is not used: the agent joins again with the token.

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
/// The symlink to the set in force.
pub const CURRENT: &str = "current";
const SET_PREFIX: &str = "set-";

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
    #[error("no node credentials in {}", dir.display())]
    NotStored { dir: PathBuf },
    #[error("the node credentials in {} are unusable: {reason}", dir.display())]
    Unusable { dir: PathBuf, reason: String },
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

/// The stored credentials, if they are complete, hold together, name this node and have not
/// expired; any error means a bootstrap is needed (as edgecore's `getCurrent`).
pub fn load(settings: &KubeEdgeSettings) -> Result<Credentials, CertError> {
    let current = settings.cert_dir.join(CURRENT);
    // Written before the set directories existed: the three files themselves.
    let dir = if current.exists() {
        current
    } else {
        settings.cert_dir.clone()
    };
    let unusable = |reason: String| CertError::Unusable {
        dir: dir.clone(),
        reason,
    };
    let read = |name: &str| match fs::read(dir.join(name)) {
        Ok(pem) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == KEY_FILE => {
            Err(CertError::NotStored { dir: dir.clone() })
        }
        Err(e) => Err(unusable(format!("{name}: {e}"))),
    };
    let pem_error = |name: &'static str| {
        move |e: rustls::pki_types::pem::Error| unusable(format!("{name}: {e}"))
    };
    let key = PrivateKeyDer::from_pem_slice(&read(KEY_FILE)?).map_err(pem_error(KEY_FILE))?;
    let ca = CertificateDer::from_pem_slice(&read(CA_FILE)?).map_err(pem_error(CA_FILE))?;
    let cert = CertificateDer::from_pem_slice(&read(CERT_FILE)?).map_err(pem_error(CERT_FILE))?;
    let creds =
        credentials(ca, cert, key, &settings.node_name).map_err(|e| unusable(e.to_string()))?;
    if creds.not_after <= SystemTime::now() {
        return Err(unusable("the node certificate has expired".into()));
    }
    Ok(creds)
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

/// The CA hash and the bootstrap token from a `keadm gettoken` file: public so that the parser
/// of this outside input can be fuzzed (fuzz/).
pub fn read_token(path: &Path) -> Result<(String, String), CertError> {
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
/// this node, the key is the certificate's.
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
    tls::check_key_pair(&cert, &key).map_err(|e| {
        bad(
            "the node certificate",
            format!("it does not go with the stored key ({e})"),
        )
    })?;
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
    store_steps(dir, creds, &mut |_| Ok(()))
}

/// The points of [`store_steps`] after which the disk is in a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The new set is in its directory, synced; the old one is still in force.
    SetWritten,
    /// `current` names the new set.
    Committed,
    /// The top-level names point into `current/`.
    Linked,
}

/// [`store`], calling `after` at each [`Step`]; an error from it stops there as a crash would
/// (the crash-consistency test's hook).
fn store_steps(
    dir: &Path,
    creds: &Credentials,
    after: &mut dyn FnMut(Step) -> std::io::Result<()>,
) -> Result<(), CertError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Store { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let set_name = format!("{SET_PREFIX}{nanos}");
    let set = dir.join(&set_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&set)
        .map_err(err(&set))?;
    let pem = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der));
    let files = [
        (KEY_FILE, pem("PRIVATE KEY", creds.key.secret_der()), 0o600),
        (CERT_FILE, pem("CERTIFICATE", &creds.cert), 0o644),
        (CA_FILE, pem("CERTIFICATE", &creds.ca), 0o644),
    ];
    for (name, text, mode) in &files {
        let path = set.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
            .map_err(err(&path))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err(&path))?;
    }
    sync_dir(&set).map_err(err(&set))?;
    after(Step::SetWritten).map_err(err(&set))?;

    replace_with_symlink(dir, CURRENT, Path::new(&set_name)).map_err(err(&dir.join(CURRENT)))?;
    sync_dir(dir).map_err(err(dir))?;
    after(Step::Committed).map_err(err(dir))?;

    for (name, _, _) in &files {
        let target = Path::new(CURRENT).join(name);
        if fs::read_link(dir.join(name)).ok().as_deref() != Some(target.as_path()) {
            replace_with_symlink(dir, name, &target).map_err(err(&dir.join(name)))?;
        }
    }
    sync_dir(dir).map_err(err(dir))?;
    after(Step::Linked).map_err(err(dir))?;

    // Older sets, and what an interrupted store left behind: nothing refers to them any more.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SET_PREFIX) && name != set_name {
                let _ = fs::remove_dir_all(entry.path());
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// `dir/name` becomes a symlink to `target` in one rename, whatever it was before.
fn replace_with_symlink(dir: &Path, name: &str, target: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, dir.join(name))
}

/// Makes the renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
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

    /// A CA and a node certificate for `gw` signed by it, as cloudcore would issue them.
    fn issued() -> Credentials {
        use rcgen::{BasicConstraints, CertifiedIssuer, IsCa};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "KubeEdge");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut node = CertificateParams::new(Vec::<String>::new()).unwrap();
        node.distinguished_name
            .push(DnType::CommonName, node_common_name("gw"));
        let cert = node.signed_by(&key, &issuer).unwrap();
        credentials(
            issuer.der().clone(),
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            "gw",
        )
        .unwrap()
    }

    fn settings(cert_dir: &Path) -> KubeEdgeSettings {
        let mut config = crate::config::Config::embedded_default().unwrap();
        config.kubeedge.node_name = "gw".into();
        config.kubeedge.cert_dir = cert_dir.into();
        KubeEdgeSettings::from_config(&config)
    }

    /// What edgecore and helmetd before set directories wrote: the three files themselves.
    fn store_flat(dir: &Path, creds: &Credentials) {
        fs::create_dir_all(dir).unwrap();
        let pem = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der));
        fs::write(
            dir.join(KEY_FILE),
            pem("PRIVATE KEY", creds.key.secret_der()),
        )
        .unwrap();
        fs::write(dir.join(CERT_FILE), pem("CERTIFICATE", &creds.cert)).unwrap();
        fs::write(dir.join(CA_FILE), pem("CERTIFICATE", &creds.ca)).unwrap();
    }

    #[test]
    fn a_crash_at_any_step_of_a_rotation_leaves_one_whole_set() {
        for flat_before in [false, true] {
            for crash in [Step::SetWritten, Step::Committed, Step::Linked] {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("certs");
                let s = settings(&dir);
                let old = issued();
                if flat_before {
                    store_flat(&dir, &old);
                } else {
                    store(&dir, &old).unwrap();
                }
                let new = issued();
                let result = store_steps(&dir, &new, &mut |step| {
                    if step == crash {
                        Err(std::io::Error::other("power cut"))
                    } else {
                        Ok(())
                    }
                });
                assert!(matches!(result, Err(CertError::Store { .. })));
                // `load` checks that key and certificate belong together.
                let loaded = load(&s).unwrap_or_else(|e| panic!("{crash:?}: {e}"));
                let expected = if crash == Step::SetWritten {
                    &old
                } else {
                    &new
                };
                assert_eq!(loaded.cert, expected.cert, "{crash:?} flat={flat_before}");
                assert_eq!(loaded.ca, expected.ca);

                // The next store completes and tidies up: one set, edgecore's names into it.
                let newer = issued();
                store(&dir, &newer).unwrap();
                assert_eq!(load(&s).unwrap().cert, newer.cert);
                let sets = fs::read_dir(&dir)
                    .unwrap()
                    .filter(|e| {
                        let name = e.as_ref().unwrap().file_name();
                        !matches!(
                            name.to_str().unwrap(),
                            CURRENT | KEY_FILE | CERT_FILE | CA_FILE
                        )
                    })
                    .count();
                assert_eq!(sets, 1, "one set directory, no temporary files");
                let key = fs::read(dir.join(KEY_FILE)).unwrap();
                assert_eq!(
                    PrivateKeyDer::from_pem_slice(&key).unwrap().secret_der(),
                    newer.key.secret_der()
                );
                let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions();
                assert_eq!(
                    std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                    0o600
                );
            }
        }
    }

    #[test]
    fn a_key_of_another_set_or_a_broken_file_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let s = settings(&dir);
        assert!(matches!(load(&s), Err(CertError::NotStored { .. })));
        // Half a rotation as the old one-file-at-a-time renames could leave it.
        let (old, new) = (issued(), issued());
        store_flat(&dir, &old);
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", new.key.secret_der()));
        fs::write(dir.join(KEY_FILE), pem).unwrap();
        match load(&s) {
            Err(CertError::Unusable { reason, .. }) => {
                assert!(
                    reason.contains("does not go with the stored key"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        fs::write(dir.join(CERT_FILE), "not PEM").unwrap();
        assert!(matches!(load(&s), Err(CertError::Unusable { .. })));
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
