//! What the daemon counts and the one snapshot of its state that every reader shares.
//!
//! The control loop and the finalize tasks count into [`Counters`] (atomics, never waited on);
//! once a second the loop reads them with the rest of its state into a [`Snapshot`] and sends it
//! on a `watch` channel ([`SnapshotSender`]). Readers take the latest copy when they need one.

pub mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use snapshot::{
    CloudClientState, CloudPacingSnapshot, KubeEdgeSnapshot, Snapshot, SnapshotBuilder, Sources,
};

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
    /// Hard frames not asked because the camera had spent its `cloud.budget_per_s`.
    pub cloud_over_budget: AtomicU64,
    /// Hard frames not asked because the cloud had answered about everyone in them recently.
    pub cloud_already_answered: AtomicU64,
    /// Hard frames not asked because the camera's schedule was closed.
    pub cloud_off_schedule: AtomicU64,
    pub alerts: AtomicU64,
    /// Sampled frames the motion gates kept from the model (nothing moved).
    pub frames_still: AtomicU64,
    /// Results dropped because a camera's finalize queue was full.
    pub finalize_dropped: AtomicU64,
    pub output_errors: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
