//! One tracked person's violation: the run of frames that shows it, and the episode once it is
//! confirmed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use helmet_pipelines::Detection;

use super::{AlertEvent, AlertSettings, DecisionSource, EventKind};

/// What one frame says about one tracked person.
#[derive(Debug, Clone)]
pub(super) struct Verdict {
    /// The person counts (zones) and the violating votes are the majority.
    pub violating: bool,
    /// The violating votes reach `confirm_frames`.
    pub confirmed: bool,
    /// The person is confirmed wearing a helmet.
    pub helmet_confirmed: bool,
    /// This frame's own box violates, so it can be the snapshot.
    pub box_violates: bool,
    pub bbox: Detection,
    pub frames: u32,
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FrameRef {
    pub time: SystemTime,
    pub seq: u64,
    pub source: DecisionSource,
}

/// What subscribers have been told, which is what an `update` must beat.
#[derive(Debug, Clone)]
struct Published {
    id: String,
    best_score: f32,
}

#[derive(Debug, Clone)]
pub(super) struct Person {
    pub track_id: u64,
    /// The first frame of the current violating run.
    since: Option<SystemTime>,
    /// The last frame whose box violated.
    last: Option<FrameRef>,
    /// The best violating box of the episode, for `top_score` and the `end` summary.
    top: Option<Detection>,
    zones: Vec<String>,
    frames: u32,
    peak_count: usize,
    published: Option<Published>,
}

impl Person {
    pub fn new(track_id: u64) -> Self {
        Self {
            track_id,
            since: None,
            last: None,
            top: None,
            zones: Vec::new(),
            frames: 0,
            peak_count: 0,
            published: None,
        }
    }

    /// A violation is being confirmed or an episode is open.
    pub fn is_open(&self) -> bool {
        self.since.is_some() || self.published.is_some()
    }

    /// Not seen violating for `end_after`. A clock stepped backwards reads as no time passed: the
    /// episode waits for real evidence of an end instead of ending early.
    pub fn is_stale(&self, now: SystemTime, end_after: Duration) -> bool {
        // A run whose boxes all flickered to the other class has no sighting yet: it waits from
        // its start instead, so it cannot stay open after its track is gone.
        let seen = self.last.map(|last| last.time).or(self.since);
        seen.is_some_and(|seen| now.duration_since(seen).unwrap_or(Duration::ZERO) >= end_after)
    }

    /// One frame in which the person was seen; returns the event it causes.
    pub fn see(
        &mut self,
        camera: &str,
        settings: &AlertSettings,
        verdict: &Verdict,
        at: FrameRef,
        count: usize,
    ) -> Option<AlertEvent> {
        self.frames = verdict.frames;
        if !verdict.violating {
            if self.published.is_some() && verdict.helmet_confirmed {
                return self.end(camera, settings);
            }
            if self.published.is_none() {
                *self = Self::new(self.track_id);
            }
            return None;
        }
        self.since.get_or_insert(at.time);
        self.peak_count = self.peak_count.max(count);
        // A frame whose own box shows the other class keeps the run going but is not a sighting
        // of the violation: `end_time` and the wait for an end count from real sightings.
        if !verdict.box_violates {
            return None;
        }
        self.last = Some(at);
        let bbox = verdict.bbox;
        if self.top.is_none_or(|top| bbox.score > top.score) {
            self.top = Some(bbox);
        }
        self.zones.clone_from(&verdict.zones);
        let kind = match &self.published {
            None if verdict.confirmed => EventKind::New,
            Some(p) if bbox.score > p.best_score => EventKind::Update,
            _ => return None,
        };
        let start = self.since.unwrap_or(at.time);
        let published = self.published.get_or_insert_with(|| Published {
            id: episode_id(start, camera, self.track_id),
            best_score: bbox.score,
        });
        published.best_score = published.best_score.max(bbox.score);
        Some(AlertEvent {
            kind,
            id: published.id.clone(),
            camera: camera.to_owned(),
            track_id: self.track_id,
            label: settings.label(bbox.class),
            score: bbox.score,
            top_score: self.top.map_or(bbox.score, |t| t.score),
            bbox: [bbox.x1, bbox.y1, bbox.x2, bbox.y2],
            count,
            frames: self.frames,
            zones: verdict.zones.clone(),
            start_time: start,
            end_time: None,
            source: at.source,
            frame_seq: at.seq,
            snapshot: true,
        })
    }

    /// Ends the episode: an `end` if one was published, nothing for a violation still being
    /// confirmed. The person starts afresh either way.
    pub fn end(&mut self, camera: &str, settings: &AlertSettings) -> Option<AlertEvent> {
        let person = std::mem::replace(self, Self::new(self.track_id));
        let published = person.published?;
        let last = person.last?;
        let top = person.top?;
        Some(AlertEvent {
            kind: EventKind::End,
            id: published.id,
            camera: camera.to_owned(),
            track_id: person.track_id,
            label: settings.label(top.class),
            score: top.score,
            top_score: top.score,
            bbox: [top.x1, top.y1, top.x2, top.y2],
            count: person.peak_count,
            frames: person.frames,
            zones: person.zones,
            start_time: person.since.unwrap_or(last.time),
            end_time: Some(last.time),
            source: last.source,
            frame_seq: last.seq,
            snapshot: false,
        })
    }
}

fn episode_id(start: SystemTime, camera: &str, track_id: u64) -> String {
    match start.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}-{camera}-{track_id}", d.as_millis()),
        Err(before) => format!("-{}-{camera}-{track_id}", before.duration().as_millis()),
    }
}
