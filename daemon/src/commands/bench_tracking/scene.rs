//! Synthetic camera sequences with ground truth by construction.
//!
//! People are cut-outs ("sprites") of heads the edge model finds confidently in the shipped
//! photos, moved along known paths over a synthetic background. Every frame's truth (who is
//! visible, where the head box is, what the person should trigger) follows from the geometry,
//! so no labelling is involved and a run is repeatable: the only randomness is the background
//! noise, drawn from a fixed seed.
//!
//! The background is a smooth two-band gradient (light "sky" over a grey-brown "ground") with
//! low-amplitude pixel noise rather than a region of a photo: a photo region may hold heads the
//! model half-sees, which would show up as detections with no truth behind them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

pub const FRAME_W: u32 = 1280;
pub const FRAME_H: u32 = 720;
/// The daemon's default detect rate, 2 fps.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(500);
/// Head height in frame pixels. The 1280×720 frame is halved into the model's 640 input, so a
/// head is ~36 px there: about what the model saw of these heads in their own photos.
pub const HEAD_H: f32 = 72.0;
/// A person whose head box is at least this much covered (by a pillar, a person in front or the
/// frame edge) is not visible that frame: nobody can be expected to find it.
const HIDDEN_FRACTION: f32 = 0.5;
/// Sample points per side when measuring how much of a head is covered.
const COVER_GRID: u32 = 10;
const PILLAR_COLOUR: Rgb<u8> = Rgb([78, 84, 92]);

/// A head the model found confidently in a photo: the raw material of a sprite.
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub image: Arc<RgbImage>,
    /// Head box in the photo's pixels.
    pub head: [f32; 4],
    pub class: u16,
    /// The other boxes the model found in the photo: erased from the cut-out, so a crowd
    /// photo's neighbours do not come along as heads without truth.
    pub others: Vec<[f32; 4]>,
}

/// A person cut out of a photo: pixels, coverage and where the head box sits within it.
#[derive(Clone)]
pub struct Sprite {
    pub name: String,
    pub class: u16,
    pub rgb: RgbImage,
    /// Opacity per pixel (row-major, same size as `rgb`).
    pub alpha: Vec<u8>,
    /// Head box in sprite pixels.
    pub head: [f32; 4],
}

/// How much of the point (u, v) belongs to the person, with u, v measured from the head box
/// centre in head widths and heights: a head ellipse on a neck widening into shoulders. Cutting
/// the person out this way (rather than the crop rectangle) keeps the neighbours of a crowd photo
/// out of the sprite, whose heads would otherwise be detections without truth.
fn silhouette(u: f32, v: f32) -> f32 {
    let head = 1.0 - ((u / 0.62).powi(2) + (v / 0.62).powi(2)).sqrt();
    let head = (head / 0.15).clamp(0.0, 1.0);
    let torso = if v < 0.3 {
        0.0
    } else {
        let half_width = (0.35 + (v - 0.3) * 1.6).min(1.35);
        ((half_width - u.abs()) / 0.15).clamp(0.0, 1.0)
    };
    head.max(torso)
}

/// How a person is cut out of their photo.
///
/// The rectangle is the default: with the silhouette the model lost most street heads (the
/// shoulders and hair it relies on are cut), while the rectangle's neighbours from a crowd photo
/// are caught by the cut-out check of the benchmark, which drops a sprite that yields any stray
/// box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cutout {
    /// A head-and-shoulders silhouette (see [`silhouette`]).
    Silhouette,
    /// The whole context rectangle, its border blended over a few pixels.
    Box,
}

/// Opacity of the context rectangle at sprite pixel (x, y): ramps up over `FEATHER` pixels.
fn feathered_box(x: f32, y: f32, w: f32, h: f32) -> f32 {
    const FEATHER: f32 = 6.0;
    let edge = x.min(y).min(w - x).min(h - y);
    (edge / FEATHER).clamp(0.0, 1.0)
}

