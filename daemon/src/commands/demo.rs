//! `helmetd demo`: the whole system on one machine, loopback only, with nothing but the repo.
//!
//! An embedded MQTT broker (rumqttd) unless `--mqtt` names one, a loopback RTSP server
//! streaming the bundled video as cameras, the cloud service with the big model, and the edge
//! daemon with supervised workers and the autoscaler — all in this process (the workers are
//! its children, in their cgroups), so nothing is left behind when it returns.

use std::io::{IsTerminal, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use helmet_pipelines::rtsp_server::{RtspServer, probe_video};

use crate::config::{self, ConfigSource};
use crate::run::{ConfigOrigin, Control, Daemon, DaemonOptions};
use crate::telemetry::SnapshotReceiver;

pub struct DemoOptions {
    pub video: PathBuf,
    pub cameras: usize,
    pub mqtt: Option<String>,
    /// Stop after this long; default: the video's length plus start-up.
    pub duration: Option<Duration>,
    /// Run until Ctrl-C.
    pub run_forever: bool,
    pub output: PathBuf,
    pub max_workers: u32,
    /// `--set key=value`, applied after the demo's own settings.
    pub overrides: Vec<String>,
}

/// What the demo saw, for the summary table and the `RESULT` line.
#[derive(Debug)]
pub struct DemoSummary {
    pub frames: u64,
    pub hard: u64,
    pub cloud_answers: u64,
    pub cloud_asked: u64,
    pub already_answered: u64,
    pub alerts: u64,
    pub workers_max: usize,
    pub seconds: f64,
}

impl DemoSummary {
    pub fn result_line(&self) -> String {
        format!(
            "RESULT frames={} hard={} asked={} already_answered={} cloud_answers={} alerts={} workers_max={}",
            self.frames,
            self.hard,
            self.cloud_asked,
            self.already_answered,
            self.cloud_answers,
            self.alerts,
            self.workers_max
        )
    }
}

pub(crate) fn free_loopback_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// rumqttd in this process, MQTT 5 on a free loopback port. It runs on its own thread until the
/// process exits (rumqttd has no stop): for the demo and benchmarks, which end with the process.
pub(crate) fn start_embedded_broker() -> anyhow::Result<String> {
    let port = free_loopback_port()?;
    let toml = format!(
        r#"id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v5.1]
name = "demo-v5"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = 8388608
max_inflight_count = 200
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&toml).context("embedded broker config")?;
    let mut broker = rumqttd::Broker::new(cfg);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the embedded MQTT broker did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("mqtt://127.0.0.1:{port}"))
}

