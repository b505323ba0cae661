//! A loopback RTSP server that serves a video file as one or more never-ending live cameras.
//!
//! `helmetd demo` points its cameras at it, `helmetd bench` streams it, and the end-to-end tests
//! use it as a real camera: all of them need an RTSP source that behaves like a camera (live,
//! H.264, starts on a keyframe, never ends) without owning a camera.
//!
//! ```text
//! feeder:  filesrc ! decodebin ! videoconvert [! videoscale] ! video/x-raw,format=I420 ! tee
//!            ├─ queue ! intervideosink channel=<c0>   (real time; seeks to 0 on EOS)
//!            └─ queue ! intervideosink channel=<c1>
//! mount i: intervideosrc channel=<ci> ! x264enc ultrafast/zerolatency ! rtph264pay
//! ```
//!
//! The file is decoded once, in real time, and looped by seeking back to the start on EOS.
//! Every mount reads its own `intervideosrc` channel (a live source that keeps a steady frame
//! rate across the loop point) and has its own encoder, so each mount is an independent camera
//! stream with its own sessions. Re-encoding is what makes the loop seamless: timestamps keep
//! increasing and every client starts on a keyframe.
//!
//! Cost, measured as the server process's CPU time over 20 s on a 2-core AMD EPYC VM, serving the
//! bundled 1280×720 15 fps video with one TCP client (`rtspsrc ! fakesink`) per mount: the shared
//! decoder takes about 4 % of one core whatever the number of mounts, and each mount being
//! played adds about 6 % for its encoder (1 mount: 10 %, 4 mounts: 27 %). Served at 640×360 a
//! mount adds about 2.7 % (4 mounts: 15 %). A mount nobody plays costs nothing more: its media
//! is only built when a client asks for it.
//!
//! Everything is bound to 127.0.0.1 and every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;
use gst_rtsp_server::{RTSPFilterResult, RTSPMediaFactory, RTSPServer, gio};

/// How long a server gets to decode its first frame and bind its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server gets to close its socket and clients.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Served when the file does not say (variable-rate files report 0/1): the bundled video's rate.
const DEFAULT_FPS: i32 = 15;

/// Why the server could not start or stop, with the underlying cause as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum RtspServerError {
    #[error("GStreamer cannot be initialised")]
    Init(#[source] glib::Error),
    #[error("invalid RTSP server options: {0}")]
    Options(String),
    #[error("video {} is not a readable file", .0.display())]
    VideoNotFound(PathBuf),
    /// Usually a missing plugin (x264enc: gstreamer1.0-plugins-ugly; intervideosink:
    /// gstreamer1.0-plugins-bad).
    #[error("cannot build the {what} pipeline")]
    Build {
        what: &'static str,
        #[source]
        source: glib::Error,
    },
    #[error("cannot decode {}", .path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: gst::StateChangeError,
    },
    #[error("{} has no usable video stream: {reason}", .path.display())]
    Caps { path: PathBuf, reason: String },
    #[error("cannot {what}")]
    Glib {
        what: &'static str,
        #[source]
        source: glib::BoolError,
    },
    #[error("cannot serve RTSP on 127.0.0.1:{port}")]
    Serve {
        port: u16,
        #[source]
        source: glib::Error,
    },
    #[error("cannot start the RTSP server thread")]
    Thread(#[source] std::io::Error),
    #[error("the RTSP server did not start within {0:?}")]
    StartTimeout(Duration),
    #[error("the RTSP server did not stop within {0:?}")]
    StopTimeout(Duration),
    #[error("the RTSP server thread panicked")]
    Panicked,
    #[error("port {0} still accepts connections after the RTSP server stopped")]
    StillListening(u16),
}

/// What a caller needs to know about a video to derive its expectations from it rather than
/// hard-coding them (the demo's run length, the tests' frame rates and letterbox).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoProbe {
    pub width: u32,
    pub height: u32,
    pub fps_n: i32,
    pub fps_d: i32,
    pub duration: Duration,
}

/// Decodes the first frame of `path` to learn its size, rate and duration.
pub fn probe_video(path: &Path) -> Result<VideoProbe, RtspServerError> {
    gst::init().map_err(RtspServerError::Init)?;
    let (_pipeline, probe) = preroll(path, "", "fakesink name=out sync=false")?;
    Ok(probe)
}

