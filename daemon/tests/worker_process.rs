//! `helmetd worker` as a real process, spawned the way the supervisor does it: the socket and
//! the frame memfd inherited at descriptors 3 and 4. Every wait is bounded; a worker still
//! running when a test ends is killed by its pid.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use helmet_pipelines::still::load_still;
use helmetd::worker::{
    CloseReason, Event, InputSize, WorkerArgs, WorkerConn, WorkerError, prepare, spawn_worker,
};

const INPUT_W: u32 = 640;
const INPUT_H: u32 = 384;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn args(fake_infer_ms: Option<u64>) -> WorkerArgs {
    WorkerArgs {
        pool: "test".into(),
        id: 0,
        model: repo("models/helmet_yolov12m_384x640_int8qdq.onnx"),
        input: InputSize {
            height: INPUT_H,
            width: INPUT_W,
        },
        classes: 2,
        score_threshold: 0.25,
        nms_iou: 0.45,
        intra_threads: 1,
        onnxruntime: None,
        socket_fd: 3,
        shm_fd: 4,
        heartbeat_ms: 100,
        fake_infer_ms,
    }
}

/// A spawned worker; killed (by pid) and reaped on drop if still running.
struct Worker {
    conn: Option<WorkerConn>,
    child: Child,
}

impl Worker {
    fn start(args: &WorkerArgs) -> Worker {
        let (conn, fds) = prepare(INPUT_W, INPUT_H).expect("prepare");
        let child = spawn_worker(Path::new(env!("CARGO_BIN_EXE_helmetd")), args, fds)
            .expect("spawn helmetd worker");
        Worker {
            conn: Some(conn),
            child,
        }
    }

    fn conn(&mut self) -> &mut WorkerConn {
        self.conn.as_mut().expect("connection still open")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<helmetd::worker::ReadyInfo, WorkerError> {
        let ready = self.conn().wait_ready(timeout);
        if let Err(WorkerError::ClosedBeforeReady(CloseReason::Exited)) = &ready {
            // clap exits 2 on an unknown subcommand.
            if let Ok(status) = self.wait_exit(Duration::from_secs(5)) {
                assert_ne!(
                    status.code(),
                    Some(2),
                    "helmetd rejected its arguments: is the `worker` subcommand wired in main.rs?"
                );
            }
        }
        ready
    }

    fn events_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?}; got {all:?}");
            for event in self
                .conn()
                .poll_results(left.min(Duration::from_millis(200)))
            {
                let finished = done(&event);
                all.push(event);
                if finished {
                    return all;
                }
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "worker {} still running after {timeout:?}",
                    self.child.id()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_real_model_is_ready_finds_people_and_drains() {
    let mut worker = Worker::start(&args(None));
    let ready = worker.wait_ready(Duration::from_secs(120)).expect("Ready");
    assert_eq!(
        (ready.input_w, ready.input_h, ready.num_classes),
        (INPUT_W, INPUT_H, 2)
    );
    assert_eq!(ready.pid, worker.child.id());

    let (frame, original) = load_still(
        repo("media/overeasy_dense_street2.jpg"),
        "street2",
        INPUT_W,
        INPUT_H,
    )
    .expect("load image");
    let job = worker
        .conn()
        .try_submit(&frame)
        .unwrap()
        .expect("a free slot");
    let events = worker.events_until(Duration::from_secs(60), |e| {
        matches!(
            e,
            Event::Result { .. } | Event::Failed { .. } | Event::Closed { .. }
        )
    });
    let Some(Event::Result {
        job: answered,
        detections,
        infer,
        roundtrip,
    }) = events.last()
    else {
        panic!("expected a Result, got {events:?}");
    };
    assert_eq!(*answered, job);
    assert!(!detections.is_empty(), "a dense street scene has people");
    let (w, h) = (original.width() as f32, original.height() as f32);
    for d in detections {
        assert!(
            0.0 <= d.x1 && d.x1 <= d.x2 && d.x2 <= w,
            "{d:?} outside {w}x{h}"
        );
        assert!(
            0.0 <= d.y1 && d.y1 <= d.y2 && d.y2 <= h,
            "{d:?} outside {w}x{h}"
        );
        assert!((0.25..=1.0).contains(&d.score), "{d:?}");
        assert!(d.class < 2, "{d:?}");
    }
    assert!(!infer.is_zero() && roundtrip >= infer);

    worker.conn().drain().unwrap();
    let events = worker.events_until(Duration::from_secs(10), |e| {
        matches!(e, Event::Closed { .. })
    });
    assert!(matches!(
        events.last(),
        Some(Event::Closed { reason: CloseReason::Exited, lost }) if lost.is_empty()
    ));
    let status = worker.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "drained worker exited with {status}");
}

/// A slow gateway loads the model for tens of seconds; the supervisor tells such a load from a
/// hung start by the heartbeats the worker sends while it loads (issue #23).
#[test]
fn heartbeats_come_while_the_model_loads() {
    let mut slow_args = args(None);
    slow_args.heartbeat_ms = 10;
    let mut worker = Worker::start(&slow_args);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut beats_before_ready = 0;
    'loading: loop {
        assert!(Instant::now() < deadline, "no Ready within 120 s");
        for event in worker.conn().poll_results(Duration::from_millis(100)) {
            match event {
                Event::Heartbeat { jobs_done, .. } => {
                    assert_eq!(jobs_done, 0);
                    beats_before_ready += 1;
                }
                Event::Ready(_) => break 'loading,
                other => panic!("before Ready: {other:?}"),
            }
        }
    }
    println!("{beats_before_ready} heartbeats while the model loaded");
    assert!(beats_before_ready >= 1, "no heartbeat before Ready");
}

