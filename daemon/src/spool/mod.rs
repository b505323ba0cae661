//! Crash-safe on-disk FIFO of MQTT messages the broker has not acknowledged yet.
//!
//! Alerts and hard-example frames are pushed here before they are published and leave only when
//! the broker's PUBACK comes back ([`Spool::ack`]), so a broker outage or a power cut delays them
//! instead of losing them. Delivery is at-least-once: after a crash some acked entries may be sent
//! again (how many depends on the [`FsyncPolicy`]); a returned id is never lost.
//!
//! # On disk
//!
//! The directory holds segment files named after the first id in them, zero-padded to 20 digits
//! (`00000000000000000001.seg`). Each is a plain sequence of records
//! `[len u32 LE][crc32 u32 LE][id u64 LE][body]` (see `record.rs` for the body), ids consecutive
//! within a file. Only the newest segment is appended to; older ones are deleted whole once every
//! record in them is acked, because deleting files is the only way to give space back without
//! rewriting data. `cursor` holds the ack position (see `cursor.rs`). Anything else in the
//! directory is ignored.
//!
//! Ids start at 1 and grow across restarts, up to [`MAX_ID`]: a segment named beyond it was not
//! written by helmetd and is set aside at open (renamed to `<name>.quarantined`), so a crafted
//! name cannot make ids wrap. The newest segment is kept even when fully acked, so
//! its name still carries the id high-water mark if the cursor is stale or damaged; and every id
//! below the oldest remaining segment counts as acked, since segments are only deleted once acked.
//!
//! # Recovery
//!
//! Opening reads and checks every record. At the first bad one (incomplete, wrong CRC, wrong id)
//! a file is read no further, as there is no trustworthy length to skip it by. In the newest file
//! that is where an interrupted append ended: the tail is cut off so appends continue after the
//! last complete record. A bad record with data after it means damage, not an interrupted write:
//! it is counted in [`SpoolStats::corrupt_records`] and the next file is read as usual.
//!
//! # A full disk
//!
//! A failed write leaves the files as they were (a partial record is cut off again) and pauses
//! pushes: until the retry time they fail at once without touching the disk, the delay doubling
//! from [`WRITE_RETRY_MIN`] to [`WRITE_RETRY_MAX`] while writes keep failing. So a full disk costs
//! one write attempt per step, creates no file per failed push, and is logged once per episode;
//! the owner decides what to do with the entries refused meanwhile (the uplink sends them
//! directly while the broker is connected).
//!
//! # Memory
//!
//! 16 bytes per spooled record (offset and creation time), so peeking, acking and enforcing the
//! bounds never rescan files: about 16 MB for a million small alerts.

mod cursor;
mod record;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use segment::Segment;

/// The largest spool id. Far beyond anything a gateway reaches (a million entries a second for
/// 292 000 years), and small enough that no id arithmetic on a valid spool can overflow.
pub const MAX_ID: u64 = i64::MAX as u64;
/// First pause after a failed write.
pub const WRITE_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause while writes keep failing: how long a freed disk may go unused.
pub const WRITE_RETRY_MAX: Duration = Duration::from_secs(30);

/// One message as the uplink will publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5 user properties, and the content type under a key the uplink chooses.
    pub properties: BTreeMap<String, String>,
    pub retain: bool,
    /// When the event happened; the age bound is measured from here, not from the push.
    pub created: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Bytes of un-acked records kept; beyond it the oldest are dropped. The disk may hold up to
    /// one segment more, since the acked front of the oldest segment waits for the rest of it.
    pub max_bytes: u64,
    /// Entries whose `created` is older than this are dropped: an alert that stale is no longer
    /// worth the bandwidth.
    pub max_age: Duration,
    /// Size at which a new segment is started. Space comes back a segment at a time, so this is
    /// also the most acked data left on disk.
    pub segment_bytes: u64,
}

impl SpoolLimits {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;

