//! Transforms as users run them (issue 8), under `fms serve`: `POST /api/transform/{id}` jobs
//! with their events and result files, on-the-fly `?transform=` reads, the result cache
//! (no decode the second time, the same file back), OCR of rendered text, streaming
//! compress/decompress of 1 GiB in bounded memory, hostile sources failing fast.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(http: &str, token: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws", http.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next event of type `kind` (others skipped) within 60 s.
async fn event(s: &mut Socket, kind: &str) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event"));
        if let Some(Ok(Message::Text(t))) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        } else if !matches!(m, Some(Ok(_))) {
            panic!("socket closed waiting for {kind}: {m:?}");
        }
    }
}

async fn new_user(c: &reqwest::Client, url: &str) -> (String, String) {
    let name = username();
    let t = login_session(c, url, &name).await;
    (t["access_token"].as_str().unwrap().to_string(), name)
}

async fn upload(c: &reqwest::Client, url: &str, token: &str, name: &str, data: Vec<u8>) -> Value {
    let r = c
        .post(format!("{url}/api/upload?name={name}"))
        .bearer_auth(token)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn start(c: &reqwest::Client, url: &str, token: &str, id: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{url}/api/transform/{id}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Wait until the job is over.
async fn finished(c: &reqwest::Client, url: &str, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, j) = get_json(c, format!("{url}/api/jobs/{id}"), token).await;
        if j["state"] != "running" && j["state"] != "queued" {
            return j;
        }
        assert!(Instant::now() < deadline, "job stuck: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run a transform job to its end.
async fn transform(c: &reqwest::Client, url: &str, token: &str, id: &str, body: Value) -> Value {
    let (status, j) = start(c, url, token, id, body).await;
    assert_eq!(status, 202, "{j}");
    finished(c, url, token, j["id"].as_str().unwrap()).await
}

async fn bytes(
    c: &reqwest::Client,
    address: String,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = c.get(address).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// A counter from `/metrics` (0 when absent).
async fn metric(c: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A 640 x 480 JPEG: left half red, right half blue (clear colours survive JPEG).
fn photo() -> Vec<u8> {
    let img = image::RgbImage::from_fn(640, 480, |x, _| {
        if x < 320 {
            image::Rgb([230, 20, 20])
        } else {
            image::Rgb([20, 20, 230])
        }
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 90,
        ))
        .unwrap();
    out
}

/// Issue 8 end to end: a job -> event -> result file (linked to its source) -> download; the
/// second identical request decodes nothing and returns the same file; another reader gets
/// a file of their own from the cache; a stranger gets 404; on-the-fly reads with ETag and
/// ranges; bad transforms and unreadable sources refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_jobs_on_the_fly_reads_and_the_cache() {
    let p = spawn(&["serve"], &[], true);
    let url = p.http.clone();
    let c = client();
    let (alice, _) = new_user(&c, &url).await;
    let (bob, bob_name) = new_user(&c, &url).await;
    let (eve, _) = new_user(&c, &url).await;
    let mut ws = socket(&url, &alice).await;
    let src = upload(&c, &url, &alice, "photo.jpg", photo()).await;
    let id = src["id"].as_str().unwrap();

    let ops = json!({"operations": [
        {"op": "resize", "width": 320, "fit": "contain"},
        {"op": "output", "format": "webp", "quality": 80}
    ]});
    let decodes = metric(&c, &url, "transformer_decodes_total").await;
    let (status, j) = start(&c, &url, &alice, id, ops.clone()).await;
    assert_eq!(status, 202, "{j}");
    assert_eq!(j["kind"], "transform");
    let e = event(&mut ws, "transform.completed").await;
    assert_eq!(e["data"]["job_id"], j["id"]);
    assert_eq!(e["data"]["source_file_id"], id);
    assert_eq!(e["data"]["cached"], false);
    let job = finished(&c, &url, &alice, j["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "completed", "{job}");
    let result_id = job["file_id"].as_str().unwrap().to_string();
    assert_eq!(e["data"]["file_id"], result_id.as_str());
    assert_eq!(
        metric(&c, &url, "transformer_decodes_total").await,
        decodes + 1.0
    );

    let (_, f) = get_json(&c, format!("{url}/api/files/{result_id}"), &alice).await;
    assert_eq!(f["name"], "photo.webp");
    assert_eq!(f["content_type"], "image/webp");
    assert_eq!(f["owned"], true);
    assert_eq!(f["derived_from"]["file_id"], id);
    assert_eq!(
        f["derived_from"]["transform"],
        "v1:resize:w=320,fit=contain,upscale=false/output:f=webp,q=80"
    );
    let (status, _, body) = bytes(&c, format!("{url}/api/files/{result_id}/content"), &alice).await;
    assert_eq!(status, 200);
    let img = image::load_from_memory(&body).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (320, 240));
    let (l, r) = (img.get_pixel(40, 120), img.get_pixel(280, 120));
    assert!(l[0] > 180 && l[2] < 80, "left is red: {l:?}");
    assert!(r[2] > 180 && r[0] < 80, "right is blue: {r:?}");

    // Again, in the compact form: from the cache, no decode, the same file.
    let again = transform(
        &c,
        &url,
        &alice,
        id,
        json!({"transform": "resize:w=320/output:f=webp,q=80"}),
    )
    .await;
    assert_eq!(again["state"], "completed");
    assert_eq!(again["file_id"], result_id.as_str());
    assert_eq!(
        metric(&c, &url, "transformer_decodes_total").await,
        decodes + 1.0
    );
    let e = event(&mut ws, "transform.completed").await;
    assert_eq!(e["data"]["cached"], true);

    // A reader of the source: their own file, the same bytes, still no decode.
    let r = c
        .post(format!("{url}/api/files/share"))
        .bearer_auth(&alice)
        .json(&json!({"file_id": id, "with": bob_name, "rights": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let theirs = transform(&c, &url, &bob, id, ops.clone()).await;
    assert_eq!(theirs["state"], "completed", "{theirs}");
    let bob_file = theirs["file_id"].as_str().unwrap();
    assert_ne!(bob_file, result_id);
    let (_, bf) = get_json(&c, format!("{url}/api/files/{bob_file}"), &bob).await;
    assert_eq!(bf["owned"], true);
    assert_eq!(bf["content_hash"], f["content_hash"]);
    assert_eq!(
        metric(&c, &url, "transformer_decodes_total").await,
        decodes + 1.0
    );
    // Alice's result is hers alone; deleting it leaves Bob's whole.
    let (status, _) = get_json(&c, format!("{url}/api/files/{result_id}"), &bob).await;
    assert_eq!(status, 404);
    let r = c
        .delete(format!("{url}/api/files/{result_id}"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, bb) = bytes(&c, format!("{url}/api/files/{bob_file}/content"), &bob).await;
    assert_eq!((status, bb.len()), (200, body.len()));
    assert!(bb == body);

    // A stranger learns nothing.
    let (status, e) = start(&c, &url, &eve, id, ops.clone()).await;
    assert_eq!(status, 404, "{e}");
    let (status, _) = get_json(
        &c,
        format!("{url}/api/files/{id}/content?transform=flip"),
        &eve,
    )
    .await;
    assert_eq!(status, 404);

    // On the fly: made once, then served from the cache, with ETag and ranges.
    let thumb = format!("{url}/api/files/{id}/content?transform=resize:w=100/output:f=png");
    let (status, h, png) = bytes(&c, thumb.clone(), &bob).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "image/png");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .contains("photo.png")
    );
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (100, 75));
    let made = metric(&c, &url, "transformer_decodes_total").await;
    assert_eq!(made, decodes + 2.0);
    let etag = h["etag"].to_str().unwrap().to_string();
    let r = c
        .get(&thumb)
        .bearer_auth(&alice)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &png[..100]);
    let r = c
        .get(&thumb)
        .bearer_auth(&alice)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(metric(&c, &url, "transformer_decodes_total").await, made);

    // Refusals: the language (400, sync, no job), the source (a failed job / 422).
    for bad in [
        json!({"operations": [{"op": "explode"}]}),
        json!({"transform": "resize:w=0"}),
        json!({}),
        json!({"operations": [], "transform": "flip"}),
    ] {
        let (status, e) = start(&c, &url, &alice, id, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "invalid_transform", "{e}");
    }
    let (status, e) = get_json(
        &c,
        format!("{url}/api/files/{id}/content?transform=spin"),
        &alice,
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_transform"))
    );
    let text = upload(
        &c,
        &url,
        &alice,
        "notes.jpg",
        b"not a picture at all".to_vec(),
    )
    .await;
    let tid = text["id"].as_str().unwrap();
    let failed = transform(&c, &url, &alice, tid, json!({"transform": "flip"})).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["code"], "transform_failed", "{failed}");
    let e = event(&mut ws, "transform.failed").await;
    assert_eq!(e["data"]["error"]["code"], "transform_failed");
    let (status, e) = get_json(
        &c,
        format!("{url}/api/files/{tid}/content?transform=flip"),
        &alice,
    )
    .await;
    assert_eq!(status, 422, "{e}");
    // Still serving.
    let (status, _, _) = bytes(
        &c,
        format!("{url}/api/files/{id}/content?transform=grayscale/output:f=png"),
        &alice,
    )
    .await;
    assert_eq!(status, 200);
}

/// Text drawn with DejaVu Sans, black on white.
fn rendered(lines: &[&str], px: f32) -> Vec<u8> {
    use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
    let font_path = test_env("FMS_TEST_FONT");
    let data = std::fs::read(&font_path).unwrap();
    let font = FontRef::try_from_slice(&data).unwrap();
    let scaled = font.as_scaled(PxScale::from(px));
    let (w, h) = (1400u32, (lines.len() as f32 * px * 1.6 + px * 2.0) as u32);
    let mut img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
    for (i, line) in lines.iter().enumerate() {
        let mut x = px;
        let y = px + i as f32 * px * 1.6 + scaled.ascent();
        for ch in line.chars() {
            let g = scaled.scaled_glyph(ch);
            let advance = scaled.h_advance(g.id);
            let g = ab_glyph::Glyph {
                position: ab_glyph::point(x, y),
                ..g
            };
            if let Some(o) = scaled.outline_glyph(g) {
                let b = o.px_bounds();
                o.draw(|gx, gy, cov| {
                    let (px_, py) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
                    if px_ >= 0 && py >= 0 && (px_ as u32) < w && (py as u32) < h {
                        let v = (255.0 * (1.0 - cov.min(1.0))) as u8;
                        let p = img.get_pixel_mut(px_ as u32, py as u32);
                        p[0] = p[0].min(v);
                    }
                });
            }
            x += advance;
        }
    }
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
        .unwrap();
    out
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// OCR: rendered text comes back with >= 95% of its characters right; TSV gives word boxes
/// with confidences where the words were drawn; hOCR too; a language not installed is a
/// clear failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocr_reads_rendered_text_with_boxes() {
    let p = spawn(&["serve"], &[], true);
    let url = p.http.clone();
    let c = client();
    let (token, _) = new_user(&c, &url).await;
    let lines = [
        "The quick brown fox jumps over the lazy dog.",
        "Pack my box with five dozen liquor jugs 1234567890.",
        "Sphinx of black quartz, judge my vow!",
    ];
    let f = upload(&c, &url, &token, "page.png", rendered(&lines, 40.0)).await;
    let id = f["id"].as_str().unwrap();

    let started = Instant::now();
    let j = transform(&c, &url, &token, id, json!({"operations": [{"op": "ocr"}]})).await;
    assert_eq!(j["state"], "completed", "{j}");
    let rid = j["file_id"].as_str().unwrap();
    let (_, h, text) = bytes(&c, format!("{url}/api/files/{rid}/content"), &token).await;
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let got: Vec<char> = String::from_utf8(text)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect();
    let want: Vec<char> = lines.join(" ").chars().collect();
    let accuracy = 1.0 - levenshtein(&got, &want) as f64 / want.len() as f64;
    eprintln!(
        "OCR: {:.1}% of characters right in {:?}: {:?}",
        accuracy * 100.0,
        started.elapsed(),
        got.iter().collect::<String>()
    );
    assert!(accuracy >= 0.95, "{accuracy}");

    // Word boxes: TSV rows of level 5 with a confidence; "quick" where it was drawn.
    let (status, _, tsv) = bytes(
        &c,
        format!("{url}/api/files/{id}/content?transform=ocr:f=tsv"),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    let tsv = String::from_utf8(tsv).unwrap();
    let words: Vec<Vec<&str>> = tsv
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|r| r.len() == 12 && r[0] == "5")
        .collect();
    assert!(words.len() >= 25, "{tsv}");
    let quick = words
        .iter()
        .find(|r| r[11] == "quick")
        .expect("the word quick");
    let (left, top, conf): (u32, u32, f64) = (
        quick[6].parse().unwrap(),
        quick[7].parse().unwrap(),
        quick[10].parse().unwrap(),
    );
    assert!(
        (80..200).contains(&left) && (30..90).contains(&top),
        "{quick:?}"
    );
    assert!(conf > 50.0, "{quick:?}");
    let (status, h, hocr) = bytes(
        &c,
        format!("{url}/api/files/{id}/content?transform=ocr:f=hocr"),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let hocr = String::from_utf8(hocr).unwrap();
    assert!(
        hocr.contains("ocrx_word") && hocr.contains("x_wconf"),
        "{hocr}"
    );

    let (status, e) = get_json(
        &c,
        format!("{url}/api/files/{id}/content?transform=ocr:lang=klingon"),
        &token,
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("eng"),
        "{e}"
    );
}

/// Streaming: `compress` of a 1 GiB file with the server's RSS under 256 MiB, and
/// `decompress` of the result is the original, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_one_gib_in_bounded_memory_and_back_exactly() {
    let p = spawn(&["serve"], &[], true);
    let url = p.http.clone();
    let pid = p.child.id();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let (token, _) = new_user(&c, &url).await;
    // 1 GiB: 64 KiB noise blocks, each followed by text-like filler (so zstd has work).
    const SIZE: u64 = 1 << 30;
    const BLOCK: usize = 1 << 20;
    let body = futures_util::stream::iter(0..(SIZE / BLOCK as u64)).map(|i| {
        let mut b = noise(64 << 10, i);
        while b.len() < BLOCK {
            b.extend_from_slice(format!("line {i} of the log, all is well\n").as_bytes());
        }
        b.truncate(BLOCK);
        Ok::<_, std::io::Error>(b)
    });
    use futures_util::StreamExt;
    let r = c
        .post(format!("{url}/api/upload?name=big.log"))
        .bearer_auth(&token)
        .header("content-length", SIZE)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    let id = f["id"].as_str().unwrap();

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let rss = proc_kib(pid, "VmRSS:");
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let packed = transform(
        &c,
        &url,
        &token,
        id,
        json!({"transform": "compress:f=zstd"}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(packed["state"], "completed", "{packed}");
    let pid_ = packed["file_id"].as_str().unwrap();
    let (_, pf) = get_json(&c, format!("{url}/api/files/{pid_}"), &token).await;
    assert_eq!(pf["name"], "big.log.zst");
    assert_eq!(pf["content_type"], "application/zstd");
    let packed_size = pf["size"].as_u64().unwrap();
    assert!(packed_size < SIZE / 4, "{packed_size}");
    let back = transform(&c, &url, &token, pid_, json!({"transform": "decompress"})).await;
    assert_eq!(back["state"], "completed", "{back}");
    // Both in one zip, streamed (ZIP64 for the 1 GiB entry), under the same memory bound.
    let r = c
        .get(format!("{url}/api/archive?ids={id},{pid_}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut total, mut tail) = (0u64, Vec::new());
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        total += piece.len() as u64;
        tail.extend_from_slice(&piece);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    assert!(total > SIZE + packed_size, "{total}");
    assert!(
        tail.windows(4).any(|w| w == b"PK\x05\x06"),
        "end of central directory"
    );
    watch.abort();
    let bid = back["file_id"].as_str().unwrap();
    let (_, bf) = get_json(&c, format!("{url}/api/files/{bid}"), &token).await;
    assert_eq!(bf["name"], "big.log");
    assert_eq!(bf["size"], SIZE);
    assert_eq!(
        bf["content_hash"], f["content_hash"],
        "bit-exact round trip"
    );
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    eprintln!(
        "compress 1 GiB: {:?} ({:.0} MiB/s), {} MiB packed; with decompress and a zip of both streamed, server peak RSS {peak_mib} MiB",
        took,
        1024.0 / took.as_secs_f64(),
        packed_size >> 20
    );
    assert!(peak_mib < 256, "peak RSS {peak_mib} MiB");
}

/// Hostile sources through REST: truncated JPEG and PNG, a 100,000 x 100,000 PNG header, a
/// zstd bomb for `decompress`, random bytes named .jpg, an empty file — each refused within
/// 2 s with a clear error, and the service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sources_fail_fast_and_the_service_stays_up() {
    let p = spawn(&["serve"], &[], true);
    let url = p.http.clone();
    let c = client();
    let (token, _) = new_user(&c, &url).await;
    let jpeg = photo();
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])))
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut png))
        .unwrap();
    let bomb = fms_transformer::fuzz::png_claiming(&png, 100_000, 100_000);
    // 8 GiB of zeros in zstd frames of 64 MiB each, built without holding them.
    let mut zbomb = Vec::new();
    {
        let frame = zstd_frame_of_zeros(64 << 20);
        for _ in 0..128 {
            zbomb.extend_from_slice(&frame);
        }
    }
    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        ("cut.jpg", jpeg[..jpeg.len() / 2].to_vec(), "flip", 422),
        ("cut.png", png[..png.len() - 20].to_vec(), "flip", 422),
        ("bomb.png", bomb, "resize:w=100", 413),
        ("bomb.zst", zbomb, "decompress", 413),
        ("random.jpg", noise(100_000, 7), "resize:w=100", 422),
        ("empty.jpg", Vec::new(), "flip", 422),
        ("empty.zst", Vec::new(), "decompress", 422),
    ];
    for (name, data, t, want) in cases {
        let f = upload(&c, &url, &token, name, data).await;
        let id = f["id"].as_str().unwrap();
        let started = Instant::now();
        let (status, e) = get_json(
            &c,
            format!("{url}/api/files/{id}/content?transform={t}"),
            &token,
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status, want, "{name}: {e}");
        assert!(e["error"]["message"].as_str().is_some(), "{name}: {e}");
        assert!(took < Duration::from_secs(2), "{name}: {took:?}");
        // The job form fails the same way.
        let j = transform(&c, &url, &token, id, json!({"transform": t})).await;
        assert_eq!(j["state"], "failed", "{name}: {j}");
    }
    let f = upload(&c, &url, &token, "ok.png", png).await;
    let (status, _, out) = bytes(
        &c,
        format!(
            "{url}/api/files/{}/content?transform=resize:w=32/output:f=jpeg",
            f["id"].as_str().unwrap()
        ),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&out).unwrap().width(), 32);
}

