//! The last minutes of the worker pool, one point a snapshot, for the page's chart: the page
//! shows how the autoscaler got where it is, not only where it is.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::telemetry::Snapshot;

/// Ten minutes at one snapshot a second.
pub const POINTS: usize = 600;

/// One second of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Unix milliseconds.
    pub t_ms: u64,
    /// Replicas the supervisor was asked for.
    pub desired: u32,
    /// Worker slots with a process.
    pub current: u32,
    pub ready: u32,
    /// CPU cores the workers used, summed.
    pub cpu_cores: f64,
    /// The pool's CPU pressure, 0–1, where the kernel has PSI.
    pub pressure: Option<f64>,
    /// Frames a second analysed, over all cameras.
    pub fps: f64,
}

impl HistoryPoint {
    pub fn of(snapshot: &Snapshot, at: SystemTime) -> Self {
        Self {
            t_ms: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            desired: snapshot.replicas.desired,
            current: snapshot.replicas.current,
            ready: snapshot.workers_ready() as u32,
            cpu_cores: snapshot.workers.iter().filter_map(|w| w.cpu_cores).sum(),
            pressure: snapshot.pool_cpu_pressure,
            fps: snapshot.cameras.iter().map(|c| c.fps).sum(),
        }
    }
}

/// The last [`POINTS`] points, oldest first.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<HistoryPoint>,
}

impl History {
    pub fn push(&mut self, point: HistoryPoint) {
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    pub fn points(&self) -> Vec<HistoryPoint> {
        self.points.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::snapshot::{
        CameraSnapshot, ReplicaSnapshot, WorkerSnapshot, WorkerState,
    };

    #[test]
    fn a_point_sums_the_pool_and_the_history_keeps_the_last() {
        let snapshot = Snapshot {
            cameras: vec![
                CameraSnapshot {
                    fps: 2.0,
                    ..Default::default()
                },
                CameraSnapshot {
                    fps: 1.5,
                    ..Default::default()
                },
            ],
            workers: vec![
                WorkerSnapshot {
                    state: WorkerState::Ready,
                    cpu_cores: Some(0.5),
                    ..Default::default()
                },
                WorkerSnapshot {
                    state: WorkerState::Starting,
                    cpu_cores: None,
                    ..Default::default()
                },
            ],
            replicas: ReplicaSnapshot {
                current: 2,
                desired: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let point = HistoryPoint::of(&snapshot, UNIX_EPOCH + std::time::Duration::from_secs(2));
        assert_eq!(
            (point.t_ms, point.desired, point.current, point.ready),
            (2_000, 3, 2, 1)
        );
        assert_eq!((point.cpu_cores, point.fps), (0.5, 3.5));

        let mut history = History::default();
        for t_ms in 0..POINTS as u64 + 3 {
            history.push(HistoryPoint {
                t_ms,
                ..Default::default()
            });
        }
        let points = history.points();
        assert_eq!(points.len(), POINTS);
        assert_eq!(points[0].t_ms, 3);
    }
}
