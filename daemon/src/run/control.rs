//! The control loop: one thread that owns cameras' hand-off, dispatch, the supervisor and the
//! autoscaler, and publishes the daemon's state once a second.
//!
//! It sleeps in [`Dispatcher::poll`] until something happens: a worker message (a result, a
//! heartbeat, a closed connection), a camera's new frame or a signal (both through the
//! dispatcher's [`Waker`]), or the next timer — the supervisor's reconcile every 200 ms and the
//! snapshot (with the autoscaler's sample) every second. Nothing here waits on the network.
//!
//! Generic over the supervisor's [`Host`] and the worker [`Launcher`], so reload, scaling,
//! drain, hung-worker and crash-loop behaviour run in unit tests on the fake host without root.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::autoscaler::{Decision, status_line};
use crate::config::Config;
use crate::http::Telemetry;
use crate::supervisor::{Host, PoolName, Supervisor, WorkerLauncher, WorkerState};
use crate::systemd::{Notifier, StartTimeout};
use crate::telemetry::{
    CloudClientState, Counters, KubeEdgeSnapshot, SnapshotBuilder, SnapshotSender, Sources,
};
use crate::uplink::UplinkHandle;
use crate::worker::{DispatchEvent, Dispatcher, Waker, WorkerArgs, WorkerKey};

use super::cameras::{CameraChanges, CameraSet};
use super::finalize::{self, CameraFrame, Finalize, Inferred};
use super::launcher::{Link, NewWorker};
use super::settings::{
    CgroupFiles, EDGE_POOL, EdgeAutoscaler, desired_pools, initial_replicas, new_autoscaler,
};
use super::{ConfigOrigin, Control, ResultObserver};

const RECONCILE_EVERY: Duration = Duration::from_millis(200);
/// The snapshot, the autoscaler's sample and the KubeEdge/LC/HTTP views follow this period.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for workers to finish their current frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// A frame waiting this long for a free worker means the workers are behind (one frame of
/// the little model takes 0.1–0.3 s here): the autoscaler is asked at once, not at its tick.
const BEHIND_AFTER: Duration = Duration::from_millis(250);

/// Why the autoscaler is stepped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// The once-a-second sample, with a sync when the sync period has passed.
    Tick,
    /// Frames queue for the workers: sample and sync now (see [`ControlLoop::behind`]).
    Behind,
    /// Between ticks, with each reconcile: sync now only if the last second asks for more
    /// workers (`Autoscaler::glance`).
    Glance,
}

/// What the control loop needs of a worker launcher besides starting processes: the
/// connections of the workers it started, and new worker arguments on reload.
pub trait Launcher: WorkerLauncher {
    fn take_new(&self) -> Vec<NewWorker>;
    fn set_template(&mut self, template: WorkerArgs);
}

/// What the loop reads of the other subsystems when it builds a snapshot; all optional.
#[derive(Default)]
pub struct Probes {
    pub uplink: Option<UplinkHandle>,
    /// The joint-inference client's breaker and pacing.
    pub cloud: Option<Box<dyn Fn() -> CloudClientState + Send>>,
    pub kubeedge: Option<Box<dyn Fn() -> KubeEdgeSnapshot + Send>>,
    /// `[http] listen`: the loop proves it is alive to `/healthz` every time it wakes.
    pub health: Option<Arc<Telemetry>>,
    /// Sees every model result as it leaves the workers, before finalize, with the supervisor's
    /// id of the worker that made it.
    pub result_observer: Option<ResultObserver>,
}

/// When the periodic work is next due.
struct Due {
    reconcile: Instant,
    snapshot: Instant,
}

impl Due {
    fn next(&self) -> Instant {
        self.reconcile.min(self.snapshot)
    }
}

/// A worker connection the dispatcher knows: the supervisor's id of its worker (results are
/// reported by it) and the link through which the supervisor sees the worker.
struct Connected {
    id: u32,
    link: Arc<Link>,
}

/// systemd is told READY=1 once a worker serves; until then the start timeout is extended
/// while a worker is still loading its model.
struct Readiness {
    announced: bool,
    start_timeout: StartTimeout,
}

