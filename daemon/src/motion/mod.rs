//! Motion gating: a sampled frame goes to the model only when something in view moved, or when
//! the camera's last analysed frame is `max_skip` old.
//!
//! Sites are still most of the time (breaks, nights, a crane parked in view), and every frame
//! the model does not see is CPU another camera can use. The test is cheap on purpose: the
//! frame's content (the letterbox without its bars) is averaged into a fixed grid of
//! [`GRID_W`] × [`GRID_H`] grey cells. A cell changed when it differs by more than `threshold`
//! grey levels both from the previous frame's cell and from a running-average background of
//! itself; the frame shows motion when the changed cells are at least `min_area` of the cells
//! outside the camera's masks (a street or a flag in view moves all day; its cells are not
//! looked at). Averaging a cell's pixels is what makes sensor noise vanish: a cell of ~100
//! pixels averages independent noise down by a factor of ten.
//!
//! Both comparisons, because each alone misleads. Against the background alone, a scene that
//! changed at once and then held still (a door opened, the camera was bumped, a person stopped)
//! stays "motion" for as long as the background takes to learn it, ~10 frames: `bench motion`
//! measured 59 of 87 motion verdicts there. Against the previous frame alone, a one-frame glitch
//! (a bird across the lens, a burst of compression artefacts) wakes the model twice: on the
//! glitch and on the frame after it, which differs from the glitch but not from the background.
//! A light that keeps blinking is motion either way: mask it. The background learns every frame,
//! analysed or not ([`BACKGROUND_RATE`]), except in the cells that changed: so slowly changing
//! light is never motion, a glitch or a passer-by leaves no ghost behind, and a person who
//! stops is not motion from the next frame on (`max_skip` is what checks them again) and
//! becomes background over the next seconds. A skipped frame's result is the camera's last one (the
//! finalize task reuses it), so tracks and episodes carry on across still stretches.
//!
//! Pure: time comes with the frame ([`Frame::capture_time`]), so tests need no clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use helmet_pipelines::Frame;

use crate::config::MotionConfig;
use crate::zones::CameraRules;

/// Cells across and down the frame's content: a head at 10 m is a few cells, a person many.
pub const GRID_W: usize = 64;
pub const GRID_H: usize = 36;
/// Each cell averages every `SAMPLE_STEP`-th pixel of every `SAMPLE_STEP`-th row of its area:
/// a quarter of its pixels, plenty for an average, at a quarter of the reads.
const SAMPLE_STEP: usize = 2;
/// How much of each frame goes into the background (where the cell did not change): after ~10
/// frames (5 s at 2 fps) a change that stayed is background.
pub const BACKGROUND_RATE: f32 = 0.2;

/// A camera's motion settings (`[camera.motion]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionSettings {
    pub enabled: bool,
    /// Grey levels (0–255) a cell's average must move from its background to count as changed.
    pub threshold: f32,
    /// Share of the unmasked cells that must change for the frame to count as motion (0–1).
    pub min_area: f64,
    /// A frame is analysed anyway once the camera's last analysed frame is this old, so a person
    /// who stands still is still checked.
    pub max_skip: Duration,
}

impl MotionSettings {
    /// `[camera.motion]`, validated by [`crate::config::Config::validate`].
    pub fn from_config(motion: &MotionConfig) -> Self {
        Self {
            enabled: motion.enabled,
            threshold: motion.threshold as f32,
            min_area: motion.min_area,
            max_skip: Duration::try_from_secs_f64(motion.max_skip_s).unwrap_or_default(),
        }
    }
}

/// The defaults of `[camera.motion]`.
impl Default for MotionSettings {
    fn default() -> Self {
        Self::from_config(&MotionConfig::default())
    }
}

/// Why a frame goes to the model, or that it does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Gating is off for the camera.
    Always,
    /// The first frame, or the first after the frame size changed: nothing to compare with.
    First,
    /// This share of the unmasked cells changed.
    Motion(f64),
    /// Nothing moved, but the last analysed frame is `max_skip` old.
    Recheck,
    /// Nothing moved: the last result stands.
    Skip,
}

impl Gate {
    pub fn analyses(self) -> bool {
        self != Gate::Skip
    }
}

/// One camera's gate: its background and when it last let a frame through.
#[derive(Debug)]
pub struct MotionGate {
    settings: MotionSettings,
    rules: Arc<CameraRules>,
    /// The content size the background was made for; another size starts afresh.
    size: Option<(u32, u32)>,
    background: Vec<f32>,
    /// The previous frame's cells.
    previous: Vec<f32>,
    /// Cells whose centre lies in a mask: never looked at.
    masked: Vec<bool>,
    unmasked: usize,
    last_analysed: Option<SystemTime>,
    /// Frames kept from the model since the gate was made.
    skipped: u64,
}

