//! `helmetd run`: the daemon. Cameras → dispatch → supervised worker processes → finalize →
//! joint inference → alerts → uplink.
//!
//! [`Daemon`] is the one owner of the daemon's life, for `helmetd run`, `helmetd demo` and the
//! benchmarks alike: [`Daemon::start`] builds every subsystem from a [`Config`] in dependency
//! order; [`Daemon::run`] runs the control loop ([`control`]) on the calling thread until
//! [`Control`] says stop (SIGTERM, SIGINT) and then shuts down in one fixed order:
//!
//! 1. cameras stop; workers finish the frames they hold (their results still reach finalize),
//!    then are reaped and their cgroups removed;
//! 2. the finalize tasks conclude every result they hold (a cloud question waits at most its
//!    timeout), end open violation episodes, and are joined (bounded);
//! 3. the uplink flushes: what the broker did not acknowledge stays in the spool;
//! 4. the snapshot readers, HTTP, Sedna's LC reporter and the KubeEdge agent stop.
//!
//! Every reader of the daemon's state (stats topic, `/metrics`, KubeEdge node conditions, LC
//! reports, systemd STATUS) reads the one [`Snapshot`] the loop publishes on a `watch` each
//! second.

mod cameras;
mod control;
mod finalize;
mod hardest;
mod launcher;
mod lock;
mod settings;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use helmet_pipelines::output_dir::CappedOutputs;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cameras::CameraChanges;
pub use control::{ControlLoop, Launcher, Probes};
pub use finalize::{AlertWatcher, FinalizeShared, Inferred};
pub use hardest::HardestFirst;
pub use settings::{EDGE_POOL, ingest_settings};

use crate::alerts::AlertSettings;
use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::http::{ConnectionLimits, HEALTH_TIMEOUT, HttpServer, Telemetry};
use crate::joint::JointClient;
use crate::kubeedge::{KubeEdge, KubeEdgeHandle, KubeEdgeSettings, NodeHealth};
use crate::sedna::lc::{LcReporter, LcSettings, Totals};
use crate::supervisor::{RealHost, RealHostConfig, Supervisor};
use crate::telemetry::{
    CloudClientState, CloudPacingSnapshot, Counters, KubeEdgeSnapshot, Snapshot, SnapshotReceiver,
};
use crate::uplink::{Uplink, UplinkHandle};
use crate::worker::Waker;
use finalize::Finalize;
use launcher::DaemonLauncher;

/// How long shutdown waits for the finalize tasks beyond the cloud's own timeout.
const FINALIZE_GRACE: Duration = Duration::from_secs(3);

/// Stop and reload requests, from signal handlers or a benchmark; each wakes the control loop.
#[derive(Debug, Default)]
pub struct Control {
    shutdown: CancellationToken,
    reload: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Control {
    /// The async runtime that `helmetd run`, the demo and the benchmarks run on, with a task
    /// that turns SIGTERM and SIGINT into a shutdown and SIGHUP into a reload.
    pub fn with_runtime() -> anyhow::Result<(tokio::runtime::Runtime, Arc<Control>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("helmetd-rt")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let control = Arc::new(Control::default());
        let on_signal = control.clone();
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
                    _ = term.recv() => on_signal.shutdown(),
                    _ = int.recv() => on_signal.shutdown(),
                    _ = hup.recv() => on_signal.reload(),
                }
            }
        });
        Ok((runtime, control))
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.wake();
    }

    pub fn reload(&self) {
        self.reload.store(true, Ordering::Release);
        self.wake();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::AcqRel)
    }

    fn attach(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    fn wake(&self) {
        if let Some(waker) = &*self.waker.lock().unwrap_or_else(PoisonError::into_inner) {
            waker.wake();
        }
    }
}

/// Where the config came from, so SIGHUP can read it again with the same overrides.
#[derive(Debug, Clone)]
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
    /// Hard frames sent to the cloud, answered in time or not.
    pub cloud_asked: u64,
    /// Hard frames not asked because the cloud had answered about everyone in them.
    pub cloud_already_answered: u64,
    pub alerts: u64,
    pub workers_max: usize,
}

/// Called from the control loop with each model result and the supervisor's id of the worker
/// that made it (the id of the snapshot's worker states); must return quickly.
pub type ResultObserver = Arc<dyn Fn(&Inferred, u32) + Send + Sync>;

