//! `helmetd run`: the daemon. Cameras → dispatch → supervised worker processes → finalize.
//!
//! One thread runs the control loop (cameras' latest frames into the dispatcher, worker events
//! out, supervisor reconcile, signals); a small tokio runtime runs the per-camera finalize tasks
//! and, with MQTT, the uplink. Shutdown is a flag set by SIGTERM/SIGINT: the loop stops the
//! cameras, the supervisor drains and kills the workers and removes their cgroups.

mod cameras;
mod finalize;
mod launcher;
mod lock;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use helmet_pipelines::ingest::{Camera, CameraSettings, Transport};
use helmet_pipelines::output_dir::CappedOutputs;

pub use cameras::CameraChanges;
use cameras::CameraSet;
pub use finalize::{AlertWatcher, Counters, FinalizeShared, Inferred};
use launcher::{DaemonLauncher, Link};

use crate::alerts::AlertSettings;
use crate::autoscaler::{Autoscaler, FsReader, status_line};
use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::kubeedge::{KubeEdge, KubeEdgeHandle, KubeEdgeSettings, LinkPhase, NodeHealth};
use crate::supervisor::{
    CgroupRoot, Layout, PoolName, PoolSpec, RealHost, RealHostConfig, Supervisor, SupervisorConfig,
    WorkerState,
};
use crate::systemd::{Notifier, StartTimeout};
use crate::worker::{DispatchEvent, Dispatcher, InputSize, WorkerArgs, WorkerKey};

/// The only worker pool so far: the edge model.
pub const EDGE_POOL: &str = "edge";

const LOOP_TICK: Duration = Duration::from_millis(20);
const RECONCILE_EVERY: Duration = Duration::from_millis(200);

/// Set by signal handlers, read by the control loop.
#[derive(Debug, Default)]
pub struct Signals {
    pub shutdown: AtomicBool,
    pub reload: AtomicBool,
}

impl Signals {
    /// The async runtime that `helmetd run`, the demo and the benchmarks run on, with a task
    /// that turns SIGTERM and SIGINT into `shutdown` and SIGHUP into `reload`.
    pub fn with_runtime() -> anyhow::Result<(tokio::runtime::Runtime, Arc<Signals>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("helmetd-rt")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let signals = Arc::new(Signals::default());
        let flags = signals.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => flags.shutdown.store(true, Ordering::Release),
                    _ = int.recv() => flags.shutdown.store(true, Ordering::Release),
                    _ = hup.recv() => flags.reload.store(true, Ordering::Release),
                }
            }
        });
        Ok((runtime, signals))
    }
}

/// Where the config came from, so SIGHUP can read it again with the same overrides.
pub struct ConfigOrigin {
    pub source: ConfigSource,
    pub overrides: Vec<String>,
}

impl ConfigOrigin {
    pub fn load(&self) -> Result<Config, ConfigError> {
        config::load(self.source.clone(), &self.overrides)
    }
}

/// What `run` returns when it ends cleanly: totals for a summary.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub frames: u64,
    pub hard: u64,
    pub cloud_answered: u64,
    pub alerts: u64,
    pub workers_max: usize,
}

fn worker_template(cfg: &Config) -> WorkerArgs {
    let m = &cfg.edge.model;
    WorkerArgs {
        pool: String::new(),
        id: 0,
        model: config::resolve_path(&m.path),
        input: InputSize {
            height: m.input[0],
            width: m.input[1],
        },
        classes: m.classes.len() as u16,
        score_threshold: m.score_threshold,
        nms_iou: m.nms_iou,
        intra_threads: m.intra_threads,
        onnxruntime: (!cfg.inference.onnxruntime.as_os_str().is_empty())
            .then(|| cfg.inference.onnxruntime.clone()),
        socket_fd: 3,
        shm_fd: 4,
        heartbeat_ms: 500,
        fake_infer_ms: None,
    }
}

