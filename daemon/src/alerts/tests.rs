use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use helmet_pipelines::Detection;
use serde_json::{Value, json};

use super::*;
use crate::config::CameraConfig;

const HELMET: u16 = 0;
const HEAD: u16 = 1;
const PERSON: u16 = 2;
const CAMERA: &str = "gate-1";
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 1000;
/// 2027-01-15T08:00:00Z, in milliseconds.
const BASE_MS: u64 = 1_800_000_000_000;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(BASE_MS + ms)
}

/// A 100×200 box with its top-left corner at (x, y).
fn det_at(class: u16, score: f32, x: f32, y: f32) -> Detection {
    Detection {
        x1: x,
        y1: y,
        x2: x + 100.5,
        y2: y + 200.0,
        score,
        class,
    }
}

fn det(class: u16, score: f32) -> Detection {
    det_at(class, score, 10.0, 20.0)
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

fn with_settings(settings: AlertSettings) -> EpisodeTracker {
    EpisodeTracker::new(CAMERA, settings, Arc::default())
}

fn tracker() -> EpisodeTracker {
    with_settings(settings())
}

/// The rules of a camera written as its config would be.
fn rules(toml_tables: &str) -> Arc<CameraRules> {
    let text = format!("name = \"{CAMERA}\"\nurl = \"file:///dev/null\"\n{toml_tables}");
    let camera: CameraConfig = toml::from_str(&text).expect("camera table");
    Arc::new(CameraRules::from_config(&camera).expect("valid rules"))
}

fn observe_at(
    t: &mut EpisodeTracker,
    time: SystemTime,
    seq: u64,
    detections: &[Detection],
    source: DecisionSource,
) -> Vec<AlertEvent> {
    t.observe(&FrameInput {
        time,
        seq,
        width: WIDTH,
        height: HEIGHT,
        detections,
        source,
    })
}

/// Feeds frames at 2 fps from t = 0 with seq 0, 1, …; returns `(frame index, event)`.
fn feed(t: &mut EpisodeTracker, frames: &[&[Detection]]) -> Vec<(usize, AlertEvent)> {
    frames
        .iter()
        .enumerate()
        .flat_map(|(i, dets)| {
            observe_at(t, at(500 * i as u64), i as u64, dets, DecisionSource::Edge)
                .into_iter()
                .map(move |e| (i, e))
        })
        .collect()
}

fn kinds(events: &[AlertEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn event_kinds(events: &[(usize, AlertEvent)]) -> Vec<(usize, EventKind)> {
    events.iter().map(|(i, e)| (*i, e.kind)).collect()
}

#[test]
fn frames_without_a_qualifying_box_never_alert() {
    let mut t = tracker();
    let frames: Vec<Vec<Detection>> = vec![
        vec![],
        vec![det(HELMET, 0.99)],
        vec![det(PERSON, 0.99)],
        vec![head(0.49)],
        vec![head(f32::NAN)],
    ];
    for f in &frames {
        let events = feed(&mut t, &[f, f, f, f]);
        assert!(events.is_empty(), "{f:?} alerted: {events:?}");
    }
    assert!(t.is_idle());
}

#[test]
fn one_person_new_update_end() {
    let mut t = tracker();
    let events = feed(
        &mut t,
        &[&[head(0.6)], &[head(0.7)], &[head(0.65)], &[head(0.9)], &[]],
    );
    assert_eq!(
        event_kinds(&events),
        [(1, EventKind::New), (3, EventKind::Update)]
    );
    let new = &events[0].1;
    assert_eq!((new.start_time, new.frames, new.count), (at(0), 2, 1));
    assert_eq!(new.track_id, events[1].1.track_id);
    assert!(t.tick(at(10_000)).is_empty(), "seen at 1.5 s");
    let end = t.tick(at(11_500));
    assert_eq!(kinds(&end), [EventKind::End]);
    assert_eq!(end[0].end_time, Some(at(1_500)));
    assert_eq!((end[0].score, end[0].top_score), (0.9, 0.9));
    assert!(t.is_idle());
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
fn two_people_make_two_episodes() {
    let mut t = tracker();
    let two = [
        det_at(HEAD, 0.8, 50.0, 100.0),
        det_at(HEAD, 0.7, 700.0, 100.0),
    ];
    let events = feed(&mut t, &[&two, &two]);
    assert_eq!(
        event_kinds(&events),
        [(1, EventKind::New), (1, EventKind::New)]
    );
    let (a, b) = (&events[0].1, &events[1].1);
    assert_ne!(a.track_id, b.track_id);
    assert_ne!(a.id, b.id);
    assert_eq!((a.count, b.count), (2, 2));
    let ends = t.close();
    assert_eq!(kinds(&ends), [EventKind::End, EventKind::End]);
}

#[test]
fn a_walking_person_hidden_for_two_frames_keeps_one_episode() {
    let mut t = tracker();
    let mut events = Vec::new();
    for i in 0..12u64 {
        let hidden = (5..7).contains(&i);
        let boxes: Vec<Detection> = if hidden {
            vec![]
        } else {
            vec![det_at(HEAD, 0.8, 60.0 * i as f32, 300.0)]
        };
        events.extend(observe_at(
            &mut t,
            at(500 * i),
            i,
            &boxes,
            DecisionSource::Edge,
        ));
    }
    assert_eq!(kinds(&events), [EventKind::New]);
    assert_eq!(kinds(&t.close()), [EventKind::End]);
}

#[test]
fn a_person_confirmed_with_a_helmet_ends_the_episode() {
    let mut t = tracker();
    let h = det(HELMET, 0.9);
    let events = feed(
        &mut t,
        &[&[head(0.8)], &[head(0.8)], &[h], &[h], &[h], &[h], &[h]],
    );
    let kinds: Vec<_> = event_kinds(&events);
    assert_eq!(kinds[0], (1, EventKind::New));
    // Two violating votes against helmet votes: the helmet wins at the third helmet frame.
    assert_eq!(kinds[1], (4, EventKind::End));
    assert_eq!(kinds.len(), 2);
    assert_eq!(events[1].1.end_time, Some(at(500)));
}

#[test]
fn one_flicker_of_the_other_class_does_not_end_or_split() {
    let mut t = tracker();
    let h = det(HELMET, 0.6);
    let events = feed(
        &mut t,
        &[&[head(0.8)], &[head(0.8)], &[h], &[head(0.8)], &[head(0.8)]],
    );
    assert_eq!(event_kinds(&events), [(1, EventKind::New)]);
}

#[test]
fn one_cloud_answer_confirms_on_its_own() {
    let mut t = tracker();
    let events = observe_at(&mut t, at(0), 0, &[head(0.8)], DecisionSource::Cloud);
    assert_eq!(kinds(&events), [EventKind::New]);
    assert_eq!(events[0].source, DecisionSource::Cloud);
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json["source"], "cloud");
}

#[test]
fn the_big_models_answer_stands_against_later_edge_boxes_while_the_track_holds_it() {
    let mut t = tracker();
    let events = observe_at(&mut t, at(0), 0, &[head(0.8)], DecisionSource::Cloud);
    assert_eq!(kinds(&events), [EventKind::New]);
    // The edge model then sees a helmet five times: by weight alone (3 against 5) that would
    // confirm the helmet and end the episode; the answer decides while it is among the votes.
    for frame in 1..=5 {
        let events = observe_at(
            &mut t,
            at(frame * 500),
            frame,
            &[det(HELMET, 0.8)],
            DecisionSource::Edge,
        );
        assert!(events.is_empty(), "frame {frame}: {events:?}");
    }
    let person = &t.tracks()[0];
    assert!(t.violating_by_votes(person));
    // Once the answer has left the last votes, the edge boxes decide again.
    let mut ended = Vec::new();
    for frame in 6..=12 {
        let helmet = [det(HELMET, 0.8)];
        ended.extend(observe_at(
            &mut t,
            at(frame * 500),
            frame,
            &helmet,
            DecisionSource::Edge,
        ));
    }
    assert_eq!(kinds(&ended), [EventKind::End]);
}

#[test]
fn masked_boxes_are_ignored() {
    // The mask covers the left half; the box's foot point (60, 220) of 1000 is inside it.
    let mut t = EpisodeTracker::new(
        CAMERA,
        settings(),
        rules(
            "[[mask]]\nname = \"poster\"\npolygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\n",
        ),
    );
    let inside = head(0.9);
    let outside = det_at(HEAD, 0.9, 700.0, 20.0);
    assert!(feed(&mut t, &[&[inside], &[inside], &[inside]]).is_empty());
    let events = feed(&mut t, &[&[inside, outside], &[inside, outside]]);
    assert_eq!(event_kinds(&events), [(1, EventKind::New)]);
    assert_eq!(events[0].1.bbox[0], 700.0);
}

#[test]
fn only_people_in_a_required_zone_count_and_events_name_their_zones() {
    let mut t = EpisodeTracker::new(
        CAMERA,
        settings(),
        rules(concat!(
            "required_zones = [\"scaffold\"]\n",
            "[[zone]]\nname = \"scaffold\"\npolygon = [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]]\n",
            "[[zone]]\nname = \"right\"\npolygon = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\n",
        )),
    );
    let outside = head(0.9);
    let inside = det_at(HEAD, 0.9, 700.0, 20.0);
    let events = feed(&mut t, &[&[outside, inside], &[outside, inside]]);
    assert_eq!(event_kinds(&events), [(1, EventKind::New)]);
    assert_eq!(events[0].1.zones, ["scaffold", "right"]);
    assert_eq!(events[0].1.count, 1, "the person outside does not count");
}

#[test]
fn no_alert_outside_the_schedule_and_open_episodes_end_when_it_closes() {
    // 08:00 UTC on Friday 2027-01-15 is a Thursday or a Friday in every time zone. A window that
    // is never open on those days:
    let mut closed = EpisodeTracker::new(
        CAMERA,
        settings(),
        rules(
            "[[schedule]]\ndays = [\"sat\", \"sun\", \"mon\"]\nstart = \"00:00\"\nend = \"24:00\"\n",
        ),
    );
    let frames: &[&[Detection]] = &[&[head(0.9)], &[head(0.9)], &[head(0.9)]];
    assert!(feed(&mut closed, frames).is_empty());
    assert!(!closed.rules().schedule.is_active(at(1_000)));

    let mut open = EpisodeTracker::new(
        CAMERA,
        settings(),
        rules("[[schedule]]\ndays = [\"daily\"]\nstart = \"00:00\"\nend = \"24:00\"\n"),
    );
    assert_eq!(event_kinds(&feed(&mut open, frames)), [(1, EventKind::New)]);
    assert!(open.rules().schedule.is_active(at(1_000)));
    // The window closes (a reload here; the clock passing its end works the same way).
    open.set_rules(rules(
        "[[schedule]]\ndays = [\"sat\", \"sun\", \"mon\"]\nstart = \"00:00\"\nend = \"24:00\"\n",
    ));
    assert_eq!(kinds(&open.tick(at(2_000))), [EventKind::End]);
    assert!(open.is_idle());
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
        "track_id",
        "label",
        "score",
        "top_score",
        "box",
        "count",
        "frames",
        "zones",
        "start_time",
        "end_time",
        "source",
        "frame_seq",
        "snapshot",
    ]
    .into();
    let id = format!("{BASE_MS}-{CAMERA}-1");
    let want = [
        json!({
            "type": "new", "id": id, "camera": CAMERA, "track_id": 1, "label": "head",
            "score": 0.75, "top_score": 0.75, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "frames": 2, "zones": [],
            "start_time": "2027-01-15T08:00:00.000Z", "end_time": null,
            "source": "edge", "frame_seq": 1, "snapshot": true,
        }),
        json!({
            "type": "update", "id": id, "camera": CAMERA, "track_id": 1, "label": "head",
            "score": 0.9, "top_score": 0.9, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "frames": 3, "zones": [],
            "start_time": "2027-01-15T08:00:00.000Z", "end_time": null,
            "source": "edge", "frame_seq": 2, "snapshot": true,
        }),
        json!({
            "type": "end", "id": id, "camera": CAMERA, "track_id": 1, "label": "head",
            "score": 0.9, "top_score": 0.9, "box": [10.0, 20.0, 110.5, 220.0], "count": 1,
            "frames": 3, "zones": [],
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
    observe_at(&mut t, at(1_234), 0, &[head(0.9)], DecisionSource::Edge);
    let new = observe_at(&mut t, at(1_734), 1, &[head(0.9)], DecisionSource::Edge);
    let json = serde_json::to_value(&new[0]).unwrap();
    assert_eq!(json["start_time"], "2027-01-15T08:00:01.234Z");
    assert_eq!(json["id"], format!("{}-{CAMERA}-1", BASE_MS + 1_234));
}

#[test]
fn nan_scores_never_panic_and_never_alert() {
    let mut t = tracker();
    let mixed = [head(f32::NAN), head(0.7), head(f32::NAN)];
    let events = feed(&mut t, &[&mixed, &mixed, &[head(f32::NAN)]]);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].1.score, events[0].1.count), (0.7, 1));

    let mut t = with_settings(AlertSettings {
        min_score: f32::NAN,
        ..settings()
    });
    let frame: &[Detection] = &[head(1.0)];
    assert!(feed(&mut t, &[frame; 4]).is_empty());
}

#[test]
fn a_clock_stepped_backwards_neither_ends_nor_panics() {
    let mut t = tracker();
    feed(&mut t, &[&[head(0.9)], &[head(0.9)]]);
    let earlier = at(500) - Duration::from_secs(3_600);
    assert!(observe_at(&mut t, earlier, 2, &[], DecisionSource::Edge).is_empty());
    assert!(t.tick(earlier).is_empty());
    assert_eq!(kinds(&t.tick(at(10_500))), [EventKind::End]);
}

#[test]
fn times_humantime_cannot_format_fail_serialization_instead_of_panicking() {
    let once = || {
        with_settings(AlertSettings {
            confirm_frames: 1,
            ..settings()
        })
    };
    for start in [
        UNIX_EPOCH - Duration::from_millis(1_500),
        UNIX_EPOCH + Duration::from_secs(253_402_300_800),
    ] {
        let new = observe_at(&mut once(), start, 0, &[head(0.9)], DecisionSource::Edge);
        assert_eq!(kinds(&new), [EventKind::New]);
        assert!(serde_json::to_string(&new[0]).is_err());
    }
    let new = observe_at(
        &mut once(),
        UNIX_EPOCH - Duration::from_millis(1_500),
        0,
        &[head(0.9)],
        DecisionSource::Edge,
    );
    assert_eq!(new[0].id, format!("-1500-{CAMERA}-1"));
}

#[test]
fn a_class_without_a_name_is_labelled_by_its_number() {
    let mut t = with_settings(AlertSettings {
        classes: vec![HEAD, 9],
        ..settings()
    });
    let events = feed(&mut t, &[&[det(9, 0.9)], &[det(9, 0.9)]]);
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
    let end = t.close();
    assert_eq!(kinds(&end), [EventKind::End]);
    assert_eq!(end[0].id, events[0].1.id);
    assert_eq!(end[0].end_time, Some(at(500)), "the last violating frame");
    assert!(t.is_idle());
    assert!(t.close().is_empty(), "nothing left to end");

    let mut t = tracker();
    assert!(feed(&mut t, &[&[head(0.8)]]).is_empty());
    assert!(t.close().is_empty(), "never published, so nothing to end");
    assert!(t.is_idle());
}

#[test]
fn the_cloud_is_asked_once_per_person_while_the_edge_sees_them_the_same() {
    let mut t = tracker();
    let fresh_for = Duration::from_secs(10);
    let size = (WIDTH, HEIGHT);
    let walker = |i: u64, class: u16| det_at(class, 0.6, 40.0 * i as f32, 300.0);
    assert_eq!(
        t.no_question(at(0), &[walker(0, HEAD)], size, fresh_for),
        None,
        "nobody answered about yet"
    );
    // The cloud answers frame 0: it saw the person without a helmet, as the edge did.
    observe_at(&mut t, at(0), 0, &[walker(0, HEAD)], DecisionSource::Cloud);
    t.remember_cloud_answer(at(0), &[walker(0, HEAD)]);
    for i in 1..4 {
        let edge = [walker(i, HEAD)];
        assert_eq!(
            t.no_question(at(500 * i), &edge, size, fresh_for),
            Some(NoQuestion::AlreadyAnswered),
            "frame {i}: the same person, seen the same"
        );
        observe_at(&mut t, at(500 * i), i, &edge, DecisionSource::Edge);
    }
    let edge = [walker(4, HELMET)];
    assert_eq!(
        t.no_question(at(2_000), &edge, size, fresh_for),
        None,
        "the edge model now sees a helmet"
    );
    let newcomer = det_at(HEAD, 0.6, 800.0, 600.0);
    assert_eq!(
        t.no_question(at(2_000), &[walker(4, HEAD), newcomer], size, fresh_for),
        None,
        "someone new"
    );
    assert_eq!(
        t.no_question(at(10_500), &[walker(4, HEAD)], size, fresh_for),
        None,
        "the answer is too old"
    );
    assert_eq!(
        t.no_question(at(2_000), &[walker(4, HEAD)], size, Duration::ZERO),
        None,
        "asking once is off"
    );
    assert_eq!(
        t.no_question(at(2_000), &[], size, fresh_for),
        None,
        "a frame without boxes is news"
    );
}

#[test]
fn a_box_that_never_became_a_track_is_remembered_by_its_place() {
    let mut t = tracker();
    let fresh_for = Duration::from_secs(10);
    // Too weak to start a track, so only its place can be remembered.
    let ghost = det_at(HEAD, 0.3, 500.0, 500.0);
    observe_at(&mut t, at(0), 0, &[], DecisionSource::Cloud);
    t.remember_cloud_answer(at(0), &[ghost]);
    assert_eq!(
        t.no_question(at(500), &[ghost], (WIDTH, HEIGHT), fresh_for),
        Some(NoQuestion::AlreadyAnswered)
    );
    let moved = det_at(HEAD, 0.3, 600.0, 500.0);
    assert_eq!(
        t.no_question(at(500), &[moved], (WIDTH, HEIGHT), fresh_for),
        None
    );
}

#[test]
fn no_question_off_schedule() {
    let t = EpisodeTracker::new(
        CAMERA,
        settings(),
        rules(
            "[[schedule]]\ndays = [\"sat\", \"sun\", \"mon\"]\nstart = \"00:00\"\nend = \"24:00\"\n",
        ),
    );
    assert_eq!(
        t.no_question(
            at(0),
            &[head(0.6)],
            (WIDTH, HEIGHT),
            Duration::from_secs(10)
        ),
        Some(NoQuestion::OffSchedule)
    );
}

#[test]
fn a_person_in_a_question_in_flight_is_not_asked_about_again() {
    let mut t = tracker();
    let fresh_for = Duration::from_secs(10);
    let wait = Duration::from_millis(1_500);
    let size = (WIDTH, HEIGHT);
    // A newcomer walking: 10 px a frame at 10 fps, not tracked yet (the frame asked about is
    // concluded only when its answer comes).
    let walker = |i: u64, class: u16| det_at(class, 0.6, 300.0 + 10.0 * i as f32, 300.0);
    assert_eq!(
        t.no_question(at(0), &[walker(0, HEAD)], size, fresh_for),
        None
    );
    t.note_question(at(0), &[walker(0, HEAD)], wait);
    for i in 1..10 {
        assert_eq!(
            t.no_question(at(100 * i), &[walker(i, HEAD)], size, fresh_for),
            Some(NoQuestion::AlreadyAnswered),
            "frame {i}: the same person, being asked about"
        );
        // 90 px from where they were asked about by now: followed from frame to frame.
        t.follow_questions(at(100 * i), &[walker(i, HEAD)]);
    }
    assert_eq!(
        t.no_question(at(500), &[walker(5, HELMET)], size, fresh_for),
        None,
        "seen differently"
    );
    let elsewhere = det_at(HEAD, 0.6, 900.0, 600.0);
    assert_eq!(
        t.no_question(at(500), &[walker(5, HEAD), elsewhere], size, fresh_for),
        None,
        "someone else too"
    );
    // No answer by the deadline (late, failed): the person is news again.
    assert_eq!(
        t.no_question(at(1_500), &[walker(15, HEAD)], size, fresh_for),
        None
    );
}
