//! Harness for helmetd's end-to-end tests: the test video, and a real RTSP server on 127.0.0.1
//! that serves it as a never-ending live camera. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use gst::prelude::*;
use gst_rtsp_server::prelude::*;
use gst_rtsp_server::{RTSPFilterResult, RTSPMediaFactory, RTSPServer, gio, glib};

/// How long a server gets to decode its first frame and bind its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server gets to close its socket and clients.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What a test needs to know about a video to derive its expectations from it rather than
/// hard-coding them (the shipped video is shorter than the shared one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoProbe {
    pub width: u32,
    pub height: u32,
    pub fps_n: i32,
    pub fps_d: i32,
    pub duration: Duration,
}

/// Decodes the first frame of `path` to learn its size, rate and duration.
pub fn probe_video(path: &Path) -> Result<VideoProbe> {
    gst::init()?;
    let (_pipeline, probe) = preroll(path, "fakesink name=sink sync=false")?;
    Ok(probe)
}

/// Sets its pipeline to NULL when dropped, on every path: a pipeline dropped while running
/// leaves its streaming threads behind.
struct NullOnDrop(gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Builds `filesrc ! decodebin ! I420 ! <sink>` for `path` and prerolls it (PAUSED, first frame
/// decoded), so the caller can read the decoded caps before anything plays.
fn preroll(path: &Path, sink: &str) -> Result<(NullOnDrop, VideoProbe)> {
    ensure!(
        path.is_file(),
        "test video {} does not exist",
        path.display()
    );
    let description = format!(
        "filesrc name=src ! decodebin caps=video/x-raw ! videoconvert ! video/x-raw,format=I420 ! {sink}"
    );
    let guard = NullOnDrop(
        gst::parse::launch(&description)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("launch line did not give a pipeline"))?,
    );
    let pipeline = &guard.0;
    let src = pipeline.by_name("src").context("no filesrc")?;
    src.set_property("location", path.to_string_lossy().as_ref());
    pipeline
        .set_state(gst::State::Paused)
        .and_then(|_| {
            pipeline
                .state(gst::ClockTime::from_seconds(START_TIMEOUT.as_secs()))
                .0
        })
        .with_context(|| format!("could not preroll {}", path.display()))?;
    let caps = pipeline
        .by_name("sink")
        .and_then(|s| s.static_pad("sink"))
        .and_then(|p| p.current_caps())
        .context("prerolled sink has no caps")?;
    let s = caps.structure(0).context("empty caps")?;
    let fps = s
        .get::<gst::Fraction>("framerate")
        .unwrap_or(gst::Fraction::new(15, 1));
    let probe = VideoProbe {
        width: u32::try_from(s.get::<i32>("width")?)?,
        height: u32::try_from(s.get::<i32>("height")?)?,
        // Variable-rate files report 0/1; serve those at 15 fps like the test video.
        fps_n: if fps.numer() > 0 { fps.numer() } else { 15 },
        fps_d: if fps.numer() > 0 { fps.denom() } else { 1 },
        duration: pipeline
            .query_duration::<gst::ClockTime>()
            .map(Duration::from)
            .unwrap_or_default(),
    };
    Ok((guard, probe))
}

/// gst-rtsp-server on 127.0.0.1 serving a video at `/cam` as a live stream, looped forever.
///
/// A feeder pipeline decodes the file in real time and seeks back to the start on EOS; the RTSP
/// media reads its frames through `intervideosrc` (a live source that keeps a steady frame rate
/// across the loop point) and re-encodes them with x264 `ultrafast`/`zerolatency`. Re-encoding
/// is what makes the loop seamless: timestamps keep increasing and every client starts on a
/// keyframe.
pub struct RtspTestServer {
    video: PathBuf,
    port: u16,
    serving: Option<Serving>,
}

impl RtspTestServer {
    /// Starts serving `video` on a port the OS picks.
    pub fn start(video: impl AsRef<Path>) -> Result<Self> {
        let video = video.as_ref().to_path_buf();
        let serving = Serving::spawn(&video, 0)?;
        Ok(Self {
            port: serving.port,
            video,
            serving: Some(serving),
        })
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listening socket and every client connection, stops the media and the feeder,
    /// and returns once the port refuses connections. Stopping a stopped server is a no-op.
    pub fn stop(&mut self) -> Result<()> {
        match self.serving.take() {
            Some(serving) => serving.shut_down(),
            None => Ok(()),
        }
    }

    /// Serves again on the same port, as a camera that rebooted would.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let serving = Serving::spawn(&self.video, self.port)?;
        self.serving = Some(serving);
        Ok(())
    }
}

impl Drop for RtspTestServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("rtsp test server on port {}: {e:#}", self.port);
        }
    }
}

