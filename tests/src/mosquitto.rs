//! A real `mosquitto` broker on 127.0.0.1 for end-to-end tests: a free port, a persistence
//! directory that survives restarts, and stop/kill/restart by the pid this harness started.
//! Plain MQTT by default; [`Mosquitto::start_tls`] makes the listener TLS-only.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The broker binary Debian's `mosquitto` package installs.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long the broker gets to accept TCP connections (it needs ~20 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM gets to save the database and exit before SIGKILL follows.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a start is retried when another process took the probed port in the meantime.
const START_ATTEMPTS: usize = 3;

/// A running (or stopped, restartable) mosquitto 2 broker with anonymous access.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    tls: Option<TlsListener>,
}

/// The listener's TLS files, PEM, and whether clients must present a certificate signed by
/// the CA.
struct TlsListener {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    require_client_cert: bool,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port with its own config, database and log file.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`Mosquitto::start`], but the listener speaks only TLS with the server certificate
    /// `cert_path` and key `key_path`; `ca_path` is the CA that client certificates must chain
    /// to, and with `require_client_cert` a client without one is refused. The files are copied
    /// into the broker's directory, where mosquitto (which drops to its own user when started
    /// as root) can read them.
    pub fn start_tls(
        ca_path: &Path,
        cert_path: &Path,
        key_path: &Path,
        require_client_cert: bool,
    ) -> Result<Self> {
        Self::start_with(Some(TlsListener {
            ca: ca_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            require_client_cert,
        }))
    }

    fn start_with(tls: Option<TlsListener>) -> Result<Self> {
        let mut broker = Self {
            dir: tempfile::Builder::new().prefix("mosquitto-").tempdir()?,
            port: 0,
            child: None,
            tls,
        };
        broker.copy_tls_files()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            broker.port = free_port()?;
            broker.write_config()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    /// `mqtt://127.0.0.1:<port>` (`mqtts://` for a TLS listener), the form `mqtt.url` takes.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log file (connections, subscriptions, errors), for test diagnostics.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The log so far, or a note on why it cannot be read.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// SIGTERM, as systemd stops it: mosquitto saves its database and closes every client.
    /// Falls back to SIGKILL if it has not exited within 10 s. Stopping twice is a no-op.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .context("running kill -TERM")?;
            ensure!(status.success(), "kill -TERM {} failed", child.id());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                bail!("mosquitto ignored SIGTERM for {STOP_TIMEOUT:?} and was killed");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILL, like a power cut: nothing is saved beyond what autosave already wrote.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts again on the same port with the same database, as a rebooted broker would.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Replaces the caller's TLS paths by copies in the broker's directory.
    fn copy_tls_files(&mut self) -> Result<()> {
        let root = self.dir.path().to_path_buf();
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        for (path, name) in [
            (&mut tls.ca, "ca.pem"),
            (&mut tls.cert, "server.pem"),
            (&mut tls.key, "server.key"),
        ] {
            let copy = root.join(name);
            fs::copy(&*path, &copy).with_context(|| format!("copying {}", path.display()))?;
            *path = copy;
        }
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let root = self.dir.path();
        let data = root.join("data");
        fs::create_dir_all(&data)?;
        let log = self.log_path();
        fs::write(&log, "")?;
        let mut config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {data}/\n\
             autosave_on_changes true\n\
             autosave_interval 1\n\
             set_tcp_nodelay true\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n",
            port = self.port,
            data = data.display(),
            log = log.display(),
        );
        let mut owned = vec![root.to_path_buf(), data.clone(), log.clone()];
        if let Some(tls) = &self.tls {
            // Settings after `listener` belong to that listener.
            config.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_client_cert,
            ));
            owned.extend([tls.ca.clone(), tls.cert.clone(), tls.key.clone()]);
        }
        fs::write(root.join("mosquitto.conf"), config)?;
        // As root mosquitto drops to the `mosquitto` user, which must be able to write its
        // database and log, or persistence fails silently, and read its TLS files.
        if running_as_root() {
            let (uid, gid) = mosquitto_user()?;
            for path in &owned {
                chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("mosquitto.conf");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {MOSQUITTO}"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited with {status} before accepting connections; log:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mosquitto did not accept connections on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("mosquitto on port {}: {e:#}", self.port);
        }
    }
}

/// A port nobody listens on right now. Another process may take it before mosquitto binds;
/// `Mosquitto::start` retries for that.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// uid and gid of the `mosquitto` user the Debian package creates.
fn mosquitto_user() -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["mosquitto", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .context("no mosquitto user in /etc/passwd (is the mosquitto package installed?)")
}
