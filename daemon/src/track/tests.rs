use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use helmet_pipelines::Detection;

use super::{
    Evidence, MAX_TRACKS, Tracker, TrackerSettings, VOTES, Vote, cost_per_frame, grid_head,
};

const SIZE: f32 = 40.0;

/// Frame time `secs` after an arbitrary epoch.
fn at(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_secs_f64(secs)
}

/// A SIZE × SIZE head centred on (cx, cy).
fn head(cx: f32, cy: f32, score: f32, class: u16) -> Detection {
    let h = SIZE / 2.0;
    Detection {
        x1: cx - h,
        y1: cy - h,
        x2: cx + h,
        y2: cy + h,
        score,
        class,
    }
}

fn tracker() -> Tracker {
    Tracker::new(TrackerSettings::default())
}

#[test]
fn default_settings_are_the_documented_ones() {
    let s = TrackerSettings::default();
    assert_eq!(
        (s.high_score, s.low_score, s.cloud_weight),
        (0.5, 0.25, 3.0)
    );
    assert_eq!(s.lost_after, Duration::from_secs(10));
    assert_eq!(tracker().settings(), &s);
}

#[test]
fn head_moving_one_width_per_frame_at_2_fps_keeps_its_id_for_20_frames() {
    let mut tracker = tracker();
    for frame in 0..20 {
        // Diagonal, a full width (and a bit) each frame: consecutive boxes never overlap.
        let (x, y) = (
            100.0 + 1.1 * SIZE * frame as f32,
            300.0 + 0.3 * SIZE * frame as f32,
        );
        let ids = tracker.update(
            at(0.5 * f64::from(frame)),
            &[head(x, y, 0.9, 0)],
            Evidence::Edge,
        );
        assert_eq!(ids.as_slice(), &[Some(1)], "frame {frame}");
    }
    assert_eq!(tracker.tracks().len(), 1);
    assert_eq!(tracker.tracks()[0].hits, 20);
}

#[test]
fn prediction_follows_a_steady_walk() {
    let mut tracker = tracker();
    for frame in 0..10 {
        let x = 100.0 + SIZE * frame as f32;
        tracker.update(
            at(0.5 * f64::from(frame)),
            &[head(x, 200.0, 0.9, 0)],
            Evidence::Edge,
        );
    }
    // Next frame's head would be centred on x = 100 + 40 × 10.
    let [x1, _, x2, _] = tracker.tracks()[0].predicted(at(5.0));
    let cx = (x1 + x2) / 2.0;
    assert!((cx - 500.0).abs() < 0.2 * SIZE, "predicted centre {cx}");
}

#[test]
fn two_heads_crossing_paths_keep_their_ids() {
    let mut tracker = tracker();
    let (mut a_id, mut b_id) = (None, None);
    for frame in 0..24 {
        let f = frame as f32;
        // A walks right, B walks left, same height, a width per frame each; they pass through
        // each other between frames 9 and 10, where each is nearer the other's previous box
        // than its own.
        let a = head(100.0 + SIZE * f, 200.0, 0.9, 0);
        let b = head(100.0 + 19.5 * SIZE - SIZE * f, 200.0, 0.9, 1);
        let ids = tracker.update(at(0.5 * f64::from(frame)), &[a, b], Evidence::Edge);
        if frame == 0 {
            (a_id, b_id) = (ids[0], ids[1]);
            assert_ne!(a_id, b_id);
        }
        assert_eq!(ids.as_slice(), &[a_id, b_id], "frame {frame}");
    }
    assert_eq!(tracker.tracks().len(), 2);
}

