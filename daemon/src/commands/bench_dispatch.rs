//! `helmetd bench dispatch`: what the process boundary costs per frame, against what the model
//! costs. Two real `helmetd worker` processes are used in turn, never at the same time so they
//! do not compete for the cores: one with `--fake-infer-ms 0` (the round trip is then pure
//! overhead: shared-memory copy, both socket hops, the worker's copy out of the slot, the
//! reply) and one with the real model (its own `infer_us`). Frames go one at a time, so the
//! round trip contains no queueing.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use helmet_pipelines::detect::{DEFAULT_INTRA_THREADS, DEFAULT_NMS_IOU, DEFAULT_SCORE_THRESHOLD};
use helmet_pipelines::{Frame, still};

use crate::config;
use crate::worker::{
    DispatchEvent, Dispatcher, InputSize, ReadyInfo, WorkerArgs, prepare, spawn_worker,
};

/// Frames sent before measuring: the first ones pay for page faults and ONNX Runtime's
/// first-run allocations.
const WARMUP_FAKE: u32 = 20;
const WARMUP_MODEL: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct BenchDispatchArgs {
    /// The little model, for the model-time half.
    #[arg(long, default_value = "models/helmet_yolov12m_384x640_int8qdq.onnx")]
    pub model: PathBuf,
    /// Model input as HEIGHTxWIDTH.
    #[arg(long, default_value = "384x640")]
    pub input: InputSize,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub classes: u16,
    /// Image letterboxed into every frame.
    #[arg(long, default_value = "media/overeasy_construction.jpg")]
    pub image: PathBuf,
    /// Round trips measured through the worker without the model.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub frames: u32,
    /// Frames measured through the worker with the model.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub model_frames: u32,
    /// Time cap for the whole run; each half stops early with what it has measured.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    /// ONNX Runtime library for the model worker, when not found by the usual search.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
}

/// One worker's measurements, in frame order.
struct Measured {
    ready: ReadyInfo,
    /// `offer` to `Done`. Not split into daemon and worker parts: on 2 cores the kernel often
    /// runs the woken worker inside the daemon's `send`, so per-side timings would mislead.
    roundtrip: Vec<Duration>,
    /// The worker's `infer_us`.
    infer: Vec<Duration>,
    boxes: usize,
    exit: ExitStatus,
}

/// Prints the table and returns the `RESULT overhead_pct=… roundtrip_us=… model_ms=… frames=…`
/// line (`frames` = round trips measured without the model).
pub fn run(args: &BenchDispatchArgs) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let exe = std::env::current_exe().context("locating the helmetd executable")?;
    let image = config::resolve_path(&args.image);
    let model = config::resolve_path(&args.model);
    let (frame, _) = still::load_still(&image, "bench", args.input.width, args.input.height)?;
    let worker = |id, fake_infer_ms| WorkerArgs {
        pool: "bench".into(),
        id,
        model: model.clone(),
        input: args.input,
        classes: args.classes,
        score_threshold: DEFAULT_SCORE_THRESHOLD,
        nms_iou: DEFAULT_NMS_IOU,
        intra_threads: DEFAULT_INTRA_THREADS,
        onnxruntime: args.onnxruntime.clone(),
        // Set by spawn_worker.
        socket_fd: 3,
        shm_fd: 4,
        heartbeat_ms: 500,
        fake_infer_ms,
    };

    println!(
        "helmetd bench dispatch: {} frames of {}, one frame in flight, one worker process at a time",
        args.input,
        image.display()
    );
    let fake = measure(
        &exe,
        &worker(0, Some(0)),
        &frame,
        WARMUP_FAKE,
        args.frames,
        deadline,
    )
    .context("worker without the model")?;
    let real = measure(
        &exe,
        &worker(1, None),
        &frame,
        WARMUP_MODEL,
        args.model_frames,
        deadline,
    )
    .with_context(|| format!("worker with {}", model.display()))?;

    let overhead = percentile(&fake.roundtrip, 0.5);
    let model_time = percentile(&real.infer, 0.5);
    anyhow::ensure!(!model_time.is_zero(), "the model reported 0 µs per frame");
    let with_model_overhead: Vec<Duration> = real
        .roundtrip
        .iter()
        .zip(&real.infer)
        .map(|(rt, infer)| rt.saturating_sub(*infer))
        .collect();

    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10}",
        "", "frames", "p50", "p90", "max"
    );
    row("round trip, worker without model", &fake.roundtrip);
    row("model in the worker (infer_us)", &real.infer);
    row("round trip, worker with model", &real.roundtrip);
    row("  minus the model: dispatch overhead", &with_model_overhead);
    let code = |s: ExitStatus| s.code().map_or_else(|| s.to_string(), |c| c.to_string());
    println!(
        "worker start to Ready: {:.0} ms without the model, {:.0} ms with it; boxes in the frame: {}; exit codes after Drain: {}, {}",
        fake.ready.load.as_secs_f64() * 1e3,
        real.ready.load.as_secs_f64() * 1e3,
        real.boxes,
        code(fake.exit),
        code(real.exit),
    );
    let overhead_pct = 100.0 * overhead.as_secs_f64() / model_time.as_secs_f64();
    Ok(format!(
        "RESULT overhead_pct={overhead_pct:.3} roundtrip_us={} model_ms={:.1} frames={}",
        overhead.as_micros(),
        model_time.as_secs_f64() * 1e3,
        fake.roundtrip.len()
    ))
}

