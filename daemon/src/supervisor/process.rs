//! Process creation, signalling and reaping with raw Linux syscalls. All of the supervisor's
//! `unsafe` lives here.
//!
//! Children are made with `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` rather than
//! `Command::pre_exec` writing to `cgroup.procs`:
//! - the child exists only inside its worker cgroup: no instant in which it runs (or is
//!   charged) in the daemon's cgroup, outside the subtree the start-up sweep cleans;
//! - the pidfd comes with the process, so there is no window in which its pid could be
//!   recycled before we hold a handle;
//! - `std::process::Child` would be a second owner of the exit status next to the pidfd.
//!
//! The price is that the child is unknown to glibc: between clone3 and execve it makes only
//! plain syscalls on memory prepared by the parent. v1 controller cgroups (hybrid hosts) have
//! no clone3 equivalent, so the child writes "0" to their `cgroup.procs` (opened by the
//! parent) before exec: the worker is limited from its first instruction too.
//!
//! Every clone happens on one long-lived thread ([`Spawner`]) because PR_SET_PDEATHSIG fires
//! when the forking *thread* exits, not the process.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::host::{ExitStatus, HostError, SpawnStage, SpawnedChild};

/// Not in libc 0.2.191 as a usable constant (its `c_int` one overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (v2, with `cgroup`): every field a u64 on every
/// architecture, so it is spelled out here instead of relying on libc's per-arch copies.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Everything the child needs, resolved before the clone so the child allocates nothing.
pub(super) struct Prepared {
    program: PathBuf,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Sources renumbered above every target, so no dup2 can clobber a later source.
    fds: Vec<(OwnedFd, RawFd)>,
    cgroup_dir: OwnedFd,
    v1_procs: Vec<OwnedFd>,
    floor: RawFd,
}

fn prepare_error(program: &Path, source: io::Error) -> HostError {
    HostError::Spawn {
        program: program.to_owned(),
        stage: SpawnStage::Prepare,
        source,
    }
}

fn cstring(bytes: &[u8], program: &Path) -> Result<CString, HostError> {
    CString::new(bytes).map_err(|_| {
        prepare_error(
            program,
            io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"),
        )
    })
}

/// execve does not search PATH; a bare name is resolved here like a shell would.
fn resolve_program(program: &Path) -> Result<PathBuf, HostError> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            prepare_error(
                program,
                io::Error::new(io::ErrorKind::NotFound, "not found in PATH"),
            )
        })
}

/// A CLOEXEC duplicate numbered `floor` or higher.
fn dup_above(fd: BorrowedFd<'_>, floor: RawFd) -> io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(floor))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl Prepared {
    /// `cgroup_dir` is the v2 cgroup opened as a directory; `v1_procs` are the `cgroup.procs`
    /// files of the v1 controller cgroups to join, opened for writing.
    pub(super) fn new(
        program: &Path,
        args: &[OsString],
        fds: Vec<(OwnedFd, RawFd)>,
        cgroup_dir: OwnedFd,
        v1_procs: Vec<OwnedFd>,
    ) -> Result<Self, HostError> {
        let mut targets: Vec<RawFd> = fds.iter().map(|&(_, target)| target).collect();
        targets.sort_unstable();
        if targets.first().is_some_and(|&t| t < 0) || targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(prepare_error(
                program,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "descriptor targets must be distinct and not negative",
                ),
            ));
        }
        let floor = targets.last().copied().unwrap_or(2).max(2) + 1;
        let resolved = resolve_program(program)?;
        let path = cstring(resolved.as_os_str().as_bytes(), program)?;
        let mut argv = vec![cstring(program.as_os_str().as_bytes(), program)?];
        for arg in args {
            argv.push(cstring(arg.as_bytes(), program)?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            envp.push(cstring(&entry, program)?);
        }
        let renumber = |fd: &OwnedFd| dup_above(fd.as_fd(), floor);
        let fds = fds
            .iter()
            .map(|(fd, target)| renumber(fd).map(|fd| (fd, *target)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| prepare_error(program, e))?;
        let v1_procs = v1_procs
            .iter()
            .map(renumber)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| prepare_error(program, e))?;
        Ok(Prepared {
            program: program.to_owned(),
            path,
            argv,
            envp,
            fds,
            cgroup_dir,
            v1_procs,
            floor,
        })
    }
}

