//! The sequences of `bench tracking`, each a situation the tracker and the episode logic must get
//! right. Speeds are at most about one head width per frame (a brisk walk at 2 fps).

use std::time::SystemTime;

use super::scene::{Area, Expect, Key, PersonSpec, Scenario, Sprite, Window, local_time};

/// Pillar margin around the head positions it must hide, in pixels: covers position rounding.
const PILLAR_MARGIN: f32 = 4.0;
/// Walking speed of the occluded people, in head widths per frame. Above half a width (plus the
/// margin), the frames either side of the hidden ones show more than half of the head.
const OCCLUDED_SPEED: f32 = 0.75;

/// The sprites of one class, in order.
struct Cast<'a> {
    sprites: &'a [Sprite],
}

impl Cast<'_> {
    /// The index of the `nth` sprite of `class`, cycling when there are fewer.
    fn pick(&self, class: u16, nth: usize) -> Result<usize, String> {
        let of_class: Vec<usize> = (0..self.sprites.len())
            .filter(|&i| self.sprites[i].class == class)
            .collect();
        if of_class.is_empty() {
            return Err(format!("no usable person of class {class}"));
        }
        Ok(of_class[nth % of_class.len()])
    }

    fn head_w(&self, sprite: usize) -> f32 {
        self.sprites.get(sprite).map_or(60.0, |s| s.head_size().0)
    }
}

fn walker(gt_id: u32, sprite: usize, keys: &[(u32, f32, f32)], expect: Expect) -> PersonSpec {
    PersonSpec {
        gt_id,
        sprite,
        keys: keys
            .iter()
            .map(|&(frame, cx, cy)| Key { frame, cx, cy })
            .collect(),
        expect,
    }
}

/// Mon–Fri 07:00–18:00, the working week of a site.
fn working_week() -> Vec<Window> {
    vec![Window {
        days: vec!["mon-fri".into()],
        start: "07:00".into(),
        end: "18:00".into(),
    }]
}

/// A Wednesday morning (in schedule) and a Sunday night (out of it), local time.
fn times() -> Result<(SystemTime, SystemTime), String> {
    let weekday = local_time(2026, 3, 4, 10, 0).ok_or("2026-03-04 10:00 local")?;
    let sunday = local_time(2026, 3, 1, 3, 0).ok_or("2026-03-01 03:00 local")?;
    Ok((weekday, sunday))
}

fn base(name: &'static str, frames: u32, start: SystemTime) -> Scenario {
    Scenario {
        name,
        frames,
        people: Vec::new(),
        pillars: Vec::new(),
        zones: Vec::new(),
        masks: Vec::new(),
        required_zones: Vec::new(),
        schedule: working_week(),
        start,
        intended_hidden: Vec::new(),
    }
}

fn rect_area(name: &str, x0: f32, y0: f32, x1: f32, y1: f32) -> Area {
    Area {
        name: name.into(),
        points: vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
    }
}

/// Every scenario, in the order they run.
pub fn all(sprites: &[Sprite]) -> Result<Vec<Scenario>, String> {
    let cast = Cast { sprites };
    let (weekday, sunday) = times()?;
    let v0 = cast.pick(1, 0)?;
    let v1 = cast.pick(1, 1)?;
    let v2 = cast.pick(1, 2)?;
    let h0 = cast.pick(0, 0)?;
    let h1 = cast.pick(0, 1)?;

    let mut walk = base("walk", 30, weekday);
    walk.people = vec![walker(
        1,
        v0,
        &[(0, -30.0, 330.0), (29, 1310.0, 330.0)],
        Expect::Alert,
    )];

    let mut helmeted = base("helmeted", 30, weekday);
    helmeted.people = vec![walker(
        1,
        h0,
        &[(0, 1310.0, 360.0), (29, -30.0, 360.0)],
        Expect::Helmeted,
    )];

    let mut crossing = base("crossing", 34, weekday);
    crossing.people = vec![
        walker(
            1,
            v0,
            &[(0, -30.0, 300.0), (33, 1310.0, 300.0)],
            Expect::Alert,
        ),
        walker(
            2,
            v1,
            &[(0, 1310.0, 340.0), (33, -30.0, 340.0)],
            Expect::Alert,
        ),
    ];

    let occluded = occluded(&cast, v0, v1, weekday);

    let mut reenter = base("reenter", 40, weekday);
    reenter.people = vec![walker(
        1,
        v1,
        &[
            (0, 660.0, 380.0),
            (13, 1340.0, 380.0),
            (16, 1340.0, 380.0),
            (39, 144.0, 380.0),
        ],
        Expect::Alert,
    )];

    let [zone, mask, schedule] = rule_scenarios(v0, v1, weekday, sunday);
    let group = group(&[v0, h0, v1, v2, h1], weekday);
    Ok(vec![
        walk, helmeted, crossing, occluded, reenter, zone, mask, schedule, group,
    ])
}

