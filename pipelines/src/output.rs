//! Pictures of what the model saw: annotated JPEGs, and Sedna's three output folders.
//!
//! Images are the letterbox *content* of the frame (e.g. 640×360 for a 720p camera at a 384×640
//! model input): that is all the model saw, a quarter of the bytes of the full frame, and enough for
//! the cloud's 640×640 model, which would downscale a full frame to the same size anyway.

use std::io::Write;
use std::path::{Path, PathBuf};

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::frame::{Detection, Frame};

/// Sedna's folder for every processed frame, boxes of the final result drawn.
pub const ALL_EXAMPLES: &str = "all_examples_inference_output";
/// Sedna's folder for hard frames, with the edge model's boxes.
pub const HARD_EXAMPLE_EDGE: &str = "hard_example_edge_inference_output";
/// Sedna's folder for hard frames the cloud answered, with the cloud's boxes.
pub const HARD_EXAMPLE_CLOUD: &str = "hard_example_cloud_inference_output";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
}

/// The letterbox content of a frame as an image in content pixels.
pub fn content_image(frame: &Frame) -> RgbImage {
    let lb = &frame.letterbox;
    let (w, h) = (lb.input_w as usize, lb.content_w as usize);
    let mut out = RgbImage::new(lb.content_w, lb.content_h);
    for (y, row) in out.chunks_exact_mut(h * 3).enumerate() {
        let start = ((lb.pad_top as usize + y) * w + lb.pad_left as usize) * 3;
        if let Some(src) = frame.pixels.get(start..start + h * 3) {
            row.copy_from_slice(src);
        }
    }
    out
}

fn class_colour(class: u16) -> Rgb<u8> {
    match class {
        0 => Rgb([0, 200, 0]),   // With Helmet
        1 => Rgb([230, 20, 20]), // Without Helmet
        _ => Rgb([240, 200, 0]),
    }
}

/// Draws boxes given in original-image pixels onto an image that is the original scaled by
/// `scale`, each with a `class:score` label.
pub fn annotate(
    image: &mut RgbImage,
    scale: f64,
    detections: &[Detection],
    class_names: &[String],
) {
    // Coordinates are clamped into the image plus a margin before any arithmetic, so no f32
    // (NaN, infinite, negative, huge) and no scale can overflow what follows; NaN lands on 0.
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let px = |v: f32, limit: i64| {
        let scaled = (f64::from(v) * scale).round();
        scaled.clamp(0.0, (limit + 1) as f64) as i64
    };
    for d in detections {
        let colour = class_colour(d.class);
        let (x1, y1, x2, y2) = (px(d.x1, w), px(d.y1, h), px(d.x2, w), px(d.y2, h));
        for t in 0..2 {
            draw_rect(image, x1 + t, y1 + t, x2 - t, y2 - t, colour);
        }
        let name = class_names
            .get(usize::from(d.class))
            .map_or("class", String::as_str);
        let label = format!("{name}:{:.2}", d.score);
        let label_y = if y1 >= 10 { y1 - 10 } else { y2 + 2 };
        draw_text(image, x1, label_y, &label, colour);
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

fn draw_rect(image: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, colour: Rgb<u8>) {
    if x2 < x1 || y2 < y1 {
        return;
    }
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    for x in x1.max(0)..=x2.min(w - 1) {
        put(image, x, y1, colour);
        put(image, x, y2, colour);
    }
    for y in y1.max(0)..=y2.min(h - 1) {
        put(image, x1, y, colour);
        put(image, x2, y, colour);
    }
}

/// 8×8 bitmap glyphs on a dark band: readable on any background, no font file to ship.
fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
    let width = text.chars().count() as i64 * 8;
    for dy in -1..9 {
        for dx in -1..=width {
            put(image, x + dx, y + dy, Rgb([0, 0, 0]));
        }
    }
    for (i, c) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    put(image, x + i as i64 * 8 + col, y + row as i64, colour);
                }
            }
        }
    }
}

/// How [`draw_polygon`] draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolygonStyle {
    pub colour: Rgb<u8>,
    /// Line width in pixels (at least 1).
    pub thickness: u32,
    /// Diagonal hatching of the inside, every this many pixels; 0 for none.
    pub hatch_spacing: u32,
}

