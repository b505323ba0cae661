use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use helmet_pipelines::Detection;
use serde_json::{Value, json};

use super::*;

const HELMET: u16 = 0;
const HEAD: u16 = 1;
const PERSON: u16 = 2;
const CAMERA: &str = "gate-1";
/// 2027-01-15T08:00:00Z, in milliseconds.
const BASE_MS: u64 = 1_800_000_000_000;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(BASE_MS + ms)
}

fn det(class: u16, score: f32) -> Detection {
    Detection {
        x1: 10.0,
        y1: 20.0,
        x2: 110.5,
        y2: 220.0,
        score,
        class,
    }
}

fn head(score: f32) -> Detection {
    det(HEAD, score)
}

fn settings() -> AlertSettings {
    AlertSettings {
        classes: vec![HEAD],
        class_names: vec!["helmet".into(), "head".into(), "person".into()],
        min_score: 0.5,
        confirm_frames: 2,
        end_after: Duration::from_secs(10),
    }
}

fn tracker() -> EpisodeTracker {
    EpisodeTracker::new(CAMERA, settings())
}

/// Feeds frames at 2 fps from t = 0 with seq 0, 1, …; returns `(frame index, event)`.
fn feed(t: &mut EpisodeTracker, frames: &[&[Detection]]) -> Vec<(usize, AlertEvent)> {
    frames
        .iter()
        .enumerate()
        .flat_map(|(i, dets)| {
            t.observe(at(500 * i as u64), i as u64, dets, DecisionSource::Edge)
                .into_iter()
                .map(move |e| (i, e))
        })
        .collect()
}

