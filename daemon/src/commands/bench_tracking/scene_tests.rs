use super::*;
use crate::commands::bench_tracking::mot::iou;
use crate::commands::bench_tracking::scenarios;

/// Flat people of the sizes the real cut-outs have: one class-0 head wider than tall, two
/// class-1 heads.
fn cast() -> Vec<Sprite> {
    vec![
        Sprite::synthetic(80.0, HEAD_H, 0, [200, 180, 40]),
        Sprite::synthetic(62.0, HEAD_H, 1, [160, 60, 60]),
        Sprite::synthetic(56.0, HEAD_H, 1, [60, 60, 160]),
    ]
}

fn all() -> (Vec<Sprite>, Vec<Scenario>) {
    let sprites = cast();
    let scenarios = scenarios::all(&sprites).expect("scenarios");
    (sprites, scenarios)
}

#[test]
fn truth_boxes_lie_inside_the_frame() {
    let (sprites, scenarios) = all();
    for s in &scenarios {
        let mut seen = 0;
        for k in 0..s.frames {
            for t in s.truth(&sprites, k) {
                let [x1, y1, x2, y2] = t.bbox;
                assert!(x1 >= 0.0 && y1 >= 0.0, "{} {k} {t:?}", s.name);
                assert!(
                    x2 <= FRAME_W as f32 && y2 <= FRAME_H as f32,
                    "{} {k} {t:?}",
                    s.name
                );
                assert!(
                    x2 - x1 >= 0.5 * 56.0 && y2 - y1 > 0.0,
                    "{} {k} {t:?}",
                    s.name
                );
                seen += 1;
            }
        }
        assert!(seen >= s.frames as usize / 2, "{}: {seen} boxes", s.name);
    }
}

#[test]
fn pillars_hide_people_in_exactly_the_intended_frames() {
    let (sprites, scenarios) = all();
    let occluded = scenarios.iter().find(|s| s.name == "occluded").unwrap();
    assert_eq!(occluded.intended_hidden.len(), 2);
    for (gt, hidden) in &occluded.intended_hidden {
        let mut checked = 0;
        for k in 0..occluded.frames {
            let heads = occluded.heads(&sprites, k);
            let Some((_, head)) = heads.iter().find(|h| h.0 == *gt) else {
                continue;
            };
            let inside = head[0] >= 0.0 && head[2] <= FRAME_W as f32;
            if !inside {
                continue;
            }
            let visible = occluded.truth(&sprites, k).iter().any(|t| t.gt_id == *gt);
            assert_eq!(visible, !hidden.contains(&k), "person {gt} frame {k}");
            checked += 1;
        }
        assert!(checked > 10, "person {gt}: {checked} frames");
    }
    // One frame for the first person, two for the second.
    let lens: Vec<usize> = occluded.intended_hidden.iter().map(|h| h.1.len()).collect();
    assert_eq!(lens, [1, 2]);
}

#[test]
fn rendering_is_deterministic() {
    let (sprites, scenarios) = all();
    let bg = background(7);
    assert_eq!(bg.as_raw(), background(7).as_raw());
    assert_ne!(bg.as_raw(), background(8).as_raw());
    let group = scenarios.iter().find(|s| s.name == "group").unwrap();
    for k in [0, 17, 39] {
        let a = group.render(&sprites, &bg, k);
        let b = group.render(&sprites, &bg, k);
        assert_eq!(a.as_raw(), b.as_raw());
        assert_eq!(group.truth(&sprites, k), group.truth(&sprites, k));
        assert_eq!(a.dimensions(), (FRAME_W, FRAME_H));
    }
    // The people are drawn: a frame with someone in it differs from the background.
    assert_ne!(group.render(&sprites, &bg, 10).as_raw(), bg.as_raw());
}

/// Bottom centre of a head box in fractions, as the zone rules place people.
fn foot(b: [f32; 4]) -> (f32, f32) {
    ((b[0] + b[2]) / 2.0 / FRAME_W as f32, b[3] / FRAME_H as f32)
}

fn polygon(area: &Area) -> crate::zones::Polygon {
    let points: Vec<[f64; 2]> = area
        .points
        .iter()
        .map(|p| [f64::from(p[0]), f64::from(p[1])])
        .collect();
    crate::zones::Polygon::from_fractions(&points).expect("polygon")
}

#[test]
fn zone_and_mask_outcomes_hold_in_every_visible_frame() {
    let (sprites, scenarios) = all();
    for s in &scenarios {
        let zones: Vec<_> = s.zones.iter().map(polygon).collect();
        let masks: Vec<_> = s.masks.iter().map(polygon).collect();
        for k in 0..s.frames {
            for t in s.truth(&sprites, k) {
                let (x, y) = foot(t.bbox);
                let masked = masks.iter().any(|m| m.contains(x, y));
                assert_eq!(masked, t.expect == Expect::Masked, "{} {k} {t:?}", s.name);
                if !s.required_zones.is_empty() {
                    let inside = zones.iter().any(|z| z.contains(x, y));
                    assert_eq!(inside, t.expect != Expect::OutsideZone, "{} {k}", s.name);
                }
            }
        }
    }
}

