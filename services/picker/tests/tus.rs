//! tus 1.0 conformance (reliability tests 10, 11, 12, 14, 15) against the picker over real
//! sockets: every status code of the core protocol and the extensions offered, checked
//! against what the store then holds.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Server, client, random, start_cfg, user};
use fms_platform::Config;
use fms_platform::units::{ByteSize, Duration as Dur};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sha1::Digest as _;

const OCTETS: &str = "application/offset+octet-stream";

async fn server(postgres: bool, expiry: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.picker.max_file_size = ByteSize(64 << 20);
    cfg.picker.quota = ByteSize(100 << 20);
    cfg.picker.idle_timeout = Dur(Duration::from_secs(2));
    cfg.picker.upload_expiry = Dur(expiry);
    cfg.picker.gc_interval = Dur(Duration::ZERO);
    cfg.picker.cors_origins = vec!["https://app.example".into()];
    if postgres {
        cfg.database.url = common::fresh_postgres().await;
    }
    start_cfg(cfg, dir).await
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Tus<'a> {
    c: reqwest::Client,
    url: &'a str,
    token: String,
}

impl Tus<'_> {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        };
        self.c
            .request(method, url)
            .bearer_auth(&self.token)
            .header("tus-resumable", "1.0.0")
    }

    /// Create an upload; returns its path.
    async fn create(&self, length: Option<u64>, name: &str) -> String {
        let mut r = self.req(Method::POST, "/api/uploads").header(
            "upload-metadata",
            format!("filename {}", b64(name.as_bytes())),
        );
        r = match length {
            Some(n) => r.header("upload-length", n.to_string()),
            None => r.header("upload-defer-length", "1"),
        };
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with("/api/uploads/"), "{loc}");
        loc
    }

    async fn patch(&self, loc: &str, offset: u64, data: Vec<u8>) -> Response {
        self.req(Method::PATCH, loc)
            .header("content-type", OCTETS)
            .header("upload-offset", offset.to_string())
            .body(data)
            .send()
            .await
            .unwrap()
    }

    async fn offset(&self, loc: &str) -> (StatusCode, Option<u64>) {
        let r = self.req(Method::HEAD, loc).send().await.unwrap();
        let off = r
            .headers()
            .get("upload-offset")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        (r.status(), off)
    }
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The file a finished upload became, found by name in the listing.
async fn file_named(t: &Tus<'_>, name: &str) -> Option<Value> {
    let list: Value = t
        .req(Method::GET, "/api/files?limit=1000")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}

