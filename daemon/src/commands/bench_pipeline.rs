//! `helmetd bench pipeline`: does the pipeline around the model cost throughput?
//!
//! Two phases in one run, same model, same thread count, same video: the model alone on frames
//! decoded up front, then the whole edge path (RTSP from a loopback server → decode → sampler →
//! letterbox → model → hard-example mining). The ratio of the two rates is the figure; absolute
//! rates on a shared 2-core machine are noise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use helmet_pipelines::detect::{Detector, ModelSpec};
use helmet_pipelines::hem::HardExampleMining;
use helmet_pipelines::ingest::{Camera, CameraSettings, Pace};
use helmet_pipelines::rtsp_server::RtspServer;
use rand::SeedableRng;

pub struct PipelineBench {
    pub model: ModelSpec,
    pub hem: HardExampleMining,
    pub video: PathBuf,
    /// Length of each phase.
    pub phase: Duration,
}

#[derive(Debug)]
pub struct PipelineFigures {
    pub model_fps: f64,
    pub pipeline_fps: f64,
    pub model_frames: u64,
    pub pipeline_frames: u64,
    pub sampler_dropped: u64,
    pub hard: u64,
}

impl PipelineFigures {
    pub fn ratio(&self) -> f64 {
        if self.model_fps > 0.0 {
            self.pipeline_fps / self.model_fps
        } else {
            0.0
        }
    }

    pub fn result_line(&self) -> String {
        format!(
            "RESULT model_fps={:.2} pipeline_fps={:.2} ratio={:.3} model_frames={} pipeline_frames={} dropped={}",
            self.model_fps,
            self.pipeline_fps,
            self.ratio(),
            self.model_frames,
            self.pipeline_frames,
            self.sampler_dropped
        )
    }
}

fn progress(phase: &str, started: Instant, frames: u64) {
    let s = started.elapsed().as_secs_f64();
    eprintln!(
        "  {phase}: {frames} frames in {s:.0} s ({:.2} fps)",
        frames as f64 / s.max(1e-9)
    );
}

pub fn run(bench: &PipelineBench) -> anyhow::Result<PipelineFigures> {
    let mut detector = Detector::load(&bench.model)?;
    let (w, h) = detector.input_size();
    let classes = detector.num_classes();

    // Frames for the model-only phase: the same video, decoded before the clock starts.
    let url = url::Url::from_file_path(bench.video.canonicalize()?)
        .map_err(|()| anyhow::anyhow!("{}: not a usable path", bench.video.display()))?;
    let mut settings = CameraSettings::new("bench-file", url.as_str(), w, h);
    settings.detect_fps = 2.0;
    settings.pace = Pace::AsFastAsPossible;
    let file = Camera::start(settings)?;
    let mut frames = Vec::new();
    while frames.len() < 24 {
        match file.next_frame(Duration::from_secs(5)) {
            Some(f) => frames.push(f),
            None => break,
        }
    }
    file.stop();
    ensure!(
        !frames.is_empty(),
        "{}: no frames decoded",
        bench.video.display()
    );
    detector.detect(&frames[0])?; // warm-up: first run allocates

    eprintln!("phase 1/2: model only, {} s", bench.phase.as_secs());
    let started = Instant::now();
    let mut model_frames = 0u64;
    let mut last_report = Instant::now();
    while started.elapsed() < bench.phase {
        detector.detect(&frames[model_frames as usize % frames.len()])?;
        model_frames += 1;
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress("model", started, model_frames);
            last_report = Instant::now();
        }
    }
    let model_fps = model_frames as f64 / started.elapsed().as_secs_f64();

    eprintln!(
        "phase 2/2: RTSP → decode → letterbox → model → HEM, {} s",
        bench.phase.as_secs()
    );
    let server =
        RtspServer::start(&bench.video, &["/cam"]).context("starting the loopback RTSP server")?;
    let mut settings = CameraSettings::new("bench-rtsp", &server.url("/cam"), w, h);
    // Sample every frame the camera sends: the model, not the sampler, must be the limit.
    settings.detect_fps = 30.0;
    let camera = Camera::start(settings)?;
    ensure!(
        camera.next_frame(Duration::from_secs(10)).is_some(),
        "no frame from {}",
        server.url("/cam")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut pipeline_frames, mut hard) = (0u64, 0u64);
    let dropped_before = camera.stats().dropped;
    let started = Instant::now();
    let mut last_report = Instant::now();
    while started.elapsed() < bench.phase {
        let Some(frame) = camera.next_frame(Duration::from_millis(500)) else {
            continue;
        };
        let detections = detector.detect(&frame)?;
        hard += u64::from(bench.hem.is_hard(&detections, classes, &mut rng));
        pipeline_frames += 1;
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress("pipeline", started, pipeline_frames);
            last_report = Instant::now();
        }
    }
    let pipeline_fps = pipeline_frames as f64 / started.elapsed().as_secs_f64();
    let sampler_dropped = camera.stats().dropped - dropped_before;
    camera.stop();
    drop(server);
    Ok(PipelineFigures {
        model_fps,
        pipeline_fps,
        model_frames,
        pipeline_frames,
        sampler_dropped,
        hard,
    })
}
