//! The one view of the daemon's state, built once a second by the control loop.
//!
//! The loop owns cameras, dispatcher, supervisor and autoscaler and must never wait on a reader;
//! so it copies the figures into a plain [`Snapshot`] and publishes that on a `watch` channel.
//! `/metrics`, `/status`, the stats topic, systemd's STATUS line, the KubeEdge node conditions
//! and Sedna's LC reports all read the same copy, and a slow reader cannot hold up a frame.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use helmet_pipelines::ingest::{self, Camera};
use serde::{Deserialize, Serialize};

use super::Counters;
use crate::autoscaler::{Decision, FsReader, Sampler, status_line};
use crate::kubeedge::LinkPhase;
use crate::supervisor::{self, PoolName, WorkerStatus};
use crate::uplink::UplinkHandle;
use crate::worker::{Dispatcher, dispatch};

/// One second of the daemon's state, as the loop saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node name (`[node] name` or the host name), so a scrape or `/status` says who answered.
    pub node: String,
    /// The enabled cameras, in config order.
    pub cameras: Vec<CameraSnapshot>,
    /// Every worker slot the supervisor knows, including those in back-off.
    pub workers: Vec<WorkerSnapshot>,
    /// CPU pressure of the worker pool's cgroup (PSI `some`) over the last second, 0–1;
    /// `None` until two readings exist or where the kernel has no PSI.
    pub pool_cpu_pressure: Option<f64>,
    pub replicas: ReplicaSnapshot,
    pub counters: CounterSnapshot,
    /// `None` without MQTT (`[mqtt] url` empty).
    pub uplink: Option<UplinkSnapshot>,
    /// The KubeEdge node link is up and the node registered; false when `[kubeedge]` is off.
    pub kubeedge_connected: bool,
    /// `None` when `[kubeedge]` is off.
    #[serde(default)]
    pub kubeedge: Option<KubeEdgeSnapshot>,
    /// Frames replaced in dispatch before a worker was free, over all cameras.
    #[serde(default)]
    pub dispatch_dropped: u64,
}

/// The KubeEdge node link, named as in the logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KubeEdgeSnapshot {
    /// `disconnected`, `bootstrapping`, `connecting`, `connected` or `stopped`.
    pub phase: String,
    pub registered: bool,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

impl Snapshot {
    pub fn workers_ready(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
    }

    pub fn cameras_streaming(&self) -> usize {
        self.cameras
            .iter()
            .filter(|c| c.state == CameraState::Streaming)
            .count()
    }

    /// The `systemctl status` line: what an operator checks first.
    pub fn status_line(&self) -> String {
        format!(
            "cameras {}/{} streaming, workers {}/{} ready, frames {}, hard {}, alerts {}",
            self.cameras_streaming(),
            self.cameras.len(),
            self.workers_ready(),
            self.workers.len(),
            self.counters.frames,
            self.counters.hard,
            self.counters.alerts,
        )
    }

    /// The stats topic's and the stats log line's JSON (docs/operations.md lists its fields).
    pub fn stats_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let cameras: Vec<serde_json::Value> = self
            .cameras
            .iter()
            .map(|cam| {
                serde_json::json!({
                    "camera": cam.name, "state": cam.state.as_str(), "frames_in": cam.frames_in,
                    "frames_out": cam.frames_processed, "dropped": cam.frames_dropped,
                    "reconnects": cam.reconnects, "in_schedule": cam.in_schedule,
                    "still": cam.frames_still,
                })
            })
            .collect();
        let mut stats = serde_json::json!({
            "frames": c.frames, "hard": c.hard,
            "upload_ratio": c.upload_ratio(),
            "cloud_answered_ratio": c.answered_in_time_ratio(),
            "cloud_answered": c.cloud_answered, "cloud_late": c.cloud_late,
            "cloud_failed": c.cloud_failed, "cloud_skipped": c.cloud_skipped,
            "cloud_paced": c.cloud_paced,
            "cloud_over_budget": c.cloud_over_budget,
            "cloud_already_answered": c.cloud_already_answered,
            "cloud_off_schedule": c.cloud_off_schedule,
            "alerts": c.alerts, "dispatch_dropped": self.dispatch_dropped,
            "frames_still": c.frames_still,
            "workers_ready": self.workers_ready(), "workers": self.workers.len(),
            "cameras": cameras,
        });
        if let Some(u) = &self.uplink {
            stats["mqtt"] = serde_json::json!({
                "connected": u.mqtt_connected, "reconnects": u.reconnects,
                "spool_depth": u.spool_depth, "spool_bytes": u.spool_bytes,
                "spool_dropped": u.spool_dropped, "once_dropped": u.once_dropped,
                "volatile_dropped": u.volatile_dropped, "spool_bypassed": u.spool_bypassed,
                "spool_lost": u.spool_lost,
            });
        }
        if let Some(p) = self.uplink.as_ref().and_then(|u| u.cloud_pacing.as_ref()) {
            stats["cloud_pacing"] = serde_json::json!({
                "admitted_per_s": p.admitted_per_s, "reported_queue": p.reported_queue,
                "reported_infer_ms": p.reported_infer_ms,
            });
        }
        if let Some(k) = &self.kubeedge {
            stats["kubeedge"] = serde_json::json!({
                "phase": k.phase, "registered": k.registered,
                "reconnects": k.reconnects, "last_error": k.last_error,
            });
        }
        stats
    }
}