#[test]
fn two_heads_crossing_diagonally_keep_their_ids() {
    let mut tracker = tracker();
    let mut first = None;
    for frame in 0..20 {
        let f = frame as f32;
        // An X: one walks down-right, the other up-right, meeting between frames 9 and 10.
        let a = head(100.0 + 0.8 * SIZE * f, 100.0 + 0.7 * SIZE * f, 0.9, 0);
        let b = head(
            100.0 + 0.8 * SIZE * f,
            100.0 + 13.0 * SIZE - 0.7 * SIZE * f,
            0.9,
            1,
        );
        let ids = tracker.update(at(0.5 * f64::from(frame)), &[a, b], Evidence::Edge);
        let first = *first.get_or_insert([ids[0], ids[1]]);
        assert_eq!(ids.as_slice(), &first, "frame {frame}");
    }
    assert_eq!(tracker.tracks().len(), 2);
}

#[test]
fn one_and_two_frame_dropouts_keep_the_id() {
    let mut tracker = tracker();
    let missing = [5, 9, 10];
    for frame in 0..16 {
        let time = at(0.5 * f64::from(frame));
        let x = 100.0 + 0.8 * SIZE * frame as f32;
        if missing.contains(&frame) {
            assert!(tracker.update(time, &[], Evidence::Edge).is_empty());
            assert!(!tracker.tracks()[0].matched);
            continue;
        }
        let ids = tracker.update(time, &[head(x, 200.0, 0.9, 0)], Evidence::Edge);
        assert_eq!(ids.as_slice(), &[Some(1)], "frame {frame}");
        assert!(tracker.tracks()[0].matched);
    }
    assert_eq!(tracker.tracks()[0].hits, 13);
}

#[test]
fn dropout_longer_than_lost_after_gives_a_new_id() {
    let mut tracker = tracker();
    let box_ = head(300.0, 300.0, 0.9, 0);
    assert_eq!(
        tracker.update(at(0.0), &[box_], Evidence::Edge).as_slice(),
        &[Some(1)]
    );
    // Within lost_after the track survives empty frames and still matches.
    tracker.update(at(9.0), &[], Evidence::Edge);
    assert_eq!(tracker.tracks().len(), 1);
    assert_eq!(
        tracker.update(at(10.0), &[box_], Evidence::Edge).as_slice(),
        &[Some(1)]
    );
    // 10.5 s without a match: gone, and the same place now starts a new track.
    tracker.update(at(20.5), &[], Evidence::Edge);
    assert!(tracker.tracks().is_empty());
    assert_eq!(
        tracker.update(at(21.0), &[box_], Evidence::Edge).as_slice(),
        &[Some(2)]
    );
    assert_eq!(tracker.tracks().len(), 1);
    assert_eq!(tracker.tracks()[0].id, 2);
}

#[test]
fn a_head_that_leaves_and_comes_back_the_way_it_left_keeps_its_id() {
    let mut tracker = tracker();
    // Walks right at a box width per frame (2 fps) and out of view at x = 620.
    for i in 0..8u32 {
        let x = 340.0 + 40.0 * i as f32;
        let ids = tracker.update(
            at(f64::from(i) * 0.5),
            &[head(x, 300.0, 0.9, 1)],
            Evidence::Edge,
        );
        assert_eq!(ids.as_slice(), &[Some(1)], "frame {i}");
    }
    // 3 s out of view, then back at the same edge, walking left.
    for i in 0..6u32 {
        tracker.update(at(4.0 + f64::from(i) * 0.5), &[], Evidence::Edge);
    }
    for i in 0..4u32 {
        let x = 620.0 - 40.0 * i as f32;
        let ids = tracker.update(
            at(7.0 + f64::from(i) * 0.5),
            &[head(x, 300.0, 0.9, 1)],
            Evidence::Edge,
        );
        assert_eq!(ids.as_slice(), &[Some(1)], "back, frame {i}");
    }
}

