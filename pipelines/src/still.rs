//! Still images (JPEG/PNG files) as frames: for `helmetd detect`, tests and the reference check.
//!
//! The resize is bilinear *interpolation* without antialiasing, bit for bit OpenCV's 8-bit
//! `cv2.resize(..., interpolation=cv2.INTER_LINEAR)`, which Ultralytics' `LetterBox` uses (shared
//! docs/models.md §4): users compare helmetd's scores with `yolo predict`, and the INT8 model
//! moves its scores by whole quantisation steps on a grey level here and there. An antialiased
//! filter (Pillow's BILINEAR, `fast_image_resize`'s convolution, used here before issue #18)
//! averages many source pixels when shrinking, a different input altogether; even
//! `fast_image_resize`'s own bilinear interpolation rounds between its two passes and is one grey
//! level off on 9–26 % of the values of the bundled photos, enough to move scores by a step. What
//! is left between helmetd and the Python reference (scripts/make_reference_detections.py) is the
//! JPEG decoder: zune-jpeg here, libjpeg-turbo in OpenCV.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use image::ImageFormat;

use crate::frame::Frame;
use crate::letterbox::{Letterbox, PAD_VALUE};

#[derive(Debug, thiserror::Error)]
pub enum StillError {
    #[error("cannot read image {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image {}: {source}", .path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot letterbox image {} into {input_w}x{input_h}: {reason}", .path.display())]
    Letterbox {
        path: PathBuf,
        input_w: u32,
        input_h: u32,
        reason: String,
    },
}

/// Decodes `path` and letterboxes it into an `input_w × input_h` [`Frame`] (sequence 0, no
/// PTS). Also returns the decoded original, for drawing boxes or saving hard examples.
pub fn load_still(
    path: impl AsRef<Path>,
    camera_name: &str,
    input_w: u32,
    input_h: u32,
) -> Result<(Frame, image::RgbImage), StillError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| StillError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_still(
        &bytes,
        path,
        camera_name,
        input_w,
        input_h,
        image::Limits::default(),
    )
}

/// [`load_still`] for an image already in memory (a hard example received over MQTT);
/// `label` names it in errors. `limits` bound what the decoder may produce: images from
/// peers must not get the `image` crate's 512 MiB default.
pub fn decode_still(
    bytes: &[u8],
    label: &Path,
    camera_name: &str,
    input_w: u32,
    input_h: u32,
    limits: image::Limits,
) -> Result<(Frame, image::RgbImage), StillError> {
    let decode_error = |source| StillError::Decode {
        path: label.to_path_buf(),
        source,
    };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| StillError::Read {
            path: label.to_path_buf(),
            source,
        })?;
    reader.limits(limits);
    if reader.format() == Some(ImageFormat::Jpeg) {
        jpeg_is_complete(bytes).map_err(|reason| {
            decode_error(image::ImageError::Decoding(
                image::error::DecodingError::new(ImageFormat::Jpeg.into(), reason),
            ))
        })?;
    }
    let original = reader.decode().map_err(decode_error)?.into_rgb8();
    let (letterbox, pixels) =
        letterbox_rgb(&original, input_w, input_h).map_err(|reason| StillError::Letterbox {
            path: label.to_path_buf(),
            input_w,
            input_h,
            reason,
        })?;
    let frame = Frame {
        camera: Arc::from(camera_name),
        seq: 0,
        pts: None,
        capture_time: SystemTime::now(),
        letterbox,
        pixels,
    };
    Ok((frame, original))
}

