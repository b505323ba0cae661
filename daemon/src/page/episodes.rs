//! The alert episodes the page shows: the open ones and the most recently ended, each with its
//! latest snapshot, kept in memory and bounded.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertEvent, DecisionSource, EventKind};

/// Ended episodes kept for the page, newest first.
pub const RECENT: usize = 20;
/// Open episodes kept; beyond it the oldest is forgotten (a gateway with this many people
/// without helmets at once has bigger problems than its page), counted in `forgotten`.
pub const OPEN: usize = 128;
/// Snapshot bytes kept over all episodes; older snapshots are dropped first (the episode stays).
pub const SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

/// One episode as `/status` reports it: its latest event's facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeView {
    pub id: String,
    pub camera: String,
    pub track_id: u64,
    pub label: String,
    /// The best violating score so far.
    pub top_score: f32,
    pub zones: Vec<String>,
    /// Unix milliseconds of the first violating frame.
    pub start_ms: u64,
    /// Unix milliseconds of the last violating frame; `None` while open.
    pub end_ms: Option<u64>,
    /// Frames the person was seen in.
    pub frames: u32,
    /// `edge` or `cloud`: who judged the frame of the latest `new`/`update`.
    pub source: String,
    /// `/alerts/<id>/snapshot.jpg` has an image.
    pub has_snapshot: bool,
}

/// `/status`'s `alerts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodesView {
    /// Oldest first.
    pub open: Vec<EpisodeView>,
    /// Newest first, at most [`RECENT`].
    pub recent: Vec<EpisodeView>,
    /// Open episodes dropped because more than [`OPEN`] were open.
    #[serde(default)]
    pub forgotten: u64,
}

struct Episode {
    view: EpisodeView,
    snapshot: Option<bytes::Bytes>,
}

