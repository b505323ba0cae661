//! [`Host`] on the running kernel.
//!
//! Workers live in the cgroup2 hierarchy (pure v2, or `unified/` on hybrid hosts), which gives
//! `cgroup.kill`, `cgroup.events` and `CLONE_INTO_CGROUP`. Each limit goes where its controller
//! is: on v2 if the root's `cgroup.controllers` offers it (`cpu.max`, `memory.max`), otherwise
//! in the v1 hierarchy of that controller, at the same path relative to the hierarchy's root
//! (`/sys/fs/cgroup/cpu/<root>/workers/<pool>/<id>`, `cpu.cfs_quota_us`; `memory/…`,
//! `memory.limit_in_bytes`). A v1 mirror is created only when a limit is set: a worker without
//! limits stays in the daemon's v1 groups and is accounted there.
//!
//! Pure v2 has the no-internal-processes rule: a cgroup that enables controllers for its
//! children must hold no process itself. With [`CgroupRoot::Delegated`] (systemd
//! `Delegate=yes`) the daemon therefore first moves itself into the leaf `<own>/<daemon_leaf>`,
//! then enables `cpu` and `memory` in `<own>`, and in `workers/` and each pool as they are
//! created, so `<own>/workers/<pool>/<id>` gets `cpu.max` and `memory.max`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::host::{ExitStatus, Host, HostError, LimitOutcome, SpawnRequest, SpawnedChild};
use super::process::{self, Prepared, Spawner};

/// CFS period for CPU limits: 100 ms, the kernel default, so millicores map to
/// `quota = millis * 100 us`.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects quotas below 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// How cgroups are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 alone at the mount point.
    Unified { mount: PathBuf },
    /// tmpfs with v1 controller hierarchies and cgroup2 at `unified`; `cpu` and `memory` are
    /// the v1 mounts of those controllers, where present.
    Hybrid {
        unified: PathBuf,
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

fn statfs_type(path: &Path) -> Result<nix::sys::statfs::FsType, HostError> {
    statfs(path)
        .map(|fs| fs.filesystem_type())
        .map_err(|e| HostError::io("statfs", path, e.into()))
}

impl Layout {
    /// Tells the layouts apart by filesystem magic: cgroup2 at `mount` is pure v2, tmpfs is
    /// legacy or hybrid, told apart by a cgroup2 mount at `mount/unified`.
    pub fn detect(mount: &Path) -> Result<Layout, HostError> {
        let kind = statfs_type(mount)?;
        if kind == CGROUP2_SUPER_MAGIC {
            return Ok(Layout::Unified {
                mount: mount.to_owned(),
            });
        }
        if kind != TMPFS_MAGIC {
            return Err(HostError::Unsupported {
                mount: mount.to_owned(),
                detail: "neither cgroup2 nor a tmpfs of cgroup hierarchies".to_owned(),
            });
        }
        let unified = mount.join("unified");
        if statfs_type(&unified).ok() != Some(CGROUP2_SUPER_MAGIC) {
            return Err(HostError::Unsupported {
                mount: mount.to_owned(),
                detail: "cgroup v1 only: workers need the cgroup2 hierarchy \
                         (cgroup.kill, CLONE_INTO_CGROUP)"
                    .to_owned(),
            });
        }
        let v1 = |name: &str| {
            let path = mount.join(name);
            (statfs_type(&path).ok() == Some(CGROUP_SUPER_MAGIC)).then_some(path)
        };
        Ok(Layout::Hybrid {
            unified,
            cpu: v1("cpu"),
            memory: v1("memory"),
        })
    }

    /// Where the cgroup2 hierarchy is mounted.
    pub fn unified_mount(&self) -> &Path {
        match self {
            Layout::Unified { mount } => mount,
            Layout::Hybrid { unified, .. } => unified,
        }
    }
}

/// Where the workers' subtree is rooted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    /// An absolute directory inside the cgroup2 mount, created if missing, e.g.
    /// `/sys/fs/cgroup/unified/helmetd` on a hybrid host. On pure v2 it must not hold
    /// processes, since it enables controllers for `workers/`.
    Path(PathBuf),
    /// The daemon's own cgroup as systemd delegates it (`Delegate=yes`). On pure v2 the daemon
    /// moves itself into `<own>/<daemon_leaf>` first (see the module notes).
    Delegated { daemon_leaf: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealHostConfig {
    /// Usually `/sys/fs/cgroup`.
    pub mount: PathBuf,
    pub root: CgroupRoot,
}

/// Where one controller's interface files are for our cgroups.
#[derive(Debug, Clone)]
enum Place {
    V2,
    /// The root of our mirror in the v1 hierarchy.
    V1(PathBuf),
    Missing,
}

/// The kernel's processes and cgroups. Dropping it ends the spawner thread, which kills every
/// worker it started (PR_SET_PDEATHSIG): keep it for the daemon's lifetime.
pub struct RealHost {
    layout: Layout,
    root: PathBuf,
    /// `workers/` as `/proc/<pid>/cgroup` shows it, to recognise orphaned worker descendants.
    workers_in_hierarchy: PathBuf,
    cpu: Place,
    memory: Place,
    spawner: Spawner,
}

/// The daemon's cgroup2 path, as `/proc/self/cgroup` shows it (`0::/system.slice/x.service`).
pub fn own_cgroup() -> Result<PathBuf, HostError> {
    let file = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(file).map_err(|e| HostError::io("reading", file, e))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| HostError::Parse {
            path: file.to_owned(),
            detail: "no cgroup2 (`0::`) line".to_owned(),
        })
}

/// `path` relative to `base`, refusing anything that is not plainly below it.
fn relative_below(path: &Path, base: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(base).ok()?;
    rest.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| rest.to_owned())
}