impl Sprite {
    /// The source's head with context (a head width either side, 0.6 of its height above, 2.5
    /// heights below, clipped to the photo), scaled so the head is `head_h` pixels high. `None`
    /// for a degenerate box.
    pub fn from_source(src: &Source, head_h: f32, cutout: Cutout) -> Option<Sprite> {
        let [x1, y1, x2, y2] = src.head;
        let (hw, hh) = (x2 - x1, y2 - y1);
        if !(hw >= 1.0 && hh >= 1.0 && head_h >= 1.0) {
            return None;
        }
        let (pw, ph) = (src.image.width() as f32, src.image.height() as f32);
        let cx0 = (x1 - hw).max(0.0).floor();
        let cy0 = (y1 - 0.6 * hh).max(0.0).floor();
        let cx1 = (x2 + hw).min(pw).ceil();
        let cy1 = (y2 + 2.5 * hh).min(ph).ceil();
        if cx1 - cx0 < 2.0 || cy1 - cy0 < 2.0 {
            return None;
        }
        let crop = image::imageops::crop_imm(
            src.image.as_ref(),
            cx0 as u32,
            cy0 as u32,
            (cx1 - cx0) as u32,
            (cy1 - cy0) as u32,
        )
        .to_image();
        let s = head_h / hh;
        let out_w = ((cx1 - cx0) * s).round().max(1.0) as u32;
        let out_h = ((cy1 - cy0) * s).round().max(1.0) as u32;
        let rgb =
            image::imageops::resize(&crop, out_w, out_h, image::imageops::FilterType::Triangle);
        let to_sprite = |b: &[f32; 4]| {
            [
                (b[0] - cx0) * s,
                (b[1] - cy0) * s,
                (b[2] - cx0) * s,
                (b[3] - cy0) * s,
            ]
        };
        let head = to_sprite(&src.head);
        let mut sprite = Self::with_alpha(src.name.clone(), src.class, rgb, head, cutout);
        let others: Vec<[f32; 4]> = src.others.iter().map(to_sprite).collect();
        sprite.erase(&others);
        Some(sprite)
    }

    /// A flat-coloured person for tests: no photo needed.
    pub fn synthetic(head_w: f32, head_h: f32, class: u16, colour: [u8; 3]) -> Sprite {
        let (w, h) = ((3.0 * head_w).ceil() as u32, (4.1 * head_h).ceil() as u32);
        let rgb = RgbImage::from_pixel(w.max(1), h.max(1), Rgb(colour));
        let head = [head_w, 0.6 * head_h, 2.0 * head_w, 1.6 * head_h];
        Self::with_alpha(
            format!("synthetic-{class}"),
            class,
            rgb,
            head,
            Cutout::Silhouette,
        )
    }

    fn with_alpha(
        name: String,
        class: u16,
        rgb: RgbImage,
        head: [f32; 4],
        cutout: Cutout,
    ) -> Sprite {
        let (w, h) = (rgb.width() as f32, rgb.height() as f32);
        let (hw, hh) = (head[2] - head[0], head[3] - head[1]);
        let (hcx, hcy) = ((head[0] + head[2]) / 2.0, (head[1] + head[3]) / 2.0);
        let mut alpha = Vec::with_capacity(rgb.width() as usize * rgb.height() as usize);
        for y in 0..rgb.height() {
            for x in 0..rgb.width() {
                let u = (x as f32 + 0.5 - hcx) / hw;
                let v = (y as f32 + 0.5 - hcy) / hh;
                let a = match cutout {
                    Cutout::Silhouette => silhouette(u, v),
                    Cutout::Box => feathered_box(x as f32 + 0.5, y as f32 + 0.5, w, h),
                };
                alpha.push((a * 255.0).round() as u8);
            }
        }
        Sprite {
            name,
            class,
            rgb,
            alpha,
            head,
        }
    }

