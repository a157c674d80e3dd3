//! The image pipeline: the header is read first (format, dimensions) and refused when the
//! picture would be too large to decode; then decode under the same limits, EXIF orientation
//! applied, each step in order, and one encode. Synchronous and CPU-bound: callers run it on
//! a blocking thread, a bounded number at a time.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::ops::{DEFAULT_QUALITY, Fit, Format, Op, Transform};

/// What an input may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded input.
    pub max_input_bytes: u64,
    /// Largest width x height, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_side: u32,
}

impl Limits {
    pub fn from_config(c: &fms_platform::config::TransformerConfig) -> Limits {
        Limits {
            max_input_bytes: c.max_input.0,
            max_pixels: c.max_pixels,
            max_side: c.max_side,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_side: 30_000,
        }
    }
}

/// Why an image could not be transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// Not an image we read (or not an image at all).
    Unsupported(String),
    /// Over the limits (before anything was decoded).
    TooLarge(String),
    /// The file is damaged.
    Corrupt(String),
    /// A step cannot apply to this image (e.g. a crop outside it).
    Invalid(String),
    /// The time allowed ran out (checked between steps).
    Timeout(String),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::Unsupported(m) => write!(f, "unsupported input: {m}"),
            ImageError::TooLarge(m) => write!(f, "image too large: {m}"),
            ImageError::Corrupt(m) => write!(f, "damaged image: {m}"),
            ImageError::Invalid(m) => write!(f, "{m}"),
            ImageError::Timeout(m) => write!(f, "took too long: {m}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// A transformed image.
#[derive(Debug)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub format: Format,
    pub width: u32,
    pub height: u32,
}

fn decode_error(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        image::ImageError::Limits(l) => ImageError::TooLarge(l.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// Format and dimensions from the header alone.
pub fn probe(input: &[u8]) -> Result<(ImageFormat, u32, u32), ImageError> {
    let reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| ImageError::Unsupported("not a JPEG, PNG, WebP, GIF, TIFF or BMP".into()))?;
    let (w, h) = reader.into_dimensions().map_err(decode_error)?;
    Ok((format, w, h))
}

/// A JPEG whose first step shrinks it by 2x or more, decoded already shrunk; `None`: decode
/// it in full.
fn decode_shrunk(
    input: &[u8],
    t: &Transform,
    limits: &Limits,
) -> Result<Option<(DynamicImage, ImageFormat)>, ImageError> {
    if input.len() as u64 > limits.max_input_bytes {
        return Ok(None);
    }
    let (format, w, h) = probe(input)?;
    if format != ImageFormat::Jpeg
        || w > limits.max_side
        || h > limits.max_side
        || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Ok(None);
    }
    check_jpeg_complete(input)?;
    // The orientation from the EXIF data (headers only), to plan in upright dimensions.
    let orientation = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?
        .into_decoder()
        .and_then(|mut d| d.orientation())
        .map_err(decode_error)?;
    use image::metadata::Orientation as O;
    let upright = match orientation {
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH => (h, w),
        _ => (w, h),
    };
    let k = shrink_on_load(t, upright);
    if k == 1 {
        return Ok(None);
    }
    match decode_jpeg_scaled(input, (w, h), k, limits) {
        None => Ok(None),
        Some(r) => {
            let mut img = r?;
            img.apply_orientation(orientation);
            Ok(Some((img, ImageFormat::Jpeg)))
        }
    }
}

/// A JPEG must reach its end marker: decoders fill a cut-short picture with grey and call it
/// success, and a truncated upload must not become a "valid" half-grey result. The segments
/// before the first scan are walked by their lengths (an EXIF thumbnail's own markers are
/// skipped with its segment), then an end marker must follow the scan.
fn check_jpeg_complete(input: &[u8]) -> Result<(), ImageError> {
    let cut = || ImageError::Corrupt("the JPEG is cut short (no end marker)".into());
    let mut i = 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        while input.get(i) == Some(&0xff) && input.get(i + 1) == Some(&0xff) {
            i += 1;
        }
        if input.get(i) != Some(&0xff) {
            return Err(cut());
        }
        let marker = *input.get(i + 1).ok_or_else(cut)?;
        if marker == 0xda {
            break;
        }
        if matches!(marker, 0x01 | 0xd0..=0xd8) {
            i += 2;
            continue;
        }
        let len = match input.get(i + 2..i + 4) {
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            _ => return Err(cut()),
        };
        i += 2 + len;
    }
    if input[i..].windows(2).any(|w| w == [0xff, 0xd9]) {
        Ok(())
    } else {
        Err(cut())
    }
}