fn write_existing(path: &Path, value: &str) -> Result<(), HostError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|e| HostError::io("writing", path, e))
}

fn read_pids(path: &Path) -> Result<Vec<Pid>, HostError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io("reading", path, e)),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .parse::<i32>()
                .map(Pid::from_raw)
                .map_err(|_| HostError::Parse {
                    path: path.to_owned(),
                    detail: format!("not a pid: {line:?}"),
                })
        })
        .collect()
}

fn subdirs(path: &Path) -> Result<Vec<OsString>, HostError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io("listing", path, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io("listing", path, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}

fn remove_dir(path: &Path) -> Result<(), HostError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(HostError::Busy {
            path: path.to_owned(),
        }),
        Err(e) => Err(HostError::io("removing", path, e)),
    }
}

fn cpu_quota_us(millis: u64) -> u64 {
    millis
        .saturating_mul(CPU_PERIOD_US / 1000)
        .max(CPU_MIN_QUOTA_US)
}

impl RealHost {
    pub fn new(config: RealHostConfig) -> Result<Self, HostError> {
        let layout = Layout::detect(&config.mount)?;
        let unified = layout.unified_mount().to_owned();
        let root = match &config.root {
            CgroupRoot::Path(path) => {
                if relative_below(path, &unified).is_none() {
                    return Err(HostError::InvalidPath { path: path.clone() });
                }
                fs::create_dir_all(path).map_err(|e| HostError::io("creating", path, e))?;
                path.clone()
            }
            CgroupRoot::Delegated { daemon_leaf } => {
                let mut own = own_cgroup()?;
                // A second host in the same process finds the daemon already in its leaf.
                if own.file_name() == Some(daemon_leaf.as_ref()) {
                    own.pop();
                }
                let root = unified.join(own.strip_prefix("/").unwrap_or(&own));
                if matches!(layout, Layout::Unified { .. }) {
                    let leaf = root.join(daemon_leaf);
                    match fs::create_dir(&leaf) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(HostError::io("creating", &leaf, e)),
                    }
                    write_existing(&leaf.join("cgroup.procs"), "0")?;
                }
                root
            }
        };
        let in_hierarchy = relative_below(&root, &unified)
            .ok_or_else(|| HostError::InvalidPath { path: root.clone() })?;
        let controllers_file = root.join("cgroup.controllers");
        let controllers = fs::read_to_string(&controllers_file)
            .map_err(|e| HostError::io("reading", &controllers_file, e))?;
        let offered = |name: &str| controllers.split_whitespace().any(|c| c == name);
        let (cpu_v1, memory_v1) = match &layout {
            Layout::Unified { .. } => (None, None),
            Layout::Hybrid { cpu, memory, .. } => (cpu.clone(), memory.clone()),
        };
        let place = |name: &str, v1: Option<PathBuf>| {
            if offered(name) {
                Place::V2
            } else if let Some(mount) = v1 {
                Place::V1(mount.join(&in_hierarchy))
            } else {
                Place::Missing
            }
        };
        let host = RealHost {
            cpu: place("cpu", cpu_v1),
            memory: place("memory", memory_v1),
            workers_in_hierarchy: Path::new("/").join(&in_hierarchy).join("workers"),
            layout,
            root,
            spawner: Spawner::start()
                .map_err(|e| HostError::io("starting", "spawner thread", e))?,
        };
        host.enable_controllers(&host.root)?;
        Ok(host)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The absolute cgroup2 directory all relative cgroup paths start from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, cgroup: &Path) -> Result<PathBuf, HostError> {
        if cgroup
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            Ok(self.root.join(cgroup))
        } else {
            Err(HostError::InvalidPath {
                path: cgroup.to_owned(),
            })
        }
    }

    fn file(&self, cgroup: &Path, file: &str) -> Result<PathBuf, HostError> {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(HostError::InvalidPath {
                path: cgroup.join(file),
            });
        }
        Ok(self.dir(cgroup)?.join(file))
    }

    fn v1_mirrors(&self) -> impl Iterator<Item = &Path> {
        [&self.cpu, &self.memory]
            .into_iter()
            .filter_map(|place| match place {
                Place::V1(base) => Some(base.as_path()),
                Place::V2 | Place::Missing => None,
            })
    }

    fn v2_controllers(&self) -> Vec<&'static str> {
        [("cpu", &self.cpu), ("memory", &self.memory)]
            .into_iter()
            .filter(|(_, place)| matches!(place, Place::V2))
            .map(|(name, _)| name)
            .collect()
    }

    /// Makes the v2 controllers we limit with available to the children of `dir`.
    fn enable_controllers(&self, dir: &Path) -> Result<(), HostError> {
        let wanted = self.v2_controllers();
        if wanted.is_empty() {
            return Ok(());
        }
        let file = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&file).map_err(|e| HostError::io("reading", &file, e))?;
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|name| !enabled.split_whitespace().any(|c| c == *name))
            .map(|name| format!("+{name}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        write_existing(&file, &missing.join(" ")).map_err(|e| match e {
            HostError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                HostError::Io {
                    op: "enabling controllers (no process may live in a cgroup that \
                         delegates controllers: run the daemon in a leaf)",
                    path: file.clone(),
                    source,
                }
            }
            other => other,
        })
    }

    /// SIGKILLs the processes listed in `dir` and below, one pidfd at a time: for kernels
    /// without `cgroup.kill` and for v1 mirrors.
    fn kill_listed(&self, dir: &Path) -> Result<(), HostError> {
        for pid in read_pids(&dir.join("cgroup.procs"))? {
            let Ok(pidfd) = process::pidfd_open(pid) else {
                continue; // already gone
            };
            // The pid was read before the pidfd was opened: make sure it was not recycled by
            // a process outside our subtree in between.
            let proc_cgroup = PathBuf::from(format!("/proc/{pid}/cgroup"));
            let ours = fs::read_to_string(&proc_cgroup).is_ok_and(|text| {
                text.lines()
                    .filter_map(|line| line.splitn(3, ':').nth(2))
                    .any(|path| Path::new(path).starts_with(&self.workers_in_hierarchy))
            });
            if ours {
                match process::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(HostError::Process {
                            op: "SIGKILL",
                            pid,
                            source: e,
                        });
                    }
                }
            }
        }
        for name in subdirs(dir)? {
            self.kill_listed(&dir.join(name))?;
        }
        Ok(())
    }

    /// Moves the processes of a v2 cgroup into its v1 mirror, for limits set after start.
    fn join_mirror(&self, v2: &Path, mirror: &Path) -> Result<(), HostError> {
        let procs = mirror.join("cgroup.procs");
        for pid in read_pids(&v2.join("cgroup.procs"))? {
            match write_existing(&procs, &pid.to_string()) {
                Ok(()) => {}
                Err(HostError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_limit(
        &self,
        cgroup: &Path,
        place: &Place,
        controller: &str,
        v2: (&str, String),
        v1: (&[(&str, String)], bool),
    ) -> Result<LimitOutcome, HostError> {
        let dir = self.dir(cgroup)?;
        match place {
            Place::V2 => {
                write_existing(&dir.join(v2.0), &v2.1)?;
            }
            Place::V1(base) => {
                let (files, limited) = v1;
                let mirror = base.join(cgroup);
                if !limited && !mirror.is_dir() {
                    return Ok(LimitOutcome::Applied);
                }
                fs::create_dir_all(&mirror).map_err(|e| HostError::io("creating", &mirror, e))?;
                for (file, value) in files {
                    write_existing(&mirror.join(file), value)?;
                }
                self.join_mirror(&dir, &mirror)?;
            }
            Place::Missing => {
                return Ok(LimitOutcome::Unavailable {
                    reason: format!(
                        "no {controller} controller for {}: not offered in its \
                         cgroup.controllers and no v1 {controller} hierarchy",
                        self.root.display()
                    ),
                });
            }
        }
        Ok(LimitOutcome::Applied)
    }
}

impl Host for RealHost {
    type Pidfd = OwnedFd;

    fn create_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        let dir = self.dir(cgroup)?;
        if let Some(parent) = dir.parent() {
            self.enable_controllers(parent)?;
        }
        match fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(HostError::io("creating", dir, e)),
        }
    }

    fn remove_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        remove_dir(&self.dir(cgroup)?)?;
        for base in self.v1_mirrors() {
            remove_dir(&base.join(cgroup))?;
        }
        Ok(())
    }

    fn child_cgroups(&self, cgroup: &Path) -> Result<Vec<OsString>, HostError> {
        let mut names = subdirs(&self.dir(cgroup)?)?;
        for base in self.v1_mirrors() {
            names.extend(subdirs(&base.join(cgroup))?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn procs(&self, cgroup: &Path) -> Result<Vec<Pid>, HostError> {
        let mut pids = read_pids(&self.file(cgroup, "cgroup.procs")?)?;
        for base in self.v1_mirrors() {
            pids.extend(read_pids(&base.join(cgroup).join("cgroup.procs"))?);
        }
        pids.sort();
        pids.dedup();
        Ok(pids)
    }

    fn read_file(&self, cgroup: &Path, file: &str) -> Result<String, HostError> {
        let path = self.file(cgroup, file)?;
        fs::read_to_string(&path).map_err(|e| HostError::io("reading", path, e))
    }

    fn write_file(&self, cgroup: &Path, file: &str, value: &str) -> Result<(), HostError> {
        write_existing(&self.file(cgroup, file)?, value)
    }

    fn kill_cgroup(&self, cgroup: &Path) -> Result<(), HostError> {
        let dir = self.dir(cgroup)?;
        if dir.is_dir() {
            match write_existing(&dir.join("cgroup.kill"), "1") {
                Ok(()) => {}
                // Linux < 5.14 has no cgroup.kill.
                Err(HostError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    self.kill_listed(&dir)?;
                }
                Err(e) => return Err(e),
            }
        }
        for base in self.v1_mirrors() {
            self.kill_listed(&base.join(cgroup))?;
        }
        Ok(())
    }

    fn set_cpu_limit(&self, cgroup: &Path, millis: Option<u64>) -> Result<LimitOutcome, HostError> {
        let (v2, quota) = match millis {
            Some(m) => {
                let quota = cpu_quota_us(m);
                (format!("{quota} {CPU_PERIOD_US}"), quota.to_string())
            }
            None => (format!("max {CPU_PERIOD_US}"), "-1".to_owned()),
        };
        let v1 = [
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota),
        ];
        self.set_limit(
            cgroup,
            &self.cpu,
            "cpu",
            ("cpu.max", v2),
            (&v1, millis.is_some()),
        )
    }

    fn set_memory_limit(
        &self,
        cgroup: &Path,
        bytes: Option<u64>,
    ) -> Result<LimitOutcome, HostError> {
        let (v2, v1) = match bytes {
            Some(b) => (b.to_string(), b.to_string()),
            None => ("max".to_owned(), "-1".to_owned()),
        };
        self.set_limit(
            cgroup,
            &self.memory,
            "memory",
            ("memory.max", v2),
            (&[("memory.limit_in_bytes", v1)], bytes.is_some()),
        )
    }

    fn spawn(&self, request: SpawnRequest) -> Result<SpawnedChild<OwnedFd>, HostError> {
        let dir = self.dir(&request.cgroup)?;
        let cgroup_dir = open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| HostError::io("opening", &dir, e.into()))?;
        let mut v1_procs = Vec::new();
        for base in self.v1_mirrors() {
            let mirror = base.join(&request.cgroup);
            if mirror.is_dir() {
                let procs = mirror.join("cgroup.procs");
                let fd = open(&procs, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| HostError::io("opening", &procs, e.into()))?;
                v1_procs.push(fd);
            }
        }
        let prepared = Prepared::new(
            &request.program,
            &request.args,
            request.fds,
            cgroup_dir,
            v1_procs,
        )?;
        self.spawner.spawn(prepared)
    }

    /// A child that has already exited (not yet reaped) counts as signalled.
    fn signal(&self, child: &SpawnedChild<OwnedFd>, signal: Signal) -> Result<(), HostError> {
        match process::pidfd_send_signal(child.pidfd.as_fd(), signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(HostError::Process {
                op: "pidfd_send_signal",
                pid: child.pid,
                source: e,
            }),
        }
    }

    fn try_reap(&self, child: &SpawnedChild<OwnedFd>) -> Result<Option<ExitStatus>, HostError> {
        process::waitid_pidfd(child.pidfd.as_fd(), false).map_err(|e| HostError::Process {
            op: "waitid(P_PIDFD)",
            pid: child.pid,
            source: e,
        })
    }

    fn wait_exit(
        &self,
        children: &[&SpawnedChild<OwnedFd>],
        timeout: Duration,
    ) -> Result<(), HostError> {
        let fds: Vec<_> = children.iter().map(|c| c.pidfd.as_fd()).collect();
        process::wait_pidfds(&fds, timeout).map_err(|e| HostError::io("poll", "pidfds", e))
    }

    fn wait_unpopulated(&self, cgroup: &Path, timeout: Duration) -> Result<bool, HostError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.populated(cgroup)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn set_child_subreaper(&self) -> Result<(), HostError> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| HostError::io("PR_SET_CHILD_SUBREAPER", "self", e.into()))
    }

    fn reap_orphans(&self, tracked: &dyn Fn(Pid) -> bool) -> Result<usize, HostError> {
        let tasks = Path::new("/proc/self/task");
        let mut children = Vec::new();
        for task in fs::read_dir(tasks).map_err(|e| HostError::io("listing", tasks, e))? {
            let Ok(task) = task else { continue };
            // Threads may end while we look: a missing file is no error.
            if let Ok(list) = fs::read_to_string(task.path().join("children")) {
                children.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        let mut reaped = 0;
        for pid in children.into_iter().map(Pid::from_raw) {
            if tracked(pid) {
                continue;
            }
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            });
            let under_workers = fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
                t.lines()
                    .filter_map(|line| line.strip_prefix("0::"))
                    .any(|path| Path::new(path).starts_with(&self.workers_in_hierarchy))
            });
            if !(zombie && under_workers) {
                continue;
            }
            // nix reports a real-time-signal death as EINVAL after reaping: still reaped.
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {}
                Ok(_) | Err(_) => reaped += 1,
            }
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_maps_millicores_onto_the_default_period() {
        assert_eq!(cpu_quota_us(250), 25_000);
        assert_eq!(cpu_quota_us(1500), 150_000);
        assert_eq!(cpu_quota_us(1), CPU_MIN_QUOTA_US);
        assert_eq!(cpu_quota_us(u64::MAX), u64::MAX);
    }

    #[test]
    fn relative_below_refuses_escapes() {
        let base = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            relative_below(Path::new("/sys/fs/cgroup/unified/helmetd"), base),
            Some(PathBuf::from("helmetd"))
        );
        assert_eq!(
            relative_below(Path::new("/sys/fs/cgroup/unified/../x"), base),
            None
        );
        assert_eq!(
            relative_below(Path::new("/sys/fs/cgroup/cpu/x"), base),
            None
        );
    }
}
