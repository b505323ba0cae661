//! `helmetd worker`: one inference process. It loads the model once, says `Ready`, then answers
//! `Infer` messages in order until `Drain` or until the daemon's end of the socket closes.
//!
//! The process is spawned by the daemon's supervisor with the socket and the frame memfd
//! already open at the descriptor numbers given on the command line (see
//! [`super::conn::worker_argv`]); it opens nothing else but the model and ONNX Runtime.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use helmet_pipelines::detect::{
    CpuArenaConfig, DEFAULT_INTRA_THREADS, DEFAULT_NMS_IOU, DEFAULT_SCORE_THRESHOLD, DetectError,
    Detector, ModelSpec, TensorArena, register_cpu_arena,
};
use helmet_pipelines::runtime::{RuntimeError, init_onnxruntime};
use helmet_pipelines::{Detections, Frame, Letterbox};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::Signal;

use super::protocol::{DecodeError, Infer, InferResult, MAX_MESSAGE, Ready, ToDaemon, ToWorker};
use super::shm::{SLOTS, ShmError, SlotReader, slot_len};
use super::socket::{Recv, SeqPacket, is_disconnect};

/// A model input size as `HEIGHTxWIDTH`, the order the rest of the CLI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize {
    pub height: u32,
    pub width: u32,
}

impl FromStr for InputSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (h, w) = s
            .split_once(['x', 'X'])
            .ok_or("expected HEIGHTxWIDTH, e.g. 384x640")?;
        let parse = |v: &str| match v.trim().parse::<u32>() {
            Ok(0) => Err(format!("{v:?}: must be non-zero")),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("{v:?}: {e}")),
        };
        Ok(InputSize {
            height: parse(h)?,
            width: parse(w)?,
        })
    }
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

/// `helmetd worker …`. Started by the daemon, not by hand: the descriptors must be inherited.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct WorkerArgs {
    /// Pool the worker belongs to; with --id it names the worker in logs and the process list.
    #[arg(long)]
    pub pool: String,
    #[arg(long)]
    pub id: u32,
    /// Model file (not opened with --fake-infer-ms).
    #[arg(long)]
    pub model: PathBuf,
    /// Model input as HEIGHTxWIDTH; also the size of the shared-memory frame slots.
    #[arg(long)]
    pub input: InputSize,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub classes: u16,
    #[arg(long, default_value_t = DEFAULT_SCORE_THRESHOLD)]
    pub score_threshold: f32,
    #[arg(long, default_value_t = DEFAULT_NMS_IOU)]
    pub nms_iou: f32,
    /// ONNX Runtime intra-op threads; the default 1 lets the cgroup CPU limit mean "workers".
    #[arg(long, default_value_t = DEFAULT_INTRA_THREADS)]
    pub intra_threads: usize,
    /// ONNX Runtime library, when not found by the usual search.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// Inherited AF_UNIX SOCK_SEQPACKET socket to the daemon.
    #[arg(long)]
    pub socket_fd: RawFd,
    /// Inherited memfd holding the frame slots.
    #[arg(long)]
    pub shm_fd: RawFd,
    /// Heartbeat period; the daemon replaces a worker that misses several.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
    /// For the dispatch benchmark and tests ONLY: skip ONNX Runtime and the model, sleep this
    /// long per frame and answer zero boxes. The daemon never passes it to a pool's workers.
    #[arg(long)]
    pub fake_infer_ms: Option<u64>,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("PR_SET_PDEATHSIG failed: {0}")]
    ParentDeathSignal(#[source] nix::Error),
    #[error("{flag} {fd}: {reason}")]
    Descriptor {
        flag: &'static str,
        fd: RawFd,
        reason: String,
    },
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] DetectError),
}

