//! The daemon's side of one worker: its socket, its frame slots, and the jobs in flight.
//!
//! Nothing here blocks longer than the timeout it is given: sends are non-blocking (at most
//! [`SLOTS`] jobs and one Drain are ever queued, far below the socket buffer), receives wait in
//! poll(2). The supervisor owns the process (spawn, cgroup, pidfd, kill); a `WorkerConn` only
//! talks to it, so it works the same whoever spawned the process.
//!
//! Life of a connection: [`prepare`] → spawn with the [`InheritedFds`] → **drop the
//! `InheritedFds` in the daemon** (a kept copy of the worker's socket end would hide the worker's
//! death: no end-of-file) → [`WorkerConn::wait_ready`] (or `Event::Ready` from
//! [`WorkerConn::poll_results`]) → [`WorkerConn::try_submit`] / `poll_results` →
//! [`WorkerConn::drain`] → `Event::Closed`. Dropping a `WorkerConn` closes the socket, and the
//! worker exits 0 when it sees that.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helmet_pipelines::{Detections, Frame};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::Signal;

use super::process::WorkerArgs;
use super::protocol::{DecodeError, Infer, MAX_MESSAGE, ToDaemon, ToWorker};
use super::shm::{SLOTS, ShmError, SlotWriter, slot_len};
use super::socket::{Recv, SeqPacket, is_disconnect, poll_timeout};

const _: () = assert!(SLOTS <= u8::MAX as usize, "slot numbers travel as u8");

/// Messages read per `poll_results` call at most, so one chatty worker cannot starve the
/// others in the dispatcher's loop.
const MAX_BATCH: usize = 64;

/// A job number, unique within one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// The worker's end of the socket and the frame memfd, to be placed at fixed descriptor
/// numbers in the child ([`Self::SOCKET_FD`], [`Self::SHM_FD`]), matching [`worker_argv`].
#[derive(Debug)]
pub struct InheritedFds {
    pub socket: OwnedFd,
    pub shm: OwnedFd,
}

impl InheritedFds {
    pub const SOCKET_FD: RawFd = 3;
    pub const SHM_FD: RawFd = 4;

    /// Moves the descriptors to 3 and 4 without close-on-exec. Both are first copied above 9,
    /// because a plain `dup2(socket, 3)` would destroy the memfd if it happened to sit at 3, and
    /// `dup2(fd, fd)` would leave close-on-exec set. Only `fcntl` and `dup2`: async-signal-safe.
    ///
    /// # Safety
    /// Call only in the child between fork/clone and exec (`Command::pre_exec`, or after
    /// `clone3`): it overwrites descriptors 3 and 4 of the calling process, which anything else
    /// in a running process may own.
    pub unsafe fn install_in_child(&self) -> io::Result<()> {
        let high = |fd: RawFd| {
            // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor; `fd` is open (owned by self).
            let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
            if new < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(new)
            }
        };
        let socket = high(self.socket.as_raw_fd())?;
        let shm = high(self.shm.as_raw_fd())?;
        for (from, to) in [(socket, Self::SOCKET_FD), (shm, Self::SHM_FD)] {
            // SAFETY: per this function's contract, 3 and 4 belong to no one in this child.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The command line of a worker, `argv[0]` included: `<exe> worker --pool … --socket-fd 3
/// --shm-fd 4 …`. The descriptor numbers in `args` are replaced by the fixed ones that
/// [`InheritedFds::install_in_child`] uses. The process list shows `…/helmetd worker --pool
/// <pool> --id <id> …`.
pub fn worker_argv(exe: &Path, args: &WorkerArgs) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![exe.into(), "worker".into()];
    let mut flag = |name: &str, value: OsString| {
        argv.push(name.into());
        argv.push(value);
    };
    flag("--pool", args.pool.clone().into());
    flag("--id", args.id.to_string().into());
    flag("--model", args.model.clone().into());
    flag("--input", args.input.to_string().into());
    flag("--classes", args.classes.to_string().into());
    // Rust prints the shortest decimal that parses back to the same f32.
    flag("--score-threshold", args.score_threshold.to_string().into());
    flag("--nms-iou", args.nms_iou.to_string().into());
    flag("--intra-threads", args.intra_threads.to_string().into());
    if let Some(lib) = &args.onnxruntime {
        flag("--onnxruntime", lib.clone().into());
    }
    flag("--socket-fd", InheritedFds::SOCKET_FD.to_string().into());
    flag("--shm-fd", InheritedFds::SHM_FD.to_string().into());
    flag("--heartbeat-ms", args.heartbeat_ms.to_string().into());
    if let Some(ms) = args.fake_infer_ms {
        flag("--fake-infer-ms", ms.to_string().into());
    }
    argv
}

/// Spawns `exe worker …` with `fds` at 3 and 4 and `PR_SET_PDEATHSIG(SIGKILL)`, then closes
/// the daemon's copies of `fds`. For the dispatch benchmark and tests: the daemon's supervisor
/// spawns into cgroups itself, with [`worker_argv`] and [`InheritedFds::install_in_child`].
///
/// PDEATHSIG fires when the *thread* that forked exits (docs/stack.md §4): call this from a
/// thread that lives as long as the worker should.
pub fn spawn_worker(exe: &Path, args: &WorkerArgs, fds: InheritedFds) -> io::Result<Child> {
    let argv = worker_argv(exe, args);
    let parent = std::process::id();
    let mut command = Command::new(exe);
    command.args(&argv[1..]).stdin(Stdio::null());
    let in_child = move || -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent may have died before prctl: then no signal would ever come.
        if nix::unistd::getppid().as_raw() as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: this runs only as the pre_exec hook below, in the child before exec.
        unsafe { fds.install_in_child() }
    };
    // SAFETY: the hook runs in the child between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, fcntl, dup2); it allocates nothing.
    unsafe { command.pre_exec(in_child) };
    let child = command.spawn();
    // Dropping the command drops the closure and with it the daemon's copies of `fds`.
    drop(command);
    child
}