#[test]
fn schedule_times_fall_where_intended() {
    use chrono::{Datelike, Timelike};
    let (_, scenarios) = all();
    for s in &scenarios {
        let local: chrono::DateTime<chrono::Local> = s.start.into();
        let off = s.people.iter().any(|p| p.expect == Expect::OutOfSchedule);
        let weekday = local.weekday().num_days_from_monday();
        if off {
            assert_eq!((weekday, local.hour()), (6, 3), "{}", s.name);
        } else {
            assert_eq!((weekday, local.hour()), (2, 10), "{}", s.name);
        }
        assert!(!s.schedule.is_empty());
    }
}

#[test]
fn people_move_at_most_a_head_width_per_frame() {
    let (sprites, scenarios) = all();
    for s in &scenarios {
        for p in &s.people {
            let w = sprites[p.sprite].head_size().0;
            for k in 1..s.frames {
                if let (Some(a), Some(b)) = (position(&p.keys, k - 1), position(&p.keys, k)) {
                    let d = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
                    assert!(
                        d <= w * 1.05,
                        "{} person {} frame {k}: {d}",
                        s.name,
                        p.gt_id
                    );
                }
            }
        }
    }
}

#[test]
fn crossing_people_overlap_and_the_reentering_one_is_away_about_3_s() {
    let (sprites, scenarios) = all();
    let crossing = scenarios.iter().find(|s| s.name == "crossing").unwrap();
    let overlapping = (0..crossing.frames)
        .filter(|&k| {
            let h = crossing.heads(&sprites, k);
            h.len() == 2 && iou(h[0].1, h[1].1) > 0.0
        })
        .count();
    assert!((1..=4).contains(&overlapping), "{overlapping}");

    let reenter = scenarios.iter().find(|s| s.name == "reenter").unwrap();
    let visible: Vec<bool> = (0..reenter.frames)
        .map(|k| !reenter.truth(&sprites, k).is_empty())
        .collect();
    let first_gap = visible.iter().position(|v| !v).unwrap();
    let back = first_gap + visible[first_gap..].iter().position(|v| *v).unwrap();
    let away = FRAME_INTERVAL * (back - first_gap) as u32;
    assert!(
        away >= Duration::from_millis(2500) && away <= Duration::from_millis(4000),
        "{away:?}"
    );
}

#[test]
fn cut_outs_keep_the_head_box_at_the_requested_height() {
    let mut photo = RgbImage::from_pixel(400, 300, Rgb([10, 20, 30]));
    photo.put_pixel(5, 5, Rgb([255, 255, 255]));
    let src = Source {
        name: "p".into(),
        image: Arc::new(photo),
        head: [100.0, 50.0, 140.0, 100.0],
        class: 1,
        others: vec![[150.0, 60.0, 170.0, 90.0]],
    };
    let sprite = Sprite::from_source(&src, HEAD_H, Cutout::Box).unwrap();
    let (w, h) = sprite.head_size();
    assert!((h - HEAD_H).abs() < 0.01, "{h}");
    assert!((w - 40.0 * HEAD_H / 50.0).abs() < 0.01, "{w}");
    // Context: one head width either side, 0.6 above, 2.5 below (to the photo pixel, which
    // scales to 1.44 sprite pixels, plus rounding).
    let near = |got: u32, photo_px: f32| (got as f32 - photo_px * HEAD_H / 50.0).abs() <= 2.0;
    assert!(near(sprite.rgb.width(), 120.0), "{}", sprite.rgb.width());
    assert!(near(sprite.rgb.height(), 205.0), "{}", sprite.rgb.height());
    // The head centre is opaque.
    let (cx, cy) = (
        ((sprite.head[0] + sprite.head[2]) / 2.0) as u32,
        ((sprite.head[1] + sprite.head[3]) / 2.0) as u32,
    );
    assert_eq!(sprite.alpha[(cy * sprite.rgb.width() + cx) as usize], 255);
    // The box corners are feathered; the other head is erased.
    assert!(sprite.alpha[0] < 64, "{}", sprite.alpha[0]);
    let s = HEAD_H / 50.0;
    let (ox, oy) = (((160.0 - 60.0) * s) as u32, ((75.0 - 20.0) * s) as u32);
    assert_eq!(sprite.alpha[(oy * sprite.rgb.width() + ox) as usize], 0);
    let degenerate = Source {
        head: [10.0, 10.0, 10.0, 40.0],
        ..src
    };
    assert!(Sprite::from_source(&degenerate, HEAD_H, Cutout::Silhouette).is_none());
}
