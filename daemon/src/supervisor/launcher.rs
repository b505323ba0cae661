//! What a worker is, as far as supervision cares: a command line with inherited descriptors,
//! and the daemon's end of its control channel.
//!
//! The worker module implements these for `helmetd worker`; the supervisor stays generic so
//! its tests need nothing but a fake launcher or `sleep`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use super::spec::PoolName;

/// The command of one worker: [`super::SpawnRequest`] without the cgroup, which the
/// supervisor owns.
#[derive(Debug)]
pub struct SpawnParts {
    pub program: PathBuf,
    /// Without argv\[0\].
    pub args: Vec<OsString>,
    /// `(descriptor, number it gets in the child)`, e.g. the socketpair end as fd 3.
    pub fds: Vec<(OwnedFd, RawFd)>,
}

/// The daemon's end of one worker's control channel. Methods take `&mut self` so an
/// implementation can read pending messages without blocking when asked.
pub trait WorkerChannel: Send {
    /// The worker said it is ready (model loaded).
    fn is_ready(&mut self) -> bool;
    /// When the last heartbeat arrived; `None` if none yet.
    fn last_heartbeat(&mut self) -> Option<Instant>;
    /// Asks the worker to take no new frames, finish the current one and exit. An error means
    /// the channel cannot carry the request; the supervisor then sends SIGTERM instead.
    fn drain(&mut self) -> io::Result<()>;
    /// Keeps the worker out of service (a warm standby, loaded and then frozen): whoever hands
    /// out frames must give it none while held, or a frame would sit in a frozen process.
    fn hold(&mut self, held: bool);
}

pub trait WorkerLauncher {
    type Channel: WorkerChannel;

    /// Creates the command and channel for worker `id` of `pool`; called for every start,
    /// restarts included, so each process gets fresh descriptors.
    fn prepare(&self, pool: &PoolName, id: u32) -> io::Result<(SpawnParts, Self::Channel)>;
}