/// What to serve: the mount points, and optionally another size or rate than the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspServerOptions {
    mounts: Vec<String>,
    width_height: Option<(u32, u32)>,
    fps: Option<u32>,
}

impl RtspServerOptions {
    /// Each of `mounts` (`"/cam"`, `"/cam1"`, …) serves the video at its own size and rate.
    pub fn new(mounts: &[&str]) -> Self {
        Self {
            mounts: mounts.iter().map(|&m| m.to_owned()).collect(),
            width_height: None,
            fps: None,
        }
    }

    /// Serves `width × height` (both even), scaled once for all mounts, keeping the aspect
    /// ratio with black borders. Smaller frames make each mount's encoder cheaper.
    pub fn width_height(mut self, width: u32, height: u32) -> Self {
        self.width_height = Some((width, height));
        self
    }

    /// Serves `fps` frames per second, repeating or skipping the file's frames as needed.
    pub fn fps(mut self, fps: u32) -> Self {
        self.fps = Some(fps);
        self
    }

    fn validate(&self) -> Result<(), RtspServerError> {
        let invalid = |reason: String| Err(RtspServerError::Options(reason));
        if self.mounts.is_empty() {
            return invalid("no mount points".into());
        }
        for (i, mount) in self.mounts.iter().enumerate() {
            let well_formed = mount.len() > 1
                && mount.starts_with('/')
                && mount
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
            if !well_formed {
                return invalid(format!(
                    "mount {mount:?} is not of the form /name (letters, digits, / - _ .)"
                ));
            }
            if self.mounts[..i].contains(mount) {
                return invalid(format!("mount {mount:?} is given twice"));
            }
        }
        if let Some((w, h)) = self.width_height
            && (w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1)
        {
            return invalid(format!(
                "size {w}x{h}: width and height must be even and non-zero (I420)"
            ));
        }
        if let Some(fps) = self.fps
            && !(1..=120).contains(&fps)
        {
            return invalid(format!("{fps} fps is not within 1..=120"));
        }
        Ok(())
    }
}

/// gst-rtsp-server on 127.0.0.1, on a port the OS picks, serving a video as live cameras.
/// Stopped when dropped.
pub struct RtspServer {
    video: PathBuf,
    options: RtspServerOptions,
    port: u16,
    serving: Option<Serving>,
}

impl RtspServer {
    /// Serves `video` at each of `mounts` at the file's own size and rate.
    pub fn start(video: &Path, mounts: &[&str]) -> Result<Self, RtspServerError> {
        Self::start_with(video, RtspServerOptions::new(mounts))
    }

    /// Serves `video` as `options` say.
    pub fn start_with(video: &Path, options: RtspServerOptions) -> Result<Self, RtspServerError> {
        options.validate()?;
        let serving = Serving::spawn(video, &options, 0)?;
        Ok(Self {
            video: video.to_path_buf(),
            options,
            port: serving.port,
            serving: Some(serving),
        })
    }

    /// `rtsp://127.0.0.1:<port><mount>`, whether or not `mount` is served.
    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }

    /// The URL of every mount, in the order they were given.
    pub fn urls(&self) -> Vec<String> {
        self.options.mounts.iter().map(|m| self.url(m)).collect()
    }

    /// The port, also after [`stop`](Self::stop): a restart binds it again.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listening socket and every client connection, stops the media and the feeder,
    /// and returns once the port refuses connections. Stopping a stopped server is a no-op.
    pub fn stop(&mut self) -> Result<(), RtspServerError> {
        match self.serving.take() {
            Some(serving) => serving.shut_down(),
            None => Ok(()),
        }
    }

    /// Serves again on the same port, as a camera that rebooted would.
    pub fn restart(&mut self) -> Result<(), RtspServerError> {
        self.stop()?;
        self.serving = Some(Serving::spawn(&self.video, &self.options, self.port)?);
        Ok(())
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(
                port = self.port,
                error = &e as &dyn std::error::Error,
                "cannot stop the RTSP server"
            );
        }
    }
}