fn kinds(events: &[AlertEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn frames_without_a_qualifying_box_never_alert() {
    let bad_box = Detection {
        x1: f32::NAN,
        ..head(0.9)
    };
    let cases: &[(&str, &[Detection])] = &[
        ("empty", &[]),
        ("below min_score", &[head(0.499)]),
        ("helmet is not an alert class", &[det(HELMET, 0.99)]),
        ("person is not an alert class", &[det(PERSON, 0.99)]),
        ("unknown class", &[det(7, 0.99)]),
        ("NaN score", &[head(f32::NAN)]),
        ("infinite score", &[head(f32::INFINITY)]),
        ("NaN coordinate", &[bad_box]),
        (
            "mixed non-qualifying",
            &[head(0.2), det(HELMET, 0.9), head(f32::NAN)],
        ),
    ];
    for (name, dets) in cases {
        let mut t = tracker();
        let events = feed(&mut t, &[*dets; 6]);
        assert!(events.is_empty(), "{name}: {events:?}");
        assert_eq!(t.tick(at(60_000)), None, "{name}");
        assert_eq!(t.counts(), EventCounts::default(), "{name}");
    }
}

#[test]
fn score_equal_to_min_score_alerts() {
    let mut t = tracker();
    let events = feed(&mut t, &[&[head(0.5)], &[head(0.5)]]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.kind, EventKind::New);
}

#[test]
fn confirmation_needs_consecutive_violating_frames() {
    const V: bool = true;
    const C: bool = false;
    let cases: &[(u32, &[bool], Option<usize>)] = &[
        (2, &[V, C, V], None),
        (2, &[V, C, V, C, V], None),
        (2, &[V, V], Some(1)),
        (2, &[C, V, V], Some(2)),
        (2, &[V, C, V, V], Some(3)),
        (3, &[V, V, C, V, V, V], Some(5)),
        (1, &[C, V], Some(1)),
        (0, &[V], Some(0)),
    ];
    for (confirm, pattern, expect) in cases {
        let mut t = EpisodeTracker::new(
            CAMERA,
            AlertSettings {
                confirm_frames: *confirm,
                ..settings()
            },
        );
        let violating = [head(0.9)];
        let frames: Vec<&[Detection]> = pattern
            .iter()
            .map(|&v| if v { &violating[..] } else { &[] })
            .collect();
        let events = feed(&mut t, &frames);
        let got: Vec<(usize, EventKind)> = events.iter().map(|(i, e)| (*i, e.kind)).collect();
        let want: Vec<(usize, EventKind)> = expect.iter().map(|&i| (i, EventKind::New)).collect();
        assert_eq!(got, want, "confirm_frames={confirm} pattern={pattern:?}");
    }
}

#[test]
fn episode_new_update_end() {
    let mut t = tracker();
    let frames: &[&[Detection]] = &[
        &[head(0.6)],             // 0: first violating frame, start_time
        &[head(0.7), head(0.55)], // 1: confirms → new with the best box
        &[head(0.8)],             // 2: better → update
        &[head(0.8)],             // 3: equal → nothing
        &[head(0.65)],            // 4: lower → nothing
        &[],                      // 5: clean, episode goes on
        &[head(0.6)],             // 6: last violating frame (t = 3 s)
    ];
    let events = feed(&mut t, frames);
    let got: Vec<(usize, EventKind)> = events.iter().map(|(i, e)| (*i, e.kind)).collect();
    assert_eq!(got, [(1, EventKind::New), (2, EventKind::Update)]);

    let new = &events[0].1;
    assert_eq!(new.id, format!("{BASE_MS}-{CAMERA}"));
    assert_eq!(new.label, "head");
    assert_eq!((new.score, new.top_score, new.count), (0.7, 0.7, 2));
    assert_eq!(new.bbox, [10.0, 20.0, 110.5, 220.0]);
    assert_eq!((new.start_time, new.end_time), (at(0), None));
    assert_eq!((new.frame_seq, new.snapshot), (1, true));

    let update = &events[1].1;
    assert_eq!(update.id, new.id);
    assert_eq!(
        (update.score, update.top_score, update.count),
        (0.8, 0.8, 1)
    );
    assert_eq!((update.start_time, update.frame_seq), (at(0), 2));

    // Clean frames until just before end_after has passed since the last violating frame.
    let last = at(3_000);
    for (seq, ms) in [(7, 3_500), (8, 8_000), (9, 12_999)] {
        assert!(t.observe(at(ms), seq, &[], DecisionSource::Edge).is_empty());
    }
    let end = t.observe(at(13_000), 10, &[], DecisionSource::Edge);
    assert_eq!(kinds(&end), [EventKind::End]);
    let end = &end[0];
    assert_eq!(end.id, new.id);
    assert_eq!((end.start_time, end.end_time), (at(0), Some(last)));
    assert_eq!(
        (end.score, end.top_score, end.label.as_str()),
        (0.8, 0.8, "head")
    );
    assert_eq!((end.count, end.frame_seq, end.snapshot), (2, 6, false));

    assert!(
        t.observe(at(14_000), 11, &[], DecisionSource::Edge)
            .is_empty()
    );
    assert_eq!(t.tick(at(60_000)), None);
    assert_eq!(
        t.counts(),
        EventCounts {
            new: 1,
            update: 1,
            end: 1
        }
    );
}

#[test]
fn more_violating_boxes_update_even_at_lower_score() {
    let mut t = tracker();
    let events = feed(
        &mut t,
        &[
            &[head(0.9)],
            &[head(0.9)],                       // new, 1 box
            &[head(0.6), head(0.6)],            // 2 boxes → update
            &[head(0.7), head(0.7)],            // 2 again, lower score → nothing
            &[head(0.6), head(0.6), head(0.6)], // 3 → update
        ],
    );
    let got: Vec<(usize, EventKind, usize)> =
        events.iter().map(|(i, e)| (*i, e.kind, e.count)).collect();
    assert_eq!(
        got,
        [
            (1, EventKind::New, 1),
            (2, EventKind::Update, 2),
            (4, EventKind::Update, 3)
        ]
    );
    assert_eq!(events[2].1.top_score, 0.9);
}

#[test]
fn update_beats_the_published_snapshot_not_unpublished_confirming_frames() {
    let mut t = tracker();
    let events = feed(&mut t, &[&[head(0.9)], &[head(0.6)], &[head(0.8)]]);
    let got: Vec<(EventKind, f32, f32)> = events
        .iter()
        .map(|(_, e)| (e.kind, e.score, e.top_score))
        .collect();
    assert_eq!(
        got,
        [(EventKind::New, 0.6, 0.9), (EventKind::Update, 0.8, 0.9)]
    );
}

#[test]
fn tick_ends_the_episode_when_frames_stop() {
    let mut t = tracker();
    feed(&mut t, &[&[head(0.9)], &[head(0.9)]]);
    let last = at(500);
    assert_eq!(t.tick(at(5_000)), None);
    assert_eq!(t.tick(last + Duration::from_millis(9_999)), None);
    let end = t.tick(last + Duration::from_secs(10)).expect("end");
    assert_eq!(end.kind, EventKind::End);
    assert_eq!(end.end_time, Some(last));
    assert_eq!((end.frame_seq, end.source), (1, DecisionSource::Edge));
    assert_eq!(t.tick(at(60_000)), None);
    assert_eq!(t.counts().end, 1);
}

#[test]
fn tick_never_ends_an_unconfirmed_run() {
    let mut t = tracker();
    feed(&mut t, &[&[head(0.9)]]);
    assert_eq!(t.tick(at(60_000)), None);
    assert_eq!(t.counts(), EventCounts::default());
}

#[test]
fn a_new_episode_after_an_end_gets_a_new_id() {
    let mut t = tracker();
    let first = feed(&mut t, &[&[head(0.9)], &[head(0.9)]]);
    let end = t.tick(at(30_000)).expect("end");
    let second: Vec<AlertEvent> = [40_000, 40_500]
        .into_iter()
        .enumerate()
        .flat_map(|(i, ms)| t.observe(at(ms), 100 + i as u64, &[head(0.7)], DecisionSource::Edge))
        .collect();
    assert_eq!(kinds(&second), [EventKind::New]);
    assert_eq!(end.id, first[0].1.id);
    assert_ne!(second[0].id, first[0].1.id);
    assert_eq!(second[0].id, format!("{}-{CAMERA}", BASE_MS + 40_000));
    assert_eq!(
        (second[0].top_score, second[0].start_time),
        (0.7, at(40_000))
    );
}

#[test]
fn a_violating_frame_after_a_long_gap_ends_the_old_episode_first() {
    // confirm_frames = 1: the late frame ends the old episode and opens the next in one call.
    let mut t = EpisodeTracker::new(
        CAMERA,
        AlertSettings {
            confirm_frames: 1,
            ..settings()
        },
    );
    let first = t.observe(at(0), 0, &[head(0.9)], DecisionSource::Edge);
    let late = t.observe(at(20_000), 1, &[head(0.6)], DecisionSource::Cloud);
    assert_eq!(kinds(&late), [EventKind::End, EventKind::New]);
    assert_eq!(late[0].id, first[0].id);
    assert_eq!(late[0].end_time, Some(at(0)));
    assert_eq!(late[0].source, DecisionSource::Edge);
    assert_eq!((late[1].start_time, late[1].score), (at(20_000), 0.6));

    // confirm_frames = 2: only the end; the late frame is the first of a new run.
    let mut t = tracker();
    feed(&mut t, &[&[head(0.9)], &[head(0.9)]]);
    let late = t.observe(at(20_000), 2, &[head(0.9)], DecisionSource::Edge);
    assert_eq!(kinds(&late), [EventKind::End]);
    let next = t.observe(at(20_500), 3, &[head(0.9)], DecisionSource::Edge);
    assert_eq!(kinds(&next), [EventKind::New]);
    assert_eq!(next[0].start_time, at(20_000));
}

#[test]
fn violating_frames_further_apart_than_end_after_do_not_confirm() {
    let mut t = tracker();
    assert!(
        t.observe(at(0), 0, &[head(0.9)], DecisionSource::Edge)
            .is_empty()
    );
    assert!(
        t.observe(at(10_000), 1, &[head(0.9)], DecisionSource::Edge)
            .is_empty()
    );
    let new = t.observe(at(10_500), 2, &[head(0.9)], DecisionSource::Edge);
    assert_eq!(kinds(&new), [EventKind::New]);
    assert_eq!(new[0].start_time, at(10_000));
}

#[test]
fn the_source_is_that_of_the_frame_causing_the_event() {
    let mut t = tracker();
    assert!(
        t.observe(at(0), 0, &[head(0.6)], DecisionSource::Edge)
            .is_empty()
    );
    let new = t.observe(at(500), 1, &[head(0.6)], DecisionSource::Cloud);
    assert_eq!(new[0].source, DecisionSource::Cloud);
    let update = t.observe(at(1_000), 2, &[head(0.7)], DecisionSource::Edge);
    assert_eq!(update[0].source, DecisionSource::Edge);
    let update = t.observe(at(1_500), 3, &[head(0.8)], DecisionSource::Cloud);
    assert_eq!(update[0].source, DecisionSource::Cloud);
    let end = t.tick(at(60_000)).expect("end");
    assert_eq!((end.source, end.frame_seq), (DecisionSource::Cloud, 3));
    let json = serde_json::to_value(&new[0]).unwrap();
    assert_eq!(json["source"], "cloud");
}

#[test]
fn json_shape_of_each_event_type() {
    let mut t = tracker();
    let mut events: Vec<AlertEvent> = feed(&mut t, &[&[head(0.75)], &[head(0.75)], &[head(0.9)]])
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    events.extend(t.tick(at(20_000)));
    assert_eq!(
        kinds(&events),
        [EventKind::New, EventKind::Update, EventKind::End]
    );

    let keys: BTreeSet<&str> = [
        "type",
        "id",
        "camera",
        "label",
        "score",
        "top_score",
        "box",
        "count",
        "start_time",
        "end_time",
        "source",
        "frame_seq",
        "snapshot",
    ]
    .into();
    let id = format!("{BASE_MS}-{CAMERA}");
    let want = [
        json!({
            "type": "new", "id": id, "camera": CAMERA, "label": "head",
            "score": 0.75, "top_score": 0.75, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "start_time": "2027-01-15T08:00:00.000Z", "end_time": null,
            "source": "edge", "frame_seq": 1, "snapshot": true,
        }),
        json!({
            "type": "update", "id": id, "camera": CAMERA, "label": "head",
            "score": 0.9, "top_score": 0.9, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "start_time": "2027-01-15T08:00:00.000Z", "end_time": null,
            "source": "edge", "frame_seq": 2, "snapshot": true,
        }),
        json!({
            "type": "end", "id": id, "camera": CAMERA, "label": "head",
            "score": 0.9, "top_score": 0.9, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "start_time": "2027-01-15T08:00:00.000Z", "end_time": "2027-01-15T08:00:01.000Z",
            "source": "edge", "frame_seq": 2, "snapshot": false,
        }),
    ];
    for (event, want) in events.iter().zip(want) {
        let text = serde_json::to_string(event).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        let got_keys: BTreeSet<&str> = got
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got_keys, keys, "{text}");
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn times_keep_milliseconds() {
    let mut t = tracker();
    let start = at(1_234);
    t.observe(start, 0, &[head(0.9)], DecisionSource::Edge);
    let new = t.observe(at(1_734), 1, &[head(0.9)], DecisionSource::Edge);
    let json = serde_json::to_value(&new[0]).unwrap();
    assert_eq!(json["start_time"], "2027-01-15T08:00:01.234Z");
    assert_eq!(json["id"], format!("{}-{CAMERA}", BASE_MS + 1_234));
}

#[test]
fn nan_scores_never_panic_and_never_alert() {
    let mut t = tracker();
    let mixed = [head(f32::NAN), head(0.7), head(f32::NAN)];
    let events = feed(&mut t, &[&mixed, &mixed, &[head(f32::NAN)]]);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].1.score, events[0].1.count), (0.7, 1));
    assert_eq!(events[0].1.top_score, 0.7);

    let mut t = EpisodeTracker::new(
        CAMERA,
        AlertSettings {
            min_score: f32::NAN,
            ..settings()
        },
    );
    let frame: &[Detection] = &[head(1.0)];
    assert!(feed(&mut t, &[frame; 4]).is_empty());
}