/// One zstd frame holding `n` zeros, written by hand as RLE blocks (128 KiB of zeros in 4
/// bytes each): the shape of a decompression bomb.
fn zstd_frame_of_zeros(n: usize) -> Vec<u8> {
    const BLOCK: usize = 128 << 10;
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header: no checksum, no dictionary, window descriptor present (single segment
    // off), content size absent.
    f.push(0x00);
    // Window descriptor: 2^(10 + exponent) with exponent 7 -> 128 KiB.
    f.push(7 << 3);
    let blocks = n.div_ceil(BLOCK);
    for i in 0..blocks {
        let size = BLOCK.min(n - i * BLOCK);
        let last = u32::from(i + 1 == blocks);
        // Block header: last bit, type 1 (RLE), size in the upper 21 bits.
        let h = last | (1 << 1) | ((size as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0); // the byte repeated
    }
    f
}

/// Reliability test 30: expensive valid jobs beyond capacity. A job over the time limit fails
/// with `timeout` soon after it; with every slot taken an on-the-fly read is refused at once
/// (429, Retry-After); one user's batch of expensive jobs runs one at a time, so another
/// user's small jobs keep most of their throughput.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_jobs_beyond_capacity() {
    let env = [
        ("FMS_TRANSFORMER__TIMEOUT", "1s".to_string()),
        ("FMS_TRANSFORMER__CONCURRENCY", "2".to_string()),
    ];
    let p = spawn(&["serve"], &env, true);
    let url = p.http.clone();
    let c = client();
    let (heavy, _) = new_user(&c, &url).await;
    let (light, _) = new_user(&c, &url).await;
    // 7,000 x 7,000 (49 megapixels: allowed) of smooth colour: a few MiB as PNG, 147 MiB
    // decoded.
    let big = {
        let img = image::RgbImage::from_fn(7000, 7000, |x, y| {
            image::Rgb([(x / 28) as u8, (y / 28) as u8, ((x + y) / 56) as u8])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
            .unwrap();
        out
    };
    let big_id = upload(&c, &url, &heavy, "big.png", big).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let small_id = upload(&c, &url, &light, "small.jpg", photo()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Each expensive transform distinct (no cache), each well over a second.
    let expensive = |i: u32| {
        format!(
            "blur:sigma={}/sharpen/grayscale/output:f=png",
            20.0 + i as f32 * 0.25
        )
    };

    // The small jobs alone: the baseline.
    let small_batch = |round: u32| {
        let (c, url, light, small_id) = (c.clone(), url.clone(), light.clone(), small_id.clone());
        async move {
            let started = Instant::now();
            for i in 0..8 {
                let j = transform(
                    &c,
                    &url,
                    &light,
                    &small_id,
                    json!({"transform": format!("resize:w={}/output:f=jpeg", 100 + round * 10 + i)}),
                )
                .await;
                assert_eq!(j["state"], "completed", "{j}");
            }
            started.elapsed()
        }
    };
    let alone = small_batch(0).await;

    // The time limit: a job over it fails as `timeout`, about when the limit passes.
    let started = Instant::now();
    let j = transform(
        &c,
        &url,
        &heavy,
        &big_id,
        json!({"transform": expensive(0)}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["error"]["code"], "timeout", "{j}");
    // The decode of 49 megapixels is one step (not interruptible): the answer comes after
    // it — a few seconds on a busy 2-core machine, far below the unbounded blur it stops.
    assert!(took < Duration::from_secs(12), "{took:?}");

    // Its thread stops at the next check between steps, then frees its slot.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, &url, "transformer_slots_busy").await > 0.0 {
        assert!(Instant::now() < deadline, "a slot stays busy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Overflow: both slots taken by on-the-fly reads, a third reader is refused at once.
    let hold = |i: u32| {
        let (c, url, heavy, big_id) = (c.clone(), url.clone(), heavy.clone(), big_id.clone());
        tokio::spawn(async move {
            let t = expensive(100 + i);
            bytes(
                &c,
                format!("{url}/api/files/{big_id}/content?transform={t}"),
                &heavy,
            )
            .await
            .0
        })
    };
    let holders = [hold(1), hold(2)];
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let r = c
        .get(format!(
            "{url}/api/files/{small_id}/content?transform=resize:w=55"
        ))
        .bearer_auth(&light)
        .send()
        .await
        .unwrap();
    let refused_in = started.elapsed();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(refused_in < Duration::from_millis(300), "{refused_in:?}");
    for h in holders {
        assert_eq!(h.await.unwrap(), 504, "held past the time limit");
    }

    // A batch of expensive jobs from one user beside the small ones of another.
    let mut heavy_jobs = Vec::new();
    for i in 0..6 {
        let (status, j) = start(
            &c,
            &url,
            &heavy,
            &big_id,
            json!({"transform": expensive(200 + i)}),
        )
        .await;
        assert_eq!(status, 202, "{j}");
        heavy_jobs.push(j["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, first) = get_json(&c, format!("{url}/api/jobs/{}", heavy_jobs[5]), &heavy).await;
    let beside = small_batch(1).await;
    let ratio = alone.as_secs_f64() / beside.as_secs_f64();
    eprintln!(
        "8 small jobs: alone {alone:?}, beside 6 expensive jobs of another user {beside:?}: {:.0}% of the throughput kept",
        ratio * 100.0
    );
    assert!(ratio > 0.5, "{ratio}");
    for id in &heavy_jobs {
        let j = finished(&c, &url, &heavy, id).await;
        assert_eq!(j["error"]["code"], "timeout", "{j}");
    }
    // The sixth job waited its turn while the first ran.
    assert_eq!(first["state"], "queued", "{first}");
}

/// Archives (issue 8's streaming `archive`): a zip of files the caller may read — their own
/// and shared ones, names made unique — streamed on the fly (stored and deflated) and as a
/// job whose result is a new file; a file the caller may not read refuses the whole archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_of_readable_files() {
    use std::io::Read;
    let p = spawn(&["serve"], &[], true);
    let url = p.http.clone();
    let c = client();
    let (alice, alice_name) = new_user(&c, &url).await;
    let (bob, _) = new_user(&c, &url).await;
    let mut ws = socket(&url, &alice).await;
    let a = noise(300_000, 1);
    let b = b"hello, archive\n".repeat(1000);
    let shared = noise(70_000, 3);
    let ia = upload(&c, &url, &alice, "a.bin", a.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ib = upload(&c, &url, &alice, "a.bin", b.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let is = upload(&c, &url, &bob, "shared.bin", shared.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = upload(&c, &url, &bob, "secret.bin", b"no".to_vec()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{url}/api/files/share"))
        .bearer_auth(&bob)
        .json(&json!({"file_id": is, "with": alice_name, "rights": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let want = [("a.bin", &a), ("a (2).bin", &b), ("shared.bin", &shared)];
    let check = |zip_bytes: Vec<u8>| {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
        assert_eq!(z.len(), want.len());
        for (i, (name, data)) in want.iter().enumerate() {
            let mut f = z.by_index(i).unwrap();
            assert_eq!(f.name(), *name);
            let mut got = Vec::new();
            f.read_to_end(&mut got).unwrap();
            assert!(&got == *data, "{name}");
        }
    };
    for compression in ["store", "deflate"] {
        let (status, h, body) = bytes(
            &c,
            format!(
                "{url}/api/archive?ids={ia},{ib},{is}&name=bundle.zip&compression={compression}"
            ),
            &alice,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(h["content-type"], "application/zip");
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .contains("bundle.zip")
        );
        if compression == "deflate" {
            assert!(body.len() < a.len() + b.len() / 10 + shared.len());
        }
        check(body);
    }
    // Not readable: refused, and nothing is revealed about which.
    let (status, _) = get_json(&c, format!("{url}/api/archive?ids={ia},{secret}"), &alice).await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&c, format!("{url}/api/archive?ids="), &alice).await;
    assert_eq!(status, 400);

    // As a job: a new file of Alice's.
    let r = c
        .post(format!("{url}/api/archive"))
        .bearer_auth(&alice)
        .json(&json!({"file_ids": [ia, ib, is], "name": "job.zip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["kind"], "archive");
    let done = finished(&c, &url, &alice, j["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "completed", "{done}");
    let e = event(&mut ws, "archive.completed").await;
    assert_eq!(e["data"]["file_id"], done["file_id"]);
    let fid = done["file_id"].as_str().unwrap();
    let (_, f) = get_json(&c, format!("{url}/api/files/{fid}"), &alice).await;
    assert_eq!(f["name"], "job.zip");
    assert_eq!(f["content_type"], "application/zip");
    let (_, _, body) = bytes(&c, format!("{url}/api/files/{fid}/content"), &alice).await;
    check(body);
    let r = c
        .post(format!("{url}/api/archive"))
        .bearer_auth(&alice)
        .json(&json!({"file_ids": [ia, secret]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
