//! Reliability test 29 (../shared/RELIABILITY.md): at least 200 hostile files — pixel bombs
//! in every input format, zlib bombs, huge frame counts, truncated files, wrong magic, huge
//! metadata, random bytes — through `TransformFile` over a real gRPC connection. None may
//! crash the service or fail as an internal error; bombs are refused from the header in
//! < 100 ms; everything ends in < 2 s; the process stays under 512 MiB.

use std::io::Write;
use std::time::{Duration, Instant};

use fms_proto::transformer::v1 as pb;
use fms_transformer::fuzz::{crc32, png_claiming};
use fms_transformer::image_ops::Limits;
use fms_transformer::service::Service;
use image::{DynamicImage, ImageFormat, RgbImage};
use pb::transformer_service_client::TransformerServiceClient;
use tokio_stream::StreamExt;

async fn serve() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = Service::new(Limits::default(), 2).server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

async fn call(
    c: &mut TransformerServiceClient<tonic::transport::Channel>,
    transform: &str,
    data: &[u8],
) -> Result<usize, tonic::Status> {
    let mut m = vec![pb::TransformFileRequest {
        msg: Some(pb::transform_file_request::Msg::Spec(pb::TransformSpec {
            source_size: data.len() as u64,
            transform: transform.into(),
        })),
    }];
    for c in data.chunks(1 << 20) {
        m.push(pb::TransformFileRequest {
            msg: Some(pb::transform_file_request::Msg::Data(c.to_vec().into())),
        });
    }
    let mut s = c.transform_file(tokio_stream::iter(m)).await?.into_inner();
    let mut n = 0;
    while let Some(r) = s.next().await {
        if let Some(pb::transform_file_response::Msg::Data(b)) = r?.msg {
            n += b.len();
        }
    }
    Ok(n)
}

fn noise_image(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    RgbImage::from_fn(w, h, |_, _| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    })
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let img = DynamicImage::ImageRgb8(img.clone());
    match format {
        ImageFormat::WebP => DynamicImage::ImageRgba8(img.to_rgba8())
            .write_to(&mut out, format)
            .unwrap(),
        _ => img.write_to(&mut out, format).unwrap(),
    }
    out.into_inner()
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut both = kind.to_vec();
    both.extend_from_slice(data);
    out.extend_from_slice(&crc32(&both).to_be_bytes());
    out
}

/// A PNG of `w` x `h` 8-bit grey whose IDAT is `idat` (zlib data), with `extra` chunks first.
fn png_raw(w: u32, h: u32, extra: &[Vec<u8>], idat: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    out.extend(png_chunk(b"IHDR", &ihdr));
    for e in extra {
        out.extend_from_slice(e);
    }
    out.extend(png_chunk(b"IDAT", idat));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

fn zlib_zeros(n: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        z.write_all(&block[..k]).unwrap();
        left -= k;
    }
    z.finish().unwrap()
}

/// A baseline TIFF header claiming `w` x `h` 8-bit grey, one strip of `data`.
fn tiff(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    let entries: [(u16, u16, u32, u32); 8] = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 8 * 12 + 4),
        (278, 4, 1, h),
        (279, 4, 1, data.len() as u32),
    ];
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// A GIF of `frames` 1x1 frames on a `w` x `h` screen.
fn gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    for _ in 0..frames {
        out.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        // LZW min code size 2, one sub-block: clear, 0, end.
        out.extend_from_slice(&[2, 2, 0x4c, 0x01, 0]);
    }
    out.push(0x3b);
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    /// Over the pixel limits: refused from the header, fast.
    Bomb,
    /// Anything else: a clean outcome within 2 s.
    Other,
}

