//! Segment files: naming, the in-memory index of one file, and reading it back.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, HEADER_LEN, Header};
use super::{Entry, MAX_ID, SpoolError, io_error};

const SUFFIX: &str = ".seg";
const ID_DIGITS: usize = 20;

/// Zero-padded so that name order is id order, e.g. for `ls`.
pub(super) fn file_name(first_id: u64) -> String {
    format!("{first_id:0ID_DIGITS$}{SUFFIX}")
}

/// The first id of a segment file, or `None` for anything else that lives in the directory.
pub(super) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Refuses a segment whose name is beyond the id range: helmetd cannot have written it (see
/// [`MAX_ID`]), and ids counted on from there would run out or wrap.
pub(super) fn check_first_id(first_id: u64, path: &Path) -> Result<(), SpoolError> {
    if first_id > MAX_ID {
        return Err(SpoolError::IdOutOfRange {
            path: path.to_owned(),
            first_id,
        });
    }
    Ok(())
}

/// The valid records of one file. Record `i` has id `first_id + i`: the writer numbers records
/// consecutively within a file and the reader checks it, so ids need not be stored here.
pub(super) struct Segment {
    pub(super) first_id: u64,
    pub(super) path: PathBuf,
    /// Kept in memory so that peek, ack and the bounds never rescan a file: 16 bytes a record.
    records: Vec<RecordMeta>,
    /// Bytes of valid records: where the next one is appended.
    len: u64,
}

struct RecordMeta {
    offset: u64,
    created_ns: u64,
}

/// Where reading a file stopped before its end.
pub(super) struct Damage {
    pub(super) offset: u64,
    pub(super) file_len: u64,
    /// The bad record reaches the end of the file, as an interrupted append leaves it. Anything
    /// else is damage to data that was once complete.
    pub(super) torn: bool,
}

impl Segment {
    pub(super) fn new(first_id: u64, path: PathBuf) -> Segment {
        Segment {
            first_id,
            path,
            records: Vec::new(),
            len: 0,
        }
    }

    /// Reads every record up to the first one that is incomplete, fails its CRC, does not carry
    /// the next id, does not decode or would be numbered beyond [`MAX_ID`]. Nothing after that
    /// point is trusted: without a valid length there is no way to find where the next record
    /// starts.
    pub(super) fn scan(
        first_id: u64,
        path: PathBuf,
    ) -> Result<(Segment, Option<Damage>), SpoolError> {
        let file = File::open(&path).map_err(io_error("open segment", &path))?;
        let file_len = file
            .metadata()
            .map_err(io_error("stat segment", &path))?
            .len();
        Self::scan_from(
            first_id,
            path,
            BufReader::with_capacity(64 * 1024, file),
            file_len,
        )
    }

    /// [`scan`](Self::scan) over `file_len` bytes from `reader`.
    pub(super) fn scan_from(
        first_id: u64,
        path: PathBuf,
        mut reader: impl BufRead,
        file_len: u64,
    ) -> Result<(Segment, Option<Damage>), SpoolError> {
        check_first_id(first_id, &path)?;
        let mut segment = Segment::new(first_id, path);
        let mut body = Vec::new();
        let damage = loop {
            let offset = segment.len;
            let remaining = file_len - offset;
            if remaining == 0 {
                break None;
            }
            let damage = |torn| {
                Some(Damage {
                    offset,
                    file_len,
                    torn,
                })
            };
            let mut head = [0; HEADER_LEN];
            if remaining < HEADER_LEN as u64 {
                break damage(true);
            }
            reader
                .read_exact(&mut head)
                .map_err(io_error("read segment", &segment.path))?;
            let header = Header::parse(&head);
            if header.record_len() > remaining {
                break damage(true);
            }
            body.resize(header.body_len(), 0);
            reader
                .read_exact(&mut body)
                .map_err(io_error("read segment", &segment.path))?;
            let id = segment.end_id();
            match header.open(id, &body).filter(|_| id <= MAX_ID) {
                Some(entry) => segment.push(
                    record::nanos_since_epoch(entry.created),
                    header.record_len(),
                ),
                None => break damage(header.record_len() == remaining),
            }
        };
        Ok((segment, damage))
    }

    /// One past the last id held: the id the next appended record must carry.
    pub(super) fn end_id(&self) -> u64 {
        self.first_id + self.records.len() as u64
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn count(&self) -> usize {
        self.records.len()
    }

    /// Whether a record of `size` bytes belongs in a new segment. An empty segment takes any
    /// record, so an entry larger than the target still finds a home.
    pub(super) fn is_full(&self, size: u64, target: u64) -> bool {
        self.len > 0 && self.len + size > target
    }

    /// The index of `id`, or of the first record after it; `count()` when there is none.
    pub(super) fn index_of(&self, id: u64) -> usize {
        usize::try_from(id.saturating_sub(self.first_id))
            .map_or(self.count(), |i| i.min(self.count()))
    }

    pub(super) fn created_ns(&self, index: usize) -> u64 {
        self.records[index].created_ns
    }

    /// Record bytes from `index` to the end of the segment.
    pub(super) fn bytes_from(&self, index: usize) -> u64 {
        self.len - self.offset(index)
    }

    pub(super) fn record_len(&self, index: usize) -> u64 {
        self.offset(index + 1) - self.offset(index)
    }

    /// Records a record of `size` bytes just appended to the file.
    pub(super) fn push(&mut self, created_ns: u64, size: u64) {
        self.records.push(RecordMeta {
            offset: self.len,
            created_ns,
        });
        self.len += size;
    }

    /// Reads back the records at `indices`, checking them again: the disk may have decayed
    /// since the spool was opened, and a damaged entry must not go out as a valid message.
    pub(super) fn read(
        &self,
        indices: Range<usize>,
        out: &mut Vec<(u64, Entry)>,
    ) -> Result<(), SpoolError> {
        if indices.is_empty() {
            return Ok(());
        }
        let file = File::open(&self.path).map_err(io_error("open segment", &self.path))?;
        let mut buf = Vec::new();
        for index in indices {
            let id = self.first_id + index as u64;
            let offset = self.offset(index);
            buf.resize(self.record_len(index) as usize, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(io_error("read segment", &self.path))?;
            let entry = record::decode(id, &buf).ok_or_else(|| SpoolError::Corrupt {
                path: self.path.clone(),
                id,
                offset,
            })?;
            out.push((id, entry));
        }
        Ok(())
    }

    fn offset(&self, index: usize) -> u64 {
        self.records.get(index).map_or(self.len, |r| r.offset)
    }
}

/// Segment files in `dir`, oldest first. Everything else (the cursor, stray files, directories)
/// is left alone.
pub(super) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let item = item.map_err(io_error("list directory", dir))?;
        let is_file = item.file_type().is_ok_and(|t| t.is_file());
        if let Some(first_id) = item.file_name().to_str().and_then(parse_file_name)
            && is_file
        {
            found.push((first_id, item.path()));
        }
    }
    found.sort_unstable_by_key(|(first_id, _)| *first_id);
    Ok(found)
}
