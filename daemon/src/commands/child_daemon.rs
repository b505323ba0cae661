//! `helmetd run` as a child process of a benchmark that measures it from outside (`bench idle`,
//! `bench footprint`): started with an environment of its own, stopped by its own pid with
//! SIGTERM and a bounded wait, and killed on drop if it still runs, so a failed bench leaves no
//! daemon behind.

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
        let mut cmd = Command::new(helmetd);
        cmd.args(global)
            .args(["run", "--config"])
            .arg(config)
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
        for set in sets {
            cmd.args(["--set", set]);
        }
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

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