    pub fn new(max_bytes: u64, max_age: Duration) -> SpoolLimits {
        SpoolLimits {
            max_bytes,
            max_age,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// When the spool calls fsync, which decides what a power cut can take away.
///
/// A process crash (panic, OOM kill, `kill -9`) loses nothing under any policy: every record is
/// handed to the kernel with write(2) before `push` returns, and the page cache outlives the
/// process. Only a power cut or kernel crash reaches data that was not fsynced yet.
///
/// The ack cursor follows the same policy, but a stale cursor only means re-sending: after any
/// crash, entries acked since the cursor was last saved go out again. That is none under
/// `EveryRecord`, up to an interval's worth under `Interval`, and under `Never` at most the acked
/// part of the oldest segment, since fully acked segments are deleted and every id below the
/// oldest remaining one counts as acked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync every record before `push` returns, and save the cursor on every ack: an entry
    /// whose id was returned survives a power cut. Costs a flush per push and per ack (a few ms
    /// on eMMC or SD cards), which alert rates afford. The daemon's choice for alerts.
    #[default]
    EveryRecord,
    /// Flush at most once per interval: the first push (and, for the cursor, the first ack) after
    /// the interval has passed flushes everything written so far. A power cut loses at most the
    /// entries pushed during the last interval, provided the owner also calls [`Spool::sync`]
    /// at that period so that a quiet spell does not leave the last pushes unflushed. Suits
    /// high-rate, individually less precious data such as hard-example frames.
    Interval(Duration),
    /// Never flush from `push` or `ack`; only [`Spool::sync`] and dropping the spool do. The
    /// kernel writes back on its own schedule (about 30 s on Linux), so a power cut may lose
    /// that much. For tmpfs and tests.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Un-acked entries.
    pub entries: usize,
    /// Record bytes of the un-acked entries, what `max_bytes` bounds.
    pub bytes: u64,
    /// All segment files together, acked records not yet reclaimed included.
    pub disk_bytes: u64,
    pub segments: usize,
    /// Entries dropped unsent by `max_bytes` since open.
    pub dropped_full: u64,
    /// Entries dropped unsent by `max_age` since open.
    pub dropped_expired: u64,
    /// Bad records found inside segments at open; whatever followed one in its file is lost.
    pub corrupt_records: u64,
    /// Segments set aside at open because their name is beyond [`MAX_ID`].
    pub quarantined_segments: u64,
    /// Pushes that failed to write, or were refused while writes were paused after a failure.
    pub write_failures: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The record passed its check when the spool was opened and has been damaged since: the
    /// disk is failing. Acking `id` skips it.
    #[error("spool {}: record {id} at offset {offset} is damaged", path.display())]
    Corrupt { path: PathBuf, id: u64, offset: u64 },
    #[error("spool {}: entry for topic {topic:?} does not fit a record (4 GiB)", dir.display())]
    EntryTooLarge { dir: PathBuf, topic: String },
    /// Acking an id never handed out would mark future entries delivered before they are sent.
    #[error("spool {}: ack of id {id}, but the newest id handed out is {newest}", dir.display())]
    AckBeyondEnd { dir: PathBuf, id: u64, newest: u64 },
    #[error(
        "spool {}: segment starts at id {first_id}, beyond the largest id {MAX_ID}; not written by helmetd",
        path.display()
    )]
    IdOutOfRange { path: PathBuf, first_id: u64 },
    #[error("spool {}: every id up to {MAX_ID} is used", dir.display())]
    IdsExhausted { dir: PathBuf },
    /// A write failed recently; pushes fail without trying until the retry time.
    #[error("spool {}: writes paused after a failed write; next try in {retry_in:?}", dir.display())]
    WritesPaused { dir: PathBuf, retry_in: Duration },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io {
        path,
        action,
        source,
    }
}