#[test]
fn low_score_box_extends_a_track_but_does_not_start_one() {
    let mut tracker = tracker();
    let low = head(300.0, 300.0, 0.3, 1);
    assert_eq!(
        tracker.update(at(0.0), &[low], Evidence::Edge).as_slice(),
        &[None]
    );
    assert!(tracker.tracks().is_empty());

    assert_eq!(
        tracker
            .update(at(1.0), &[head(300.0, 300.0, 0.9, 0)], Evidence::Edge)
            .as_slice(),
        &[Some(1)]
    );
    assert_eq!(
        tracker
            .update(at(1.5), &[head(320.0, 300.0, 0.3, 1)], Evidence::Edge)
            .as_slice(),
        &[Some(1)]
    );
    let track = &tracker.tracks()[0];
    assert_eq!(
        (track.hits, track.bbox.class, track.last_seen),
        (2, 1, at(1.5))
    );

    // Below low_score: ignored altogether, even right on the track.
    let ignored = head(340.0, 300.0, 0.2, 0);
    assert_eq!(
        tracker
            .update(at(2.0), &[ignored], Evidence::Edge)
            .as_slice(),
        &[None]
    );
    assert!(!tracker.tracks()[0].matched);
    assert_eq!(tracker.tracks().len(), 1);
}

#[test]
fn high_score_boxes_are_matched_before_low_score_ones() {
    let mut tracker = tracker();
    tracker.update(at(0.0), &[head(300.0, 300.0, 0.9, 0)], Evidence::Edge);
    // The weak box sits exactly on the track, the strong one a little off: round one gives the
    // track to the strong one, and the weak one has no track left.
    let frame = [head(300.0, 300.0, 0.3, 0), head(310.0, 300.0, 0.9, 0)];
    assert_eq!(
        tracker.update(at(0.5), &frame, Evidence::Edge).as_slice(),
        &[None, Some(1)]
    );
    assert_eq!(tracker.tracks().len(), 1);
}

#[test]
fn garbage_boxes_are_ignored() {
    let mut tracker = tracker();
    let good = head(300.0, 300.0, 0.9, 0);
    let garbage = [
        Detection {
            x1: f32::NAN,
            ..good
        },
        Detection {
            y2: f32::INFINITY,
            ..good
        },
        Detection {
            x1: f32::NEG_INFINITY,
            ..good
        },
        Detection {
            x1: good.x2,
            x2: good.x1,
            ..good
        },
        Detection {
            y1: good.y2,
            y2: good.y1,
            ..good
        },
        Detection {
            x2: good.x1,
            ..good
        },
        Detection {
            score: f32::NAN,
            ..good
        },
        Detection {
            score: f32::INFINITY,
            ..good
        },
        Detection {
            x1: -3.0e38,
            x2: 3.0e38,
            ..good
        },
    ];
    let mut frame = garbage.to_vec();
    frame.push(good);
    let ids = tracker.update(at(0.0), &frame, Evidence::Edge);
    assert_eq!(ids.len(), frame.len());
    assert!(ids[..garbage.len()].iter().all(Option::is_none), "{ids:?}");
    assert_eq!(ids[garbage.len()], Some(1));
    assert_eq!(tracker.tracks().len(), 1);

    // Garbage alone neither matches nor disturbs the track.
    let ids = tracker.update(at(0.5), &garbage, Evidence::Edge);
    assert!(ids.iter().all(Option::is_none));
    let track = &tracker.tracks()[0];
    assert!(!track.matched);
    assert_eq!((track.hits, track.bbox), (1, good));
    assert!(track.predicted(at(1.0)).iter().all(|c| c.is_finite()));
    assert_eq!(
        tracker.update(at(1.0), &[good], Evidence::Edge).as_slice(),
        &[Some(1)]
    );
}