/// Why a running worker stopped with an error (a clean stop is `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("sending to the daemon failed: {0}")]
    Send(#[source] io::Error),
    #[error("receiving from the daemon failed: {0}")]
    Recv(#[source] io::Error),
    #[error("the daemon sent an undecodable message: {0}")]
    Decode(#[from] DecodeError),
    #[error("the daemon sent a {len}-byte message, longer than any in the protocol")]
    TooLong { len: usize },
    #[error("starting the heartbeat thread failed: {0}")]
    Heartbeat(#[source] io::Error),
}

/// Runs the worker until the daemon drains it or goes away (both exit 0).
pub fn worker_main(args: WorkerArgs) -> anyhow::Result<()> {
    // `load_ms` counts ONNX Runtime initialisation too: it is part of what the daemon waits for.
    let started = Instant::now();
    fix_malloc_mmap_threshold();
    // The supervisor sets this before exec too; set again here so a worker started by any other
    // spawner still dies with the thread that started it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(StartError::ParentDeathSignal)?;
    if args.socket_fd == args.shm_fd {
        return Err(StartError::Descriptor {
            flag: "--shm-fd",
            fd: args.shm_fd,
            reason: "is also --socket-fd".into(),
        }
        .into());
    }
    let socket = Arc::new(SeqPacket::from(adopt_fd(
        args.socket_fd,
        "--socket-fd",
        Some("socket:"),
    )?));
    let shm = adopt_fd(args.shm_fd, "--shm-fd", None)?;
    let name = format!("{}/{}", args.pool, args.id);
    // Heartbeats start before the model loads: on a slow gateway the load takes tens of seconds,
    // and the supervisor tells such a load from a hung start by them.
    let progress = Arc::new(Progress::new());
    let _heartbeat = start_heartbeat(
        Arc::clone(&socket),
        Arc::clone(&progress),
        Duration::from_millis(args.heartbeat_ms),
    )?;
    let loaded = SlotReader::open(shm, args.input.width, args.input.height)
        .map_err(StartError::from)
        .and_then(|slots| Ok((slots, load_engine(&args)?)));
    let (slots, engine) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            // The daemon is waiting for Ready: tell it why none will come. Best effort; the
            // exit status and stderr say it too.
            let mut out = Vec::new();
            ToDaemon::Failed {
                job: None,
                reason: e.to_string(),
            }
            .encode(&mut out);
            let _ = socket.send(&out, false);
            return Err(e.into());
        }
    };
    let ready = Ready {
        pid: std::process::id(),
        input_w: args.input.width,
        input_h: args.input.height,
        num_classes: args.classes,
        load_ms: millis(started.elapsed()),
    };
    tracing::info!(
        worker = %name,
        pid = ready.pid,
        load_ms = ready.load_ms,
        fake_infer_ms = args.fake_infer_ms,
        model = %args.model.display(),
        "worker ready"
    );
    serve(&socket, &slots, engine, ready, &progress, &name)?;
    Ok(())
}

/// Takes ownership of a descriptor number from the command line, after checking that it is
/// open (and a socket, when `want_prefix` is `socket:`), and makes it close-on-exec.
fn adopt_fd(
    fd: RawFd,
    flag: &'static str,
    want_prefix: Option<&str>,
) -> Result<OwnedFd, StartError> {
    let error = |reason: String| StartError::Descriptor { flag, fd, reason };
    if fd <= 2 {
        return Err(error("is stdin, stdout or stderr".into()));
    }
    // /proc rather than fcntl on a raw number: it checks openness and type without `unsafe`.
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| error(format!("is not an open descriptor ({e})")))?;
    if let Some(prefix) = want_prefix
        && !target.to_string_lossy().starts_with(prefix)
    {
        return Err(error(format!(
            "is {}, expected a {prefix} descriptor",
            target.display()
        )));
    }
    // SAFETY: the descriptor is open (checked above) and was inherited for this purpose: the
    // command line names it, nothing else in this process refers to it, and socket_fd != shm_fd
    // was checked by the caller, so this is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| error(format!("cannot set close-on-exec: {e}")))?;
    Ok(owned)
}

/// What answers a frame.
pub(crate) enum Engine {
    Model(Box<Detector>),
    /// `--fake-infer-ms`: no model, a fixed delay, zero boxes.
    Fake(Duration),
}

impl Engine {
    fn run(&mut self, frame: &Frame) -> Result<Detections, DetectError> {
        match self {
            Engine::Model(detector) => detector.detect(frame),
            Engine::Fake(delay) => {
                if !delay.is_zero() {
                    std::thread::sleep(*delay);
                }
                Ok(Detections::new())
            }
        }
    }
}