/// The FIFO. One owner, synchronous calls: it is meant to live in a dedicated task (or thread)
/// that serialises pushes, peeks and acks, and it is `Send` so it can be moved there. Two
/// spools on one directory, in one process or two, corrupt each other.
pub struct Spool {
    dir: PathBuf,
    /// Kept open to fsync after creating, deleting or renaming files in it.
    dir_handle: File,
    limits: SpoolLimits,
    fsync: FsyncPolicy,
    /// Segments not appended to any more, oldest first.
    sealed: VecDeque<Segment>,
    /// The newest segment and its append handle. `None` when the next push must start a fresh
    /// file: right after open when ids do not continue the newest file, or after a failed write
    /// left the file's tail in doubt.
    active: Option<Active>,
    next_id: u64,
    /// Every id up to here is delivered or dropped.
    acked: u64,
    /// The active file has writes that were not fsynced yet.
    data_dirty: bool,
    data_synced_at: Instant,
    /// `acked` moved since the cursor file was last written.
    cursor_dirty: bool,
    cursor_saved_at: Instant,
    dropped_full: u64,
    dropped_expired: u64,
    corrupt_records: u64,
    quarantined_segments: u64,
    write_failures: u64,
    /// Set while writes fail: pushes are refused until `retry_at`.
    paused: Option<Paused>,
}

struct Paused {
    retry_at: Instant,
    delay: Duration,
}

/// What the bounds change in a push, restored if the write fails: nothing stored, nothing
/// dropped to make room for it.
struct Bounds {
    acked: u64,
    cursor_dirty: bool,
    dropped_full: u64,
    dropped_expired: u64,
}

struct Active {
    file: File,
    segment: Segment,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering from whatever a crash left:
    /// see the module documentation. The bounds are applied right away, so entries that expired
    /// while the gateway was off are dropped here.
    pub fn open(dir: &Path, limits: SpoolLimits, fsync: FsyncPolicy) -> Result<Spool, SpoolError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        if !existed && fsync != FsyncPolicy::Never {
            // Otherwise a power cut soon after the first start can take the directory, and with
            // it every entry fsynced into it.
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(parent)
                .and_then(|p| p.sync_all())
                .map_err(io_error("sync directory", parent))?;
        }
        let dir_handle = File::open(dir).map_err(io_error("open directory", dir))?;
        let saved_ack = cursor::load(dir)?;

        let mut found = segment::list(dir)?;
        let before = found.len();
        found.retain(
            |(first_id, path)| match segment::check_first_id(*first_id, path) {
                Ok(()) => true,
                Err(e) => {
                    quarantine(path, &e);
                    false
                }
            },
        );
        let quarantined_segments = (before - found.len()) as u64;
        let newest = found.len().checked_sub(1);
        let mut sealed = VecDeque::with_capacity(found.len());
        let mut corrupt_records = 0;
        for (i, (first_id, path)) in found.into_iter().enumerate() {
            let (segment, damage) = Segment::scan(first_id, path)?;
            let is_newest = Some(i) == newest;
            if let Some(damage) = damage {
                let cut = damage.file_len - damage.offset;
                if is_newest && damage.torn {
                    tracing::warn!(
                        path = %segment.path.display(),
                        bytes = cut,
                        "spool: cut off a record left incomplete by an interrupted write"
                    );
                } else {
                    corrupt_records += 1;
                    tracing::warn!(
                        path = %segment.path.display(),
                        offset = damage.offset,
                        lost_bytes = cut,
                        "spool: damaged record; the rest of this segment is unreadable and skipped"
                    );
                }
                if is_newest {
                    truncate(&segment.path, damage.offset, fsync)?;
                }
            }
            sealed.push_back(segment);
        }