    /// Makes the pixels of `boxes` (sprite pixels, grown by a fifth) transparent, except those
    /// of the person's own head box.
    fn erase(&mut self, boxes: &[[f32; 4]]) {
        let width = self.rgb.width() as usize;
        let [hx1, hy1, hx2, hy2] = self.head;
        for b in boxes {
            let (gw, gh) = ((b[2] - b[0]) * 0.1, (b[3] - b[1]) * 0.1);
            let x0 = (b[0] - gw).max(0.0) as usize;
            let y0 = (b[1] - gh).max(0.0) as usize;
            let x1 = ((b[2] + gw).max(0.0) as usize).min(width);
            let y1 = ((b[3] + gh).max(0.0) as usize).min(self.rgb.height() as usize);
            for y in y0..y1 {
                for x in x0..x1 {
                    let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                    let own = fx >= hx1 && fx < hx2 && fy >= hy1 && fy < hy2;
                    if !own && let Some(a) = self.alpha.get_mut(y * width + x) {
                        *a = 0;
                    }
                }
            }
        }
    }

    pub fn head_size(&self) -> (f32, f32) {
        (self.head[2] - self.head[0], self.head[3] - self.head[1])
    }

    /// Opacity at frame point (x, y) when the sprite's top-left corner is at `offset`.
    fn alpha_at(&self, offset: (i32, i32), x: f32, y: f32) -> u8 {
        let (sx, sy) = ((x - offset.0 as f32).floor(), (y - offset.1 as f32).floor());
        if sx < 0.0 || sy < 0.0 || sx >= self.rgb.width() as f32 || sy >= self.rgb.height() as f32 {
            return 0;
        }
        let i = sy as usize * self.rgb.width() as usize + sx as usize;
        self.alpha.get(i).copied().unwrap_or(0)
    }

    fn draw(&self, canvas: &mut RgbImage, offset: (i32, i32)) {
        let (w, h) = (self.rgb.width() as i32, self.rgb.height() as i32);
        for sy in 0..h {
            let y = offset.1 + sy;
            if y < 0 || y >= canvas.height() as i32 {
                continue;
            }
            for sx in 0..w {
                let x = offset.0 + sx;
                if x < 0 || x >= canvas.width() as i32 {
                    continue;
                }
                let a = u16::from(self.alpha[(sy * w + sx) as usize]);
                if a == 0 {
                    continue;
                }
                let src = self.rgb.get_pixel(sx as u32, sy as u32).0;
                let dst = canvas.get_pixel_mut(x as u32, y as u32);
                for (d, s) in dst.0.iter_mut().zip(src) {
                    *d = ((u16::from(s) * a + u16::from(*d) * (255 - a)) / 255) as u8;
                }
            }
        }
    }
}

/// The background every scenario is drawn on (see the module documentation).
pub fn background(seed: u64) -> RgbImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let horizon = FRAME_H as f32 * 0.38;
    let mut img = RgbImage::new(FRAME_W, FRAME_H);
    for y in 0..FRAME_H {
        let fy = y as f32;
        let base: [f32; 3] = if fy < horizon {
            let t = fy / horizon;
            [172.0 + 30.0 * t, 186.0 + 22.0 * t, 204.0 + 6.0 * t]
        } else {
            let t = (fy - horizon) / (FRAME_H as f32 - horizon);
            [128.0 - 30.0 * t, 118.0 - 28.0 * t, 104.0 - 26.0 * t]
        };
        for x in 0..FRAME_W {
            // A slow horizontal shading so the frame is not flat left to right.
            let shade = 8.0 * ((x as f32) / FRAME_W as f32 * std::f32::consts::PI).sin();
            let noise: f32 = rng.gen_range(-6.0..6.0);
            let px = base.map(|c| (c + shade + noise).clamp(0.0, 255.0) as u8);
            img.put_pixel(x, y, Rgb(px));
        }
    }
    img
}

/// A point of a person's path: head centre at a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Key {
    pub frame: u32,
    pub cx: f32,
    pub cy: f32,
}

/// What a person should trigger, and if nothing, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Violating, inside the required zones, not masked, in schedule: exactly one episode.
    Alert,
    /// Wears a helmet.
    Helmeted,
    OutsideZone,
    Masked,
    OutOfSchedule,
}

#[derive(Debug, Clone)]
pub struct PersonSpec {
    pub gt_id: u32,
    pub sprite: usize,
    /// Head centre keyframes, by frame ascending; linear in between; absent outside them.
    pub keys: Vec<Key>,
    pub expect: Expect,
}

