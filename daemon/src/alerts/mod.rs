//! Violation episodes per camera, turned into Frigate-style `new` / `update` / `end` events.
//!
//! The tracker is a pure state machine: the caller passes the frame's time in, so episodes are
//! decided by capture time rather than by when a worker got round to the frame, and tests run
//! without clocks or sleeps.
//!
//! # Semantics
//!
//! - A box *violates* when its class is an alert class and its score is at least `min_score`.
//!   Boxes with a NaN or infinite score or coordinate are malformed and never violate (they would
//!   also serialize as `null`). A frame *shows a violation* when it has at least one violating
//!   box; an empty detection list is a clean frame. The frame's *best box* is its highest-scoring
//!   violating box (the first one on ties).
//! - **One episode per camera at a time.** At a 2 fps sampler people move too far between frames
//!   for boxes to be matched into identities reliably, so the tracker answers "is this camera
//!   showing a violation", not "which person". A second person walking in during an episode is an
//!   `update` (more boxes), not a second episode.
//! - **`new`** after `confirm_frames` consecutive violating frames, like Frigate publishing only
//!   once an object is no longer a false positive. A clean frame before confirmation resets the
//!   count; so does a gap of `end_after` since the last violating frame, since a violation that
//!   old would already have ended an episode. `confirm_frames = 0` acts as 1. The episode's
//!   `start_time` is the time of the first of the confirming frames: the violation started then,
//!   not when we became sure of it.
//! - **`update`** when a frame of the episode has a higher best score than any frame reported so
//!   far (a better snapshot) or more violating boxes than any frame reported so far (more
//!   people). The comparison is with *reported* frames because subscribers only hold the snapshots
//!   we sent: a strong frame during confirmation was never published, so a later frame that beats
//!   the `new` snapshot is worth sending even if it does not beat that unpublished one. Equal or
//!   lower frames send nothing, which keeps a stationary worker from flooding the broker (Frigate
//!   #7281). Clean frames during an episode send nothing either; the episode continues.
//! - **`end`** once no violating frame has been seen for `end_after`, checked at every `observe`
//!   (clean or not) and at every `tick`; `tick` is what ends an episode when the camera stops
//!   delivering frames altogether. A violating frame that arrives after such a gap first ends the
//!   old episode and then counts towards a new one, so one `observe` can return an `end` followed
//!   by a `new`. `end_time` is the time of the last violating frame: the moment we last *saw* the
//!   violation, not the moment we gave up waiting for it.
//!
//! # Event fields
//!
//! `id` is `<start_time as unix milliseconds>-<camera>`: stable for the episode, unique across
//! restarts without persisted state (as long as the wall clock is not stepped back onto the exact
//! millisecond of an earlier start), and sortable by time. `top_score` is the highest best score of
//! any frame of the episode, confirming frames included. For `new` and `update` the other fields
//! describe the frame that caused the event and `snapshot` is true: the caller publishes that
//! frame's image. An `end` has no frame of its own; rather than invent one, it reports the episode:
//! `score`, `label` and `box` of its top-scoring box, `count` the most violating boxes any frame
//! had, and `frame_seq` and `source` of the last violating frame (the one `end_time` names), with
//! `snapshot` false.

mod event;
#[cfg(test)]
mod tests;

pub use event::{AlertEvent, DecisionSource, EventCounts, EventKind};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use helmet_pipelines::Detection;

use crate::config::AlertsConfig;

/// `[alerts]` with class names resolved to the model's class ids, so the per-frame check compares
/// integers instead of strings.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    /// Class ids that count as a violation.
    pub classes: Vec<u16>,
    /// The model's class names indexed by class id, for event labels. A class outside the list is
    /// labelled with its number rather than dropped: the alert still matters.
    pub class_names: Vec<String>,
    pub min_score: f32,
    pub confirm_frames: u32,
    pub end_after: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("alerts.classes: {0:?} is not a class the model reports")]
    UnknownClass(String),
    #[error("alerts.end_after_s: {0} is not a usable duration")]
    EndAfter(f64),
}