/// One run of the server: its thread with its own main context, from bind to close.
struct Serving {
    port: u16,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Serving {
    fn spawn(video: &Path, port: u16) -> Result<Self> {
        gst::init()?;
        static NEXT_CHANNEL: AtomicU64 = AtomicU64::new(0);
        // intervideo channels are process-global; a unique name keeps servers apart.
        let channel = format!(
            "helmetd-e2e-{}-{}",
            std::process::id(),
            NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed)
        );
        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u16>>();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = {
            let (video, context, main_loop) =
                (video.to_path_buf(), context.clone(), main_loop.clone());
            thread::Builder::new()
                .name(format!("rtsp-test-{port}"))
                .spawn(move || {
                    let served = context
                        .with_thread_default(|| {
                            serve(&video, port, &channel, &context, &main_loop, &ready_tx)
                        })
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r);
                    if let Err(e) = served {
                        // Only heard if the failure came before the server was ready.
                        let _ = ready_tx.send(Err(e));
                    }
                    let _ = done_tx.send(());
                })?
        };
        let serving = |port| Self {
            port,
            context,
            main_loop,
            done,
            thread,
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(bound)) => Ok(serving(bound)),
            Ok(Err(e)) => {
                let _ = serving(port).shut_down();
                Err(e)
            }
            Err(_) => {
                let _ = serving(port).shut_down();
                bail!("rtsp test server did not start within {START_TIMEOUT:?}")
            }
        }
    }

    fn shut_down(self) -> Result<()> {
        let main_loop = self.main_loop.clone();
        self.context.invoke(move || main_loop.quit());
        self.done
            .recv_timeout(STOP_TIMEOUT)
            .map_err(|_| anyhow!("rtsp test server did not stop within {STOP_TIMEOUT:?}"))?;
        self.thread
            .join()
            .map_err(|_| anyhow!("rtsp test server thread panicked"))?;
        if self.port == 0 {
            return Ok(());
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STOP_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            ensure!(
                Instant::now() < deadline,
                "port {} still accepts connections after stop",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// The server thread's body: runs until the main loop is quit, then closes everything it opened.
fn serve(
    video: &Path,
    port: u16,
    channel: &str,
    context: &glib::MainContext,
    main_loop: &glib::MainLoop,
    ready: &mpsc::Sender<Result<u16>>,
) -> Result<()> {
    let (feeder_guard, probe) = preroll(
        video,
        &format!("intervideosink name=sink channel={channel} sync=true"),
    )?;
    let feeder = &feeder_guard.0;
    let weak_feeder = feeder.downgrade();
    let _feeder_watch =
        feeder
            .bus()
            .context("feeder has no bus")?
            .add_watch(move |_, message| {
                match message.view() {
                    gst::MessageView::Eos(_) => {
                        let looped = weak_feeder.upgrade().map(|p| {
                            p.seek_simple(
                                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                                gst::ClockTime::ZERO,
                            )
                        });
                        if let Some(Err(e)) = looped {
                            eprintln!("rtsp test server: cannot loop the video: {e}");
                        }
                    }
                    gst::MessageView::Error(e) => {
                        eprintln!("rtsp test server feeder: {}", e.error())
                    }
                    _ => {}
                }
                glib::ControlFlow::Continue
            })?;
    feeder.set_state(gst::State::Playing)?;

    let server = RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let factory = RTSPMediaFactory::new();
    let VideoProbe {
        width,
        height,
        fps_n,
        fps_d,
        ..
    } = probe;
    let key_interval = (fps_n / fps_d.max(1)).max(1);
    factory.set_launch(&format!(
        "( intervideosrc channel={channel} \
         ! video/x-raw,format=I420,width={width},height={height},framerate={fps_n}/{fps_d} \
         ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max={key_interval} \
         ! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    ));
    factory.set_shared(true);
    server
        .mount_points()
        .context("server has no mount points")?
        .add_factory("/cam", factory);
    let source = server.create_source(None::<&gio::Cancellable>)?;
    source.attach(Some(context));
    let bound = u16::try_from(server.bound_port()).context("server is not bound")?;
    ready
        .send(Ok(bound))
        .map_err(|_| anyhow!("nobody waits for the server"))?;

    main_loop.run();

    source.destroy();
    server.client_filter(Some(&mut |_, _| RTSPFilterResult::Remove));
    if let Some(pool) = server.session_pool() {
        pool.filter(Some(&mut |_, _| RTSPFilterResult::Remove));
    }
    // Closing clients and sessions finishes in callbacks on this context; let them run.
    for _ in 0..1000 {
        if !context.iteration(false) {
            break;
        }
    }
    Ok(())
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
