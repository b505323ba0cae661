//! The alert episodes a pass over the scene raises, and whether gating kept them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use helmet_pipelines::{Detections, Frame};

use crate::alerts::{
    AlertEvent, AlertSettings, DecisionSource, EpisodeTracker, EventKind, FrameInput,
};

/// One frame's final result as the camera's alert engine gets it.
#[derive(Debug, Clone)]
pub struct FinalResult {
    time: SystemTime,
    seq: u64,
    width: u32,
    height: u32,
    detections: Detections,
    source: DecisionSource,
}

impl FinalResult {
    pub fn new(frame: &Frame, detections: Detections, source: DecisionSource) -> Self {
        Self {
            time: frame.capture_time,
            seq: frame.seq,
            width: frame.letterbox.orig_w,
            height: frame.letterbox.orig_h,
            detections,
            source,
        }
    }

    /// This result standing for a skipped `frame`: the boxes and their source stay, the frame is
    /// the skipped one's, so the tracker sees time pass.
    pub fn reused_for(&self, frame: &Frame) -> Self {
        Self {
            time: frame.capture_time,
            seq: frame.seq,
            ..self.clone()
        }
    }

    pub fn time(&self) -> SystemTime {
        self.time
    }

    fn input(&self) -> FrameInput<'_> {
        FrameInput {
            time: self.time,
            seq: self.seq,
            width: self.width,
            height: self.height,
            detections: &self.detections,
            source: self.source,
        }
    }
}

/// One alert episode, from its `new` to its `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub id: String,
    pub track_id: u64,
    pub start: SystemTime,
    /// The last violating frame; `None` only if the engine never ended the episode.
    pub end: Option<SystemTime>,
    pub top_score: f32,
}

impl Episode {
    /// The larger of the gaps between the two starts and the two ends; `None` when only one of
    /// them ended.
    fn distance(&self, other: &Episode) -> Option<Duration> {
        let ends = match (self.end, other.end) {
            (Some(a), Some(b)) => apart(a, b),
            (None, None) => Duration::ZERO,
            _ => return None,
        };
        Some(apart(self.start, other.start).max(ends))
    }
}

fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// The episodes a fresh engine for one camera (no zones, masks or schedule) raises from these
/// results, closed at the end.
pub fn episodes(results: &[FinalResult], settings: &AlertSettings) -> Vec<Episode> {
    let mut engine = EpisodeTracker::new("bench-motion", settings.clone(), Arc::default());
    let mut out = Vec::new();
    for result in results {
        record(&mut out, engine.observe(&result.input()));
    }
    record(&mut out, engine.close());
    out
}

fn record(episodes: &mut Vec<Episode>, events: Vec<AlertEvent>) {
    for e in events {
        if e.kind == EventKind::New {
            episodes.push(Episode {
                id: e.id,
                track_id: e.track_id,
                start: e.start_time,
                end: None,
                top_score: e.top_score,
            });
        } else if let Some(episode) = episodes.iter_mut().find(|ep| ep.id == e.id) {
            episode.top_score = e.top_score;
            if e.kind == EventKind::End {
                episode.end = e.end_time;
            }
        }
    }
}

/// `gated` has the episodes of `every`: as many, and each of `every` paired with its own
/// episode of `gated` (the nearest free one) whose start and end are each within `tolerance`.
pub fn same_episodes(every: &[Episode], gated: &[Episode], tolerance: Duration) -> bool {
    every.len() == gated.len() && all_paired(every, gated, tolerance)
}

/// The episodes `counts` keeps, of either pass, each pair with their own episode of the other
/// pass (any episode there: one that started a frame earlier, on the other side of the line
/// `counts` draws, is still the same person's).
pub fn same_episodes_where(
    every: &[Episode],
    gated: &[Episode],
    tolerance: Duration,
    counts: impl Fn(&Episode) -> bool,
) -> bool {
    let kept =
        |list: &[Episode]| -> Vec<Episode> { list.iter().filter(|e| counts(e)).cloned().collect() };
    all_paired(&kept(every), gated, tolerance) && all_paired(&kept(gated), every, tolerance)
}

/// Each of `from` paired with its own episode of `to` (the nearest free one) whose start and
/// end are each within `tolerance`.
fn all_paired(from: &[Episode], to: &[Episode], tolerance: Duration) -> bool {
    let mut taken = vec![false; to.len()];
    from.iter().all(|a| {
        let nearest = to
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .filter_map(|(i, b)| a.distance(b).map(|d| (i, d)))
            .filter(|(_, d)| *d <= tolerance)
            .min_by_key(|(_, d)| *d);
        nearest.map(|(i, _)| taken[i] = true).is_some()
    })
}

