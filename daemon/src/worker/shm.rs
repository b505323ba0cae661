//! Frame pixels between the daemon and one worker: a memfd holding [`SLOTS`] slots of
//! `input_w × input_h × 3` bytes, mapped on both sides, so a 0.7 MB frame is never pushed
//! through the socket.
//!
//! Ownership of a slot is carried by the protocol, not by locks: the daemon writes a slot only
//! while no job refers to it, then sends `Infer { slot }`; the slot is the worker's until its
//! `Result`/`Failed` for that job arrives. The worker copies the slot out at the start of the job
//! (a `Frame` owns a `Vec<u8>`; that one ~0.7 MB memcpy would go away if `Detector` accepted a
//! pixel slice).
//!
//! The memfd is sealed against shrinking and growing: the worker gets a writable descriptor, and
//! a buggy worker truncating it would otherwise make the daemon's next write into its mapping a
//! SIGBUS, taking the whole gateway down with one worker.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use memmap2::{Mmap, MmapMut, MmapOptions};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// Two slots: one being inferred while the next frame is written into the other, so the worker
/// never waits for the daemon's copy.
pub const SLOTS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error(
        "{input_w}x{input_h} is not a usable frame slot size (zero, or {SLOTS} slots overflow the address space)"
    )]
    BadSize { input_w: u32, input_h: u32 },
    #[error("memfd_create for the frame slots failed: {0}")]
    Create(#[source] nix::Error),
    #[error("sizing the frame memfd to {len} bytes failed: {source}")]
    Resize {
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("sealing the frame memfd failed: {0}")]
    Seal(#[source] nix::Error),
    #[error("inspecting the frame memfd failed: {0}")]
    Stat(#[source] io::Error),
    #[error(
        "frame memfd is {found} bytes, {expected} expected for {SLOTS} slots of {input_w}x{input_h} RGB"
    )]
    WrongSize {
        found: u64,
        expected: usize,
        input_w: u32,
        input_h: u32,
    },
    #[error("mapping the frame memfd failed: {0}")]
    Map(#[source] io::Error),
}

/// Bytes of one slot: one packed RGB frame at the model input size.
pub fn slot_len(input_w: u32, input_h: u32) -> Result<usize, ShmError> {
    usize::try_from(input_w)
        .ok()
        .and_then(|w| w.checked_mul(usize::try_from(input_h).ok()?))
        .and_then(|px| px.checked_mul(3))
        .filter(|&len| len > 0 && len.checked_mul(SLOTS).is_some())
        .ok_or(ShmError::BadSize { input_w, input_h })
}

/// The daemon's side: writes frames into free slots.
#[derive(Debug)]
pub struct SlotWriter {
    map: MmapMut,
    slot_len: usize,
}

impl SlotWriter {
    /// Creates the sealed memfd and maps it. Returns the descriptor to hand to the worker; the
    /// daemon keeps only the mapping.
    pub fn create(input_w: u32, input_h: u32) -> Result<(SlotWriter, OwnedFd), ShmError> {
        let slot_len = slot_len(input_w, input_h)?;
        let len = slot_len * SLOTS;
        let fd = memfd_create(
            c"helmetd-frames",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(ShmError::Create)?;
        let file = File::from(fd);
        file.set_len(len as u64)
            .map_err(|source| ShmError::Resize { len, source })?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(ShmError::Seal)?;
        // SAFETY: the memfd was created above and sealed at exactly `len` bytes, so the mapping
        // can never extend past the end of the file (no SIGBUS). Other processes write to it only
        // by protocol violation; the daemon never reads from it, so a misbehaving worker can at
        // worst corrupt pixels the daemon has already handed over. `populate` pre-faults the
        // pages so the first frames are not slower than the rest.
        let map = unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }
            .map_err(ShmError::Map)?;
        Ok((SlotWriter { map, slot_len }, OwnedFd::from(file)))
    }

    /// `None` for an out-of-range slot.
    pub fn slot_mut(&mut self, slot: usize) -> Option<&mut [u8]> {
        let start = slot.checked_mul(self.slot_len)?;
        self.map.get_mut(start..start.checked_add(self.slot_len)?)
    }
}

/// The worker's side: reads the slot an `Infer` names.
#[derive(Debug)]
pub struct SlotReader {
    map: Mmap,
    slot_len: usize,
}

impl SlotReader {
    /// Maps the inherited memfd read-only after checking its size against the model input the
    /// worker was started for, so a mismatched daemon/worker pair fails at start-up.
    pub fn open(fd: OwnedFd, input_w: u32, input_h: u32) -> Result<SlotReader, ShmError> {
        let slot_len = slot_len(input_w, input_h)?;
        let expected = slot_len * SLOTS;
        let file = File::from(fd);
        let found = file.metadata().map_err(ShmError::Stat)?.len();
        if found != expected as u64 {
            return Err(ShmError::WrongSize {
                found,
                expected,
                input_w,
                input_h,
            });
        }
        // SAFETY: the file is exactly the mapped length and sealed against shrinking by the
        // daemon (SlotWriter::create), so reads stay within the file. The daemon writes a slot
        // only while no job refers to it (module docs), and the worker reads only the slot of
        // the job it is running, so the bytes it reads do not change under it.
        let map = unsafe { MmapOptions::new().len(expected).map(&file) }.map_err(ShmError::Map)?;
        Ok(SlotReader { map, slot_len })
    }

    /// `None` for an out-of-range slot.
    pub fn slot(&self, slot: usize) -> Option<&[u8]> {
        let start = slot.checked_mul(self.slot_len)?;
        self.map.get(start..start.checked_add(self.slot_len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_memfd_see_the_same_slots() {
        let (mut writer, fd) = SlotWriter::create(8, 4).unwrap();
        let reader = SlotReader::open(fd, 8, 4).unwrap();
        writer.slot_mut(0).unwrap().fill(1);
        let pattern: Vec<u8> = (0..96).map(|i| i as u8).collect();
        writer.slot_mut(1).unwrap().copy_from_slice(&pattern);
        assert!(reader.slot(0).unwrap().iter().all(|&b| b == 1));
        assert_eq!(reader.slot(1).unwrap(), pattern.as_slice());
        assert!(reader.slot(SLOTS).is_none());
        assert!(writer.slot_mut(SLOTS).is_none());
        assert!(reader.slot(usize::MAX).is_none());
    }

    #[test]
    fn the_size_is_sealed() {
        let (_writer, fd) = SlotWriter::create(8, 4).unwrap();
        let file = File::from(fd);
        assert!(file.set_len(0).is_err(), "shrinking must be refused");
        assert!(file.set_len(1 << 20).is_err(), "growing must be refused");
        assert_eq!(file.metadata().unwrap().len(), 2 * 96);
    }

    #[test]
    fn a_reader_for_another_input_size_is_refused() {
        let (_writer, fd) = SlotWriter::create(8, 4).unwrap();
        assert!(matches!(
            SlotReader::open(fd, 640, 384),
            Err(ShmError::WrongSize { found: 192, .. })
        ));
    }

    #[test]
    fn zero_and_absurd_sizes_are_errors_not_overflows() {
        assert!(matches!(
            slot_len(u32::MAX, u32::MAX),
            Err(ShmError::BadSize { .. })
        ));
        assert!(matches!(slot_len(0, 384), Err(ShmError::BadSize { .. })));
        assert_eq!(slot_len(640, 384).unwrap(), 737_280);
    }
}
