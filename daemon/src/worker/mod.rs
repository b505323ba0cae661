//! Inference worker processes: `helmetd worker` ([`process`]) and the daemon's side of the
//! conversation ([`conn`] for one worker, [`dispatch`] for all of them).
//!
//! Workers are processes, not threads, so that a crash in native inference code takes down one
//! worker and each worker's CPU can be measured and capped by its own cgroup (the supervisor
//! owns spawning, cgroups, reaping and restarts). Per frame, the daemon copies the pixels into
//! a shared-memory slot ([`shm`]) and sends a ~60-byte `Infer` over a `SOCK_SEQPACKET` socket
//! pair ([`protocol`]); the worker answers with the boxes.

pub mod conn;
pub mod dispatch;
pub mod process;
pub mod protocol;
pub mod shm;
mod socket;

pub use conn::{
    CloseReason, Event, InheritedFds, JobId, ReadyInfo, WorkerConn, WorkerError, prepare,
    spawn_worker, worker_argv,
};
pub use dispatch::{
    CameraStats, DispatchError, DispatchEvent, Dispatcher, Offer, Waker, WorkerKey,
};
pub use process::{InputSize, WorkerArgs, worker_main};
