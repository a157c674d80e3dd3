//! The operation language, version 1: what a transform does, as JSON (REST bodies) or as a
//! compact string (URLs), and one canonical string per meaning (the result cache's key).
//!
//! JSON: `[{"op": "resize", "width": 800, "fit": "contain"}, {"op": "output", "format":
//! "webp"}]`. Compact: the same steps separated by `/`, each `name` or `name:key=value,...`,
//! with short keys allowed (`w`, `h`, `q`, `f`): `resize:w=800,fit=contain/output:f=webp`.
//! Parsing fills every default, so two spellings of one transform have one canonical form.

use std::fmt::Write;

/// Version of the language and of the pipeline's results (part of cache keys).
pub const VERSION: u32 = 1;
/// Most steps in one transform.
pub const MAX_STEPS: usize = 16;
/// Largest width or height a step may ask for.
pub const MAX_SIDE: u32 = 16_384;

/// How an image is fitted into a width x height box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Keep the aspect ratio; the whole image inside the box.
    Contain,
    /// Keep the aspect ratio; cover the box, the overflow cropped (centred).
    Cover,
    /// Stretch to the box exactly.
    Fill,
    /// As `contain`, but never enlarge.
    Inside,
}

/// Output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    /// Lossless (the encoder available here writes lossless WebP only).
    Webp,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
        }
    }

    fn parse(s: &str) -> Result<Format, OpError> {
        Ok(match s {
            "jpeg" | "jpg" => Format::Jpeg,
            "png" => Format::Png,
            "webp" => Format::Webp,
            _ => return Err(OpError::new(format!("format {s:?}: jpeg, png or webp"))),
        })
    }
}

/// Compression formats of `compress` / `decompress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Codec::Zstd => "application/zstd",
            Codec::Gzip => "application/gzip",
        }
    }

    /// Levels allowed and the default.
    fn levels(self) -> (u32, u32, u32) {
        match self {
            Codec::Zstd => (1, 19, 3),
            Codec::Gzip => (1, 9, 6),
        }
    }

    fn parse(s: &str) -> Result<Codec, OpError> {
        Ok(match s {
            "zstd" | "zst" => Codec::Zstd,
            "gzip" | "gz" => Codec::Gzip,
            _ => return Err(OpError::new(format!("format {s:?}: zstd or gzip"))),
        })
    }
}

/// What `ocr` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcrFormat {
    /// Plain UTF-8 text.
    Text,
    /// Tesseract's TSV: one row per page, block, paragraph, line and word, with boxes and
    /// confidences.
    Tsv,
    /// hOCR (HTML with boxes and confidences).
    Hocr,
}

impl OcrFormat {
    pub fn name(self) -> &'static str {
        match self {
            OcrFormat::Text => "text",
            OcrFormat::Tsv => "tsv",
            OcrFormat::Hocr => "hocr",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OcrFormat::Text => "text/plain; charset=utf-8",
            OcrFormat::Tsv => "text/tab-separated-values; charset=utf-8",
            OcrFormat::Hocr => "text/html; charset=utf-8",
        }
    }
}

/// A tesseract language list: `eng`, `chi_sim`, `eng+deu` (at most 4).
fn check_lang(s: &str) -> Result<(), OpError> {
    let ok = !s.is_empty()
        && s.split('+').count() <= 4
        && s.split('+').all(|l| {
            (3..=16).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !l.starts_with('_')
        });
    if ok {
        Ok(())
    } else {
        Err(OpError::new(format!(
            "ocr.lang {s:?}: tesseract language names such as eng or eng+deu"
        )))
    }
}

/// What kind of work a transform is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Decode an image, apply steps, encode.
    Image,
    /// Image steps (if any), then text recognition.
    Ocr,
    /// Bytes in, bytes out, as they stream (compress / decompress).
    Stream,
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Scale into `width` x `height` (one may be absent: derived from the aspect ratio).
    /// Never enlarges unless `upscale`.
    Resize {
        width: Option<u32>,
        height: Option<u32>,
        fit: Fit,
        upscale: bool,
    },
    /// Cut out a rectangle (it must lie inside the image).
    Crop {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    /// Clockwise, 90, 180 or 270 degrees.
    Rotate(u32),
    /// Mirror top-bottom.
    Flip,
    /// Mirror left-right.
    Flop,
    /// Gaussian blur, sigma 0.1..=100.
    Blur(f32),
    /// Unsharp mask, sigma 0.1..=100.
    Sharpen(f32),
    Grayscale,
    /// Encoding of the result (the last step if present; default: the source's format where
    /// it can be written, else PNG). Metadata is never copied into results.
    Output {
        format: Format,
        quality: u8,
    },
    /// Compress the bytes as they stream (alone in its transform).
    Compress {
        codec: Codec,
        level: u32,
    },
    /// Decompress the bytes as they stream (alone). `None`: told from the first bytes.
    Decompress {
        codec: Option<Codec>,
    },
    /// Recognise text (the last step; image steps may come before it).
    Ocr {
        lang: String,
        format: OcrFormat,
    },
}

