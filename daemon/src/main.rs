//! The binary's edge: arguments, logging, exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use helmet_pipelines::hem::HardExampleMining;
use helmet_pipelines::output::SednaOutputs;
use helmetd::commands::detect::{self, DetectJob};
use helmetd::config::{self, ConfigError, ConfigSource};
use helmetd::logging::{self, LogFormat};
use helmetd::sedna::env::{self as sedna_env, SednaEnv, SednaEnvMode};

#[derive(Parser)]
#[command(
    name = "helmetd",
    version,
    about = "Helmet detection on RTSP cameras, with joint cloud inference"
)]
struct Cli {
    /// Log format, inherited by the workers the daemon starts (through HELMETD_LOG_FORMAT);
    /// RUST_LOG sets the level (default info,ort=warn).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        global = true,
        env = "HELMETD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// A config file plus overrides, shared by every subcommand that reads a config.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file. Without it the embedded default is used (`helmetd print-default-config`).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Override one key: --set mqtt.url=mqtt://127.0.0.1:1883 (repeatable; validated like the file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<config::Config, ConfigError> {
        let source = self
            .config
            .clone()
            .map_or(ConfigSource::Default, ConfigSource::File);
        config::load(source, &self.overrides)
    }
}

/// Sedna's environment contract (docs/sedna.md): the variables of a Sedna edge worker pod
/// override the config file; explicit --set overrides win over them.
#[derive(clap::Args)]
struct SednaEnvArg {
    /// Configure from a Sedna edge pod's variables (docs/sedna.md); explicit --set wins over them.
    #[arg(
        long = "sedna-env",
        value_enum,
        default_value = "auto",
        env = "HELMETD_SEDNA_ENV"
    )]
    mode: SednaEnvMode,
}