        let acked = sealed
            .front()
            .map_or(saved_ack, |s| saved_ack.max(s.first_id.saturating_sub(1)));
        let next_id = sealed
            .iter()
            .map(Segment::end_id)
            .fold(acked.saturating_add(1), u64::max);
        let active = match sealed.pop_back() {
            Some(segment) if segment.end_id() == next_id => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_error("open segment", &segment.path))?;
                Some(Active { file, segment })
            }
            Some(segment) => {
                sealed.push_back(segment);
                None
            }
            None => None,
        };

        let now = Instant::now();
        let mut spool = Spool {
            dir: dir.to_owned(),
            dir_handle,
            limits,
            fsync,
            sealed,
            active,
            next_id,
            acked,
            data_dirty: false,
            data_synced_at: now,
            cursor_dirty: false,
            cursor_saved_at: now,
            dropped_full: 0,
            dropped_expired: 0,
            corrupt_records,
            quarantined_segments,
            write_failures: 0,
            paused: None,
        };
        spool.enforce_age();
        spool.enforce_size(0);
        spool.reclaim();
        // Only re-sending is at stake, which must not keep the uplink from starting on a full
        // disk; the save is retried with the next ack.
        if spool.cursor_due()
            && let Err(e) = spool.save_cursor()
        {
            tracing::warn!(error = %e, "spool: cannot save ack cursor; will retry");
        }
        Ok(spool)
    }

    /// Appends `entry` and returns its id. Once this returns, the entry survives a process crash,
    /// and under [`FsyncPolicy::EveryRecord`] a power cut too. Making room is never an error:
    /// expired and then the oldest un-acked entries are dropped, down to the new entry alone if
    /// it is bigger than `max_bytes` by itself.
    ///
    /// A failed write stores and drops nothing, and pauses writes: see the module documentation.
    pub fn push(&mut self, entry: &Entry) -> Result<u64, SpoolError> {
        if let Some(paused) = &self.paused
            && let Some(retry_in) = paused.retry_at.checked_duration_since(Instant::now())
        {
            self.write_failures += 1;
            return Err(SpoolError::WritesPaused {
                dir: self.dir.clone(),
                retry_in,
            });
        }
        let id = self.next_id;
        if id > MAX_ID {
            return Err(SpoolError::IdsExhausted {
                dir: self.dir.clone(),
            });
        }
        let record = record::encode(id, entry).ok_or_else(|| SpoolError::EntryTooLarge {
            dir: self.dir.clone(),
            topic: entry.topic.clone(),
        })?;
        let size = record.len() as u64;
        let bounds = self.bounds();
        self.enforce_age();
        self.enforce_size(size);

        let sync = match self.fsync {
            FsyncPolicy::EveryRecord => true,
            FsyncPolicy::Interval(period) => self.data_synced_at.elapsed() >= period,
            FsyncPolicy::Never => false,
        };
        let created_ns = record::nanos_since_epoch(entry.created);
        if let Err(e) = self.append(&record, created_ns, sync) {
            self.restore(bounds);
            self.write_failed(&e);
            return Err(e);
        }
        if self.paused.take().is_some() {
            tracing::info!(
                dir = %self.dir.display(),
                write_failures = self.write_failures,
                "spool: writes work again"
            );
        }
        self.next_id += 1;
        if sync {
            self.data_dirty = false;
            self.data_synced_at = Instant::now();
        } else {
            self.data_dirty = true;
        }
        self.reclaim();
        // Dropping entries moved the cursor; failing to save it only risks re-sending them,
        // which must not turn a stored entry into a failed push.
        if self.cursor_due()
            && let Err(e) = self.save_cursor()
        {
            tracing::warn!(error = %e, "spool: cannot save ack cursor; will retry");
        }
        Ok(id)
    }

    /// The oldest un-acked entries, at most `max`, oldest first: what to (re)send after a
    /// reconnect.
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, Entry)>, SpoolError> {
        self.peek_after(self.acked, max)
    }

    /// Like [`peek`](Self::peek) but starting after `id`, for an uplink that keeps several
    /// messages in flight and must not re-read the ones it already sent.
    pub fn peek_after(&self, id: u64, max: usize) -> Result<Vec<(u64, Entry)>, SpoolError> {
        let from = id.max(self.acked).saturating_add(1);
        let mut out = Vec::new();
        for segment in self.segments() {
            let start = segment.index_of(from);
            let end = segment.count().min(start.saturating_add(max - out.len()));
            segment.read(start..end, &mut out)?;
            if out.len() == max {
                break;
            }
        }
        Ok(out)
    }

    /// Marks `id` and everything before it delivered.
    ///
    /// Acks must come in id order, which holds for QoS 1 on one MQTT session: a broker sends
    /// PUBACKs in the order it received the PUBLISHes (MQTT 5.0 §4.6), so the uplink acks the
    /// id behind each PUBACK as it arrives. An ack at or below the current position is ignored.
    /// If the session is lost, entries sent but not acked are simply peeked and sent again.
    ///
    /// An error means the position could not be saved; it has still moved in memory, and the
    /// save is retried with the next ack or [`sync`](Self::sync).
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        if id <= self.acked {
            return Ok(());
        }
        if id >= self.next_id {
            return Err(SpoolError::AckBeyondEnd {
                dir: self.dir.clone(),
                id,
                newest: self.next_id - 1,
            });
        }
        self.acked = id;
        self.cursor_dirty = true;
        self.reclaim();
        if self.cursor_due() {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Flushes pending records and the ack position to disk whatever the policy: the periodic
    /// call [`FsyncPolicy::Interval`] needs, and what a clean shutdown does (dropping the spool
    /// calls it too).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.data_dirty
            && let Some(active) = &self.active
        {
            active
                .file
                .sync_data()
                .map_err(io_error("sync segment", &active.segment.path))?;
        }
        self.data_dirty = false;
        self.data_synced_at = Instant::now();
        if self.cursor_dirty {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Un-acked entries.
    pub fn len(&self) -> usize {
        self.segments()
            .map(|s| s.count() - s.index_of(self.first_pending()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record bytes of the un-acked entries, what [`SpoolLimits::max_bytes`] bounds.
    pub fn bytes(&self) -> u64 {
        self.segments()
            .map(|s| s.bytes_from(s.index_of(self.first_pending())))
            .sum()
    }

    /// Entries dropped unsent since open, by either bound.
    pub fn dropped_oldest(&self) -> u64 {
        self.dropped_full + self.dropped_expired
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            entries: self.len(),
            bytes: self.bytes(),
            disk_bytes: self.segments().map(Segment::len).sum(),
            segments: self.segments().count(),
            dropped_full: self.dropped_full,
            dropped_expired: self.dropped_expired,
            corrupt_records: self.corrupt_records,
            quarantined_segments: self.quarantined_segments,
            write_failures: self.write_failures,
        }
    }

    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed
            .iter()
            .chain(self.active.as_ref().map(|a| &a.segment))
    }

    fn first_pending(&self) -> u64 {
        self.acked.saturating_add(1)
    }

    fn syncs(&self) -> bool {
        self.fsync != FsyncPolicy::Never
    }

    fn cursor_due(&self) -> bool {
        self.cursor_dirty
            && match self.fsync {
                FsyncPolicy::EveryRecord => true,
                FsyncPolicy::Interval(period) => self.cursor_saved_at.elapsed() >= period,
                FsyncPolicy::Never => false,
            }
    }

    fn save_cursor(&mut self) -> Result<(), SpoolError> {
        cursor::store(&self.dir, &self.dir_handle, self.acked)?;
        self.cursor_dirty = false;
        self.cursor_saved_at = Instant::now();
        Ok(())
    }

    /// Writes `record` as the next id into the active segment, starting a new one when it is
    /// full or there is none.
    fn append(&mut self, record: &[u8], created_ns: u64, sync: bool) -> Result<(), SpoolError> {
        let size = record.len() as u64;
        let active = match self.active.take() {
            Some(active) if !active.segment.is_full(size, self.limits.segment_bytes) => {
                self.active.insert(active)
            }
            old => self.roll(old)?,
        };
        let Err(failure) = active.append(record, created_ns, sync) else {
            return Ok(());
        };
        // A file cut back to its last record takes the next append as if nothing happened, so
        // a full disk does not leave a new file per failed write.
        if !failure.tail_intact {
            // The file's tail is in doubt: keep what it held before, continue in a fresh file,
            // and skip the id so that file's name cannot collide with this one's.
            if let Some(active) = self.active.take() {
                self.sealed.push_back(active.segment);
            }
            self.next_id += 1;
        }
        Err(failure.error)
    }

    fn write_failed(&mut self, error: &SpoolError) {
        self.write_failures += 1;
        let delay = self
            .paused
            .as_ref()
            .map_or(WRITE_RETRY_MIN, |p| (p.delay * 2).min(WRITE_RETRY_MAX));
        if self.paused.is_none() {
            tracing::warn!(
                %error,
                "spool: cannot store entries; pushes fail until a write succeeds, retried every \
                 {WRITE_RETRY_MIN:?} doubling to {WRITE_RETRY_MAX:?} (see write_failures)"
            );
        } else {
            tracing::debug!(%error, "spool: write failed again; next try in {delay:?}");
        }
        self.paused = Some(Paused {
            retry_at: Instant::now() + delay,
            delay,
        });
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            acked: self.acked,
            cursor_dirty: self.cursor_dirty,
            dropped_full: self.dropped_full,
            dropped_expired: self.dropped_expired,
        }
    }

    fn restore(&mut self, bounds: Bounds) {
        self.acked = bounds.acked;
        self.cursor_dirty = bounds.cursor_dirty;
        self.dropped_full = bounds.dropped_full;
        self.dropped_expired = bounds.dropped_expired;
    }

    /// Seals `old` (flushing it first, as the interval flush only reaches the active file) and
    /// starts a new segment named after the next id.
    fn roll(&mut self, old: Option<Active>) -> Result<&mut Active, SpoolError> {
        if let Some(old) = old {
            if self.data_dirty
                && self.syncs()
                && let Err(e) = old.file.sync_data()
            {
                let path = old.segment.path.clone();
                self.active = Some(old);
                return Err(io_error("sync segment", &path)(e));
            }
            self.sealed.push_back(old.segment);
        }
        self.data_dirty = false;
        let path = self.dir.join(segment::file_name(self.next_id));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        if self.syncs()
            && let Err(e) = self.dir_handle.sync_all()
        {
            // A file whose name may not survive a power cut must not receive records.
            let _ = fs::remove_file(&path);
            return Err(io_error("sync directory", &self.dir)(e));
        }
        Ok(self.active.insert(Active {
            file,
            segment: Segment::new(self.next_id, path),
        }))
    }

    fn enforce_age(&mut self) {
        let Some(cutoff) = SystemTime::now().checked_sub(self.limits.max_age) else {
            return;
        };
        let cutoff = record::nanos_since_epoch(cutoff);
        let dropped = self.drop_oldest_while(|_, created_ns, _| created_ns < cutoff);
        if dropped > 0 && self.dropped_expired == 0 {
            tracing::warn!(
                max_age = ?self.limits.max_age,
                "spool: dropping undelivered entries older than max_age (see dropped_expired)"
            );
        }
        self.dropped_expired += dropped;
    }

    /// Makes room for `incoming` more bytes under `max_bytes`. With nothing incoming (at open)
    /// the newest entry stays even when it alone exceeds the bound, as `push` stored it so.
    fn enforce_size(&mut self, incoming: u64) {
        let mut excess = (self.bytes() + incoming).saturating_sub(self.limits.max_bytes);
        let newest = self.next_id - 1;
        let dropped = self.drop_oldest_while(|id, _, size| {
            let more = excess > 0 && (incoming > 0 || id < newest);
            excess = excess.saturating_sub(size);
            more
        });
        if dropped > 0 && self.dropped_full == 0 {
            tracing::warn!(
                max_bytes = self.limits.max_bytes,
                "spool: full, dropping the oldest undelivered entries (see dropped_full)"
            );
        }
        self.dropped_full += dropped;
    }

    /// Advances the ack position over un-acked entries, oldest first, while
    /// `drop(id, created_ns, record_len)` says so. Returns how many were dropped. The entries stay
    /// in their files until the segment is reclaimed, like acked ones.
    ///
    /// Entries are pushed in event order in practice, so stopping at the first one to keep is
    /// enough; a rare older entry behind a newer one waits until it reaches the front.
    fn drop_oldest_while(&mut self, mut drop: impl FnMut(u64, u64, u64) -> bool) -> u64 {
        let mut acked = self.acked;
        let mut dropped = 0;
        'segments: for segment in self.segments() {
            for index in segment.index_of(acked.saturating_add(1))..segment.count() {
                let id = segment.first_id + index as u64;
                if !drop(id, segment.created_ns(index), segment.record_len(index)) {
                    break 'segments;
                }
                acked = id;
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.acked = acked;
            self.cursor_dirty = true;
        }
        dropped
    }

    /// Deletes sealed segments whose records are all acked, oldest first. The newest segment is
    /// kept (its name is the id high-water mark). A failure only costs disk space until the next
    /// attempt, so it is logged rather than failing the push or ack that triggered it.
    fn reclaim(&mut self) {
        let mut removed = false;
        while let Some(oldest) = self.sealed.front()
            && oldest.end_id() <= self.first_pending()
            && (self.active.is_some() || self.sealed.len() > 1)
        {
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(
                        path = %oldest.path.display(),
                        error = %e,
                        "spool: cannot delete delivered segment; will retry"
                    );
                    break;
                }
            }
            self.sealed.pop_front();
            removed = true;
        }
        if removed
            && self.syncs()
            && let Err(e) = self.dir_handle.sync_all()
        {
            // Deleted segments coming back after a power cut are only re-sent, never lost.
            tracing::warn!(dir = %self.dir.display(), error = %e, "spool: cannot sync directory");
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "spool: final sync failed; acked entries may be re-sent");
        }
    }
}