/// The worker pools the config asks for. The generation changes when a running worker could
/// not pick a change up (model, thresholds): the supervisor then replaces workers one by one.
fn desired_pools(
    cfg: &Config,
    replicas: Option<u32>,
) -> anyhow::Result<BTreeMap<PoolName, PoolSpec>> {
    let m = &cfg.edge.model;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        m.path.as_os_str(),
        m.input,
        &m.classes,
        m.score_threshold.to_bits(),
        m.nms_iou.to_bits(),
        m.intra_threads,
    )
        .hash(&mut hasher);
    let replicas = replicas.unwrap_or_else(|| initial_replicas(cfg));
    let limits = &cfg.edge.worker.resources.limits;
    let spec = PoolSpec {
        replicas,
        cpu_limit_millis: limits.cpu.as_ref().map(|q| q.milli_value().max(1) as u64),
        memory_limit_bytes: limits.memory.as_ref().map(|q| q.as_f64() as u64),
        generation: hasher.finish(),
    };
    Ok(BTreeMap::from([(PoolName::new(EDGE_POOL)?, spec)]))
}

/// Fixed replicas without `[edge.hpa]`; its minimum with it, until the first decision.
fn initial_replicas(cfg: &Config) -> u32 {
    cfg.edge
        .hpa
        .as_ref()
        .map_or(cfg.edge.worker.replicas, |h| h.min_replicas.max(1) as u32)
}

type EdgeAutoscaler = Autoscaler<FsReader>;

fn new_autoscaler(
    cfg: &Config,
    root: &Path,
    replicas: u32,
    now: Instant,
) -> anyhow::Result<Option<EdgeAutoscaler>> {
    let Some(spec) = cfg.edge.hpa.clone() else {
        return Ok(None);
    };
    let pool = PoolName::new(EDGE_POOL)?;
    Ok(Some(Autoscaler::new(
        spec,
        pool,
        root.to_path_buf(),
        FsReader::new("/"),
        replicas,
        now,
    )?))
}

/// Samples every second; the autoscaler itself decides at its sync period.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn supervisor_config(cfg: &Config) -> SupervisorConfig {
    SupervisorConfig {
        backoff_initial: Duration::from_secs_f64(cfg.edge.worker.restart_backoff_initial_s),
        backoff_max: Duration::from_secs_f64(cfg.edge.worker.restart_backoff_max_s),
        ready_timeout: Duration::from_secs_f64(cfg.edge.worker.ready_timeout_s),
        ..SupervisorConfig::default()
    }
}

/// The cgroup the workers go under: configured, or chosen from the host's layout.
fn cgroup_root(cfg: &Config) -> anyhow::Result<CgroupRoot> {
    if !cfg.edge.worker.cgroup_root.as_os_str().is_empty() {
        return Ok(CgroupRoot::Path(cfg.edge.worker.cgroup_root.clone()));
    }
    let layout = Layout::detect(Path::new("/sys/fs/cgroup"))?;
    Ok(match layout {
        Layout::Unified { .. } => CgroupRoot::Delegated {
            daemon_leaf: "daemon".into(),
        },
        Layout::Hybrid { unified, .. } => CgroupRoot::Path(unified.join("helmetd")),
    })
}

