//! The messages between the daemon and a `helmetd worker`, one SEQPACKET datagram each.
//!
//! Pixels never travel here (they are in the shared-memory slots, see [`super::shm`]); these are
//! small fixed-layout little-endian records, so encoding is a few stores and decoding a few
//! bounds-checked loads, with no allocation on the per-frame path.
//!
//! Every message starts with `[version: u8][kind: u8]`. The version is there because the
//! daemon spawns workers from the executable on disk: after a package upgrade a new worker binary
//! may talk to an old daemon, and that must be a clear error, not misread boxes.
//!
//! | kind | direction | body (little-endian) | bytes |
//! |---|---|---|---|
//! | 0x01 Infer | daemon → worker | job u64, slot u8, seq u64, letterbox: orig_w u32, orig_h u32, input_w u32, input_h u32, scale f64, content_w u32, content_h u32, pad_left u32, pad_top u32 | 59 |
//! | 0x02 Drain | daemon → worker | — | 2 |
//! | 0x81 Ready | worker → daemon | pid u32, input_w u32, input_h u32, num_classes u16, load_ms u32 | 20 |
//! | 0x82 Result | worker → daemon | job u64, infer_us u32, count u16, count × (x1 f32, y1 f32, x2 f32, y2 f32, score f32, class u16) | 16 + 22·count ≤ 6616 |
//! | 0x83 Failed | worker → daemon | has_job u8 (0/1), job u64, len u16, reason UTF-8 (≤ 1024 bytes) | 13 + len |
//! | 0x84 Heartbeat | worker → daemon | jobs_done u64, busy_ms u32 | 14 |
//!
//! Only what the daemon acts on travels here. How a worker answers (a model, or the benchmark's
//! `--fake-infer-ms` stand-in) is its own command line's business, which the daemon chose.
//!
//! Decoding is exact: a short message, trailing bytes, an unknown kind, more than
//! [`MAX_DETECTIONS`] boxes or an implausible letterbox are typed [`DecodeError`]s.

use helmet_pipelines::{Detection, Detections, Letterbox, MAX_DETECTIONS};

/// Bumped on any change to the layouts above. 2: Ready lost its flags byte.
pub const VERSION: u8 = 2;

const KIND_INFER: u8 = 0x01;
const KIND_DRAIN: u8 = 0x02;
const KIND_READY: u8 = 0x81;
const KIND_RESULT: u8 = 0x82;
const KIND_FAILED: u8 = 0x83;
const KIND_HEARTBEAT: u8 = 0x84;

const HEADER_LEN: usize = 2;
const BOX_LEN: usize = 5 * 4 + 2;
const RESULT_FIXED_LEN: usize = HEADER_LEN + 8 + 4 + 2;
/// Failure reasons are cut (at a character boundary) to this many bytes.
pub const MAX_REASON: usize = 1024;
/// The largest message either side sends: a Result with [`MAX_DETECTIONS`] boxes.
pub const MAX_MESSAGE: usize = RESULT_FIXED_LEN + MAX_DETECTIONS * BOX_LEN;

/// Daemon → worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Infer(Infer),
    /// Finish every job sent before this message, then exit 0. Messages are handled in order,
    /// so "in flight" is at most the shared-memory slots: draining is bounded by their count.
    Drain,
}

/// Run the model on the frame in shared-memory slot `slot`.
#[derive(Debug, Clone, PartialEq)]
pub struct Infer {
    pub job: u64,
    pub slot: u8,
    /// The camera's frame sequence number, so worker logs can be matched to frames.
    pub seq: u64,
    /// Needed to map boxes back to original-image pixels, which the worker does.
    pub letterbox: Letterbox,
}

/// Worker → daemon.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant carries the per-frame boxes and is the common one; boxing it would add an allocation per frame"
)]
pub enum ToDaemon {
    Ready(Ready),
    Result(InferResult),
    /// `job` is `None` when the worker itself cannot go on (model load failed, undecodable
    /// message): it exits right after sending this.
    Failed {
        job: Option<u64>,
        reason: String,
    },
    /// Sent every `--heartbeat-ms` by a separate thread. `busy_ms` (time spent on the current
    /// job, 0 when idle) lets the daemon tell a hung inference from a slow one: the heartbeat
    /// thread keeps running while the inference thread is stuck.
    Heartbeat {
        jobs_done: u64,
        busy_ms: u32,
    },
}