/// Raw views of [`Prepared`] for the child, which must not touch Rust containers' methods
/// that could allocate.
struct ChildPlan<'a> {
    parent: libc::pid_t,
    report: RawFd,
    v1_procs: &'a [RawFd],
    fds: &'a [(RawFd, RawFd)],
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    empty_mask: *const libc::sigset_t,
}

/// Tells the parent which step failed, then exits.
///
/// # Safety
/// Only in the clone3 child.
unsafe fn child_fail(plan: &ChildPlan<'_>, stage: SpawnStage) -> ! {
    // SAFETY: errno is thread-local storage copied into the child; write and _exit are plain
    // syscalls on a buffer on this stack.
    unsafe {
        let errno = *libc::__errno_location();
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
        message[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(plan.report, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// The child between clone3 and execve.
///
/// # Safety
/// Only in the clone3 child, whose memory is a copy of the parent's but which glibc does not
/// know as a process: it may only make syscalls, never allocate or take locks, never return.
unsafe fn run_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: every call below is a thin syscall wrapper on memory prepared by the parent.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            child_fail(plan, SpawnStage::Pdeathsig);
        }
        // The daemon may have died before PDEATHSIG was armed: then nothing would ever kill us.
        if libc::getppid() != plan.parent {
            *libc::__errno_location() = libc::ESRCH;
            child_fail(plan, SpawnStage::ParentGone);
        }
        // A blocked mask and an ignored SIGPIPE (Rust's runtime ignores it) survive execve.
        libc::sigprocmask(libc::SIG_SETMASK, plan.empty_mask, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Own session: a terminal's Ctrl-C must reach the daemon, which drains workers in
        // order, not the workers directly.
        if libc::setsid() < 0 {
            child_fail(plan, SpawnStage::Session);
        }
        for &procs in plan.v1_procs {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                child_fail(plan, SpawnStage::JoinV1Cgroup);
            }
        }
        // Descriptors C libraries in the daemon opened without O_CLOEXEC must not leak into
        // workers; best effort (Linux >= 5.11), the requested ones are dup2'ed afterwards.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for &(source, target) in plan.fds {
            if libc::dup2(source, target) < 0 {
                child_fail(plan, SpawnStage::Dup2);
            }
        }
        libc::execve(plan.path, plan.argv, plan.envp);
        child_fail(plan, SpawnStage::Exec)
    }
}

fn stage_from(code: u32) -> SpawnStage {
    [
        SpawnStage::Pdeathsig,
        SpawnStage::ParentGone,
        SpawnStage::Session,
        SpawnStage::JoinV1Cgroup,
        SpawnStage::Dup2,
        SpawnStage::Exec,
    ]
    .into_iter()
    .find(|stage| *stage as u32 == code)
    .unwrap_or(SpawnStage::Exec)
}

