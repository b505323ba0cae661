use std::time::UNIX_EPOCH;

use helmet_pipelines::letterbox::Letterbox;
use rand::{Rng, SeedableRng};

use super::*;

const W: u32 = 640;
const H: u32 = 360;

fn settings() -> MotionSettings {
    MotionSettings {
        enabled: true,
        threshold: 15.0,
        min_area: 0.003,
        max_skip: Duration::from_secs(5),
    }
}

/// A 640×360 camera frame letterboxed into 640×640, `seconds` into the run: mid grey with
/// `noise` grey levels of uniform noise, plus `square` (x, y, side, grey) painted on it.
fn frame(
    seconds: f64,
    noise: u8,
    square: Option<(u32, u32, u32, u8)>,
    rng: &mut impl Rng,
) -> Frame {
    let letterbox = Letterbox::new(W, H, 640, 640);
    let mut pixels = vec![114u8; 640 * 640 * 3];
    for y in 0..letterbox.content_h {
        for x in 0..letterbox.content_w {
            let mut grey = 128i32;
            if let Some((sx, sy, side, level)) = square
                && (sx..sx + side).contains(&x)
                && (sy..sy + side).contains(&y)
            {
                grey = i32::from(level);
            }
            if noise > 0 {
                grey += rng.gen_range(-i32::from(noise)..=i32::from(noise));
            }
            let at = (((letterbox.pad_top + y) * 640 + letterbox.pad_left + x) * 3) as usize;
            pixels[at..at + 3].fill(grey.clamp(0, 255) as u8);
        }
    }
    Frame {
        camera: Arc::from("gate"),
        seq: 0,
        pts: None,
        capture_time: UNIX_EPOCH + Duration::from_secs_f64(1_000.0 + seconds),
        letterbox,
        pixels,
    }
}

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}

#[test]
fn a_still_noisy_scene_is_skipped_until_max_skip() {
    let mut rng = rng();
    let mut gate = MotionGate::new(settings(), Arc::default());
    assert_eq!(gate.check(&frame(0.0, 8, None, &mut rng)), Gate::First);
    for i in 1..10 {
        let gate = gate.check(&frame(f64::from(i) * 0.5, 8, None, &mut rng));
        assert_eq!(gate, Gate::Skip, "frame {i}: sensor noise is not motion");
    }
    assert_eq!(gate.check(&frame(5.0, 8, None, &mut rng)), Gate::Recheck);
    assert_eq!(gate.check(&frame(5.5, 8, None, &mut rng)), Gate::Skip);
}

#[test]
fn a_moving_head_sized_square_is_motion_and_a_parked_one_is_not() {
    let mut rng = rng();
    let mut gate = MotionGate::new(settings(), Arc::default());
    gate.check(&frame(0.0, 4, None, &mut rng));
    // 24 px: a head a few metres away, in a 640×360 view.
    let gate_at = |gate: &mut MotionGate, t: f64, x: u32, rng: &mut _| {
        gate.check(&frame(t, 4, Some((x, 150, 24, 40)), rng))
    };
    for (i, x) in [100, 140, 180].into_iter().enumerate() {
        let seen = gate_at(&mut gate, 0.5 * (i + 1) as f64, x, &mut rng);
        assert!(
            matches!(seen, Gate::Motion(a) if a > 0.003),
            "step {i}: {seen:?}"
        );
    }
    // It stops: nothing moves from the next frame on, although the background has not
    // learnt it yet.
    for i in 0..8 {
        let seen = gate_at(&mut gate, 2.0 + 0.5 * f64::from(i), 180, &mut rng);
        assert_eq!(seen, Gate::Skip, "parked for {i} frames");
    }
}