/// A WebP's chunks must fit in the file: the decoder reads a metadata chunk (EXIF, for the
/// orientation) into a buffer of the size the chunk claims, before any limit applies — a
/// 40-byte file claiming a 4 GB EXIF chunk asked for 4 GB (found by the `decode` fuzz
/// target).
fn check_webp_chunks(input: &[u8]) -> Result<(), ImageError> {
    let bad = |why: &str| Err(ImageError::Corrupt(format!("WebP: {why}")));
    if input.len() < 12 || &input[..4] != b"RIFF" || &input[8..12] != b"WEBP" {
        return bad("no RIFF/WEBP header");
    }
    let mut at = 12usize;
    while at < input.len() {
        let Some(header) = input.get(at..at + 8) else {
            return bad("a chunk header is cut short");
        };
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let end = at + 8 + size + (size & 1);
        if at + 8 + size > input.len() {
            return bad("a chunk claims more bytes than the file has");
        }
        at = end;
    }
    Ok(())
}

/// Decode the encoded image `input` under `limits` (header checked first, EXIF orientation
/// applied); also its format.
pub fn decode(input: &[u8], limits: &Limits) -> Result<(DynamicImage, ImageFormat), ImageError> {
    if input.len() as u64 > limits.max_input_bytes {
        return Err(ImageError::TooLarge(format!(
            "{} bytes; at most {}",
            input.len(),
            limits.max_input_bytes
        )));
    }
    let (source_format, w, h) = probe(input)?;
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(ImageError::TooLarge(format!(
            "{w} x {h}; at most {} pixels and {} per side",
            limits.max_pixels, limits.max_side
        )));
    }
    match source_format {
        ImageFormat::Jpeg => check_jpeg_complete(input)?,
        ImageFormat::WebP => check_webp_chunks(input)?,
        _ => {}
    }
    let mut reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // Decoded pixels (up to 16 bytes each for the widest colour types) plus decoder state.
    l.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(16)
            .saturating_add(64 << 20),
    );
    reader.limits(l);
    metrics::counter!("transformer_decodes_total").increment(1);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    Ok((img, source_format))
}

/// The DCT scale (2, 4 or 8) a JPEG of `w` x `h` (as oriented) may be decoded at for `t`:
/// when its first step is a resize to at most that fraction (libvips' shrink-on-load; the
/// resize then works from a picture still at least as large as its target).
fn shrink_on_load(t: &Transform, (w, h): (u32, u32)) -> u32 {
    let Some(Op::Resize {
        width,
        height,
        fit,
        upscale,
    }) = t.ops.first()
    else {
        return 1;
    };
    let ((tw, th), region) = plan((w, h), *width, *height, *fit, *upscale);
    // `cover` scales the cropped region; the factor is the region's to the target.
    let (rw, rh) = region.map_or((f64::from(w), f64::from(h)), |(_, _, rw, rh)| (rw, rh));
    let factor = (rw / f64::from(tw)).min(rh / f64::from(th));
    [8, 4, 2]
        .into_iter()
        .find(|k| factor >= f64::from(*k))
        .unwrap_or(1)
}

/// Decode a JPEG with its DCT scaled by 1/`k`; `None` when that path does not apply (a
/// pixel format it does not handle) — the caller decodes in full then.
fn decode_jpeg_scaled(
    input: &[u8],
    (w, h): (u32, u32),
    k: u32,
    limits: &Limits,
) -> Option<Result<DynamicImage, ImageError>> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(input));
    d.set_max_decoding_buffer_size(usize::try_from(limits.max_pixels.saturating_mul(4)).ok()?);
    let (rw, rh) = (
        u16::try_from(w.div_ceil(k)).ok()?,
        u16::try_from(h.div_ceil(k)).ok()?,
    );
    let (sw, sh) = match d.scale(rw, rh) {
        Ok(s) => s,
        Err(e) => return Some(Err(ImageError::Corrupt(e.to_string()))),
    };
    let format = d.info()?.pixel_format;
    if !matches!(
        format,
        jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::RGB24
    ) {
        return None;
    }
    metrics::counter!("transformer_decodes_total").increment(1);
    let pixels = match d.decode() {
        Ok(p) => p,
        Err(e) => return Some(Err(ImageError::Corrupt(e.to_string()))),
    };
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let img = match format {
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageLuma8)
        }
        _ => image::RgbImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageRgb8),
    };
    Some(img.ok_or_else(|| ImageError::Corrupt("short JPEG data".into())))
}