#[test]
fn more_than_max_tracks_boxes_are_bounded_and_counted() {
    let mut tracker = tracker();
    let n = MAX_TRACKS + 36;
    let frame: Vec<Detection> = (0..n)
        .map(|i| {
            head(
                100.0 + 200.0 * (i % 10) as f32,
                100.0 + 200.0 * (i / 10) as f32,
                0.9,
                0,
            )
        })
        .collect();
    let ids = tracker.update(at(0.0), &frame, Evidence::Edge);
    assert_eq!(ids.len(), n);
    assert_eq!(ids.iter().flatten().count(), MAX_TRACKS);
    assert!(ids[MAX_TRACKS..].iter().all(Option::is_none));
    assert_eq!(tracker.tracks().len(), MAX_TRACKS);
    assert_eq!(tracker.dropped_boxes(), 36);

    // Next frame: the same heads; the live tracks keep theirs, the rest are dropped again.
    let again = tracker.update(at(0.5), &frame, Evidence::Edge);
    assert_eq!(again, ids);
    assert_eq!(tracker.dropped_boxes(), 72);
}

#[test]
fn more_boxes_than_max_detections_do_not_panic() {
    let mut tracker = tracker();
    let n = helmet_pipelines::MAX_DETECTIONS + 20;
    let frame: Vec<Detection> = (0..n).map(|i| head(50.0 * i as f32, 0.0, 0.9, 0)).collect();
    let ids = tracker.update(at(0.0), &frame, Evidence::Edge);
    assert_eq!(ids.len(), helmet_pipelines::MAX_DETECTIONS);
    assert_eq!(tracker.tracks().len(), MAX_TRACKS);
}

#[test]
fn ids_are_unique_and_never_reused() {
    let mut tracker = tracker();
    let mut seen = BTreeSet::new();
    let mut expected = 1;
    for round in 0..5 {
        // Three heads, then a gap long enough to lose them all.
        let t0 = 30.0 * f64::from(round);
        let frame = [
            head(100.0, 100.0, 0.9, 0),
            head(400.0, 100.0, 0.9, 0),
            head(700.0, 100.0, 0.9, 0),
        ];
        let ids = tracker.update(at(t0), &frame, Evidence::Edge);
        for id in ids
            .iter()
            .map(|id| id.expect("a high-score box starts a track"))
        {
            assert_eq!(id, expected);
            assert!(seen.insert(id), "id {id} reused");
            expected += 1;
        }
        tracker.update(at(t0 + 20.0), &[], Evidence::Edge);
        assert!(tracker.tracks().is_empty());
    }
    assert_eq!(seen.len(), 15);
}

#[test]
fn time_going_backwards_neither_panics_nor_removes_tracks() {
    let mut tracker = tracker();
    let box_ = head(300.0, 300.0, 0.9, 0);
    tracker.update(at(100.0), &[box_], Evidence::Edge);
    // 100 s "earlier": no time passed, so nothing is lost and nothing is predicted to move.
    assert!(tracker.update(at(0.0), &[], Evidence::Edge).is_empty());
    assert_eq!(tracker.tracks().len(), 1);
    assert_eq!(
        tracker.update(at(50.0), &[box_], Evidence::Edge).as_slice(),
        &[Some(1)]
    );
    let track = &tracker.tracks()[0];
    assert_eq!((track.hits, track.last_seen), (2, at(100.0)));
    // Frame time resumes from the latest time seen, not from the stale one.
    assert_eq!(
        tracker
            .update(at(105.0), &[box_], Evidence::Edge)
            .as_slice(),
        &[Some(1)]
    );
    assert!(
        tracker.tracks()[0]
            .predicted(at(0.0))
            .iter()
            .all(|c| c.is_finite())
    );
}

#[test]
fn a_single_bad_match_does_not_lose_the_track() {
    let mut tracker = tracker();
    let mut time = 0.0;
    let mut step = |tracker: &mut Tracker, x: f32| {
        let ids = tracker.update(at(time), &[head(x, 300.0, 0.9, 0)], Evidence::Edge);
        time += 0.5;
        ids[0]
    };
    for _ in 0..6 {
        assert_eq!(step(&mut tracker, 300.0), Some(1));
    }
    // One frame the head is missed and a box 1.4 widths off (a neighbour's) takes its place.
    assert_eq!(step(&mut tracker, 300.0 + 1.4 * SIZE), Some(1));
    for frame in 0..4 {
        assert_eq!(
            step(&mut tracker, 300.0),
            Some(1),
            "frame {frame} after the bad match"
        );
    }
    assert_eq!(tracker.tracks().len(), 1);
}

