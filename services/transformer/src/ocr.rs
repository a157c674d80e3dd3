//! Text recognition with tesseract (through `leptess`).
//!
//! The image is decoded by the same pipeline as every transform (header checked first,
//! decoder limits, EXIF orientation, any image steps before `ocr`), turned into 8-bit grey
//! and handed to tesseract as raw pixels: no untrusted bytes reach a C decoder. Tesseract
//! instances are expensive to start (~0.1-0.3 s per language set), so finished ones are kept
//! in a small pool, one per language list, and reused.

use std::sync::Mutex;

use leptess::tesseract::TessApi;

use crate::image_ops::{self, ImageError, Limits};
use crate::ops::{OcrFormat, Op, Transform};

/// Recognised text, in the format asked for.
#[derive(Debug)]
pub struct Recognised {
    pub text: String,
    pub format: OcrFormat,
    pub width: u32,
    pub height: u32,
}

/// Idle tesseract instances, by language list.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(String, TessApi)>>,
    /// Where the `.traineddata` files are (empty: tesseract's own default).
    datapath: String,
    /// Most idle instances kept.
    keep: usize,
}

/// Where Debian and others install language data, for the error that lists them.
const DATA_DIRS: &[&str] = &[
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
];

impl Pool {
    pub fn new(datapath: &str, keep: usize) -> Pool {
        Pool {
            idle: Mutex::default(),
            datapath: datapath.to_string(),
            keep: keep.max(1),
        }
    }

    /// The languages installed (names of `.traineddata` files), sorted.
    pub fn installed(&self) -> Vec<String> {
        let dirs: Vec<String> = if self.datapath.is_empty() {
            std::env::var("TESSDATA_PREFIX")
                .into_iter()
                .chain(DATA_DIRS.iter().map(|d| d.to_string()))
                .collect()
        } else {
            vec![self.datapath.clone()]
        };
        let mut out = Vec::new();
        for d in dirs {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if let Some(l) = e
                        .file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".traineddata"))
                        && l != "osd"
                    {
                        out.push(l.to_string());
                    }
                }
                if !out.is_empty() {
                    break;
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn take(&self, lang: &str) -> Result<TessApi, ImageError> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = idle.iter().position(|(l, _)| l == lang) {
                return Ok(idle.swap_remove(i).1);
            }
        }
        let installed = self.installed();
        if let Some(missing) = lang.split('+').find(|l| !installed.iter().any(|i| i == l))
            && !installed.is_empty()
        {
            return Err(ImageError::Invalid(format!(
                "OCR language {missing:?} is not installed here (installed: {})",
                installed.join(", ")
            )));
        }
        let datapath = (!self.datapath.is_empty()).then_some(self.datapath.as_str());
        let api = TessApi::new(datapath, lang).map_err(|_| {
            ImageError::Invalid(format!(
                "OCR language {lang:?} could not be loaded (installed: {})",
                installed.join(", ")
            ))
        })?;
        Ok(api)
    }

    fn give(&self, lang: &str, api: TessApi) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.keep {
            idle.remove(0);
        }
        idle.push((lang.to_string(), api));
    }

    /// Recognise the text of the encoded image `input` after the steps of `t` before `ocr`.
    pub fn recognise(
        &self,
        input: &[u8],
        t: &Transform,
        limits: &Limits,
        deadline: Option<std::time::Instant>,
    ) -> Result<Recognised, ImageError> {
        let Some(Op::Ocr { lang, format }) = t.ops.last() else {
            return Err(ImageError::Invalid("not an OCR transform".into()));
        };
        let (img, _) = image_ops::decode(input, limits)?;
        let mut img = img;
        image_ops::check_deadline(deadline, "decoding")?;
        for op in &t.ops[..t.ops.len() - 1] {
            img = image_ops::apply(img, op)?;
            image_ops::check_deadline(deadline, "a step")?;
        }
        let grey = img.to_luma8();
        let (width, height) = grey.dimensions();
        let (w, h) = (
            i32::try_from(width).map_err(|_| ImageError::TooLarge("width".into()))?,
            i32::try_from(height).map_err(|_| ImageError::TooLarge("height".into()))?,
        );
        let mut api = self.take(lang)?;
        let run = (|| {
            api.raw
                .set_image(grey.as_raw(), w, h, 1, w)
                .map_err(|e| ImageError::Invalid(format!("OCR: {e:?}")))?;
            // Raw pixels carry no resolution; 300 dpi is what tesseract assumes for scans.
            api.set_source_resolution(300);
            let text = match format {
                OcrFormat::Text => api.get_utf8_text(),
                OcrFormat::Tsv => api.get_tsv_text(0),
                OcrFormat::Hocr => api.get_hocr_text(0),
            }
            .map_err(|e| ImageError::Invalid(format!("OCR produced invalid UTF-8: {e}")))?;
            Ok(text)
        })();
        // Results are cleared by the next set_image; the instance is good for reuse.
        if run.is_ok() {
            self.give(lang, api);
        }
        Ok(Recognised {
            text: run?,
            format: *format,
            width,
            height,
        })
    }
}
