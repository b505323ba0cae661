use super::*;
use chrono::NaiveDate;
use helmet_pipelines::Detection;

fn polygon(points: &[[f64; 2]]) -> Polygon {
    Polygon::from_fractions(points).unwrap()
}

fn square() -> Polygon {
    polygon(&[[0.1, 0.2], [0.9, 0.2], [0.9, 0.95], [0.1, 0.95]])
}

/// An L: the square (0,0)–(1,1) without its top-right quarter.
fn l_shape() -> Polygon {
    polygon(&[
        [0.0, 0.0],
        [0.5, 0.0],
        [0.5, 0.5],
        [1.0, 0.5],
        [1.0, 1.0],
        [0.0, 1.0],
    ])
}

#[test]
fn point_in_convex_polygon() {
    let p = square();
    assert!(p.contains(0.5, 0.5));
    assert!(!p.contains(0.05, 0.5));
    assert!(!p.contains(0.5, 0.99));
    assert!(!p.contains(-3.0, 0.5));
}

#[test]
fn point_in_concave_polygon() {
    let p = l_shape();
    assert!(p.contains(0.25, 0.25));
    assert!(p.contains(0.75, 0.75));
    assert!(!p.contains(0.75, 0.25), "the missing quarter");
    // On the ray through the reflex vertex (0.5, 0.5): counted once.
    assert!(p.contains(0.25, 0.5));
    assert!(!p.contains(1.2, 0.5));
}

#[test]
fn edges_and_vertices_are_inside() {
    let p = square();
    for (x, y) in [
        (0.1, 0.5),
        (0.9, 0.5),
        (0.5, 0.2),
        (0.5, 0.95),
        (0.1, 0.2),
        (0.9, 0.95),
    ] {
        assert!(p.contains(x, y), "({x}, {y})");
    }
    let l = l_shape();
    assert!(l.contains(0.75, 0.5), "inner horizontal edge");
    assert!(l.contains(0.5, 0.25), "inner vertical edge");
    assert!(l.contains(0.5, 0.5), "reflex vertex");
    // A diagonal edge, not representable exactly in f32.
    let t = polygon(&[[0.0, 0.0], [0.3, 0.0], [0.3, 0.7]]);
    assert!(t.contains(0.15, 0.35));
}

#[test]
fn nan_and_infinity_are_never_inside() {
    let p = polygon(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]);
    for (x, y) in [
        (f32::NAN, 0.5),
        (0.5, f32::NAN),
        (f32::INFINITY, 0.5),
        (0.5, f32::NEG_INFINITY),
    ] {
        assert!(!p.contains(x, y), "({x}, {y})");
    }
}

#[test]
fn closed_polygons_drop_their_closing_point() {
    let p = polygon(&[[0.1, 0.1], [0.9, 0.1], [0.5, 0.9], [0.1, 0.1]]);
    assert_eq!(p.points().len(), 3);
}

#[test]
fn bad_polygons_are_refused() {
    let bad: &[(&[[f64; 2]], &str)] = &[
        (&[[0.1, 0.1], [0.9, 0.1]], "distinct"),
        (&[[0.1, 0.1], [0.9, 0.1], [0.1, 0.1]], "distinct"),
        (&[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], "no area"),
        (&[[0.1, 0.1], [1.5, 0.1], [0.5, 0.9]], "within [0, 1]"),
        (&[[0.1, 0.1], [f64::NAN, 0.1], [0.5, 0.9]], "within [0, 1]"),
        (
            &[[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]],
            "crosses itself",
        ),
    ];
    for (points, why) in bad {
        let e = Polygon::from_fractions(points).unwrap_err();
        assert!(e.reason.contains(why), "{points:?}: {e:?}");
    }
    let e = Polygon::from_fractions(&[[0.1, 0.1], [0.2, -0.1], [0.5, 0.9]]).unwrap_err();
    assert_eq!(e.point, Some(1));
}

fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(h, min, 0))
        .unwrap()
}