impl SednaEnvArg {
    /// The overrides to load with (environment's, then explicit), and the environment, whose
    /// [`SednaEnv::attribute`] names a variable that caused a config problem.
    fn overrides(&self, explicit: &[String]) -> anyhow::Result<(Vec<String>, SednaEnv)> {
        let mut env = sedna_env::from_process(self.mode)?;
        env.log();
        Ok((env.merge(explicit), env))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Validate a config file (and --set overrides) without starting anything; exit 78 if invalid.
    CheckConfig {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[command(flatten)]
        sedna_env: SednaEnvArg,
    },
    /// Run the edge model on images, video files or rtsp:// URLs; one JSON line per frame.
    Detect {
        #[command(flatten)]
        config: ConfigArgs,
        /// Model file (default: [edge.model] path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Model input as HEIGHTxWIDTH, when --model differs from [edge.model] (e.g. 640x640).
        #[arg(long, value_parser = parse_input_size)]
        input: Option<[u32; 2]>,
        /// Hard-example rule, Sedna's names: IBT:threshold_img=0.9,threshold_box=0.9 | Threshold:threshold=0.5 | CrossEntropy | Random:random_ratio=0.3 | CloudOnly | EdgeOnly.
        #[arg(long)]
        hem: Option<HardExampleMining>,
        /// Score threshold (default: [edge.model] score_threshold).
        #[arg(long)]
        threshold: Option<f32>,
        /// Frames per second sampled from videos and streams, by stream time.
        #[arg(long, default_value_t = 2.0)]
        fps: f64,
        /// Stop each video or stream after this many frames.
        #[arg(long)]
        frames: Option<u64>,
        /// Stop each video or stream after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Write Sedna-style output folders (annotated JPEGs) under this directory.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Images (.jpg, .png, …), video files, or rtsp:// URLs.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
    /// The daemon: cameras, supervised inference workers, hard examples to the cloud, alerts.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Stop by itself after this many seconds (tests and demos); default: until SIGTERM.
        #[arg(long)]
        duration: Option<f64>,
        #[command(flatten)]
        sedna_env: SednaEnvArg,
    },
    /// Turn a Sedna JointInferenceService manifest (YAML) into a complete helmetd config.
    ImportSedna {
        /// The manifest, e.g. helmet_detection_inference.yaml.
        file: PathBuf,
        /// Write the config here instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// An inference worker; started by the daemon with inherited descriptors, not by hand.
    #[command(hide = true)]
    Worker(helmetd::worker::WorkerArgs),
    /// The cloud service: answers hard examples with the big model over MQTT 5 and/or Sedna's HTTP API.
    Cloud {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also serve Sedna's BigModelService HTTP API here (e.g. 0.0.0.0:5000); only that when mqtt.url is empty.
        #[arg(long, value_name = "ADDR")]
        sedna_http: Option<std::net::SocketAddr>,
        /// Benchmark knob (`helmetd bench fleet`): load no model; decode each request, pause this long, answer with no boxes.
        #[arg(long, value_name = "MS", hide = true, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        simulate_infer_ms: Option<u64>,
    },
    /// One frame of a configured camera with its zones and masks drawn on it, as a JPEG.
    Snapshot {
        #[command(flatten)]
        config: ConfigArgs,
        /// The camera's name in the config.
        #[arg(long)]
        camera: String,
        /// Where the JPEG goes.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Seconds to wait for a frame.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Ask a running daemon (its [http] listen address) for a short status summary.
    Status {
        /// The daemon's [http] listen address.
        #[arg(long, default_value = helmetd::http::DEFAULT_ADDRESS)]
        address: String,
    },
    /// Benchmarks; each ends with a `RESULT key=value …` line.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// The demo: broker, RTSP cameras, cloud big model and edge daemon on this machine.
    Demo {
        /// Video to stream instead of the bundled media/helmet-test.mp4.
        #[arg(long)]
        video: Option<PathBuf>,
        /// How many RTSP cameras stream the video.
        #[arg(long, default_value_t = 2)]
        cameras: usize,
        /// Use this MQTT broker instead of the embedded one (mqtt://host:port).
        #[arg(long)]
        mqtt: Option<String>,
        /// Stop after this many seconds (default: the video's length plus start-up).
        #[arg(long)]
        duration: Option<f64>,
        /// Run until Ctrl-C.
        #[arg(long = "loop")]
        run_forever: bool,
        /// Where the Sedna-style output folders, the spool and the demo's config go.
        #[arg(long, default_value = "out/demo")]
        output: PathBuf,
        /// Override a setting of the demo's config, e.g. `--set cloud.budget_per_s=0.5`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Model-only frames/s vs full-pipeline frames/s (RTSP → decode → letterbox → model → HEM).
    Pipeline {
        #[command(flatten)]
        config: ConfigArgs,
        /// Seconds per phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Video streamed by the loopback RTSP server (default: the bundled test video).
        #[arg(long)]
        video: Option<PathBuf>,
    },
    /// Per-frame dispatch overhead (daemon ↔ worker round trip without the model) vs the model's own time.
    Dispatch(helmetd::commands::bench_dispatch::BenchDispatchArgs),
    /// Memory: worker and daemon RSS, what each camera adds, cold start to the first detection, frames/s.
    Footprint(helmetd::commands::bench_footprint::BenchFootprintArgs),
    /// What `helmetd run` costs when nothing happens: its CPU % and wake-ups/s with no camera and with a silent one.
    Idle(helmetd::commands::bench_idle::BenchIdleArgs),
    /// Bytes per hard example vs Sedna's JSON body, and glass-to-alert latency vs the model's own time.
    Uplink(helmetd::commands::bench_uplink::BenchUplinkArgs),
    /// Baseline → 4× cameras → baseline, autoscaled vs static max vs static min replicas: reaction, p99 and CPU ratios.
    Surge(helmetd::commands::bench_surge::BenchSurgeArgs),
    /// Quality vs upload: box and alert F1 against the big model for each hard-example setting.
    Joint {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: helmetd::commands::bench_joint::BenchJointArgs,
    },
    /// Tracking and alert episodes on synthetic moving people with known truth: ID switches, IDF1, alerts per person.
    Tracking {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: helmetd::commands::bench_tracking::BenchTrackingArgs,
    },
    /// Motion gating: cameras per core on a mostly still scene, gated vs every frame, and whether the alert episodes stay the same.
    Motion {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: helmetd::commands::bench_motion::BenchMotionArgs,
    },
    /// Hard frames the big model decides per minute and frames/s: helmetd edge only, helmetd joint, and a Sedna-style synchronous loop on one cloud.
    SednaLoop(helmetd::commands::bench_sedna_loop::BenchSednaLoopArgs),
    /// Many gateways, many `helmetd cloud` replicas behind one Mosquitto: answered/s, latency and the fate of every request while scaling, losing a replica, restarting the broker, and under a flooding gateway.
    Fleet(helmetd::commands::bench_fleet::BenchFleetArgs),
}

/// Runs a benchmark and prints its RESULT line, which ends with the INT8 kernel family: figures
/// from two machines are comparable only when the same kernels ran.
fn run_bench(bench: BenchCommand) -> anyhow::Result<()> {
    let result = bench_result(bench)?;
    let cpu = helmet_pipelines::cpu::CpuFeatures::detect();
    println!("{result} {}", cpu.result_field());
    Ok(())
}

fn bench_result(bench: BenchCommand) -> anyhow::Result<String> {
    match bench {
        BenchCommand::Pipeline {
            config,
            seconds,
            video,
        } => {
            let cfg = config.load()?;
            init_runtime(&cfg)?;
            let video = video.unwrap_or_else(|| {
                config::resolve_path(std::path::Path::new("media/helmet-test.mp4"))
            });
            let bench = helmetd::commands::bench_pipeline::PipelineBench {
                model: detect::edge_model_spec(&cfg, None, None),
                hem: cfg.edge.hard_example_mining.build()?,
                video,
                phase: Duration::from_secs(seconds.max(1)),
            };
            println!(
                "bench pipeline: {}, {} intra-op thread(s), {} s per phase",
                bench.model.path.display(),
                bench.model.intra_threads,
                seconds
            );
            let figures = helmetd::commands::bench_pipeline::run(&bench)?;
            println!(
                "model only:    {:7.2} frames/s ({} frames)",
                figures.model_fps, figures.model_frames
            );
            println!(
                "full pipeline: {:7.2} frames/s ({} frames, {} hard, {} superseded in the latest-frame slot)",
                figures.pipeline_fps,
                figures.pipeline_frames,
                figures.hard,
                figures.sampler_dropped
            );
            Ok(figures.result_line())
        }
        BenchCommand::Dispatch(args) => Ok(helmetd::commands::bench_dispatch::run(&args)?),
        BenchCommand::Footprint(args) => helmetd::commands::bench_footprint::run(&args),
        BenchCommand::Idle(args) => helmetd::commands::bench_idle::run(&args),
        BenchCommand::Uplink(args) => Ok(helmetd::commands::bench_uplink::run(args)?),
        BenchCommand::Surge(args) => Ok(helmetd::commands::bench_surge::run(args)?),
        BenchCommand::Joint { config, args } => {
            let cfg = config.load()?;
            init_runtime(&cfg)?;
            helmetd::commands::bench_joint::run(&cfg, &args)
        }
        BenchCommand::Tracking { config, args } => {
            let cfg = config.load()?;
            init_runtime(&cfg)?;
            helmetd::commands::bench_tracking::run(&cfg, &args)
        }
        BenchCommand::Motion { config, args } => {
            let cfg = config.load()?;
            init_runtime(&cfg)?;
            helmetd::commands::bench_motion::run(&cfg, &args)
        }
        BenchCommand::Fleet(args) => helmetd::commands::bench_fleet::run(&args),
        BenchCommand::SednaLoop(args) => {
            init_runtime(&args.config()?)?;
            helmetd::commands::bench_sedna_loop::run(&args)
        }
    }
}

fn parse_input_size(s: &str) -> Result<[u32; 2], String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or("expected HEIGHTxWIDTH, e.g. 640x640")?;
    let parse = |v: &str| v.trim().parse::<u32>().map_err(|e| format!("{v:?}: {e}"));
    Ok([parse(h)?, parse(w)?])
}

/// Loads ONNX Runtime from the config's path or the standard places.
fn init_runtime(cfg: &config::Config) -> anyhow::Result<()> {
    let configured = cfg
        .inference
        .onnxruntime
        .as_os_str()
        .is_empty()
        .then_some(())
        .map_or(Some(cfg.inference.onnxruntime.as_path()), |()| None);
    let lib = helmet_pipelines::runtime::init_onnxruntime(configured)?;
    tracing::debug!(library = %lib.display(), "ONNX Runtime loaded");
    Ok(())
}

fn run_daemon(
    config: ConfigArgs,
    duration: Option<f64>,
    sedna_env: SednaEnvArg,
) -> anyhow::Result<()> {
    use helmetd::run::{ConfigOrigin, Control, Daemon, DaemonOptions};

    let (overrides, env) = sedna_env.overrides(&config.overrides)?;
    let origin = ConfigOrigin {
        source: config
            .config
            .clone()
            .map_or(ConfigSource::Default, ConfigSource::File),
        overrides,
    };
    let cfg = origin.load().map_err(|e| env.attribute(e))?;
    let (runtime, control) = Control::with_runtime()?;
    let until = duration.map(|d| std::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let summary = Daemon::start(
        origin,
        cfg,
        runtime.handle(),
        &control,
        DaemonOptions::default(),
    )
    .and_then(|daemon| daemon.run(&control, until));
    // Every task the daemon started was joined by its shutdown; what is left is the signal task.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let summary = summary?;
    println!(
        "RESULT frames={} hard={} cloud_answers={} alerts={} workers_max={}",
        summary.frames, summary.hard, summary.cloud_answered, summary.alerts, summary.workers_max
    );
    Ok(())
}

/// Validates a config completely, including that ONNX Runtime loads and both model files have the
/// declared input shapes (a typo'd shape would otherwise only show when the daemon starts).
fn check_config(
    file: PathBuf,
    overrides: Vec<String>,
    sedna_env: SednaEnvArg,
) -> anyhow::Result<()> {
    let (overrides, env) = sedna_env.overrides(&overrides)?;
    let cfg = config::load_with_checks(ConfigSource::File(file.clone()), &overrides, |cfg| {
        if let Err(e) = init_runtime(cfg) {
            return vec![(
                config::KeyPath::parse("inference.onnxruntime"),
                format!("{e:#}"),
            )];
        }
        let mut problems = Vec::new();
        let edge = detect::edge_model_spec(cfg, None, None);
        if let Err(e) = helmet_pipelines::detect::Detector::load(&edge) {
            problems.push((config::KeyPath::parse("edge.model.input"), e.to_string()));
        }
        if cfg.cloud.protocol == config::CloudProtocol::Mqtt
            && !cfg.cloud.model.as_os_str().is_empty()
        {
            let cloud = helmetd::cloud::cloud_model_spec(cfg);
            if let Err(e) = helmet_pipelines::detect::Detector::load(&cloud) {
                problems.push((config::KeyPath::parse("cloud.model_input"), e.to_string()));
            }
        }
        problems
    })
    .map_err(|e| env.attribute(e))?;
    println!(
        "{}: ok ({} camera(s), node {:?})",
        file.display(),
        cfg.cameras.len(),
        cfg.node_name()
    );
    println!(
        "cpu: {}",
        helmet_pipelines::cpu::CpuFeatures::detect().summary()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_detect(
    config: ConfigArgs,
    model: Option<PathBuf>,
    input: Option<[u32; 2]>,
    hem: Option<HardExampleMining>,
    threshold: Option<f32>,
    fps: f64,
    frames: Option<u64>,
    duration: Option<f64>,
    output: Option<PathBuf>,
    inputs: Vec<String>,
) -> anyhow::Result<()> {
    let cfg = config.load()?;
    init_runtime(&cfg)?;
    let mut spec = detect::edge_model_spec(&cfg, model.as_deref(), input);
    if let Some(t) = threshold {
        anyhow::ensure!(
            (0.0..=1.0).contains(&t),
            "--threshold {t} is outside [0, 1]"
        );
        spec.score_threshold = t;
    }
    anyhow::ensure!(fps > 0.0 && fps <= 120.0, "--fps {fps} is outside (0, 120]");
    let class_names = cfg.edge.model.classes.clone();
    let hem = match hem {
        Some(h) => h,
        None => cfg.edge.hard_example_mining.build()?,
    };
    let outputs = match &output {
        Some(dir) => Some(SednaOutputs::create(
            dir,
            cfg.output.jpeg_quality,
            class_names.clone(),
        )?),
        None => None,
    };
    let job = DetectJob {
        model: spec,
        hem,
        class_names: class_names.clone(),
        inputs,
        fps,
        max_frames: frames,
        duration: duration.map(Duration::from_secs_f64),
        outputs,
    };
    let summary = detect::run(&job, |result| println!("{}", result.to_json()))?;
    for line in detect::summary_lines(&summary, &class_names) {
        eprintln!("{line}");
    }
    Ok(())
}

fn run_demo(
    video: Option<PathBuf>,
    cameras: usize,
    mqtt: Option<String>,
    duration: Option<f64>,
    run_forever: bool,
    output: PathBuf,
    overrides: Vec<String>,
) -> anyhow::Result<()> {
    use helmetd::commands::demo::{self, DemoOptions};
    use helmetd::run::Control;

    let cfg = config::load(ConfigSource::Default, &[])?;
    init_runtime(&cfg)?;
    let (runtime, control) = Control::with_runtime()?;
    let max_workers = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let opts = DemoOptions {
        video: video.unwrap_or_else(demo::default_video),
        cameras,
        mqtt,
        duration: duration.map(|d| Duration::from_secs_f64(d.max(1.0))),
        run_forever,
        output,
        max_workers,
        overrides,
    };
    let summary = demo::run(&opts, control, &runtime)?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    println!();
    println!("  summary after {:.0} s", summary.seconds);
    println!("  ----------------------------------");
    println!("  frames processed       {:>8}", summary.frames);
    println!("  hard examples          {:>8}", summary.hard);
    println!("  asked of the cloud     {:>8}", summary.cloud_asked);
    println!("  already answered       {:>8}", summary.already_answered);
    println!("  answered by the cloud  {:>8}", summary.cloud_answers);
    println!("  alert events           {:>8}", summary.alerts);
    println!("  most workers at once   {:>8}", summary.workers_max);
    println!("  annotated frames in    {}", opts.output.display());
    println!("{}", summary.result_line());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Worker(_)) {
        limit_malloc_arenas();
    }
    if let Some(name) = cli.log_format.to_possible_value() {
        // SAFETY: nothing else runs yet: no thread has been started, so nobody reads the
        // environment concurrently. Workers inherit it and log in the daemon's format.
        unsafe { std::env::set_var("HELMETD_LOG_FORMAT", name.get_name()) };
    }
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::CheckConfig {
            file,
            overrides,
            sedna_env,
        } => check_config(file, overrides, sedna_env),
        Command::ImportSedna { file, output } => import_sedna(&file, output.as_deref()),
        Command::Detect {
            config,
            model,
            input,
            hem,
            threshold,
            fps,
            frames,
            duration,
            output,
            inputs,
        } => run_detect(
            config, model, input, hem, threshold, fps, frames, duration, output, inputs,
        ),
        Command::Demo {
            video,
            cameras,
            mqtt,
            duration,
            run_forever,
            output,
            overrides,
        } => run_demo(
            video,
            cameras,
            mqtt,
            duration,
            run_forever,
            output,
            overrides,
        ),
        Command::Bench { bench } => run_bench(bench),
        Command::Snapshot {
            config,
            camera,
            output,
            timeout,
        } => run_snapshot(&config, &camera, &output, timeout),
        Command::Status { address } => {
            helmetd::http::status_command(&address).map(|summary| print!("{summary}"))
        }
        Command::Worker(args) => helmetd::worker::worker_main(args),
        Command::Run {
            config,
            duration,
            sedna_env,
        } => run_daemon(config, duration, sedna_env),
        Command::Cloud {
            config,
            sedna_http,
            simulate_infer_ms,
        } => config.load().map_err(anyhow::Error::from).and_then(|cfg| {
            let simulate = simulate_infer_ms.map(std::time::Duration::from_millis);
            init_runtime(&cfg).and_then(|()| helmetd::cloud::cloud_main(cfg, sedna_http, simulate))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

/// glibc gives each thread that allocates under contention an arena of its own, up to 8 per
/// core, and a freed decoded picture stays in its thread's arena: every camera's streaming
/// thread keeps its own spare pictures. Two arenas shared by all threads: −1.5 to −2 MiB per
/// camera at the same CPU time per decoded frame (`helmetd bench footprint`,
/// docs/benchmarks.md). Workers have their own setting (`helmetd::worker`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: before any thread starts; mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// `helmetd snapshot`: one annotated frame of a camera, to check its zones against the picture.
fn run_snapshot(
    config: &ConfigArgs,
    camera: &str,
    output: &std::path::Path,
    timeout: f64,
) -> anyhow::Result<()> {
    use helmetd::commands::snapshot;
    anyhow::ensure!(
        timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0,
        "--timeout {timeout} is outside (0, 3600]"
    );
    let cfg = config.load()?;
    let shot = snapshot::run(&cfg, camera, output, Duration::from_secs_f64(timeout))?;
    eprintln!(
        "{}: camera {camera:?}, {}x{}, {} zone(s), {} mask(s)",
        shot.path.display(),
        shot.width,
        shot.height,
        shot.zones,
        shot.masks
    );
    Ok(())
}

/// `helmetd import-sedna`: the config to standard output, or to `output`.
fn import_sedna(file: &std::path::Path, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    let toml = helmetd::sedna::import::import_file(file)?;
    match output {
        Some(path) => {
            use anyhow::Context as _;
            std::fs::write(path, toml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{}: written; check it with `helmetd check-config {0}`",
                path.display()
            );
        }
        None => print!("{toml}"),
    }
    Ok(())
}

fn report(e: anyhow::Error) -> ExitCode {
    if let Some(config_error) = e.downcast_ref::<ConfigError>() {
        eprintln!("{config_error}");
        return ExitCode::from(ConfigError::EXIT_CODE as u8);
    }
    // A bad Sedna variable or manifest is a bad config too.
    if let Some(env_error) = e.downcast_ref::<sedna_env::EnvError>() {
        eprintln!("{env_error}");
        return ExitCode::from(sedna_env::EnvError::EXIT_CODE as u8);
    }
    if let Some(import_error) = e.downcast_ref::<helmetd::sedna::import::ImportError>() {
        eprintln!("{import_error}");
        return ExitCode::from(helmetd::sedna::import::ImportError::EXIT_CODE as u8);
    }
    // Any error may quote a URL with a password in it (camera, broker).
    eprintln!(
        "helmetd: {}",
        helmet_pipelines::redact::redact(&format!("{e:#}"))
    );
    ExitCode::FAILURE
}