/// Draws a closed polygon given in fractions of the image (`(x, y)`, 0–1) scaled to the image,
/// with `label` (when not empty) on a dark band just inside its topmost point. Points that are
/// not finite are skipped, so any input is drawn without panicking.
pub fn draw_polygon(image: &mut RgbImage, points: &[(f32, f32)], label: &str, style: PolygonStyle) {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    // Clamped to the image plus a margin before the conversion, as in `annotate`.
    let px = |v: f32, size: f64| (f64::from(v) * size).round().clamp(-1.0, size + 1.0);
    let scaled: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (px(x, w), px(y, h)))
        .collect();
    if scaled.is_empty() {
        return;
    }
    if style.hatch_spacing > 0 && scaled.len() >= 3 {
        hatch(image, &scaled, style.colour, i64::from(style.hatch_spacing));
    }
    let n = scaled.len();
    for i in 0..n {
        let (a, b) = (scaled[i], scaled[(i + 1) % n]);
        draw_line(image, a, b, style.colour, style.thickness.max(1));
    }
    if !label.is_empty() {
        let top = scaled
            .iter()
            .copied()
            .fold(scaled[0], |best, p| if p.1 < best.1 { p } else { best });
        let x =
            (top.0 as i64 + 4).min(i64::from(image.width()) - 8 * label.chars().count() as i64 - 1);
        let y = (top.1 as i64 + 4 + i64::from(style.thickness)).min(i64::from(image.height()) - 10);
        draw_text(image, x.max(1), y.max(1), label, style.colour);
    }
}

/// Draws `text` in 8×8 glyphs on a dark band at pixel `(x, y)`: legends and captions.
pub fn draw_label(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
    draw_text(image, x, y, text, colour);
}

/// A line of `thickness` pixels: a square brush stepped along the longer axis.
fn draw_line(image: &mut RgbImage, a: (f64, f64), b: (f64, f64), colour: Rgb<u8>, thickness: u32) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as i64;
    let t = i64::from(thickness);
    let (from, to) = (-(t - 1) / 2, t / 2);
    for s in 0..=steps {
        let f = s as f64 / steps as f64;
        let (x, y) = (
            (a.0 + (b.0 - a.0) * f).round() as i64,
            (a.1 + (b.1 - a.1) * f).round() as i64,
        );
        for dy in from..=to {
            for dx in from..=to {
                put(image, x + dx, y + dy, colour);
            }
        }
    }
}

/// Diagonal lines (x + y a multiple of `spacing`) inside the polygon, by the even-odd rule.
fn hatch(image: &mut RgbImage, points: &[(f64, f64)], colour: Rgb<u8>, spacing: i64) {
    // The polygon's bounding box, clipped to the image.
    let span = |coordinate: fn(&(f64, f64)) -> f64, size: u32| {
        let values = points.iter().map(|p| coordinate(p) as i64);
        let low = values.clone().min().unwrap_or(0).max(0);
        (low, values.max().unwrap_or(0).min(i64::from(size) - 1))
    };
    let (x_min, x_max) = span(|p| p.0, image.width());
    let (y_min, y_max) = span(|p| p.1, image.height());
    let n = points.len();
    for y in y_min..=y_max {
        let fy = y as f64 + 0.5;
        // Where this row crosses the edges; inside between pairs.
        let mut crossings: Vec<f64> = (0..n)
            .filter_map(|i| {
                let (a, b) = (points[i], points[(i + 1) % n]);
                ((a.1 > fy) != (b.1 > fy)).then(|| a.0 + (fy - a.1) / (b.1 - a.1) * (b.0 - a.0))
            })
            .collect();
        crossings.sort_by(f64::total_cmp);
        for pair in crossings.chunks_exact(2) {
            let start = (pair[0].ceil() as i64).max(x_min);
            let end = (pair[1].floor() as i64).min(x_max);
            for x in start..=end {
                if (x + y).rem_euclid(spacing) == 0 {
                    put(image, x, y, colour);
                }
            }
        }
    }
}

pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(image)?;
    Ok(out)
}

