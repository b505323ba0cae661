//! Fair, bounded dispatch of camera frames to worker processes.
//!
//! Each camera has exactly one pending slot: a newer frame replaces the waiting one (counted
//! in `dropped_oldest`), because for live video the newest frame is the one worth analysing and
//! a backlog would only add latency. When a worker has a free shared-memory slot, cameras are
//! served round-robin, so a camera with a higher frame rate cannot crowd out the others. Frames
//! go to the ready worker with the fewest jobs in flight.
//!
//! Bounded by construction: at most one frame per camera waits, and at most [`SLOTS`] per
//! worker are in flight. Workers can be added, drained and removed at any time; frames that
//! were in flight on a worker that died or was removed are reported as lost and counted.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use helmet_pipelines::{Detections, Frame};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};

use super::conn::{CloseReason, Event, JobId, ReadyInfo, WorkerConn, WorkerError};
use super::shm::SLOTS;
use super::socket::poll_timeout;

/// A worker's identity in the dispatcher, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey(pub u64);

/// Per-camera counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CameraStats {
    pub offered: u64,
    pub dispatched: u64,
    /// Frames replaced by a newer one before any worker was free for them.
    pub dropped_oldest: u64,
    pub completed: u64,
    /// Refused before sending (wrong size) or failed in the worker.
    pub failed: u64,
    /// In flight on a worker that died or was removed.
    pub lost: u64,
}

/// What `offer` did with the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// It replaced the camera's waiting frame, which is dropped.
    ReplacedOlder {
        dropped_seq: u64,
    },
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant carries the per-frame boxes and is the common one; boxing it would add an allocation per frame"
)]
pub enum DispatchEvent {
    Done {
        worker: WorkerKey,
        frame: Frame,
        detections: Detections,
        /// The worker's time in the model.
        infer: Duration,
        /// From `offer` to this result: queueing, shared-memory copy, both socket hops and the
        /// model. The dispatch latency metric.
        latency: Duration,
    },
    /// The worker could not run the model on this frame.
    Failed {
        worker: WorkerKey,
        frame: Frame,
        reason: String,
    },
    /// Refused before reaching a worker (its size does not match the workers' model input).
    Rejected {
        frame: Frame,
        error: WorkerError,
    },
    /// In flight on a worker that died; the frame is not retried: a newer one is on its way.
    Lost {
        worker: WorkerKey,
        frame: Frame,
    },
    WorkerReady {
        worker: WorkerKey,
        info: ReadyInfo,
    },
    Heartbeat {
        worker: WorkerKey,
        jobs_done: u64,
        busy: Duration,
    },
    /// The worker said it cannot go on; `WorkerClosed` follows when it exits.
    WorkerFailed {
        worker: WorkerKey,
        reason: String,
    },
    /// The worker's connection ended (drained, died, or broke the protocol); it has been
    /// removed from the dispatcher.
    WorkerClosed {
        worker: WorkerKey,
        reason: CloseReason,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("frame from unknown camera {0:?}")]
    UnknownCamera(String),
    #[error("no worker {0:?} in the dispatcher")]
    UnknownWorker(WorkerKey),
    #[error("draining worker {worker:?} failed: {source}")]
    Drain {
        worker: WorkerKey,
        #[source]
        source: WorkerError,
    },
    #[error("waiting on the worker sockets failed: {0}")]
    Poll(#[source] nix::Error),
}

/// A worker taken out of the dispatcher, with the frames it had not answered.
#[derive(Debug)]
pub struct RemovedWorker {
    pub conn: WorkerConn,
    pub lost: Vec<Frame>,
}

#[derive(Debug)]
struct Pending {
    frame: Frame,
    enqueued: Instant,
}

#[derive(Debug)]
struct Camera {
    name: Arc<str>,
    pending: Option<Pending>,
    stats: CameraStats,
    /// Removed from the config: takes no frames; its slot stays because jobs in flight refer to
    /// cameras by index, and is reused if the name comes back.
    retired: bool,
}

#[derive(Debug)]
struct Job {
    id: JobId,
    camera: usize,
    frame: Frame,
    enqueued: Instant,
}

#[derive(Debug)]
struct Worker {
    key: WorkerKey,
    conn: WorkerConn,
    jobs: Vec<Job>,
    /// Submission counter at this worker's last job: breaks load ties towards the worker idle
    /// longest, so equal workers share the frames.
    last_used: u64,
    /// Kept out of service (a warm standby, about to be frozen): given no frames.
    held: bool,
}

#[derive(Debug)]
pub struct Dispatcher {
    cameras: Vec<Camera>,
    by_name: HashMap<Arc<str>, usize>,
    /// The camera served first when the next slot frees up.
    next_camera: usize,
    workers: Vec<Worker>,
    next_key: u64,
    submissions: u64,
    /// Produced between polls (by `offer`, `remove_worker`), returned by the next poll.
    events: Vec<DispatchEvent>,
    /// The handle given out, and the end `poll` watches: readable once the handle was woken.
    wake: Option<(Waker, UnixDatagram)>,
}

/// Ends a [`Dispatcher::poll`] early from another thread: a camera's new frame, a signal.
/// Cheap and never blocking: while a wake is pending, more wakes add nothing.
#[derive(Debug, Clone)]
pub struct Waker(Arc<UnixDatagram>);

impl Waker {
    pub fn wake(&self) {
        // A full socket buffer means a wake is already pending.
        let _ = self.0.send(&[1]);
    }
}

impl Dispatcher {
    /// One pending frame per camera is what bounds the queue. Duplicate names count once.
    pub fn new<I, S>(cameras: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let mut d = Dispatcher {
            cameras: Vec::new(),
            by_name: HashMap::new(),
            next_camera: 0,
            workers: Vec::new(),
            next_key: 1,
            submissions: 0,
            events: Vec::new(),
            wake: None,
        };
        for name in cameras {
            d.add_camera(name);
        }
        d
    }