/// Walks the JPEG marker structure to the end-of-image marker.
///
/// The `image` crate runs zune-jpeg in lenient mode, which decodes a truncated file without an
/// error and paints the missing part grey; a half-grey frame would silently yield wrong
/// detections, so a stream that ends before its EOI marker is rejected here, as Pillow does.
/// Bytes after EOI (camera trailers) are ignored.
fn jpeg_is_complete(bytes: &[u8]) -> Result<(), &'static str> {
    const TRUNCATED: &str = "JPEG data ends before the end-of-image marker (truncated file)";
    let is_rst = |m: u8| (0xD0..=0xD7).contains(&m);
    let mut i = 2; // after SOI, which format detection has already seen
    loop {
        // Like libjpeg, skip stray bytes and fill bytes up to the next marker code.
        while *bytes.get(i).ok_or(TRUNCATED)? != 0xFF {
            i += 1;
        }
        while *bytes.get(i).ok_or(TRUNCATED)? == 0xFF {
            i += 1;
        }
        let marker = bytes[i];
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Standalone markers and a stuffed zero carry no length.
            0x00 | 0x01 => continue,
            m if is_rst(m) => continue,
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(TRUNCATED),
        };
        if len < 2 {
            return Err("corrupt JPEG segment length");
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs until a marker other than a stuffed 0xFF00 or an RSTn.
            loop {
                match bytes.get(i..i + 2).ok_or(TRUNCATED)? {
                    &[0xFF, next] if next != 0x00 && !is_rst(next) => break,
                    _ => i += 1,
                }
            }
        }
    }
}

/// Resizes `img` into the content rectangle of a grey `input_w × input_h` canvas, as
/// Ultralytics' `LetterBox` does with `cv2.resize` + `cv2.copyMakeBorder`. Public for frames that
/// arrive as raw pixels (Sedna's JSON lists).
pub fn letterbox_rgb(
    img: &image::RgbImage,
    input_w: u32,
    input_h: u32,
) -> Result<(Letterbox, Vec<u8>), String> {
    if input_w == 0 || input_h == 0 {
        return Err("model input size must be non-zero".into());
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(format!(
            "image is {}x{}: no pixels",
            img.width(),
            img.height()
        ));
    }
    let lb = Letterbox::new(img.width(), img.height(), input_w, input_h);
    let mut pixels = vec![PAD_VALUE; input_w as usize * input_h as usize * 3];
    let stride = input_w as usize * 3;
    let offset = lb.pad_top as usize * stride + lb.pad_left as usize * 3;
    resize_linear_rgb(
        img,
        &mut pixels[offset..],
        stride,
        lb.content_w,
        lb.content_h,
    );
    Ok((lb, pixels))
}

/// OpenCV's `INTER_RESIZE_COEF_BITS`: 8-bit bilinear weights are integers out of 2^11.
const COEF_BITS: u32 = 11;

/// The two source samples one output coordinate blends, with OpenCV's fixed-point weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lo: usize,
    hi: usize,
    w_lo: i32,
    w_hi: i32,
}

/// The taps of each of `dst_len` output coordinates along an axis of `src_len` samples, computed
/// exactly as `cv::resize` does for `INTER_LINEAR` (modules/imgproc/src/resize.cpp):
///
/// * scale = 1 / (dst_len / src_len) in double (OpenCV keeps the inverse scale);
/// * half-pixel centres: f = (float)((d + 0.5) · scale − 0.5), s = floor(f), t = f − s in float;
/// * weights round((1 − t) · 2048) and round(t · 2048), rounded half to even like `cvRound`, so
///   they can sum to 2047 or 2049;
/// * past the first or last sample, columns (`clamp_weights`) snap to that sample with weights
///   (2048, 0), whereas rows only clamp the sample index and keep the computed weights: the
///   vertical pass then blends a row with itself, which can round differently from the row.
fn taps(src_len: u32, dst_len: u32, clamp_weights: bool) -> Vec<Tap> {
    let scale = 1.0 / (f64::from(dst_len) / f64::from(src_len));
    let last = i64::from(src_len) - 1;
    let one = (1u32 << COEF_BITS) as f32;
    (0..dst_len)
        .map(|d| {
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let floor = f.floor();
            let (mut s, mut t) = (floor as i64, f - floor);
            if clamp_weights && (s < 0 || s >= last) {
                (s, t) = (s.clamp(0, last), 0.0);
            }
            Tap {
                lo: s.clamp(0, last) as usize,
                hi: (s + 1).clamp(0, last) as usize,
                w_lo: ((1.0 - t) * one).round_ties_even() as i32,
                w_hi: (t * one).round_ties_even() as i32,
            }
        })
        .collect()
}

