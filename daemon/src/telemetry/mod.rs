//! What the daemon counts and the one snapshot of its state that every reader shares.
//!
//! The control loop and the finalize tasks count into [`Counters`] (atomics, never waited on);
//! once a second the loop reads them with the rest of its state into a [`Snapshot`] and sends it
//! on a `watch` channel ([`SnapshotSender`]). Readers take the latest copy when they need one.

pub mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use snapshot::{KubeEdgeSnapshot, Snapshot, SnapshotBuilder, Sources};

/// The loop's side of the snapshot channel.
pub type SnapshotSender = tokio::sync::watch::Sender<Arc<Snapshot>>;
/// A reader's side: `borrow()` is the latest snapshot, `changed()` waits for the next.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Totals over all cameras, for the stats line, `/metrics` and the demo's summary.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames: AtomicU64,
    pub hard: AtomicU64,
    pub cloud_answered: AtomicU64,
    pub cloud_late: AtomicU64,
    pub cloud_failed: AtomicU64,
    pub cloud_skipped: AtomicU64,
    /// Hard frames not asked because the cloud reported being slow and the client paced itself.
    pub cloud_paced: AtomicU64,
    /// The cloud client's pacing as the last hard frame left it.
    pub cloud_pacing: CloudPacingGauges,
    /// Hard frames not asked because the camera had spent its `cloud.budget_per_s`.
    pub cloud_over_budget: AtomicU64,
    /// Hard frames not asked because the cloud had answered about everyone in them recently.
    pub cloud_already_answered: AtomicU64,
    /// Hard frames not asked because the camera's schedule was closed.
    pub cloud_off_schedule: AtomicU64,
    pub alerts: AtomicU64,
    /// Results dropped because a camera's finalize queue was full.
    pub finalize_dropped: AtomicU64,
    pub output_errors: AtomicU64,
}

/// The cloud client's pacing (`joint::PacingState`) in atomics, so finalize tasks store it
/// without waiting and the loop reads it into [`snapshot::CloudPacingSnapshot`].
#[derive(Debug, Default)]
pub struct CloudPacingGauges {
    /// Requests a second admitted, as `f64` bits; 0.0: not pacing.
    admitted_per_s: AtomicU64,
    /// The queue depth a replica reported last, plus one; 0: none reported yet.
    queue: AtomicU64,
    /// The recent inference time a replica reported last, µs plus one; 0: none reported yet.
    infer_us: AtomicU64,
}

impl CloudPacingGauges {
    pub fn store(&self, pacing: &snapshot::CloudPacingSnapshot) {
        let rate = pacing.admitted_per_s.unwrap_or(0.0);
        self.admitted_per_s.store(rate.to_bits(), Ordering::Relaxed);
        let plus_one = |v: Option<u64>| v.map_or(0, |v| v.saturating_add(1));
        self.queue.store(
            plus_one(pacing.reported_queue.map(u64::from)),
            Ordering::Relaxed,
        );
        let us = pacing.reported_infer_ms.map(|ms| (ms * 1e3).round() as u64);
        self.infer_us.store(plus_one(us), Ordering::Relaxed);
    }

    pub fn load(&self) -> snapshot::CloudPacingSnapshot {
        let rate = f64::from_bits(self.admitted_per_s.load(Ordering::Relaxed));
        let minus_one = |v: u64| v.checked_sub(1);
        snapshot::CloudPacingSnapshot {
            admitted_per_s: (rate > 0.0).then_some(rate),
            reported_queue: minus_one(self.queue.load(Ordering::Relaxed))
                .map(|q| u32::try_from(q).unwrap_or(u32::MAX)),
            reported_infer_ms: minus_one(self.infer_us.load(Ordering::Relaxed))
                .map(|us| us as f64 / 1e3),
        }
    }
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
