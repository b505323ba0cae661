//! Harness for helmetd's end-to-end tests: the test video, the library's loopback RTSP server
//! serving it as a never-ending live camera at `/cam`, and a relay that can freeze like a hung
//! camera. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Result;
use helmet_pipelines::rtsp_server::RtspServer;
pub use helmet_pipelines::rtsp_server::{VideoProbe, probe_video};

/// The workspace root, so tests find shipped files whatever directory cargo runs them from.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The test video: the repository's own copy once it ships one, the shared original until then.
pub fn test_video() -> PathBuf {
    let root = workspace_root();
    let shipped = root.join("media").join("helmet-test.mp4");
    if shipped.is_file() {
        shipped
    } else {
        root.join("..")
            .join("shared")
            .join("media")
            .join("helmet-test.mp4")
    }
}

/// The server the tests use, serving the test video at `/cam` as a live stream, looped forever.
pub struct RtspTestServer(RtspServer);

impl RtspTestServer {
    /// Starts serving `video` at `/cam` on a port the OS picks.
    pub fn start(video: impl AsRef<Path>) -> Result<Self> {
        Ok(Self(RtspServer::start(video.as_ref(), &["/cam"])?))
    }

    pub fn url(&self) -> String {
        self.0.url("/cam")
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Returns once the port refuses connections.
    pub fn stop(&mut self) -> Result<()> {
        Ok(self.0.stop()?)
    }

    /// Serves again on the same port, as a camera that rebooted would.
    pub fn restart(&mut self) -> Result<()> {
        Ok(self.0.restart()?)
    }
}

/// A TCP relay on 127.0.0.1 that can freeze: while frozen it moves no bytes but keeps every
/// connection open, which is how a hung camera looks to its client (no data, no error, no EOF).
/// `SIGSTOP` cannot do this to a server living in the test's own process.
pub struct FreezableRelay {
    port: u16,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// How long a relay thread blocks before it looks at the freeze and stop flags again.
const RELAY_TICK: Duration = Duration::from_millis(20);

impl FreezableRelay {
    /// Relays connections to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (frozen, stop) = (frozen.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("relay-{port}"))
                .spawn(move || accept_loop(&listener, upstream, &frozen, &stop))?
        };
        Ok(Self {
            port,
            frozen,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// `rtsp://127.0.0.1:<relay port><path>`.
    pub fn rtsp_url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{path}", self.port)
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::Release);
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    frozen: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) {
    let mut pumps = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                thread::sleep(RELAY_TICK);
                continue;
            }
        };
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
            continue;
        };
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let (frozen, stop) = (frozen.clone(), stop.clone());
            if let Ok(pump) = thread::Builder::new()
                .name("relay-pump".into())
                .spawn(move || pump(from, to, &frozen, &stop))
            {
                pumps.push(pump);
            }
        }
        pumps.retain(|p: &JoinHandle<()>| !p.is_finished());
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Copies `from` to `to` until either side closes or the relay stops; moves nothing while frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    let timeouts = from
        .set_nonblocking(false)
        .and_then(|_| from.set_read_timeout(Some(RELAY_TICK)))
        .and_then(|_| to.set_write_timeout(Some(Duration::from_secs(1))));
    if timeouts.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Acquire) {
        if frozen.load(Ordering::Acquire) {
            thread::sleep(RELAY_TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

pub mod mosquitto;
pub mod tmpfs;