async fn content(t: &Tus<'_>, id: &str) -> Vec<u8> {
    let r = t
        .req(Method::GET, &format!("/api/files/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn conformance(postgres: bool) {
    let s = server(postgres, Duration::from_secs(3600)).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let t = Tus {
        c: c.clone(),
        url: &s.url,
        token,
    };
    // OPTIONS: no token needed; what the server speaks.
    let r = c
        .request(Method::OPTIONS, format!("{}/api/uploads", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    assert_eq!(header(&r, "tus-max-size"), (64u64 << 20).to_string());
    for ext in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
        "concatenation",
    ] {
        assert!(
            header(&r, "tus-extension").split(',').any(|e| e == ext),
            "{ext}"
        );
    }
    assert_eq!(header(&r, "tus-checksum-algorithm"), "sha1,md5,blake3");
    // CORS preflight from an allowed origin.
    let r = c
        .request(Method::OPTIONS, format!("{}/api/uploads", s.url))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "tus-resumable,upload-offset",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    let r = c
        .request(Method::OPTIONS, format!("{}/api/uploads", s.url))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), "");

    // Creation: version, length and metadata checks.
    let r = c
        .post(format!("{}/api/uploads", s.url))
        .bearer_auth(&t.token)
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "no Tus-Resumable");
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    let r = c
        .post(format!("{}/api/uploads", s.url))
        .bearer_auth(&t.token)
        .header("tus-resumable", "0.2.2")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "old version");
    let r = c
        .post(format!("{}/api/uploads", s.url))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    for (k, v) in [
        ("upload-length", "-1"),
        ("upload-length", "ten"),
        ("upload-length", "99999999999999999999999"),
        ("upload-defer-length", "2"),
        ("x-nothing", "1"),
    ] {
        let r = t
            .req(Method::POST, "/api/uploads")
            .header(k, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{k}: {v}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string());
    }
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-length", "10")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "both length headers");
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-length", (65u64 << 20).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "file_too_large");
    for meta in [
        format!("filename {}", b64(b"../../etc/passwd")),
        format!("filename {}", b64(b"a\r\nb")),
        format!("filename {}", b64(b"nul\0byte")),
        "filename not-base64!".to_string(),
        format!("filename {},filename {}", b64(b"a"), b64(b"b")),
        // Folders (Uppy's relativePath) are names too.
        format!("relativePath {}", b64(b"../up/a.txt")),
        format!("relativePath {}", b64(b"a/./b/c.txt")),
        format!("relativePath {}", b64(b"a\nb/c.txt")),
        format!("relativePath {}", b64("d/".repeat(40).as_bytes())),
    ] {
        let r = t
            .req(Method::POST, "/api/uploads")
            .header("upload-length", "10")
            .header("upload-metadata", meta.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{meta}");
    }
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-length", "10")
        .header("upload-concat", "sideways")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown Upload-Concat");

    // A 5 MiB + 3 upload in odd pieces, with each checksum algorithm.
    let data = random((5 << 20) + 3, 61);
    let len = data.len() as u64;
    let loc = t.create(Some(len), "doc.bin").await;
    let r = t.req(Method::HEAD, &loc).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-offset"), "0");
    assert_eq!(header(&r, "upload-length"), len.to_string());
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    assert!(header(&r, "upload-metadata").starts_with("filename "));
    assert!(header(&r, "upload-expires").ends_with("GMT"));
    // Wrong content type, missing or wrong offset: nothing written.
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .header("upload-offset", "0")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no Upload-Offset");
    for bad in ["-1", "x", "1e3"] {
        let r = t
            .req(Method::PATCH, &loc)
            .header("content-type", OCTETS)
            .header("upload-offset", bad)
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "Upload-Offset {bad}");
    }
    let r = t.patch(&loc, 5, vec![1u8; 10]).await;
    assert_eq!(r.status(), 409, "offset mismatch");
    assert_eq!(t.offset(&loc).await, (StatusCode::OK, Some(0)));
    // First piece: 1 MiB + 7, no checksum.
    let a = (1 << 20) + 7;
    let r = t.patch(&loc, 0, data[..a].to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), a.to_string());
    // A wrong sha1: 460, the offset unchanged.
    let b = a + 333_333;
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", a.to_string())
        .header(
            "upload-checksum",
            format!("sha1 {}", b64(&sha1::Sha1::digest(b"other"))),
        )
        .body(data[a..b].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(t.offset(&loc).await, (StatusCode::OK, Some(a as u64)));
    // An unknown algorithm: 400.
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", a.to_string())
        .header("upload-checksum", "crc32 AAAAAA==")
        .body(data[a..b].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The right sha1, then md5.
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", a.to_string())
        .header(
            "upload-checksum",
            format!("sha1 {}", b64(&sha1::Sha1::digest(&data[a..b]))),
        )
        .body(data[a..b].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let m = b + 1_000_001;
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", b.to_string())
        .header(
            "upload-checksum",
            format!("md5 {}", b64(&md5::Md5::digest(&data[b..m]))),
        )
        .body(data[b..m].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Past the declared length: 413, nothing of it kept.
    let mut too_long = data[m..].to_vec();
    too_long.push(0);
    let r = t.patch(&loc, m as u64, too_long).await;
    assert_eq!(r.status(), 413);
    assert_eq!(t.offset(&loc).await, (StatusCode::OK, Some(m as u64)));
    // Another user sees nothing: 404 for HEAD, PATCH, DELETE.
    let (other, _) = user(&c, &s.url).await;
    let o = Tus {
        c: c.clone(),
        url: &s.url,
        token: other,
    };
    assert_eq!(o.offset(&loc).await.0, 404);
    assert_eq!(
        o.patch(&loc, m as u64, data[m..m + 10].to_vec())
            .await
            .status(),
        404
    );
    assert_eq!(
        o.req(Method::DELETE, &loc).send().await.unwrap().status(),
        404
    );
    // The rest with blake3: complete; the upload is an ordinary file.
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", m.to_string())
        .header(
            "upload-checksum",
            format!("blake3 {}", b64(blake3::hash(&data[m..]).as_bytes())),
        )
        .body(data[m..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), len.to_string());
    let f = file_named(&t, "doc.bin")
        .await
        .expect("the upload is listed");
    assert_eq!(f["size"], len);
    assert_eq!(f["content_hash"], blake3::hash(&data).to_hex().as_str());
    assert!(content(&t, f["id"].as_str().unwrap()).await == data);
    // After completion: HEAD says done; a repeated final PATCH is fine; more is not.
    assert_eq!(t.offset(&loc).await, (StatusCode::OK, Some(len)));
    assert_eq!(t.patch(&loc, len, Vec::new()).await.status(), 204);
    assert_eq!(t.patch(&loc, len, vec![1]).await.status(), 413);
    assert_eq!(t.patch(&loc, 0, vec![1]).await.status(), 409);

    // Deferred length: bytes first, the length with the last PATCH.
    let d = random(300_000, 62);
    let loc = t.create(None, "later.bin").await;
    let r = t.req(Method::HEAD, &loc).send().await.unwrap();
    assert_eq!(header(&r, "upload-defer-length"), "1");
    assert_eq!(t.patch(&loc, 0, d[..100_000].to_vec()).await.status(), 204);
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", "100000")
        .header("upload-length", "50")
        .body(d[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a length shorter than what is there");
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", "100000")
        .header("upload-length", d.len().to_string())
        .body(d[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let f = file_named(&t, "later.bin").await.unwrap();
    assert!(content(&t, f["id"].as_str().unwrap()).await == d);

    // Empty upload: complete at creation.
    t.create(Some(0), "empty.txt").await;
    assert_eq!(file_named(&t, "empty.txt").await.unwrap()["size"], 0);

    // creation-with-upload.
    let w = random(70_000, 63);
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-length", (w.len() + 5).to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {},relativePath {}",
                b64(b"with.bin"),
                b64(b"/photos//2024/with.bin")
            ),
        )
        .header("content-type", OCTETS)
        .body(w.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "upload-offset"), w.len().to_string());
    let loc = header(&r, "location");
    assert_eq!(
        t.patch(&loc, w.len() as u64, vec![9; 5]).await.status(),
        204
    );
    let f = file_named(&t, "with.bin").await.unwrap();
    assert_eq!(f["size"], w.len() + 5);
    assert_eq!(
        f["folder"], "photos/2024",
        "relativePath kept as the folder"
    );
    assert_eq!(file_named(&t, "empty.txt").await.unwrap()["folder"], "");

    // Termination.
    let loc = t.create(Some(1000), "gone.bin").await;
    assert_eq!(t.patch(&loc, 0, vec![1; 500]).await.status(), 204);
    assert_eq!(
        t.req(Method::DELETE, &loc).send().await.unwrap().status(),
        204
    );
    assert_eq!(t.offset(&loc).await.0, 404);
    assert_eq!(t.patch(&loc, 500, vec![1; 500]).await.status(), 404);
    assert!(file_named(&t, "gone.bin").await.is_none());

    // Hostile ids: never 5xx, never anything outside the store.
    for id in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "00000000000000000000000000000000",
        "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "a%00b",
    ] {
        let st = t.offset(&format!("/api/uploads/{id}")).await.0;
        assert_eq!(st, 404, "{id}");
    }
    let long = "a".repeat(4096);
    assert_eq!(t.offset(&format!("/api/uploads/{long}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_conformance_embedded() {
    conformance(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_conformance_postgres() {
    conformance(true).await;
}

/// Reliability test 14: an abandoned upload expires (410 for HEAD and PATCH) and its bytes
/// are reclaimed; a completed one is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire_and_are_reclaimed() {
    let s = server(false, Duration::from_secs(1)).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let t = Tus {
        c: c.clone(),
        url: &s.url,
        token,
    };
    let done = random(400_000, 64);
    let loc_done = t.create(Some(done.len() as u64), "kept.bin").await;
    assert_eq!(t.patch(&loc_done, 0, done.clone()).await.status(), 204);
    let loc = t.create(Some(4 << 20), "abandoned.bin").await;
    assert_eq!(t.patch(&loc, 0, random(3 << 20, 65)).await.status(), 204);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(t.offset(&loc).await.0, 410);
    assert_eq!(t.patch(&loc, 3 << 20, vec![0; 10]).await.status(), 410);
    let store = s.picker.engine.store().clone();
    let report = tokio::task::spawn_blocking(move || {
        let r = store.gc().unwrap();
        (r, store.stats().unwrap(), store.session_ids().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(report.0.sessions_expired, 1);
    assert!(report.2.is_empty(), "no session left");
    assert_eq!(
        report.1.live_chunk_bytes,
        done.len() as u64,
        "only the completed upload's bytes are live"
    );
    assert_eq!(
        t.offset(&loc_done).await,
        (StatusCode::OK, Some(done.len() as u64))
    );
    let f = file_named(&t, "kept.bin").await.unwrap();
    assert!(content(&t, f["id"].as_str().unwrap()).await == done);
    // Terminating an expired upload is fine too.
    assert_eq!(
        t.req(Method::DELETE, &loc).send().await.unwrap().status(),
        204
    );
}

/// Reliability test 12: PATCHes racing on one upload never interleave: while one streams,
/// others get 423 (or 409 once it moved on); the content is always right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_never_interleave() {
    let s = server(false, Duration::from_secs(3600)).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let t = Tus {
        c: c.clone(),
        url: &s.url,
        token: token.clone(),
    };
    let data = random(2 << 20, 66);
    for racers in [2usize, 8] {
        let name = format!("race-{racers}.bin");
        let loc = t.create(Some(data.len() as u64), &name).await;
        // One slow PATCH holds the upload: its body trickles in.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let slow_body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let slow = {
            let req = t
                .req(Method::PATCH, &loc)
                .header("content-type", OCTETS)
                .header("upload-offset", "0")
                .body(slow_body);
            tokio::spawn(async move { req.send().await.unwrap() })
        };
        tx.send(Ok(data[..1 << 20].to_vec())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut tasks = Vec::new();
        for _ in 0..racers - 1 {
            let (c, url, token, loc, d) = (
                c.clone(),
                s.url.clone(),
                token.clone(),
                loc.clone(),
                data.clone(),
            );
            tasks.push(tokio::spawn(async move {
                c.patch(format!("{url}{loc}"))
                    .bearer_auth(token)
                    .header("tus-resumable", "1.0.0")
                    .header("content-type", OCTETS)
                    .header("upload-offset", "0")
                    // Small: a refused PATCH's body is not read, the connection is closed.
                    .body(d[..1000].to_vec())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        for task in tasks {
            let st = task.await.unwrap();
            assert!(st == 423 || st == 409, "a racing PATCH got {st}");
        }
        tx.send(Ok(data[1 << 20..].to_vec())).await.unwrap();
        drop(tx);
        assert_eq!(slow.await.unwrap().status(), 204);
        let f = file_named(&t, &name).await.unwrap();
        assert!(content(&t, f["id"].as_str().unwrap()).await == data);
    }
}

/// Concatenation: partial uploads (sent in parallel) joined into one file from their chunk
/// lists — no chunk written again; parts of another user or unfinished parts refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_uploads_are_joined_without_copying() {
    let s = server(false, Duration::from_secs(3600)).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let t = Tus {
        c: c.clone(),
        url: &s.url,
        token,
    };
    let pieces = [
        random((1 << 20) + 1, 71),
        random(7, 72),
        random(2 << 20, 73),
    ];
    let mut locs = Vec::new();
    let mut tasks = Vec::new();
    for piece in &pieces {
        let r = t
            .req(Method::POST, "/api/uploads")
            .header("upload-length", piece.len().to_string())
            .header("upload-concat", "partial")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let loc = header(&r, "location");
        locs.push(loc.clone());
        let (c, url, token, body) = (c.clone(), s.url.clone(), t.token.clone(), piece.clone());
        tasks.push(tokio::spawn(async move {
            c.patch(format!("{url}{loc}"))
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0")
                .header("content-type", OCTETS)
                .header("upload-offset", "0")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 204);
    }
    let r = t.req(Method::HEAD, &locs[0]).send().await.unwrap();
    assert_eq!(header(&r, "upload-concat"), "partial");
    assert_eq!(header(&r, "upload-offset"), pieces[0].len().to_string());
    let list: Value = t
        .req(Method::GET, "/api/files")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "parts are no files"
    );
    // Refused: an unfinished part, another user's part, a length, garbage.
    let unfinished = {
        let r = t
            .req(Method::POST, "/api/uploads")
            .header("upload-length", "100")
            .header("upload-concat", "partial")
            .send()
            .await
            .unwrap();
        header(&r, "location")
    };
    let (other, _) = user(&c, &s.url).await;
    let o = Tus {
        c: c.clone(),
        url: &s.url,
        token: other,
    };
    let theirs = {
        let r = o
            .req(Method::POST, "/api/uploads")
            .header("upload-length", "3")
            .header("upload-concat", "partial")
            .send()
            .await
            .unwrap();
        let loc = header(&r, "location");
        assert_eq!(o.patch(&loc, 0, vec![1, 2, 3]).await.status(), 204);
        loc
    };
    for spec in [
        format!("final;{} {}", locs[0], unfinished),
        format!("final;{} {}", locs[0], theirs),
        "final;/api/uploads/../../etc".to_string(),
        "final;".to_string(),
    ] {
        let r = t
            .req(Method::POST, "/api/uploads")
            .header("upload-concat", spec.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{spec}");
    }
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-concat", format!("final;{}", locs.join(" ")))
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a final upload with a length");
    // Joined, with absolute URLs as tus clients send them.
    let store = s.picker.engine.store().clone();
    let before = store.stats().unwrap().live_chunk_bytes;
    let absolute: Vec<String> = locs.iter().map(|l| format!("{}{l}", s.url)).collect();
    let r = t
        .req(Method::POST, "/api/uploads")
        .header("upload-concat", format!("final;{}", absolute.join(" ")))
        .header(
            "upload-metadata",
            format!("filename {}", b64(b"joined.bin")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let fin = header(&r, "location");
    let whole = pieces.concat();
    let f = file_named(&t, "joined.bin").await.unwrap();
    assert_eq!(f["size"], whole.len());
    assert_eq!(f["content_hash"], blake3::hash(&whole).to_hex().as_str());
    assert!(content(&t, f["id"].as_str().unwrap()).await == whole);
    let st = store.clone();
    let after = tokio::task::spawn_blocking(move || {
        st.gc().unwrap();
        st.stats().unwrap().live_chunk_bytes
    })
    .await
    .unwrap();
    assert_eq!(
        after, before,
        "no chunk written again (parts' files released, chunks shared)"
    );
    let r = t.req(Method::HEAD, &fin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "upload-concat").starts_with("final;"));
    assert_eq!(header(&r, "upload-offset"), whole.len().to_string());
    assert_eq!(t.patch(&fin, 0, vec![1]).await.status(), 403);
    for loc in &locs {
        assert_eq!(t.offset(loc).await.0, 404, "joined parts are gone");
    }
}
