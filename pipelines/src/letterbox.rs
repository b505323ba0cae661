//! Letterbox geometry: how an original frame is fitted into the model input, and back.
//!
//! The numbers follow the Ultralytics letterbox the models were trained with
//! (models/PROVENANCE.md): `r = min(H/h, W/w)`, content `round(w·r) × round(h·r)`, padding centred
//! with `left = round(dw − 0.1)`, `top = round(dh − 0.1)`, pad value 114.

use crate::Detection;

/// Grey used for the letterbox bars, as in training.
pub const PAD_VALUE: u8 = 114;

/// Where an original image sits inside the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub orig_w: u32,
    pub orig_h: u32,
    pub input_w: u32,
    pub input_h: u32,
    /// Scale from original pixels to input pixels.
    pub scale: f64,
    /// Size of the scaled image content inside the input.
    pub content_w: u32,
    pub content_h: u32,
    /// Offset of the content's top-left corner inside the input.
    pub pad_left: u32,
    pub pad_top: u32,
}

impl Letterbox {
    /// Geometry for fitting `orig_w × orig_h` into `input_w × input_h`.
    /// Zero-sized originals are clamped to one pixel so the maths never divides by zero.
    pub fn new(orig_w: u32, orig_h: u32, input_w: u32, input_h: u32) -> Self {
        let (ow, oh) = (orig_w.max(1), orig_h.max(1));
        let scale = (f64::from(input_h) / f64::from(oh)).min(f64::from(input_w) / f64::from(ow));
        // Python's round() is half-to-even; the reference pre-processing uses it.
        let content_w = ((f64::from(ow) * scale).round_ties_even() as u32).clamp(1, input_w);
        let content_h = ((f64::from(oh) * scale).round_ties_even() as u32).clamp(1, input_h);
        let dw = f64::from(input_w - content_w) / 2.0;
        let dh = f64::from(input_h - content_h) / 2.0;
        Self {
            orig_w: ow,
            orig_h: oh,
            input_w,
            input_h,
            scale,
            content_w,
            content_h,
            pad_left: (dw - 0.1).round_ties_even().max(0.0) as u32,
            pad_top: (dh - 0.1).round_ties_even().max(0.0) as u32,
        }
    }

    /// Maps a point in model-input pixels back to original-image pixels, clipped to the image.
    pub fn to_original(&self, x: f32, y: f32) -> (f32, f32) {
        let ox = (f64::from(x) - f64::from(self.pad_left)) / self.scale;
        let oy = (f64::from(y) - f64::from(self.pad_top)) / self.scale;
        (
            ox.clamp(0.0, f64::from(self.orig_w)) as f32,
            oy.clamp(0.0, f64::from(self.orig_h)) as f32,
        )
    }

    /// Maps boxes found in the letterbox *content* (the frame scaled by `scale`, without the
    /// padding) back to pixels of the `orig_w × orig_h` frame, clipped to it. The content is the
    /// image an edge sends the cloud, so both the cloud service and the edge's Sedna client map
    /// the big model's boxes back with this; only the scale and the frame size travel with it.
    pub fn content_to_original(
        boxes: &[Detection],
        scale: f64,
        orig_w: u32,
        orig_h: u32,
    ) -> Vec<Detection> {
        let (w, h) = (f64::from(orig_w), f64::from(orig_h));
        let x = |v: f32| (f64::from(v) / scale).clamp(0.0, w) as f32;
        let y = |v: f32| (f64::from(v) / scale).clamp(0.0, h) as f32;
        boxes
            .iter()
            .map(|d| Detection {
                x1: x(d.x1),
                y1: y(d.y1),
                x2: x(d.x2),
                y2: y(d.y2),
                ..*d
            })
            .collect()
    }

    /// Paints everything outside the content rectangle of an RGB `input_w × input_h` buffer
    /// with [`PAD_VALUE`]. GStreamer's videoscale letterboxes with black; the model wants 114.
    pub fn paint_padding(&self, rgb: &mut [u8]) {
        let (w, h) = (self.input_w as usize, self.input_h as usize);
        debug_assert_eq!(rgb.len(), w * h * 3);
        let (left, top) = (self.pad_left as usize, self.pad_top as usize);
        let right = (left + self.content_w as usize).min(w);
        let bottom = (top + self.content_h as usize).min(h);
        for (row_index, row) in rgb.chunks_exact_mut(w * 3).enumerate() {
            if row_index < top || row_index >= bottom {
                row.fill(PAD_VALUE);
            } else {
                row[..left * 3].fill(PAD_VALUE);
                row[right * 3..].fill(PAD_VALUE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hd_frame_into_384x640_is_centred_vertically() {
        let lb = Letterbox::new(1280, 720, 640, 384);
        assert_eq!((lb.content_w, lb.content_h), (640, 360));
        assert_eq!((lb.pad_left, lb.pad_top), (0, 12));
        assert_eq!(lb.to_original(320.0, 12.0), (640.0, 0.0));
        assert_eq!(lb.to_original(640.0, 372.0), (1280.0, 720.0));
    }

    #[test]
    fn content_boxes_are_mapped_to_original_pixels_and_clipped() {
        let boxes = [Detection {
            x1: 10.0,
            y1: 20.0,
            x2: 700.0,
            y2: 359.0,
            score: 0.9,
            class: 1,
        }];
        assert_eq!(
            Letterbox::content_to_original(&boxes, 0.5, 1280, 720),
            [Detection {
                x1: 20.0,
                y1: 40.0,
                x2: 1280.0,
                y2: 718.0,
                score: 0.9,
                class: 1
            }]
        );
    }

    #[test]
    fn odd_padding_rounds_like_ultralytics() {
        // 1024×683 into 640×640: content 640×427, dh = 106.5 → top = round(106.4) = 106.
        let lb = Letterbox::new(1024, 683, 640, 640);
        assert_eq!((lb.content_w, lb.content_h), (640, 427));
        assert_eq!((lb.pad_left, lb.pad_top), (0, 106));
    }

    #[test]
    fn points_in_the_padding_clip_to_the_image() {
        let lb = Letterbox::new(128, 128, 640, 384);
        assert_eq!((lb.content_w, lb.content_h, lb.pad_left), (384, 384, 128));
        assert_eq!(lb.to_original(0.0, 0.0), (0.0, 0.0));
        assert_eq!(lb.to_original(639.0, 384.0), (128.0, 128.0));
    }

    #[test]
    fn padding_is_painted_grey_and_content_kept() {
        let lb = Letterbox::new(4, 2, 4, 4);
        let mut rgb = vec![0u8; 4 * 4 * 3];
        lb.paint_padding(&mut rgb);
        let row = |r: usize| &rgb[r * 12..(r + 1) * 12];
        assert!(row(0).iter().all(|&v| v == PAD_VALUE));
        assert!(row(1).iter().all(|&v| v == 0));
        assert!(row(2).iter().all(|&v| v == 0));
        assert!(row(3).iter().all(|&v| v == PAD_VALUE));
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let lb = Letterbox::new(0, 0, 640, 384);
        assert!(lb.scale.is_finite());
        let lb = Letterbox::new(100_000, 1, 640, 384);
        assert!(lb.content_h >= 1);
    }
}