fn read_report(fd: &OwnedFd, buf: &mut [u8; 8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

fn clone_into_cgroup(prepared: Prepared) -> Result<SpawnedChild<OwnedFd>, HostError> {
    let fail = |stage, source| HostError::Spawn {
        program: prepared.program.clone(),
        stage,
        source,
    };
    let (report_read, pipe_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fail(SpawnStage::Prepare, e.into()))?;
    // Above every dup2 target, or the child would close its own error channel. Only this copy
    // may stay open in the parent, or the read below would never see EOF.
    let report_write =
        dup_above(pipe_write.as_fd(), prepared.floor).map_err(|e| fail(SpawnStage::Prepare, e))?;
    drop(pipe_write);

    let argv: Vec<*const libc::c_char> = prepared
        .argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = prepared
        .envp
        .iter()
        .map(|var| var.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let fds: Vec<(RawFd, RawFd)> = prepared
        .fds
        .iter()
        .map(|(fd, target)| (fd.as_raw_fd(), *target))
        .collect();
    let v1_procs: Vec<RawFd> = prepared.v1_procs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to the local above.
    unsafe { libc::sigemptyset(&raw mut empty_mask) };
    let plan = ChildPlan {
        parent: std::process::id() as libc::pid_t,
        report: report_write.as_raw_fd(),
        v1_procs: &v1_procs,
        fds: &fds,
        path: prepared.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        empty_mask: &raw const empty_mask,
    };

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_PIDFD as u64,
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: prepared.cgroup_dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a fork-like set of flags (no CLONE_VM, no new stack): the child gets
    // a private copy of this thread's memory and continues below with `ret == 0`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: this is the clone3 child; `plan` points into its copy of our memory.
        unsafe { run_child(&plan) }
    }
    if ret < 0 {
        return Err(fail(SpawnStage::Clone, io::Error::last_os_error()));
    }
    drop(report_write);
    // SAFETY: CLONE_PIDFD stored a new (close-on-exec) pidfd for the child; we own it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = Pid::from_raw(ret as libc::pid_t);

    let mut report = [0u8; 8];
    let got = read_report(&report_read, &mut report).map_err(|e| fail(SpawnStage::Prepare, e))?;
    if got < report.len() {
        // EOF without a report: execve succeeded and closed the pipe.
        return Ok(SpawnedChild { pid, pidfd });
    }
    // The child _exits right after reporting: reap it so no zombie is left behind.
    let _ = waitid_pidfd(pidfd.as_fd(), true);
    let [a, b, c, d, e, f, g, h] = report;
    let stage = stage_from(u32::from_ne_bytes([a, b, c, d]));
    let errno = i32::from_ne_bytes([e, f, g, h]);
    Err(fail(stage, io::Error::from_raw_os_error(errno)))
}

struct Job {
    prepared: Prepared,
    reply: mpsc::SyncSender<Result<SpawnedChild<OwnedFd>, HostError>>,
}

/// The one thread every worker is cloned from. It lives as long as its owner: dropping the
/// spawner ends the thread, and PR_SET_PDEATHSIG then kills every worker it started.
pub(super) struct Spawner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(super) fn start() -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name("helmetd-spawner".to_owned())
            .spawn(move || {
                for job in queue {
                    // The requester may have given up; the child is then reaped as an orphan.
                    let _ = job.reply.send(clone_into_cgroup(job.prepared));
                }
            })?;
        Ok(Spawner {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    pub(super) fn spawn(&self, prepared: Prepared) -> Result<SpawnedChild<OwnedFd>, HostError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or(HostError::SpawnerGone)?
            .send(Job { prepared, reply })
            .map_err(|_| HostError::SpawnerGone)?;
        answer.recv().map_err(|_| HostError::SpawnerGone)?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// waitid(P_PIDFD). Called directly because nix's wrapper reaps the child and then fails on
/// real-time signals, losing the status.
pub(super) fn waitid_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ExitStatus>> {
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: an all-zero siginfo_t is valid; the kernel fills it (or leaves si_pid 0).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer; the id is a pidfd we borrow.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &raw mut info,
                flags,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: for SIGCHLD siginfo the pid and status fields are the valid union members.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            _ => ExitStatus::Signaled(status),
        }));
    }
}

pub(super) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with no siginfo and no flags only reads its arguments.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new pidfd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Waits until every pidfd is readable (its process has ended) or the deadline passes.
pub(super) fn wait_pidfds(pidfds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<BorrowedFd<'_>> = pidfds.to_vec();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut polled: Vec<PollFd<'_>> = pending
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut polled, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let done: Vec<bool> = polled
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut index = 0;
        pending.retain(|_| {
            let keep = !done[index];
            index += 1;
            keep
        });
    }
    Ok(())
}
