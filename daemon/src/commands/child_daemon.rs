//! `helmetd run` (or `helmetd cloud`) as a child process of a benchmark that measures it from
//! outside (`bench idle`, `bench footprint`, `bench fleet`): started with an environment of its
//! own, stopped by its own pid with SIGTERM and a bounded wait, and killed on drop if it still
//! runs, so a failed bench leaves no daemon behind.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a stopping daemon is checked for its exit.
const EXIT_POLL: Duration = Duration::from_millis(50);

pub(crate) struct ChildDaemon {
    child: Child,
}

impl ChildDaemon {
    /// `helmetd <global…> run --config <config> --set <each of sets>`, its stderr to `stderr`.
    pub(crate) fn spawn(
        helmetd: &Path,
        global: &[&str],
        config: &Path,
        sets: &[String],
        stderr: Stdio,
    ) -> anyhow::Result<ChildDaemon> {
        let mut args: Vec<OsString> = global.iter().map(OsString::from).collect();
        args.extend(["run".into(), "--config".into(), config.into()]);
        for set in sets {
            args.extend(["--set".into(), set.into()]);
        }
        Self::spawn_args(helmetd, &args, stderr)
    }

    /// `helmetd <args…>`, its stderr to `stderr`.
    pub(crate) fn spawn_args(
        helmetd: &Path,
        args: &[OsString],
        stderr: Stdio,
    ) -> anyhow::Result<ChildDaemon> {
        let mut cmd = Command::new(helmetd);
        cmd.args(args)
            .env("RUST_LOG", "info,ort=warn")
            .env("NO_COLOR", "1")
            // Whatever runs the bench must not get the daemon's notifications or journal.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", helmetd.display()))?;
        Ok(ChildDaemon { child })
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr, when spawned with `Stdio::piped()`; once.
    pub(crate) fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Its exit status once it has exited.
    pub(crate) fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGTERM by its pid, then its exit status within `timeout`; `None` when it ignored the
    /// signal that long (dropping it then kills it).
    pub(crate) fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, Signal::SIGTERM).context("SIGTERM to helmetd")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(EXIT_POLL);
        }
    }
}

/// CPU time of process `pid` in clock ticks: utime + stime, every thread, ended ones included.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    // utime and stime are fields 14 and 15 of proc_pid_stat(5), 12th and 13th after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{stat_path}: no field {} in {stat:?}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
