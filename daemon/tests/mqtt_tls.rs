//! `mqtts://` against a real mosquitto with a TLS listener on 127.0.0.1. The certificates are
//! made here with rcgen: a CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate, and a second CA that signed none of them.
//!
//! Run with `--nocapture` to see the error texts a wrong CA and a missing client certificate
//! produce.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use helmetd::config::{Config, MqttConfig};
use helmetd::uplink::options::mqtt_options;
use helmetd::uplink::{STATUS_ONLINE, STATUS_STOPPED, Topics, Uplink, UplinkSettings};
use helmetd_e2e::mosquitto::Mosquitto;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};

const PREFIX: &str = "helmetd/v1";
/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// The PEM files of one test's certificates, in a directory removed with it.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed neither the server's nor the client's certificate.
    other_ca: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let other_ca = ca("some other CA").pem();
        let issuer = ca("helmetd test CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&issuer, &["edge-tls"], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca: write("ca.pem", issuer.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_ca),
            _dir: dir,
        }
    }

    fn broker(&self, require_client_cert: bool) -> Mosquitto {
        Mosquitto::start_tls(
            &self.ca,
            &self.server_cert,
            &self.server_key,
            require_client_cert,
        )
        .unwrap()
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca` for `names`, and its key, both PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `[mqtt]` for `url`, trusting `ca`, with `client`'s client certificate if given.
fn mqtt_config(url: &str, ca: &Path, client: Option<&Pki>, spool_dir: &Path) -> MqttConfig {
    let (cert_file, key_file) = match client {
        Some(pki) => (pki.client_cert.clone(), pki.client_key.clone()),
        None => (PathBuf::new(), PathBuf::new()),
    };
    MqttConfig {
        url: url.into(),
        ca_file: ca.to_path_buf(),
        cert_file,
        key_file,
        topic_prefix: PREFIX.into(),
        keep_alive_s: 5,
        spool_dir: spool_dir.to_path_buf(),
        spool_max_mb: 64,
        spool_max_age_s: 3600,
        spool_kinds: Vec::new(),
        ..Config::embedded_default().unwrap().mqtt
    }
}

/// A raw rumqttc client on the options `mqtt_options` builds.
fn client(cfg: &MqttConfig, id: &str) -> (AsyncClient, EventLoop) {
    AsyncClient::new(mqtt_options(cfg, id).unwrap(), 16)
}

/// Polls until the CONNACK or the first connection error, within [`WAIT`].
async fn connect(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
                return Ok(());
            }
        }
    })
    .await
    .expect("neither a CONNACK nor an error in time")
}

/// Subscribes to `filter` and polls until the first publish arrives, within [`WAIT`].
async fn first_publish(client: &AsyncClient, eventloop: &mut EventLoop, filter: &str) -> Publish {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe request");
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await.expect("connection") {
                Event::Incoming(Packet::Publish(publish)) => return publish,
                _ => continue,
            }
        }
    })
    .await
    .expect("no publish in time")
}

/// (a) A client built from `mqtt_options` connects over TLS and publishes and receives.
#[tokio::test]
async fn a_client_connects_over_tls_and_round_trips() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let spool = tempfile::tempdir().unwrap();
    let cfg = mqtt_config(&broker.url(), &pki.ca, None, spool.path());
    assert!(cfg.url.starts_with("mqtts://127.0.0.1:"));
    let (client, mut eventloop) = client(&cfg, "tls-a");
    connect(&mut eventloop).await.unwrap();
    client
        .publish("tls/echo", QoS::AtLeastOnce, true, "over tls")
        .await
        .unwrap();
    let publish = first_publish(&client, &mut eventloop, "tls/echo").await;
    assert_eq!(&publish.payload[..], b"over tls");
    assert!(broker.log().contains("tls-a"), "{}", broker.log());
}

/// (b) The uplink connects over TLS and its retained `online` reaches a subscriber.
#[tokio::test]
async fn the_uplink_publishes_its_status_over_tls() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let spool = tempfile::tempdir().unwrap();
    let cfg = mqtt_config(&broker.url(), &pki.ca, None, spool.path());
    let settings = UplinkSettings::from_mqtt(&cfg, "edge-tls").unwrap();
    let (uplink, handle) = Uplink::open(settings).unwrap();
    let task = tokio::spawn(uplink.run());
    tokio::time::timeout(WAIT, async {
        while !handle.stats().connected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the uplink did not connect");

    let (watcher, mut eventloop) = client(&cfg, "status-watcher");
    connect(&mut eventloop).await.unwrap();
    let status = Topics::new(PREFIX, "edge-tls").status_topic();
    let publish = first_publish(&watcher, &mut eventloop, &status).await;
    assert_eq!(&publish.payload[..], STATUS_ONLINE.as_bytes());
    assert!(publish.retain, "`online` is retained");

    handle.shutdown().await.unwrap();
    task.await.unwrap();
    let publish = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("no `stopped` in time");
    assert_eq!(&publish.payload[..], STATUS_STOPPED.as_bytes());
}

/// (c) A broker whose certificate another CA signed is refused, with an error that says so,
/// both to a raw client and in the uplink's log.
#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let spool = tempfile::tempdir().unwrap();
    let cfg = mqtt_config(&broker.url(), &pki.other_ca, None, spool.path());

    let (_client, mut eventloop) = client(&cfg, "tls-c");
    let error = connect(&mut eventloop).await.unwrap_err();
    println!("wrong CA, client error: {error}");
    assert!(matches!(error, ConnectionError::Tls(_)), "{error:?}");
    assert!(error.to_string().contains("certificate"), "{error}");

    // `#[tokio::test]` runs every task on this thread, so a thread-local subscriber sees the
    // uplink's events.
    let log = Log::default();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(log.clone())
            .finish(),
    );
    let settings = UplinkSettings::from_mqtt(&cfg, "edge-wrong-ca").unwrap();
    let (uplink, handle) = Uplink::open(settings).unwrap();
    let task = tokio::spawn(uplink.run());
    let line = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(line) = log
                .text()
                .lines()
                .find(|l| l.contains("cannot connect to the broker"))
            {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the uplink logged no connection failure");
    println!("wrong CA, uplink log: {line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(!handle.stats().connected);
    handle.shutdown().await.unwrap();
    task.await.unwrap();
}

/// (d) A broker that requires a client certificate refuses a client without one and accepts
/// one with a certificate its CA signed.
#[tokio::test]
async fn a_required_client_certificate() {
    let pki = Pki::new();
    let broker = pki.broker(true);
    let spool = tempfile::tempdir().unwrap();

    let anonymous = mqtt_config(&broker.url(), &pki.ca, None, spool.path());
    let (_client, mut eventloop) = client(&anonymous, "tls-d-anonymous");
    let error = connect(&mut eventloop).await.unwrap_err();
    println!("no client certificate: {error}");
    // TLS 1.3: the handshake completes on the client's side, and the broker's alert arrives
    // while the client waits for its CONNACK.
    assert!(error.to_string().contains("CertificateRequired"), "{error}");

    let with_cert = mqtt_config(&broker.url(), &pki.ca, Some(&pki), spool.path());
    let (_client, mut eventloop) = client(&with_cert, "tls-d-cert");
    connect(&mut eventloop).await.unwrap();
}

/// tracing output collected in memory.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