fn camera_settings(cfg: &Config, cam: &config::CameraConfig) -> anyhow::Result<CameraSettings> {
    let [h, w] = cfg.edge.model.input;
    let url = if cam.url.contains("://") {
        cam.url.clone()
    } else {
        let path = config::resolve_path(Path::new(&cam.url)).canonicalize()?;
        url::Url::from_file_path(&path)
            .map_err(|()| anyhow::anyhow!("{}: not a usable path", path.display()))?
            .to_string()
    };
    let mut s = CameraSettings::new(&cam.name, &url, w, h);
    s.detect_fps = cam.detect_fps;
    s.stall_timeout = Duration::from_secs_f64(cam.stall_timeout_s);
    s.transport = match cam.transport {
        config::Transport::Tcp => Transport::Tcp,
        config::Transport::Udp => Transport::Udp,
        config::Transport::Auto => Transport::Auto,
    };
    // A file camera plays like a camera: in real time, over and over.
    s.loop_file = url.starts_with("file://");
    if !cam.credentials_file.as_os_str().is_empty() {
        let path = config::resolve_path(&cam.credentials_file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let (user, password) = text
            .trim_end_matches(['\n', '\r'])
            .split_once(':')
            .with_context(|| format!("{}: expected user:password", path.display()))?;
        s.credentials = Some((user.to_string(), password.to_string()));
    }
    Ok(s)
}

/// What the caller plugs in: the MQTT session (built on the runtime), an alert watcher, and
/// counters it wants to read while the daemon runs.
#[derive(Default)]
pub struct Links {
    pub uplink: Option<crate::uplink::UplinkHandle>,
    pub watcher: Option<AlertWatcher>,
    pub counters: Arc<Counters>,
    /// `[http] listen`: the loop ticks its health and publishes a snapshot every second.
    pub telemetry: Option<Arc<crate::http::Telemetry>>,
    /// Sees every model result as it leaves the workers, before finalize (benchmarks).
    pub result_observer: Option<ResultObserver>,
}

/// Called from the control loop with each model result; must return quickly.
pub type ResultObserver = Arc<dyn Fn(&Inferred) + Send + Sync>;

/// Runs until `signals.shutdown` is set (or, with `until`, until that instant).
pub fn run(
    origin: &ConfigOrigin,
    cfg: Config,
    runtime: &tokio::runtime::Handle,
    links: Links,
    signals: &Signals,
    until: Option<Instant>,
) -> anyhow::Result<RunSummary> {
    if !cfg.cameras.iter().any(|c| c.enabled) {
        // A freshly flashed gateway has no cameras yet: it still registers and serves its
        // endpoints, and a camera added later with SIGHUP starts without a restart.
        tracing::warn!(
            "no enabled [[camera]] in the config: waiting for one (add it and send SIGHUP)"
        );
    }

    // Workers first: a sweep of what an earlier run left behind must precede any new worker.
    let root = cgroup_root(&cfg)?;
    let _one_daemon = lock::lock_cgroup_root(&root)?;
    let host = RealHost::new(RealHostConfig {
        mount: PathBuf::from("/sys/fs/cgroup"),
        root,
    })
    .context("setting up worker cgroups (root, or a delegated cgroup, is needed)")?;
    tracing::info!(root = %host.root().display(), layout = ?host.layout(), "worker cgroups");
    let exe = std::env::current_exe().context("locating the helmetd executable for workers")?;
    let launcher = DaemonLauncher::new(exe, worker_template(&cfg));
    let mut supervisor = Supervisor::new(host, launcher, supervisor_config(&cfg));
    let swept = supervisor.startup_sweep()?;
    if !swept.processes.is_empty() || !swept.cgroups.is_empty() {
        tracing::warn!(
            processes = swept.processes.len(),
            cgroups = swept.cgroups.len(),
            "removed leftovers of an earlier run"
        );
    }
    supervisor.set_desired(desired_pools(&cfg, None)?);
    let mut autoscaler = new_autoscaler(
        &cfg,
        supervisor.host().root(),
        initial_replicas(&cfg),
        Instant::now(),
    )?;
    let mut cfg = cfg;

    let counters = links.counters.clone();
    let telemetry = links.telemetry.clone();
    let uplink = links.uplink.clone();
    let result_observer = links.result_observer.clone();
    // Shared with the status snapshots, which show its breaker.
    let cloud = crate::joint::JointClient::from_config(&cfg, links.uplink.as_ref())?.map(Arc::new);
    let shared = Arc::new(FinalizeShared {
        hem: cfg.edge.hard_example_mining.build()?,
        num_classes: cfg.edge.model.classes.len(),
        class_names: cfg.edge.model.classes.clone(),
        alert_settings: AlertSettings::from_config(&cfg.alerts, &cfg.edge.model.classes)?,
        outputs: match cfg.output.dir.as_os_str().is_empty() {
            true => None,
            false => Some(CappedOutputs::create(
                &cfg.output.dir,
                cfg.output.jpeg_quality,
                cfg.edge.model.classes.clone(),
                cfg.output.max_mb.saturating_mul(1 << 20),
            )?),
        },
        cloud: cloud.clone(),
        uplink: links.uplink.clone(),
        watcher: links.watcher,
        snapshot_jpeg_quality: cfg.output.jpeg_quality,
        counters: counters.clone(),
        telemetry: telemetry.clone(),
    });

    let mut dispatcher = Dispatcher::new(std::iter::empty::<String>());
    let mut cameras = CameraSet::start(&cfg, runtime, shared, &mut dispatcher)?;
    let mut links_by_worker: HashMap<WorkerKey, Arc<Link>> = HashMap::new();
    let stats_every = Duration::from_secs(cfg.mqtt.stats_interval_s.max(1));
    let mut last_reconcile = Instant::now() - RECONCILE_EVERY;
    let mut last_stats = Instant::now();
    let mut last_sample = Instant::now();
    let mut summary = RunSummary::default();
    let mut snapshots = match telemetry {
        Some(_) => Some(crate::http::SnapshotBuilder::new(
            cfg.node_name(),
            PoolName::new(EDGE_POOL)?,
            supervisor.host().root().to_path_buf(),
        )),
        None => None,
    };
    let mut last_decision: Option<crate::autoscaler::Decision> = None;
    let mut last_snapshot = Instant::now() - SAMPLE_EVERY;
    tracing::info!(cameras = cameras.cameras().len(), "helmetd running");
    let kubeedge = cfg
        .kubeedge
        .enabled
        .then(|| KubeEdge::spawn(runtime, KubeEdgeSettings::from_config(&cfg)));
    let mut last_health = Instant::now() - SAMPLE_EVERY;
    let mut systemd = Notifier::from_env();
    // systemd counts the service as started once a worker serves: the cameras' threads run by
    // now, but a camera that is down must not fail the start (it reconnects on its own).
    let mut announced_ready = false;
    let mut start_timeout = StartTimeout::new(
        Instant::now(),
        Duration::from_secs_f64(cfg.edge.worker.ready_timeout_s),
    );
    // STATUS= follows the state it shows at once, not only with the stats line.
    let mut last_status_facts = None;

    while !signals.shutdown.load(Ordering::Acquire) && until.is_none_or(|t| Instant::now() < t) {
        let now = Instant::now();
        if let Some(t) = &telemetry {
            t.health.tick();
        }
        systemd.watchdog_tick(now);
        let reload_asked = signals.reload.swap(false, Ordering::AcqRel);
        if reload_asked {
            systemd.reloading();
        }
        if reload_asked && let Some(new_cfg) = reload(origin, &mut supervisor) {
            // The HPA state restarts with the new spec, from the replicas running now.
            let current = autoscaler
                .as_ref()
                .map_or(initial_replicas(&new_cfg), |a| a.current_replicas());
            autoscaler = new_autoscaler(&new_cfg, supervisor.host().root(), current, now)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "autoscaler not restarted");
                    None
                });
            if autoscaler.is_some() {
                supervisor.set_desired(desired_pools(&new_cfg, Some(current))?);
            }
            log_camera_changes(&cameras.reconcile(&new_cfg, &mut dispatcher));
            cfg = new_cfg;
        }
        if reload_asked && announced_ready {
            systemd.ready();
        }
        for camera in cameras.cameras() {
            if let Some(frame) = camera.take_latest()
                && let Err(e) = dispatcher.offer(frame)
            {
                tracing::warn!(error = %e, "frame refused by dispatch");
            }
        }
        for new in supervisor.launcher().take_new() {
            let key = dispatcher.add_worker(new.conn);
            tracing::debug!(pool = new.pool, id = new.id, ?key, "worker connection");
            links_by_worker.insert(key, new.link);
        }
        for (key, link) in &links_by_worker {
            if link.take_drain_request()
                && let Err(e) = dispatcher.drain_worker(*key)
            {
                tracing::warn!(error = %e, "drain failed");
            }
        }
        for event in dispatcher.poll(LOOP_TICK)? {
            match event {
                DispatchEvent::Done {
                    frame,
                    detections,
                    infer,
                    latency,
                    ..
                } => {
                    let result = Inferred {
                        frame,
                        detections,
                        infer,
                        latency,
                    };
                    if let Some(observe) = &result_observer {
                        observe(&result);
                    }
                    finalize::hand_over(cameras.queues(), result, &counters);
                }
                DispatchEvent::WorkerReady { worker, .. } => {
                    if let Some(link) = links_by_worker.get(&worker) {
                        link.mark_ready(Instant::now());
                    }
                }
                DispatchEvent::Heartbeat { worker, .. } => {
                    if let Some(link) = links_by_worker.get(&worker) {
                        link.beat(Instant::now());
                    }
                }
                DispatchEvent::WorkerClosed { worker, reason } => {
                    tracing::debug!(?worker, %reason, "worker connection closed");
                    links_by_worker.remove(&worker);
                }
                DispatchEvent::WorkerFailed { reason, .. } => {
                    tracing::warn!(%reason, "worker failed")
                }
                DispatchEvent::Failed { reason, .. } => {
                    tracing::warn!(%reason, "inference failed on a frame")
                }
                DispatchEvent::Rejected { error, .. } => tracing::warn!(%error, "frame rejected"),
                DispatchEvent::Lost { .. } => {}
            }
        }
        if now.duration_since(last_reconcile) >= RECONCILE_EVERY {
            for e in supervisor.reconcile(now) {
                tracing::warn!(error = %e, "supervisor");
            }
            last_reconcile = now;
            let workers = supervisor.status(now);
            let ready = workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready)
                .count();
            summary.workers_max = summary.workers_max.max(ready);
            if ready > 0 && !announced_ready {
                systemd.ready();
                announced_ready = true;
            } else if !announced_ready {
                let loading = workers.iter().any(|w| w.state == WorkerState::Starting);
                start_timeout.tick(&systemd, now, loading);
            }
            // The stats JSON is built only when the line's facts changed, not every reconcile.
            let facts = Some(status_facts(cameras.cameras(), ready, workers.len()));
            if facts != last_status_facts {
                let stats = stats_json(cameras.cameras(), &dispatcher, &workers, &counters);
                systemd.status(&status_line_of(&stats));
                last_status_facts = facts;
            }
        }
        if now.duration_since(last_sample) >= SAMPLE_EVERY
            && let Some(a) = autoscaler.as_mut()
        {
            last_sample = now;
            a.observe_drops(
                dispatcher
                    .camera_stats()
                    .map(|(_, s)| s.dropped_oldest)
                    .sum(),
            );
            let request = cfg.edge.worker.resources.requests.cpu.as_f64();
            let before = a.current_replicas();
            if let Some(decision) = a.step(now, &supervisor.status(now), request) {
                if decision.desired_replicas != before {
                    tracing::info!("autoscaler: {}", status_line(&decision));
                    supervisor.set_desired(desired_pools(&cfg, Some(decision.desired_replicas))?);
                } else {
                    tracing::debug!("autoscaler: {}", status_line(&decision));
                }
                last_decision = Some(decision);
            }
        }
        if let Some(k) = &kubeedge
            && now.duration_since(last_health) >= SAMPLE_EVERY
        {
            last_health = now;
            k.report(node_health(
                cameras.cameras(),
                &supervisor.status(now),
                autoscaler
                    .as_ref()
                    .map_or_else(|| initial_replicas(&cfg), |a| a.current_replicas()),
            ));
        }
        if let (Some(t), Some(builder)) = (&telemetry, snapshots.as_mut())
            && now.duration_since(last_snapshot) >= SAMPLE_EVERY
        {
            last_snapshot = now;
            let workers = supervisor.status(now);
            let snapshot = builder.build(
                now,
                &crate::http::Sources {
                    cameras: cameras.cameras(),
                    dispatcher: &dispatcher,
                    workers: &workers,
                    decision: last_decision.as_ref(),
                    desired_replicas: autoscaler
                        .as_ref()
                        .map_or_else(|| initial_replicas(&cfg), |a| a.current_replicas()),
                    counters: &counters,
                    uplink: uplink.as_ref(),
                    cloud: cloud.as_deref(),
                    kubeedge_connected: kubeedge.as_ref().is_some_and(kubeedge_connected),
                },
            );
            t.metrics.update(&snapshot);
        }
        if now.duration_since(last_stats) >= stats_every {
            let mut stats = stats_json(
                cameras.cameras(),
                &dispatcher,
                &supervisor.status(now),
                &counters,
            );
            if let Some(u) = &uplink {
                let us = u.stats();
                stats["mqtt"] = serde_json::json!({
                    "connected": us.connected, "reconnects": us.reconnects,
                    "spool_depth": us.spool.entries, "spool_bytes": us.spool.bytes,
                    "spool_dropped": us.spool.dropped_full + us.spool.dropped_expired,
                    "once_dropped": us.once_dropped, "volatile_dropped": us.volatile_dropped,
                    "spool_bypassed": us.spool_bypassed, "spool_lost": us.spool_lost,
                });
            }
            if let Some(k) = &kubeedge {
                let link = k.link_state();
                stats["kubeedge"] = serde_json::json!({
                    "phase": link.phase.as_str(), "registered": link.registered,
                    "reconnects": link.reconnects, "last_error": link.last_error,
                });
            }
            if let Some(u) = &uplink
                && let Err(e) =
                    u.publish_volatile(&u.topics().stats_topic(), stats.to_string(), false)
            {
                tracing::debug!(error = %e, "stats not published");
            }
            tracing::info!("stats {stats}");
            systemd.status(&status_line_of(&stats));
            last_stats = now;
        }
    }

    tracing::info!("shutting down");
    systemd.stopping();
    cameras.stop_streams();
    // Workers finish the frame they hold and exit; the supervisor then only reaps them.
    drain_all(&mut dispatcher, cameras.queues(), &counters);
    let report = supervisor.shutdown()?;
    tracing::info!(
        drained = report.drained,
        killed = report.killed,
        "workers stopped, cgroups removed"
    );
    drop(cameras);
    if let Some(k) = kubeedge {
        runtime.block_on(k.shutdown());
    }
    summary.frames = Counters::get(&counters.frames);
    summary.hard = Counters::get(&counters.hard);
    summary.cloud_answered = Counters::get(&counters.cloud_answered);
    summary.alerts = Counters::get(&counters.alerts);
    Ok(summary)
}

