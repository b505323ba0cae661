//! Violation episodes per tracked person, turned into Frigate-style `new` / `update` / `end`
//! events.
//!
//! The engine is a pure state machine: the caller passes the frame's time in, so episodes are
//! decided by capture time rather than by when a worker got round to the frame, and tests run
//! without clocks or sleeps.
//!
//! # Semantics
//!
//! - **A person is a track.** Every analysed frame's boxes go through the camera's
//!   [`Tracker`](crate::track::Tracker) first; an episode belongs to one track, so two people
//!   without helmets make two episodes and one person who is hidden for a frame or two (or a few
//!   seconds, up to `end_after`) keeps the one.
//! - **Masks** drop a box before tracking when its foot point (the bottom centre) lies in one:
//!   the model's opinion of a poster or the street is not evidence. **Required zones** keep the
//!   person tracked but only let a frame count towards a violation while the foot point is in
//!   one of them. Outside the camera's **schedule** tracking goes on (so a person already in view
//!   when the shift starts is known at once) but no frame counts, and open episodes end.
//! - **A person's helmet state** is a weighted majority over the track's last
//!   [`VOTES`](crate::track::VOTES) matched boxes: a vote is *violating* when its class is an
//!   alert class and its score is at least `min_score`; an answer of the big model weighs
//!   [`TrackerSettings::cloud_weight`](crate::track::TrackerSettings) edge votes. A frame shows
//!   the person violating when the violating weight is the strict majority. While those boxes
//!   include an answer of the big model, its latest answer alone decides.
//! - **`new`** once the person is violating with a violating weight of at least
//!   `confirm_frames` (so one in-time cloud answer can confirm on its own) on a frame whose own
//!   box violates — the snapshot shows the violation, not a flicker of the other class. Before
//!   confirmation a frame where the person is not violating starts the count again. The
//!   episode's `start_time` is the first frame of the violating run.
//! - **`update`** when a frame of the episode has a violating box with a higher score than any
//!   *published* so far (a better snapshot). Equal or lower frames send nothing, which keeps a
//!   person standing still from flooding the broker (Frigate #7281).
//! - **`end`** once the person has not been seen violating for `end_after` (checked at every
//!   frame and every `tick`: `tick` ends episodes when a camera stops delivering frames), when
//!   the person is confirmed *with* a helmet (the non-violating weight is the majority and at
//!   least `confirm_frames`), when the schedule closes, or at `close`. `end_time` is the last
//!   violating frame: the moment we last *saw* the violation.
//!
//! # Event fields
//!
//! `id` is `<start_time as unix milliseconds>-<camera>-<track_id>`: stable for the episode,
//! unique across restarts without persisted state, and sortable by time. `count` is the number
//! of people violating in the frame (for `end`: the most any frame of the episode had);
//! `frames` the frames the track was seen in; `zones` the zones holding the foot point of the
//! event's box. `top_score` is the best violating score of the episode. An `end` has no frame of
//! its own: its `score`, `label` and `box` are the episode's top box, and `frame_seq` and
//! `source` those of the last violating frame, with `snapshot` false.

mod asked;
mod event;
mod person;
#[cfg(test)]
mod tests;

pub use event::{AlertEvent, DecisionSource, EventCounts, EventKind};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use helmet_pipelines::{Detection, Detections};

use crate::config::AlertsConfig;
use crate::track::{Evidence, Track, Tracker, TrackerSettings};
use crate::zones::{CameraRules, foot_point};
use asked::CloudAnswers;
use person::{FrameRef, Person, Verdict};

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

    /// The box itself is evidence of a violation. Malformed boxes (NaN or infinite) never are.
    fn violates(&self, d: &Detection) -> bool {
        [d.x1, d.y1, d.x2, d.y2, d.score]
            .iter()
            .all(|v| v.is_finite())
            && d.score >= self.min_score
            && self.classes.contains(&d.class)
    }

    fn label(&self, class: u16) -> String {
        self.class_names
            .get(usize::from(class))
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }
}

/// One analysed frame as the alert engine needs it.
#[derive(Debug, Clone, Copy)]
pub struct FrameInput<'a> {
    /// Capture time.
    pub time: SystemTime,
    pub seq: u64,
    /// The original frame's size, which zone fractions refer to.
    pub width: u32,
    pub height: u32,
    /// The final result, in original-frame pixels.
    pub detections: &'a [Detection],
    pub source: DecisionSource,
}

/// The people and episodes of one camera.
#[derive(Debug)]
pub struct EpisodeTracker {
    camera: String,
    settings: AlertSettings,
    rules: Arc<CameraRules>,
    tracker: Tracker,
    /// Per track that has shown a violation; bounded by the tracker's live tracks plus the
    /// episodes of lost tracks that have not ended yet.
    people: Vec<Person>,
    cloud_answers: CloudAnswers,
    counts: EventCounts,
}

