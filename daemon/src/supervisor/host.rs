//! The narrow seam between worker supervision and the kernel.
//!
//! Everything the supervisor does to processes and cgroups goes through [`Host`], so the
//! reconcile logic can be driven by the in-memory fake in unit tests (the shape of youki's
//! `Syscall` trait) while [`RealHost`](super::RealHost) is tested on a real cgroup fs.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// One process to start: `program` gets `args` (without argv\[0\]), each `(fd, target)` pair
/// becomes descriptor `target` in the child, and the child runs in `cgroup` (relative to the
/// host's root) from its first instruction on.
#[derive(Debug)]
pub struct SpawnRequest {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub fds: Vec<(OwnedFd, RawFd)>,
    pub cgroup: PathBuf,
}

/// A started child. `pidfd` is the only handle the supervisor signals and reaps it through,
/// so a recycled pid can never be hit.
#[derive(Debug)]
pub struct SpawnedChild<P> {
    pub pid: Pid,
    pub pidfd: P,
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    /// The raw signal number: real-time signals have no [`Signal`] variant.
    Signaled(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(sig) => match Signal::try_from(sig) {
                Ok(named) => write!(f, "signal {named}"),
                Err(_) => write!(f, "signal {sig}"),
            },
        }
    }
}

/// What became of a limit request. Hosts without the controller still run workers: a missing
/// controller must not stop inference on a small board, it is reported instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitOutcome {
    Applied,
    Unavailable { reason: String },
}

/// The step of process creation that failed, so an error names what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStage {
    Prepare,
    Clone,
    Pdeathsig,
    ParentGone,
    Session,
    JoinV1Cgroup,
    Dup2,
    Exec,
}

impl fmt::Display for SpawnStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpawnStage::Prepare => "preparing the child",
            SpawnStage::Clone => "clone3 into the cgroup",
            SpawnStage::Pdeathsig => "PR_SET_PDEATHSIG",
            SpawnStage::ParentGone => "the parent exited before the child was armed",
            SpawnStage::Session => "setsid",
            SpawnStage::JoinV1Cgroup => "joining the v1 controller cgroups",
            SpawnStage::Dup2 => "dup2 of the inherited descriptors",
            SpawnStage::Exec => "execve",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {} is still populated or has child cgroups", path.display())]
    Busy { path: PathBuf },
    #[error("unexpected content in {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("cgroup path {} must be relative and must not leave the root", path.display())]
    InvalidPath { path: PathBuf },
    #[error("spawning {} failed at {stage}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        stage: SpawnStage,
        #[source]
        source: io::Error,
    },
    #[error("{op} for pid {pid}: {source}")]
    Process {
        op: &'static str,
        pid: Pid,
        #[source]
        source: io::Error,
    },
    #[error("cgroup layout at {}: {detail}", mount.display())]
    Unsupported { mount: PathBuf, detail: String },
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

impl HostError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        HostError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Process and cgroup effects, with cgroup paths relative to the host's configured root.
///
/// Interface files are named as on cgroup v2; a host that keeps a controller on a v1
/// hierarchy maps the limit calls there itself, so callers never see the layout.
pub trait Host {
    /// The handle a child is signalled and reaped through.
    type Pidfd: Send;

    /// Creates the cgroup; an existing one is fine. The parent must exist.
    fn create_cgroup(&self, cgroup: &Path) -> Result<(), HostError>;
    /// Removes an empty leaf cgroup; a missing one is fine.
    fn remove_cgroup(&self, cgroup: &Path) -> Result<(), HostError>;
    /// Names of the child cgroups, sorted; an absent cgroup has none.
    fn child_cgroups(&self, cgroup: &Path) -> Result<Vec<OsString>, HostError>;
    /// Processes directly in the cgroup (not its descendants); an absent cgroup has none.
    fn procs(&self, cgroup: &Path) -> Result<Vec<Pid>, HostError>;
    fn read_file(&self, cgroup: &Path, file: &str) -> Result<String, HostError>;
    fn write_file(&self, cgroup: &Path, file: &str, value: &str) -> Result<(), HostError>;
    /// SIGKILLs every process in the cgroup and its descendants (`cgroup.kill`, or a signal
    /// to each listed pid where the kernel lacks it). Returns before they are gone.
    fn kill_cgroup(&self, cgroup: &Path) -> Result<(), HostError>;
    /// `None` lifts the limit.
    fn set_cpu_limit(&self, cgroup: &Path, millis: Option<u64>) -> Result<LimitOutcome, HostError>;
    /// `None` lifts the limit.
    fn set_memory_limit(
        &self,
        cgroup: &Path,
        bytes: Option<u64>,
    ) -> Result<LimitOutcome, HostError>;
    fn spawn(&self, request: SpawnRequest) -> Result<SpawnedChild<Self::Pidfd>, HostError>;
    fn signal(&self, child: &SpawnedChild<Self::Pidfd>, signal: Signal) -> Result<(), HostError>;
    /// The exit status if the child has ended (and reaps it), `None` while it runs.
    fn try_reap(&self, child: &SpawnedChild<Self::Pidfd>) -> Result<Option<ExitStatus>, HostError>;
    /// Blocks until every child has ended or `timeout` passed; reaps nothing.
    fn wait_exit(
        &self,
        children: &[&SpawnedChild<Self::Pidfd>],
        timeout: Duration,
    ) -> Result<(), HostError>;
    /// Blocks until nothing runs in the cgroup's subtree or `timeout` passed; true if empty.
    fn wait_unpopulated(&self, cgroup: &Path, timeout: Duration) -> Result<bool, HostError>;
    /// Makes this process the reaper of orphaned worker descendants, which init on these
    /// machines reaps only after seconds.
    fn set_child_subreaper(&self) -> Result<(), HostError>;
    /// Reaps exited children that ran under `workers/` and are not `tracked`: descendants
    /// orphaned to this subreaper, and workers of an earlier supervisor in this process.
    fn reap_orphans(&self, tracked: &dyn Fn(Pid) -> bool) -> Result<usize, HostError>;

    /// Freezes (or thaws) every process in the cgroup with cgroup v2's `cgroup.freeze`: a
    /// frozen process uses no CPU and keeps its memory, and a fatal signal still ends it.
    /// A kernel older than 5.2 has no such file (`NotFound`); the caller stops the process
    /// with a signal instead.
    fn freeze(&self, cgroup: &Path, frozen: bool) -> Result<(), HostError> {
        self.write_file(cgroup, "cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// Whether any process runs in the cgroup or below, from `cgroup.events`; an absent
    /// cgroup is empty.
    fn populated(&self, cgroup: &Path) -> Result<bool, HostError> {
        let events = match self.read_file(cgroup, "cgroup.events") {
            Ok(events) => events,
            Err(HostError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        events
            .lines()
            .find_map(|line| line.strip_prefix("populated "))
            .map(|v| v.trim() != "0")
            .ok_or_else(|| HostError::Parse {
                path: cgroup.join("cgroup.events"),
                detail: "no `populated` line".to_owned(),
            })
    }
}
