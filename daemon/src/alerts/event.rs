//! The alert event as published on `<prefix>/<node>/<camera>/alert`, and the per-tracker counts for
//! stats.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// Frigate's three event types, so that consumers written for `frigate/events` read ours unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    New,
    Update,
    End,
}

/// Whose detections the frame carries: a hard example answered by the cloud in time is judged by
/// the big model, every other frame by the edge model. Subscribers weigh an alert by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    Edge,
    Cloud,
}

/// One message of an episode. For `new` and `update` the frame-level fields (`score`, `label`,
/// `box`, `count`, `zones`, `source`, `frame_seq`) describe the frame that caused the event, whose image the
/// caller publishes as the snapshot. An `end` has no frame of its own: its frame-level fields
/// summarise the episode instead (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub id: String,
    pub camera: String,
    /// The tracked person the episode belongs to; unique within the camera for one run.
    pub track_id: u64,
    pub label: String,
    pub score: f32,
    pub top_score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub count: usize,
    /// Frames the person was seen in so far.
    pub frames: u32,
    /// The zones holding the foot point of `box`, in config order.
    pub zones: Vec<String>,
    #[serde(serialize_with = "ser_time")]
    pub start_time: SystemTime,
    #[serde(serialize_with = "ser_opt_time")]
    pub end_time: Option<SystemTime>,
    pub source: DecisionSource,
    pub frame_seq: u64,
    pub snapshot: bool,
}

/// Events emitted so far by one tracker, for the stats topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub new: u64,
    pub update: u64,
    pub end: u64,
}

impl EventCounts {
    pub(super) fn record(&mut self, kind: EventKind) {
        let n = match kind {
            EventKind::New => &mut self.new,
            EventKind::Update => &mut self.update,
            EventKind::End => &mut self.end,
        };
        *n = n.saturating_add(1);
    }
}

/// First second humantime cannot format (year 10000).
const RFC3339_END_SECS: u64 = 253_402_300_800;

/// humantime panics on times before 1970 and makes serde_json panic on times after 9999, and both
/// come from the caller's clock; a failed serialization is the caller's to log, a panic would take
/// the camera's alerts down.
fn rfc3339<E: serde::ser::Error>(t: SystemTime) -> Result<humantime::Rfc3339Timestamp, E> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() < RFC3339_END_SECS => Ok(humantime::format_rfc3339_millis(t)),
        _ => Err(E::custom(
            "time outside 1970..=9999 cannot be written as RFC 3339",
        )),
    }
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&rfc3339::<S::Error>(*t)?)
}

fn ser_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}