// 2026-12-04 is a Friday.
fn fri(h: u32, m: u32) -> NaiveDateTime {
    at(2026, 12, 4, h, m)
}
fn sat(h: u32, m: u32) -> NaiveDateTime {
    at(2026, 12, 5, h, m)
}
fn sun(h: u32, m: u32) -> NaiveDateTime {
    at(2026, 12, 6, h, m)
}
fn mon(h: u32, m: u32) -> NaiveDateTime {
    at(2026, 12, 7, h, m)
}

fn camera(extra: &str) -> CameraConfig {
    let text = format!("name = \"yard\"\nurl = \"rtsp://127.0.0.1/x\"\n{extra}");
    toml::from_str(&text).unwrap()
}

fn schedule(windows: &str) -> Schedule {
    CameraRules::from_config(&camera(windows)).unwrap().schedule
}

#[test]
fn overnight_window_belongs_to_the_day_it_starts_on() {
    let s = schedule("[[schedule]]\ndays = [\"fri\"]\nstart = \"22:00\"\nend = \"06:00\"\n");
    assert!(s.is_active_at(sat(3, 0)));
    assert!(!s.is_active_at(fri(3, 0)));
    assert!(s.is_active_at(fri(22, 0)));
    assert!(s.is_active_at(fri(23, 59)));
    assert!(!s.is_active_at(fri(21, 59)));
    assert!(!s.is_active_at(sat(6, 0)), "the end is excluded");
    assert!(!s.is_active_at(sat(22, 30)));
}

#[test]
fn daily_ranges_and_midnight_end() {
    let s = schedule("[[schedule]]\ndays = [\"daily\"]\nstart = \"07:00\"\nend = \"18:00\"\n");
    for day in [fri, sat, sun, mon] {
        assert!(s.is_active_at(day(7, 0)));
        assert!(!s.is_active_at(day(18, 0)));
        assert!(!s.is_active_at(day(6, 59)));
    }
    let s = schedule("[[schedule]]\ndays = [\"mon-fri\"]\nstart = \"07:00\"\nend = \"18:00\"\n");
    assert!(s.is_active_at(mon(12, 0)));
    assert!(s.is_active_at(fri(12, 0)));
    assert!(!s.is_active_at(sat(12, 0)));
    assert!(!s.is_active_at(sun(12, 0)));
    let s = schedule("[[schedule]]\ndays = [\"sat-mon\"]\nstart = \"20:00\"\nend = \"24:00\"\n");
    assert!(s.is_active_at(sat(23, 59)));
    assert!(s.is_active_at(sun(20, 0)));
    assert!(s.is_active_at(mon(21, 0)));
    assert!(!s.is_active_at(fri(23, 0)));
    assert!(!s.is_active_at(sun(0, 0)), "24:00 ends at midnight");
}

#[test]
fn several_windows_and_none() {
    let s = schedule(
        "[[schedule]]\ndays = [\"mon\", \"wed\"]\nstart = \"08:00\"\nend = \"09:00\"\n\
         [[schedule]]\ndays = [\"sun\"]\nstart = \"10:00\"\nend = \"11:00\"\n",
    );
    assert_eq!(s.windows().len(), 2);
    assert!(s.is_active_at(mon(8, 30)));
    assert!(s.is_active_at(sun(10, 30)));
    assert!(!s.is_active_at(sun(8, 30)));
    let always = schedule("");
    assert!(always.is_always());
    assert_eq!(always, Schedule::always());
    assert!(always.is_active_at(sat(3, 0)));
    assert!(always.is_active(SystemTime::now()));
}

#[test]
fn bad_schedules_name_camera_and_key() {
    for (window, key) in [
        (
            "days = [\"someday\"]\nstart = \"07:00\"\nend = \"18:00\"",
            "schedule[0].days[0]",
        ),
        (
            "days = [\"mon\"]\nstart = \"24:00\"\nend = \"18:00\"",
            "schedule[0].start",
        ),
        (
            "days = [\"mon\"]\nstart = \"07:00\"\nend = \"7:00\"",
            "schedule[0].end",
        ),
        (
            "days = [\"mon\"]\nstart = \"07:00\"\nend = \"07:00\"",
            "schedule[0].end",
        ),
        (
            "days = []\nstart = \"07:00\"\nend = \"08:00\"",
            "schedule[0].days",
        ),
    ] {
        let e =
            CameraRules::from_config(&camera(&format!("[[schedule]]\n{window}\n"))).unwrap_err();
        assert_eq!(e.key, key, "{window}: {e}");
        assert!(
            e.to_string().starts_with("camera \"yard\": schedule[0]."),
            "{e}"
        );
    }
}