fn load_engine(args: &WorkerArgs) -> Result<Engine, StartError> {
    if let Some(ms) = args.fake_infer_ms {
        return Ok(Engine::Fake(Duration::from_millis(ms)));
    }
    let library = init_onnxruntime(args.onnxruntime.as_deref())?;
    tracing::debug!(library = %library.display(), "ONNX Runtime loaded");
    let spec = ModelSpec {
        path: args.model.clone(),
        input_w: args.input.width,
        input_h: args.input.height,
        num_classes: usize::from(args.classes),
        score_threshold: args.score_threshold,
        nms_iou: args.nms_iou,
        intra_threads: args.intra_threads,
    };
    register_cpu_arena(WORKER_CPU_ARENA)?;
    let detector = Detector::load_with_arena(&spec, TensorArena::Environment)?;
    release_freed_heap();
    Ok(Engine::Model(Box::new(detector)))
}

/// The worker's ONNX Runtime CPU arena: one 64 MiB first region instead of regions of 1, 4, 4, 8,
/// 16 and 32 MiB. What the edge model's load keeps in the arena (18.5 MiB) and a run's tensors
/// (≈ 33 MiB) then share one address range, and the worker's peak drops by ≈ 3 MiB at the same
/// CPU time per frame; extending by exactly what is requested (`kSameAsRequested`) made it 5 MiB
/// larger (`helmetd bench footprint`, docs/benchmarks.md). Only pages that are used count: a
/// smaller model leaves the rest of the region untouched, a larger one gets a second region.
pub(crate) const WORKER_CPU_ARENA: CpuArenaConfig = CpuArenaConfig {
    initial_chunk_bytes: 64 << 20,
};

/// glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB); once the
/// model's load has freed a big block, ONNX Runtime's arena and the weights come from the heap
/// and what is freed around them stays resident. A fixed threshold maps big blocks on their own
/// and unmaps them when freed: −13 MiB of worker RSS and peak at the same CPU time per frame,
/// since the arena keeps its blocks (`helmetd bench footprint`, docs/benchmarks.md). Not in the
/// daemon: its decoder frees and allocates a picture per frame, which then costs a fresh mapping
/// each time (+40–60 % CPU per decoded frame for −2.5 MiB per camera).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; allocations made before keep working.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

/// Loading the model frees the file as parsed and the graph's intermediate copies inside the
/// heap, where glibc keeps their pages; handing them back takes ~3 MiB off the worker's RSS
/// and peak (`helmetd bench footprint`, docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_heap() {
    // SAFETY: malloc_trim only returns free pages to the kernel; it touches no live allocation.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_heap() {}

/// Shared between the inference loop and the heartbeat thread.
struct Progress {
    epoch: Instant,
    jobs_done: AtomicU64,
    /// Microseconds since `epoch` plus one when the current job started; 0 when idle.
    busy_since: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            jobs_done: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
        }
    }

    fn busy_ms(&self) -> u32 {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => 0,
            since => {
                let now = micros64(self.epoch.elapsed()) + 1;
                u32::try_from(now.saturating_sub(since) / 1000).unwrap_or(u32::MAX)
            }
        }
    }
}

/// A separate thread, so heartbeats continue during a long inference; `busy_ms` tells the
/// daemon how long that inference has been running. Sends share the socket with the main loop:
/// each SEQPACKET send is one atomic message, so no lock is needed. Dropping the returned sender
/// stops the thread at once, so it does not keep the socket open after the loop has ended.
fn start_heartbeat(
    socket: Arc<SeqPacket>,
    progress: Arc<Progress>,
    every: Duration,
) -> Result<mpsc::Sender<()>, ServeError> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let mut out = Vec::with_capacity(16);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                ToDaemon::Heartbeat {
                    jobs_done: progress.jobs_done.load(Ordering::Relaxed),
                    busy_ms: progress.busy_ms(),
                }
                .encode(&mut out);
                // A failed send means the daemon is gone; the main loop sees that as well.
                if socket.send(&out, true).is_err() {
                    return;
                }
            }
        })
        .map_err(ServeError::Heartbeat)?;
    Ok(stop)
}

