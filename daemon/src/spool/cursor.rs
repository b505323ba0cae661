//! The ack position, so that a restart resumes where delivery stopped instead of replaying the
//! whole spool.
//!
//! File `cursor`: `[acked id u64 LE][crc32 of those 8 bytes u32 LE]`. It is replaced by writing
//! `cursor.tmp`, fsyncing it, renaming it over `cursor` and fsyncing the directory, so a power cut
//! leaves the old position or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{MAX_ID, SpoolError, io_error};

const FILE: &str = "cursor";
const TMP: &str = "cursor.tmp";
const LEN: usize = 12;
/// Read no further than this: the file is 12 bytes, and one that is not is damaged anyway.
const MAX_FILE_BYTES: u64 = 4096;

/// The saved position; 0 (nothing acked) when there is none. A damaged file is only a warning:
/// the spool still derives a safe position from its segment names, and re-delivering entries is
/// allowed where losing them is not.
pub(super) fn load(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(FILE);
    // Non-blocking, so a FIFO planted under the name cannot hang the open.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("open cursor", &path)(e)),
    };
    let is_file = file
        .metadata()
        .map_err(io_error("stat cursor", &path))?
        .is_file();
    let mut bytes = Vec::with_capacity(LEN);
    let parsed = if is_file {
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error("read cursor", &path))?;
        check(&bytes)
    } else {
        Err("not a regular file")
    };
    Ok(parsed.unwrap_or_else(|problem| {
        tracing::warn!(
            path = %path.display(),
            problem,
            "spool: ack cursor is damaged; entries acked before the crash may be sent again"
        );
        0
    }))
}

/// The position in a cursor file's bytes, or what is wrong with them.
pub(super) fn check(bytes: &[u8]) -> Result<u64, &'static str> {
    let bytes: &[u8; LEN] = bytes.try_into().map_err(|_| {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            "larger than 4 KiB"
        } else {
            "not 12 bytes long"
        }
    })?;
    let [id @ .., c0, c1, c2, c3] = *bytes;
    if crc32fast::hash(&id) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Err("checksum mismatch");
    }
    let acked = u64::from_le_bytes(id);
    if acked > MAX_ID {
        return Err("position beyond the largest spool id");
    }
    Ok(acked)
}

pub(super) fn store(dir: &Path, dir_handle: &File, acked: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(TMP);
    let id = acked.to_le_bytes();
    let mut bytes = [0; LEN];
    bytes[..8].copy_from_slice(&id);
    bytes[8..].copy_from_slice(&crc32fast::hash(&id).to_le_bytes());
    let mut file = File::create(&tmp).map_err(io_error("create cursor", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write cursor", &tmp))?;
    let path = dir.join(FILE);
    fs::rename(&tmp, &path).map_err(io_error("replace cursor", &path))?;
    dir_handle
        .sync_all()
        .map_err(io_error("sync directory", dir))
}