/// A failed [`Active::append`].
struct AppendFailure {
    error: SpoolError,
    /// The file was cut back to its last complete record.
    tail_intact: bool,
}

impl Active {
    /// Appends one record (and fdatasyncs it when `sync`). On failure the file is cut back to its
    /// last complete record, so a half-written one does not hide the records after it on the
    /// next open.
    fn append(&mut self, record: &[u8], created_ns: u64, sync: bool) -> Result<(), AppendFailure> {
        let len = self.segment.len();
        let written = (&self.file)
            .write_all(record)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            return Err(AppendFailure {
                error: io_error("append to segment", &self.segment.path)(e),
                tail_intact: self.file.set_len(len).is_ok(),
            });
        }
        self.segment.push(created_ns, record.len() as u64);
        Ok(())
    }
}

/// Sets aside a segment whose name is out of range, so later opens do not meet it again. It is
/// left in the directory for a person to look at.
fn quarantine(path: &Path, problem: &SpoolError) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".quarantined");
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => tracing::error!(
            error = %problem,
            moved_to = %aside.display(),
            "spool: segment skipped and set aside"
        ),
        Err(e) => tracing::error!(
            error = %problem,
            rename_error = %e,
            "spool: segment skipped; cannot set it aside, so it is skipped again at every open"
        ),
    }
}