impl AlertSettings {
    /// `model_classes` is `edge.model.classes`: a class's id is its position there.
    pub fn from_config(
        alerts: &AlertsConfig,
        model_classes: &[String],
    ) -> Result<Self, SettingsError> {
        let classes = alerts
            .classes
            .iter()
            .map(|name| {
                model_classes
                    .iter()
                    .position(|c| c == name)
                    .and_then(|i| u16::try_from(i).ok())
                    .ok_or_else(|| SettingsError::UnknownClass(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let end_after = Duration::try_from_secs_f64(alerts.end_after_s)
            .map_err(|_| SettingsError::EndAfter(alerts.end_after_s))?;
        Ok(Self {
            classes,
            class_names: model_classes.to_vec(),
            min_score: alerts.min_score,
            confirm_frames: alerts.confirm_frames,
            end_after,
        })
    }
}

/// Episodes of one camera.
#[derive(Debug, Clone)]
pub struct EpisodeTracker {
    camera: String,
    settings: AlertSettings,
    current: Option<Violation>,
    counts: EventCounts,
}

/// A run of violating frames; becomes an episode once confirmed.
#[derive(Debug, Clone)]
struct Violation {
    start: SystemTime,
    /// Consecutive violating frames; only consulted before confirmation.
    frames: u32,
    last: FrameRef,
    top: Detection,
    peak_count: usize,
    /// `None` until confirmed: nothing has been published yet.
    published: Option<Published>,
}

/// What subscribers have been told, which is what an `update` must beat.
#[derive(Debug, Clone)]
struct Published {
    id: String,
    best_score: f32,
    best_count: usize,
}

#[derive(Debug, Clone, Copy)]
struct FrameRef {
    time: SystemTime,
    seq: u64,
    source: DecisionSource,
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    best: Detection,
    count: usize,
}

impl Violation {
    fn begin(frame: FrameRef, best: Detection) -> Self {
        Self {
            start: frame.time,
            frames: 0,
            last: frame,
            top: best,
            peak_count: 0,
            published: None,
        }
    }

    fn see(&mut self, frame: FrameRef, sighting: Sighting) {
        self.frames = self.frames.saturating_add(1);
        self.last = frame;
        if sighting.best.score > self.top.score {
            self.top = sighting.best;
        }
        self.peak_count = self.peak_count.max(sighting.count);
    }
}

impl EpisodeTracker {
    pub fn new(camera: &str, settings: AlertSettings) -> Self {
        Self {
            camera: camera.to_owned(),
            settings,
            current: None,
            counts: EventCounts::default(),
        }
    }

    /// Feeds one processed frame. Returns nothing, one event, or an `end` followed by a `new`
    /// (see the module documentation). A `Vec` because it only allocates when there are events,
    /// and those allocate their strings anyway.
    pub fn observe(
        &mut self,
        now: SystemTime,
        frame_seq: u64,
        detections: &[Detection],
        source: DecisionSource,
    ) -> Vec<AlertEvent> {
        let mut events: Vec<AlertEvent> = self.expire(now).into_iter().collect();
        let Some(sighting) = self.sighting(detections) else {
            if self.current.as_ref().is_some_and(|v| v.published.is_none()) {
                self.current = None;
            }
            return events;
        };
        let frame = FrameRef {
            time: now,
            seq: frame_seq,
            source,
        };
        let violation = self
            .current
            .get_or_insert_with(|| Violation::begin(frame, sighting.best));
        violation.see(frame, sighting);
        let kind = match &violation.published {
            None if violation.frames >= self.settings.confirm_frames.max(1) => EventKind::New,
            Some(p) if sighting.best.score > p.best_score || sighting.count > p.best_count => {
                EventKind::Update
            }
            _ => return events,
        };
        let published = violation.published.get_or_insert_with(|| Published {
            id: episode_id(violation.start, &self.camera),
            best_score: sighting.best.score,
            best_count: sighting.count,
        });
        published.best_score = published.best_score.max(sighting.best.score);
        published.best_count = published.best_count.max(sighting.count);
        let best = sighting.best;
        events.push(AlertEvent {
            kind,
            id: published.id.clone(),
            camera: self.camera.clone(),
            label: label(&self.settings.class_names, best.class),
            score: best.score,
            top_score: violation.top.score,
            bbox: [best.x1, best.y1, best.x2, best.y2],
            count: sighting.count,
            start_time: violation.start,
            end_time: None,
            source,
            frame_seq,
            snapshot: true,
        });
        self.counts.record(kind);
        events
    }

    /// Ends the episode if no violating frame has been seen for `end_after`; for when frames stop
    /// arriving (camera down, worker stalled), since only frames drive `observe`.
    pub fn tick(&mut self, now: SystemTime) -> Option<AlertEvent> {
        self.expire(now)
    }

    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// No violation is open or pending confirmation, so no `end` can still come.
    pub fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    fn expire(&mut self, now: SystemTime) -> Option<AlertEvent> {
        let last = self.current.as_ref()?.last.time;
        // A clock stepped backwards reads as no time passed: the episode waits for real evidence
        // of an end instead of ending early.
        if now.duration_since(last).unwrap_or(Duration::ZERO) < self.settings.end_after {
            return None;
        }
        self.close()
    }

    /// Ends the open episode now (the daemon is stopping): subscribers get its `end` rather
    /// than an episode that never closes. A violation still being confirmed ends silently.
    pub fn close(&mut self) -> Option<AlertEvent> {
        let violation = self.current.take()?;
        let published = violation.published?;
        let top = violation.top;
        self.counts.record(EventKind::End);
        Some(AlertEvent {
            kind: EventKind::End,
            id: published.id,
            camera: self.camera.clone(),
            label: label(&self.settings.class_names, top.class),
            score: top.score,
            top_score: top.score,
            bbox: [top.x1, top.y1, top.x2, top.y2],
            count: violation.peak_count,
            start_time: violation.start,
            end_time: Some(violation.last.time),
            source: violation.last.source,
            frame_seq: violation.last.seq,
            snapshot: false,
        })
    }

    fn sighting(&self, detections: &[Detection]) -> Option<Sighting> {
        let mut violating = detections.iter().filter(|d| self.violates(d));
        let first = *violating.next()?;
        Some(violating.fold(
            Sighting {
                best: first,
                count: 1,
            },
            |mut s, d| {
                s.count += 1;
                if d.score > s.best.score {
                    s.best = *d;
                }
                s
            },
        ))
    }

    fn violates(&self, d: &Detection) -> bool {
        [d.x1, d.y1, d.x2, d.y2, d.score]
            .iter()
            .all(|v| v.is_finite())
            && d.score >= self.settings.min_score
            && self.settings.classes.contains(&d.class)
    }
}

fn label(class_names: &[String], class: u16) -> String {
    class_names
        .get(usize::from(class))
        .cloned()
        .unwrap_or_else(|| class.to_string())
}

fn episode_id(start: SystemTime, camera: &str) -> String {
    match start.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}-{camera}", d.as_millis()),
        Err(before) => format!("-{}-{camera}", before.duration().as_millis()),
    }
}