/// What a caller adds to the daemon the config describes.
#[derive(Default)]
pub struct DaemonOptions {
    /// Sees every alert event (the demo prints them).
    pub watcher: Option<AlertWatcher>,
    /// Sees every model result as it leaves the workers, before finalize (`bench surge`).
    pub result_observer: Option<ResultObserver>,
}

/// The services around the control loop, in the order they stop.
struct Services {
    uplink: Option<UplinkHandle>,
    http: Option<HttpServer>,
    lc: Option<LcReporter>,
    kubeedge: Option<KubeEdgeHandle>,
    /// The tasks that read the snapshot channel (stats topic, `/metrics`, KubeEdge health).
    readers: TaskTracker,
    readers_stop: CancellationToken,
}

pub struct Daemon {
    runtime: tokio::runtime::Handle,
    control_loop: ControlLoop<RealHost, DaemonLauncher>,
    services: Services,
    snapshots: SnapshotReceiver,
    counters: Arc<Counters>,
    finalize_timeout: Duration,
    /// Held for the daemon's life: one daemon per cgroup root.
    _one_daemon: nix::fcntl::Flock<std::fs::File>,
}

impl Daemon {
    /// Starts everything the config asks for; any part that cannot start fails the start-up
    /// (a taken HTTP port, an unusable cgroup root, a camera that cannot be built).
    pub fn start(
        origin: ConfigOrigin,
        cfg: Config,
        runtime: &tokio::runtime::Handle,
        control: &Control,
        options: DaemonOptions,
    ) -> anyhow::Result<Self> {
        if !cfg.cameras.iter().any(|c| c.enabled) {
            // A freshly flashed gateway has no cameras yet: it still registers and serves its
            // endpoints, and a camera added later with SIGHUP starts without a restart.
            tracing::warn!(
                "no enabled [[camera]] in the config: waiting for one (add it and send SIGHUP)"
            );
        }
        let uplink = match cfg.mqtt.url.is_empty() {
            true => None,
            false => Some(Uplink::spawn(
                crate::joint::uplink_settings(&cfg)?,
                runtime,
            )?),
        };
        // Bound before the loop starts, so a taken port fails the start-up.
        let telemetry =
            (!cfg.http.listen.is_empty()).then(|| Arc::new(Telemetry::new(HEALTH_TIMEOUT)));
        let http = match &telemetry {
            Some(t) => Some(HttpServer::start(
                &cfg.http.listen,
                ConnectionLimits::from_http(&cfg.http),
                t.clone(),
                runtime,
            )?),
            None => None,
        };
        let lc_settings = LcSettings::from_config(&cfg)?;

        // Workers first: a sweep of what an earlier run left behind must precede any new worker.
        let root = settings::cgroup_root(&cfg)?;
        let one_daemon = lock::lock_cgroup_root(&root)?;
        let supervisor = real_supervisor(&cfg, root)?;

        let counters = Arc::new(Counters::default());
        let shared = Arc::new(finalize_shared(
            &cfg,
            &uplink,
            &telemetry,
            &counters,
            options.watcher,
        )?);
        let kubeedge = cfg
            .kubeedge
            .enabled
            .then(|| KubeEdge::spawn(runtime, KubeEdgeSettings::from_config(&cfg)));
        let (published, snapshots) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let lc = lc_settings.map(|settings| {
            let latest = snapshots.clone();
            LcReporter::spawn(runtime, settings, move || {
                Totals::from(&latest.borrow().counters)
            })
        });
        let probes = Probes {
            uplink: uplink.clone(),
            cloud: shared.cloud.clone().map(|cloud| {
                Box::new(move || cloud_client_state(&cloud))
                    as Box<dyn Fn() -> CloudClientState + Send>
            }),
            kubeedge: kubeedge.as_ref().map(|k| {
                let link = k.subscribe();
                Box::new(move || kubeedge_snapshot(&link.borrow()))
                    as Box<dyn Fn() -> KubeEdgeSnapshot + Send>
            }),
            health: telemetry.clone(),
            result_observer: options.result_observer,
        };
        let finalize_timeout = Duration::from_millis(cfg.cloud.timeout_ms) + FINALIZE_GRACE;
        let stats_every = Duration::from_secs(cfg.mqtt.stats_interval_s.max(1));
        let finalize = Finalize::new(runtime, shared);
        let files = settings::CgroupFiles::of_host(supervisor.host().root());
        let control_loop = ControlLoop::new(
            origin,
            cfg,
            supervisor,
            files,
            finalize,
            counters.clone(),
            published,
            probes,
        )?;
        control.attach(control_loop.waker());
        let mut services = Services {
            uplink,
            http,
            lc,
            kubeedge,
            readers: TaskTracker::new(),
            readers_stop: CancellationToken::new(),
        };
        services.spawn_readers(runtime, &snapshots, telemetry, stats_every);
        Ok(Self {
            runtime: runtime.clone(),
            control_loop,
            services,
            snapshots,
            counters,
            finalize_timeout,
            _one_daemon: one_daemon,
        })
    }