/// What [`parse_segment`] found in a segment file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSegment {
    /// Valid records, in order from the first id.
    pub records: usize,
    /// Bytes those records take: where appends would continue.
    pub valid_bytes: u64,
    /// Reading stopped at a bad record before the end.
    pub damaged: bool,
}

/// Checks a segment file's bytes as opening the spool does, for the segment named after
/// `first_id`. Fails for a name out of range.
pub fn parse_segment(first_id: u64, bytes: &[u8]) -> Result<ParsedSegment, SpoolError> {
    let (segment, damage) = Segment::scan_from(
        first_id,
        PathBuf::from("<bytes>"),
        bytes,
        bytes.len() as u64,
    )?;
    Ok(ParsedSegment {
        records: segment.count(),
        valid_bytes: segment.len(),
        damaged: damage.is_some(),
    })
}

/// The ack position in a cursor file's bytes, if they are an intact one.
pub fn parse_cursor(bytes: &[u8]) -> Option<u64> {
    cursor::check(bytes).ok()
}

/// Cuts the newest segment back to its last complete record, so appends continue from there.
fn truncate(path: &Path, len: u64, fsync: FsyncPolicy) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open segment", path))?;
    file.set_len(len)
        .and_then(|()| {
            if fsync == FsyncPolicy::Never {
                Ok(())
            } else {
                file.sync_data()
            }
        })
        .map_err(io_error("truncate segment", path))
}