/// Required zones, masks and the schedule: who may alert depends on where and when.
fn rule_scenarios(v0: usize, v1: usize, weekday: SystemTime, sunday: SystemTime) -> [Scenario; 3] {
    let mut zone = base("zone", 30, weekday);
    zone.zones = vec![rect_area("platform", 0.0, 0.5, 1.0, 1.0)];
    zone.required_zones = vec!["platform".into()];
    zone.people = vec![
        walker(
            1,
            v0,
            &[(0, -30.0, 490.0), (29, 1310.0, 490.0)],
            Expect::Alert,
        ),
        walker(
            2,
            v1,
            &[(0, 1310.0, 150.0), (29, -30.0, 150.0)],
            Expect::OutsideZone,
        ),
    ];

    let mut mask = base("mask", 30, weekday);
    mask.masks = vec![rect_area("office-window", 0.6, 0.0, 1.0, 1.0)];
    mask.people = vec![
        walker(
            1,
            v0,
            &[(0, 840.0, 300.0), (29, 1230.0, 300.0)],
            Expect::Masked,
        ),
        walker(
            2,
            v1,
            &[(0, 40.0, 430.0), (29, 720.0, 430.0)],
            Expect::Alert,
        ),
    ];

    let mut schedule = base("schedule", 30, sunday);
    schedule.people = vec![walker(
        1,
        v0,
        &[(0, -30.0, 330.0), (29, 1310.0, 330.0)],
        Expect::OutOfSchedule,
    )];

    [zone, mask, schedule]
}

/// Five people of both classes at different speeds and directions; `cast` is the sprite of each.
fn group(cast: &[usize; 5], start: SystemTime) -> Scenario {
    let [v0, h0, v1, v2, h1] = *cast;
    let mut group = base("group", 40, start);
    group.people = vec![
        walker(
            1,
            v0,
            &[(0, -30.0, 260.0), (39, 1310.0, 260.0)],
            Expect::Alert,
        ),
        walker(
            2,
            h0,
            &[(4, 1310.0, 330.0), (39, -30.0, 330.0)],
            Expect::Helmeted,
        ),
        walker(
            3,
            v1,
            &[(0, 200.0, 600.0), (35, 1100.0, 420.0)],
            Expect::Alert,
        ),
        walker(
            4,
            v2,
            &[(6, 1250.0, 560.0), (39, 400.0, 470.0)],
            Expect::Alert,
        ),
        walker(
            5,
            h1,
            &[(0, 600.0, 200.0), (39, 900.0, 200.0)],
            Expect::Helmeted,
        ),
    ];

    group
}

/// Two violating people each passing behind a pillar: the first hidden for one frame, the
/// second for two. A pillar spans exactly the head positions of the hidden frames (plus a
/// margin), so the frames either side show most of the head.
fn occluded(cast: &Cast<'_>, a: usize, b: usize, start: SystemTime) -> Scenario {
    let mut s = base("occluded", 40, start);
    let (wa, wb) = (cast.head_w(a), cast.head_w(b));
    let (va, vb) = (OCCLUDED_SPEED * wa, OCCLUDED_SPEED * wb);
    let (ya, yb) = (250.0, 500.0);
    let ax = |k: u32| -30.0 + va * k as f32;
    let bx = |k: u32| 1310.0 - vb * k as f32;
    s.people = vec![
        walker(1, a, &[(0, ax(0), ya), (39, ax(39), ya)], Expect::Alert),
        walker(2, b, &[(0, bx(0), yb), (39, bx(39), yb)], Expect::Alert),
    ];
    let (a_hidden, b_hidden) = (vec![12u32], vec![24u32, 25]);
    // The second pillar stops above the first person's path, the first one above the second's.
    s.pillars = vec![
        [
            ax(12) - wa / 2.0 - PILLAR_MARGIN,
            0.0,
            ax(12) + wa / 2.0 + PILLAR_MARGIN,
            420.0,
        ],
        [
            bx(25) - wb / 2.0 - PILLAR_MARGIN,
            430.0,
            bx(24) + wb / 2.0 + PILLAR_MARGIN,
            720.0,
        ],
    ];
    s.intended_hidden = vec![(1, a_hidden), (2, b_hidden)];
    s
}
