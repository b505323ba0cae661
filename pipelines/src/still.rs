//! Still images (JPEG/PNG files) as frames: for `helmetd detect`, tests and the reference check.
//!
//! The resize is `fast_image_resize`'s bilinear convolution, which reproduces Pillow's
//! `Image.resize(..., BILINEAR)` used by the Python reference, so the two pipelines differ only
//! by their JPEG decoders.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use fast_image_resize::images::{CroppedImageMut, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
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

/// Resizes `img` into the content rectangle of a grey `input_w × input_h` canvas. Public for
/// frames that arrive as raw pixels (Sedna's JSON lists).
pub fn letterbox_rgb(
    img: &image::RgbImage,
    input_w: u32,
    input_h: u32,
) -> Result<(Letterbox, Vec<u8>), String> {
    if input_w == 0 || input_h == 0 {
        return Err("model input size must be non-zero".into());
    }
    let lb = Letterbox::new(img.width(), img.height(), input_w, input_h);
    let mut pixels = vec![PAD_VALUE; input_w as usize * input_h as usize * 3];
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| e.to_string())?;
    let mut canvas = Image::from_slice_u8(input_w, input_h, &mut pixels, PixelType::U8x3)
        .map_err(|e| e.to_string())?;
    let mut content = CroppedImageMut::new(
        &mut canvas,
        lb.pad_left,
        lb.pad_top,
        lb.content_w,
        lb.content_h,
    )
    .map_err(|e| e.to_string())?;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut content, &options)
        .map_err(|e| e.to_string())?;
    Ok((lb, pixels))
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
    fn resize_matches_pillow_bilinear() {
        // Pillow 13, `Image.fromarray(row).resize((3, 1), Image.BILINEAR)` on this 7×1 grey row
        // gives 109, 134, 99 (triangle filter widened by the downscale factor).
        let mut img = image::RgbImage::new(7, 1);
        for (x, v) in [0u8, 255, 0, 255, 10, 200, 30].into_iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([v; 3]));
        }
        let (lb, pixels) = letterbox_rgb(&img, 3, 3).unwrap();
        assert_eq!((lb.content_w, lb.content_h, lb.pad_top), (3, 1, 1));
        assert_eq!(&pixels[..9], &[PAD_VALUE; 9]);
        assert_eq!(&pixels[9..18], &[109, 109, 109, 134, 134, 134, 99, 99, 99]);
        assert_eq!(&pixels[18..], &[PAD_VALUE; 9]);
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