/// Spawns one worker, sends `warmup + frames` frames one at a time through a [`Dispatcher`],
/// drains it and waits for its exit.
fn measure(
    exe: &Path,
    args: &WorkerArgs,
    frame: &Frame,
    warmup: u32,
    frames: u32,
    deadline: Instant,
) -> anyhow::Result<Measured> {
    let (mut conn, fds) = prepare(args.input.width, args.input.height)?;
    let mut process = WorkerProcess(spawn_worker(exe, args, fds).context("spawning")?);
    let ready = conn.wait_ready(READY_TIMEOUT.min(remaining(deadline)))?;
    let mut dispatcher = Dispatcher::new([frame.camera.clone()]);
    let key = dispatcher.add_worker(conn);
    let mut m = Measured {
        ready,
        roundtrip: Vec::new(),
        infer: Vec::new(),
        boxes: 0,
        exit: ExitStatus::default(),
    };
    'frames: for seq in 0..u64::from(warmup + frames) {
        let mut f = frame.clone();
        f.seq = seq;
        dispatcher.offer(f)?;
        loop {
            if remaining(deadline).is_zero() {
                break 'frames;
            }
            for event in dispatcher.poll(remaining(deadline).min(Duration::from_secs(1)))? {
                match event {
                    DispatchEvent::Done {
                        latency,
                        infer,
                        detections,
                        ..
                    } => {
                        if seq >= u64::from(warmup) {
                            m.roundtrip.push(latency);
                            m.infer.push(infer);
                            m.boxes = detections.len();
                        }
                        continue 'frames;
                    }
                    DispatchEvent::Failed { reason, .. } => bail!("frame {seq} failed: {reason}"),
                    DispatchEvent::Rejected { error, .. } => bail!("frame {seq} refused: {error}"),
                    DispatchEvent::WorkerFailed { reason, .. } => bail!("worker failed: {reason}"),
                    DispatchEvent::WorkerClosed { reason, .. } => bail!("worker gone: {reason}"),
                    DispatchEvent::Lost { .. }
                    | DispatchEvent::WorkerReady { .. }
                    | DispatchEvent::Heartbeat { .. } => {}
                }
            }
        }
    }
    anyhow::ensure!(
        !m.roundtrip.is_empty(),
        "no frame measured before the time cap"
    );
    dispatcher.drain_worker(key)?;
    let closing = Instant::now() + EXIT_TIMEOUT;
    while dispatcher.worker(key).is_some() && Instant::now() < closing {
        dispatcher.poll(Duration::from_millis(100))?;
    }
    m.exit = process.wait(EXIT_TIMEOUT)?;
    Ok(m)
}

/// Kills the worker (by its pid) if the benchmark ends before the worker has exited.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("worker {} did not exit within {timeout:?}", self.0.id());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = ((sorted.len() as f64 - 1.0) * q).round().max(0.0) as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn row(label: &str, samples: &[Duration]) {
    let max = samples.iter().max().copied().unwrap_or_default();
    println!(
        "{label:<44} {:>6} {:>10} {:>10} {:>10}",
        samples.len(),
        human(percentile(samples, 0.5)),
        human(percentile(samples, 0.9)),
        human(max)
    );
}

fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_worker_timings_pick_by_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = [5, 1, 4, 2, 3].map(ms).to_vec();
        assert_eq!(percentile(&samples, 0.5), ms(3));
        assert_eq!(percentile(&samples, 1.0), ms(5));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(human(Duration::from_micros(250)), "250 µs");
        assert_eq!(human(ms(12)), "12.0 ms");
    }
}
