//! A size cap on the output folders. The annotated frames are a record to browse, not data to
//! keep forever: a gateway left running for months must keep its recent pictures without filling
//! the disk its spool and logs live on. So the oldest files go first.
//!
//! The index of the files is built once at start (a previous run's files count too) and kept in
//! memory, about 100 bytes a file, so a write never rescans a folder.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::frame::Frame;
use crate::output::{
    ALL_EXAMPLES, HARD_EXAMPLE_CLOUD, HARD_EXAMPLE_EDGE, Outcome, OutputError, SednaOutputs,
};

/// Files in some folders, oldest first, kept under a total size.
#[derive(Debug)]
pub struct OutputBudget {
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    files: VecDeque<(PathBuf, u64)>,
    bytes: u64,
    /// Files removed to stay under the cap, since start.
    removed: u64,
    /// A removal failed; logged once.
    remove_failed: bool,
}

impl OutputBudget {
    /// Indexes the regular files in `dirs`, oldest first by modification time, and removes the
    /// oldest beyond `max_bytes` right away.
    pub fn open(dirs: &[PathBuf], max_bytes: u64) -> Result<Self, OutputError> {
        let mut found = Vec::new();
        for dir in dirs {
            let io = |source| OutputError::Io {
                path: dir.clone(),
                source,
            };
            for item in std::fs::read_dir(dir).map_err(io)? {
                let item = item.map_err(io)?;
                // Not followed: a link's target is not ours to count or remove.
                let Ok(meta) = item.metadata() else { continue };
                if meta.is_file() {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((modified, item.path(), meta.len()));
                }
            }
        }
        found.sort_unstable();
        let budget = Self {
            max_bytes,
            index: Mutex::new(Index::default()),
        };
        budget.add_sized(found.into_iter().map(|(_, path, len)| (path, len)));
        Ok(budget)
    }

    /// Counts files just written, as the newest, and removes the oldest files while the total
    /// is over the cap. Returns how many were removed.
    pub fn add(&self, written: &[PathBuf]) -> u64 {
        self.add_sized(written.iter().filter_map(|path| {
            // Gone already (removed by hand): nothing to count.
            let len = std::fs::metadata(path).ok()?.len();
            Some((path.clone(), len))
        }))
    }

    /// Bytes of the indexed files.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Files removed to stay under the cap since start.
    pub fn removed(&self) -> u64 {
        self.lock().removed
    }

    fn add_sized(&self, files: impl IntoIterator<Item = (PathBuf, u64)>) -> u64 {
        let mut index = self.lock();
        for (path, len) in files {
            index.bytes += len;
            index.files.push_back((path, len));
        }
        let mut removed = 0;
        while index.bytes > self.max_bytes
            && let Some((path, len)) = index.files.pop_front()
        {
            index.bytes -= len;
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // Left out of the index all the same, or every later write would try again.
                Err(e) if !index.remove_failed => {
                    index.remove_failed = true;
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove an old output file; the output size cap may be exceeded"
                    );
                }
                Err(_) => {}
            }
        }
        if removed > 0 && index.removed == 0 {
            tracing::info!(
                max_bytes = self.max_bytes,
                "output folders reached their size cap; removing the oldest files from now on"
            );
        }
        index.removed += removed;
        removed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // Nothing under the lock panics; a poisoned lock still guards a consistent index.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`SednaOutputs`] whose folders are kept under a total size by an [`OutputBudget`].
#[derive(Debug)]
pub struct CappedOutputs {
    outputs: SednaOutputs,
    budget: OutputBudget,
}

impl CappedOutputs {
    /// Creates the folders under `root` (see [`SednaOutputs::create`]) and caps them together at
    /// `max_bytes`, counting what they already hold.
    pub fn create(
        root: &Path,
        jpeg_quality: u8,
        class_names: Vec<String>,
        max_bytes: u64,
    ) -> Result<Self, OutputError> {
        let outputs = SednaOutputs::create(root, jpeg_quality, class_names)?;
        let dirs = [ALL_EXAMPLES, HARD_EXAMPLE_EDGE, HARD_EXAMPLE_CLOUD].map(|d| root.join(d));
        Ok(Self {
            outputs,
            budget: OutputBudget::open(&dirs, max_bytes)?,
        })
    }

    /// [`SednaOutputs::write`], then the oldest files beyond the cap are removed.
    pub fn write(&self, frame: &Frame, outcome: &Outcome<'_>) -> Result<Vec<PathBuf>, OutputError> {
        let written = self.outputs.write(frame, outcome)?;
        self.budget.add(&written);
        Ok(written)
    }

    pub fn budget(&self) -> &OutputBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, len: usize) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        path
    }

    #[test]
    fn oldest_files_go_first_and_existing_files_count() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let old = write(&a, "old", 400);
        let epoch = std::fs::File::options().write(true).open(&old).unwrap();
        epoch.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let older_link = b.join("link");
        std::os::unix::fs::symlink(&old, &older_link).unwrap();
        let kept = write(&b, "kept", 400);

        let budget = OutputBudget::open(&[a.clone(), b.clone()], 1000).unwrap();
        assert_eq!(budget.bytes(), 800, "links are not counted");
        let new = write(&a, "new", 400);
        assert_eq!(budget.add(std::slice::from_ref(&new)), 1);
        assert!(!old.exists() && kept.exists() && new.exists());
        assert!(
            older_link.symlink_metadata().is_ok(),
            "links are left alone"
        );
        assert_eq!(budget.bytes(), 800);

        // A file removed by hand in the meantime is simply skipped.
        std::fs::remove_file(&kept).unwrap();
        let newer = write(&b, "newer", 400);
        assert_eq!(budget.add(std::slice::from_ref(&newer)), 0);
        assert_eq!(budget.bytes(), 800);
        assert_eq!(budget.removed(), 1);
        assert!(new.exists() && newer.exists());

        // Reopening below the cap removes nothing; above it, the oldest at once.
        assert_eq!(
            OutputBudget::open(&[a.clone(), b.clone()], 800)
                .unwrap()
                .removed(),
            0
        );
        let reopened = OutputBudget::open(&[a, b], 500).unwrap();
        assert_eq!(reopened.removed(), 1);
        assert!(!new.exists() && newer.exists());
    }
}