    /// Starts taking frames of `name`; a camera already known is left as it is.
    pub fn add_camera(&mut self, name: impl Into<Arc<str>>) {
        let name: Arc<str> = name.into();
        if self.by_name.contains_key(&name) {
            return;
        }
        let index = match self
            .cameras
            .iter()
            .position(|c| c.retired && c.name == name)
        {
            Some(index) => {
                self.cameras[index].retired = false;
                index
            }
            None => {
                self.cameras.push(Camera {
                    name: Arc::clone(&name),
                    pending: None,
                    stats: CameraStats::default(),
                    retired: false,
                });
                self.cameras.len() - 1
            }
        };
        self.by_name.insert(name, index);
    }

    /// Stops taking frames of `name` and drops its waiting frame, which counts as dropped.
    /// Frames already on a worker still come back as `Done`. Returns whether it was known.
    pub fn remove_camera(&mut self, name: &str) -> bool {
        let Some(index) = self.by_name.remove(name) else {
            return false;
        };
        let camera = &mut self.cameras[index];
        if camera.pending.take().is_some() {
            camera.stats.dropped_oldest += 1;
        }
        camera.retired = true;
        true
    }

    /// Queues the frame as its camera's pending one (replacing an older one) and sends what
    /// can be sent right away.
    pub fn offer(&mut self, frame: Frame) -> Result<Offer, DispatchError> {
        let Some(&index) = self.by_name.get(&*frame.camera) else {
            return Err(DispatchError::UnknownCamera(frame.camera.to_string()));
        };
        let camera = &mut self.cameras[index];
        camera.stats.offered += 1;
        let pending = Pending {
            frame,
            enqueued: Instant::now(),
        };
        let offer = match camera.pending.replace(pending) {
            Some(old) => {
                camera.stats.dropped_oldest += 1;
                Offer::ReplacedOlder {
                    dropped_seq: old.frame.seq,
                }
            }
            None => Offer::Queued,
        };
        self.pump();
        Ok(offer)
    }

    /// A handle that ends the current or next `poll` early. Every call returns a handle to the
    /// same wake-up channel.
    pub fn waker(&mut self) -> io::Result<Waker> {
        if let Some((waker, _)) = &self.wake {
            return Ok(waker.clone());
        }
        let (tx, rx) = UnixDatagram::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let waker = Waker(Arc::new(tx));
        self.wake = Some((waker.clone(), rx));
        Ok(waker)
    }