#[derive(Default)]
pub struct EpisodeBook {
    open: VecDeque<Episode>,
    recent: VecDeque<Episode>,
    forgotten: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl EpisodeBook {
    /// Takes one alert event and the snapshot published with it, if any.
    pub fn record(&mut self, event: &AlertEvent, snapshot: Option<&[u8]>) {
        let at = self.open.iter().position(|e| e.view.id == event.id);
        let mut episode = match at.and_then(|i| self.open.remove(i)) {
            Some(episode) => episode,
            None => Episode {
                view: EpisodeView {
                    id: event.id.clone(),
                    camera: event.camera.clone(),
                    track_id: event.track_id,
                    start_ms: unix_ms(event.start_time),
                    ..Default::default()
                },
                snapshot: None,
            },
        };
        let view = &mut episode.view;
        view.label.clone_from(&event.label);
        view.top_score = event.top_score;
        view.frames = event.frames;
        if event.kind != EventKind::End {
            // An end carries the episode's summary, not a frame: the zones and source of the
            // frame shown last stay.
            view.zones.clone_from(&event.zones);
            view.source = match event.source {
                DecisionSource::Edge => "edge",
                DecisionSource::Cloud => "cloud",
            }
            .to_string();
        }
        if let Some(jpeg) = snapshot {
            episode.snapshot = Some(bytes::Bytes::copy_from_slice(jpeg));
        }
        episode.view.has_snapshot = episode.snapshot.is_some();
        if event.kind == EventKind::End {
            episode.view.end_ms = event.end_time.map(unix_ms);
            self.recent.push_front(episode);
            self.recent.truncate(RECENT);
        } else {
            self.open.push_back(episode);
            if self.open.len() > OPEN {
                self.open.pop_front();
                self.forgotten += 1;
            }
        }
        self.bound_snapshots();
    }

    /// Drops the oldest snapshots past [`SNAPSHOT_BYTES`]: ended ones from the oldest, then
    /// open ones from the oldest.
    fn bound_snapshots(&mut self) {
        let mut total: usize = self
            .open
            .iter()
            .chain(&self.recent)
            .filter_map(|e| e.snapshot.as_ref().map(bytes::Bytes::len))
            .sum();
        let oldest_first = self.recent.iter_mut().rev().chain(self.open.iter_mut());
        for episode in oldest_first {
            if total <= SNAPSHOT_BYTES {
                break;
            }
            if let Some(jpeg) = episode.snapshot.take() {
                total -= jpeg.len();
                episode.view.has_snapshot = false;
            }
        }
    }

    pub fn view(&self) -> EpisodesView {
        EpisodesView {
            open: self.open.iter().map(|e| e.view.clone()).collect(),
            recent: self.recent.iter().map(|e| e.view.clone()).collect(),
            forgotten: self.forgotten,
        }
    }

    /// The latest snapshot of an open or recent episode.
    pub fn snapshot(&self, id: &str) -> Option<bytes::Bytes> {
        self.open
            .iter()
            .chain(&self.recent)
            .find(|e| e.view.id == id)
            .and_then(|e| e.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(kind: EventKind, id: &str, frames: u32) -> AlertEvent {
        AlertEvent {
            kind,
            id: id.into(),
            camera: "gate".into(),
            track_id: 3,
            label: "Without Helmet".into(),
            score: 0.8,
            top_score: 0.8,
            bbox: [0.0; 4],
            count: 1,
            frames,
            zones: vec!["door".into()],
            start_time: UNIX_EPOCH + Duration::from_millis(1_000),
            end_time: (kind == EventKind::End).then(|| UNIX_EPOCH + Duration::from_millis(9_000)),
            source: DecisionSource::Cloud,
            frame_seq: 1,
            snapshot: kind != EventKind::End,
        }
    }

    #[test]
    fn an_episode_moves_from_open_to_recent_with_its_snapshot() {
        let mut book = EpisodeBook::default();
        book.record(&event(EventKind::New, "a", 2), Some(b"first"));
        book.record(&event(EventKind::Update, "a", 5), Some(b"better"));
        let view = book.view();
        assert_eq!(view.open.len(), 1);
        assert_eq!(view.open[0].frames, 5);
        assert_eq!(view.open[0].source, "cloud");
        assert_eq!(view.open[0].start_ms, 1_000);
        assert!(view.open[0].has_snapshot);
        assert_eq!(book.snapshot("a").as_deref(), Some(&b"better"[..]));

        book.record(&event(EventKind::End, "a", 7), None);
        let view = book.view();
        assert!(view.open.is_empty());
        assert_eq!(view.recent[0].end_ms, Some(9_000));
        assert_eq!(view.recent[0].frames, 7);
        assert_eq!(view.recent[0].zones, ["door"]);
        assert_eq!(book.snapshot("a").as_deref(), Some(&b"better"[..]));
        assert_eq!(book.snapshot("b"), None);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = EpisodeBook::default();
        for i in 0..RECENT + 5 {
            book.record(&event(EventKind::End, &format!("e{i}"), 1), None);
        }
        for i in 0..OPEN + 2 {
            book.record(&event(EventKind::New, &format!("o{i}"), 1), None);
        }
        let view = book.view();
        assert_eq!(view.recent.len(), RECENT);
        assert_eq!(
            view.recent[0].id,
            format!("e{}", RECENT + 4),
            "newest first"
        );
        assert_eq!(view.open.len(), OPEN);
        assert_eq!(view.open[0].id, "o2", "oldest open forgotten");
        assert_eq!(view.forgotten, 2);

        let big = vec![0u8; SNAPSHOT_BYTES / 2 + 1];
        book.record(&event(EventKind::New, "x", 1), Some(&big));
        book.record(&event(EventKind::New, "y", 1), Some(&big));
        assert_eq!(book.snapshot("x"), None, "the older snapshot went first");
        assert!(book.snapshot("y").is_some());
        let view = book.view();
        assert!(!view.open.iter().find(|e| e.id == "x").unwrap().has_snapshot);
    }
}
