//! Real workers for the supervisor: `helmetd worker …` with a socketpair and a frame memfd.
//!
//! The supervisor owns the processes, the dispatcher owns the connections. The launcher hands
//! each new connection to the daemon loop through a queue and gives the supervisor a
//! [`LinkChannel`] whose readiness and heartbeat the daemon loop keeps current from the
//! dispatcher's events, so neither side reads the other's socket.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::control::Launcher;
use crate::supervisor::{PoolName, SpawnParts, WorkerChannel, WorkerLauncher};
use crate::worker::{InheritedFds, WorkerArgs, WorkerConn, worker_argv};

/// What the supervisor knows of one worker connection.
#[derive(Debug, Default)]
pub struct Link {
    ready: AtomicBool,
    heartbeat: Mutex<Option<Instant>>,
    drain_requested: AtomicBool,
    /// A warm standby: the dispatcher gives it no frames.
    held: AtomicBool,
}

impl Link {
    pub fn mark_ready(&self, now: Instant) {
        self.ready.store(true, Ordering::Release);
        self.beat(now);
    }

    pub fn beat(&self, now: Instant) {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// True once, after the supervisor asked for a drain.
    pub fn take_drain_request(&self) -> bool {
        self.drain_requested.swap(false, Ordering::AcqRel)
    }
}

pub struct LinkChannel(Arc<Link>);

impl WorkerChannel for LinkChannel {
    fn is_ready(&mut self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    fn last_heartbeat(&mut self) -> Option<Instant> {
        *self
            .0
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn drain(&mut self) -> io::Result<()> {
        self.0.drain_requested.store(true, Ordering::Release);
        Ok(())
    }

    fn hold(&mut self, held: bool) {
        self.0.held.store(held, Ordering::Release);
    }
}

/// A prepared worker whose connection the daemon loop has not taken yet.
pub struct NewWorker {
    pub pool: String,
    pub id: u32,
    pub conn: WorkerConn,
    pub link: Arc<Link>,
}

pub struct DaemonLauncher {
    exe: PathBuf,
    /// Everything but pool and id, which differ per worker.
    template: WorkerArgs,
    new_workers: Arc<Mutex<Vec<NewWorker>>>,
}

impl DaemonLauncher {
    pub fn new(exe: PathBuf, template: WorkerArgs) -> Self {
        Self {
            exe,
            template,
            new_workers: Arc::default(),
        }
    }
}

impl Launcher for DaemonLauncher {
    /// Connections prepared since the last call, for the dispatcher.
    fn take_new(&self) -> Vec<NewWorker> {
        std::mem::take(
            &mut *self
                .new_workers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn set_template(&mut self, template: WorkerArgs) {
        self.template = template;
    }
}

impl WorkerLauncher for DaemonLauncher {
    type Channel = LinkChannel;

    fn prepare(&self, pool: &PoolName, id: u32) -> io::Result<(SpawnParts, LinkChannel)> {
        let input = self.template.input;
        let (conn, fds) =
            crate::worker::conn::prepare(input.width, input.height).map_err(io::Error::other)?;
        let args = WorkerArgs {
            pool: pool.as_str().to_string(),
            id,
            ..self.template.clone()
        };
        let mut argv = worker_argv(&self.exe, &args);
        argv.remove(0);
        let link = Arc::new(Link::default());
        self.new_workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(NewWorker {
                pool: pool.as_str().to_string(),
                id,
                conn,
                link: link.clone(),
            });
        let InheritedFds { socket, shm } = fds;
        let parts = SpawnParts {
            program: self.exe.clone(),
            args: argv,
            fds: vec![
                (socket, InheritedFds::SOCKET_FD),
                (shm, InheritedFds::SHM_FD),
            ],
        };
        Ok((parts, LinkChannel(link)))
    }
}