/// A refused transform: what is wrong, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError(pub String);

impl OpError {
    fn new(m: impl Into<String>) -> OpError {
        OpError(m.into())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for OpError {}

/// Default JPEG quality.
pub const DEFAULT_QUALITY: u8 = 85;
/// Default WebP quality (lossy; `lossless=true` for lossless).
pub const DEFAULT_WEBP_QUALITY: u8 = 80;

/// Named arguments of one step, in either syntax.
struct Args<'a> {
    op: &'a str,
    pairs: Vec<(String, String)>,
}

impl Args<'_> {
    fn take(&mut self, names: &[&str]) -> Option<String> {
        let i = self
            .pairs
            .iter()
            .position(|(k, _)| names.contains(&k.as_str()))?;
        Some(self.pairs.remove(i).1)
    }

    fn int(&mut self, names: &[&str], max: u32) -> Result<Option<u32>, OpError> {
        let Some(v) = self.take(names) else {
            return Ok(None);
        };
        let n: u32 = v
            .parse()
            .map_err(|_| OpError::new(format!("{}.{}: a whole number", self.op, names[0])))?;
        if n > max {
            return Err(OpError::new(format!(
                "{}.{}: at most {max}",
                self.op, names[0]
            )));
        }
        Ok(Some(n))
    }

    fn need(&mut self, names: &[&str], max: u32) -> Result<u32, OpError> {
        let op = self.op;
        self.int(names, max)?
            .ok_or_else(|| OpError::new(format!("{op}.{} is required", names[0])))
    }

    fn sigma(&mut self, default: f32) -> Result<f32, OpError> {
        let Some(v) = self.take(&["sigma", "s"]) else {
            return Ok(default);
        };
        let x: f32 = v
            .parse()
            .map_err(|_| OpError::new(format!("{}.sigma: a number", self.op)))?;
        if !(0.1..=100.0).contains(&x) {
            return Err(OpError::new(format!(
                "{}.sigma: between 0.1 and 100",
                self.op
            )));
        }
        Ok(x)
    }

    fn done(self) -> Result<(), OpError> {
        match self.pairs.first() {
            Some((k, _)) => Err(OpError::new(format!("{}: unknown argument {k:?}", self.op))),
            None => Ok(()),
        }
    }
}

