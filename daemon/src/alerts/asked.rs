//! Asking the big model once per person: what the cloud has already answered about whom.
//!
//! A person standing in view for a minute makes the same hard frame a hundred times; the cloud's
//! answer about them does not change while they and the edge model's view of them do not. So a
//! hard frame is only worth a question when it shows someone the cloud has not answered about
//! recently, or someone the edge model now sees differently (another class) than when it asked.
//! Boxes that never became a track (a low-score shape the edge model keeps half-seeing) are
//! remembered by place instead: the same box of the same class in the same place, asked about
//! recently, is not news either.
//!
//! A question in flight counts too. Frames are concluded in capture order, so while the cloud
//! thinks about frame N the frames behind it are not tracked yet, and without this each of them
//! showing the same new person would be asked about again: `bench sedna-loop` saw the budget
//! spent on such repeats while new people waited. Until its answer or its deadline, a box of
//! the same class overlapping an asked box counts as asked about.

use std::time::{Duration, SystemTime};

use helmet_pipelines::Detection;

use crate::track::Track;

/// A box belongs to a track when it overlaps the track's predicted box at least this much.
const SAME_PERSON_IOU: f32 = 0.3;
/// A box that has not moved: stricter, since no motion model vouches for it.
const SAME_PLACE_IOU: f32 = 0.7;

/// The cloud's last answer about one track.
#[derive(Debug, Clone, Copy)]
struct Answer {
    track_id: u64,
    at: SystemTime,
    /// The edge model's class for the person in that frame; `None` when the edge had not seen
    /// them (only the big model found them), so any edge sighting is news.
    edge_class: Option<u16>,
}

/// The most edge boxes remembered by place; the oldest go first.
const PLACES: usize = 64;

/// An edge box of a frame whose question is in flight, until the question's deadline.
#[derive(Debug, Clone, Copy)]
struct Asked {
    edge: Detection,
    at: SystemTime,
    until: SystemTime,
}

/// What the cloud told us about the camera's live tracks, and what it is being asked.
#[derive(Debug, Default)]
pub(super) struct CloudAnswers {
    answers: Vec<Answer>,
    /// Edge boxes of answered frames with the frame's time.
    places: Vec<(Detection, SystemTime)>,
    /// Edge boxes of frames asked about and not answered yet.
    in_flight: Vec<Asked>,
}

impl CloudAnswers {
    /// After a frame the cloud answered in time: every track the cloud's boxes matched now has an
    /// answer, with the edge model's class for it in the same frame.
    pub fn remember(&mut self, time: SystemTime, tracks: &[Track], edge: &[Detection]) {
        for track in tracks.iter().filter(|t| t.matched) {
            let edge_class = best_match(&track.bbox, edge).map(|d| d.class);
            let answer = Answer {
                track_id: track.id,
                at: time,
                edge_class,
            };
            match self.answers.iter_mut().find(|a| a.track_id == track.id) {
                Some(known) => *known = answer,
                None => self.answers.push(answer),
            }
        }
        // Bounded by the live tracks: a lost track's answer is of no use.
        self.answers
            .retain(|a| tracks.iter().any(|t| t.id == a.track_id));
        self.places.extend(edge.iter().map(|d| (*d, time)));
        keep_newest(&mut self.places);
    }

    /// Frame `time` was just asked about, with these edge boxes; its answer is of use until
    /// `wait` after it.
    pub fn asking(&mut self, time: SystemTime, edge: &[Detection], wait: Duration) {
        let until = time.checked_add(wait).unwrap_or(time);
        self.in_flight.retain(|a| a.until > time);
        self.in_flight.extend(edge.iter().map(|&edge| Asked {
            edge,
            at: time,
            until,
        }));
        keep_newest(&mut self.in_flight);
    }

    /// A later frame's boxes that overlap a box in flight join it, with its deadline: a person
    /// who walks on while the cloud thinks stays "being asked about", however far they get.
    pub fn follow(&mut self, time: SystemTime, edge: &[Detection]) {
        let followed: Vec<Asked> = edge
            .iter()
            .filter_map(|d| {
                self.asked_about(time, d).map(|a| Asked {
                    edge: *d,
                    at: time,
                    until: a.until,
                })
            })
            .collect();
        self.in_flight.extend(followed);
        keep_newest(&mut self.in_flight);
    }

    /// The question in flight at `time` that `d` belongs to: a box of the same class
    /// overlapping it (loosely: the frames behind an asked one are moments after it).
    fn asked_about(&self, time: SystemTime, d: &Detection) -> Option<&Asked> {
        self.in_flight.iter().find(|a| {
            a.edge.class == d.class
                && a.edge.iou(d) >= SAME_PERSON_IOU
                && a.at <= time
                && time < a.until
        })
    }

    /// Whether every person in the edge result was answered about within `fresh_for`, and the
    /// edge model still gives each the class it gave then. A frame without boxes is news.
    pub fn all_known(
        &self,
        time: SystemTime,
        tracks: &[Track],
        edge: &[Detection],
        fresh_for: Duration,
    ) -> bool {
        let fresh = |at: SystemTime| time.duration_since(at).unwrap_or(Duration::ZERO) < fresh_for;
        let known_person = |d: &Detection| {
            best_track(time, tracks, d).is_some_and(|track| {
                self.answers
                    .iter()
                    .any(|a| a.track_id == track.id && a.edge_class == Some(d.class) && fresh(a.at))
            })
        };
        let known_place = |d: &Detection| {
            self.places.iter().any(|(seen, at)| {
                seen.class == d.class && seen.iou(d) >= SAME_PLACE_IOU && fresh(*at)
            })
        };
        let being_asked = |d: &Detection| self.asked_about(time, d).is_some();
        !edge.is_empty()
            && edge
                .iter()
                .all(|d| known_person(d) || known_place(d) || being_asked(d))
    }
}

/// Drops the oldest entries beyond [`PLACES`].
fn keep_newest<T>(list: &mut Vec<T>) {
    let excess = list.len().saturating_sub(PLACES);
    list.drain(..excess);
}

fn best_match<'a>(bbox: &Detection, boxes: &'a [Detection]) -> Option<&'a Detection> {
    boxes
        .iter()
        .map(|d| (d.iou(bbox), d))
        .filter(|(iou, _)| *iou >= SAME_PERSON_IOU)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, d)| d)
}

fn best_track<'a>(time: SystemTime, tracks: &'a [Track], d: &Detection) -> Option<&'a Track> {
    tracks
        .iter()
        .map(|t| {
            let [x1, y1, x2, y2] = t.predicted(time);
            let predicted = Detection {
                x1,
                y1,
                x2,
                y2,
                ..t.bbox
            };
            (d.iou(&predicted), t)
        })
        .filter(|(iou, _)| *iou >= SAME_PERSON_IOU)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, t)| t)
}
