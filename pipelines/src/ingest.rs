//! Camera ingest: one GStreamer pipeline and one thread per camera. Frames are sampled by
//! stream time at `detect_fps`, letterboxed to the model input and handed over through a
//! one-slot mailbox, so a slow consumer sees the freshest frame instead of a backlog. A camera
//! that errors, ends or stalls is torn down and rebuilt with exponential backoff; other cameras
//! never notice because nothing is shared between them.
//!
//! The pipeline is rebuilt from scratch on every (re)start rather than reused: nothing of a dead
//! RTSP session (its pads, jitterbuffer, negotiated caps) can leak into the next one, and
//! rtspsrc's new pads are linked by our own `pad-added` handler either way.
//!
//! ```text
//! rtsp: rtspsrc latency=0 drop-on-latency=true protocols=tcp|udp
//!         ─(pad-added, H264 video only)→ rtph264depay ! video/x-h264,stream-format=avc,alignment=au
//!         ! h264parse ! avdec_h264 max-threads=1 | openh264dec   (`H264Decoder`)
//! file: filesrc ! decodebin caps=video/x-raw
//! then: ─(sampler probe)→ videoscale ! video/x-raw,width=CW,height=CH ! videoconvert
//!         ! appsink caps=video/x-raw,format=RGB max-buffers=1 drop=…  sync=…
//! ```
//!
//! `CW×CH` is the letterbox *content* size, set when the decoder announces its caps. The
//! thread then places the content into a `input_w × input_h` buffer and paints the bars grey.
//! Scaling to the exact content size (instead of letting videoscale add black borders) keeps the
//! geometry identical to [`Letterbox`] for every input size: videoscale centres its borders
//! with a floor and honours the source's pixel aspect ratio, Ultralytics' letterbox does
//! neither.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use gst::prelude::*;
use gst_video::prelude::*;

use crate::frame::Frame;
use crate::letterbox::Letterbox;
use crate::redact::redact;

/// How long the camera thread waits for one frame before it looks at the bus, the watchdog and
/// the stop flag again: the bound on how late it notices anything.
const POLL: Duration = Duration::from_millis(50);
/// Bus messages handled per poll, so a flood of warnings cannot starve frame delivery.
const MAX_MESSAGES_PER_POLL: usize = 64;
/// How long `stop()` waits for the camera thread before leaving it behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// RTSP lower transport. TCP is the default because cameras behind NAT or firewalls often
/// cannot send UDP back, and a blocked UDP path costs rtspsrc's `timeout` before it falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
    /// rtspsrc's own order: UDP multicast, UDP, then TCP.
    Auto,
}

/// The H.264 decoder of an RTSP camera. What it costs is mostly per daemon, not per camera: the
/// shared libraries a decoder's plugin loads are mapped once, by the first camera that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H264Decoder {
    /// `avdec_h264` (FFmpeg): the fastest per frame and the smallest per camera, but a
    /// distribution's FFmpeg links every codec it was built with (Debian 12: ~150 libraries,
    /// ~28 MiB resident in the daemon).
    #[default]
    Libav,
    /// `openh264dec` (Cisco's OpenH264, gst-plugins-bad): a few libraries, so the daemon is
    /// smaller with one to four cameras, but each camera keeps more pictures and a frame costs
    /// more CPU (docs/benchmarks.md, bench footprint).
    OpenH264,
}

impl H264Decoder {
    fn factory(self) -> &'static str {
        match self {
            H264Decoder::Libav => "avdec_h264",
            H264Decoder::OpenH264 => "openh264dec",
        }
    }
}

/// How fast a file source is read. RTSP sources are live and ignore this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// Play at the file's own speed and keep only the latest frame, like a camera.
    #[default]
    Realtime,
    /// Decode as fast as the consumer takes frames and never drop one: sampling still follows
    /// stream time, so the same file always yields the same frames (`helmetd detect`,
    /// benchmarks).
    AsFastAsPossible,
}

/// What the operator configures for one camera. Never changes while the camera runs.
#[derive(Clone)]
pub struct CameraSettings {
    pub name: Arc<str>,
    /// `rtsp://[user:password@]host[:port]/path` or `file:///absolute/path`.
    pub url: String,
    /// User and password read by the caller from a credentials file; override any in the URL.
    pub credentials: Option<(String, String)>,
    pub transport: Transport,
    /// RTSP only: a file's decoder is whatever `decodebin` picks.
    pub decoder: H264Decoder,
    /// Frames per second of stream time handed to detection.
    pub detect_fps: f64,
    /// No decoded frame for this long counts as a failure: a hung camera posts no error at all.
    pub stall_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Start a `file://` source over at its end instead of finishing.
    pub loop_file: bool,
    pub pace: Pace,
    /// Model input size the frames are letterboxed to.
    pub input_w: u32,
    pub input_h: u32,
    /// Called from the camera's thread after each frame it puts in the mailbox, so a consumer
    /// can sleep until there is one instead of polling `take_latest`. Must return quickly.
    pub on_frame: Option<FrameHook>,
}

