//! One entry on disk: `[len u32 LE][crc32 u32 LE][id u64 LE][body]`.
//!
//! `len` counts the body only. The CRC covers the id and the body, so a record whose id was torn
//! or overwritten fails the check just like a damaged body. Body, integers little-endian:
//!
//! ```text
//! flags     u8    bit 0: retain; the other bits are zero (a set one means a newer writer)
//! created   u64   nanoseconds since the UNIX epoch
//! topic     u32 length, UTF-8 bytes
//! props     u32 count, then per property: u32 length + key, u32 length + value (UTF-8, key order)
//! payload   the rest of the body, raw
//! ```
//!
//! The payload goes last and unframed so a JPEG frame costs its own size plus a fixed 33 bytes,
//! 8 per property and the topic: nothing scales with the payload.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Entry;

pub(super) const HEADER_LEN: usize = 16;
const RETAIN: u8 = 1;

/// The complete record for `entry`, or `None` when its body would not fit the u32 length field.
pub(super) fn encode(id: u64, entry: &Entry) -> Option<Vec<u8>> {
    let props: usize = entry
        .properties
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    let body_len = 1 + 8 + 4 + entry.topic.len() + 4 + props + entry.payload.len();
    let len = u32::try_from(body_len).ok()?;
    let mut rec = Vec::with_capacity(HEADER_LEN + body_len);
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&id.to_le_bytes());
    rec.push(if entry.retain { RETAIN } else { 0 });
    rec.extend_from_slice(&nanos_since_epoch(entry.created).to_le_bytes());
    put_str(&mut rec, &entry.topic);
    // Fits: every property takes at least 8 of the body's u32-bounded bytes.
    rec.extend_from_slice(&(entry.properties.len() as u32).to_le_bytes());
    for (key, value) in &entry.properties {
        put_str(&mut rec, key);
        put_str(&mut rec, value);
    }
    rec.extend_from_slice(&entry.payload);
    let crc = crc32fast::hash(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(rec)
}

/// The entry in a whole record read back by offset, if it is intact and carries `expected_id`.
pub(super) fn decode(expected_id: u64, record: &[u8]) -> Option<Entry> {
    let (header, body) = record.split_first_chunk::<HEADER_LEN>()?;
    Header::parse(header).open(expected_id, body)
}

/// Stored as nanoseconds so entries round-trip exactly. A clock before 1970 is a misconfigured
/// clock, not a reason to refuse an alert: such times are stored as the epoch itself.
pub(super) fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(super) struct Header {
    body_len: u32,
    crc: u32,
    id: u64,
}

impl Header {
    pub(super) fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let [l0, l1, l2, l3, c0, c1, c2, c3, id @ ..] = *bytes;
        Header {
            body_len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            id: u64::from_le_bytes(id),
        }
    }

    pub(super) fn body_len(&self) -> usize {
        self.body_len as usize
    }

    pub(super) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// The entry, if `body` is what this header was written with and the record is the one that
    /// belongs at this position: a record from elsewhere would silently renumber everything after.
    pub(super) fn open(&self, expected_id: u64, body: &[u8]) -> Option<Entry> {
        if self.id != expected_id || body.len() != self.body_len() {
            return None;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.id.to_le_bytes());
        crc.update(body);
        if crc.finalize() != self.crc {
            return None;
        }
        decode_body(body)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Fits: the caller checked that the whole body fits a u32.
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn decode_body(body: &[u8]) -> Option<Entry> {
    let mut r = Reader(body);
    let flags = r.u8()?;
    if flags & !RETAIN != 0 {
        return None;
    }
    let created = UNIX_EPOCH + Duration::from_nanos(r.u64()?);
    let topic = r.str()?.to_owned();
    let mut properties = BTreeMap::new();
    // Bounded by the body: every round consumes at least 8 bytes or returns.
    for _ in 0..r.u32()? {
        let key = r.str()?.to_owned();
        properties.insert(key, r.str()?.to_owned());
    }
    Some(Entry {
        topic,
        payload: r.0.to_vec(),
        properties,
        retain: flags & RETAIN != 0,
        created,
    })
}

/// Bounds-checked little-endian reads: a damaged length yields `None`, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array().map(u8::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u32()?).ok()?;
        let (bytes, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        std::str::from_utf8(bytes).ok()
    }
}