#[test]
fn a_clock_stepped_backwards_neither_ends_nor_panics() {
    let mut t = tracker();
    feed(&mut t, &[&[head(0.9)], &[head(0.9)]]);
    let earlier = at(500) - Duration::from_secs(3_600);
    assert!(t.observe(earlier, 2, &[], DecisionSource::Edge).is_empty());
    assert_eq!(t.tick(earlier), None);
    assert_eq!(
        kinds(&t.tick(at(10_500)).into_iter().collect::<Vec<_>>()),
        [EventKind::End]
    );
}

#[test]
fn times_humantime_cannot_format_fail_serialization_instead_of_panicking() {
    for start in [
        UNIX_EPOCH - Duration::from_millis(1_500),
        UNIX_EPOCH + Duration::from_secs(253_402_300_800),
    ] {
        let mut t = EpisodeTracker::new(
            CAMERA,
            AlertSettings {
                confirm_frames: 1,
                ..settings()
            },
        );
        let new = t.observe(start, 0, &[head(0.9)], DecisionSource::Edge);
        assert_eq!(kinds(&new), [EventKind::New]);
        assert!(serde_json::to_string(&new[0]).is_err());
    }
    let mut t = EpisodeTracker::new(
        CAMERA,
        AlertSettings {
            confirm_frames: 1,
            ..settings()
        },
    );
    let new = t.observe(
        UNIX_EPOCH - Duration::from_millis(1_500),
        0,
        &[head(0.9)],
        DecisionSource::Edge,
    );
    assert_eq!(new[0].id, format!("-1500-{CAMERA}"));
}