/// `20261128T215106.123Z_gate-1_000042`: sorts by time, unique across restarts (Sedna numbered
/// files from 1 at each start and overwrote the previous run's).
pub fn frame_stem(frame: &Frame) -> String {
    let time = humantime::format_rfc3339_millis(frame.capture_time)
        .to_string()
        .replace(['-', ':'], "");
    format!("{time}_{}_{:06}", frame.camera, frame.seq)
}

/// Sedna's three output folders under one root; created at start, never wiped.
#[derive(Debug, Clone)]
pub struct SednaOutputs {
    root: PathBuf,
    jpeg_quality: u8,
    class_names: Vec<String>,
}

/// What was decided for one frame, as Sedna's `inference()` returns it.
pub struct Outcome<'a> {
    pub is_hard: bool,
    pub final_result: &'a [Detection],
    pub edge_result: &'a [Detection],
    pub cloud_result: Option<&'a [Detection]>,
}

impl SednaOutputs {
    pub fn create(
        root: &Path,
        jpeg_quality: u8,
        class_names: Vec<String>,
    ) -> Result<Self, OutputError> {
        for dir in [ALL_EXAMPLES, HARD_EXAMPLE_EDGE, HARD_EXAMPLE_CLOUD] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| OutputError::Io { path, source })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            jpeg_quality,
            class_names,
        })
    }

    /// Writes the frame to the folders Sedna's example would: all frames with the final boxes;
    /// hard frames with the edge boxes; hard frames the cloud answered with the cloud boxes.
    pub fn write(&self, frame: &Frame, outcome: &Outcome<'_>) -> Result<Vec<PathBuf>, OutputError> {
        let base = content_image(frame);
        let stem = frame_stem(frame);
        let mut written = Vec::new();
        let mut emit = |dir: &str, boxes: &[Detection]| -> Result<(), OutputError> {
            let mut image = base.clone();
            annotate(&mut image, frame.letterbox.scale, boxes, &self.class_names);
            let path = self.root.join(dir).join(format!("{stem}.jpeg"));
            write_atomically(&path, &encode_jpeg(&image, self.jpeg_quality)?)?;
            written.push(path);
            Ok(())
        };
        emit(ALL_EXAMPLES, outcome.final_result)?;
        if outcome.is_hard {
            emit(HARD_EXAMPLE_EDGE, outcome.edge_result)?;
            if let Some(cloud) = outcome.cloud_result {
                emit(HARD_EXAMPLE_CLOUD, cloud)?;
            }
        }
        Ok(written)
    }
}