/// Why a hard frame is not worth the big model's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoQuestion {
    /// Everyone in it was answered about recently and the edge model still sees them the same.
    AlreadyAnswered,
    /// The camera's schedule is closed: no answer could raise an alert.
    OffSchedule,
}

impl EpisodeTracker {
    /// A track is kept as long as an episode may wait for it: a person hidden for less than
    /// `end_after` comes back as the same person. A box that may alert may also start a track,
    /// whatever `min_score` is.
    pub fn new(camera: &str, settings: AlertSettings, rules: Arc<CameraRules>) -> Self {
        let defaults = TrackerSettings::default();
        let high_score = if settings.min_score.is_finite() {
            settings.min_score.clamp(0.0, defaults.high_score)
        } else {
            defaults.high_score
        };
        let tracker = Tracker::new(TrackerSettings {
            lost_after: settings.end_after,
            high_score,
            low_score: defaults.low_score.min(high_score),
            ..defaults
        });
        Self {
            camera: camera.to_owned(),
            settings,
            rules,
            tracker,
            people: Vec::new(),
            cloud_answers: CloudAnswers::default(),
            counts: EventCounts::default(),
        }
    }

    /// New zones, masks or schedule (a reload); tracks and open episodes carry on.
    pub fn set_rules(&mut self, rules: Arc<CameraRules>) {
        self.rules = rules;
    }

    pub fn rules(&self) -> &Arc<CameraRules> {
        &self.rules
    }