    /// Waits up to `timeout` for any worker to answer or a [`Waker`], then returns what
    /// happened since the last call and refills the freed slots.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<DispatchEvent>, DispatchError> {
        let queued = !self.events.is_empty() || self.workers.iter().any(|w| w.conn.has_backlog());
        let timeout = if queued { Duration::ZERO } else { timeout };
        let (readable, woken) = {
            let mut fds = Vec::with_capacity(self.workers.len() + 1);
            let mut owner = Vec::with_capacity(self.workers.len());
            for (i, w) in self.workers.iter().enumerate() {
                if let Some(fd) = w.conn.poll_fd() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    owner.push(i);
                }
            }
            if let Some((_, wake)) = &self.wake {
                fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, poll_timeout(timeout)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(DispatchError::Poll(e)),
            }
            let mut readable = vec![false; self.workers.len()];
            for (fd, &i) in fds.iter().zip(&owner) {
                readable[i] = fd.any().unwrap_or(true);
            }
            // The wake socket, when there is one, is the entry after the workers'.
            let woken = self.wake.is_some()
                && fds
                    .get(owner.len())
                    .is_some_and(|fd| fd.any().unwrap_or(true));
            (readable, woken)
        };
        // Only a woken poll has wakes to empty: no extra system call on every other poll.
        if woken && let Some((_, wake)) = &self.wake {
            let mut wakes = [0u8; 64];
            while wake.recv(&mut wakes).is_ok() {}
        }
        for (i, readable) in readable.into_iter().enumerate() {
            if readable || self.workers[i].conn.has_backlog() {
                let events = self.workers[i].conn.poll_results(Duration::ZERO);
                self.absorb(i, events);
            }
        }
        // Closed connections have reported their Closed event by now (or were added closed).
        self.workers
            .retain(|w| !w.conn.is_closed() || w.conn.has_backlog());
        self.pump();
        Ok(std::mem::take(&mut self.events))
    }

    /// Takes a worker; it gets frames once it is ready (wait for Ready before adding it, or
    /// let `poll` report `WorkerReady`).
    pub fn add_worker(&mut self, conn: WorkerConn) -> WorkerKey {
        let key = WorkerKey(self.next_key);
        self.next_key += 1;
        self.workers.push(Worker {
            key,
            conn,
            jobs: Vec::new(),
            last_used: 0,
            held: false,
        });
        self.pump();
        key
    }

    /// Scale-down: no new frames for this worker; it finishes the ones it has and exits, which
    /// `poll` reports as `WorkerClosed` with nothing lost.
    pub fn drain_worker(&mut self, worker: WorkerKey) -> Result<(), DispatchError> {
        let w = self.find(worker)?;
        self.workers[w]
            .conn
            .drain()
            .map_err(|source| DispatchError::Drain { worker, source })
    }

    /// A held worker gets no new frames; released, it takes its share at once.
    pub fn hold_worker(&mut self, worker: WorkerKey, held: bool) -> Result<(), DispatchError> {
        let w = self.find(worker)?;
        if std::mem::replace(&mut self.workers[w].held, held) && !held {
            self.pump();
        }
        Ok(())
    }

    /// When the oldest frame still waiting for a worker was offered: frames wait only while
    /// no worker has a free slot, so this is how long the workers have been behind.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.cameras
            .iter()
            .filter_map(|c| c.pending.as_ref().map(|p| p.enqueued))
            .min()
    }

    /// Takes the worker out now (it is hung, or being killed). Answers it had already sent are
    /// delivered by the next `poll`; the frames still in flight are returned and counted as lost.
    pub fn remove_worker(&mut self, worker: WorkerKey) -> Result<RemovedWorker, DispatchError> {
        let w = self.find(worker)?;
        let events = self.workers[w].conn.poll_results(Duration::ZERO);
        self.absorb(w, events);
        let mut removed = self.workers.remove(w);
        let mut lost = Vec::with_capacity(removed.jobs.len());
        for job in removed.jobs.drain(..) {
            self.cameras[job.camera].stats.lost += 1;
            lost.push(job.frame);
        }
        Ok(RemovedWorker {
            conn: removed.conn,
            lost,
        })
    }

    pub fn worker(&self, worker: WorkerKey) -> Option<&WorkerConn> {
        self.workers
            .iter()
            .find(|w| w.key == worker)
            .map(|w| &w.conn)
    }

    pub fn worker_keys(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.workers.iter().map(|w| w.key)
    }

    /// The cameras taking frames now.
    pub fn camera_stats(&self) -> impl Iterator<Item = (&str, &CameraStats)> {
        self.cameras
            .iter()
            .filter(|c| !c.retired)
            .map(|c| (&*c.name, &c.stats))
    }

    /// Frames dropped for a newer one since the start, removed cameras included, so the total
    /// never goes down.
    pub fn dropped_oldest_total(&self) -> u64 {
        self.cameras.iter().map(|c| c.stats.dropped_oldest).sum()
    }

    /// Frames waiting for a worker (at most one per camera).
    pub fn pending(&self) -> usize {
        self.cameras.iter().filter(|c| c.pending.is_some()).count()
    }

    pub fn in_flight(&self) -> usize {
        self.workers.iter().map(|w| w.jobs.len()).sum()
    }

    fn find(&self, worker: WorkerKey) -> Result<usize, DispatchError> {
        self.workers
            .iter()
            .position(|w| w.key == worker)
            .ok_or(DispatchError::UnknownWorker(worker))
    }

    /// Sends pending frames while some worker has a free slot.
    fn pump(&mut self) {
        while let (Some(w), Some(c)) = (self.pick_worker(), self.next_pending()) {
            let Some(pending) = self.cameras[c].pending.take() else {
                return;
            };
            let worker = &mut self.workers[w];
            match worker.conn.try_submit(&pending.frame) {
                Ok(Some(id)) => {
                    self.submissions += 1;
                    worker.last_used = self.submissions;
                    worker.jobs.push(Job {
                        id,
                        camera: c,
                        frame: pending.frame,
                        enqueued: pending.enqueued,
                    });
                    self.cameras[c].stats.dispatched += 1;
                    self.next_camera = (c + 1) % self.cameras.len();
                }
                Ok(None) => {
                    // pick_worker saw a free slot; keep the frame and stop rather than spin.
                    self.cameras[c].pending = Some(pending);
                    return;
                }
                Err(error @ WorkerError::FrameSize { .. }) => {
                    self.cameras[c].stats.failed += 1;
                    self.events.push(DispatchEvent::Rejected {
                        frame: pending.frame,
                        error,
                    });
                }
                Err(error) => {
                    // The frame stays queued for another worker. A worker whose peer is gone is
                    // closed now and no longer picked; one that is still accepting (its queue is
                    // full, which the slot limit should make impossible) must not be retried in
                    // a loop.
                    self.cameras[c].pending = Some(pending);
                    if worker.conn.is_accepting() {
                        tracing::warn!(worker = worker.key.0, %error, "cannot send to worker");
                        return;
                    }
                }
            }
        }
    }

    fn pick_worker(&self) -> Option<usize> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.held && w.conn.is_accepting() && w.conn.in_flight() < SLOTS)
            .min_by_key(|(_, w)| (w.conn.in_flight(), w.last_used))
            .map(|(i, _)| i)
    }

    /// Round-robin: the first camera with a pending frame at or after the cursor.
    fn next_pending(&self) -> Option<usize> {
        let n = self.cameras.len();
        (0..n)
            .map(|k| (self.next_camera + k) % n)
            .find(|&c| self.cameras[c].pending.is_some())
    }

    fn take_job(&mut self, w: usize, id: JobId) -> Option<Job> {
        let jobs = &mut self.workers[w].jobs;
        let at = jobs.iter().position(|j| j.id == id)?;
        Some(jobs.remove(at))
    }

    fn absorb(&mut self, w: usize, events: Vec<Event>) {
        let worker = self.workers[w].key;
        for event in events {
            let out = match event {
                Event::Ready(info) => DispatchEvent::WorkerReady { worker, info },
                Event::Result {
                    job,
                    detections,
                    infer,
                    ..
                } => {
                    let Some(job) = self.take_job(w, job) else {
                        continue;
                    };
                    self.cameras[job.camera].stats.completed += 1;
                    DispatchEvent::Done {
                        worker,
                        latency: job.enqueued.elapsed(),
                        frame: job.frame,
                        detections,
                        infer,
                    }
                }
                Event::Failed {
                    job: Some(job),
                    reason,
                } => {
                    let Some(job) = self.take_job(w, job) else {
                        continue;
                    };
                    self.cameras[job.camera].stats.failed += 1;
                    DispatchEvent::Failed {
                        worker,
                        frame: job.frame,
                        reason,
                    }
                }
                Event::Failed { job: None, reason } => {
                    DispatchEvent::WorkerFailed { worker, reason }
                }
                Event::Heartbeat { jobs_done, busy } => DispatchEvent::Heartbeat {
                    worker,
                    jobs_done,
                    busy,
                },
                Event::Closed { reason, .. } => {
                    // Everything still in flight on this worker is gone, whatever `lost` says.
                    for job in std::mem::take(&mut self.workers[w].jobs) {
                        self.cameras[job.camera].stats.lost += 1;
                        self.events.push(DispatchEvent::Lost {
                            worker,
                            frame: job.frame,
                        });
                    }
                    DispatchEvent::WorkerClosed { worker, reason }
                }
            };
            self.events.push(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use helmet_pipelines::Letterbox;

    use super::super::conn::prepare;
    use super::super::process::thread_worker;
    use super::super::protocol::{Ready, ToDaemon};
    use super::super::socket::SeqPacket;
    use super::*;

    const W: u32 = 8;
    const H: u32 = 4;

    fn frame(camera: &str, seq: u64) -> Frame {
        Frame {
            camera: Arc::from(camera),
            seq,
            pts: None,
            capture_time: SystemTime::now(),
            letterbox: Letterbox::new(W, H, W, H),
            pixels: vec![seq as u8; (W * H * 3) as usize],
        }
    }

    fn ready_worker(d: &mut Dispatcher, delay: Duration) -> WorkerKey {
        let (mut conn, _handle) = thread_worker(W, H, delay, Duration::from_secs(60));
        conn.wait_ready(Duration::from_secs(10)).unwrap();
        d.add_worker(conn)
    }

    /// A ready worker that never answers; dropping the socket kills it.
    fn silent_worker(d: &mut Dispatcher) -> (WorkerKey, SeqPacket) {
        let (mut conn, fds) = prepare(W, H).unwrap();
        let socket = SeqPacket::from(fds.socket);
        let mut buf = Vec::new();
        ToDaemon::Ready(Ready {
            pid: 1,
            input_w: W,
            input_h: H,
            num_classes: 2,
            load_ms: 0,
        })
        .encode(&mut buf);
        socket.send(&buf, false).unwrap();
        conn.wait_ready(Duration::from_secs(5)).unwrap();
        (d.add_worker(conn), socket)
    }

    fn poll_until(
        d: &mut Dispatcher,
        mut done: impl FnMut(&[DispatchEvent]) -> bool,
    ) -> Vec<DispatchEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        while !done(&all) {
            assert!(Instant::now() < deadline, "timed out; got {all:?}");
            all.extend(d.poll(Duration::from_millis(50)).unwrap());
        }
        all
    }

    fn done_count(events: &[DispatchEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, DispatchEvent::Done { .. }))
            .count()
    }

    fn stats(d: &Dispatcher, camera: &str) -> CameraStats {
        d.camera_stats()
            .find(|(name, _)| *name == camera)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn a_newer_frame_replaces_the_pending_one_and_is_counted() {
        let mut d = Dispatcher::new(["a"]);
        assert_eq!(d.offer(frame("a", 0)).unwrap(), Offer::Queued);
        assert_eq!(
            d.offer(frame("a", 1)).unwrap(),
            Offer::ReplacedOlder { dropped_seq: 0 }
        );
        d.offer(frame("a", 2)).unwrap();
        assert_eq!(d.pending(), 1);
        assert_eq!(stats(&d, "a").dropped_oldest, 2);

        ready_worker(&mut d, Duration::ZERO);
        assert_eq!(d.pending(), 0, "adding a worker sends the pending frame");
        let events = poll_until(&mut d, |e| done_count(e) == 1);
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                DispatchEvent::Done { frame, latency, .. } => {
                    assert!(*latency > Duration::ZERO);
                    Some(frame.seq)
                }
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![2], "only the newest frame is analysed");
        let s = stats(&d, "a");
        assert_eq!((s.offered, s.dispatched, s.completed), (3, 1, 1));
    }

    #[test]
    fn a_busy_camera_cannot_crowd_out_the_others() {
        let mut d = Dispatcher::new(["busy", "b", "c"]);
        ready_worker(&mut d, Duration::from_millis(2));
        let mut seq = 0;
        let mut done = Vec::new();
        while done.len() < 60 {
            // "busy" offers five frames for every one of the others.
            for _ in 0..5 {
                d.offer(frame("busy", seq)).unwrap();
                seq += 1;
            }
            d.offer(frame("b", seq)).unwrap();
            d.offer(frame("c", seq)).unwrap();
            for e in d.poll(Duration::from_millis(100)).unwrap() {
                if let DispatchEvent::Done { frame, .. } = e {
                    done.push(frame.camera);
                }
            }
        }
        for camera in ["busy", "b", "c"] {
            let n = done.iter().filter(|c| &***c == camera).count();
            assert!((18..=22).contains(&n), "{camera}: {n} of {}", done.len());
        }
        assert!(stats(&d, "busy").dropped_oldest > stats(&d, "b").dropped_oldest);
    }

    #[test]
    fn frames_go_to_the_least_loaded_worker() {
        let mut d = Dispatcher::new(["a", "b", "c", "d"]);
        let one = ready_worker(&mut d, Duration::from_millis(200));
        let two = ready_worker(&mut d, Duration::from_millis(200));
        d.offer(frame("a", 0)).unwrap();
        d.offer(frame("b", 0)).unwrap();
        assert_eq!(d.worker(one).unwrap().in_flight(), 1);
        assert_eq!(d.worker(two).unwrap().in_flight(), 1);
        d.offer(frame("c", 0)).unwrap();
        d.offer(frame("d", 0)).unwrap();
        assert_eq!(d.in_flight(), 4);
        d.offer(frame("a", 1)).unwrap();
        assert_eq!((d.in_flight(), d.pending()), (4, 1), "bounded by the slots");
    }

    #[test]
    fn a_held_worker_gets_no_frames_until_released() {
        let mut d = Dispatcher::new(["a", "b", "c"]);
        let (serving, _serving_socket) = silent_worker(&mut d);
        let (standby, _standby_socket) = silent_worker(&mut d);
        d.hold_worker(standby, true).unwrap();
        assert_eq!(d.waiting_since(), None);
        let before = Instant::now();
        for camera in ["a", "b", "c"] {
            d.offer(frame(camera, 0)).unwrap();
        }
        assert_eq!(d.worker(standby).unwrap().in_flight(), 0);
        assert_eq!(
            (d.in_flight(), d.pending()),
            (2, 1),
            "the serving worker's slots only"
        );
        assert!(d.waiting_since().is_some_and(|t| t >= before));

        d.hold_worker(standby, false).unwrap();
        assert_eq!(
            d.worker(standby).unwrap().in_flight(),
            1,
            "released: takes the waiting frame"
        );
        assert_eq!(d.waiting_since(), None);
        assert_eq!(d.worker(serving).unwrap().in_flight(), 2);
    }

    #[test]
    fn removing_a_worker_returns_its_in_flight_frames_as_lost() {
        let mut d = Dispatcher::new(["a", "b", "c"]);
        let (key, _socket) = silent_worker(&mut d);
        d.offer(frame("a", 0)).unwrap();
        d.offer(frame("b", 0)).unwrap();
        d.offer(frame("c", 0)).unwrap();
        assert_eq!((d.in_flight(), d.pending()), (2, 1));
        let removed = d.remove_worker(key).unwrap();
        let lost: Vec<&str> = removed.lost.iter().map(|f| &*f.camera).collect();
        assert_eq!(lost, vec!["a", "b"]);
        assert_eq!((stats(&d, "a").lost, stats(&d, "b").lost), (1, 1));
        assert!(d.worker(key).is_none());
        assert!(matches!(
            d.remove_worker(key),
            Err(DispatchError::UnknownWorker(_))
        ));
        assert_eq!(d.pending(), 1, "c still waits for a worker");
    }

    #[test]
    fn a_dead_worker_is_removed_and_its_frames_reported_lost() {
        let mut d = Dispatcher::new(["a", "b"]);
        let (key, socket) = silent_worker(&mut d);
        d.offer(frame("a", 0)).unwrap();
        d.offer(frame("b", 0)).unwrap();
        drop(socket);
        let events = poll_until(&mut d, |e| {
            e.iter()
                .any(|e| matches!(e, DispatchEvent::WorkerClosed { .. }))
        });
        let lost = events
            .iter()
            .filter(|e| matches!(e, DispatchEvent::Lost { worker, .. } if *worker == key))
            .count();
        assert_eq!(lost, 2);
        assert!(d.worker(key).is_none());
        assert_eq!(d.in_flight(), 0);

        let other = ready_worker(&mut d, Duration::ZERO);
        d.offer(frame("a", 1)).unwrap();
        assert_eq!(d.worker(other).unwrap().in_flight(), 1);
    }

    #[test]
    fn a_drained_worker_finishes_its_frames_and_gets_no_new_ones() {
        let mut d = Dispatcher::new(["a", "b", "c"]);
        let old = ready_worker(&mut d, Duration::from_millis(50));
        d.offer(frame("a", 0)).unwrap();
        d.drain_worker(old).unwrap();
        let new = ready_worker(&mut d, Duration::ZERO);
        d.offer(frame("b", 0)).unwrap();
        assert_eq!(d.worker(old).unwrap().in_flight(), 1);
        let events = poll_until(&mut d, |e| {
            e.iter()
                .any(|e| matches!(e, DispatchEvent::WorkerClosed { .. }))
        });
        assert!(events.iter().any(|e| matches!(
            e,
            DispatchEvent::Done { worker, frame, .. } if *worker == old && &*frame.camera == "a"
        )));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, DispatchEvent::Lost { .. }))
        );
        assert!(d.worker(old).is_none());
        d.offer(frame("c", 0)).unwrap();
        assert_eq!(d.worker_keys().collect::<Vec<_>>(), vec![new]);
    }

    #[test]
    fn a_removed_camera_takes_no_frames_but_its_frames_in_flight_come_back() {
        let mut d = Dispatcher::new(["a", "b"]);
        let worker = ready_worker(&mut d, Duration::from_millis(50));
        d.offer(frame("a", 0)).unwrap();
        assert_eq!(d.worker(worker).unwrap().in_flight(), 1);
        assert!(d.remove_camera("a"));
        assert!(!d.remove_camera("a"));
        assert!(matches!(
            d.offer(frame("a", 1)),
            Err(DispatchError::UnknownCamera(_))
        ));
        let events = poll_until(&mut d, |e| {
            e.iter()
                .any(|e| matches!(e, DispatchEvent::Done { frame, .. } if &*frame.camera == "a"))
        });
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, DispatchEvent::Lost { .. }))
        );
        assert_eq!(
            d.camera_stats().map(|(n, _)| n).collect::<Vec<_>>(),
            vec!["b"]
        );

        d.add_camera("c");
        d.add_camera("a");
        d.offer(frame("a", 2)).unwrap();
        d.offer(frame("c", 0)).unwrap();
        assert_eq!(
            stats(&d, "a").offered,
            2,
            "a returning camera keeps its counters"
        );
        assert_eq!(d.camera_stats().count(), 3);
    }

    #[test]
    fn removing_a_camera_counts_its_waiting_frame_as_dropped() {
        let mut d = Dispatcher::new(["a"]);
        d.offer(frame("a", 0)).unwrap();
        assert_eq!(d.pending(), 1);
        d.remove_camera("a");
        assert_eq!(d.pending(), 0);
        assert_eq!(d.dropped_oldest_total(), 1);
        assert_eq!(d.camera_stats().count(), 0);
    }

    #[test]
    fn a_waker_ends_a_poll_early_and_its_wakes_are_emptied() {
        let mut d = Dispatcher::new(["a"]);
        let waker = d.waker().unwrap();
        let other = waker.clone();
        waker.wake();
        other.wake();
        let start = Instant::now();
        assert!(d.poll(Duration::from_secs(10)).unwrap().is_empty());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Both wakes were taken by that poll: the next one sleeps its timeout.
        let start = Instant::now();
        assert!(d.poll(Duration::from_millis(300)).unwrap().is_empty());
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn unknown_cameras_and_wrong_sizes_are_refused() {
        let mut d = Dispatcher::new(["a", "a"]);
        assert_eq!(d.camera_stats().count(), 1);
        assert!(matches!(
            d.offer(frame("x", 0)),
            Err(DispatchError::UnknownCamera(name)) if name == "x"
        ));
        ready_worker(&mut d, Duration::ZERO);
        let mut bad = frame("a", 0);
        bad.pixels.truncate(3);
        d.offer(bad).unwrap();
        let events = d.poll(Duration::ZERO).unwrap();
        assert!(matches!(&events[..], [DispatchEvent::Rejected { .. }]));
        assert_eq!(stats(&d, "a").failed, 1);
    }
}