/// The worker's protocol loop, separate from process start-up so tests can run it on a thread.
/// The caller runs the heartbeat thread that reports `progress`.
fn serve(
    socket: &SeqPacket,
    slots: &SlotReader,
    mut engine: Engine,
    ready: Ready,
    progress: &Progress,
    name: &str,
) -> Result<(), ServeError> {
    let (input_w, input_h) = (ready.input_w, ready.input_h);
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    ToDaemon::Ready(ready).encode(&mut out);
    if !send_or_gone(socket, &out)? {
        return Ok(());
    }
    // One frame for the life of the worker: the slot is copied into its buffer, no allocation.
    let mut frame = Frame {
        camera: Arc::from(name),
        seq: 0,
        pts: None,
        capture_time: SystemTime::now(),
        letterbox: Letterbox::new(input_w, input_h, input_w, input_h),
        pixels: vec![0; slot_len(input_w, input_h).unwrap_or(0)],
    };
    // Daemon → worker messages are under 64 bytes; anything longer is reported by recv.
    let mut buf = [0u8; 128];
    loop {
        let n = match socket.recv(&mut buf, true).map_err(ServeError::Recv)? {
            Recv::Message(n) => n,
            Recv::Closed => {
                tracing::info!(worker = %name, "daemon closed the connection; exiting");
                return Ok(());
            }
            Recv::TooLong(len) => return Err(fatal(socket, ServeError::TooLong { len })),
            Recv::Empty => continue,
        };
        let infer = match ToWorker::decode(&buf[..n]) {
            Ok(ToWorker::Infer(infer)) => infer,
            Ok(ToWorker::Drain) => {
                tracing::info!(worker = %name, "drained; exiting");
                return Ok(());
            }
            Err(e) => return Err(fatal(socket, e.into())),
        };
        let reply = run_job(&infer, slots, &mut frame, &mut engine, progress);
        reply.encode(&mut out);
        if !send_or_gone(socket, &out)? {
            return Ok(());
        }
    }
}

/// `Ok(false)` when the daemon has gone: that is a normal way for a worker to end.
fn send_or_gone(socket: &SeqPacket, message: &[u8]) -> Result<bool, ServeError> {
    match socket.send(message, true) {
        Ok(()) => Ok(true),
        Err(e) if is_disconnect(&e) => Ok(false),
        Err(e) => Err(ServeError::Send(e)),
    }
}

/// Tells the daemon why the worker is about to exit with an error, best effort.
fn fatal(socket: &SeqPacket, error: ServeError) -> ServeError {
    let mut out = Vec::new();
    ToDaemon::Failed {
        job: None,
        reason: error.to_string(),
    }
    .encode(&mut out);
    let _ = socket.send(&out, false);
    error
}

fn run_job(
    infer: &Infer,
    slots: &SlotReader,
    frame: &mut Frame,
    engine: &mut Engine,
    progress: &Progress,
) -> ToDaemon {
    let failed = |reason: String| ToDaemon::Failed {
        job: Some(infer.job),
        reason,
    };
    let lb = infer.letterbox;
    let (input_w, input_h) = frame.input_size();
    if (lb.input_w, lb.input_h) != (input_w, input_h) {
        return failed(format!(
            "frame is {}x{} (WxH), this worker's model input is {input_w}x{input_h}",
            lb.input_w, lb.input_h
        ));
    }
    let pixels = match slots.slot(usize::from(infer.slot)) {
        Some(p) if p.len() == frame.pixels.len() => p,
        _ => {
            return failed(format!(
                "slot {} does not exist ({SLOTS} slots)",
                infer.slot
            ));
        }
    };
    frame.pixels.copy_from_slice(pixels);
    frame.seq = infer.seq;
    frame.letterbox = lb;

    let started = Instant::now();
    progress
        .busy_since
        .store(micros64(started - progress.epoch) + 1, Ordering::Relaxed);
    let outcome = engine.run(frame);
    let infer_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    progress.busy_since.store(0, Ordering::Relaxed);
    progress.jobs_done.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(detections) => ToDaemon::Result(InferResult {
            job: infer.job,
            infer_us,
            detections,
        }),
        Err(e) => failed(e.to_string()),
    }
}