/// Write-then-rename, so a power cut leaves either no file or a whole one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let io = |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("jpeg.part");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // On a full disk every frame would otherwise leave its partial file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letterbox::Letterbox;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    fn frame() -> Frame {
        let letterbox = Letterbox::new(1280, 720, 640, 384);
        let mut pixels = vec![50u8; 640 * 384 * 3];
        letterbox.paint_padding(&mut pixels);
        Frame {
            camera: Arc::from("gate-1"),
            seq: 42,
            pts: None,
            capture_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_366_666_123),
            letterbox,
            pixels,
        }
    }

    fn boxed(class: u16) -> Detection {
        Detection {
            x1: 100.0,
            y1: 100.0,
            x2: 300.0,
            y2: 400.0,
            score: 0.42,
            class,
        }
    }

    #[test]
    fn content_image_drops_the_bars() {
        let image = content_image(&frame());
        assert_eq!(image.dimensions(), (640, 360));
        assert!(image.pixels().all(|p| p.0 == [50, 50, 50]));
    }

    #[test]
    fn annotate_draws_box_edges_in_scaled_pixels() {
        let mut image = content_image(&frame());
        annotate(
            &mut image,
            0.5,
            &[boxed(1)],
            &["With Helmet".into(), "Without Helmet".into()],
        );
        assert_eq!(image.get_pixel(50, 120).0, [230, 20, 20]);
        assert_eq!(
            image.get_pixel(100, 120).0,
            [50, 50, 50],
            "inside stays untouched"
        );
        // A box fully outside and a reversed box must not panic.
        annotate(
            &mut image,
            0.5,
            &[Detection {
                x1: 5000.0,
                y1: -50.0,
                x2: 10.0,
                y2: 1e9,
                score: 1.0,
                class: 9,
            }],
            &[],
        );
    }

    #[test]
    fn annotate_is_total_on_any_f32_and_scale() {
        let odd = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            -1.0,
            0.0,
            1e30,
            300.0,
        ];
        let mut boxes = Vec::new();
        for &a in &odd {
            for &b in &odd {
                boxes.push(Detection {
                    x1: a,
                    y1: b,
                    x2: b,
                    y2: a,
                    score: a,
                    class: u16::MAX,
                });
            }
        }
        for scale in [0.5, 0.0, -1.0, f64::NAN, f64::INFINITY, f64::MAX] {
            let mut image = content_image(&frame());
            annotate(&mut image, scale, &boxes, &[]);
        }
        // A box reaching far out still draws its visible edges.
        let mut image = content_image(&frame());
        let huge = Detection {
            x1: 100.0,
            y1: 100.0,
            x2: f32::MAX,
            y2: f32::INFINITY,
            score: 0.5,
            class: 1,
        };
        annotate(&mut image, 0.5, &[huge], &[]);
        assert_eq!(image.get_pixel(50, 120).0, [230, 20, 20]);
        assert_eq!(image.get_pixel(200, 50).0, [230, 20, 20]);
    }

    #[test]
    fn polygons_are_drawn_scaled_hatched_and_total() {
        let mut image = RgbImage::new(200, 100);
        let cyan = Rgb([0, 220, 255]);
        let square = [(0.1, 0.2), (0.9, 0.2), (0.9, 0.8), (0.1, 0.8)];
        let style = PolygonStyle {
            colour: cyan,
            thickness: 3,
            hatch_spacing: 0,
        };
        draw_polygon(&mut image, &square, "zone", style);
        assert_eq!(image.get_pixel(100, 80).0, cyan.0, "bottom edge");
        assert_eq!(image.get_pixel(180, 50).0, cyan.0, "right edge");
        assert_eq!(
            image.get_pixel(100, 60).0,
            [0, 0, 0],
            "inside stays untouched"
        );
        let hatched = PolygonStyle {
            hatch_spacing: 8,
            ..style
        };
        let mut image = RgbImage::new(200, 100);
        draw_polygon(&mut image, &square, "", hatched);
        assert_eq!(
            image.get_pixel(96, 40).0,
            cyan.0,
            "x + y = 136 on a hatch line"
        );
        assert_eq!(image.get_pixel(97, 40).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(4, 4).0, [0, 0, 0], "outside is not hatched");
        let odd = [
            (f32::NAN, 0.5),
            (f32::INFINITY, f32::MAX),
            (-1e30, 1e30),
            (0.5, 0.5),
            (f32::MIN, 0.0),
        ];
        draw_polygon(
            &mut image,
            &odd,
            "odd label that is longer than the image is wide",
            hatched,
        );
        draw_polygon(&mut RgbImage::new(1, 1), &square, "x", hatched);
    }

    #[test]
    fn stem_is_time_camera_seq() {
        assert_eq!(frame_stem(&frame()), "20251128T215106.123Z_gate-1_000042");
    }

    #[test]
    fn sedna_folders_follow_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let outputs = SednaOutputs::create(dir.path(), 80, vec![]).unwrap();
        let f = frame();
        let edge = [boxed(0)];
        let cloud = [boxed(1)];
        let easy = Outcome {
            is_hard: false,
            final_result: &edge,
            edge_result: &edge,
            cloud_result: None,
        };
        assert_eq!(outputs.write(&f, &easy).unwrap().len(), 1);
        let unanswered = Outcome {
            is_hard: true,
            final_result: &edge,
            edge_result: &edge,
            cloud_result: None,
        };
        assert_eq!(outputs.write(&f, &unanswered).unwrap().len(), 2);
        let answered = Outcome {
            is_hard: true,
            final_result: &cloud,
            edge_result: &edge,
            cloud_result: Some(&cloud),
        };
        let written = outputs.write(&f, &answered).unwrap();
        assert_eq!(written.len(), 3);
        for path in written {
            let decoded = image::open(&path).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (640, 360));
        }
    }
}
