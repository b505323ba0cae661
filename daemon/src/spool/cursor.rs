//! The ack position, so that a restart resumes where delivery stopped instead of replaying the
//! whole spool.
//!
//! File `cursor`: `[acked id u64 LE][crc32 of those 8 bytes u32 LE]`. It is replaced by writing
//! `cursor.tmp`, fsyncing it, renaming it over `cursor` and fsyncing the directory, so a power cut
//! leaves the old position or the new one, never a torn one.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::{SpoolError, io_error};

const FILE: &str = "cursor";
const TMP: &str = "cursor.tmp";

/// The saved position; 0 (nothing acked) when there is none. A damaged file is only a warning:
/// the spool still derives a safe position from its segment names, and re-delivering entries is
/// allowed where losing them is not.
pub(super) fn load(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("read cursor", &path)(e)),
    };
    let acked = bytes.split_first_chunk::<8>().and_then(|(id, crc)| {
        let crc = u32::from_le_bytes(crc.try_into().ok()?);
        (crc32fast::hash(id) == crc).then(|| u64::from_le_bytes(*id))
    });
    Ok(acked.unwrap_or_else(|| {
        tracing::warn!(
            path = %path.display(),
            "spool: ack cursor is damaged; entries acked before the crash may be sent again"
        );
        0
    }))
}

pub(super) fn store(dir: &Path, dir_handle: &File, acked: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(TMP);
    let id = acked.to_le_bytes();
    let mut bytes = [0; 12];
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