fn corpus() -> Vec<(String, Vec<u8>, Class)> {
    let mut files: Vec<(String, Vec<u8>, Class)> = Vec::new();
    let formats = [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::WebP,
    ];
    let valid: Vec<(ImageFormat, Vec<u8>)> = formats
        .iter()
        .map(|f| (*f, encode(&noise_image(300, 200, 7), *f)))
        .collect();

    // Pixel bombs in every format.
    for (w, h) in [
        (100_000u32, 100_000u32),
        (65_535, 65_535),
        (30_001, 16),
        (16, 30_001),
        (8_000, 8_000),
        (50_000, 1_001),
    ] {
        let p = png_claiming(&valid[0].1, w, h);
        files.push((format!("png-bomb-{w}x{h}"), p, Class::Bomb));
        let (w16, h16) = (w.min(65_535) as u16, h.min(65_535) as u16);
        if u64::from(w16) * u64::from(h16) > 50_000_000
            || w16 as u32 > 30_000
            || h16 as u32 > 30_000
        {
            let mut j = valid[1].1.clone();
            let sof = j.windows(2).position(|x| x == [0xff, 0xc0]).unwrap();
            j[sof + 5..sof + 7].copy_from_slice(&h16.to_be_bytes());
            j[sof + 7..sof + 9].copy_from_slice(&w16.to_be_bytes());
            files.push((format!("jpeg-bomb-{w16}x{h16}"), j, Class::Bomb));
            files.push((
                format!("gif-bomb-{w16}x{h16}"),
                gif(w16, h16, 1),
                Class::Bomb,
            ));
        }
        let mut b = valid[3].1.clone();
        b[18..22].copy_from_slice(&(w as i32).to_le_bytes());
        b[22..26].copy_from_slice(&(h as i32).to_le_bytes());
        files.push((format!("bmp-bomb-{w}x{h}"), b, Class::Bomb));
        files.push((
            format!("tiff-bomb-{w}x{h}"),
            tiff(w, h, &[0; 64]),
            Class::Bomb,
        ));
    }
    for (w, h) in [(16_384u32, 16_384u32), (16_384, 4_000), (9_000, 9_000)] {
        let mut p = valid[5].1.clone();
        let at = p.windows(4).position(|x| x == b"VP8L").unwrap() + 9;
        let bits = (w - 1) | ((h - 1) << 14) | (1 << 28);
        p[at..at + 4].copy_from_slice(&bits.to_le_bytes());
        files.push((format!("webp-bomb-{w}x{h}"), p, Class::Bomb));
    }

    // Truncated at many points.
    for (f, bytes) in &valid {
        for i in 1..=16 {
            let at = bytes.len() * i / 17;
            files.push((
                format!("{f:?}-cut-{at}"),
                bytes[..at].to_vec(),
                Class::Other,
            ));
        }
        files.push((
            format!("{f:?}-cut-8"),
            bytes[..8.min(bytes.len())].to_vec(),
            Class::Other,
        ));
    }

    // Wrong magic: one format's body behind another's signature.
    let magics: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0",
        b"GIF89a",
        b"BM",
        b"II*\0",
        b"RIFF\0\0\0\0WEBPVP8 ",
    ];
    for (i, (f, bytes)) in valid.iter().enumerate() {
        for (k, m) in magics.iter().enumerate() {
            if i == k {
                continue;
            }
            let mut b = bytes.clone();
            b[..m.len()].copy_from_slice(m);
            files.push((format!("{f:?}-as-{k}"), b, Class::Other));
        }
    }
    // Each signature followed by random bytes.
    for (k, m) in magics.iter().enumerate() {
        for n in [16usize, 1000, 100_000] {
            let mut b = m.to_vec();
            b.extend(
                noise_image(n as u32, 1, k as u32 + n as u32)
                    .into_raw()
                    .into_iter()
                    .take(n),
            );
            files.push((format!("magic-{k}-noise-{n}"), b, Class::Other));
        }
    }

    // Zlib bombs: IDAT far larger than the picture; a zTXt that inflates to 200 MiB; a
    // large but allowed picture (49 megapixels of zeros in a few KiB).
    let big_zeros = zlib_zeros(200 << 20);
    files.push((
        "png-idat-overflow".into(),
        png_raw(100, 100, &[], &big_zeros),
        Class::Other,
    ));
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend_from_slice(&big_zeros);
    files.push((
        "png-ztxt-bomb".into(),
        png_raw(8, 8, &[png_chunk(b"zTXt", &ztxt)], &zlib_zeros(8 * 9)),
        Class::Other,
    ));
    let mut iccp = b"icc\0\0".to_vec();
    iccp.extend_from_slice(&big_zeros);
    files.push((
        "png-iccp-bomb".into(),
        png_raw(8, 8, &[png_chunk(b"iCCP", &iccp)], &zlib_zeros(8 * 9)),
        Class::Other,
    ));
    files.push((
        "png-7000x7000-zeros".into(),
        png_raw(7000, 7000, &[], &zlib_zeros(7000 * 7001)),
        Class::Other,
    ));

    // Huge frame counts.
    for frames in [1_000usize, 50_000, 200_000] {
        files.push((
            format!("gif-{frames}-frames"),
            gif(16, 16, frames),
            Class::Other,
        ));
    }

    // Huge metadata: a 16 MiB tEXt, 10,000 tiny chunks, 200 APP1 segments of 64 KiB, a
    // 64 KiB comment, a TIFF whose strip points far past the end.
    let mut text = b"Comment\0".to_vec();
    text.resize(16 << 20, b'a');
    files.push((
        "png-16mib-text".into(),
        png_raw(8, 8, &[png_chunk(b"tEXt", &text)], &zlib_zeros(8 * 9)),
        Class::Other,
    ));
    let many: Vec<Vec<u8>> = (0..10_000).map(|_| png_chunk(b"tEXt", b"k\0v")).collect();
    files.push((
        "png-10000-chunks".into(),
        png_raw(8, 8, &many, &zlib_zeros(8 * 9)),
        Class::Other,
    ));
    let j = &valid[1].1;
    let mut app = j[..2].to_vec();
    for _ in 0..200 {
        app.extend_from_slice(&[0xff, 0xe1, 0xff, 0xff]);
        app.extend_from_slice(b"Exif\0\0");
        app.resize(app.len() + 65_533 - 6, 0x4d);
    }
    app.extend_from_slice(&j[2..]);
    files.push(("jpeg-200-app1".into(), app, Class::Other));
    let mut com = j[..2].to_vec();
    com.extend_from_slice(&[0xff, 0xfe, 0xff, 0xff]);
    com.resize(com.len() + 65_533, b'c');
    com.extend_from_slice(&j[2..]);
    files.push(("jpeg-64k-comment".into(), com, Class::Other));
    let mut t = tiff(100, 100, &[0; 10]);
    let off = 8 + 2 + 5 * 12 + 8;
    t[off..off + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    files.push(("tiff-strip-far".into(), t, Class::Other));

    // Random bytes and tiny files.
    for (i, n) in [1usize, 2, 3, 7, 64, 512, 4096, 65_536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        files.push((
            format!("random-{n}"),
            noise_image(n as u32, 1, 99 + i as u32)
                .into_raw()
                .into_iter()
                .take(n)
                .collect(),
            Class::Other,
        ));
    }
    files.push(("empty".into(), Vec::new(), Class::Other));
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_hostile_files_fail_cleanly_and_fast() {
    let url = serve().await;
    let mut c = TransformerServiceClient::connect(url).await.unwrap();
    let files = corpus();
    assert!(files.len() >= 200, "{} files", files.len());
    let mut refused = 0;
    let mut slowest = (Duration::ZERO, String::new());
    let mut slowest_bomb = Duration::ZERO;
    for (name, data, class) in &files {
        for t in ["resize:w=64/output:f=png", "crop:w=1,h=1/output:f=jpeg"] {
            let started = Instant::now();
            let r = call(&mut c, t, data).await;
            let took = started.elapsed();
            if took > slowest.0 {
                slowest = (took, format!("{name} {t}"));
            }
            match &r {
                Err(s) => {
                    refused += 1;
                    assert!(
                        matches!(
                            s.code(),
                            tonic::Code::InvalidArgument | tonic::Code::OutOfRange
                        ),
                        "{name}: {s:?}"
                    );
                }
                Ok(_) => assert_ne!(*class, Class::Bomb, "{name} was decoded"),
            }
            if *class == Class::Bomb {
                // Refused from the header: over the limits, or a header its decoder itself
                // rejects as impossible.
                assert!(r.is_err(), "{name}");
                assert!(took < Duration::from_millis(100), "{name}: {took:?}");
                slowest_bomb = slowest_bomb.max(took);
            }
            assert!(took < Duration::from_secs(2), "{name} {t}: {took:?}");
        }
    }
    // Still serving.
    let ok = encode(&noise_image(64, 64, 1), ImageFormat::Png);
    assert!(call(&mut c, "flip", &ok).await.unwrap() > 0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "{} hostile files x 2 transforms: {refused} refused, slowest {:?} ({}), slowest header reject {:?}, peak RSS {} MiB",
        files.len(),
        slowest.0,
        slowest.1,
        slowest_bomb,
        hwm_kib / 1024
    );
    assert!(hwm_kib < 512 * 1024, "peak RSS {} MiB", hwm_kib / 1024);
}
