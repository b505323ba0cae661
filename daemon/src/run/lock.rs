//! One daemon per worker cgroup root: a second daemon's start-up sweep would kill the first one's
//! workers, which the first would restart, without end. The lock is an `flock` (released when
//! the process dies, however it dies) on a file named after the root's real path, so two
//! instances with their own delegated cgroups (`helmetd@a`, `helmetd@b`) never meet.
//!
//! The file lives in the service's own runtime directory: systemd's `RuntimeDirectory=`
//! (`$RUNTIME_DIRECTORY`), else `/run/helmetd`, created 0700. Not `/run/lock`, where any local
//! user may create files: one could pre-create the lock (or a symlink in its place) and hold it,
//! and the daemon would never start. A directory others can write to, a symlink, or a lock file
//! that is not this user's is refused, with the path in the error.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::supervisor::CgroupRoot;

/// Without systemd's `RuntimeDirectory=`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/helmetd";
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("{}: {why}; refusing it for helmetd's start-up lock", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error(
        "another helmetd already runs workers under {root} (lock {}); give this one its own \
         edge.worker.cgroup_root",
        path.display()
    )]
    Held { root: String, path: PathBuf },
}

/// The directory for the lock: `$RUNTIME_DIRECTORY` (its first entry), else
/// [`DEFAULT_RUNTIME_DIR`].
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

/// The lock for `root`, in [`runtime_dir`]. Held until the returned value is dropped.
pub fn lock_cgroup_root(root: &CgroupRoot) -> anyhow::Result<Flock<File>> {
    let real = match root {
        CgroupRoot::Path(path) => path.clone(),
        // Delegated: our own cgroup, which the workers' subtree is made under.
        CgroupRoot::Delegated { .. } => {
            let own = crate::supervisor::own_cgroup()?;
            Path::new(CGROUP_MOUNT).join(own.strip_prefix("/").unwrap_or(&own))
        }
    };
    Ok(lock(&runtime_dir(), &real)?)
}

/// Locks `root` with a file in `dir`, creating `dir` (0700) if missing.
pub fn lock(dir: &Path, root: &Path) -> Result<Flock<File>, LockError> {
    let io_err = |path: &Path, what| {
        let path = path.to_path_buf();
        move |source| LockError::Io { path, what, source }
    };
    let untrusted = |path: &Path, why: String| LockError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    let euid = euid();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir, "creating"))?;
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir, "inspecting"))?;
    if !meta.is_dir() {
        return Err(untrusted(dir, "not a directory (a symlink?)".into()));
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(untrusted(
            dir,
            format!("owned by uid {}, not by uid {euid} or root", meta.uid()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            dir,
            format!("others may write to it (mode {:o})", meta.mode() & 0o7777),
        ));
    }

    let path = dir.join(lock_name(root));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                untrusted(&path, "a symlink".into())
            } else {
                io_err(&path, "opening")(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err(&path, "inspecting"))?;
    if !meta.is_file() || meta.uid() != euid {
        return Err(untrusted(
            &path,
            format!(
                "not a regular file of uid {euid} (owner uid {}, mode {:o})",
                meta.uid(),
                meta.mode()
            ),
        ));
    }
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| LockError::Held {
        root: root.display().to_string(),
        path,
    })
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `cgroup-<path>.lock` with the path escaped as systemd escapes unit paths (`/` → `-`, other
/// bytes outside `[A-Za-z0-9:_.]` → `\xNN`), so distinct roots get distinct names; a root too
/// long for a file name gets its SHA-256 instead.
fn lock_name(root: &Path) -> String {
    let bytes = root.as_os_str().as_encoded_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut name = String::with_capacity(trimmed.len());
    for &b in trimmed {
        match b {
            b'/' => name.push('-'),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                name.push(char::from(b))
            }
            b => name.push_str(&format!("\\x{b:02x}")),
        }
    }
    if name.len() > 200 {
        name = crate::kubeedge::certs::sha256_hex(bytes);
    }
    format!("cgroup-{name}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    const A: &str = "/sys/fs/cgroup/system.slice/system-helmetd.slice/helmetd@a.service";
    const B: &str = "/sys/fs/cgroup/system.slice/system-helmetd.slice/helmetd@b.service";

    #[test]
    fn two_roots_do_not_collide_and_one_root_is_held_once() {
        let dir = private_dir();
        let run = dir.path().join("run-helmetd");
        let a = lock(&run, Path::new(A)).unwrap();
        let _b = lock(&run, Path::new(B)).expect("another instance's root is its own");
        match lock(&run, Path::new(A)) {
            Err(e @ LockError::Held { .. }) => {
                assert!(e.to_string().contains("helmetd@a.service"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        lock(&run, Path::new(A)).expect("free again once the holder is gone");
        let mode = fs::metadata(&run).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "created private");
        assert_ne!(lock_name(Path::new("/a/b")), lock_name(Path::new("/a-b")));
        assert_ne!(lock_name(Path::new("/a_b")), lock_name(Path::new("/a/b")));
    }

    #[test]
    fn a_lock_file_of_another_user_is_refused() {
        assert!(
            euid() == 0,
            "this test gives a file to another user: it needs root (as scripts/test runs)"
        );
        let dir = private_dir();
        let path = dir.path().join(lock_name(Path::new(A)));
        File::create(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        match lock(dir.path(), Path::new(A)) {
            Err(e @ LockError::Untrusted { .. }) => {
                let text = e.to_string();
                assert!(text.contains("owner uid 65534"), "{text}");
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_symlink_or_a_shared_directory_is_refused() {
        let dir = private_dir();
        let target = dir.path().join("elsewhere");
        File::create(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(lock_name(Path::new(A)))).unwrap();
        assert!(matches!(
            lock(dir.path(), Path::new(A)),
            Err(LockError::Untrusted { .. })
        ));

        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        match lock(&shared, Path::new(A)) {
            Err(e @ LockError::Untrusted { .. }) => {
                assert!(e.to_string().contains("others may write"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