    /// The snapshot channel: the latest state, once a second.
    pub fn snapshots(&self) -> SnapshotReceiver {
        self.snapshots.clone()
    }

    /// Runs until `control` asks for shutdown or `until` passes, then shuts down (see the
    /// module documentation for the order). A failing loop still shuts down in that order.
    pub fn run(mut self, control: &Control, until: Option<Instant>) -> anyhow::Result<RunSummary> {
        let ran = self.control_loop.run(control, until);
        if let Err(e) = &ran {
            tracing::error!(error = %format!("{e:#}"), "control loop failed; shutting down");
        }
        let summary = self.shutdown();
        ran.and(summary)
    }

    fn shutdown(self) -> anyhow::Result<RunSummary> {
        let Self {
            runtime,
            control_loop,
            services,
            counters,
            finalize_timeout,
            ..
        } = self;
        let stopped = control_loop.stop();
        let workers_max = match &stopped {
            Ok((finalize, workers_max)) => {
                let unfinished = runtime.block_on(finalize.finish(finalize_timeout));
                if unfinished > 0 {
                    tracing::warn!(
                        cameras = unfinished,
                        "finalize did not finish in {finalize_timeout:?}; their last results are lost"
                    );
                }
                *workers_max
            }
            Err(_) => 0,
        };
        runtime.block_on(services.stop());
        stopped?;
        let get = Counters::get;
        Ok(RunSummary {
            frames: get(&counters.frames),
            hard: get(&counters.hard),
            cloud_answered: get(&counters.cloud_answered),
            cloud_asked: get(&counters.cloud_answered)
                + get(&counters.cloud_late)
                + get(&counters.cloud_failed),
            cloud_already_answered: get(&counters.cloud_already_answered),
            alerts: get(&counters.alerts),
            workers_max,
        })
    }
}

impl Services {
    /// The tasks that turn each snapshot into what a reader needs.
    fn spawn_readers(
        &mut self,
        runtime: &tokio::runtime::Handle,
        snapshots: &SnapshotReceiver,
        telemetry: Option<Arc<Telemetry>>,
        stats_every: Duration,
    ) {
        let stop = self.readers_stop.clone();
        self.readers.spawn_on(
            publish_stats(
                snapshots.clone(),
                self.uplink.clone(),
                stats_every,
                stop.clone(),
            ),
            runtime,
        );
        if let Some(t) = telemetry {
            self.readers.spawn_on(
                each_snapshot(snapshots.clone(), stop.clone(), move |s| {
                    t.metrics.update(s);
                    t.page.observe(s, std::time::SystemTime::now());
                }),
                runtime,
            );
        }
        if let Some(k) = &self.kubeedge {
            let reporter = k.health_reporter();
            self.readers.spawn_on(
                each_snapshot(snapshots.clone(), stop, move |s| {
                    reporter.report(node_health(s))
                }),
                runtime,
            );
        }
    }

    /// Steps 3 and 4 of the shutdown order.
    async fn stop(self) {
        if let Some(uplink) = &self.uplink {
            // Publishes `stopped`; what the broker has not acknowledged stays in the spool.
            let _ = uplink.shutdown().await;
        }
        self.readers_stop.cancel();
        self.readers.close();
        self.readers.wait().await;
        if let Some(server) = self.http
            && let Err(e) = server.stop().await
        {
            tracing::warn!(error = %e, "HTTP endpoint");
        }
        if let Some(lc) = self.lc {
            // The last period's counts, at most 5 s.
            lc.shutdown().await;
        }
        if let Some(k) = self.kubeedge {
            k.shutdown().await;
        }
    }
}