/// See [`CameraSettings::on_frame`].
pub type FrameHook = Arc<dyn Fn() + Send + Sync>;

impl CameraSettings {
    /// Settings with the defaults: 5 fps, TCP, 5 s stall timeout, backoff 1 s doubling to 30 s,
    /// no looping, real-time pace.
    pub fn new(name: &str, url: &str, input_w: u32, input_h: u32) -> Self {
        Self {
            name: name.into(),
            url: url.to_owned(),
            credentials: None,
            transport: Transport::Tcp,
            decoder: H264Decoder::Libav,
            detect_fps: 5.0,
            stall_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            loop_file: false,
            pace: Pace::Realtime,
            input_w,
            input_h,
            on_frame: None,
        }
    }
}

/// Hand-written so that passwords never reach a log line.
impl fmt::Debug for CameraSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CameraSettings")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("transport", &self.transport)
            .field("decoder", &self.decoder)
            .field("detect_fps", &self.detect_fps)
            .field("stall_timeout", &self.stall_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("loop_file", &self.loop_file)
            .field("pace", &self.pace)
            .field("input_w", &self.input_w)
            .field("input_h", &self.input_h)
            .finish()
    }
}

/// Why a camera could not be started at all. Failures after the start (camera unreachable,
/// stream ended, stall) are not errors: the camera retries and reports them in its stats.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("GStreamer cannot be initialised")]
    Init(#[source] gst::glib::Error),
    #[error("camera {camera}: invalid settings: {reason}")]
    Settings { camera: Arc<str>, reason: String },
    #[error("camera {camera}: unsupported URL {url}: {reason}")]
    Url {
        camera: Arc<str>,
        url: String,
        reason: &'static str,
    },
    #[error("camera {camera}: {} is not a readable file", path.display())]
    FileNotFound { camera: Arc<str>, path: PathBuf },
    #[error(
        "camera {camera}: GStreamer element {element} is not installed (gstreamer1.0-plugins-base/-good/-bad, gstreamer1.0-libav)"
    )]
    MissingElement {
        camera: Arc<str>,
        element: &'static str,
    },
    #[error("camera {camera} ({url}): cannot build the pipeline: {reason}")]
    Pipeline {
        camera: Arc<str>,
        url: String,
        reason: String,
    },
    #[error("camera {camera}: cannot start its thread")]
    Thread {
        camera: Arc<str>,
        #[source]
        source: std::io::Error,
    },
}

/// Where a camera is in its life, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    /// Pipeline playing, no frame yet.
    Starting,
    Streaming,
    /// Waiting before the next attempt after a failure.
    Backoff,
    /// A non-looping file reached its end.
    Finished,
    Stopped,
}

impl CameraState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Streaming,
            2 => Self::Backoff,
            3 => Self::Finished,
            _ => Self::Stopped,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Streaming => 1,
            Self::Backoff => 2,
            Self::Finished => 3,
            Self::Stopped => 4,
        }
    }
}

/// A snapshot of a camera's counters; all counts since `Camera::start`.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraStats {
    /// Decoded frames seen by the sampler.
    pub frames_in: u64,
    /// Sampled frames put into the mailbox.
    pub frames_out: u64,
    /// Frames replaced in the mailbox before anyone took them.
    pub dropped: u64,
    /// Pipeline restarts after a failure.
    pub reconnects: u64,
    pub state: CameraState,
    /// The most recent failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
}