/// A named polygon in fractions of the frame.
#[derive(Debug, Clone)]
pub struct Area {
    pub name: String,
    pub points: Vec<[f32; 2]>,
}

/// A weekly window, in the config's words (`days`, `start`, `end`).
#[derive(Debug, Clone)]
pub struct Window {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub frames: u32,
    pub people: Vec<PersonSpec>,
    /// Solid rectangles drawn over everyone, in frame pixels.
    pub pillars: Vec<[f32; 4]>,
    pub zones: Vec<Area>,
    pub masks: Vec<Area>,
    pub required_zones: Vec<String>,
    pub schedule: Vec<Window>,
    /// Capture time of frame 0.
    pub start: SystemTime,
    /// Frames in which a pillar hides a person by design: (gt id, frames).
    pub intended_hidden: Vec<(u32, Vec<u32>)>,
}

/// One visible person in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub gt_id: u32,
    pub class: u16,
    /// Head box in frame pixels, clipped to the frame.
    pub bbox: [f32; 4],
    pub expect: Expect,
}

/// Where a person is drawn in a frame.
struct Placed<'a> {
    spec: &'a PersonSpec,
    sprite: &'a Sprite,
    offset: (i32, i32),
    head: [f32; 4],
}

/// Head centre at frame `k`, or `None` outside the person's keyframes.
pub fn position(keys: &[Key], k: u32) -> Option<(f32, f32)> {
    let first = keys.first()?;
    if k < first.frame {
        return None;
    }
    for pair in keys.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if k >= a.frame && k <= b.frame {
            let span = (b.frame - a.frame).max(1) as f32;
            let t = (k - a.frame) as f32 / span;
            return Some((a.cx + (b.cx - a.cx) * t, a.cy + (b.cy - a.cy) * t));
        }
    }
    let last = keys.last()?;
    (k == last.frame).then_some((last.cx, last.cy))
}

impl Scenario {
    pub fn time_of(&self, k: u32) -> SystemTime {
        self.start + FRAME_INTERVAL * k
    }