#[test]
fn a_scene_that_changed_at_once_and_held_is_motion_once() {
    let mut rng = rng();
    let mut gate = MotionGate::new(settings(), Arc::default());
    gate.check(&frame(0.0, 4, None, &mut rng));
    // A large dark area appears (a door opened, a truck parked) and stays.
    let door = Some((100, 50, 200, 40));
    assert!(matches!(
        gate.check(&frame(0.5, 4, door, &mut rng)),
        Gate::Motion(_)
    ));
    for i in 2..8 {
        let seen = gate.check(&frame(0.5 * f64::from(i), 4, door, &mut rng));
        assert_eq!(
            seen,
            Gate::Skip,
            "frame {i}: the background still learns it"
        );
    }
}

#[test]
fn a_one_frame_glitch_wakes_the_model_once() {
    let mut rng = rng();
    let mut gate = MotionGate::new(settings(), Arc::default());
    gate.check(&frame(0.0, 2, None, &mut rng));
    // A bird across the lens, a burst of compression artefacts: one frame, then the scene as
    // it was. The frame after it differs from the glitch but not from the background.
    let glitch = Some((300, 100, 80, 10));
    assert!(matches!(
        gate.check(&frame(0.5, 2, glitch, &mut rng)),
        Gate::Motion(_)
    ));
    assert_eq!(gate.check(&frame(1.0, 2, None, &mut rng)), Gate::Skip);
}

#[test]
fn motion_inside_a_mask_is_not_looked_at() {
    let mut rng = rng();
    let camera: crate::config::CameraConfig = toml::from_str(
        "name = \"gate\"\nurl = \"rtsp://127.0.0.1/x\"\n\
         [[mask]]\nname = \"street\"\npolygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\n",
    )
    .expect("a camera table");
    let rules = CameraRules::from_config(&camera).expect("valid mask");
    let mut gate = MotionGate::new(settings(), Arc::new(rules));
    gate.check(&frame(0.0, 4, None, &mut rng));
    for (i, x) in [40u32, 120, 200].into_iter().enumerate() {
        let t = 0.5 * (i + 1) as f64;
        assert_eq!(
            gate.check(&frame(t, 4, Some((x, 100, 60, 20)), &mut rng)),
            Gate::Skip,
            "traffic in the masked left half"
        );
    }
    let seen = gate.check(&frame(2.0, 4, Some((500, 100, 60, 20)), &mut rng));
    assert!(matches!(seen, Gate::Motion(_)), "{seen:?}");
}

#[test]
fn light_that_changes_slowly_is_not_motion() {
    let mut rng = rng();
    let mut gate = MotionGate::new(settings(), Arc::default());
    gate.check(&frame(0.0, 2, None, &mut rng));
    for i in 1..9 {
        let mut f = frame(f64::from(i) * 0.5, 2, None, &mut rng);
        // Two grey levels brighter each frame: clouds, dusk.
        for p in &mut f.pixels {
            *p = p.saturating_add((2 * i) as u8);
        }
        assert_eq!(gate.check(&f), Gate::Skip, "frame {i}");
    }
}

#[test]
fn off_new_sizes_and_short_frames() {
    let mut rng = rng();
    let off = MotionSettings {
        enabled: false,
        ..settings()
    };
    let mut gate = MotionGate::new(off, Arc::default());
    assert_eq!(gate.check(&frame(0.0, 0, None, &mut rng)), Gate::Always);
    assert_eq!(gate.check(&frame(0.5, 0, None, &mut rng)), Gate::Always);

    let mut gate = MotionGate::new(settings(), Arc::default());
    gate.check(&frame(0.0, 0, None, &mut rng));
    let mut portrait = frame(0.5, 0, None, &mut rng);
    portrait.letterbox = Letterbox::new(360, 640, 640, 640);
    assert_eq!(
        gate.check(&portrait),
        Gate::First,
        "a new size starts afresh"
    );

    let mut short = frame(1.0, 0, None, &mut rng);
    short.pixels.truncate(1000);
    assert_eq!(
        gate.check(&short),
        Gate::First,
        "judged by nothing: analysed"
    );
    let mut tiny = frame(1.5, 0, None, &mut rng);
    tiny.letterbox = Letterbox::new(20, 10, 20, 10);
    assert_eq!(gate.check(&tiny), Gate::First);
}
