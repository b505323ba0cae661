//! The one Mosquitto every gateway and replica of `bench fleet` talks to: a child process on a
//! free loopback port, MQTT 5 (mosquitto 2 speaks every version on a listener), no persistence,
//! restartable on the same port, killed by its own pid when dropped.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The broker binary Debian's `mosquitto` package installs.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long the broker gets to accept TCP connections (it needs ~20 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
/// Tries when another process takes the probed port before mosquitto binds it.
const START_ATTEMPTS: usize = 3;

pub(super) struct Broker {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Writes a config into `dir` and starts the broker on a free loopback port.
    pub(super) fn start(dir: &Path) -> anyhow::Result<Broker> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let config = dir.join("mosquitto.conf");
            // As root mosquitto drops to its own user: no file it must write, so no
            // persistence and no log. Its per-client limits stay at their defaults.
            fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     persistence false\n\
                     set_tcp_nodelay true\n\
                     log_dest none\n"
                ),
            )
            .with_context(|| format!("writing {}", config.display()))?;
            let mut broker = Broker {
                config,
                port,
                child: None,
            };
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    pub(super) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The running broker's pid.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (SIGKILL after 10 s), then a new broker on the same port: what clients see of
    /// a broker restarted by its service manager.
    pub(super) fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)
                .context("SIGTERM to mosquitto")?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {MOSQUITTO}"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("mosquitto exited with {status} before accepting connections on {addr}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not accept connections on {addr} within {START_TIMEOUT:?}");
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