/// A running camera. Dropping it stops the pipeline and joins its thread.
pub struct Camera {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Camera {
    /// Validates the settings, builds the first pipeline (so a missing plugin or a bad URL is
    /// reported here) and starts the camera's thread. An unreachable camera is not an error:
    /// it is retried with backoff.
    pub fn start(settings: CameraSettings) -> Result<Self, IngestError> {
        gst::init().map_err(IngestError::Init)?;
        let source = Source::parse(&settings)?;
        validate(&settings)?;
        let shared = Arc::new(Shared::new(settings.name.clone()));
        let worker = Worker {
            sampler_interval: Duration::from_secs_f64(1.0 / settings.detect_fps),
            settings,
            source,
            shared: shared.clone(),
            seq: 0,
            last_progress: Instant::now(),
        };
        let first = worker.build()?;
        let thread = thread::Builder::new()
            .name(format!("camera-{}", worker.settings.name))
            .spawn(move || worker.run(first))
            .map_err(|source| IngestError::Thread {
                camera: shared.name.clone(),
                source,
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Waits up to `timeout` for a frame and takes it. Returns `None` at the timeout, or at once
    /// when the camera has finished or stopped and no frame is left.
    pub fn next_frame(&self, timeout: Duration) -> Option<Frame> {
        self.shared.mailbox.take_waiting(timeout)
    }

    /// Takes the latest frame if one is waiting.
    pub fn take_latest(&self) -> Option<Frame> {
        self.shared.mailbox.take()
    }

    pub fn stats(&self) -> CameraStats {
        let s = &self.shared;
        CameraStats {
            frames_in: s.frames_in.load(Ordering::Relaxed),
            frames_out: s.frames_out.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            state: CameraState::from_u8(s.state.load(Ordering::Relaxed)),
            last_error: lock(&s.last_error).clone(),
        }
    }

    /// True once a non-looping file has been read to its end.
    pub fn is_finished(&self) -> bool {
        CameraState::from_u8(self.shared.state.load(Ordering::Relaxed)) == CameraState::Finished
    }

    /// Stops the pipeline and joins the camera's thread. Frames already in the mailbox can
    /// still be taken. Idempotent.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.mailbox.wake();
        let Some(thread) = lock(&self.thread).take() else {
            return;
        };
        thread.thread().unpark();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            tracing::error!(camera = %self.shared.name, "camera thread did not stop within {STOP_TIMEOUT:?}; leaving it behind");
        } else if thread.join().is_err() {
            tracing::error!(camera = %self.shared.name, "camera thread panicked");
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poisoning only means another thread panicked mid-update of plain data; the data is still
/// the best we have, and a camera must not take the daemon down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn validate(s: &CameraSettings) -> Result<(), IngestError> {
    let reason = if !(s.detect_fps.is_finite() && s.detect_fps > 0.0 && s.detect_fps <= 1000.0) {
        Some(format!(
            "detect_fps must be in (0, 1000], got {}",
            s.detect_fps
        ))
    } else if s.input_w == 0 || s.input_h == 0 || s.input_w > 8192 || s.input_h > 8192 {
        Some(format!(
            "input size must be 1..=8192 on each side, got {}x{}",
            s.input_w, s.input_h
        ))
    } else if s.stall_timeout.is_zero() {
        Some("stall_timeout must be positive".to_owned())
    } else if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
        Some(format!(
            "backoff must satisfy 0 < initial <= max, got {:?} and {:?}",
            s.backoff_initial, s.backoff_max
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IngestError::Settings {
            camera: s.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

enum Source {
    Rtsp,
    File(PathBuf),
}

impl Source {
    fn parse(s: &CameraSettings) -> Result<Self, IngestError> {
        let url_error = |reason| IngestError::Url {
            camera: s.name.clone(),
            url: redact(&s.url).into_owned(),
            reason,
        };
        let scheme = s.url.split_once("://").map(|(scheme, _)| scheme);
        match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("rtsp") => Ok(Self::Rtsp),
            Some("file") => {
                let (path, _) = gst::glib::filename_from_uri(&s.url)
                    .map_err(|_| url_error("not a valid absolute file:// URL"))?;
                if path.is_file() {
                    Ok(Self::File(path))
                } else {
                    Err(IngestError::FileNotFound {
                        camera: s.name.clone(),
                        path,
                    })
                }
            }
            _ => Err(url_error("only rtsp:// and file:// are supported")),
        }
    }
}

/// State shared between the camera thread, the pipeline's streaming threads and the API.
struct Shared {
    name: Arc<str>,
    /// Origin of the nanosecond timestamps below (atomics cannot hold an `Instant`).
    epoch: Instant,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
    /// Nanoseconds after `epoch` at which the sampler last saw a decoded frame.
    last_frame_in: AtomicU64,
    /// Original `width << 32 | height` of the current stream, 0 until the decoder's caps arrive.
    original_size: AtomicU64,
    stop: AtomicBool,
    mailbox: Mailbox,
}

impl Shared {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            epoch: Instant::now(),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            state: AtomicU8::new(CameraState::Starting.as_u8()),
            last_error: Mutex::new(None),
            last_frame_in: AtomicU64::new(0),
            original_size: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            mailbox: Mailbox::default(),
        }
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// One slot holding the newest frame.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Slot>,
    changed: Condvar,
}

#[derive(Default)]
struct Slot {
    frame: Option<Frame>,
    /// No frame will ever come again (finished or stopped).
    closed: bool,
}

impl Mailbox {
    /// Puts `frame` in the slot; returns true if it replaced a frame nobody took.
    fn replace(&self, frame: Frame) -> bool {
        let replaced = lock(&self.slot).frame.replace(frame).is_some();
        self.changed.notify_all();
        replaced
    }

    /// Waits until the slot is empty, then puts `frame` in it. Gives up (returns false) when the
    /// camera stops; each wait is bounded so the stop flag is seen within `POLL`.
    fn put_when_empty(&self, frame: Frame, stop: &AtomicBool) -> bool {
        let mut slot = lock(&self.slot);
        while slot.frame.is_some() {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            slot = self
                .changed
                .wait_timeout(slot, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        slot.frame = Some(frame);
        drop(slot);
        self.changed.notify_all();
        true
    }

    fn take(&self) -> Option<Frame> {
        let frame = lock(&self.slot).frame.take();
        if frame.is_some() {
            self.changed.notify_all();
        }
        frame
    }

    fn take_waiting(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut slot = lock(&self.slot);
        loop {
            if let Some(frame) = slot.frame.take() {
                drop(slot);
                self.changed.notify_all();
                return Some(frame);
            }
            let now = Instant::now();
            if slot.closed || now >= deadline {
                return None;
            }
            slot = self
                .changed
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn close(&self) {
        lock(&self.slot).closed = true;
        self.changed.notify_all();
    }

    fn wake(&self) {
        self.changed.notify_all();
    }
}

/// Admits frames on a fixed grid of stream time, so the output rate follows time, not frame
/// count: a 15 fps and a 30 fps camera both give `detect_fps`, and a file decoded faster than
/// real time gives the same frames as one played in real time.
struct Sampler {
    interval: u64,
    next_due: Option<u64>,
    last: Option<u64>,
}

impl Sampler {
    fn new(interval: Duration) -> Self {
        Self {
            interval: u64::try_from(interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            next_due: None,
            last: None,
        }
    }

    fn admit(&mut self, t: u64) -> bool {
        // Time going backwards means the stream started over (a looping file's seek).
        if self.last.is_some_and(|last| t < last) {
            self.next_due = None;
        }
        self.last = Some(t);
        match self.next_due {
            Some(due) if t < due => false,
            Some(due) => {
                let next = due.saturating_add(self.interval);
                // After a gap, restart the grid instead of letting a burst catch up.
                self.next_due = Some(if next <= t {
                    t.saturating_add(self.interval)
                } else {
                    next
                });
                true
            }
            None => {
                self.next_due = Some(t.saturating_add(self.interval));
                true
            }
        }
    }
}

/// One pipeline run, from build to teardown.
struct Session {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    bus: gst::Bus,
    started: Instant,
}

impl Drop for Session {
    fn drop(&mut self) {
        // A pipeline dropped in PLAYING leaks its streaming threads and sockets.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The restart state machine. A pipeline exists exactly in the states that hold a session.
enum State {
    /// Pipeline playing, no frame yet; `attempt` failures in a row so far.
    Starting {
        session: Session,
        attempt: u32,
    },
    Streaming {
        session: Session,
    },
    /// No pipeline until `until`; `attempt` failures in a row so far.
    Backoff {
        until: Instant,
        attempt: u32,
    },
    Finished,
}

impl State {
    fn public(&self) -> CameraState {
        match self {
            Self::Starting { .. } => CameraState::Starting,
            Self::Streaming { .. } => CameraState::Streaming,
            Self::Backoff { .. } => CameraState::Backoff,
            Self::Finished => CameraState::Finished,
        }
    }
}

/// What one poll of a playing pipeline produced.
enum Poll {
    Frame,
    Idle,
    Failed(String),
    Finished,
}

/// Everything the camera thread owns.
struct Worker {
    settings: CameraSettings,
    source: Source,
    shared: Arc<Shared>,
    sampler_interval: Duration,
    /// Sequence number of the next delivered frame; keeps counting across reconnects so a
    /// consumer can tell frames of different sessions apart.
    seq: u64,
    /// Last time the consumer took a frame we were waiting to hand over (lossless mode), so a
    /// slow consumer is not mistaken for a stalled source.
    last_progress: Instant,
}

impl Worker {
    fn lossless(&self) -> bool {
        matches!(self.source, Source::File(_)) && self.settings.pace == Pace::AsFastAsPossible
    }

    fn run(mut self, first: Session) {
        let mut state = self.play(first, 0);
        self.publish(&state);
        while !self.shared.stopping() {
            state = match state {
                State::Starting { session, attempt } => match self.poll(&session) {
                    Poll::Frame => State::Streaming { session },
                    Poll::Idle => State::Starting { session, attempt },
                    Poll::Failed(reason) => self.fail(session, reason, attempt),
                    Poll::Finished => State::Finished,
                },
                State::Streaming { session } => match self.poll(&session) {
                    Poll::Frame | Poll::Idle => State::Streaming { session },
                    Poll::Failed(reason) => self.fail(session, reason, 0),
                    Poll::Finished => State::Finished,
                },
                State::Backoff { until, attempt } => {
                    let now = Instant::now();
                    if now < until {
                        thread::park_timeout(until - now);
                        State::Backoff { until, attempt }
                    } else {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        match self.build() {
                            Ok(next) => self.play(next, attempt),
                            Err(e) => self.back_off(e.to_string(), attempt),
                        }
                    }
                }
                State::Finished => break,
            };
            self.publish(&state);
        }
        let end = if matches!(state, State::Finished) {
            tracing::info!(camera = %self.shared.name, "end of file");
            CameraState::Finished
        } else {
            CameraState::Stopped
        };
        // Dropping the state drops any session in it, which stops its pipeline.
        drop(state);
        self.shared.state.store(end.as_u8(), Ordering::Relaxed);
        self.shared.mailbox.close();
    }

    fn publish(&self, state: &State) {
        self.shared
            .state
            .store(state.public().as_u8(), Ordering::Relaxed);
    }

    fn play(&self, session: Session, attempt: u32) -> State {
        match session.pipeline.set_state(gst::State::Playing) {
            Ok(_) => State::Starting { session, attempt },
            Err(_) => {
                // The reason, if any, is on the bus.
                let reason = drain_bus(&session.bus)
                    .err()
                    .unwrap_or_else(|| "pipeline refused to play".to_owned());
                self.fail(session, reason, attempt)
            }
        }
    }

    fn fail(&self, session: Session, reason: String, attempt: u32) -> State {
        drop(session);
        self.back_off(reason, attempt)
    }

    /// `attempt` is the number of failures in a row before this one.
    fn back_off(&self, reason: String, attempt: u32) -> State {
        let attempt = attempt.saturating_add(1);
        let shift = attempt.saturating_sub(1).min(16);
        let delay = self
            .settings
            .backoff_initial
            .saturating_mul(1 << shift)
            .min(self.settings.backoff_max);
        // GStreamer's texts name the location, credentials included; this is what the log and
        // /status show.
        let reason = redact(&reason).into_owned();
        tracing::warn!(camera = %self.shared.name, attempt, ?delay, "camera failed: {reason}");
        *lock(&self.shared.last_error) = Some(reason);
        State::Backoff {
            until: Instant::now() + delay,
            attempt,
        }
    }

    /// Waits up to `POLL` for a frame, then looks at the bus, the end of stream and the
    /// watchdog.
    fn poll(&mut self, s: &Session) -> Poll {
        let delivered = match s
            .appsink
            .try_pull_sample(gst::ClockTime::try_from(POLL).unwrap_or(gst::ClockTime::ZERO))
        {
            Some(sample) => self.deliver(&sample),
            None => false,
        };
        if let Err(reason) = drain_bus(&s.bus) {
            return Poll::Failed(reason);
        }
        if s.appsink.is_eos() {
            return self.end_of_stream(s);
        }
        let last_frame = Duration::from_nanos(self.shared.last_frame_in.load(Ordering::Relaxed));
        let last_activity = s
            .started
            .max(self.shared.epoch + last_frame)
            .max(self.last_progress);
        if last_activity.elapsed() > self.settings.stall_timeout {
            return Poll::Failed(format!("no frame for {:?}", self.settings.stall_timeout));
        }
        if delivered { Poll::Frame } else { Poll::Idle }
    }

    fn end_of_stream(&self, s: &Session) -> Poll {
        match self.source {
            Source::Rtsp => Poll::Failed("the server ended the stream".to_owned()),
            Source::File(_) if !self.settings.loop_file => Poll::Finished,
            Source::File(_) => {
                let seek = s.pipeline.seek_simple(
                    gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                    gst::ClockTime::ZERO,
                );
                match seek {
                    Ok(()) => Poll::Idle,
                    Err(e) => Poll::Failed(format!("cannot loop the file: {e}")),
                }
            }
        }
    }

    /// Turns a sample into a `Frame` and hands it over. Returns false if the sample had to be
    /// skipped.
    fn deliver(&mut self, sample: &gst::Sample) -> bool {
        let frame = match self.to_frame(sample) {
            Ok(frame) => frame,
            Err(reason) => {
                tracing::debug!(camera = %self.shared.name, "frame skipped: {reason}");
                return false;
            }
        };
        self.seq += 1;
        let mailbox = &self.shared.mailbox;
        if self.lossless() {
            if !mailbox.put_when_empty(frame, &self.shared.stop) {
                return false;
            }
            self.last_progress = Instant::now();
        } else if mailbox.replace(frame) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.frames_out.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.settings.on_frame {
            hook();
        }
        true
    }

    fn to_frame(&self, sample: &gst::Sample) -> Result<Frame, String> {
        let caps = sample.caps().ok_or("sample without caps")?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
        let packed = self.shared.original_size.load(Ordering::Relaxed);
        let (orig_w, orig_h) = ((packed >> 32) as u32, packed as u32);
        let lb = Letterbox::new(orig_w, orig_h, self.settings.input_w, self.settings.input_h);
        // The decoder's caps are recorded before its frames reach the scaler; a frame scaled
        // for the previous resolution can still be in flight right after a change.
        if (info.width(), info.height()) != (lb.content_w, lb.content_h) || packed == 0 {
            return Err(format!(
                "frame is {}x{}, letterbox content of {orig_w}x{orig_h} is {}x{}",
                info.width(),
                info.height(),
                lb.content_w,
                lb.content_h
            ));
        }
        let buffer = sample.buffer().ok_or("sample without buffer")?;
        let video = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|e| e.to_string())?;
        let stride = usize::try_from(video.plane_stride()[0]).map_err(|e| e.to_string())?;
        let data = video.plane_data(0).map_err(|e| e.to_string())?;
        let (in_w, in_h) = (lb.input_w as usize, lb.input_h as usize);
        let row_len = lb.content_w as usize * 3;
        let mut pixels = vec![0u8; in_w * in_h * 3];
        for y in 0..lb.content_h as usize {
            let src = data
                .get(y * stride..y * stride + row_len)
                .ok_or("frame smaller than its caps")?;
            let dst_start = ((lb.pad_top as usize + y) * in_w + lb.pad_left as usize) * 3;
            pixels
                .get_mut(dst_start..dst_start + row_len)
                .ok_or("letterbox content outside the input")?
                .copy_from_slice(src);
        }
        lb.paint_padding(&mut pixels);
        Ok(Frame {
            camera: self.settings.name.clone(),
            seq: self.seq,
            pts: buffer.pts().map(Duration::from),
            capture_time: SystemTime::now(),
            letterbox: lb,
            pixels,
        })
    }

    fn build(&self) -> Result<Session, IngestError> {
        let pipeline = gst::Pipeline::with_name(&format!("camera-{}", self.settings.name));
        let scale = self.element("videoscale")?;
        let content_caps = self.element("capsfilter")?;
        let convert = self.element("videoconvert")?;
        let lossless = self.lossless();
        let appsink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGB")
                    .build(),
            )
            .sync(matches!(self.source, Source::File(_)) && self.settings.pace == Pace::Realtime)
            .max_buffers(1)
            .drop(!lossless)
            .enable_last_sample(false)
            .build();
        let tail = [&scale, &content_caps, &convert, appsink.upcast_ref()];
        pipeline
            .add_many(tail)
            .map_err(|e| self.pipeline_error(e))?;
        gst::Element::link_many(tail).map_err(|e| self.pipeline_error(e))?;
        let scale_sink = scale
            .static_pad("sink")
            .ok_or_else(|| self.pipeline_error("videoscale has no sink pad"))?;

        match &self.source {
            Source::Rtsp => self.build_rtsp(&pipeline, &scale_sink)?,
            Source::File(path) => self.build_file(&pipeline, path, &scale_sink)?,
        }
        self.shared.original_size.store(0, Ordering::Relaxed);
        self.add_sampler(&scale_sink, content_caps);
        let bus = pipeline
            .bus()
            .ok_or_else(|| self.pipeline_error("pipeline without bus"))?;
        Ok(Session {
            pipeline,
            appsink,
            bus,
            started: Instant::now(),
        })
    }

    fn build_rtsp(
        &self,
        pipeline: &gst::Pipeline,
        scale_sink: &gst::Pad,
    ) -> Result<(), IngestError> {
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", self.settings.url.as_str())
            .property("latency", 0u32)
            .property("drop-on-latency", true)
            .build()
            .map_err(|_| self.missing("rtspsrc"))?;
        match self.settings.transport {
            Transport::Tcp => src.set_property_from_str("protocols", "tcp"),
            Transport::Udp => src.set_property_from_str("protocols", "udp"),
            Transport::Auto => {}
        }
        if let Some((user, password)) = &self.settings.credentials {
            src.set_property("user-id", user.as_str());
            src.set_property("user-pw", password.as_str());
        }
        let depay = self.element("rtph264depay")?;
        // AVC out of the depayloader, with the parameter sets in its codec data: its byte-stream
        // output hands on parameter sets and access unit delimiters as buffers of their own,
        // without timestamps, which openh264dec takes for corrupt pictures and never recovers from.
        let whole_access_units = self.element("capsfilter")?;
        whole_access_units.set_property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build(),
        );
        let parse = self.element("h264parse")?;
        let decoder = self.settings.decoder.factory();
        let decode = self.element(decoder)?;
        if self.settings.decoder == H264Decoder::Libav {
            // One thread keeps latency at one frame; frame threading would add a frame per
            // thread and costs more CPU per frame (stack.md §1).
            decode.set_property("max-threads", 1i32);
        }
        pipeline
            .add_many([&src, &depay, &whole_access_units, &parse, &decode])
            .map_err(|e| self.pipeline_error(e))?;
        gst::Element::link_many([&depay, &whole_access_units, &parse, &decode])
            .map_err(|e| self.pipeline_error(e))?;
        let decoded = decode
            .static_pad("src")
            .ok_or_else(|| self.pipeline_error(format!("{decoder} has no src pad")))?;
        decoded
            .link(scale_sink)
            .map_err(|e| self.pipeline_error(e))?;
        let depay_sink = depay
            .static_pad("sink")
            .ok_or_else(|| self.pipeline_error("rtph264depay has no sink pad"))?;
        src.connect_pad_added(move |src, pad| {
            let Some(caps) = pad.current_caps() else {
                return;
            };
            let Some(s) = caps.structure(0) else {
                return;
            };
            if s.get::<&str>("media").ok() != Some("video") || depay_sink.is_linked() {
                return;
            }
            let encoding = s.get::<&str>("encoding-name").unwrap_or("unknown");
            if !encoding.eq_ignore_ascii_case("H264") {
                gst::element_error!(
                    src,
                    gst::StreamError::CodecNotFound,
                    ("the camera sends {encoding} video; only H.264 is supported")
                );
            } else if let Err(e) = pad.link(&depay_sink) {
                gst::element_error!(
                    src,
                    gst::CoreError::Negotiation,
                    ("cannot link the camera's video stream: {e}")
                );
            }
        });
        Ok(())
    }

    fn build_file(
        &self,
        pipeline: &gst::Pipeline,
        path: &std::path::Path,
        scale_sink: &gst::Pad,
    ) -> Result<(), IngestError> {
        let src = gst::ElementFactory::make("filesrc")
            .property("location", path.to_string_lossy().as_ref())
            .build()
            .map_err(|_| self.missing("filesrc"))?;
        // Stopping at system-memory raw video keeps audio undecoded and makes decodebin add a
        // download step after any hardware decoder it may pick.
        let decode = gst::ElementFactory::make("decodebin")
            .property("caps", gst::Caps::new_empty_simple("video/x-raw"))
            .build()
            .map_err(|_| self.missing("decodebin"))?;
        pipeline
            .add_many([&src, &decode])
            .map_err(|e| self.pipeline_error(e))?;
        src.link(&decode).map_err(|e| self.pipeline_error(e))?;
        let scale_sink = scale_sink.clone();
        decode.connect_pad_added(move |decode, pad| {
            let is_video = pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name() == "video/x-raw"))
                .unwrap_or(false);
            if !is_video || scale_sink.is_linked() {
                return;
            }
            if let Err(e) = pad.link(&scale_sink) {
                gst::element_error!(
                    decode,
                    gst::CoreError::Negotiation,
                    ("cannot link the file's video stream: {e}")
                );
            }
        });
        Ok(())
    }

    /// The sampler sits on the scaler's input, so dropped frames cost neither scaling nor
    /// conversion. It also records the original size from the decoder's caps and sizes the
    /// scaler's output to the letterbox content before the caps reach the scaler.
    fn add_sampler(&self, scale_sink: &gst::Pad, content_caps: gst::Element) {
        let shared = self.shared.clone();
        let (input_w, input_h) = (self.settings.input_w, self.settings.input_h);
        let sampler = Mutex::new(Sampler::new(self.sampler_interval));
        scale_sink.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                if let Some(gst::PadProbeData::Event(event)) = &info.data {
                    if let gst::EventView::Caps(c) = event.view() {
                        let size = c.caps().structure(0).and_then(|s| {
                            Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
                        });
                        if let Some((w, h)) = size {
                            let (w, h) = (w.max(1) as u32, h.max(1) as u32);
                            let lb = Letterbox::new(w, h, input_w, input_h);
                            content_caps.set_property(
                                "caps",
                                gst::Caps::builder("video/x-raw")
                                    .field("width", lb.content_w as i32)
                                    .field("height", lb.content_h as i32)
                                    .build(),
                            );
                            shared
                                .original_size
                                .store(u64::from(w) << 32 | u64::from(h), Ordering::Relaxed);
                        }
                    }
                    return gst::PadProbeReturn::Ok;
                }
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let now = shared.since_epoch(Instant::now());
                shared.frames_in.fetch_add(1, Ordering::Relaxed);
                shared.last_frame_in.store(now, Ordering::Relaxed);
                // Without timestamps, arrival time is the best clock there is.
                let t = buffer.pts().map_or(now, gst::ClockTime::nseconds);
                if lock(&sampler).admit(t) {
                    gst::PadProbeReturn::Ok
                } else {
                    // Not `Drop`: gstreamer-rs hands GStreamer 1.22 a NULL buffer to unref
                    // after a dropping probe (one GStreamer-CRITICAL per dropped frame).
                    // `Handled` with the buffer released here is the same drop, silently.
                    drop(info.take_buffer());
                    gst::PadProbeReturn::Handled
                }
            },
        );
    }

    fn element(&self, factory: &'static str) -> Result<gst::Element, IngestError> {
        gst::ElementFactory::make(factory)
            .build()
            .map_err(|_| self.missing(factory))
    }

    fn missing(&self, element: &'static str) -> IngestError {
        IngestError::MissingElement {
            camera: self.settings.name.clone(),
            element,
        }
    }

    fn pipeline_error(&self, reason: impl fmt::Display) -> IngestError {
        IngestError::Pipeline {
            camera: self.settings.name.clone(),
            url: redact(&self.settings.url).into_owned(),
            reason: redact(&reason.to_string()).into_owned(),
        }
    }
}

/// Handles what is waiting on the bus; an error ends the session.
fn drain_bus(bus: &gst::Bus) -> Result<(), String> {
    for _ in 0..MAX_MESSAGES_PER_POLL {
        let Some(message) = bus.pop() else {
            break;
        };
        match message.view() {
            gst::MessageView::Error(e) => {
                let from = e.src().map(|s| s.name().to_string()).unwrap_or_default();
                return Err(match e.debug() {
                    Some(debug) => format!("{from}: {} ({debug})", e.error()),
                    None => format!("{from}: {}", e.error()),
                });
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(element = ?w.src().map(|s| s.name()), "{}", redact(&w.error().to_string()));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_all(sampler: &mut Sampler, times_ms: impl Iterator<Item = u64>) -> Vec<u64> {
        times_ms.filter(|&t| sampler.admit(t * 1_000_000)).collect()
    }

    #[test]
    fn sampler_follows_stream_time_not_frame_count() {
        // 15 fps for 2 s at 5 fps → the grid 0, 200, 400 … ms: 10 frames.
        let mut s = Sampler::new(Duration::from_millis(200));
        let frames = (0..30).map(|i| i * 1000 / 15);
        let kept = sample_all(&mut s, frames);
        assert_eq!(kept.len(), 10, "{kept:?}");
        // 30 fps for the same 2 s gives the same count.
        let mut s = Sampler::new(Duration::from_millis(200));
        assert_eq!(sample_all(&mut s, (0..60).map(|i| i * 1000 / 30)).len(), 10);
    }

    #[test]
    fn sampler_restarts_its_grid_after_a_gap_and_a_rewind() {
        let mut s = Sampler::new(Duration::from_millis(500));
        assert_eq!(
            sample_all(&mut s, [0, 100, 10_000, 10_100].into_iter()),
            [0, 10_000]
        );
        // A looping file seeks back to 0: the first frame of the new pass is taken at once.
        assert_eq!(sample_all(&mut s, [0, 400, 500].into_iter()), [0, 500]);
    }

    #[test]
    fn urls_are_redacted() {
        let mut settings = CameraSettings::new("c", "rtsp://u:p@h/x", 640, 384);
        settings.credentials = Some(("u".into(), "secret".into()));
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("secret") && !shown.contains(":p@"),
            "{shown}"
        );
    }

    #[test]
    fn bad_settings_and_urls_are_typed_errors() {
        let start = |url: &str, fps: f64| {
            let mut s = CameraSettings::new("c", url, 640, 384);
            s.detect_fps = fps;
            Camera::start(s).err()
        };
        assert!(matches!(
            start("http://x/y", 5.0),
            Some(IngestError::Url { .. })
        ));
        assert!(matches!(
            start("file:///nonexistent/helmet.mp4", 5.0),
            Some(IngestError::FileNotFound { .. })
        ));
        assert!(matches!(
            start("rtsp://127.0.0.1:1/x", 0.0),
            Some(IngestError::Settings { .. })
        ));
        assert!(matches!(
            start("rtsp://127.0.0.1:1/x", f64::NAN),
            Some(IngestError::Settings { .. })
        ));
    }
}