pub struct ControlLoop<H: Host, L: Launcher> {
    origin: ConfigOrigin,
    cfg: Config,
    supervisor: Supervisor<H, L>,
    /// Where the supervisor's cgroups are in the file system, for CPU and pressure readings.
    files: CgroupFiles,
    autoscaler: Option<EdgeAutoscaler>,
    last_decision: Option<Decision>,
    dispatcher: Dispatcher,
    waker: Waker,
    cameras: CameraSet,
    /// Added with the dispatcher's worker and removed when it reports the connection closed, so
    /// every worker the dispatcher reports on is here.
    links: HashMap<WorkerKey, Connected>,
    counters: Arc<Counters>,
    snapshots: SnapshotBuilder,
    published: SnapshotSender,
    probes: Probes,
    systemd: Notifier,
    readiness: Readiness,
    status_line: String,
    /// Workers ready and known at the last reconcile: a change publishes a snapshot at once,
    /// so STATUS and the probes follow a worker's start or loss without waiting a second.
    workers_seen: (usize, usize),
    due: Due,
    workers_max: usize,
    /// The dispatcher's dropped-frame total when the loop last looked.
    drops_seen: u64,
}

impl<H: Host, L: Launcher> ControlLoop<H, L> {
    /// Starts the cameras and asks the supervisor for the configured workers; the supervisor's
    /// start-up sweep must have run. `files` says where the supervisor's cgroups are read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin: ConfigOrigin,
        cfg: Config,
        mut supervisor: Supervisor<H, L>,
        files: CgroupFiles,
        finalize: Finalize,
        counters: Arc<Counters>,
        published: SnapshotSender,
        probes: Probes,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        supervisor.set_desired(desired_pools(&cfg, None)?);
        let autoscaler = new_autoscaler(&cfg, &files, initial_replicas(&cfg), now)?;
        let mut dispatcher = Dispatcher::new(std::iter::empty::<String>());
        let waker = dispatcher.waker()?;
        let on_frame = {
            let waker = waker.clone();
            Arc::new(move || waker.wake())
        };
        let cameras = CameraSet::start(&cfg, finalize, Some(on_frame), &mut dispatcher)?;
        let snapshots = SnapshotBuilder::new(
            cfg.node_name(),
            PoolName::new(EDGE_POOL)?,
            files.cgroup_root.clone(),
            files.reader.clone(),
        );
        let systemd = Notifier::from_env();
        let readiness = Readiness {
            announced: false,
            start_timeout: StartTimeout::new(
                now,
                Duration::from_secs_f64(cfg.edge.worker.ready_timeout_s),
            ),
        };
        tracing::info!(cameras = cameras.cameras().len(), "helmetd running");
        Ok(Self {
            origin,
            cfg,
            supervisor,
            files,
            autoscaler,
            last_decision: None,
            dispatcher,
            waker,
            cameras,
            links: HashMap::new(),
            counters,
            snapshots,
            published,
            probes,
            systemd,
            readiness,
            status_line: String::new(),
            workers_seen: (0, 0),
            due: Due {
                reconcile: now,
                snapshot: now,
            },
            workers_max: 0,
            drops_seen: 0,
        })
    }

    /// Wakes the loop from another thread (signals).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Runs until `control` asks for shutdown or `until` passes.
    pub fn run(&mut self, control: &Control, until: Option<Instant>) -> anyhow::Result<()> {
        while !control.is_shutting_down() && until.is_none_or(|t| Instant::now() < t) {
            self.turn(control.take_reload(), until)?;
        }
        Ok(())
    }

    /// One wake-up: applies a reload, hands frames and new workers over, sleeps until the next
    /// event or timer, handles the events, then the timers that are due.
    pub fn turn(&mut self, reload: bool, until: Option<Instant>) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some(t) = &self.probes.health {
            t.health.tick();
        }
        self.systemd.watchdog_tick(now);
        if reload {
            self.reload()?;
        }
        self.cameras
            .hand_over_frames(&mut self.dispatcher, &self.counters);
        self.take_new_workers();
        let wake_at = until.map_or(self.due.next(), |u| u.min(self.due.next()));
        for event in self
            .dispatcher
            .poll(wake_at.saturating_duration_since(now))?
        {
            self.on_event(event);
        }
        let now = Instant::now();
        if self.behind(now) {
            self.scale(now, Sync::Behind)?;
        }
        if now >= self.due.reconcile {
            self.reconcile(now);
            self.due.reconcile = now + RECONCILE_EVERY;
            if now < self.due.snapshot {
                self.scale(now, Sync::Glance)?;
            }
        }
        if now >= self.due.snapshot {
            // Rates are cumulative counters over elapsed time: each reading gets the instant it
            // is taken at, not the iteration's, which a reconcile that started a worker (tens of
            // milliseconds) has made stale; a stale instant shrinks the window and inflates the
            // rate (a worker "using" 25 cores).
            self.scale(Instant::now(), Sync::Tick)?;
            self.publish_snapshot(Instant::now());
            self.due.snapshot = now + SNAPSHOT_EVERY;
        }
        Ok(())
    }

    /// Frames queue: one waited [`BEHIND_AFTER`] for a free worker, or one was replaced by
    /// its camera's next frame before any worker took it.
    fn behind(&mut self, now: Instant) -> bool {
        let drops = self.dispatcher.dropped_oldest_total();
        let dropped = drops > std::mem::replace(&mut self.drops_seen, drops);
        dropped
            || self
                .dispatcher
                .waiting_since()
                .is_some_and(|t| now.saturating_duration_since(t) >= BEHIND_AFTER)
    }

    fn take_new_workers(&mut self) {
        for new in self.supervisor.launcher().take_new() {
            let key = self.dispatcher.add_worker(new.conn);
            tracing::debug!(pool = new.pool, id = new.id, ?key, "worker connection");
            self.links.insert(
                key,
                Connected {
                    id: new.id,
                    link: new.link,
                },
            );
        }
        for (key, Connected { link, .. }) in &self.links {
            if let Err(e) = self.dispatcher.hold_worker(*key, link.is_held()) {
                tracing::debug!(error = %e, "hold");
            }
            if link.take_drain_request()
                && let Err(e) = self.dispatcher.drain_worker(*key)
            {
                tracing::warn!(error = %e, "drain failed");
            }
        }
    }

    fn on_event(&mut self, event: DispatchEvent) {
        match event {
            DispatchEvent::Done {
                worker,
                frame,
                detections,
                infer,
                latency,
            } => {
                let result = Inferred {
                    frame,
                    detections,
                    infer,
                    latency,
                };
                if let Some(observe) = &self.probes.result_observer {
                    match self.links.get(&worker) {
                        Some(connected) => observe(&result, connected.id),
                        None => tracing::warn!(?worker, "a result from an unknown worker"),
                    }
                }
                finalize::hand_over(
                    self.cameras.queues(),
                    CameraFrame::Analysed(Box::new(result)),
                    &self.counters,
                );
            }
            DispatchEvent::WorkerReady { worker, .. } => {
                if let Some(connected) = self.links.get(&worker) {
                    connected.link.mark_ready(Instant::now());
                }
            }
            DispatchEvent::Heartbeat { worker, .. } => {
                if let Some(connected) = self.links.get(&worker) {
                    connected.link.beat(Instant::now());
                }
            }
            DispatchEvent::WorkerClosed { worker, reason } => {
                tracing::debug!(?worker, %reason, "worker connection closed");
                self.links.remove(&worker);
            }
            DispatchEvent::WorkerFailed { reason, .. } => tracing::warn!(%reason, "worker failed"),
            DispatchEvent::Failed { reason, .. } => {
                tracing::warn!(%reason, "inference failed on a frame")
            }
            DispatchEvent::Rejected { error, .. } => tracing::warn!(%error, "frame rejected"),
            DispatchEvent::Lost { .. } => {}
        }
    }

    /// The supervisor's reconcile, and READY=1 once a worker serves.
    fn reconcile(&mut self, now: Instant) {
        for e in self.supervisor.reconcile(now) {
            tracing::warn!(error = %e, "supervisor");
        }
        let workers = self.supervisor.status(now);
        let ready = workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        self.workers_max = self.workers_max.max(ready);
        if (ready, workers.len()) != self.workers_seen {
            self.workers_seen = (ready, workers.len());
            self.due.snapshot = now;
        }
        if ready > 0 && !self.readiness.announced {
            self.systemd.ready();
            self.readiness.announced = true;
        } else if !self.readiness.announced {
            let loading = workers.iter().any(|w| w.state == WorkerState::Starting);
            self.readiness
                .start_timeout
                .tick(&self.systemd, now, loading);
        }
    }

    /// The autoscaler samples every second and decides at its own sync period, or at once
    /// when the workers fall behind or (a glance with each reconcile) the last second asks for
    /// more workers. A new count is reconciled at once: a warm standby
    /// thaws without waiting for the next reconcile.
    fn scale(&mut self, now: Instant, sync: Sync) -> anyhow::Result<()> {
        let Some(a) = self.autoscaler.as_mut() else {
            return Ok(());
        };
        a.observe_drops(self.dispatcher.dropped_oldest_total());
        let request = self.cfg.edge.worker.resources.requests.cpu.as_f64();
        let before = a.current_replicas();
        let workers = self.supervisor.status(now);
        let decision = match sync {
            Sync::Tick => a.step(now, &workers, request),
            Sync::Behind => a.step_when_behind(now, &workers, request),
            Sync::Glance => a.glance(now, &workers, request),
        };
        if let Some(decision) = decision {
            if decision.desired_replicas != before {
                tracing::info!(
                    early = sync != Sync::Tick,
                    "autoscaler: {}",
                    status_line(&decision)
                );
                self.supervisor
                    .set_desired(desired_pools(&self.cfg, Some(decision.desired_replicas))?);
                self.reconcile(now);
                self.due.reconcile = now + RECONCILE_EVERY;
            } else {
                tracing::debug!("autoscaler: {}", status_line(&decision));
            }
            self.last_decision = Some(decision);
        }
        Ok(())
    }

    fn desired_replicas(&self) -> u32 {
        self.autoscaler
            .as_ref()
            .map_or_else(|| initial_replicas(&self.cfg), |a| a.current_replicas())
    }

    /// One snapshot for every reader; systemd's STATUS line follows it when it changed.
    fn publish_snapshot(&mut self, now: Instant) {
        let workers = self.supervisor.status(now);
        let mut snapshot = self.snapshots.build(
            now,
            &Sources {
                cameras: self.cameras.cameras(),
                dispatcher: &self.dispatcher,
                workers: &workers,
                decision: self.last_decision.as_ref(),
                desired_replicas: self.desired_replicas(),
                counters: &self.counters,
                uplink: self.probes.uplink.as_ref(),
                cloud: self.probes.cloud.as_ref().map(|state| state()),
                kubeedge: self.probes.kubeedge.as_ref().map(|state| state()),
            },
        );
        let wall = std::time::SystemTime::now();
        for camera in &mut snapshot.cameras {
            camera.in_schedule = self.cameras.in_schedule(&camera.name, wall);
            camera.frames_still = self.cameras.still_frames(&camera.name);
        }
        let line = snapshot.status_line();
        if line != self.status_line {
            self.systemd.status(&line);
            self.status_line = line;
        }
        self.published.send_replace(Arc::new(snapshot));
    }

    /// SIGHUP: a bad file is refused and the running state kept; worker count and limits apply
    /// at once, a changed model replaces workers one at a time, cameras are reconciled.
    fn reload(&mut self) -> anyhow::Result<()> {
        self.systemd.reloading();
        let applied = self.apply_reload();
        if self.readiness.announced {
            self.systemd.ready();
        }
        applied
    }

    fn apply_reload(&mut self) -> anyhow::Result<()> {
        let cfg = match self.origin.load() {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!("reload refused, keeping the running config:\n{e}");
                return Ok(());
            }
        };
        // A new spec restarts the HPA state from the replicas running now.
        let current = self
            .autoscaler
            .as_ref()
            .map_or(initial_replicas(&cfg), |a| a.current_replicas());
        let pools = match desired_pools(&cfg, None) {
            Ok(pools) => pools,
            Err(e) => {
                tracing::error!(error = %e, "reload refused");
                return Ok(());
            }
        };
        self.supervisor
            .launcher_mut()
            .set_template(super::settings::worker_template(&cfg));
        self.supervisor.set_desired(pools);
        tracing::info!("config reloaded");
        // An unchanged spec keeps its samples and stabilization history: a reload that adds
        // cameras, the moment load arrives, must not blind the autoscaler for a sync period.
        if cfg.edge.hpa != self.cfg.edge.hpa {
            self.autoscaler = new_autoscaler(&cfg, &self.files, current, Instant::now())
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "autoscaler not restarted after reload");
                    None
                });
        }
        if self.autoscaler.is_some() {
            self.supervisor
                .set_desired(desired_pools(&cfg, Some(current))?);
        }
        log_camera_changes(&self.cameras.reconcile(&cfg, &mut self.dispatcher));
        self.cfg = cfg;
        Ok(())
    }

    /// Stops the cameras, lets the workers finish the frames they hold (their results still go
    /// to finalize), then stops and reaps the workers and removes their cgroups. Returns the
    /// finalize tasks, whose queues are now closed, to be joined.
    pub fn stop(mut self) -> anyhow::Result<(Finalize, usize)> {
        tracing::info!("shutting down");
        self.systemd.stopping();
        self.cameras.stop_streams();
        self.drain_workers();
        let report = self.supervisor.shutdown()?;
        tracing::info!(
            drained = report.drained,
            killed = report.killed,
            "workers stopped, cgroups removed"
        );
        Ok((self.cameras.close(), self.workers_max))
    }

    fn drain_workers(&mut self) {
        let keys: Vec<WorkerKey> = self.dispatcher.worker_keys().collect();
        for key in keys {
            if let Err(e) = self.dispatcher.drain_worker(key) {
                tracing::debug!(error = %e, "drain at shutdown");
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.dispatcher.worker_keys().next().is_some() && Instant::now() < deadline {
            match self.dispatcher.poll(DRAIN_POLL) {
                Ok(events) => {
                    for event in events {
                        if let DispatchEvent::Done { .. } = event {
                            self.on_event(event);
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