/// The demo's config: the embedded default plus cameras, the broker and an autoscaler; written
/// next to the outputs so the user can read (and reuse) exactly what ran.
fn write_config(opts: &DemoOptions, cameras: &[String]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&opts.output)?;
    let mut text = config::DEFAULT_CONFIG.to_string();
    text.push_str("\n# ---- added by helmetd demo ----\n");
    for (i, url) in cameras.iter().enumerate() {
        text.push_str(&format!(
            "\n[[camera]]\nname = \"cam{}\"\nurl = \"{url}\"\ndetect_fps = 2.0\n",
            i + 1
        ));
    }
    text.push_str(&format!(
        "\n[edge.hpa]\nminReplicas = 1\nmaxReplicas = {}\nmetrics = [{{ type = \"Resource\", resource = {{ name = \"cpu\", target = {{ type = \"Utilization\", averageUtilization = 60 }} }} }}]\n",
        opts.max_workers.max(1)
    ));
    let path = opts.output.join("helmetd-demo.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub fn run(
    opts: &DemoOptions,
    control: Arc<Control>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let video = opts
        .video
        .canonicalize()
        .with_context(|| format!("{}: test video not found", opts.video.display()))?;
    let probe = probe_video(&video)?;
    let mqtt_url = match &opts.mqtt {
        Some(url) => url.clone(),
        None => start_embedded_broker()?,
    };
    let mounts: Vec<String> = (1..=opts.cameras.max(1))
        .map(|i| format!("/cam{i}"))
        .collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let server =
        RtspServer::start(&video, &mount_refs).context("starting the loopback RTSP server")?;
    let config_path = write_config(opts, &server.urls())?;
    let out = opts.output.display().to_string();
    let mut origin = ConfigOrigin {
        source: ConfigSource::File(config_path.clone()),
        overrides: vec![
            format!("mqtt.url={mqtt_url}"),
            "node.name=demo".into(),
            format!("mqtt.spool_dir={out}/spool"),
            format!("output.dir={out}"),
            "mqtt.stats_interval_s=5".into(),
            // The big model needs about a second per frame on a small CPU.
            "cloud.timeout_ms=2500".into(),
            "cloud.intra_threads=1".into(),
            "alerts.end_after_s=4".into(),
        ],
    };
    origin.overrides.extend(opts.overrides.iter().cloned());
    let cfg = origin.load()?;
    println!("helmetd demo");
    println!(
        "  video    {} ({:.0} s, {}x{}), served as {} RTSP camera(s) on 127.0.0.1",
        video.display(),
        probe.duration.as_secs_f64(),
        probe.width,
        probe.height,
        mounts.len()
    );
    println!(
        "  broker   {mqtt_url}{}",
        if opts.mqtt.is_none() {
            " (embedded)"
        } else {
            ""
        }
    );
    println!(
        "  models   edge {}, cloud {}",
        cfg.edge.model.path.display(),
        cfg.cloud.model.display()
    );
    println!("  config   {}", config_path.display());
    if !cfg.http.listen.is_empty() {
        println!("  page     http://{}/", cfg.http.listen);
    }

    let cloud = InProcessCloud::start(&cfg, "demo-cloud")?;

    let watcher: crate::run::AlertWatcher = Arc::new(|event: &crate::alerts::AlertEvent| {
        println!(
            "\r  ALERT {:<6} {} #{} {} score {:.2} ({} in frame, decided by {:?})",
            format!("{:?}", event.kind).to_lowercase(),
            event.camera,
            event.track_id,
            event.label,
            event.score,
            event.count,
            event.source
        );
    });
    let options = DaemonOptions {
        watcher: Some(watcher),
        ..DaemonOptions::default()
    };

    let until = if opts.run_forever {
        None
    } else {
        Some(
            Instant::now()
                + opts
                    .duration
                    .unwrap_or(probe.duration + Duration::from_secs(8)),
        )
    };
    let result =
        Daemon::start(origin, cfg, runtime.handle(), &control, options).and_then(|daemon| {
            let status = spawn_status_line(daemon.snapshots(), control.clone(), started);
            let result = daemon.run(&control, until);
            control.shutdown();
            let _ = status.join();
            result
        });
    cloud.stop();
    drop(server);
    let run = result?;
    Ok(DemoSummary {
        frames: run.frames,
        hard: run.hard,
        cloud_answers: run.cloud_answered,
        cloud_asked: run.cloud_asked,
        already_answered: run.cloud_already_answered,
        alerts: run.alerts,
        workers_max: run.workers_max,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `helmetd cloud` on its own thread and runtime in this process, for the demo and benchmarks.
pub(crate) struct InProcessCloud {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<crate::cloud::service::ServiceStats>>,
}

impl InProcessCloud {
    pub(crate) fn start(cfg: &crate::config::Config, name: &str) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(crate::cloud::service::serve(&cfg, async {
                    let _ = stopped.await;
                }))
                .map_err(anyhow::Error::from)
            })?;
        Ok(Self { stop, thread })
    }

    /// Finishes the inference in progress, disconnects, and joins the thread.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(Ok(stats)) => tracing::debug!(?stats, "cloud service stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cloud service"),
            Err(_) => tracing::warn!("cloud service thread panicked"),
        }
    }
}

/// One line, refreshed every second on a terminal, printed every 5 s otherwise.
fn spawn_status_line(
    snapshots: SnapshotReceiver,
    control: Arc<Control>,
    started: Instant,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tty = std::io::stdout().is_terminal();
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let mut last = Instant::now();
        while !control.is_shutting_down() {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let c = snapshots.borrow().counters.clone();
            let line = format!(
                "  [{:5.0} s] frames {} | hard {} | cloud answered {} late {} | alerts {}",
                started.elapsed().as_secs_f64(),
                c.frames,
                c.hard,
                c.cloud_answered,
                c.cloud_late,
                c.alerts,
            );
            if tty {
                print!("\r{line}   ");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
        }
        if tty {
            println!();
        }
    })
}

/// The bundled video, from the repository root or the installed share directory.
pub fn default_video() -> PathBuf {
    config::resolve_path(Path::new("media/helmet-test.mp4"))
}