#[test]
fn fake_inference_answers_after_the_delay_with_no_boxes() {
    let mut worker = Worker::start(&args(Some(50)));
    worker.wait_ready(Duration::from_secs(10)).expect("Ready");

    let (frame, _) = load_still(
        repo("media/overeasy_construction.jpg"),
        "construction",
        INPUT_W,
        INPUT_H,
    )
    .expect("load image");
    worker
        .conn()
        .try_submit(&frame)
        .unwrap()
        .expect("a free slot");
    let events = worker.events_until(Duration::from_secs(10), |e| {
        matches!(e, Event::Result { .. })
    });
    let Some(Event::Result {
        detections,
        infer,
        roundtrip,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert!(detections.is_empty());
    assert!(*infer >= Duration::from_millis(50), "{infer:?}");
    assert!(*roundtrip >= *infer);
    worker.events_until(Duration::from_secs(5), |e| {
        matches!(e, Event::Heartbeat { .. })
    });
}

#[test]
fn closing_the_daemon_side_ends_the_worker() {
    let mut worker = Worker::start(&args(Some(0)));
    let ready = worker.wait_ready(Duration::from_secs(10)).expect("Ready");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", ready.pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("helmetd worker --pool test --id 0"),
        "process list shows {cmdline:?}"
    );
    worker.conn = None;
    let status = worker.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "worker exited with {status}");
}

#[test]
fn a_missing_model_is_reported_instead_of_ready() {
    let mut bad = args(None);
    bad.model = repo("models/does-not-exist.onnx");
    let mut worker = Worker::start(&bad);
    match worker.wait_ready(Duration::from_secs(60)) {
        Err(WorkerError::StartFailed(reason)) => {
            assert!(reason.contains("does-not-exist.onnx"), "{reason}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let status = worker.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn the_worker_dies_with_the_thread_that_spawned_it() {
    // PR_SET_PDEATHSIG is tied to the spawning thread (docs/stack.md §4): when it ends, the
    // kernel sends SIGKILL, whatever the worker was doing.
    let mut worker = std::thread::spawn(|| Worker::start(&args(Some(0))))
        .join()
        .unwrap();
    let status = worker.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "exit: {status}");
}