/// How long shutdown waits for workers to finish their current frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn drain_all(
    dispatcher: &mut Dispatcher,
    finalize_queues: &HashMap<String, tokio::sync::mpsc::Sender<Inferred>>,
    counters: &Counters,
) {
    let keys: Vec<WorkerKey> = dispatcher.worker_keys().collect();
    for key in &keys {
        if let Err(e) = dispatcher.drain_worker(*key) {
            tracing::debug!(error = %e, "drain at shutdown");
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while dispatcher.worker_keys().next().is_some() && Instant::now() < deadline {
        match dispatcher.poll(LOOP_TICK) {
            Ok(events) => {
                for event in events {
                    if let DispatchEvent::Done {
                        frame,
                        detections,
                        infer,
                        latency,
                        ..
                    } = event
                    {
                        finalize::hand_over(
                            finalize_queues,
                            Inferred {
                                frame,
                                detections,
                                infer,
                                latency,
                            },
                            counters,
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for workers to drain");
                break;
            }
        }
    }
}

/// SIGHUP: a bad file is refused and the running state kept; worker count and limits apply
/// at once, a changed model replaces workers one at a time. The caller reconciles the cameras.
fn reload(
    origin: &ConfigOrigin,
    supervisor: &mut Supervisor<RealHost, DaemonLauncher>,
) -> Option<Config> {
    let cfg = match origin.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config:\n{e}");
            return None;
        }
    };
    match desired_pools(&cfg, None) {
        Ok(pools) => {
            supervisor
                .launcher_mut()
                .set_template(worker_template(&cfg));
            supervisor.set_desired(pools);
            tracing::info!("config reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused");
            return None;
        }
    }
    Some(cfg)
}

fn log_camera_changes(changes: &CameraChanges) {
    if changes.is_empty() {
        tracing::info!("cameras unchanged");
        return;
    }
    for (name, why) in &changes.failed {
        tracing::error!(camera = %name, "camera not started after reload: {why}");
    }
    tracing::info!(
        started = ?changes.started,
        stopped = ?changes.stopped,
        restarted = ?changes.restarted,
        "cameras reconciled"
    );
}

fn kubeedge_connected(k: &KubeEdgeHandle) -> bool {
    let link = k.link_state();
    link.phase == LinkPhase::Connected && link.registered
}

/// What the KubeEdge node conditions are made of.
fn node_health(
    cameras: &[Camera],
    workers: &[crate::supervisor::WorkerStatus],
    desired: u32,
) -> NodeHealth {
    NodeHealth {
        cameras_streaming: streaming(cameras),
        cameras_total: cameras.len(),
        workers_ready: workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count(),
        workers_desired: desired as usize,
    }
}

/// What the STATUS line says besides counters: cameras streaming, workers ready, workers.
fn status_facts(cameras: &[Camera], workers_ready: usize, workers: usize) -> (usize, usize, usize) {
    (streaming(cameras), workers_ready, workers)
}

fn streaming(cameras: &[Camera]) -> usize {
    cameras
        .iter()
        .filter(|c| c.stats().state == helmet_pipelines::ingest::CameraState::Streaming)
        .count()
}

/// The `systemctl status` line: what an operator checks first.
fn status_line_of(stats: &serde_json::Value) -> String {
    let cameras = stats["cameras"].as_array().map_or(&[][..], Vec::as_slice);
    let streaming = cameras
        .iter()
        .filter(|c| c["state"].as_str() == Some("Streaming"))
        .count();
    format!(
        "cameras {streaming}/{} streaming, workers {}/{} ready, frames {}, hard {}, alerts {}",
        cameras.len(),
        stats["workers_ready"],
        stats["workers"],
        stats["frames"],
        stats["hard"],
        stats["alerts"],
    )
}

/// The loop's figures as JSON, for the stats log line and the stats topic.
fn stats_json(
    cameras: &[Camera],
    dispatcher: &Dispatcher,
    workers: &[crate::supervisor::WorkerStatus],
    counters: &Counters,
) -> serde_json::Value {
    let per_camera: Vec<serde_json::Value> = cameras
        .iter()
        .map(|c| {
            let s = c.stats();
            serde_json::json!({
                "camera": c.name(), "state": format!("{:?}", s.state), "frames_in": s.frames_in,
                "frames_out": s.frames_out, "dropped": s.dropped, "reconnects": s.reconnects,
            })
        })
        .collect();
    let dropped: u64 = dispatcher
        .camera_stats()
        .map(|(_, s)| s.dropped_oldest)
        .sum();
    let ready = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    let get = Counters::get;
    let stats = serde_json::json!({
        "frames": get(&counters.frames), "hard": get(&counters.hard),
        "upload_ratio": get(&counters.hard) as f64 / get(&counters.frames).max(1) as f64,
        "cloud_answered": get(&counters.cloud_answered), "cloud_late": get(&counters.cloud_late),
        "cloud_failed": get(&counters.cloud_failed), "cloud_skipped": get(&counters.cloud_skipped),
        "alerts": get(&counters.alerts), "dispatch_dropped": dropped,
        "workers_ready": ready, "workers": workers.len(), "cameras": per_camera,
    });
    stats
}