/// A camera's pipeline state, named as in the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    #[default]
    Starting,
    Streaming,
    Backoff,
    Finished,
    Stopped,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Streaming => "streaming",
            CameraState::Backoff => "backoff",
            CameraState::Finished => "finished",
            CameraState::Stopped => "stopped",
        }
    }
}

impl From<ingest::CameraState> for CameraState {
    fn from(state: ingest::CameraState) -> Self {
        match state {
            ingest::CameraState::Starting => CameraState::Starting,
            ingest::CameraState::Streaming => CameraState::Streaming,
            ingest::CameraState::Backoff => CameraState::Backoff,
            ingest::CameraState::Finished => CameraState::Finished,
            ingest::CameraState::Stopped => CameraState::Stopped,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraSnapshot {
    pub name: String,
    pub state: CameraState,
    /// Decoded frames seen by the camera's sampler.
    pub frames_in: u64,
    /// Frames a worker returned a result for.
    pub frames_processed: u64,
    /// Sampled frames that never reached a model: replaced in the camera's mailbox before the
    /// loop took them, or replaced in dispatch before a worker was free.
    pub frames_dropped: u64,
    /// Pipeline restarts after a failure.
    pub reconnects: u64,
    /// Processed frames per second since the previous snapshot.
    pub fps: f64,
    /// The most recent pipeline failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// The camera's schedule is open: its violations raise alerts.
    #[serde(default = "in_schedule_by_default")]
    pub in_schedule: bool,
    /// Sampled frames its motion gate kept from the model: nothing moved, the last result
    /// stood for them. Not in `frames_processed`.
    #[serde(default)]
    pub frames_still: u64,
}

/// A camera without a schedule, and a snapshot from before schedules existed, is always on.
fn in_schedule_by_default() -> bool {
    true
}

impl Default for CameraSnapshot {
    fn default() -> Self {
        Self {
            name: String::new(),
            state: CameraState::default(),
            frames_in: 0,
            frames_processed: 0,
            frames_dropped: 0,
            reconnects: 0,
            fps: 0.0,
            last_error: None,
            in_schedule: true,
            frames_still: 0,
        }
    }
}

/// A worker slot's state, named as Kubernetes names pod phases would be in a label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    #[default]
    Starting,
    Ready,
    Draining,
    Stopping,
    Backoff,
    /// A warm standby loading its model; never given frames.
    Standby,
    /// A warm standby, loaded and frozen: no CPU until a scale-up thaws it.
    Frozen,
}

impl WorkerState {
    /// Every state, so `helmetd_worker_state` can give each slot one series per state (1 for the
    /// current one) and a state change never leaves a stale series behind.
    pub const ALL: [WorkerState; 7] = [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Draining,
        WorkerState::Stopping,
        WorkerState::Backoff,
        WorkerState::Standby,
        WorkerState::Frozen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Stopping => "stopping",
            WorkerState::Backoff => "backoff",
            WorkerState::Standby => "standby",
            WorkerState::Frozen => "frozen",
        }
    }
}

impl From<supervisor::WorkerState> for WorkerState {
    fn from(state: supervisor::WorkerState) -> Self {
        match state {
            supervisor::WorkerState::Starting => WorkerState::Starting,
            supervisor::WorkerState::Ready => WorkerState::Ready,
            supervisor::WorkerState::Draining => WorkerState::Draining,
            supervisor::WorkerState::Stopping => WorkerState::Stopping,
            supervisor::WorkerState::Backoff { .. } => WorkerState::Backoff,
            supervisor::WorkerState::Standby { frozen: false } => WorkerState::Standby,
            supervisor::WorkerState::Standby { frozen: true } => WorkerState::Frozen,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub pool: String,
    pub id: u32,
    /// `None` while the slot has no process (back-off).
    pub pid: Option<i32>,
    pub state: WorkerState,
    /// Starts of this slot after its first.
    pub restarts: u32,
    /// CPU cores the process used over the last second (CPU seconds per second), from its cgroup;
    /// `None` on its first second or when the cgroup cannot be read. A rate, not a total:
    /// the cgroup counter restarts with every process, a gauge survives that.
    pub cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// Worker slots that have a process now, warm standbys not counted.
    pub current: u32,
    /// What the supervisor is asked to run: the autoscaler's last decision, else the config.
    pub desired: u32,
    /// The HPA conditions of the last decision; empty without `[edge.hpa]`.
    pub conditions: Vec<ConditionSnapshot>,
    /// The last decision in one line (metric values, targets), as the log writes it.
    pub summary: Option<String>,
}

/// An HPA status condition, with Kubernetes' type and reason strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConditionSnapshot {
    pub condition: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The loop's [`Counters`], read once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub frames: u64,
    pub hard: u64,
    pub cloud_answered: u64,
    pub cloud_late: u64,
    pub cloud_failed: u64,
    pub cloud_skipped: u64,
    /// Hard frames not asked because the cloud reported being slow and the client paced itself.
    #[serde(default)]
    pub cloud_paced: u64,
    #[serde(default)]
    pub cloud_over_budget: u64,
    #[serde(default)]
    pub cloud_already_answered: u64,
    #[serde(default)]
    pub cloud_off_schedule: u64,
    /// Alert events of every kind (new, update, end): the loop counts only their total.
    pub alerts: u64,
    /// Sampled frames the motion gates kept from the model; not in `frames`.
    #[serde(default)]
    pub frames_still: u64,
    pub finalize_dropped: u64,
    pub output_errors: u64,
}

impl CounterSnapshot {
    /// Hard examples per frame: Sedna's `uploadCloudRatio`.
    pub fn upload_ratio(&self) -> f64 {
        self.hard as f64 / self.frames.max(1) as f64
    }