#[test]
fn velocity_is_bounded() {
    let mut tracker = tracker();
    for frame in 0..5 {
        tracker.update(
            at(0.5 * f64::from(frame)),
            &[head(300.0, 300.0, 0.9, 0)],
            Evidence::Edge,
        );
    }
    // A jump of 1.5 widths a tenth of a second later: inside the gate, far beyond walking.
    let jump = 1.5 * SIZE;
    tracker.update(
        at(2.1),
        &[head(300.0 + jump, 300.0, 0.9, 0)],
        Evidence::Edge,
    );
    let [x1, _, x2, _] = tracker.tracks()[0].predicted(at(3.1));
    let moved = (x1 + x2) / 2.0 - 300.0;
    // No faster than a walking head: 6 box sizes a second.
    assert!(moved <= jump + 6.0 * SIZE, "moved {moved} px in a second");
    // And extrapolation stops after a while instead of carrying the track off-screen.
    let track = &tracker.tracks()[0];
    assert_eq!(track.predicted(at(60.0)), track.predicted(at(600.0)));
}

#[test]
fn walking_heads_keep_their_ids_at_1_and_5_fps() {
    for fps in [1.0, 5.0] {
        let mut tracker = tracker();
        for frame in 0..20 {
            let x = 100.0 + SIZE * frame as f32;
            let ids = tracker.update(
                at(f64::from(frame) / fps),
                &[head(x, 200.0, 0.9, 0)],
                Evidence::Edge,
            );
            assert_eq!(ids.as_slice(), &[Some(1)], "{fps} fps, frame {frame}");
        }
    }
}

#[test]
fn votes_keep_the_last_votes_with_cloud_weight() {
    let mut tracker = tracker();
    let mut sent = Vec::new();
    for frame in 0..VOTES + 3 {
        let evidence = if frame % 3 == 0 {
            Evidence::Cloud
        } else {
            Evidence::Edge
        };
        let class = (frame % 2) as u16;
        let score = 0.5 + 0.04 * frame as f32;
        let ids = tracker.update(
            at(frame as f64),
            &[head(300.0, 300.0, score, class)],
            evidence,
        );
        assert_eq!(ids.as_slice(), &[Some(1)]);
        let weight = if evidence == Evidence::Cloud {
            3.0
        } else {
            1.0
        };
        sent.push(Vote {
            class,
            score,
            evidence,
            weight,
        });
    }
    let kept: Vec<Vote> = tracker.tracks()[0].votes().copied().collect();
    assert_eq!(kept.len(), VOTES);
    assert_eq!(kept.as_slice(), &sent[sent.len() - VOTES..]);
    assert!(kept.iter().any(|v| v.weight == 3.0));
}

#[test]
fn benchmark_scene_keeps_every_id() {
    let mut tracker = tracker();
    let mut first = None;
    for frame in 0..40 {
        let heads: Vec<Detection> = (0..50).map(|i| grid_head(i, frame)).collect();
        let ids = tracker.update(at(0.5 * frame as f64), &heads, Evidence::Edge);
        let first = first.get_or_insert(ids.clone());
        assert_eq!(&ids, first, "frame {frame}");
    }
    let distinct: BTreeSet<u64> = first.iter().flatten().flatten().copied().collect();
    assert_eq!(distinct.len(), 50);
    assert_eq!(tracker.tracks().len(), 50);
}

#[test]
fn cost_per_frame_measures_something() {
    for boxes in [10, 50] {
        let cost = cost_per_frame(boxes, 200);
        eprintln!("track::update, {boxes} boxes/frame: {cost:?} per frame");
        assert!(cost > Duration::ZERO);
    }
}
