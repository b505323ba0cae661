//! The "mostly still" camera: the video plays for a few seconds, then its last frame is held for
//! longer with fresh sensor noise on every copy, and so on until the video's frames are used up.
//!
//! Held copies are made as the frames are read rather than stored, so a scene costs the video's
//! frames in memory, not five times that; the noise comes from the seed, so every pass over the
//! scene sees the same pixels.

use std::time::{Duration, SystemTime};

use helmet_pipelines::Frame;
use rand::{Rng, SeedableRng};

/// Frames one stretch may last: beyond this a typo in `--still-s` would make hours of frames.
const MAX_STRETCH_FRAMES: f64 = 100_000.0;

/// How the scene alternates the video with held frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneSpec {
    /// Frames per second of the camera; capture times advance by its inverse.
    pub fps: f64,
    /// Seconds the video plays before each hold.
    pub moving_s: f64,
    /// Seconds the last shown frame is held.
    pub still_s: f64,
    /// Held copies get uniform noise of ± this many grey levels per pixel.
    pub noise: u8,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SceneError {
    #[error("--fps {0}: not a positive number of frames per second")]
    Fps(f64),
    #[error("--moving-s {0}: not at least one frame of video at the given --fps")]
    Moving(f64),
    #[error("--still-s {0}: not a number of seconds from 0 to {MAX_STRETCH_FRAMES} frames")]
    Still(f64),
    #[error("the video gave no frames")]
    NoVideo,
}

/// One frame of the scene: the `n`-th video frame as it played, or a noisy copy of it held.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shot {
    Playing(usize),
    Held(usize),
}

/// The video's frames and the order the camera shows them in.
#[derive(Debug)]
pub struct Scene {
    video: Vec<Frame>,
    shots: Vec<Shot>,
    start: SystemTime,
    spec: SceneSpec,
    /// Frames per stretch of video and per hold.
    moving: usize,
    still: usize,
}

/// Whole frames in `seconds` at `fps`, or `None` when that is not a usable count.
fn frames_in(seconds: f64, fps: f64) -> Option<usize> {
    let n = (seconds * fps).round();
    (n.is_finite() && (0.0..=MAX_STRETCH_FRAMES).contains(&n)).then_some(n as usize)
}

impl Scene {
    pub fn new(video: Vec<Frame>, spec: SceneSpec) -> Result<Self, SceneError> {
        if !(spec.fps.is_finite() && spec.fps > 0.0) {
            return Err(SceneError::Fps(spec.fps));
        }
        let moving = frames_in(spec.moving_s, spec.fps)
            .filter(|n| *n > 0)
            .ok_or(SceneError::Moving(spec.moving_s))?;
        let still = frames_in(spec.still_s, spec.fps).ok_or(SceneError::Still(spec.still_s))?;
        let start = video.first().ok_or(SceneError::NoVideo)?.capture_time;
        let mut shots = Vec::with_capacity(video.len().div_ceil(moving) * (moving + still));
        for n in 0..video.len() {
            shots.push(Shot::Playing(n));
            if (n + 1) % moving == 0 || n + 1 == video.len() {
                shots.extend(std::iter::repeat_n(Shot::Held(n), still));
            }
        }
        Ok(Self {
            video,
            shots,
            start,
            spec,
            moving,
            still,
        })
    }

    pub fn frame_count(&self) -> usize {
        self.shots.len()
    }

    /// Frames that show the held, still view.
    pub fn still_frames(&self) -> usize {
        self.shots
            .iter()
            .filter(|s| matches!(s, Shot::Held(_)))
            .count()
    }

    /// Frame `seq` of [`Scene::frames`] is a held copy.
    /// The frame captured at `time`, if the scene has one then.
    pub fn seq_at(&self, time: SystemTime) -> Option<u64> {
        let after = time.duration_since(self.start).ok()?.as_secs_f64();
        let seq = (after * self.spec.fps).round();
        (seq < self.shots.len() as f64).then_some(seq as u64)
    }

    pub fn is_held(&self, seq: u64) -> bool {
        usize::try_from(seq)
            .ok()
            .and_then(|k| self.shots.get(k))
            .is_some_and(|s| matches!(s, Shot::Held(_)))
    }