    /// Of the hard examples, the share whose cloud answer came in time and decided the frame.
    pub fn answered_in_time_ratio(&self) -> f64 {
        self.cloud_answered as f64 / self.hard.max(1) as f64
    }

    pub fn read(counters: &Counters) -> Self {
        let get = Counters::get;
        Self {
            frames: get(&counters.frames),
            hard: get(&counters.hard),
            cloud_answered: get(&counters.cloud_answered),
            cloud_late: get(&counters.cloud_late),
            cloud_failed: get(&counters.cloud_failed),
            cloud_skipped: get(&counters.cloud_skipped),
            cloud_paced: get(&counters.cloud_paced),
            cloud_over_budget: get(&counters.cloud_over_budget),
            cloud_already_answered: get(&counters.cloud_already_answered),
            cloud_off_schedule: get(&counters.cloud_off_schedule),
            alerts: get(&counters.alerts),
            frames_still: get(&counters.frames_still),
            finalize_dropped: get(&counters.finalize_dropped),
            output_errors: get(&counters.output_errors),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkSnapshot {
    pub mqtt_connected: bool,
    pub reconnects: u64,
    /// Reliable PUBLISH packets written, re-sends included.
    pub published: u64,
    /// Spool entries the broker confirmed.
    pub acked: u64,
    /// Un-acked spool entries: what a broker outage has piled up.
    pub spool_depth: u64,
    pub spool_bytes: u64,
    /// Entries dropped unsent because the spool was full or they were too old.
    pub spool_dropped: u64,
    /// Messages the spool could not store (a full disk), sent once as QoS 1 instead.
    #[serde(default)]
    pub spool_bypassed: u64,
    /// Messages the spool could not store while the broker was not connected: lost.
    #[serde(default)]
    pub spool_lost: u64,
    /// Messages of kinds not spooled, dropped because the session was down or its queue full.
    #[serde(default)]
    pub once_dropped: u64,
    /// Volatile messages (stats) dropped because the session was down or its queue full.
    #[serde(default)]
    pub volatile_dropped: u64,
    /// The cloud client's circuit breaker (`closed`, `open`, `half-open`); `None` without a cloud.
    pub cloud_breaker: Option<String>,
    /// The cloud client's pacing for a slow cloud; `None` without a cloud.
    #[serde(default)]
    pub cloud_pacing: Option<CloudPacingSnapshot>,
}

/// How the cloud client paces itself (`joint::pacer`): a cloud that reports being slow gets
/// `admitted_per_s` hard examples a second, the rest are decided on the edge (`cloud_paced`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudPacingSnapshot {
    /// `None` while the client is not pacing.
    pub admitted_per_s: Option<f64>,
    /// Requests waiting at the replica that reported last, behind its running inference.
    pub reported_queue: Option<u32>,
    /// That replica's recent time for one inference, ms.
    pub reported_infer_ms: Option<f64>,
}

/// The joint-inference client as the snapshot shows it, read from it when the snapshot is built.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudClientState {
    /// The circuit breaker's state name (`closed`, `open`, `half-open`).
    pub breaker: &'static str,
    pub pacing: CloudPacingSnapshot,
}

impl UplinkSnapshot {
    /// `cloud` is the joint-inference client's state, when a cloud is configured.
    pub fn read(uplink: &UplinkHandle, cloud: Option<&CloudClientState>) -> Self {
        let stats = uplink.stats();
        Self {
            mqtt_connected: stats.connected,
            reconnects: stats.reconnects,
            published: stats.published,
            acked: stats.acked,
            spool_depth: stats.spool.entries as u64,
            spool_bytes: stats.spool.bytes,
            spool_dropped: stats.spool.dropped_full + stats.spool.dropped_expired,
            spool_bypassed: stats.spool_bypassed,
            spool_lost: stats.spool_lost,
            once_dropped: stats.once_dropped,
            volatile_dropped: stats.volatile_dropped,
            cloud_breaker: cloud.map(|c| c.breaker.to_string()),
            cloud_pacing: cloud.map(|c| c.pacing.clone()),
        }
    }
}

/// Everything the loop lends [`SnapshotBuilder::build`] for one snapshot.
pub struct Sources<'a> {
    pub cameras: &'a [Camera],
    pub dispatcher: &'a Dispatcher,
    pub workers: &'a [WorkerStatus],
    /// The autoscaler's last decision, kept by the loop (`step` returns one per sync period).
    pub decision: Option<&'a Decision>,
    /// The replica count the supervisor is asked for now.
    pub desired_replicas: u32,
    pub counters: &'a Counters,
    pub uplink: Option<&'a UplinkHandle>,
    /// The joint-inference client's breaker and pacing, when a cloud is configured.
    pub cloud: Option<CloudClientState>,
    pub kubeedge: Option<KubeEdgeSnapshot>,
}

/// Loop-side state needed between snapshots: the previous frame totals for fps, and a CPU
/// sampler of its own, so worker CPU and pool pressure are known with or without `[edge.hpa]`
/// (cgroup counters are cumulative; two samplers reading them do not disturb each other).
pub struct SnapshotBuilder {
    node: String,
    pool: PoolName,
    cgroup_root: PathBuf,
    sampler: Sampler<FsReader>,
    previous: HashMap<String, (u64, Instant)>,
}

impl SnapshotBuilder {
    /// `cgroup_root` is the supervisor's (`supervisor.host().root()`), `pool` the workers' pool;
    /// `reader` reads below `/` in the daemon.
    pub fn new(node: String, pool: PoolName, cgroup_root: PathBuf, reader: FsReader) -> Self {
        Self {
            node,
            pool,
            cgroup_root,
            sampler: Sampler::new(reader),
            previous: HashMap::new(),
        }
    }