    /// Feeds one processed frame. Returns the events it caused, `end`s first.
    pub fn observe(&mut self, frame: &FrameInput<'_>) -> Vec<AlertEvent> {
        let mut events = self.expire(frame.time);
        let unmasked = self.unmasked(frame.detections, frame.width, frame.height);
        let evidence = match frame.source {
            DecisionSource::Edge => Evidence::Edge,
            DecisionSource::Cloud => Evidence::Cloud,
        };
        self.tracker.update(frame.time, &unmasked, evidence);
        if !self.rules.schedule.is_active(frame.time) {
            events.extend(self.close());
            return events;
        }
        let at = FrameRef {
            time: frame.time,
            seq: frame.seq,
            source: frame.source,
        };
        let verdicts: Vec<(u64, Verdict)> = self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.matched)
            .map(|t| (t.id, self.verdict(t, frame)))
            .collect();
        let count = verdicts.iter().filter(|(_, v)| v.violating).count();
        for (track_id, verdict) in verdicts {
            events.extend(self.judge(track_id, verdict, at, count));
        }
        self.forget_idle();
        events
    }

    /// Whether a hard frame with this edge result should go to the cloud: not when the camera is
    /// off schedule, nor when the cloud answered about everyone in it within `fresh_for` and the
    /// edge model still sees each of them as it did then (ask once per person). The tracks are
    /// those of the frames concluded so far, predicted to the frame's time.
    pub fn no_question(
        &self,
        time: SystemTime,
        edge: &[Detection],
        frame_size: (u32, u32),
        fresh_for: Duration,
    ) -> Option<NoQuestion> {
        if !self.rules.schedule.is_active(time) {
            return Some(NoQuestion::OffSchedule);
        }
        let unmasked = self.unmasked(edge, frame_size.0, frame_size.1);
        (!fresh_for.is_zero()
            && self
                .cloud_answers
                .all_known(time, self.tracker.tracks(), &unmasked, fresh_for))
        .then_some(NoQuestion::AlreadyAnswered)
    }

    /// A hard frame goes to the cloud: until its answer or `wait`, the people in it count as
    /// asked about, so the frames behind it do not ask about them again.
    pub fn note_question(&mut self, time: SystemTime, edge: &[Detection], wait: Duration) {
        self.cloud_answers.asking(time, edge, wait);
    }

    /// Every hard frame not asked about: its boxes of people in a question still in flight
    /// follow them, so a person walking on is not asked about again before the answer.
    pub fn follow_questions(&mut self, time: SystemTime, edge: &[Detection]) {
        self.cloud_answers.follow(time, edge);
    }

    /// After `observe` of a frame the cloud answered in time: remembers whom it answered about,
    /// and what the edge model (`edge`, its result for the same frame) said of them.
    pub fn remember_cloud_answer(&mut self, time: SystemTime, edge: &[Detection]) {
        self.cloud_answers
            .remember(time, self.tracker.tracks(), edge);
    }

    /// Ends episodes not seen violating for `end_after`, and all of them when the schedule has
    /// closed; for when frames stop arriving (camera down, worker stalled), since only frames
    /// drive `observe`.
    pub fn tick(&mut self, now: SystemTime) -> Vec<AlertEvent> {
        let mut events = self.expire(now);
        if !self.rules.schedule.is_active(now) {
            events.extend(self.close());
        }
        events
    }

    /// Ends every open episode now (the daemon is stopping, the schedule closed): subscribers
    /// get their `end` rather than episodes that never close. Violations still being confirmed
    /// end silently.
    pub fn close(&mut self) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for person in &mut self.people {
            if let Some(end) = person.end(&self.camera, &self.settings) {
                self.counts.record(EventKind::End);
                events.push(end);
            }
        }
        self.people.clear();
        events
    }

    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// No violation is open or pending confirmation, so no `end` can still come.
    pub fn is_idle(&self) -> bool {
        self.people.iter().all(|p| !p.is_open())
    }

    /// The camera's live tracks, for snapshots and the tracking benchmark.
    pub fn tracks(&self) -> &[Track] {
        self.tracker.tracks()
    }

    /// The boxes of a `width × height` frame without those whose foot point lies in a mask.
    fn unmasked(&self, detections: &[Detection], width: u32, height: u32) -> Detections {
        detections
            .iter()
            .filter(|d| {
                self.rules.masks.is_empty()
                    || foot_point(d, width, height).is_none_or(|foot| !self.rules.is_masked(foot))
            })
            .take(helmet_pipelines::MAX_DETECTIONS)
            .copied()
            .collect()
    }

    fn verdict(&self, track: &Track, frame: &FrameInput<'_>) -> Verdict {
        let foot = foot_point(&track.bbox, frame.width, frame.height);
        let counts =
            self.rules.required_zones.is_empty() || foot.is_some_and(|f| self.rules.counts(f));
        let (violating, clean) = self.vote_weights(track);
        let needed = self.settings.confirm_frames.max(1) as f32;
        Verdict {
            violating: counts && violating > clean,
            confirmed: violating >= needed,
            helmet_confirmed: clean > violating && clean >= needed,
            box_violates: self.settings.violates(&track.bbox),
            bbox: track.bbox,
            frames: track.hits,
            zones: foot.map(|f| self.rules.zones_at(f)).unwrap_or_default(),
        }
    }

    /// The weights of the track's violating and clean votes. While the track's window holds
    /// an answer of the big model, that answer alone decides: `bench joint` scored the edge
    /// boxes that follow an answer as less right than the answer itself (box F1 0.924 by the
    /// weighted vote, 0.958 by the answer, at the same 36.7 % of frames uploaded), and a person
    /// the edge model comes to see differently is asked about again.
    fn vote_weights(&self, track: &Track) -> (f32, f32) {
        let latest_answer = track
            .votes()
            .filter(|v| v.evidence == Evidence::Cloud)
            .last();
        let (mut violating, mut clean) = (0.0f32, 0.0f32);
        for vote in latest_answer
            .into_iter()
            .chain(track.votes().filter(|_| latest_answer.is_none()))
        {
            let as_box = Detection {
                score: vote.score,
                class: vote.class,
                ..track.bbox
            };
            if self.settings.violates(&as_box) {
                violating += vote.weight;
            } else {
                clean += vote.weight;
            }
        }
        (violating, clean)
    }

    /// Whether the person is violating by their votes (see [`Self::vote_weights`]), zones
    /// aside: the helmet state alerts are decided on (`bench joint` scores it per frame).
    pub fn violating_by_votes(&self, track: &Track) -> bool {
        let (violating, clean) = self.vote_weights(track);
        violating > clean
    }

    /// One person's frame: opens, updates or ends their episode.
    fn judge(
        &mut self,
        track_id: u64,
        verdict: Verdict,
        at: FrameRef,
        count: usize,
    ) -> Option<AlertEvent> {
        let index = match self.people.iter().position(|p| p.track_id == track_id) {
            Some(i) => i,
            None if verdict.violating => {
                self.people.push(Person::new(track_id));
                self.people.len() - 1
            }
            None => return None,
        };
        let person = &mut self.people[index];
        let event = person.see(&self.camera, &self.settings, &verdict, at, count);
        if let Some(event) = &event {
            self.counts.record(event.kind);
        }
        event
    }

    fn expire(&mut self, now: SystemTime) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for person in &mut self.people {
            if person.is_stale(now, self.settings.end_after)
                && let Some(end) = person.end(&self.camera, &self.settings)
            {
                self.counts.record(EventKind::End);
                events.push(end);
            }
        }
        self.forget_idle();
        events
    }

    /// People with nothing open are forgotten; the tracker remembers the track itself.
    fn forget_idle(&mut self) {
        self.people.retain(Person::is_open);
    }
}