/// One line per episode, times in seconds from `origin` (the scene's first frame).
pub fn listing(name: &str, episodes: &[Episode], origin: SystemTime) -> String {
    let seconds = |t: SystemTime| apart(t, origin).as_secs_f64();
    let mut out = format!("{name}: {} episode(s)\n", episodes.len());
    for e in episodes {
        let end = e
            .end
            .map_or_else(|| "open".to_string(), |t| format!("{:.1} s", seconds(t)));
        let _ = writeln!(
            out,
            "  start {:>6.1} s  end {end:>8}  track {:>3}  top score {:.2}",
            seconds(e.start),
            e.track_id,
            e.top_score
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use helmet_pipelines::Detection;
    use helmet_pipelines::letterbox::Letterbox;

    use super::*;

    fn at(seconds: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(1_000.0 + seconds)
    }

    fn episode(start: f64, end: Option<f64>) -> Episode {
        Episode {
            id: format!("{start}"),
            track_id: 1,
            start: at(start),
            end: end.map(at),
            top_score: 0.9,
        }
    }

    const FIVE_S: Duration = Duration::from_secs(5);

    #[test]
    fn episodes_match_within_the_tolerance_at_both_ends() {
        let every = [episode(10.0, Some(20.0)), episode(40.0, Some(60.0))];
        let shifted = [episode(44.5, Some(63.0)), episode(12.0, Some(24.5))];
        assert!(
            same_episodes(&every, &shifted, FIVE_S),
            "order does not matter"
        );
        let late_end = [episode(10.0, Some(25.5)), episode(40.0, Some(60.0))];
        assert!(!same_episodes(&every, &late_end, FIVE_S));
        let late_start = [episode(15.5, Some(20.0)), episode(40.0, Some(60.0))];
        assert!(!same_episodes(&every, &late_start, FIVE_S));
        assert!(!same_episodes(&every, &every[..1], FIVE_S), "one lost");
        assert!(same_episodes(&[], &[], FIVE_S));
    }

    #[test]
    fn each_gated_episode_stands_for_one_episode_only() {
        let every = [episode(10.0, Some(20.0)), episode(11.0, Some(21.0))];
        let gated = [episode(10.5, Some(20.5)), episode(40.0, Some(50.0))];
        assert!(!same_episodes(&every, &gated, FIVE_S));
        // The nearest free one is taken, so a close pair is not stolen from the next episode.
        let gated = [episode(14.0, Some(24.0)), episode(10.0, Some(20.0))];
        assert!(same_episodes(&every, &gated, FIVE_S));
    }

    #[test]
    fn an_open_episode_matches_only_an_open_one() {
        assert!(!same_episodes(
            &[episode(1.0, None)],
            &[episode(1.0, Some(2.0))],
            FIVE_S
        ));
        assert!(same_episodes(
            &[episode(1.0, None)],
            &[episode(2.0, None)],
            FIVE_S
        ));
    }

    fn settings() -> AlertSettings {
        AlertSettings {
            classes: vec![1],
            class_names: vec!["helmet".into(), "head".into()],
            min_score: 0.5,
            confirm_frames: 2,
            end_after: Duration::from_secs(10),
        }
    }

    /// Frame `k` of a 2 fps camera, with a bare head in view on the frames of `bare`.
    fn result(k: u32, bare: std::ops::Range<u32>) -> (Frame, FinalResult) {
        let frame = Frame {
            camera: Arc::from("gated"),
            seq: u64::from(k),
            pts: None,
            capture_time: at(f64::from(k) * 0.5),
            letterbox: Letterbox::new(1280, 720, 640, 384),
            pixels: Vec::new(),
        };
        let mut boxes = Detections::new();
        if bare.contains(&k) {
            let head = Detection {
                x1: 600.0,
                y1: 300.0,
                x2: 640.0,
                y2: 340.0,
                score: 0.9,
                class: 1,
            };
            boxes.push(head).unwrap();
        }
        let result = FinalResult::new(&frame, boxes, DecisionSource::Edge);
        (frame, result)
    }

    #[test]
    fn a_reused_result_keeps_an_episode_going_at_the_skipped_frames_times() {
        let every: Vec<FinalResult> = (0..40).map(|k| result(k, 2..22).1).collect();
        let ran = episodes(&every, &settings());
        assert_eq!(ran.len(), 1, "{ran:?}");
        assert_eq!((ran[0].start, ran[0].end), (at(1.0), Some(at(10.5))));

        // Only every fourth frame analysed; the others carry its result at their own time.
        let mut gated: Vec<FinalResult> = Vec::new();
        for k in 0..40 {
            let (frame, fresh) = result(k, 2..22);
            let last = gated.last().filter(|_| k % 4 != 0);
            gated.push(last.map_or(fresh, |last| last.reused_for(&frame)));
        }
        assert_eq!(gated[23].time(), at(11.5));
        let kept = episodes(&gated, &settings());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].start, kept[0].end), (at(2.0), Some(at(11.5))));
        assert!(same_episodes(&ran, &kept, FIVE_S));
        let text = listing("gated", &kept, at(0.0));
        assert!(text.contains("start    2.0 s  end   11.5 s"), "{text}");
    }

    #[test]
    fn only_the_episodes_kept_are_compared() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let episode = |start: u64, end: u64| Episode {
            id: format!("{start}"),
            track_id: 1,
            start: t(start),
            end: Some(t(end)),
            top_score: 0.6,
        };
        let every = [episode(10, 20), episode(40, 41)];
        let gated = [episode(11, 20), episode(60, 70)];
        let tolerance = Duration::from_secs(5);
        assert!(!same_episodes(&every, &gated, tolerance));
        let before_30 = |e: &Episode| e.start < t(30);
        assert!(same_episodes_where(&every, &gated, tolerance, before_30));
        let after_30 = |e: &Episode| e.start >= t(30);
        assert!(!same_episodes_where(&every, &gated, tolerance, after_30));
        // Kept on one side only (started at 29 s here, 31 s there): still a pair.
        let every = [episode(29, 40)];
        let gated = [episode(31, 40)];
        assert!(same_episodes_where(&every, &gated, tolerance, before_30));
        assert!(same_episodes_where(&every, &gated, tolerance, after_30));
    }
}