    /// What the scene is made of, for the log.
    pub fn describe(&self) -> String {
        let still = self.still_frames();
        format!(
            "scene: {} video frames played {} at a time, each stretch then held {} frames with ±{} grey levels of noise: \
             {} frames over {:.1} s at {} frames/s, {} still ({:.1} %)",
            self.video.len(),
            self.moving,
            self.still,
            self.spec.noise,
            self.frame_count(),
            self.frame_count() as f64 / self.spec.fps,
            self.spec.fps,
            still,
            100.0 * still as f64 / self.frame_count().max(1) as f64,
        )
    }

    /// The frames in order, numbered and timed as one camera at `fps`; the same pixels on every
    /// call.
    pub fn frames(&self) -> impl Iterator<Item = Frame> + '_ {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.spec.seed);
        self.shots.iter().enumerate().map(move |(k, shot)| {
            let mut frame = match *shot {
                Shot::Playing(n) => self.video[n].clone(),
                Shot::Held(n) => noisy(&self.video[n], self.spec.noise, &mut rng),
            };
            frame.seq = k as u64;
            frame.capture_time = self.start + Duration::from_secs_f64(k as f64 / self.spec.fps);
            frame
        })
    }
}

/// `frame` with uniform noise of ±`noise` grey levels added to each pixel of its content (the
/// bars are the letterbox's, not the sensor's). A frame whose pixels do not cover its letterbox
/// gets noise where they do.
fn noisy(frame: &Frame, noise: u8, rng: &mut impl Rng) -> Frame {
    let mut out = frame.clone();
    let lb = &frame.letterbox;
    let stride = lb.input_w as usize * 3;
    let noise = i16::from(noise);
    for y in 0..lb.content_h as usize {
        let from = (lb.pad_top as usize + y) * stride + lb.pad_left as usize * 3;
        let Some(row) = out.pixels.get_mut(from..from + lb.content_w as usize * 3) else {
            break;
        };
        for pixel in row.chunks_exact_mut(3) {
            let offset = rng.gen_range(-noise..=noise);
            for channel in pixel {
                *channel = (i16::from(*channel) + offset).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use helmet_pipelines::letterbox::Letterbox;

    use super::*;

    const BAR: u8 = 114;

    /// A 64×36 camera frame letterboxed into 64×64, its content one grey level (`n`-th frame).
    fn video_frame(n: u8) -> Frame {
        let letterbox = Letterbox::new(64, 36, 64, 64);
        let mut pixels = vec![BAR; 64 * 64 * 3];
        let stride = 64 * 3;
        for y in 0..letterbox.content_h as usize {
            let from = (letterbox.pad_top as usize + y) * stride;
            pixels[from..from + stride].fill(100 + n);
        }
        Frame {
            camera: Arc::from("video"),
            seq: 99,
            pts: None,
            capture_time: UNIX_EPOCH + Duration::from_secs(1_000 + u64::from(n)),
            letterbox,
            pixels,
        }
    }

    fn spec() -> SceneSpec {
        SceneSpec {
            fps: 2.0,
            moving_s: 3.0,
            still_s: 12.0,
            noise: 6,
            seed: 7,
        }
    }

    #[test]
    fn the_default_scene_is_still_four_fifths_of_the_time() {
        let video = (0..36).map(video_frame).collect();
        let scene = Scene::new(video, spec()).unwrap();
        assert_eq!(scene.frame_count(), 36 / 6 * (6 + 24));
        assert_eq!(scene.still_frames(), 36 / 6 * 24);
        assert!(!scene.is_held(5) && scene.is_held(6) && scene.is_held(29) && !scene.is_held(30));
        assert!(!scene.is_held(u64::MAX));
        let frames: Vec<Frame> = scene.frames().collect();
        // Six frames of video, then 24 copies of the sixth.
        let content = |f: &Frame| f.pixels[(f.letterbox.pad_top as usize * 64 + 5) * 3];
        assert_eq!(content(&frames[5]), 105);
        assert_eq!(
            content(&frames[30]),
            106,
            "the video goes on where it stopped"
        );
        for held in &frames[6..30] {
            assert!(content(held).abs_diff(105) <= 6, "{}", content(held));
        }
        assert!(
            scene.describe().contains("144 still (80.0 %)"),
            "{}",
            scene.describe()
        );
    }

    #[test]
    fn a_short_last_stretch_is_held_too_and_nothing_is_held_without_still_time() {
        let video: Vec<Frame> = (0..8).map(video_frame).collect();
        let scene = Scene::new(video.clone(), spec()).unwrap();
        assert_eq!(scene.frame_count(), 6 + 24 + 2 + 24);
        let no_hold = SceneSpec {
            still_s: 0.0,
            ..spec()
        };
        let scene = Scene::new(video, no_hold).unwrap();
        assert_eq!((scene.frame_count(), scene.still_frames()), (8, 0));
    }

    #[test]
    fn frames_are_numbered_and_timed_as_one_camera_at_fps() {
        let scene = Scene::new((0..12).map(video_frame).collect(), spec()).unwrap();
        for (k, frame) in scene.frames().enumerate() {
            assert_eq!(frame.seq, k as u64);
            let t = frame.capture_time.duration_since(UNIX_EPOCH).unwrap();
            assert_eq!(
                t,
                Duration::from_secs(1_000) + Duration::from_millis(500 * k as u64)
            );
        }
    }

    #[test]
    fn held_copies_get_fresh_bounded_noise_on_the_content_only() {
        let scene = Scene::new((0..6).map(video_frame).collect(), spec()).unwrap();
        let frames: Vec<Frame> = scene.frames().collect();
        let lb = frames[0].letterbox;
        let (first, last) = (lb.pad_top as usize, (lb.pad_top + lb.content_h) as usize);
        let mut offsets = std::collections::BTreeSet::new();
        for held in &frames[6..] {
            for (y, row) in held.pixels.chunks_exact(64 * 3).enumerate() {
                for pixel in row.chunks_exact(3) {
                    if !(first..last).contains(&y) {
                        assert_eq!(pixel, [BAR; 3], "bars stay bars (row {y})");
                        continue;
                    }
                    assert!(pixel[0] == pixel[1] && pixel[1] == pixel[2], "grey noise");
                    let offset = i16::from(pixel[0]) - 105;
                    assert!((-6..=6).contains(&offset), "{offset}");
                    offsets.insert(offset);
                }
            }
        }
        assert_eq!(offsets.len(), 13, "every level of ±6 turns up: {offsets:?}");
        assert_ne!(frames[6].pixels, frames[7].pixels, "fresh noise per copy");
        let again: Vec<Frame> = scene.frames().collect();
        assert!(
            frames.iter().zip(&again).all(|(a, b)| a.pixels == b.pixels),
            "the same seed gives the same scene"
        );
    }

    #[test]
    fn noise_clamps_at_black_and_white_and_spares_short_frames() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut white = video_frame(0);
        white.pixels.fill(255);
        assert!(noisy(&white, 20, &mut rng).pixels.iter().all(|p| *p >= 235));
        let mut short = video_frame(0);
        short.pixels.truncate(100);
        assert_eq!(noisy(&short, 20, &mut rng).pixels.len(), 100);
    }

    #[test]
    fn unusable_specs_are_refused() {
        let video = || vec![video_frame(0)];
        let with = |f: fn(&mut SceneSpec)| {
            let mut s = spec();
            f(&mut s);
            Scene::new(video(), s).unwrap_err()
        };
        assert_eq!(with(|s| s.fps = 0.0), SceneError::Fps(0.0));
        assert!(matches!(with(|s| s.fps = f64::NAN), SceneError::Fps(_)));
        assert_eq!(with(|s| s.moving_s = 0.1), SceneError::Moving(0.1));
        assert_eq!(with(|s| s.still_s = -1.0), SceneError::Still(-1.0));
        assert_eq!(with(|s| s.still_s = 1e9), SceneError::Still(1e9));
        assert_eq!(
            Scene::new(Vec::new(), spec()).unwrap_err(),
            SceneError::NoVideo
        );
    }
}