fn micros64(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// An in-process worker for the daemon-side tests: the real protocol loop on a thread, with the
/// fake engine.
#[cfg(test)]
pub(crate) fn thread_worker(
    input_w: u32,
    input_h: u32,
    fake_delay: Duration,
    heartbeat: Duration,
) -> (
    super::conn::WorkerConn,
    std::thread::JoinHandle<Result<(), ServeError>>,
) {
    let (conn, fds) = super::conn::prepare(input_w, input_h).expect("prepare");
    let handle = std::thread::spawn(move || {
        let slots = SlotReader::open(fds.shm, input_w, input_h).expect("map slots");
        let ready = Ready {
            pid: std::process::id(),
            input_w,
            input_h,
            num_classes: 2,
            load_ms: 0,
        };
        let socket = Arc::new(SeqPacket::from(fds.socket));
        let progress = Arc::new(Progress::new());
        let _heartbeat = start_heartbeat(Arc::clone(&socket), Arc::clone(&progress), heartbeat)?;
        serve(
            &socket,
            &slots,
            Engine::Fake(fake_delay),
            ready,
            &progress,
            "test/0",
        )
    });
    (conn, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }

    #[test]
    fn input_size_parses_height_first_and_round_trips() {
        let size: InputSize = "384x640".parse().unwrap();
        assert_eq!((size.height, size.width), (384, 640));
        assert_eq!(size.to_string(), "384x640");
        assert!("384".parse::<InputSize>().is_err());
        assert!("0x640".parse::<InputSize>().is_err());
        assert!("axb".parse::<InputSize>().is_err());
    }

    /// A worker's arguments as the supervisor passes them, for `model`, then `extra` (a later
    /// flag wins over the same flag here).
    fn parse_args(model: &str, extra: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let base = [
            "w",
            "--pool",
            "edge",
            "--id",
            "3",
            "--model",
            model,
            "--input",
            "384x640",
            "--classes",
            "2",
            "--socket-fd",
            "3",
            "--shm-fd",
            "4",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    #[test]
    fn defaults_and_ranges() {
        let parse = |extra: &[&str]| parse_args("m.onnx", extra);
        let args = parse(&[]).unwrap();
        assert_eq!(args.heartbeat_ms, 500);
        assert_eq!(args.intra_threads, 1);
        assert_eq!(args.fake_infer_ms, None);
        assert_eq!(args.score_threshold, DEFAULT_SCORE_THRESHOLD);
        assert!(parse(&["--heartbeat-ms", "1"]).is_err());
        assert!(parse(&["--classes", "0"]).is_err());
        assert_eq!(
            parse(&["--fake-infer-ms", "0"]).unwrap().fake_infer_ms,
            Some(0)
        );
    }

    /// The real model's engine is loaded on the worker's own CPU arena: `load_engine` registered
    /// `WORKER_CPU_ARENA` on the environment, so any other arena is refused afterwards.
    #[test]
    fn the_model_engine_registers_the_worker_arena() {
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/helmet_yolov12m_384x640_int8qdq.onnx"
        );
        let args = parse_args(model, &[]).expect("arguments parse");
        let engine = load_engine(&args).expect("the edge model loads");
        assert!(matches!(engine, Engine::Model(_)));
        let other = CpuArenaConfig {
            initial_chunk_bytes: 1 << 20,
        };
        match register_cpu_arena(other) {
            Err(DetectError::ArenaAlreadyRegistered { registered, .. }) => {
                assert_eq!(registered, WORKER_CPU_ARENA);
            }
            result => panic!("the worker arena was not registered: {result:?}"),
        }
    }

    #[test]
    fn stdio_and_closed_descriptors_are_refused() {
        assert!(matches!(
            adopt_fd(1, "--socket-fd", Some("socket:")),
            Err(StartError::Descriptor { fd: 1, .. })
        ));
        assert!(matches!(
            adopt_fd(999_999, "--shm-fd", None),
            Err(StartError::Descriptor { .. })
        ));
    }

    #[test]
    fn busy_time_is_zero_when_idle() {
        let p = Progress {
            epoch: Instant::now() - Duration::from_millis(50),
            jobs_done: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
        };
        assert_eq!(p.busy_ms(), 0);
        p.busy_since.store(1, Ordering::Relaxed);
        assert!(p.busy_ms() >= 50);
    }
}
