//! Transformer throughput against the tools people would otherwise run, in one run on the
//! same files:
//!
//! - thumbnails: 12-megapixel JPEGs to 800 px wide, images/s, against Debian's
//!   `vipsthumbnail` (libvips) given all the files in one process (its start-up amortised).
//!   Ours runs the transformer's pipeline in this process (`resize:w=800/output:f=jpeg,q=85`),
//!   one image per worker, with 1 worker and with one per core; libvips with
//!   `VIPS_CONCURRENCY=1` and with its default. Ours is also run with the JPEG decoded in full
//!   (a crop first turns shrink-on-load off) to show what DCT scaling is worth.
//! - OCR: seconds per page against the `tesseract` command on the same page image (each call a
//!   process: model load included), and pages/s with one job per core. Both with
//!   `OMP_THREAD_LIMIT=1` (set by `scripts/bench.sh`), as `fms` sets it.
//!
//! `scripts/bench.sh transform [--images N] [--pages N] [--json F]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use clap::Parser;
use fms_transformer::image_ops::{self, Limits};
use fms_transformer::ops::Transform;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
struct Args {
    /// 12-megapixel JPEGs to thumbnail.
    #[arg(long, default_value_t = 24)]
    images: usize,
    /// OCR pages per measurement.
    #[arg(long, default_value_t = 4)]
    pages: usize,
    /// Font for the OCR page.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only time this transform on the images with one worker (for finding where time goes).
    #[arg(long)]
    only: Option<String>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A photo-like 4000 x 3000 picture: smooth gradients, shapes, some grain (so it neither
/// compresses to nothing nor is pure noise).
fn photo(seed: u32) -> Vec<u8> {
    let (w, h) = (4000u32, 3000u32);
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let img = image::RgbImage::from_fn(w, h, |px, py| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let grain = (x % 24) as i32 - 12;
        let (fx, fy) = (px as f32 / w as f32, py as f32 / h as f32);
        let (cx, cy) = (fx - 0.3 - seed as f32 * 0.01, fy - 0.6);
        let disc = if cx * cx + cy * cy < 0.04 { 90 } else { 0 };
        let c = |v: f32| (v as i32 + grain).clamp(0, 255) as u8;
        image::Rgb([
            c(200.0 * fx + disc as f32),
            c(180.0 * (1.0 - fy) + 40.0 * (fx * 20.0).sin()),
            c(120.0 + 100.0 * (fy * 7.0 + fx * 3.0).cos()),
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 90,
        ))
        .unwrap();
    out
}

/// Thumbnail every file with `workers` threads; images/s.
fn ours(files: &[Arc<Vec<u8>>], transform: &str, workers: usize) -> Result<f64, BoxError> {
    let t = Arc::new(Transform::from_compact(transform)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let files = Arc::new(files.to_vec());
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (t, next, files) = (t.clone(), next.clone(), files.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(f) = files.get(i) else { return Ok(()) };
                    let out = image_ops::transform(f, &t, &Limits::default())
                        .map_err(|e| e.to_string())?;
                    assert!(out.width > 0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "worker panicked")??;
    }
    Ok(files.len() as f64 / started.elapsed().as_secs_f64())
}

/// `vipsthumbnail` on every file in one process; images/s.
fn vips(paths: &[PathBuf], out: &Path, concurrency: Option<usize>) -> Result<f64, BoxError> {
    let mut cmd = Command::new("vipsthumbnail");
    cmd.args(["--size", "800x", "-o"])
        .arg(format!("{}/%s.jpg[Q=85,strip]", out.display()))
        .args(paths);
    if let Some(n) = concurrency {
        cmd.env("VIPS_CONCURRENCY", n.to_string());
    }
    let started = Instant::now();
    let s = cmd.status()?;
    if !s.success() {
        return Err(format!("vipsthumbnail: {s}").into());
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// A page of text (about 40 lines) as PNG.
fn page(font: &Path) -> Result<Vec<u8>, BoxError> {
    let data = std::fs::read(font)?;
    let font = FontRef::try_from_slice(&data)?;
    let px = 30.0;
    let scaled = font.as_scaled(PxScale::from(px));
    let text = "It was the best of times, it was the worst of times, it was the age of \
                wisdom, it was the age of foolishness, it was the epoch of belief, it was \
                the epoch of incredulity, it was the season of Light, it was the season of \
                Darkness, it was the spring of hope, it was the winter of despair.";
    let words: Vec<&str> = text.split(' ').collect();
    let (w, h) = (1700u32, 2200u32);
    let mut img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
    let (mut x, mut y, mut i) = (100.0f32, 100.0 + scaled.ascent(), 0usize);
    while y < h as f32 - 100.0 {
        let word = words[i % words.len()];
        i += 1;
        let width: f32 = word
            .chars()
            .map(|c| scaled.h_advance(scaled.glyph_id(c)))
            .sum();
        if x + width > w as f32 - 100.0 {
            x = 100.0;
            y += px * 1.5;
            continue;
        }
        for ch in word.chars() {
            let g = scaled.scaled_glyph(ch);
            let adv = scaled.h_advance(g.id);
            let g = ab_glyph::Glyph {
                position: ab_glyph::point(x, y),
                ..g
            };
            if let Some(o) = scaled.outline_glyph(g) {
                let b = o.px_bounds();
                o.draw(|gx, gy, cov| {
                    let (px_, py) = (b.min.x as u32 + gx, b.min.y as u32 + gy);
                    if px_ < w && py < h {
                        let p = img.get_pixel_mut(px_, py);
                        p[0] = p[0].min((255.0 * (1.0 - cov.min(1.0))) as u8);
                    }
                });
            }
            x += adv;
        }
        x += scaled.h_advance(scaled.glyph_id(' '));
    }
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))?;
    Ok(out)
}

/// Pages/s of `tesseract <page> stdout`, `jobs` processes at a time.
fn tesseract_cli(path: &Path, pages: usize, jobs: usize) -> Result<f64, BoxError> {
    let started = Instant::now();
    let mut done = 0;
    while done < pages {
        let batch = jobs.min(pages - done);
        let children: Vec<_> = (0..batch)
            .map(|_| {
                Command::new("tesseract")
                    .arg(path)
                    .args(["stdout", "-l", "eng"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                return Err("tesseract failed".into());
            }
        }
        done += batch;
    }
    Ok(pages as f64 / started.elapsed().as_secs_f64())
}

/// Pages/s of the transformer's OCR, `jobs` threads, one pooled engine each (warm: the pool
/// is filled first, as in a running service).
fn ours_ocr(png: &Arc<Vec<u8>>, pages: usize, jobs: usize) -> Result<(f64, Duration), BoxError> {
    let pool = Arc::new(fms_transformer::ocr::Pool::new("", jobs));
    let t = Arc::new(Transform::from_compact("ocr")?);
    // Fill the pool (model load), as a running service has.
    let cold = Instant::now();
    let warm: Vec<_> = (0..jobs)
        .map(|_| {
            let (pool, t, png) = (pool.clone(), t.clone(), png.clone());
            std::thread::spawn(move || {
                pool.recognise(&png, &t, &Limits::default(), None)
                    .map(|_| ())
            })
        })
        .collect();
    for h in warm {
        h.join()
            .map_err(|_| "panicked")?
            .map_err(|e| e.to_string())?;
    }
    let first = cold.elapsed();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..jobs)
        .map(|_| {
            let (pool, t, png, next) = (pool.clone(), t.clone(), png.clone(), next.clone());
            std::thread::spawn(move || -> Result<(), String> {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < pages {
                    pool.recognise(&png, &t, &Limits::default(), None)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "panicked")??;
    }
    Ok((pages as f64 / started.elapsed().as_secs_f64(), first))
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    std::fs::create_dir(&out)?;
    eprintln!("making {} 12-megapixel JPEGs", args.images);
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for i in 0..args.images {
        let bytes = photo(i as u32);
        let path = dir.path().join(format!("p{i}.jpg"));
        std::fs::write(&path, &bytes)?;
        files.push(Arc::new(bytes));
        paths.push(path);
    }
    let n = cores();
    if let Some(t) = &args.only {
        ours(&files[..2], t, 1)?;
        eprintln!("{t}: {:.2} img/s", ours(&files, t, 1)?);
        return Ok(());
    }
    let thumb = "resize:w=800/output:f=jpeg,q=85";
    let full = "crop:w=4000,h=3000/resize:w=800/output:f=jpeg,q=85";
    // Warm the page cache and the code.
    ours(&files[..2], thumb, 1)?;
    vips(&paths[..2], &out, None)?;
    let mut rows = Vec::new();
    for (label, workers) in [("1 worker", 1usize), ("1 per core", n)] {
        let v = vips(&paths, &out, Some(workers))?;
        let o = ours(&files, thumb, workers)?;
        let f = ours(&files, full, workers)?;
        eprintln!(
            "thumbnails, {label}: fms {o:.2} img/s (full decode {f:.2}), vipsthumbnail {v:.2} img/s: {:.2}x",
            o / v
        );
        rows.push(
            json!({"workers": workers, "fms_img_s": o, "fms_full_decode_img_s": f,
                         "vips_img_s": v, "ratio": o / v}),
        );
    }

    let png = Arc::new(page(&args.font)?);
    let page_path = dir.path().join("page.png");
    std::fs::write(&page_path, png.as_slice())?;
    let mut ocr = Vec::new();
    for jobs in [1usize, n] {
        let cli = tesseract_cli(&page_path, args.pages.max(jobs), jobs)?;
        let (o, first) = ours_ocr(&png, args.pages.max(jobs), jobs)?;
        eprintln!(
            "OCR, {jobs} at once: fms {o:.3} pages/s ({:.2} s/page; first pages incl. model load {first:?}), tesseract CLI {cli:.3} pages/s ({:.2} s/page): time ratio {:.2}x",
            1.0 / o,
            1.0 / cli,
            o.recip() / cli.recip()
        );
        ocr.push(json!({"jobs": jobs, "fms_pages_s": o, "cli_pages_s": cli,
                        "time_ratio": o.recip() / cli.recip(), "fms_first_s": first.as_secs_f64()}));
    }
    if let Some(path) = &args.json {
        let v = json!({
            "bench": "transform",
            "cores": n,
            "images": args.images,
            "thumbnails": rows,
            "ocr": ocr,
            "omp_thread_limit": std::env::var("OMP_THREAD_LIMIT").ok(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