fn step(mut a: Args<'_>) -> Result<Vec<Op>, OpError> {
    let op = a.op;
    let out = match op {
        "resize" | "thumbnail" => {
            let (mut width, mut height) = (
                a.int(&["width", "w"], MAX_SIDE)?,
                a.int(&["height", "h"], MAX_SIDE)?,
            );
            if op == "thumbnail" {
                let size = a.int(&["size"], MAX_SIDE)?;
                width = width.or(size);
                height = height.or(size);
            }
            if width == Some(0) || height == Some(0) || (width.is_none() && height.is_none()) {
                return Err(OpError::new(format!("{op}: a width and/or height above 0")));
            }
            let default_fit = if op == "thumbnail" {
                "inside"
            } else {
                "contain"
            };
            let fit = match a.take(&["fit"]).as_deref().unwrap_or(default_fit) {
                "contain" => Fit::Contain,
                "cover" => Fit::Cover,
                "fill" => Fit::Fill,
                "inside" => Fit::Inside,
                other => {
                    return Err(OpError::new(format!(
                        "{op}.fit {other:?}: contain, cover, fill or inside"
                    )));
                }
            };
            let upscale = match a.take(&["upscale"]).as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(OpError::new(format!("{op}.upscale: true or false"))),
            };
            let mut ops = vec![Op::Resize {
                width,
                height,
                fit,
                upscale: upscale && fit != Fit::Inside,
            }];
            if op == "thumbnail" {
                ops.push(Op::Output {
                    format: Format::Jpeg,
                    quality: DEFAULT_QUALITY,
                });
            }
            ops
        }
        "crop" => vec![Op::Crop {
            x: a.int(&["x"], u32::MAX)?.unwrap_or(0),
            y: a.int(&["y"], u32::MAX)?.unwrap_or(0),
            width: a.need(&["width", "w"], MAX_SIDE)?,
            height: a.need(&["height", "h"], MAX_SIDE)?,
        }],
        "rotate" => {
            let d = a.need(&["degrees", "d"], 360)?;
            if !matches!(d, 90 | 180 | 270) {
                return Err(OpError::new("rotate.degrees: 90, 180 or 270"));
            }
            vec![Op::Rotate(d)]
        }
        "flip" => vec![Op::Flip],
        "flop" => vec![Op::Flop],
        "grayscale" => vec![Op::Grayscale],
        "blur" => vec![Op::Blur(a.sigma(2.0)?)],
        "sharpen" => vec![Op::Sharpen(a.sigma(1.0)?)],
        "output" => {
            let format = Format::parse(
                &a.take(&["format", "f"])
                    .ok_or_else(|| OpError::new("output.format is required"))?,
            )?;
            let lossless = match a.take(&["lossless"]).as_deref() {
                None | Some("false") => false,
                Some("true") if format == Format::Webp => true,
                Some("true") => {
                    return Err(OpError::new(
                        "output.lossless: for webp only (png always is)",
                    ));
                }
                Some(_) => return Err(OpError::new("output.lossless: true or false")),
            };
            let given = a.int(&["quality", "q"], 100)?;
            if given == Some(0) {
                return Err(OpError::new("output.quality: 1 to 100"));
            }
            if lossless && given.is_some() {
                return Err(OpError::new("output: quality or lossless, not both"));
            }
            let quality = match (format, lossless) {
                (Format::Webp, true) => 0,
                (Format::Webp, false) => given.unwrap_or(DEFAULT_WEBP_QUALITY as u32),
                _ => given.unwrap_or(DEFAULT_QUALITY as u32),
            };
            // `strip` is accepted for clarity: results never carry the source's metadata.
            match a.take(&["strip"]).as_deref() {
                None | Some("true") => {}
                Some(_) => {
                    return Err(OpError::new(
                        "output.strip: results never keep metadata (true only)",
                    ));
                }
            }
            vec![Op::Output {
                format,
                quality: if format == Format::Png {
                    0
                } else {
                    quality as u8
                },
            }]
        }
        "compress" => {
            let codec = Codec::parse(a.take(&["format", "f"]).as_deref().unwrap_or("zstd"))?;
            let (lo, hi, default) = codec.levels();
            let level = a.int(&["level", "l"], hi)?.unwrap_or(default);
            if level < lo {
                return Err(OpError::new(format!(
                    "compress.level: {lo} to {hi} for {}",
                    codec.name()
                )));
            }
            vec![Op::Compress { codec, level }]
        }
        "decompress" => {
            let codec = match a.take(&["format", "f"]).as_deref() {
                None | Some("auto") => None,
                Some(f) => Some(Codec::parse(f)?),
            };
            vec![Op::Decompress { codec }]
        }
        "ocr" => {
            let lang = a.take(&["lang"]).unwrap_or_else(|| "eng".into());
            check_lang(&lang)?;
            let format = match a.take(&["format", "f"]).as_deref() {
                None | Some("text") | Some("txt") => OcrFormat::Text,
                Some("tsv") => OcrFormat::Tsv,
                Some("hocr") => OcrFormat::Hocr,
                Some(other) => {
                    return Err(OpError::new(format!(
                        "ocr.format {other:?}: text, tsv or hocr"
                    )));
                }
            };
            vec![Op::Ocr { lang, format }]
        }
        other => {
            return Err(OpError::new(format!(
                "unknown operation {other:?}: resize, thumbnail, crop, rotate, flip, flop, blur, sharpen, grayscale, output, ocr, compress, decompress"
            )));
        }
    };
    a.done()?;
    Ok(out)
}

/// A transform: its steps in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub ops: Vec<Op>,
}

impl Transform {
    fn build(steps: Vec<Op>) -> Result<Transform, OpError> {
        if steps.is_empty() {
            return Err(OpError::new("at least one operation"));
        }
        if steps.len() > MAX_STEPS {
            return Err(OpError::new(format!("at most {MAX_STEPS} operations")));
        }
        if let Some(i) = steps.iter().position(|o| matches!(o, Op::Output { .. }))
            && i != steps.len() - 1
        {
            return Err(OpError::new("output must be the last operation"));
        }
        if let Some(i) = steps.iter().position(|o| matches!(o, Op::Ocr { .. }))
            && i != steps.len() - 1
        {
            return Err(OpError::new(
                "ocr must be the last operation (image steps may come before it)",
            ));
        }
        if steps
            .iter()
            .any(|o| matches!(o, Op::Compress { .. } | Op::Decompress { .. }))
            && steps.len() > 1
        {
            return Err(OpError::new(
                "compress and decompress stand alone (one operation, no other steps)",
            ));
        }
        Ok(Transform { ops: steps })
    }