/// Fails once `deadline` has passed.
pub fn check_deadline(deadline: Option<std::time::Instant>, after: &str) -> Result<(), ImageError> {
    match deadline {
        Some(d) if std::time::Instant::now() > d => {
            Err(ImageError::Timeout(format!("out of time after {after}")))
        }
        _ => Ok(()),
    }
}

/// Run `t` (an image transform) on the encoded image `input`.
pub fn transform(input: &[u8], t: &Transform, limits: &Limits) -> Result<Output, ImageError> {
    transform_within(input, t, limits, None)
}

/// As [`transform`], giving up between steps once `deadline` has passed (a step itself is
/// not interrupted; each is linear in the pixels, which `limits` bound).
pub fn transform_within(
    input: &[u8],
    t: &Transform,
    limits: &Limits,
    deadline: Option<std::time::Instant>,
) -> Result<Output, ImageError> {
    let (mut img, source_format) = match decode_shrunk(input, t, limits)? {
        Some(decoded) => decoded,
        None => decode(input, limits)?,
    };
    check_deadline(deadline, "decoding")?;
    for op in &t.ops {
        img = apply(img, op)?;
        check_deadline(deadline, "a step")?;
    }
    let (format, quality) = t.output().unwrap_or({
        (
            match source_format {
                ImageFormat::Jpeg => Format::Jpeg,
                ImageFormat::WebP => Format::Webp,
                _ => Format::Png,
            },
            DEFAULT_QUALITY,
        )
    });
    encode(img, format, quality)
}

/// One image step.
pub fn apply(img: DynamicImage, op: &Op) -> Result<DynamicImage, ImageError> {
    Ok(match op {
        Op::Resize {
            width,
            height,
            fit,
            upscale,
        } => resize(img, *width, *height, *fit, *upscale)?,
        Op::Crop {
            x,
            y,
            width,
            height,
        } => {
            let inside = u64::from(*x) + u64::from(*width) <= u64::from(img.width())
                && u64::from(*y) + u64::from(*height) <= u64::from(img.height());
            if !inside || *width == 0 || *height == 0 {
                return Err(ImageError::Invalid(format!(
                    "crop {width}x{height} at {x},{y} is not inside the {}x{} image",
                    img.width(),
                    img.height()
                )));
            }
            img.crop_imm(*x, *y, *width, *height)
        }
        Op::Rotate(90) => img.rotate90(),
        Op::Rotate(180) => img.rotate180(),
        Op::Rotate(270) => img.rotate270(),
        Op::Rotate(d) => return Err(ImageError::Invalid(format!("rotate {d}"))),
        Op::Flip => img.flipv(),
        Op::Flop => img.fliph(),
        Op::Blur(sigma) => img.fast_blur(*sigma),
        Op::Sharpen(sigma) => sharpen(img, *sigma),
        Op::Grayscale => img.grayscale(),
        Op::Output { .. } => img,
        Op::Compress { .. } | Op::Decompress { .. } | Op::Ocr { .. } => {
            return Err(ImageError::Invalid(
                "not an image step (a stream or OCR transform)".into(),
            ));
        }
    })
}

/// Unsharp mask: the image plus its difference from a blurred copy. The blur is
/// `fast_blur` (box passes), so the cost is linear in the pixels whatever the sigma — no
/// step's cost depends on an argument a caller can make large.
fn sharpen(img: DynamicImage, sigma: f32) -> DynamicImage {
    let img = match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => img,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    let blurred = img.fast_blur(sigma);
    let channels = usize::from(img.color().channel_count());
    let alpha = img.color().has_alpha();
    let mut out = img;
    let raw: &mut [u8] = match &mut out {
        DynamicImage::ImageLuma8(b) => b,
        DynamicImage::ImageLumaA8(b) => b,
        DynamicImage::ImageRgb8(b) => b,
        DynamicImage::ImageRgba8(b) => b,
        _ => return out,
    };
    for (i, (o, b)) in raw.iter_mut().zip(blurred.as_bytes()).enumerate() {
        if alpha && i % channels == channels - 1 {
            continue;
        }
        let v = 2 * i32::from(*o) - i32::from(*b);
        *o = v.clamp(0, 255) as u8;
    }
    out
}

/// A source rectangle: left, top, width, height (fractional: resize samples sub-pixels).
type Region = (f64, f64, f64, f64);