/// Calls `each` with every new snapshot until `stop`.
async fn each_snapshot(
    mut latest: SnapshotReceiver,
    stop: CancellationToken,
    mut each: impl FnMut(&Snapshot),
) {
    loop {
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = latest.borrow_and_update().clone();
                each(&snapshot);
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The stats log line and topic, every `stats_interval_s`, from the latest snapshot.
async fn publish_stats(
    latest: SnapshotReceiver,
    uplink: Option<UplinkHandle>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let stats = latest.borrow().stats_json();
        tracing::info!("stats {stats}");
        if let Some(u) = &uplink
            && let Err(e) = u.publish_volatile(&u.topics().stats_topic(), stats.to_string(), false)
        {
            tracing::debug!(error = %e, "stats not published");
        }
    }
}

fn real_supervisor(
    cfg: &Config,
    root: crate::supervisor::CgroupRoot,
) -> anyhow::Result<Supervisor<RealHost, DaemonLauncher>> {
    let host = RealHost::new(RealHostConfig {
        mount: PathBuf::from("/sys/fs/cgroup"),
        root,
    })
    .context("setting up worker cgroups (root, or a delegated cgroup, is needed)")?;
    tracing::info!(root = %host.root().display(), layout = ?host.layout(), "worker cgroups");
    let exe = std::env::current_exe().context("locating the helmetd executable for workers")?;
    let launcher = DaemonLauncher::new(exe, settings::worker_template(cfg));
    let mut supervisor = Supervisor::new(host, launcher, settings::supervisor_config(cfg));
    let swept = supervisor.startup_sweep()?;
    if !swept.processes.is_empty() || !swept.cgroups.is_empty() {
        tracing::warn!(
            processes = swept.processes.len(),
            cgroups = swept.cgroups.len(),
            "removed leftovers of an earlier run"
        );
    }
    Ok(supervisor)
}

fn finalize_shared(
    cfg: &Config,
    uplink: &Option<UplinkHandle>,
    telemetry: &Option<Arc<Telemetry>>,
    counters: &Arc<Counters>,
    watcher: Option<AlertWatcher>,
) -> anyhow::Result<FinalizeShared> {
    let classes = &cfg.edge.model.classes;
    let outputs = match cfg.output.dir.as_os_str().is_empty() {
        true => None,
        false => Some(CappedOutputs::create(
            &cfg.output.dir,
            cfg.output.jpeg_quality,
            classes.clone(),
            cfg.output.max_mb.saturating_mul(1 << 20),
        )?),
    };
    Ok(FinalizeShared {
        hem: cfg.edge.hard_example_mining.build()?,
        num_classes: classes.len(),
        class_names: classes.clone().into(),
        alert_settings: AlertSettings::from_config(&cfg.alerts, classes)?,
        outputs,
        cloud: JointClient::from_config(cfg, uplink.as_ref())?.map(Arc::new),
        budget_per_s: cfg.cloud.budget_per_s,
        ask_again_after: Duration::from_secs_f64(cfg.cloud.ask_again_after_s),
        budget_hardest_first: cfg.cloud.budget_order == crate::config::BudgetOrder::Hardest,
        uplink: uplink.clone(),
        watcher,
        snapshot_jpeg_quality: cfg.output.jpeg_quality,
        counters: counters.clone(),
        telemetry: telemetry.clone(),
    })
}

fn cloud_client_state(cloud: &JointClient) -> CloudClientState {
    let pacing = cloud.pacing();
    CloudClientState {
        breaker: cloud.breaker_state().as_str(),
        pacing: CloudPacingSnapshot {
            admitted_per_s: pacing.admitted_per_s,
            reported_queue: pacing.load.map(|l| l.queue),
            reported_infer_ms: pacing.load.map(|l| l.recent_infer.as_secs_f64() * 1e3),
        },
    }
}

fn kubeedge_snapshot(link: &crate::kubeedge::LinkState) -> KubeEdgeSnapshot {
    KubeEdgeSnapshot {
        phase: link.phase.as_str().to_string(),
        registered: link.registered,
        reconnects: link.reconnects,
        last_error: link.last_error.clone(),
    }
}

/// What the KubeEdge node conditions are made of.
fn node_health(snapshot: &Snapshot) -> NodeHealth {
    NodeHealth {
        cameras_streaming: snapshot.cameras_streaming(),
        cameras_total: snapshot.cameras.len(),
        workers_ready: snapshot.workers_ready(),
        workers_desired: snapshot.replicas.desired as usize,
    }
}