    /// Reads everything once; call every second from the loop.
    pub fn build(&mut self, now: Instant, sources: &Sources<'_>) -> Snapshot {
        let sample = self
            .sampler
            .sample(now, sources.workers, &self.cgroup_root, &self.pool);
        let dispatch_stats: HashMap<&str, &dispatch::CameraStats> =
            sources.dispatcher.camera_stats().collect();
        let cameras = sources
            .cameras
            .iter()
            .map(|camera| {
                let name = camera.name();
                let mut snapshot =
                    camera_snapshot(name, &camera.stats(), dispatch_stats.get(name).copied());
                let previous = self
                    .previous
                    .insert(name.to_string(), (snapshot.frames_processed, now));
                snapshot.fps = fps(previous, snapshot.frames_processed, now);
                snapshot
            })
            .collect();
        let workers: Vec<WorkerSnapshot> = sources
            .workers
            .iter()
            .map(|w| WorkerSnapshot {
                pool: w.pool.to_string(),
                id: w.id,
                pid: w.pid.map(|p| p.as_raw()),
                state: w.state.into(),
                restarts: w.restarts,
                cpu_cores: w
                    .pid
                    .and_then(|pid| sample.cpu_of(w.id, pid))
                    .map(|usage| usage.cores),
            })
            .collect();
        Snapshot {
            node: self.node.clone(),
            cameras,
            replicas: ReplicaSnapshot {
                current: workers
                    .iter()
                    .filter(|w| {
                        w.pid.is_some()
                            && !matches!(w.state, WorkerState::Standby | WorkerState::Frozen)
                    })
                    .count() as u32,
                desired: sources.desired_replicas,
                conditions: sources
                    .decision
                    .map(|d| {
                        d.conditions
                            .iter()
                            .map(|c| ConditionSnapshot {
                                condition: c.kind.as_str().to_string(),
                                status: c.status,
                                reason: c.reason.as_str().to_string(),
                                message: c.message.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                summary: sources.decision.map(status_line),
            },
            workers,
            pool_cpu_pressure: sample.pool_pressure.map(|p| p.percent() / 100.0),
            counters: CounterSnapshot::read(sources.counters),
            uplink: sources
                .uplink
                .map(|u| UplinkSnapshot::read(u, sources.cloud.as_ref())),
            kubeedge_connected: sources
                .kubeedge
                .as_ref()
                .is_some_and(|k| k.phase == LinkPhase::Connected.as_str() && k.registered),
            kubeedge: sources.kubeedge.clone(),
            dispatch_dropped: sources.dispatcher.dropped_oldest_total(),
        }
    }
}

/// One camera's figures from its pipeline and from dispatch (absent before its first frame).
pub fn camera_snapshot(
    name: &str,
    camera: &ingest::CameraStats,
    dispatch: Option<&dispatch::CameraStats>,
) -> CameraSnapshot {
    CameraSnapshot {
        name: name.to_string(),
        state: camera.state.into(),
        frames_in: camera.frames_in,
        frames_processed: dispatch.map_or(0, |d| d.completed),
        frames_dropped: camera.dropped + dispatch.map_or(0, |d| d.dropped_oldest),
        reconnects: camera.reconnects,
        fps: 0.0,
        last_error: camera.last_error.clone(),
        in_schedule: true,
        frames_still: 0,
    }
}

/// Frames per second since the previous reading; 0 on the first and after a counter reset.
fn fps(previous: Option<(u64, Instant)>, frames: u64, now: Instant) -> f64 {
    let Some((before, at)) = previous else {
        return 0.0;
    };
    let seconds = now.saturating_duration_since(at).as_secs_f64();
    if seconds <= 0.0 || frames < before {
        return 0.0;
    }
    (frames - before) as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fps_is_the_rate_since_the_previous_reading() {
        let t0 = Instant::now();
        assert_eq!(fps(None, 10, t0), 0.0);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(fps(Some((10, t0)), 20, t1), 5.0);
        assert_eq!(fps(Some((30, t0)), 20, t1), 0.0, "reset");
        assert_eq!(fps(Some((10, t1)), 20, t1), 0.0, "no time passed");
    }

    #[test]
    fn camera_drops_add_mailbox_and_dispatch() {
        let camera = ingest::CameraStats {
            frames_in: 100,
            frames_out: 50,
            dropped: 3,
            reconnects: 1,
            state: ingest::CameraState::Streaming,
            last_error: None,
        };
        let dispatch = dispatch::CameraStats {
            completed: 40,
            dropped_oldest: 4,
            ..Default::default()
        };
        let s = camera_snapshot("gate", &camera, Some(&dispatch));
        assert_eq!(s.state, CameraState::Streaming);
        assert_eq!((s.frames_processed, s.frames_dropped), (40, 7));
        assert_eq!(camera_snapshot("gate", &camera, None).frames_processed, 0);
    }

    #[test]
    fn cloud_pacing_goes_into_the_stats() {
        let counters = Counters::default();
        let pacing = CloudPacingSnapshot {
            admitted_per_s: Some(0.4),
            reported_queue: Some(0),
            reported_infer_ms: Some(512.25),
        };
        Counters::add(&counters.cloud_paced);
        let snapshot = Snapshot {
            counters: CounterSnapshot::read(&counters),
            uplink: Some(UplinkSnapshot {
                cloud_pacing: Some(pacing),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stats = snapshot.stats_json();
        assert_eq!(stats["cloud_paced"], 1);
        assert_eq!(stats["cloud_pacing"]["admitted_per_s"], 0.4);
        assert_eq!(stats["cloud_pacing"]["reported_queue"], 0);
        assert_eq!(stats["cloud_pacing"]["reported_infer_ms"], 512.25);
    }
}