/// The target size for `fit`, and for `cover` the source rectangle to scale from.
fn plan(
    (sw, sh): (u32, u32),
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
    upscale: bool,
) -> ((u32, u32), Option<Region>) {
    let (sw_f, sh_f) = (f64::from(sw), f64::from(sh));
    let (bw, bh) = match (width, height) {
        (Some(w), Some(h)) => (f64::from(w), f64::from(h)),
        (Some(w), None) => (f64::from(w), sh_f * f64::from(w) / sw_f),
        (None, Some(h)) => (sw_f * f64::from(h) / sh_f, f64::from(h)),
        (None, None) => (sw_f, sh_f),
    };
    let grow = upscale && fit != Fit::Inside;
    match fit {
        Fit::Fill => {
            let (w, h) = if grow {
                (bw, bh)
            } else {
                (bw.min(sw_f), bh.min(sh_f))
            };
            ((w.round().max(1.0) as u32, h.round().max(1.0) as u32), None)
        }
        Fit::Contain | Fit::Inside => {
            let mut s = (bw / sw_f).min(bh / sh_f);
            if !grow {
                s = s.min(1.0);
            }
            (
                (
                    (sw_f * s).round().max(1.0) as u32,
                    (sh_f * s).round().max(1.0) as u32,
                ),
                None,
            )
        }
        Fit::Cover => {
            let mut s = (bw / sw_f).max(bh / sh_f);
            if !grow {
                s = s.min(1.0);
            }
            // The box, or less when not enlarging; the source region that fills it, centred.
            let (tw, th) = (bw.min(sw_f * s), bh.min(sh_f * s));
            let (cw, ch) = (tw / s, th / s);
            (
                (tw.round().max(1.0) as u32, th.round().max(1.0) as u32),
                Some(((sw_f - cw) / 2.0, (sh_f - ch) / 2.0, cw, ch)),
            )
        }
    }
}

fn resize(
    img: DynamicImage,
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
    upscale: bool,
) -> Result<DynamicImage, ImageError> {
    let ((tw, th), crop) = plan((img.width(), img.height()), width, height, fit, upscale);
    if (tw, th) == (img.width(), img.height()) && crop.is_none() {
        return Ok(img);
    }
    // fast_image_resize works on 8-bit (and other) pixel layouts; keep the colour type.
    let mut dst = DynamicImage::new(tw, th, img.color());
    let mut options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    if let Some((l, t, w, h)) = crop {
        options = options.crop(l, t, w, h);
    }
    fr::Resizer::new()
        .resize(&img, &mut dst, &options)
        .map_err(|e| ImageError::Invalid(format!("resize: {e}")))?;
    Ok(dst)
}