impl MotionGate {
    pub fn new(settings: MotionSettings, rules: Arc<CameraRules>) -> Self {
        let mut gate = Self {
            settings,
            rules,
            size: None,
            background: vec![0.0; GRID_W * GRID_H],
            previous: vec![0.0; GRID_W * GRID_H],
            masked: vec![false; GRID_W * GRID_H],
            unmasked: GRID_W * GRID_H,
            last_analysed: None,
            skipped: 0,
        };
        gate.mark_masked();
        gate
    }

    /// A reload's settings and masks, from the next frame on; the background stays.
    pub fn update(&mut self, settings: MotionSettings, rules: Arc<CameraRules>) {
        self.settings = settings;
        if rules != self.rules {
            self.rules = rules;
            self.mark_masked();
        }
    }

    fn mark_masked(&mut self) {
        for (i, masked) in self.masked.iter_mut().enumerate() {
            let centre = (
                ((i % GRID_W) as f32 + 0.5) / GRID_W as f32,
                ((i / GRID_W) as f32 + 0.5) / GRID_H as f32,
            );
            *masked = self.rules.is_masked(centre);
        }
        self.unmasked = self.masked.iter().filter(|m| !**m).count();
    }

    /// Decides about one sampled frame and learns the frame into the background.
    pub fn check(&mut self, frame: &Frame) -> Gate {
        if !self.settings.enabled {
            return Gate::Always;
        }
        let lb = &frame.letterbox;
        let Some(cells) = grey_cells(frame) else {
            // A frame too small for the grid (or short of pixels) cannot be judged: analysed.
            return self.analysed(frame, Gate::First);
        };
        if self.size != Some((lb.content_w, lb.content_h)) {
            self.size = Some((lb.content_w, lb.content_h));
            self.background.clone_from(&cells);
            self.previous = cells;
            return self.analysed(frame, Gate::First);
        }
        let threshold = self.settings.threshold;
        let mut changed = 0usize;
        let cells_now = self.background.iter_mut().zip(&self.previous).zip(&cells);
        for (((bg, previous), cell), masked) in cells_now.zip(&self.masked) {
            if (cell - *bg).abs() > threshold && (cell - previous).abs() > threshold {
                changed += usize::from(!masked);
            } else {
                *bg += (cell - *bg) * BACKGROUND_RATE;
            }
        }
        self.previous = cells;
        let area = changed as f64 / self.unmasked.max(1) as f64;
        // With every cell masked nothing can move; `max_skip` still checks the camera.
        if self.unmasked > 0 && changed > 0 && area >= self.settings.min_area {
            return self.analysed(frame, Gate::Motion(area));
        }
        let stale = self.last_analysed.is_none_or(|t| {
            frame
                .capture_time
                .duration_since(t)
                .is_ok_and(|age| age >= self.settings.max_skip)
        });
        if stale {
            return self.analysed(frame, Gate::Recheck);
        }
        self.skipped += 1;
        Gate::Skip
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn analysed(&mut self, frame: &Frame, gate: Gate) -> Gate {
        self.last_analysed = Some(frame.capture_time);
        gate
    }
}

/// The frame's content averaged into the grid, in grey levels (BT.601 luma); `None` when the
/// content is smaller than the grid or the pixels do not cover it.
fn grey_cells(frame: &Frame) -> Option<Vec<f32>> {
    let lb = &frame.letterbox;
    let (content_w, content_h) = (lb.content_w as usize, lb.content_h as usize);
    if content_w < GRID_W || content_h < GRID_H {
        return None;
    }
    let stride = lb.input_w as usize * 3;
    let last_byte =
        (lb.pad_top as usize + content_h - 1) * stride + (lb.pad_left as usize + content_w) * 3;
    if frame.pixels.len() < last_byte {
        return None;
    }
    let mut sums = vec![0u32; GRID_W * GRID_H];
    let mut counts = vec![0u32; GRID_W * GRID_H];
    for y in (0..content_h).step_by(SAMPLE_STEP) {
        let row = (lb.pad_top as usize + y) * stride + lb.pad_left as usize * 3;
        let cell_row = y * GRID_H / content_h * GRID_W;
        for x in (0..content_w).step_by(SAMPLE_STEP) {
            let p = &frame.pixels[row + x * 3..row + x * 3 + 3];
            let luma = 77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]);
            let cell = cell_row + x * GRID_W / content_w;
            sums[cell] += luma;
            counts[cell] += 1;
        }
    }
    Some(
        sums.iter()
            .zip(&counts)
            .map(|(&sum, &n)| sum as f32 / 256.0 / n.max(1) as f32)
            .collect(),
    )
}

#[cfg(test)]
mod tests;