/// What the worker announced once its model was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyInfo {
    pub pid: u32,
    pub input_w: u32,
    pub input_h: u32,
    pub num_classes: u16,
    /// From process start to Ready, ONNX Runtime initialisation included.
    pub load: Duration,
}

/// Something a worker said or did, in the order it happened.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant carries the per-frame boxes and is the common one; boxing it would add an allocation per frame"
)]
pub enum Event {
    Ready(ReadyInfo),
    Result {
        job: JobId,
        detections: Detections,
        /// The worker's time in the model.
        infer: Duration,
        /// From the start of `try_submit` (slot copy included) to this result being read.
        roundtrip: Duration,
    },
    /// `job: None` is the worker giving up as a whole; its socket closes next.
    Failed {
        job: Option<JobId>,
        reason: String,
    },
    Heartbeat {
        jobs_done: u64,
        /// How long the current job has been running; 0 when idle.
        busy: Duration,
    },
    /// The connection is over; `lost` are the jobs that were in flight, in submission order.
    /// Reported once.
    Closed {
        reason: CloseReason,
        lost: Vec<JobId>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// End of file on the socket: the worker exited (after a Drain, or it died).
    #[error("the worker closed its end of the socket")]
    Exited,
    #[error("the worker sent an undecodable message: {0}")]
    Protocol(#[from] DecodeError),
    #[error("the worker answered job {job}, which is not in flight")]
    UnknownJob { job: u64 },
    #[error("the worker sent a second Ready")]
    ReadyTwice,
    #[error("the worker runs a {found_w}x{found_h} model, its frame slots are {input_w}x{input_h}")]
    InputMismatch {
        found_w: u32,
        found_h: u32,
        input_w: u32,
        input_h: u32,
    },
    #[error("reading from the worker failed: {0}")]
    Io(#[source] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("creating the worker socket pair failed: {0}")]
    Socket(#[source] io::Error),
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("sending to the worker failed: {0}")]
    Send(#[source] io::Error),
    #[error("worker not ready after {0:?}")]
    ReadyTimeout(Duration),
    #[error("worker failed to start: {0}")]
    StartFailed(String),
    #[error("worker connection closed before Ready: {0}")]
    ClosedBeforeReady(#[source] CloseReason),
    #[error("worker is not ready yet")]
    NotReady,
    #[error("worker is draining and takes no new frames")]
    Draining,
    #[error("worker connection is closed")]
    Closed,
    #[error(
        "frame from {camera} is {found_w}x{found_h} ({len} bytes), worker input is {input_w}x{input_h} RGB"
    )]
    FrameSize {
        camera: String,
        found_w: u32,
        found_h: u32,
        len: usize,
        input_w: u32,
        input_h: u32,
    },
}

#[derive(Debug)]
struct InFlight {
    job: JobId,
    submitted: Instant,
}

/// One worker, seen from the daemon.
pub struct WorkerConn {
    /// `None` once closed; dropping it is what tells the worker to go.
    socket: Option<SeqPacket>,
    slots: SlotWriter,
    input_w: u32,
    input_h: u32,
    slot_len: usize,
    ready: Option<ReadyInfo>,
    draining: bool,
    /// Index = slot.
    jobs: [Option<InFlight>; SLOTS],
    next_job: u64,
    last_heartbeat: Instant,
    /// Events read but not yet handed out (`wait_ready` stops at Ready).
    backlog: VecDeque<Event>,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
}

impl std::fmt::Debug for WorkerConn {
    /// Without the buffers and the mapping, which would bury the state in bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConn")
            .field("input", &(self.input_w, self.input_h))
            .field("ready", &self.ready)
            .field("draining", &self.draining)
            .field("closed", &self.socket.is_none())
            .field("jobs", &self.jobs)
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

/// Creates the socket pair and the frame slots for one worker of a model with this input.
pub fn prepare(input_w: u32, input_h: u32) -> Result<(WorkerConn, InheritedFds), WorkerError> {
    let (slots, shm) = SlotWriter::create(input_w, input_h)?;
    let (ours, theirs) = SeqPacket::pair().map_err(WorkerError::Socket)?;
    let conn = WorkerConn {
        socket: Some(ours),
        slots,
        input_w,
        input_h,
        slot_len: slot_len(input_w, input_h)?,
        ready: None,
        draining: false,
        jobs: Default::default(),
        next_job: 1,
        last_heartbeat: Instant::now(),
        backlog: VecDeque::new(),
        recv_buf: vec![0; MAX_MESSAGE].into_boxed_slice(),
        send_buf: Vec::with_capacity(64),
    };
    let fds = InheritedFds {
        socket: theirs.into_fd(),
        shm,
    };
    Ok((conn, fds))
}

impl WorkerConn {
    /// Waits up to `timeout` for the worker's Ready. Heartbeats before it are skipped; events
    /// after it stay queued for [`Self::poll_results`].
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<ReadyInfo, WorkerError> {
        if let Some(info) = &self.ready {
            return Ok(info.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.receive(remaining);
            while let Some(event) = self.backlog.pop_front() {
                match event {
                    Event::Ready(info) => return Ok(info),
                    // Before Ready nothing is in flight: a failure is the worker's own.
                    Event::Failed { reason, .. } => return Err(WorkerError::StartFailed(reason)),
                    Event::Closed { reason, .. } => {
                        return Err(WorkerError::ClosedBeforeReady(reason));
                    }
                    Event::Heartbeat { .. } | Event::Result { .. } => {}
                }
            }
            if remaining.is_zero() {
                return Err(WorkerError::ReadyTimeout(timeout));
            }
        }
    }

    /// Copies the frame into a free slot and sends `Infer`. `Ok(None)` when every slot is busy.
    pub fn try_submit(&mut self, frame: &Frame) -> Result<Option<JobId>, WorkerError> {
        let submitted = Instant::now();
        if self.socket.is_none() {
            return Err(WorkerError::Closed);
        }
        if self.draining {
            return Err(WorkerError::Draining);
        }
        if self.ready.is_none() {
            return Err(WorkerError::NotReady);
        }
        let (found_w, found_h) = frame.input_size();
        if (found_w, found_h) != (self.input_w, self.input_h) || frame.pixels.len() != self.slot_len
        {
            return Err(WorkerError::FrameSize {
                camera: frame.camera.to_string(),
                found_w,
                found_h,
                len: frame.pixels.len(),
                input_w: self.input_w,
                input_h: self.input_h,
            });
        }
        let Some(slot) = self.jobs.iter().position(Option::is_none) else {
            return Ok(None);
        };
        let Some(pixels) = self.slots.slot_mut(slot) else {
            return Ok(None);
        };
        pixels.copy_from_slice(&frame.pixels);
        let job = JobId(self.next_job);
        ToWorker::Infer(Infer {
            job: job.0,
            slot: slot as u8,
            seq: frame.seq,
            letterbox: frame.letterbox,
        })
        .encode(&mut self.send_buf);
        self.send()?;
        self.next_job += 1;
        self.jobs[slot] = Some(InFlight { job, submitted });
        Ok(Some(job))
    }

    /// Stops new frames and asks the worker to finish what it has and exit 0; its exit arrives
    /// as `Event::Closed`. Idempotent.
    pub fn drain(&mut self) -> Result<(), WorkerError> {
        if self.draining || self.socket.is_none() {
            return Ok(());
        }
        ToWorker::Drain.encode(&mut self.send_buf);
        self.send()?;
        self.draining = true;
        Ok(())
    }

    /// Waits up to `timeout` for the worker to say something, then returns everything it said
    /// (at most [`MAX_BATCH`] messages, plus the Closed event). Empty on timeout or once closed.
    pub fn poll_results(&mut self, timeout: Duration) -> Vec<Event> {
        if self.backlog.is_empty() {
            self.receive(timeout);
        }
        self.backlog.drain(..).collect()
    }

    /// When the worker last sent anything: every message proves the process is alive.
    pub fn last_heartbeat(&self) -> Instant {
        self.last_heartbeat
    }

    pub fn in_flight(&self) -> usize {
        self.jobs.iter().flatten().count()
    }

    /// Ready, not draining, not closed.
    pub fn is_accepting(&self) -> bool {
        self.socket.is_some() && self.ready.is_some() && !self.draining
    }

    pub fn is_closed(&self) -> bool {
        self.socket.is_none()
    }

    pub fn ready_info(&self) -> Option<&ReadyInfo> {
        self.ready.as_ref()
    }

    /// For waiting on many workers in one poll(2); `None` once closed.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(AsFd::as_fd)
    }

    /// Events are waiting in the backlog: a poll(2) on the socket would not report them.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    fn send(&mut self) -> Result<(), WorkerError> {
        let socket = self.socket.as_ref().ok_or(WorkerError::Closed)?;
        socket.send(&self.send_buf, false).map_err(|e| {
            if is_disconnect(&e) {
                self.close(CloseReason::Exited);
            }
            WorkerError::Send(e)
        })
    }

    /// Polls, then reads what is there into the backlog.
    fn receive(&mut self, timeout: Duration) {
        let Some(socket) = &self.socket else {
            return;
        };
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(timeout)) {
            Ok(0) | Err(Errno::EINTR) => return,
            // Other poll errors cannot happen for one valid descriptor; a non-blocking read
            // below is harmless either way.
            Ok(_) | Err(_) => {}
        }
        for _ in 0..MAX_BATCH {
            let Some(socket) = &self.socket else {
                return;
            };
            let message = match socket.recv(&mut self.recv_buf, false) {
                Ok(Recv::Message(n)) => ToDaemon::decode(&self.recv_buf[..n]),
                Ok(Recv::TooLong(len)) => Err(DecodeError::TooLong { len }),
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) => return self.close(CloseReason::Exited),
                Err(e) => return self.close(CloseReason::Io(e)),
            };
            self.last_heartbeat = Instant::now();
            match message {
                Ok(message) => self.handle(message),
                Err(e) => return self.close(CloseReason::Protocol(e)),
            }
        }
    }

    fn handle(&mut self, message: ToDaemon) {
        match message {
            ToDaemon::Ready(r) => {
                if self.ready.is_some() {
                    return self.close(CloseReason::ReadyTwice);
                }
                if (r.input_w, r.input_h) != (self.input_w, self.input_h) {
                    return self.close(CloseReason::InputMismatch {
                        found_w: r.input_w,
                        found_h: r.input_h,
                        input_w: self.input_w,
                        input_h: self.input_h,
                    });
                }
                let info = ReadyInfo {
                    pid: r.pid,
                    input_w: r.input_w,
                    input_h: r.input_h,
                    num_classes: r.num_classes,
                    load: Duration::from_millis(u64::from(r.load_ms)),
                };
                self.ready = Some(info.clone());
                self.backlog.push_back(Event::Ready(info));
            }
            ToDaemon::Result(r) => match self.finish(r.job) {
                Some(submitted) => self.backlog.push_back(Event::Result {
                    job: JobId(r.job),
                    detections: r.detections,
                    infer: Duration::from_micros(u64::from(r.infer_us)),
                    roundtrip: submitted.elapsed(),
                }),
                None => self.close(CloseReason::UnknownJob { job: r.job }),
            },
            ToDaemon::Failed {
                job: Some(job),
                reason,
            } => match self.finish(job) {
                Some(_) => self.backlog.push_back(Event::Failed {
                    job: Some(JobId(job)),
                    reason,
                }),
                None => self.close(CloseReason::UnknownJob { job }),
            },
            ToDaemon::Failed { job: None, reason } => {
                self.backlog.push_back(Event::Failed { job: None, reason });
            }
            ToDaemon::Heartbeat { jobs_done, busy_ms } => {
                self.backlog.push_back(Event::Heartbeat {
                    jobs_done,
                    busy: Duration::from_millis(u64::from(busy_ms)),
                });
            }
        }
    }

    /// Frees the slot of `job`; `None` if it is not in flight.
    fn finish(&mut self, job: u64) -> Option<Instant> {
        let slot = self
            .jobs
            .iter_mut()
            .find(|j| j.as_ref().is_some_and(|j| j.job.0 == job))?;
        slot.take().map(|j| j.submitted)
    }

    /// Drops the socket, so the worker sees end-of-file and exits, and reports in-flight jobs
    /// as lost. A worker that broke the protocol cannot be trusted with more frames.
    fn close(&mut self, reason: CloseReason) {
        if self.socket.take().is_none() {
            return;
        }
        let mut lost: Vec<JobId> = self
            .jobs
            .iter_mut()
            .filter_map(Option::take)
            .map(|j| j.job)
            .collect();
        lost.sort_unstable();
        self.backlog.push_back(Event::Closed { reason, lost });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use clap::Parser;
    use helmet_pipelines::Letterbox;

    use super::super::process::{InputSize, thread_worker};
    use super::super::protocol::{InferResult, Ready};
    use super::*;

    const W: u32 = 8;
    const H: u32 = 4;

    fn frame(seq: u64, fill: u8) -> Frame {
        Frame {
            camera: Arc::from("cam"),
            seq,
            pts: None,
            capture_time: SystemTime::now(),
            letterbox: Letterbox::new(16, 8, W, H),
            pixels: vec![fill; (W * H * 3) as usize],
        }
    }

    fn events_until(conn: &mut WorkerConn, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        while !done(&all) {
            assert!(Instant::now() < deadline, "timed out; got {all:?}");
            all.extend(conn.poll_results(Duration::from_millis(100)));
        }
        all
    }

    /// The worker's end driven by hand, for misbehaviour the real loop never shows.
    struct ManualWorker {
        socket: SeqPacket,
        buf: Vec<u8>,
    }

    impl ManualWorker {
        fn new() -> (WorkerConn, ManualWorker) {
            let (conn, fds) = prepare(W, H).unwrap();
            let worker = ManualWorker {
                socket: SeqPacket::from(fds.socket),
                buf: Vec::new(),
            };
            (conn, worker)
        }

        fn say(&mut self, m: ToDaemon) {
            m.encode(&mut self.buf);
            self.socket.send(&self.buf, false).unwrap();
        }

        fn ready(&mut self, input_w: u32) {
            self.say(ToDaemon::Ready(Ready {
                pid: 1,
                input_w,
                input_h: H,
                num_classes: 2,
                load_ms: 5,
            }));
        }

        fn hear(&mut self) -> ToWorker {
            let mut buf = [0u8; 128];
            let Ok(Recv::Message(n)) = self.socket.recv(&mut buf, true) else {
                panic!("no message");
            };
            ToWorker::decode(&buf[..n]).unwrap()
        }
    }

    #[test]
    fn frames_round_trip_through_a_worker_and_slots_bound_the_flight() {
        let (mut conn, handle) =
            thread_worker(W, H, Duration::from_millis(30), Duration::from_secs(60));
        assert!(matches!(
            conn.try_submit(&frame(0, 1)),
            Err(WorkerError::NotReady)
        ));
        let info = conn.wait_ready(Duration::from_secs(10)).unwrap();
        assert_eq!((info.input_w, info.input_h, info.num_classes), (W, H, 2));

        let a = conn.try_submit(&frame(0, 1)).unwrap().unwrap();
        let b = conn.try_submit(&frame(1, 2)).unwrap().unwrap();
        assert_eq!(
            conn.try_submit(&frame(2, 3)).unwrap(),
            None,
            "both slots busy"
        );
        assert_eq!(conn.in_flight(), 2);

        let events = events_until(&mut conn, |e| {
            e.iter()
                .filter(|e| matches!(e, Event::Result { .. }))
                .count()
                == 2
        });
        let jobs: Vec<JobId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Result {
                    job,
                    detections,
                    infer,
                    roundtrip,
                } => {
                    assert!(detections.is_empty());
                    assert!(*infer >= Duration::from_millis(30));
                    assert!(roundtrip >= infer);
                    Some(*job)
                }
                _ => None,
            })
            .collect();
        assert_eq!(jobs, vec![a, b]);
        assert_eq!(conn.in_flight(), 0);

        conn.drain().unwrap();
        assert!(matches!(
            conn.try_submit(&frame(3, 4)),
            Err(WorkerError::Draining)
        ));
        let events = events_until(&mut conn, |e| {
            e.iter().any(|e| matches!(e, Event::Closed { .. }))
        });
        assert!(matches!(
            events.last(),
            Some(Event::Closed { reason: CloseReason::Exited, lost }) if lost.is_empty()
        ));
        assert!(conn.is_closed());
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn drain_finishes_jobs_already_sent() {
        let (mut conn, handle) =
            thread_worker(W, H, Duration::from_millis(20), Duration::from_secs(60));
        conn.wait_ready(Duration::from_secs(10)).unwrap();
        conn.try_submit(&frame(0, 1)).unwrap().unwrap();
        conn.try_submit(&frame(1, 1)).unwrap().unwrap();
        conn.drain().unwrap();
        let events = events_until(&mut conn, |e| {
            e.iter().any(|e| matches!(e, Event::Closed { .. }))
        });
        let results = events
            .iter()
            .filter(|e| matches!(e, Event::Result { .. }))
            .count();
        assert_eq!(results, 2);
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn heartbeats_arrive_and_refresh_last_heartbeat() {
        let (mut conn, _handle) = thread_worker(W, H, Duration::ZERO, Duration::from_millis(20));
        conn.wait_ready(Duration::from_secs(10)).unwrap();
        let before = conn.last_heartbeat();
        let events = events_until(&mut conn, |e| {
            e.iter().any(|e| matches!(e, Event::Heartbeat { .. }))
        });
        assert!(matches!(
            events[0],
            Event::Heartbeat { busy, .. } if busy.is_zero()
        ));
        assert!(conn.last_heartbeat() > before);
    }

    #[test]
    fn dropping_the_connection_stops_the_worker() {
        let (mut conn, handle) = thread_worker(W, H, Duration::ZERO, Duration::from_secs(60));
        conn.wait_ready(Duration::from_secs(10)).unwrap();
        drop(conn);
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn worker_death_reports_in_flight_jobs_as_lost() {
        let (mut conn, mut worker) = ManualWorker::new();
        worker.ready(W);
        conn.wait_ready(Duration::from_secs(5)).unwrap();
        let a = conn.try_submit(&frame(0, 1)).unwrap().unwrap();
        let b = conn.try_submit(&frame(1, 1)).unwrap().unwrap();
        assert!(matches!(
            worker.hear(),
            ToWorker::Infer(Infer { slot: 0, .. })
        ));
        drop(worker);
        let events = conn.poll_results(Duration::from_secs(5));
        assert!(matches!(
            &events[..],
            [Event::Closed { reason: CloseReason::Exited, lost }] if *lost == vec![a, b]
        ));
        assert!(
            conn.poll_results(Duration::ZERO).is_empty(),
            "Closed comes once"
        );
        assert!(matches!(
            conn.try_submit(&frame(2, 1)),
            Err(WorkerError::Closed)
        ));
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        let (mut conn, mut worker) = ManualWorker::new();
        worker.ready(W);
        conn.wait_ready(Duration::from_secs(5)).unwrap();
        let job = conn.try_submit(&frame(0, 1)).unwrap().unwrap();
        worker.say(ToDaemon::Result(InferResult {
            job: job.0 + 100,
            infer_us: 1,
            detections: Detections::new(),
        }));
        let events = conn.poll_results(Duration::from_secs(5));
        assert!(matches!(
            &events[..],
            [Event::Closed { reason: CloseReason::UnknownJob { .. }, lost }] if *lost == vec![job]
        ));
        // After the Infer it was sent, the worker sees end-of-file: it is told to go.
        assert!(matches!(worker.hear(), ToWorker::Infer(_)));
        let mut buf = [0u8; 16];
        assert_eq!(worker.socket.recv(&mut buf, true).unwrap(), Recv::Closed);

        let (mut conn, worker) = ManualWorker::new();
        worker
            .socket
            .send(&[0xde, 0xad, 0xbe, 0xef], false)
            .unwrap();
        assert!(matches!(
            conn.wait_ready(Duration::from_secs(5)),
            Err(WorkerError::ClosedBeforeReady(CloseReason::Protocol(_)))
        ));
    }

    #[test]
    fn ready_for_another_input_size_is_refused() {
        let (mut conn, mut worker) = ManualWorker::new();
        worker.ready(W * 2);
        assert!(matches!(
            conn.wait_ready(Duration::from_secs(5)),
            Err(WorkerError::ClosedBeforeReady(
                CloseReason::InputMismatch { .. }
            ))
        ));
    }

    #[test]
    fn start_failure_and_timeout_are_reported() {
        let (mut conn, mut worker) = ManualWorker::new();
        assert!(matches!(
            conn.wait_ready(Duration::from_millis(30)),
            Err(WorkerError::ReadyTimeout(_))
        ));
        worker.say(ToDaemon::Failed {
            job: None,
            reason: "no model".into(),
        });
        assert!(matches!(
            conn.wait_ready(Duration::from_secs(5)),
            Err(WorkerError::StartFailed(r)) if r == "no model"
        ));
    }

    #[test]
    fn frames_of_the_wrong_size_are_refused() {
        let (mut conn, mut worker) = ManualWorker::new();
        worker.ready(W);
        conn.wait_ready(Duration::from_secs(5)).unwrap();
        let mut f = frame(0, 1);
        f.pixels.pop();
        assert!(matches!(
            conn.try_submit(&f),
            Err(WorkerError::FrameSize { .. })
        ));
    }

    #[test]
    fn argv_parses_back_with_fixed_descriptors() {
        #[derive(Parser)]
        enum Cli {
            Worker(WorkerArgs),
        }
        let args = WorkerArgs {
            pool: "edge".into(),
            id: 7,
            model: "models/m.onnx".into(),
            input: InputSize {
                height: 384,
                width: 640,
            },
            classes: 2,
            score_threshold: 0.3,
            nms_iou: 0.45,
            intra_threads: 1,
            onnxruntime: Some("/opt/ort.so".into()),
            socket_fd: 10,
            shm_fd: 11,
            heartbeat_ms: 250,
            fake_infer_ms: Some(0),
        };
        let argv = worker_argv(Path::new("/usr/bin/helmetd"), &args);
        assert_eq!(argv[0], "/usr/bin/helmetd");
        assert_eq!(argv[1], "worker");
        let Cli::Worker(parsed) = Cli::try_parse_from(&argv).unwrap();
        assert_eq!(
            parsed,
            WorkerArgs {
                socket_fd: 3,
                shm_fd: 4,
                ..args
            }
        );
    }
}