#[test]
fn a_class_without_a_name_is_labelled_by_its_number() {
    let mut t = EpisodeTracker::new(
        CAMERA,
        AlertSettings {
            classes: vec![HEAD, 9],
            ..settings()
        },
    );
    let events = feed(&mut t, &[&[det(9, 0.9)], &[det(9, 0.9), head(0.6)]]);
    assert_eq!(events[0].1.label, "9");
}

#[test]
fn settings_from_config_resolve_class_names() {
    let model: Vec<String> = ["helmet", "head", "person"].map(String::from).into();
    let config = AlertsConfig {
        classes: vec!["head".into()],
        min_score: 0.5,
        confirm_frames: 2,
        end_after_s: 10.0,
    };
    assert_eq!(AlertSettings::from_config(&config, &model), Ok(settings()));

    let unknown = AlertsConfig {
        classes: vec!["head".into(), "hat".into()],
        ..config.clone()
    };
    assert_eq!(
        AlertSettings::from_config(&unknown, &model),
        Err(SettingsError::UnknownClass("hat".into()))
    );
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let config = AlertsConfig {
            end_after_s: bad,
            ..config.clone()
        };
        assert!(matches!(
            AlertSettings::from_config(&config, &model),
            Err(SettingsError::EndAfter(_))
        ));
    }
}

#[test]
fn close_ends_an_open_episode_at_once_and_drops_an_unconfirmed_one() {
    let mut t = tracker();
    let events = feed(&mut t, &[&[head(0.8)], &[head(0.9)], &[]]);
    assert_eq!(events.len(), 1, "new after two frames");
    let end = t.close().expect("an open episode ends when closed");
    assert_eq!(end.kind, EventKind::End);
    assert_eq!(end.id, events[0].1.id);
    assert_eq!(end.end_time, Some(at(500)), "the last violating frame");
    assert!(t.is_idle());
    assert!(t.close().is_none(), "nothing left to end");

    let mut t = tracker();
    assert!(feed(&mut t, &[&[head(0.8)]]).is_empty());
    assert!(t.close().is_none(), "never published, so nothing to end");
    assert!(t.is_idle());
}
