//! A small tmpfs mounted for one test: a real filesystem that really runs out of space.
//!
//! Mounting needs root (or CAP_SYS_ADMIN). Where it is refused, [`Tmpfs::mount`] returns the
//! error and the test fails: a full-disk test that quietly ran on an unbounded disk would prove
//! nothing.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

const FILLER: &str = "filler";
const FILL_CHUNK: usize = 4096;

/// A tmpfs of a fixed size on a fresh temporary mount point, unmounted on drop.
pub struct Tmpfs {
    mount_point: TempDir,
    size: u64,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to whole pages by the kernel).
    pub fn mount(size: u64) -> Result<Self> {
        let mount_point = tempfile::Builder::new().prefix("helmetd-tmpfs").tempdir()?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(mount_point.path())
            .output()
            .context("running mount(8)")?;
        if !output.status.success() {
            bail!(
                "cannot mount a tmpfs on {} (root needed): {}",
                mount_point.path().display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Self { mount_point, size })
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Fills every free byte with one file; returns how many bytes it took. Whatever else lives
    /// on the filesystem keeps the pages it already has, so a file can still grow within its
    /// last page.
    pub fn fill(&self) -> Result<u64> {
        let path = self.filler();
        let mut file = File::create(&path).with_context(|| format!("{}", path.display()))?;
        let chunk = [0xA5u8; FILL_CHUNK];
        let mut written = 0u64;
        // Bounded: the filesystem cannot take more than its size.
        for _ in 0..=self.size / FILL_CHUNK as u64 + 1 {
            match file.write(&chunk) {
                Ok(0) => return Ok(written),
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => return Ok(written),
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        }
        bail!("{} took more than the filesystem's size", path.display())
    }

    /// Gives back the space [`fill`](Self::fill) took.
    pub fn free(&self) -> Result<()> {
        let path = self.filler();
        std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))
    }

    fn filler(&self) -> PathBuf {
        self.path().join(FILLER)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.mount_point.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still has a file open in it: detach now, the kernel frees it later.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mount_point.path())
                .status();
        }
    }
}