fn yard() -> CameraRules {
    CameraRules::from_config(&camera(
        "required_zones = [\"scaffold\"]\n\
         [[zone]]\nname = \"scaffold\"\npolygon = [[0.10, 0.20], [0.90, 0.20], [0.90, 0.95], [0.10, 0.95]]\n\
         [[zone]]\nname = \"left\"\npolygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\n\
         [[mask]]\nname = \"street\"\npolygon = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4]]\n",
    ))
    .unwrap()
}

#[test]
fn rules_of_a_camera() {
    let r = yard();
    assert_eq!(r.zones_at((0.3, 0.5)), ["scaffold", "left"]);
    assert_eq!(r.zones_at((0.7, 0.5)), ["scaffold"]);
    assert!(r.zones_at((0.95, 0.1)).is_empty());
    assert!(r.counts((0.7, 0.5)));
    assert!(
        !r.counts((0.05, 0.5)),
        "only in a zone that is not required"
    );
    assert!(r.is_masked((0.25, 0.1)));
    assert!(!r.is_masked((0.1, 0.3)));
    assert!(!r.is_masked((f32::NAN, 0.1)));
    let free = CameraRules::from_config(&camera("")).unwrap();
    assert_eq!(free, CameraRules::default());
    assert!(free.counts((0.5, 0.5)) && !free.is_masked((0.5, 0.5)));
    assert_eq!(r.clone(), r, "reload compares rules");
}

#[test]
fn bad_zones_name_camera_and_key() {
    let e = CameraRules::from_config(&camera(
        "[[zone]]\nname = \"a\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]]\n\
         [[zone]]\nname = \"b\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [1.9, 0.9]]\n",
    ))
    .unwrap_err();
    assert_eq!(e.key, "zone[1].polygon[2]", "{e}");
    let e = CameraRules::from_config(&camera("required_zones = [\"nowhere\"]\n")).unwrap_err();
    assert_eq!(e.key, "required_zones[0]", "{e}");
}

fn detection(x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
    Detection {
        x1,
        y1,
        x2,
        y2,
        score: 0.9,
        class: 1,
    }
}

#[test]
fn foot_point_is_the_bottom_centre_in_fractions() {
    let d = detection(100.0, 50.0, 300.0, 540.0);
    assert_eq!(foot_point(&d, 1280, 720), Some((0.15625, 0.75)));
    assert_eq!(foot_point(&d, 0, 720), None);
    assert_eq!(foot_point(&d, 1280, 0), None);
    assert_eq!(
        foot_point(&detection(f32::NAN, 0.0, 1.0, 1.0), 10, 10),
        None
    );
    assert_eq!(
        foot_point(&detection(0.0, 0.0, 1.0, f32::INFINITY), 10, 10),
        None
    );
    // Huge but finite coordinates do not overflow.
    let big = foot_point(&detection(f32::MAX, 0.0, f32::MAX, 10.0), u32::MAX, 10);
    assert!(big.is_some_and(|(x, y)| x.is_finite() && y == 1.0));
}

#[test]
fn a_clock_outside_any_calendar_is_judged_active_without_panicking() {
    let s = schedule("[[schedule]]\ndays = [\"mon\"]\nstart = \"08:00\"\nend = \"09:00\"\n");
    let far = UNIX_EPOCH + std::time::Duration::from_secs(u64::MAX / 4);
    assert!(s.is_active(far));
    assert!(s.is_active(UNIX_EPOCH - std::time::Duration::from_secs(1)));
    // An ordinary reading is judged by the windows: some day of any week is not Monday morning.
    let week =
        (0..7 * 24).map(|h| UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + h * 3600));
    assert!(week.clone().any(|t| !s.is_active(t)));
    assert!(week.into_iter().any(|t| s.is_active(t)));
}