    /// From JSON: an array of `{"op": ..., args...}` (or `{"operations": [...]}`).
    pub fn from_json(v: &serde_json::Value) -> Result<Transform, OpError> {
        let list = v
            .get("operations")
            .unwrap_or(v)
            .as_array()
            .ok_or_else(|| OpError::new("operations: an array of steps"))?;
        if list.len() > MAX_STEPS {
            return Err(OpError::new(format!("at most {MAX_STEPS} operations")));
        }
        let mut steps = Vec::new();
        for item in list {
            let obj = item
                .as_object()
                .ok_or_else(|| OpError::new("each operation is an object with \"op\""))?;
            let op = obj
                .get("op")
                .and_then(|o| o.as_str())
                .ok_or_else(|| OpError::new("each operation needs \"op\""))?;
            let mut pairs = Vec::new();
            for (k, v) in obj {
                if k == "op" {
                    continue;
                }
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(OpError::new(format!(
                            "{op}.{k}: a string, number or boolean"
                        )));
                    }
                };
                pairs.push((k.clone(), text));
            }
            steps.extend(step(Args { op, pairs })?);
        }
        Transform::build(steps)
    }

    /// From the compact form: `resize:w=800,fit=cover/output:f=webp`.
    pub fn from_compact(s: &str) -> Result<Transform, OpError> {
        if s.len() > 1024 {
            return Err(OpError::new("at most 1024 characters"));
        }
        let mut steps = Vec::new();
        for part in s.split('/').filter(|p| !p.is_empty()) {
            let (op, rest) = part.split_once(':').unwrap_or((part, ""));
            let mut pairs = Vec::new();
            for kv in rest.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| OpError::new(format!("{op}: `{kv}` is not key=value")))?;
                pairs.push((k.to_string(), v.to_string()));
            }
            if steps.len() > MAX_STEPS {
                return Err(OpError::new(format!("at most {MAX_STEPS} operations")));
            }
            steps.extend(step(Args { op, pairs })?);
        }
        Transform::build(steps)
    }

    /// The one spelling of this transform (defaults filled, fixed key order).
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let fit = |f: &Fit| match f {
                Fit::Contain => "contain",
                Fit::Cover => "cover",
                Fit::Fill => "fill",
                Fit::Inside => "inside",
            };
            let _ = match op {
                Op::Resize {
                    width,
                    height,
                    fit: f,
                    upscale,
                } => {
                    out.push_str("resize:");
                    if let Some(w) = width {
                        let _ = write!(out, "w={w},");
                    }
                    if let Some(h) = height {
                        let _ = write!(out, "h={h},");
                    }
                    write!(out, "fit={},upscale={upscale}", fit(f))
                }
                Op::Crop {
                    x,
                    y,
                    width,
                    height,
                } => write!(out, "crop:x={x},y={y},w={width},h={height}"),
                Op::Rotate(d) => write!(out, "rotate:d={d}"),
                Op::Flip => write!(out, "flip"),
                Op::Flop => write!(out, "flop"),
                Op::Blur(s) => write!(out, "blur:sigma={s}"),
                Op::Sharpen(s) => write!(out, "sharpen:sigma={s}"),
                Op::Grayscale => write!(out, "grayscale"),
                Op::Output {
                    format: Format::Webp,
                    quality: 0,
                } => write!(out, "output:f=webp,lossless=true"),
                Op::Output { format, quality: 0 } => write!(out, "output:f={}", format.name()),
                Op::Output { format, quality } => {
                    write!(out, "output:f={},q={quality}", format.name())
                }
                Op::Compress { codec, level } => {
                    write!(out, "compress:f={},level={level}", codec.name())
                }
                Op::Decompress { codec: None } => write!(out, "decompress:f=auto"),
                Op::Decompress { codec: Some(c) } => write!(out, "decompress:f={}", c.name()),
                Op::Ocr { lang, format } => write!(out, "ocr:lang={lang},f={}", format.name()),
            };
        }
        out
    }

    /// What kind of work this is.
    pub fn kind(&self) -> Kind {
        match self.ops.last() {
            Some(Op::Compress { .. } | Op::Decompress { .. }) => Kind::Stream,
            Some(Op::Ocr { .. }) => Kind::Ocr,
            _ => Kind::Image,
        }
    }

    /// The requested output format, if any.
    pub fn output(&self) -> Option<(Format, u8)> {
        match self.ops.last() {
            Some(Op::Output { format, quality }) => Some((*format, *quality)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_syntaxes_mean_the_same_and_have_one_canonical_form() {
        let a = Transform::from_json(&json!({"operations": [
            {"op": "resize", "width": 800, "fit": "contain"},
            {"op": "output", "format": "webp", "quality": 80}
        ]}))
        .unwrap();
        let b = Transform::from_compact("resize:w=800/output:f=webp,q=80").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.canonical(),
            "resize:w=800,fit=contain,upscale=false/output:f=webp,q=80"
        );
        for (given, canonical) in [
            ("output:f=webp", "output:f=webp,q=80"),
            ("output:f=webp,q=50", "output:f=webp,q=50"),
            ("output:f=webp,lossless=true", "output:f=webp,lossless=true"),
            ("output:f=png,q=50", "output:f=png"),
            ("output:f=jpg", "output:f=jpeg,q=85"),
        ] {
            let t = Transform::from_compact(given).unwrap();
            assert_eq!(t.canonical(), canonical);
            assert_eq!(Transform::from_compact(canonical).unwrap(), t);
        }
        assert_eq!(Transform::from_compact(&a.canonical()).unwrap(), a);
        let t = Transform::from_compact("thumbnail:size=200").unwrap();
        assert_eq!(
            t.canonical(),
            "resize:w=200,h=200,fit=inside,upscale=false/output:f=jpeg,q=85"
        );
        let all = "crop:x=1,y=2,w=3,h=4/rotate:d=90/flip/flop/blur:sigma=1.5/sharpen:sigma=1/grayscale/output:f=jpeg,q=70";
        assert_eq!(Transform::from_compact(all).unwrap().canonical(), all);
        for (given, canonical, kind) in [
            ("compress", "compress:f=zstd,level=3", Kind::Stream),
            ("compress:f=gz", "compress:f=gzip,level=6", Kind::Stream),
            (
                "compress:f=zstd,level=19",
                "compress:f=zstd,level=19",
                Kind::Stream,
            ),
            ("decompress", "decompress:f=auto", Kind::Stream),
            ("decompress:f=gzip", "decompress:f=gzip", Kind::Stream),
            ("ocr", "ocr:lang=eng,f=text", Kind::Ocr),
            (
                "grayscale/ocr:lang=eng+deu,f=tsv",
                "grayscale/ocr:lang=eng+deu,f=tsv",
                Kind::Ocr,
            ),
            ("ocr:f=hocr", "ocr:lang=eng,f=hocr", Kind::Ocr),
            ("flip", "flip", Kind::Image),
        ] {
            let t = Transform::from_compact(given).unwrap();
            assert_eq!(t.canonical(), canonical);
            assert_eq!(t.kind(), kind, "{given}");
            assert_eq!(Transform::from_compact(canonical).unwrap(), t);
        }
    }

    #[test]
    fn bad_transforms_say_what_is_wrong() {
        for (bad, says) in [
            ("", "at least one"),
            ("resize", "width"),
            ("resize:w=0", "width"),
            ("resize:w=99999", "at most"),
            ("resize:w=10,fit=squash", "fit"),
            ("resize:w=ten", "whole number"),
            ("rotate:d=45", "90, 180 or 270"),
            ("blur:sigma=0", "between"),
            ("output:f=gif", "jpeg, png or webp"),
            ("output:f=webp,lossless=true,q=5", "not both"),
            ("output:f=jpeg,lossless=true", "webp only"),
            ("output:f=png/grayscale", "last"),
            ("explode", "unknown operation"),
            ("flip:x=1", "unknown argument"),
            ("crop:w=5", "height"),
            ("resize:w", "key=value"),
            ("compress:f=brotli", "zstd or gzip"),
            ("compress:level=20", "at most"),
            ("compress:f=gzip,level=10", "at most"),
            ("compress:level=0", "1 to 19"),
            ("compress/flip", "stand alone"),
            ("flip/decompress", "stand alone"),
            ("ocr/flip", "last"),
            ("ocr:lang=../../etc", "language"),
            ("ocr:lang=EN", "language"),
            ("ocr:lang=eng+deu+fra+spa+ita", "language"),
            ("ocr:f=pdf", "text, tsv or hocr"),
        ] {
            let e = Transform::from_compact(bad).unwrap_err().0;
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let many = vec!["flip"; MAX_STEPS + 1].join("/");
        assert!(Transform::from_compact(&many).is_err());
        assert!(Transform::from_json(&json!([{"op": "resize", "width": [1]}])).is_err());
        assert!(Transform::from_json(&json!({"operations": 3})).is_err());
    }
}