/// Sets its pipeline to NULL when dropped, on every path: a pipeline dropped while running
/// leaves its streaming threads behind.
struct NullOnDrop(gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Builds `filesrc ! decodebin ! videoconvert <convert> ! video/x-raw,format=I420<caps> ! <tail>`
/// for `path` and prerolls it (PAUSED, first frame decoded), so the caller can read the decoded
/// caps before anything plays. `tail` starts with an element named `out` whose sink pad sees
/// the final caps.
fn preroll(
    path: &Path,
    caps: &str,
    tail: &str,
) -> Result<(NullOnDrop, VideoProbe), RtspServerError> {
    if !path.is_file() {
        return Err(RtspServerError::VideoNotFound(path.to_path_buf()));
    }
    let convert = if caps.is_empty() { "" } else { "! videoscale" };
    let description = format!(
        "filesrc name=src ! decodebin caps=video/x-raw ! videoconvert {convert} \
         ! video/x-raw,format=I420{caps} ! {tail}"
    );
    let build_error = |source| RtspServerError::Build {
        what: "decoder",
        source,
    };
    let guard = NullOnDrop(
        gst::parse::launch(&description)
            .map_err(build_error)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| {
                build_error(glib::Error::new(
                    gst::CoreError::Failed,
                    "the launch line did not give a pipeline",
                ))
            })?,
    );
    let pipeline = &guard.0;
    let caps_error = |reason: String| RtspServerError::Caps {
        path: path.to_path_buf(),
        reason,
    };
    pipeline
        .by_name("src")
        .ok_or_else(|| caps_error("no filesrc".into()))?
        .set_property("location", path.to_string_lossy().as_ref());
    pipeline
        .set_state(gst::State::Paused)
        .and_then(|_| {
            pipeline
                .state(gst::ClockTime::from_seconds(START_TIMEOUT.as_secs()))
                .0
        })
        .map_err(|source| RtspServerError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
    let caps = pipeline
        .by_name("out")
        .and_then(|s| s.static_pad("sink"))
        .and_then(|p| p.current_caps())
        .ok_or_else(|| caps_error("the decoder negotiated no caps".into()))?;
    let s = caps
        .structure(0)
        .ok_or_else(|| caps_error("empty caps".into()))?;
    let dimension = |field| {
        s.get::<i32>(field)
            .map_err(|e| e.to_string())
            .and_then(|v| u32::try_from(v).map_err(|e| e.to_string()))
            .map_err(|e| caps_error(format!("{field}: {e}")))
    };
    let fps = s
        .get::<gst::Fraction>("framerate")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .unwrap_or(gst::Fraction::new(DEFAULT_FPS, 1));
    let probe = VideoProbe {
        width: dimension("width")?,
        height: dimension("height")?,
        fps_n: fps.numer(),
        fps_d: fps.denom(),
        duration: pipeline
            .query_duration::<gst::ClockTime>()
            .map(Duration::from)
            .unwrap_or_default(),
    };
    Ok((guard, probe))
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
    fn spawn(
        video: &Path,
        options: &RtspServerOptions,
        port: u16,
    ) -> Result<Self, RtspServerError> {
        gst::init().map_err(RtspServerError::Init)?;
        static NEXT_SERVER: AtomicU64 = AtomicU64::new(0);
        // intervideo channels are process-global; unique names keep servers and mounts apart.
        let server_id = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
        let channels: Vec<String> = (0..options.mounts.len())
            .map(|i| format!("helmet-rtsp-{}-{server_id}-{i}", std::process::id()))
            .collect();
        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u16, RtspServerError>>();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = {
            let (video, options) = (video.to_path_buf(), options.clone());
            let (context, main_loop) = (context.clone(), main_loop.clone());
            thread::Builder::new()
                .name(format!("rtsp-server-{port}"))
                .spawn(move || {
                    let served = context
                        .with_thread_default(|| {
                            let media = Media {
                                video: &video,
                                options: &options,
                                channels: &channels,
                            };
                            serve(&media, port, &context, &main_loop, &ready_tx)
                        })
                        .map_err(|source| RtspServerError::Glib {
                            what: "own the server's main context",
                            source,
                        })
                        .and_then(|r| r);
                    if let Err(e) = served {
                        // Only heard if the failure came before the server was ready.
                        let _ = ready_tx.send(Err(e));
                    }
                    let _ = done_tx.send(());
                })
                .map_err(RtspServerError::Thread)?
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
                Err(RtspServerError::StartTimeout(START_TIMEOUT))
            }
        }
    }

    fn shut_down(self) -> Result<(), RtspServerError> {
        let main_loop = self.main_loop.clone();
        // Queued on the server's context, so it also reaches a loop that has not started yet.
        self.context.invoke(move || main_loop.quit());
        self.done
            .recv_timeout(STOP_TIMEOUT)
            .map_err(|_| RtspServerError::StopTimeout(STOP_TIMEOUT))?;
        self.thread.join().map_err(|_| RtspServerError::Panicked)?;
        if self.port == 0 {
            return Ok(());
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STOP_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if Instant::now() >= deadline {
                return Err(RtspServerError::StillListening(self.port));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// What one run serves: the video, its options, and one intervideo channel per mount.
struct Media<'a> {
    video: &'a Path,
    options: &'a RtspServerOptions,
    channels: &'a [String],
}

/// The server thread's body: runs until the main loop is quit, then closes everything it opened.
fn serve(
    media: &Media<'_>,
    port: u16,
    context: &glib::MainContext,
    main_loop: &glib::MainLoop,
    ready: &mpsc::Sender<Result<u16, RtspServerError>>,
) -> Result<(), RtspServerError> {
    let scale = media
        .options
        .width_height
        .map(|(w, h)| format!(",width={w},height={h},pixel-aspect-ratio=1/1"))
        .unwrap_or_default();
    // One channel per mount: intervideosrc counts repeats of a channel's frame on the channel,
    // so several readers of one channel would see each other's reads as stale frames (marked
    // as gaps, then replaced by black after `timeout`).
    let branches: String = media
        .channels
        .iter()
        .map(|c| format!(" out. ! queue ! intervideosink channel={c} sync=true"))
        .collect();
    let (feeder_guard, served) = preroll(media.video, &scale, &format!("tee name=out{branches}"))?;
    let feeder = &feeder_guard.0;
    let weak_feeder = feeder.downgrade();
    let _feeder_watch = feeder
        .bus()
        .ok_or_else(|| glib::bool_error!("the feeder has no bus"))
        .and_then(|bus| {
            bus.add_watch(move |_, message| {
                match message.view() {
                    gst::MessageView::Eos(_) => {
                        let looped = weak_feeder.upgrade().map(|p| {
                            p.seek_simple(
                                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                                gst::ClockTime::ZERO,
                            )
                        });
                        if let Some(Err(e)) = looped {
                            tracing::warn!("rtsp server: cannot loop the video: {e}");
                        }
                    }
                    gst::MessageView::Error(e) => {
                        tracing::warn!("rtsp server feeder: {}", e.error());
                    }
                    _ => {}
                }
                glib::ControlFlow::Continue
            })
        })
        .map_err(|source| RtspServerError::Glib {
            what: "watch the feeder's bus to loop the video",
            source,
        })?;
    feeder
        .set_state(gst::State::Playing)
        .map_err(|source| RtspServerError::Decode {
            path: media.video.to_path_buf(),
            source,
        })?;

    let server = RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let serve_error = |message: &str| RtspServerError::Serve {
        port,
        source: glib::Error::new(gio::IOErrorEnum::Failed, message),
    };
    let mount_points = server
        .mount_points()
        .ok_or_else(|| serve_error("the server has no mount points"))?;
    let (fps_n, fps_d) = match media.options.fps {
        // Validated to be at most 120.
        Some(fps) => (fps as i32, 1),
        None => (served.fps_n, served.fps_d),
    };
    // One keyframe a second: a client that joins waits at most that long for a picture.
    let key_interval = (fps_n + fps_d - 1) / fps_d;
    let (width, height) = (served.width, served.height);
    for (mount, channel) in media.options.mounts.iter().zip(media.channels) {
        let factory = RTSPMediaFactory::new();
        factory.set_launch(&format!(
            "( intervideosrc channel={channel} \
             ! video/x-raw,format=I420,width={width},height={height},framerate={fps_n}/{fps_d} \
             ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max={key_interval} \
             ! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        ));
        // Clients of one mount share its encoder, like clients of one camera share its sensor.
        factory.set_shared(true);
        mount_points.add_factory(mount, factory);
    }
    let source = server
        .create_source(None::<&gio::Cancellable>)
        .map_err(|source| RtspServerError::Serve { port, source })?;
    source.attach(Some(context));
    let bound = u16::try_from(server.bound_port())
        .map_err(|_| serve_error("the server is not bound to a port"))?;
    if ready.send(Ok(bound)).is_ok() {
        main_loop.run();
    }

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

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use super::*;
    use crate::ingest::{Camera, CameraSettings};

    /// Each test runs x264 encoders; one at a time keeps them from starving each other.
    fn serial() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn video() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/helmet-test.mp4")
    }

    fn camera(name: &str, url: &str) -> Camera {
        let mut settings = CameraSettings::new(name, url, 640, 384);
        settings.backoff_initial = Duration::from_millis(200);
        settings.backoff_max = Duration::from_secs(1);
        Camera::start(settings).unwrap()
    }

    /// DESCRIBE/SETUP/PLAY plus a keyframe, on a busy machine.
    const FIRST_FRAME: Duration = Duration::from_secs(10);

    #[test]
    fn every_mount_streams_and_stop_closes_the_port() {
        let _serial = serial();
        let probe = probe_video(&video()).unwrap();
        let mut server = RtspServer::start(&video(), &["/cam1", "/cam2"]).unwrap();
        let urls = server.urls();
        assert_eq!(urls, [server.url("/cam1"), server.url("/cam2")]);
        assert!(urls[0].starts_with("rtsp://127.0.0.1:"), "{urls:?}");
        let cameras: Vec<Camera> = urls.iter().map(|url| camera("cam", url)).collect();
        for (camera, url) in cameras.iter().zip(&urls) {
            for _ in 0..3 {
                let frame = camera
                    .next_frame(FIRST_FRAME)
                    .unwrap_or_else(|| panic!("no frame from {url}: {:?}", camera.stats()));
                assert_eq!(
                    (frame.letterbox.orig_w, frame.letterbox.orig_h),
                    (probe.width, probe.height)
                );
            }
        }

        let port = server.port();
        server.stop().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
        server.stop().unwrap();
        assert_eq!(server.port(), port);
    }

    #[test]
    fn size_and_rate_follow_the_options() {
        let _serial = serial();
        let options = RtspServerOptions::new(&["/small"])
            .width_height(320, 180)
            .fps(5);
        let server = RtspServer::start_with(&video(), options).unwrap();
        let camera = camera("small", &server.url("/small"));
        let first = camera.next_frame(FIRST_FRAME).expect("no first frame");
        assert_eq!((first.letterbox.orig_w, first.letterbox.orig_h), (320, 180));
        let window = Duration::from_secs(2);
        let before = camera.stats().frames_in;
        std::thread::sleep(window);
        let decoded = (camera.stats().frames_in - before) as f64 / window.as_secs_f64();
        assert!((3.0..=7.0).contains(&decoded), "{decoded:.1} fps served");
    }

    #[test]
    fn bad_options_and_missing_videos_are_typed_errors() {
        let start = |options| RtspServer::start_with(&video(), options).err();
        for options in [
            RtspServerOptions::new(&[]),
            RtspServerOptions::new(&["cam"]),
            RtspServerOptions::new(&["/"]),
            RtspServerOptions::new(&["/a b"]),
            RtspServerOptions::new(&["/cam", "/cam"]),
            RtspServerOptions::new(&["/cam"]).width_height(641, 360),
            RtspServerOptions::new(&["/cam"]).width_height(0, 360),
            RtspServerOptions::new(&["/cam"]).fps(0),
        ] {
            let shown = format!("{options:?}");
            assert!(
                matches!(start(options), Some(RtspServerError::Options(_))),
                "{shown}"
            );
        }
        let missing = Path::new("/nonexistent/helmet.mp4");
        assert!(matches!(
            RtspServer::start(missing, &["/cam"]).err(),
            Some(RtspServerError::VideoNotFound(_))
        ));
        assert!(matches!(
            probe_video(missing),
            Err(RtspServerError::VideoNotFound(_))
        ));
    }
}