/// Horizontal pass for one source row: each output value is the exact integer
/// `S[lo] · w_lo + S[hi] · w_hi`, a value scaled by 2^11 with no rounding yet.
fn resize_row(src_row: &[u8], xtaps: &[Tap], out: &mut [i32]) {
    for (tap, px) in xtaps.iter().zip(out.chunks_exact_mut(3)) {
        for (c, v) in px.iter_mut().enumerate() {
            *v = i32::from(src_row[tap.lo * 3 + c]) * tap.w_lo
                + i32::from(src_row[tap.hi * 3 + c]) * tap.w_hi;
        }
    }
}

/// Bilinear resize of `img` to `dst_w × dst_h`, bit-exact with OpenCV's 8-bit `INTER_LINEAR`
/// (see [`taps`] for the coordinates). Output row `y` starts at `dst[y * dst_stride]`.
///
/// The vertical pass is OpenCV's `VResizeLinearVec_32s8u` formula, which its scalar tail repeats:
/// with H0, H1 the two horizontally resized rows (scaled by 2^11) and b0, b1 the row weights,
/// `out = (((b0 · (H0 >> 4)) >> 16) + ((b1 · (H1 >> 4)) >> 16) + 2) >> 2`. The two truncating
/// shifts make it differ from a plain rounded (b0·H0 + b1·H1) / 2^22 by one grey level now and
/// then, so it is reproduced as is rather than "improved". An exact 2× reduction, which OpenCV
/// hands to INTER_AREA, gives the same numbers through this formula.
fn resize_linear_rgb(
    img: &image::RgbImage,
    dst: &mut [u8],
    dst_stride: usize,
    dst_w: u32,
    dst_h: u32,
) {
    let src_stride = img.width() as usize * 3;
    let src = img.as_raw();
    let xtaps = taps(img.width(), dst_w, true);
    let ytaps = taps(img.height(), dst_h, false);
    let row_len = dst_w as usize * 3;
    // The two horizontally resized rows the current output row blends, keyed by source row, so
    // that consecutive output rows reuse them (upscaling reads each source row many times).
    let mut rows = [
        (usize::MAX, vec![0i32; row_len]),
        (usize::MAX, vec![0i32; row_len]),
    ];
    for (dy, tap) in ytaps.iter().enumerate() {
        if rows[0].0 != tap.lo && rows[1].0 == tap.lo {
            rows.swap(0, 1);
        }
        for (slot, want) in [(0, tap.lo), (1, tap.hi)] {
            if rows[slot].0 != want {
                resize_row(
                    &src[want * src_stride..][..src_stride],
                    &xtaps,
                    &mut rows[slot].1,
                );
                rows[slot].0 = want;
            }
        }
        let (b0, b1) = (tap.w_lo, tap.w_hi);
        let out = &mut dst[dy * dst_stride..][..row_len];
        for ((o, &h0), &h1) in out.iter_mut().zip(&rows[0].1).zip(&rows[1].1) {
            let v = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2;
            *o = v.clamp(0, 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(dir: &Path, name: &str, img: &image::RgbImage) -> PathBuf {
        let path = dir.join(name);
        img.save(&path).unwrap();
        path
    }

    #[test]
    fn content_is_centred_and_bars_are_grey() {
        let dir = tempfile::tempdir().unwrap();
        // 200×100 into 640×384: content 640×320, top = round(32 − 0.1) = 32.
        let path = write_png(
            dir.path(),
            "red.png",
            &image::RgbImage::from_pixel(200, 100, image::Rgb([200, 10, 20])),
        );
        let (frame, original) = load_still(&path, "still", 640, 384).unwrap();
        assert_eq!(original.dimensions(), (200, 100));
        assert_eq!(&*frame.camera, "still");
        assert_eq!(frame.input_size(), (640, 384));
        assert_eq!(
            (frame.letterbox.pad_top, frame.letterbox.content_h),
            (32, 320)
        );
        let px = |x: usize, y: usize| &frame.pixels[(y * 640 + x) * 3..(y * 640 + x) * 3 + 3];
        assert_eq!(px(0, 31), [PAD_VALUE; 3]);
        assert_eq!(px(0, 32), [200, 10, 20]);
        assert_eq!(px(639, 351), [200, 10, 20]);
        assert_eq!(px(639, 352), [PAD_VALUE; 3]);
    }

    #[test]
    fn resize_matches_opencv_inter_linear_on_a_row() {
        // OpenCV 5.0 (opencv-python-headless 5.0.0.93), the numbers 170, 255, 143:
        // python -c "import cv2,numpy as np; print(cv2.resize(np.array([[0,255,0,255,10,200,30]],
        //   np.uint8),(3,1),interpolation=cv2.INTER_LINEAR).tolist())"
        // Plain interpolation at x = 0.67, 3.0, 5.33; Pillow's antialiased BILINEAR, which this
        // module used before, averages the whole row into 109, 134, 99.
        let mut img = image::RgbImage::new(7, 1);
        for (x, v) in [0u8, 255, 0, 255, 10, 200, 30].into_iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([v; 3]));
        }
        let (lb, pixels) = letterbox_rgb(&img, 3, 3).unwrap();
        assert_eq!((lb.content_w, lb.content_h, lb.pad_top), (3, 1, 1));
        assert_eq!(&pixels[..9], &[PAD_VALUE; 9]);
        assert_eq!(
            &pixels[9..18],
            &[170, 170, 170, 255, 255, 255, 143, 143, 143]
        );
        assert_eq!(&pixels[18..], &[PAD_VALUE; 9]);
    }

    /// `w × h` RGB test pattern: channel `c` of pixel (x, y) is (67x + 151y + 29c) mod 256.
    fn pattern(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([0, 1, 2].map(|c| ((x * 67 + y * 151 + c * 29) % 256) as u8))
        })
    }

    fn resized(img: &image::RgbImage, w: u32, h: u32) -> Vec<u8> {
        let mut out = vec![0; (w * h * 3) as usize];
        resize_linear_rgb(img, &mut out, w as usize * 3, w, h);
        out
    }

    #[test]
    fn resize_matches_opencv_inter_linear_up_and_down() {
        // OpenCV 5.0 (opencv-python-headless 5.0.0.93), with (W, H, w, h) = (4, 3, 7, 5) and
        // (9, 7, 4, 3):
        // python -c "import cv2,numpy as np; y,x,c=np.mgrid[0:H,0:W,0:3];
        //   s=((x*67+y*151+c*29)%256).astype(np.uint8);
        //   print(cv2.resize(s,(w,h),interpolation=cv2.INTER_LINEAR).ravel().tolist())"
        // The upscale reaches past every edge (the top and bottom rows blend a row with itself);
        // the downscale by 2.25 × 2.33 skips source pixels, as interpolation does.
        #[rustfmt::skip]
        let up: [u8; 105] = [
            0, 29, 58, 24, 53, 82, 62, 91, 120, 100, 129, 158, 139, 168, 178, 177, 206, 70, 201,
            230, 3, 60, 89, 118, 84, 113, 106, 123, 151, 85, 110, 138, 116, 97, 126, 144, 135, 164,
            94, 159, 188, 63, 151, 180, 209, 175, 204, 142, 213, 242, 33, 124, 153, 54, 34, 63,
            92, 72, 101, 130, 96, 125, 154, 88, 117, 146, 112, 141, 133, 150, 179, 113, 137, 166,
            144, 124, 142, 171, 163, 93, 122, 186, 62, 91, 46, 75, 104, 70, 99, 128, 108, 137,
            166, 146, 175, 204, 185, 195, 224, 223, 87, 116, 247, 20, 49,
        ];
        #[rustfmt::skip]
        let down: [u8; 36] = [
            142, 171, 94, 122, 151, 106, 167, 46, 75, 136, 165, 141, 79, 108, 137, 134, 163, 192,
            28, 57, 86, 179, 208, 141, 143, 108, 84, 144, 174, 202, 114, 143, 97, 126, 155, 77,
        ];
        assert_eq!(resized(&pattern(4, 3), 7, 5), up);
        assert_eq!(resized(&pattern(9, 7), 4, 3), down);
    }

    #[test]
    fn same_size_is_a_copy_and_halving_averages_2x2() {
        let img = pattern(6, 4);
        assert_eq!(resized(&img, 6, 4), img.as_raw().as_slice());
        // OpenCV hands an exact 2× reduction to INTER_AREA, (a + b + c + d + 2) >> 2; the
        // fixed-point bilinear formula gives the same numbers there.
        let half = resized(&img, 3, 2);
        for (i, &v) in half.iter().enumerate() {
            let (x, y, c) = ((i / 3 % 3) as u32 * 2, (i / 9) as u32 * 2, i % 3);
            let sum: u32 = [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)]
                .iter()
                .map(|&(px, py)| u32::from(img.get_pixel(px, py)[c]))
                .sum();
            assert_eq!(u32::from(v), (sum + 2) >> 2, "value {i}");
        }
    }

    #[test]
    fn empty_image_is_an_error() {
        assert!(letterbox_rgb(&image::RgbImage::new(0, 5), 640, 384).is_err());
    }

    /// The error of loading `path`; a success must not dump the frame's pixels into the log.
    fn load_err(path: &Path) -> StillError {
        load_still(path, "c", 640, 384).map(|_| ()).unwrap_err()
    }

    #[test]
    fn non_images_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.jpg");
        std::fs::write(&text, "not an image").unwrap();
        let err = load_err(&text);
        assert!(matches!(err, StillError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("notes.jpg"), "{err}");

        let media = Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        let jpeg = std::fs::read(media.join("overeasy_construction.jpg")).unwrap();
        for keep in [jpeg.len() / 2, jpeg.len() - 2, 1000, 3] {
            let cut = dir.path().join("cut.jpg");
            std::fs::write(&cut, &jpeg[..keep]).unwrap();
            let err = load_err(&cut);
            assert!(
                matches!(err, StillError::Decode { .. }),
                "{keep} bytes: {err}"
            );
        }

        let png = write_png(
            dir.path(),
            "ok.png",
            &image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])),
        );
        let bytes = std::fs::read(&png).unwrap();
        std::fs::write(&png, &bytes[..bytes.len() - 20]).unwrap();
        assert!(matches!(load_err(&png), StillError::Decode { .. }));

        assert!(matches!(
            load_err(&dir.path().join("missing.png")),
            StillError::Read { .. }
        ));
    }

    #[test]
    fn complete_jpegs_pass_the_truncation_check() {
        let media = Path::new(env!("CARGO_MANIFEST_DIR")).join("../media");
        let mut seen = 0;
        for entry in std::fs::read_dir(media).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jpg") {
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(jpeg_is_complete(&bytes), Ok(()), "{}", path.display());
                let mut trailer = bytes.clone();
                trailer.extend_from_slice(b"camera trailer");
                assert_eq!(jpeg_is_complete(&trailer), Ok(()), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn zero_input_size_is_an_error() {
        let img = image::RgbImage::new(4, 4);
        assert!(letterbox_rgb(&img, 0, 384).is_err());
    }
}