fn encode(img: DynamicImage, format: Format, quality: u8) -> Result<Output, ImageError> {
    let (width, height) = (img.width(), img.height());
    let mut bytes = Vec::new();
    let fail = |e: image::ImageError| ImageError::Invalid(format!("encode: {e}"));
    match format {
        Format::Jpeg => {
            // JPEG has no alpha and at most 8 bits per channel.
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            let q = if quality == 0 {
                DEFAULT_QUALITY
            } else {
                quality
            };
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, q);
            rgb.write_with_encoder(enc).map_err(fail)?;
        }
        Format::Png => {
            let enc = image::codecs::png::PngEncoder::new(&mut bytes);
            img.write_with_encoder(enc).map_err(fail)?;
        }
        Format::Webp if quality == 0 => {
            let rgba = DynamicImage::ImageRgba8(img.to_rgba8());
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            rgba.write_with_encoder(enc).map_err(fail)?;
        }
        Format::Webp => {
            // Lossy: libwebp (the pure-Rust encoder writes lossless only).
            if width > 16_383 || height > 16_383 {
                return Err(ImageError::Invalid(format!(
                    "WebP holds at most 16383 x 16383; this is {width} x {height} (resize first)"
                )));
            }
            let encoded = if img.color().has_alpha() {
                let rgba = img.to_rgba8();
                webp::Encoder::from_rgba(&rgba, width, height)
                    .encode_simple(false, f32::from(quality))
            } else {
                let rgb = img.to_rgb8();
                webp::Encoder::from_rgb(&rgb, width, height)
                    .encode_simple(false, f32::from(quality))
            }
            .map_err(|e| ImageError::Invalid(format!("encode: {e:?}")))?;
            bytes = encoded.to_vec();
        }
    }
    Ok(Output {
        bytes,
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    const RED: Rgb<u8> = Rgb([255, 0, 0]);
    const GREEN: Rgb<u8> = Rgb([0, 255, 0]);
    const BLUE: Rgb<u8> = Rgb([0, 0, 255]);
    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

    /// 40 x 20: left half red, right half green; the top-left 10 x 10 corner blue.
    fn sample() -> RgbImage {
        RgbImage::from_fn(40, 20, |x, y| {
            if x < 10 && y < 10 {
                BLUE
            } else if x < 20 {
                RED
            } else {
                GREEN
            }
        })
    }

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img.clone())
            .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
            .unwrap();
        out
    }

    fn run(input: &[u8], t: &str) -> (Output, RgbImage) {
        let out = transform(
            input,
            &Transform::from_compact(t).unwrap(),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{t}: {e}"));
        let back = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
        (out, back)
    }

    fn near(a: Rgb<u8>, b: Rgb<u8>) -> bool {
        a.0.iter().zip(b.0).all(|(x, y)| x.abs_diff(y) <= 40)
    }

    #[test]
    fn geometry_steps_move_pixels_where_they_belong() {
        let src = png(&sample());
        let (o, img) = run(&src, "rotate:d=90/output:f=png");
        assert_eq!((o.width, o.height), (20, 40));
        assert_eq!(
            *img.get_pixel(19, 0),
            BLUE,
            "top-left went to the top-right"
        );
        let (_, img) = run(&src, "rotate:d=180/output:f=png");
        assert_eq!(*img.get_pixel(39, 19), BLUE);
        let (o, img) = run(&src, "rotate:d=270/output:f=png");
        assert_eq!((o.width, o.height), (20, 40));
        assert_eq!(*img.get_pixel(0, 39), BLUE);
        let (_, img) = run(&src, "flop/output:f=png");
        assert_eq!(*img.get_pixel(39, 0), BLUE);
        let (_, img) = run(&src, "flip/output:f=png");
        assert_eq!(*img.get_pixel(0, 19), BLUE);
        let (o, img) = run(&src, "crop:x=5,y=5,w=20,h=10/output:f=png");
        assert_eq!((o.width, o.height), (20, 10));
        assert_eq!(*img.get_pixel(0, 0), BLUE);
        assert_eq!(*img.get_pixel(19, 9), GREEN);
        let (_, img) = run(&src, "grayscale/output:f=png");
        let p = img.get_pixel(30, 15);
        assert!(p.0[0] == p.0[1] && p.0[1] == p.0[2]);
        let e = transform(
            &src,
            &Transform::from_compact("crop:x=30,y=0,w=20,h=5").unwrap(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::Invalid(_)), "{e}");
    }

    #[test]
    fn resize_fits_as_asked() {
        let src = png(&sample());
        let (o, img) = run(&src, "resize:w=20/output:f=png");
        assert_eq!((o.width, o.height), (20, 10));
        assert!(near(*img.get_pixel(15, 2), GREEN) && near(*img.get_pixel(7, 8), RED));
        let (o, _) = run(&src, "resize:w=10,h=10,fit=contain/output:f=png");
        assert_eq!((o.width, o.height), (10, 5));
        let (o, img) = run(&src, "resize:w=10,h=10,fit=cover/output:f=png");
        assert_eq!((o.width, o.height), (10, 10), "the centre 20x20, scaled");
        assert!(near(*img.get_pixel(1, 5), RED) && near(*img.get_pixel(8, 5), GREEN));
        let (o, _) = run(&src, "resize:w=10,h=10,fit=fill/output:f=png");
        assert_eq!((o.width, o.height), (10, 10));
        let (o, _) = run(&src, "resize:w=400/output:f=png");
        assert_eq!((o.width, o.height), (40, 20), "never enlarged unless asked");
        let (o, _) = run(&src, "resize:w=80,upscale=true/output:f=png");
        assert_eq!((o.width, o.height), (80, 40));
        let (o, _) = run(&src, "thumbnail:size=8");
        assert_eq!((o.format, o.width, o.height), (Format::Jpeg, 8, 4));
    }

    #[test]
    fn outputs_are_the_formats_asked_for() {
        let src = png(&sample());
        for (t, f) in [
            ("output:f=jpeg,q=90", ImageFormat::Jpeg),
            ("output:f=png", ImageFormat::Png),
            ("output:f=webp", ImageFormat::WebP),
            ("blur:sigma=1", ImageFormat::Png),
        ] {
            let (o, img) = run(&src, t);
            assert_eq!(image::guess_format(&o.bytes).unwrap(), f, "{t}");
            assert!(near(*img.get_pixel(30, 15), GREEN), "{t}");
        }
        let (o, _) = run(&src, "sharpen");
        assert_eq!(o.format, Format::Png, "the source's format by default");
    }

    /// A JPEG whose EXIF says "rotate 90 clockwise to view" (orientation 6).
    fn rotated_jpeg() -> Vec<u8> {
        let mut img = RgbImage::from_pixel(40, 20, WHITE);
        for y in 0..10 {
            for x in 0..10 {
                img.put_pixel(x, y, BLUE);
            }
        }
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut jpeg, 95,
            ))
            .unwrap();
        // APP1 "Exif": big-endian TIFF, one IFD entry: Orientation (0x0112) SHORT 1 = 6.
        let tiff: Vec<u8> = [
            &b"MM\0\x2a\0\0\0\x08"[..],
            &[0, 1],
            &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0],
            &[0, 0, 0, 0],
        ]
        .concat();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_rotated_input_comes_out_upright() {
        let (o, img) = run(&rotated_jpeg(), "output:f=png");
        assert_eq!((o.width, o.height), (20, 40));
        assert!(
            near(*img.get_pixel(15, 4), BLUE),
            "{:?}",
            img.get_pixel(15, 4)
        );
        assert!(near(*img.get_pixel(2, 30), WHITE));
    }

    #[test]
    fn webp_chunks_claiming_more_than_the_file_are_refused() {
        // The fuzz target's find: VP8X saying EXIF follows, then a chunk claiming ~3.8 GB.
        let mut f =
            b"RIFF\xc0\x01\x00\x00WEBPVP8X\x0a\x00\x00\x00\x08\x00\x00\x00\x17\x00\x00\x0f\x00\x00"
                .to_vec();
        f.extend_from_slice(b"EXIF\x00\x00\x00\xe6abc");
        let t = Transform::from_compact("flip").unwrap();
        let e = transform(&f, &t, &Limits::default()).unwrap_err();
        assert!(
            matches!(e, ImageError::Corrupt(_) | ImageError::Unsupported(_)),
            "{e}"
        );
        let mut ok = Vec::new();
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(sample()).to_rgba8())
            .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut ok))
            .unwrap();
        assert!(check_webp_chunks(&ok).is_ok());
        assert!(check_webp_chunks(&ok[..ok.len() - 3]).is_err());
    }

    #[test]
    fn cut_short_jpegs_are_damaged_not_grey() {
        let mut whole = Vec::new();
        DynamicImage::ImageRgb8(sample())
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut whole, 90,
            ))
            .unwrap();
        assert!(check_jpeg_complete(&whole).is_ok());
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"camera junk after the end");
        assert!(check_jpeg_complete(&trailing).is_ok());
        for cut in [3, 20, whole.len() / 2, whole.len() - 2, whole.len() - 1] {
            let e = check_jpeg_complete(&whole[..cut]).unwrap_err();
            assert!(matches!(e, ImageError::Corrupt(_)), "{cut}");
            let t = Transform::from_compact("resize:w=10").unwrap();
            assert!(
                transform(&whole[..cut], &t, &Limits::default()).is_err(),
                "{cut}"
            );
        }
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        let t = Transform::from_compact("resize:w=10").unwrap();
        let l = Limits::default();
        // Random bytes, empty, truncated PNG and JPEG.
        assert!(matches!(
            transform(b"not an image at all", &t, &l),
            Err(ImageError::Unsupported(_))
        ));
        assert!(transform(b"", &t, &l).is_err());
        let src = png(&sample());
        assert!(transform(&src[..src.len() / 2], &t, &l).is_err());
        let jpeg = rotated_jpeg();
        assert!(transform(&jpeg[..jpeg.len() / 2], &t, &l).is_err());
        // A 100,000 x 100,000 PNG header: refused before decoding.
        let bomb = crate::fuzz::png_claiming(&src, 100_000, 100_000);
        let started = std::time::Instant::now();
        assert!(matches!(
            transform(&bomb, &t, &l),
            Err(ImageError::TooLarge(_))
        ));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        let small = Limits {
            max_input_bytes: 10,
            ..l
        };
        assert!(matches!(
            transform(&src, &t, &small),
            Err(ImageError::TooLarge(_))
        ));
    }
}
