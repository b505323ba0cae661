//! Helpers shared by the test binaries that need real worker cgroups.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use helmetd::supervisor::Layout;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const MOUNT: &str = "/sys/fs/cgroup";

/// A test-unique cgroup root (`helmetd-test-<pid>-<n>`) in the cgroup2 hierarchy; on drop
/// everything in it is killed and all its directories, v1 mirrors included, are removed
/// depth-first.
pub struct TestRoot {
    pub layout: Layout,
    pub name: String,
}

impl TestRoot {
    /// `None` (with the reason printed) where the cgroup2 hierarchy cannot be written.
    pub fn new(test: &str) -> Option<TestRoot> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let layout = match Layout::detect(Path::new(MOUNT)) {
            Ok(layout) => layout,
            Err(e) => {
                println!("SKIPPED {test}: no usable cgroup2 hierarchy: {e}");
                return None;
            }
        };
        let name = format!(
            "helmetd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = layout.unified_mount().join(&name);
        if let Err(e) = fs::create_dir(&dir) {
            println!("SKIPPED {test}: cannot create {}: {e}", dir.display());
            return None;
        }
        Some(TestRoot { layout, name })
    }

    pub fn path(&self) -> PathBuf {
        self.layout.unified_mount().join(&self.name)
    }

    /// `edge.worker.cgroup_root=<path>`, for `--set`.
    pub fn arg(&self) -> String {
        format!("edge.worker.cgroup_root={}", self.path().display())
    }

    /// Our directory in the v1 hierarchy of `controller` ("cpu" or "memory"), on hybrid hosts.
    pub fn v1(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::Hybrid { cpu, memory, .. } => match controller {
                "cpu" => cpu.as_ref(),
                "memory" => memory.as_ref(),
                _ => None,
            }
            .map(|mount| mount.join(&self.name)),
            Layout::Unified { .. } => None,
        }
    }

    /// Every tree of ours: the cgroup2 one first, then the v1 mirrors.
    pub fn trees(&self) -> Vec<PathBuf> {
        std::iter::once(self.path())
            .chain(self.v1("cpu"))
            .chain(self.v1("memory"))
            .collect()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = fs::write(self.path().join("cgroup.kill"), "1");
        for tree in self.trees() {
            let mut all = Vec::new();
            dirs_below(&tree, &mut all);
            all.push(tree);
            // v1 has no cgroup.kill: the pids listed in our own directories.
            for dir in &all {
                for pid in pids_in(dir) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            for dir in &all {
                while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if dir.exists() {
                    eprintln!("warning: could not remove {}", dir.display());
                }
            }
        }
    }
}

/// Every directory below `dir`, children before their parents.
pub fn dirs_below(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs_below(&entry.path(), out);
                out.push(entry.path());
            }
        }
    }
}

/// The pids listed in a cgroup's `cgroup.procs`.
pub fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The environment of a daemon a test starts (workers inherit it): text logs without colour at
/// `rust_log`, and never the journald stream or systemd notify socket of whatever runs the tests.
pub fn test_daemon_env<'c>(
    cmd: &'c mut std::process::Command,
    rust_log: &str,
) -> &'c mut std::process::Command {
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", rust_log)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
}