/// The model is loaded; the worker takes jobs from now on.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub pid: u32,
    pub input_w: u32,
    pub input_h: u32,
    pub num_classes: u16,
    pub load_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferResult {
    pub job: u64,
    /// Time the worker spent in the model (pre-processing, run, decode, NMS), not counting the
    /// copy out of shared memory.
    pub infer_us: u32,
    /// In original-image pixels, best first.
    pub detections: Detections,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error(
        "protocol version {found}, this binary speaks {VERSION} (daemon and worker binaries differ?)"
    )]
    Version { found: u8 },
    #[error("unknown message kind {kind:#04x} for this direction")]
    UnknownKind { kind: u8 },
    #[error("{kind} message truncated: needs at least {needed} bytes, got {got}")]
    Truncated {
        kind: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{kind} message has {extra} unexpected trailing bytes")]
    TrailingBytes { kind: &'static str, extra: usize },
    #[error("message of {len} bytes exceeds the protocol maximum of {MAX_MESSAGE}")]
    TooLong { len: usize },
    #[error("Result carries {count} boxes, more than {MAX_DETECTIONS}")]
    TooManyBoxes { count: u16 },
    #[error("{kind} message: invalid {field}")]
    Invalid {
        kind: &'static str,
        field: &'static str,
    },
}

impl ToWorker {
    /// Replaces the contents of `out` with the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            ToWorker::Infer(m) => {
                header(out, KIND_INFER);
                put_u64(out, m.job);
                out.push(m.slot);
                put_u64(out, m.seq);
                let lb = &m.letterbox;
                for v in [lb.orig_w, lb.orig_h, lb.input_w, lb.input_h] {
                    put_u32(out, v);
                }
                out.extend_from_slice(&lb.scale.to_le_bytes());
                for v in [lb.content_w, lb.content_h, lb.pad_left, lb.pad_top] {
                    put_u32(out, v);
                }
            }
            ToWorker::Drain => header(out, KIND_DRAIN),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (kind, mut r) = Reader::open(bytes)?;
        let message = match kind {
            KIND_INFER => {
                r.kind = "Infer";
                let job = r.u64()?;
                let slot = r.u8()?;
                let seq = r.u64()?;
                let (orig_w, orig_h, input_w, input_h) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let scale = r.f64()?;
                let (content_w, content_h, pad_left, pad_top) =
                    (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let letterbox = Letterbox {
                    orig_w,
                    orig_h,
                    input_w,
                    input_h,
                    scale,
                    content_w,
                    content_h,
                    pad_left,
                    pad_top,
                };
                check_letterbox(&letterbox)?;
                ToWorker::Infer(Infer {
                    job,
                    slot,
                    seq,
                    letterbox,
                })
            }
            KIND_DRAIN => {
                r.kind = "Drain";
                ToWorker::Drain
            }
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        r.finish()?;
        Ok(message)
    }
}

/// A letterbox the worker would divide by or index with must be self-consistent; garbage here
/// would otherwise come back as NaN or absurd boxes.
fn check_letterbox(lb: &Letterbox) -> Result<(), DecodeError> {
    let invalid = |field| DecodeError::Invalid {
        kind: "Infer",
        field,
    };
    if !(lb.scale.is_finite() && lb.scale > 0.0) {
        return Err(invalid("letterbox scale"));
    }
    if lb.orig_w == 0 || lb.orig_h == 0 || lb.input_w == 0 || lb.input_h == 0 {
        return Err(invalid("letterbox size (zero)"));
    }
    let fits = |pad: u32, content: u32, input: u32| {
        content > 0 && pad.checked_add(content).is_some_and(|end| end <= input)
    };
    if !fits(lb.pad_left, lb.content_w, lb.input_w) || !fits(lb.pad_top, lb.content_h, lb.input_h) {
        return Err(invalid("letterbox content rectangle"));
    }
    Ok(())
}

impl ToDaemon {
    /// Replaces the contents of `out` with the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            ToDaemon::Ready(m) => {
                header(out, KIND_READY);
                for v in [m.pid, m.input_w, m.input_h] {
                    put_u32(out, v);
                }
                out.extend_from_slice(&m.num_classes.to_le_bytes());
                put_u32(out, m.load_ms);
            }
            ToDaemon::Result(m) => {
                header(out, KIND_RESULT);
                put_u64(out, m.job);
                put_u32(out, m.infer_us);
                // Detections cannot hold more than MAX_DETECTIONS (300), so this cannot truncate.
                let count = u16::try_from(m.detections.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_le_bytes());
                for d in &m.detections {
                    for v in [d.x1, d.y1, d.x2, d.y2, d.score] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    out.extend_from_slice(&d.class.to_le_bytes());
                }
            }
            ToDaemon::Failed { job, reason } => {
                header(out, KIND_FAILED);
                out.push(u8::from(job.is_some()));
                put_u64(out, job.unwrap_or(0));
                let reason = truncate_at_char(reason, MAX_REASON);
                // MAX_REASON < u16::MAX.
                out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            ToDaemon::Heartbeat { jobs_done, busy_ms } => {
                header(out, KIND_HEARTBEAT);
                put_u64(out, *jobs_done);
                put_u32(out, *busy_ms);
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (kind, mut r) = Reader::open(bytes)?;
        let message = match kind {
            KIND_READY => {
                r.kind = "Ready";
                let (pid, input_w, input_h) = (r.u32()?, r.u32()?, r.u32()?);
                let num_classes = r.u16()?;
                let load_ms = r.u32()?;
                ToDaemon::Ready(Ready {
                    pid,
                    input_w,
                    input_h,
                    num_classes,
                    load_ms,
                })
            }
            KIND_RESULT => {
                r.kind = "Result";
                let job = r.u64()?;
                let infer_us = r.u32()?;
                let count = r.u16()?;
                if usize::from(count) > MAX_DETECTIONS {
                    return Err(DecodeError::TooManyBoxes { count });
                }
                // Check the whole length first so a short message fails before any work.
                r.need(usize::from(count) * BOX_LEN)?;
                let mut detections = Detections::new();
                for _ in 0..count {
                    let d = Detection {
                        x1: r.f32()?,
                        y1: r.f32()?,
                        x2: r.f32()?,
                        y2: r.f32()?,
                        score: r.f32()?,
                        class: r.u16()?,
                    };
                    // Cannot fail: count <= MAX_DETECTIONS was checked above.
                    let _ = detections.push(d);
                }
                ToDaemon::Result(InferResult {
                    job,
                    infer_us,
                    detections,
                })
            }
            KIND_FAILED => {
                r.kind = "Failed";
                let has_job = r.u8()?;
                let job = r.u64()?;
                let len = usize::from(r.u16()?);
                if len > MAX_REASON {
                    return Err(DecodeError::Invalid {
                        kind: "Failed",
                        field: "reason length",
                    });
                }
                let reason = std::str::from_utf8(r.bytes(len)?)
                    .map_err(|_| DecodeError::Invalid {
                        kind: "Failed",
                        field: "reason (not UTF-8)",
                    })?
                    .to_owned();
                let job = match has_job {
                    0 => None,
                    1 => Some(job),
                    _ => {
                        return Err(DecodeError::Invalid {
                            kind: "Failed",
                            field: "job flag",
                        });
                    }
                };
                ToDaemon::Failed { job, reason }
            }
            KIND_HEARTBEAT => {
                r.kind = "Heartbeat";
                ToDaemon::Heartbeat {
                    jobs_done: r.u64()?,
                    busy_ms: r.u32()?,
                }
            }
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        r.finish()?;
        Ok(message)
    }
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn header(out: &mut Vec<u8>, kind: u8) {
    out.push(VERSION);
    out.push(kind);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Bounds-checked little-endian reads; every read past the end is a `Truncated` error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn open(bytes: &'a [u8]) -> Result<(u8, Self), DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLong { len: bytes.len() });
        }
        match bytes {
            [] => Err(DecodeError::Empty),
            [version, ..] if *version != VERSION => Err(DecodeError::Version { found: *version }),
            [_] => Err(DecodeError::Truncated {
                kind: "header",
                needed: HEADER_LEN,
                got: 1,
            }),
            [_, kind, ..] => Ok((
                *kind,
                Reader {
                    bytes,
                    pos: HEADER_LEN,
                    kind: "message",
                },
            )),
        }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.bytes.len() - self.pos < n {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                needed: self.pos + n,
                got: self.bytes.len(),
            });
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n)?;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        self.array().map(f32::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        self.array().map(f64::from_le_bytes)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                kind: self.kind,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn infer() -> ToWorker {
        ToWorker::Infer(Infer {
            job: 0x0102_0304_0506_0708,
            slot: 1,
            seq: 42,
            letterbox: Letterbox::new(1280, 720, 640, 384),
        })
    }

    fn result(boxes: usize) -> ToDaemon {
        let mut detections = Detections::new();
        for i in 0..boxes {
            let f = i as f32;
            detections
                .push(Detection {
                    x1: f,
                    y1: f + 0.5,
                    x2: f + 10.25,
                    y2: f + 20.0,
                    score: 0.5 + f / 1000.0,
                    class: (i % 2) as u16,
                })
                .unwrap();
        }
        ToDaemon::Result(InferResult {
            job: 9,
            infer_us: 123_456,
            detections,
        })
    }

    fn daemon_messages() -> Vec<ToDaemon> {
        vec![
            ToDaemon::Ready(Ready {
                pid: 4242,
                input_w: 640,
                input_h: 384,
                num_classes: 2,
                load_ms: 1500,
            }),
            result(0),
            result(3),
            result(MAX_DETECTIONS),
            ToDaemon::Failed {
                job: Some(7),
                reason: "frame is 10x10, model needs 640x384 ✗".into(),
            },
            ToDaemon::Failed {
                job: None,
                reason: String::new(),
            },
            ToDaemon::Heartbeat {
                jobs_done: 1 << 40,
                busy_ms: 250,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut buf = Vec::new();
        for m in [infer(), ToWorker::Drain] {
            m.encode(&mut buf);
            assert_eq!(ToWorker::decode(&buf), Ok(m));
        }
        for m in daemon_messages() {
            m.encode(&mut buf);
            assert!(buf.len() <= MAX_MESSAGE);
            assert_eq!(ToDaemon::decode(&buf), Ok(m));
        }
    }

    #[test]
    fn sizes_match_the_documented_layout() {
        let mut buf = Vec::new();
        infer().encode(&mut buf);
        assert_eq!(buf.len(), 59);
        result(MAX_DETECTIONS).encode(&mut buf);
        assert_eq!(buf.len(), MAX_MESSAGE);
        assert_eq!(MAX_MESSAGE, 6616);
        ToDaemon::Heartbeat {
            jobs_done: 0,
            busy_ms: 0,
        }
        .encode(&mut buf);
        assert_eq!(buf.len(), 14);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut buf = Vec::new();
        for m in [infer(), ToWorker::Drain] {
            m.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(ToWorker::decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
        for m in daemon_messages() {
            m.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(ToDaemon::decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_version_and_direction_are_checked() {
        let mut buf = Vec::new();
        ToWorker::Drain.encode(&mut buf);
        buf.push(0);
        assert!(matches!(
            ToWorker::decode(&buf),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        ToWorker::Drain.encode(&mut buf);
        buf[0] = VERSION + 1;
        assert_eq!(
            ToWorker::decode(&buf),
            Err(DecodeError::Version { found: VERSION + 1 })
        );
        ToWorker::Drain.encode(&mut buf);
        assert_eq!(
            ToDaemon::decode(&buf),
            Err(DecodeError::UnknownKind { kind: KIND_DRAIN })
        );
    }

    #[test]
    fn implausible_fields_are_rejected() {
        let mut buf = Vec::new();
        result(1).encode(&mut buf);
        buf[14..16].copy_from_slice(&301u16.to_le_bytes());
        assert_eq!(
            ToDaemon::decode(&buf),
            Err(DecodeError::TooManyBoxes { count: 301 })
        );

        let mut bad = Letterbox::new(1280, 720, 640, 384);
        bad.scale = f64::NAN;
        let m = ToWorker::Infer(Infer {
            job: 1,
            slot: 0,
            seq: 0,
            letterbox: bad,
        });
        m.encode(&mut buf);
        assert!(matches!(
            ToWorker::decode(&buf),
            Err(DecodeError::Invalid { .. })
        ));

        ToDaemon::Failed {
            job: Some(1),
            reason: "ok".into(),
        }
        .encode(&mut buf);
        buf[2] = 2;
        assert!(matches!(
            ToDaemon::decode(&buf),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let mut buf = Vec::new();
        let reason = "é".repeat(MAX_REASON);
        ToDaemon::Failed { job: None, reason }.encode(&mut buf);
        let Ok(ToDaemon::Failed { reason, .. }) = ToDaemon::decode(&buf) else {
            panic!("long reason did not round trip");
        };
        assert_eq!(reason.len(), MAX_REASON);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut valid = Vec::new();
        infer().encode(&mut valid);
        let mut buf = Vec::new();
        result(5).encode(&mut buf);
        let templates = [valid, buf];
        for i in 0..50_000 {
            let mut bytes: Vec<u8> = if i % 2 == 0 {
                // Mostly short noise, sometimes up to past the maximum size.
                let max = if i % 100 == 0 { MAX_MESSAGE + 8 } else { 80 };
                let mut b = vec![0u8; rng.gen_range(0..max)];
                rng.fill(b.as_mut_slice());
                b
            } else {
                // Mutations of valid messages reach deeper than pure noise.
                let mut b = templates[i % templates.len()].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.r#gen();
                }
                b.truncate(rng.gen_range(0..=b.len()));
                b
            };
            if i % 3 == 0 && !bytes.is_empty() {
                bytes[0] = VERSION;
            }
            let _ = ToWorker::decode(&bytes);
            let _ = ToDaemon::decode(&bytes);
        }
    }
}