    /// Everyone on the canvas at frame `k`, back to front (a lower head is nearer the camera).
    fn placed<'a>(&'a self, sprites: &'a [Sprite], k: u32) -> Vec<Placed<'a>> {
        let mut out: Vec<Placed<'a>> = self
            .people
            .iter()
            .filter_map(|spec| {
                let sprite = sprites.get(spec.sprite)?;
                let (cx, cy) = position(&spec.keys, k)?;
                let (hw, hh) = sprite.head_size();
                let offset = (
                    (cx - hw / 2.0 - sprite.head[0]).round() as i32,
                    (cy - hh / 2.0 - sprite.head[1]).round() as i32,
                );
                let (ox, oy) = (offset.0 as f32, offset.1 as f32);
                let head = [
                    sprite.head[0] + ox,
                    sprite.head[1] + oy,
                    sprite.head[2] + ox,
                    sprite.head[3] + oy,
                ];
                Some(Placed {
                    spec,
                    sprite,
                    offset,
                    head,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.head[3]
                .total_cmp(&b.head[3])
                .then(a.spec.gt_id.cmp(&b.spec.gt_id))
        });
        out
    }

    /// The ground truth of frame `k`: people whose head is less than half covered.
    pub fn truth(&self, sprites: &[Sprite], k: u32) -> Vec<Truth> {
        let placed = self.placed(sprites, k);
        let mut out = Vec::new();
        for (i, p) in placed.iter().enumerate() {
            let in_front = placed.get(i + 1..).unwrap_or(&[]);
            if self.covered_fraction(p.head, in_front) >= HIDDEN_FRACTION {
                continue;
            }
            let [x1, y1, x2, y2] = p.head;
            out.push(Truth {
                gt_id: p.spec.gt_id,
                class: p.sprite.class,
                bbox: [
                    x1.max(0.0),
                    y1.max(0.0),
                    x2.min(FRAME_W as f32),
                    y2.min(FRAME_H as f32),
                ],
                expect: p.spec.expect,
            });
        }
        out.sort_by_key(|t| t.gt_id);
        out
    }

    /// Every placed person's head box at frame `k`, hidden or not: to tell whose head a detection
    /// is even when the truth says nobody could be expected to see it.
    pub fn heads(&self, sprites: &[Sprite], k: u32) -> Vec<(u32, [f32; 4])> {
        self.placed(sprites, k)
            .iter()
            .map(|p| (p.spec.gt_id, p.head))
            .collect()
    }

    /// Share of grid points of `head` outside the frame, under a pillar or under someone nearer.
    fn covered_fraction(&self, head: [f32; 4], in_front: &[Placed<'_>]) -> f32 {
        let [x1, y1, x2, y2] = head;
        let mut covered = 0u32;
        for gy in 0..COVER_GRID {
            for gx in 0..COVER_GRID {
                let x = x1 + (x2 - x1) * (gx as f32 + 0.5) / COVER_GRID as f32;
                let y = y1 + (y2 - y1) * (gy as f32 + 0.5) / COVER_GRID as f32;
                let outside = x < 0.0 || y < 0.0 || x >= FRAME_W as f32 || y >= FRAME_H as f32;
                let pillar = self
                    .pillars
                    .iter()
                    .any(|r| x >= r[0] && x < r[2] && y >= r[1] && y < r[3]);
                let person = in_front
                    .iter()
                    .any(|p| p.sprite.alpha_at(p.offset, x, y) >= 128);
                covered += u32::from(outside || pillar || person);
            }
        }
        covered as f32 / (COVER_GRID * COVER_GRID) as f32
    }

    /// Frame `k` as the camera would see it.
    pub fn render(&self, sprites: &[Sprite], background: &RgbImage, k: u32) -> RgbImage {
        let mut canvas = background.clone();
        for p in self.placed(sprites, k) {
            p.sprite.draw(&mut canvas, p.offset);
        }
        for r in &self.pillars {
            let x0 = r[0].max(0.0) as u32;
            let y0 = r[1].max(0.0) as u32;
            let x1 = (r[2].max(0.0) as u32).min(canvas.width());
            let y1 = (r[3].max(0.0) as u32).min(canvas.height());
            for y in y0..y1 {
                for x in x0..x1 {
                    canvas.put_pixel(x, y, PILLAR_COLOUR);
                }
            }
        }
        canvas
    }
}

/// Local wall-clock time, for schedules. `None` for a date that does not exist or a time skipped
/// by a DST change.
pub fn local_time(y: i32, m: u32, d: u32, hour: u32, min: u32) -> Option<SystemTime> {
    let naive = chrono::NaiveDate::from_ymd_opt(y, m, d)?.and_hms_opt(hour, min, 0)?;
    let local = naive.and_local_timezone(chrono::Local).earliest()?;
    Some(SystemTime::from(local))
}

/// `sprite` alone on `background` with its head centred in the frame: the check that the model
/// still sees the person once cut out. Returns the frame and the head box.
pub fn solo(sprite: &Sprite, background: &RgbImage, start: SystemTime) -> (RgbImage, [f32; 4]) {
    let scenario = Scenario {
        name: "solo",
        frames: 1,
        people: vec![PersonSpec {
            gt_id: 1,
            sprite: 0,
            keys: vec![Key {
                frame: 0,
                cx: FRAME_W as f32 / 2.0,
                cy: FRAME_H as f32 / 2.0,
            }],
            expect: Expect::Alert,
        }],
        pillars: Vec::new(),
        zones: Vec::new(),
        masks: Vec::new(),
        required_zones: Vec::new(),
        schedule: Vec::new(),
        start,
        intended_hidden: Vec::new(),
    };
    let sprites = std::slice::from_ref(sprite);
    let head = scenario.heads(sprites, 0).first().map_or([0.0; 4], |h| h.1);
    (scenario.render(sprites, background, 0), head)
}

#[cfg(test)]
#[path = "scene_tests.rs"]
mod tests;
