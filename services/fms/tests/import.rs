//! Imports from URLs (issue 7) as users run them: `POST /api/files/download` under
//! `fms serve`, against a local HTTP source that can cut connections, throttle, redirect,
//! drip, lie about its length or never end.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

/// Bytes of file `seed` from `offset`, `len` long: the same bytes whatever the range.
fn content(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    const BLOCK: u64 = 64 << 10;
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    while out.len() < len {
        let block = pos / BLOCK;
        let bytes = noise(BLOCK as usize, seed.wrapping_mul(1_000_003) ^ block);
        let from = (pos - block * BLOCK) as usize;
        let take = (BLOCK as usize - from).min(len - out.len());
        out.extend_from_slice(&bytes[from..from + take]);
        pos += take as u64;
    }
    out
}

fn blake3_of(seed: u64, size: u64) -> String {
    let mut h = blake3::Hasher::new();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(1 << 20) as usize;
        h.update(&content(seed, pos, n));
        pos += n as u64;
    }
    h.finalize().to_hex().to_string()
}

/// The source server's state: bytes sent, and which one-time misbehaviours were used.
#[derive(Default)]
struct Source {
    sent: AtomicU64,
    requests: AtomicU64,
    once: Mutex<HashSet<String>>,
}

impl Source {
    /// True the first time `key` is asked.
    fn first(&self, key: &str) -> bool {
        self.once.lock().unwrap().insert(key.to_string())
    }
}

#[derive(serde::Deserialize, Default)]
struct Knobs {
    /// Cut the connection after this many bytes (first request only).
    cut: Option<u64>,
    /// Answer 429 with `Retry-After: 1` first.
    throttle: Option<u32>,
    /// Redirect this many times first.
    hops: Option<u32>,
    /// No Content-Length (chunked).
    chunked: Option<u32>,
    /// No ETag (and no Last-Modified).
    noetag: Option<u32>,
    /// Announce the size but send only this many bytes, every time.
    lie: Option<u64>,
    /// One byte per second, forever.
    drip: Option<u32>,
    /// Never end (chunked).
    endless: Option<u32>,
    /// Content-Disposition file name.
    name: Option<String>,
    /// A tag making otherwise equal URLs distinct (for the one-time knobs).
    tag: Option<String>,
}

async fn serve_file(
    State(src): State<Arc<Source>>,
    Path((size, seed)): Path<(u64, u64)>,
    Query(k): Query<Knobs>,
    h: HeaderMap,
) -> Response {
    src.requests.fetch_add(1, Ordering::Relaxed);
    let key = format!("{size}/{seed}/{}", k.tag.clone().unwrap_or_default());
    if let Some(n) = k.hops
        && n > 0
    {
        let mut q = format!("hops={}", n - 1);
        if let Some(t) = &k.tag {
            q.push_str(&format!("&tag={t}"));
        }
        return (
            StatusCode::FOUND,
            [(header::LOCATION, format!("/f/{size}/{seed}?{q}"))],
        )
            .into_response();
    }
    if k.throttle.is_some() && src.first(&format!("429:{key}")) {
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
    }
    if k.drip.is_some() {
        let s = futures_util::stream::unfold((), |_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
        });
        return Response::new(Body::from_stream(s));
    }
    if k.endless.is_some() {
        let src2 = src.clone();
        let s = futures_util::stream::unfold(0u64, move |i| {
            let src = src2.clone();
            async move {
                src.sent.fetch_add(64 << 10, Ordering::Relaxed);
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(content(9, i * (64 << 10), 64 << 10))),
                    i + 1,
                ))
            }
        });
        return Response::new(Body::from_stream(s));
    }
    let start = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s <= size);
    let etag = format!("\"{size}-{seed}\"");
    let start = match (start, h.get(header::IF_RANGE)) {
        (Some(s), Some(v)) if v.to_str().ok() != Some(etag.as_str()) => {
            let _ = s;
            None
        }
        (s, _) => s,
    };
    let from = start.unwrap_or(0);
    let mut end = size;
    if let Some(c) = k.cut
        && src.first(&format!("cut:{key}"))
    {
        end = c.max(from);
    }
    let send_end = match k.lie {
        Some(n) => n.min(size),
        None => end,
    };
    let src2 = src.clone();
    let body = futures_util::stream::unfold(from, move |pos| {
        let src = src2.clone();
        async move {
            if pos >= send_end {
                return if send_end < size && pos < size {
                    // Cut: end the body early (the connection is dropped mid-body).
                    Some((Err(std::io::Error::other("cut")), u64::MAX))
                } else {
                    None
                };
            }
            let n = (send_end - pos).min(256 << 10) as usize;
            src.sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((Ok(Bytes::from(content(seed, pos, n))), pos + n as u64))
        }
    });
    let body = futures_util::StreamExt::take_while(body, |_| std::future::ready(true));
    let mut r = Response::new(Body::from_stream(body));
    let hd = r.headers_mut();
    if k.noetag.is_none() {
        hd.insert(header::ETAG, etag.parse().unwrap());
    }
    hd.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    if let Some(n) = &k.name {
        hd.insert(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{n}\"").parse().unwrap(),
        );
    }
    if k.chunked.is_none() {
        hd.insert(header::CONTENT_LENGTH, (size - from).into());
    }
    if start.is_some() && from > 0 {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{size}", size.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    r
}

/// File `seed` of `size` bytes as the answer to a request with headers `h`: whole, or from
/// the `Range` start (206) when asked; the first answer for `cut_key` stops at `cut`.
fn ranged(
    src: &Arc<Source>,
    h: &HeaderMap,
    seed: u64,
    size: u64,
    cut: Option<(String, u64)>,
    extra: &[(&'static str, String)],
) -> Response {
    let from = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|f| *f <= size);
    let start = from.unwrap_or(0);
    let end = match cut {
        Some((key, at)) if src.first(&key) => at.max(start),
        _ => size,
    };
    let src2 = src.clone();
    let body = futures_util::stream::unfold(start, move |pos| {
        let src = src2.clone();
        async move {
            if pos >= end {
                return (end < size && pos < size)
                    .then(|| (Err(std::io::Error::other("cut")), u64::MAX));
            }
            let n = (end - pos).min(256 << 10) as usize;
            src.sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((Ok(Bytes::from(content(seed, pos, n))), pos + n as u64))
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    let hd = r.headers_mut();
    hd.insert(header::CONTENT_LENGTH, (size - start).into());
    hd.insert(header::ETAG, format!("\"{seed}\"").parse().unwrap());
    for (k, v) in extra {
        hd.insert(*k, v.parse().unwrap());
    }
    if from.is_some_and(|f| f > 0) {
        hd.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size - 1)
                .parse()
                .unwrap(),
        );
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

fn json_error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Drive v3 `files.get`: metadata, or the bytes with `alt=media`. Token `drive-token`.
async fn drive_file(
    State(src): State<Arc<Source>>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    src.requests.fetch_add(1, Ordering::Relaxed);
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer drive-token") {
        return json_error(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": 401, "message": "Invalid Credentials"}}),
        );
    }
    let (name, mime, size, seed) = match id.as_str() {
        "photo1" => ("photo.jpg", "image/jpeg", 10u64 << 20, 21u64),
        "cut1" => ("cut.bin", "application/octet-stream", 20 << 20, 23),
        "slow1" => ("slow.txt", "text/plain", 1000, 24),
        "doc1" => ("Plan", "application/vnd.google-apps.document", 0, 0),
        "folder1" => ("Stuff", "application/vnd.google-apps.folder", 0, 0),
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                json!({"error": {"code": 404, "message": format!("File not found: {id}.")}}),
            );
        }
    };
    if id == "slow1" && src.first("drive-429") {
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
    }
    if q.get("alt").map(String::as_str) == Some("media") {
        if mime.starts_with("application/vnd.google-apps.") {
            return json_error(
                StatusCode::FORBIDDEN,
                json!({"error": {"code": 403, "message": "Use Export with Docs Editors files."}}),
            );
        }
        let cut = (id == "cut1").then(|| ("drive-cut".to_string(), size * 9 / 10));
        return ranged(&src, &h, seed, size, cut, &[]);
    }
    let mut m = json!({"kind": "drive#file", "id": id, "name": name, "mimeType": mime});
    if size > 0 {
        m["size"] = json!(size.to_string());
    }
    axum::Json(m).into_response()
}

/// Drive v3 `files.export` of the Google Doc `doc1` (100,000 bytes per format).
async fn drive_export(
    State(src): State<Arc<Source>>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer drive-token") {
        return json_error(StatusCode::UNAUTHORIZED, json!({"error": {"code": 401}}));
    }
    let seed = match (id.as_str(), q.get("mimeType").map(String::as_str)) {
        (
            "doc1",
            Some("application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ) => 22,
        ("doc1", Some("application/pdf")) => 25,
        _ => return json_error(StatusCode::BAD_REQUEST, json!({"error": {"code": 400}})),
    };
    // Exports are generated: no Range, no length.
    let mut r = ranged(&src, &HeaderMap::new(), seed, 100_000, None, &[]);
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r
}

/// Dropbox's answer for `arg` (the parsed `Dropbox-API-Arg`), token `dbx-token`.
fn dropbox_answer(
    src: &Arc<Source>,
    h: &HeaderMap,
    file: Option<(&str, u64, u64, bool)>,
) -> Response {
    src.requests.fetch_add(1, Ordering::Relaxed);
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer dbx-token") {
        return json_error(
            StatusCode::UNAUTHORIZED,
            json!({"error_summary": "invalid_access_token/", "error": {".tag": "invalid_access_token"}}),
        );
    }
    let Some((name, size, seed, cut)) = file else {
        return json_error(
            StatusCode::CONFLICT,
            json!({"error_summary": "path/not_found/..", "error": {".tag": "path", "path": {".tag": "not_found"}}}),
        );
    };
    let result = json!({"name": name, "id": format!("id:{seed}"), "size": size}).to_string();
    // Header-safe, as Dropbox sends it.
    let result: String = result
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    let cut = cut.then(|| (format!("dbx-cut-{seed}"), size / 2));
    ranged(src, h, seed, size, cut, &[("dropbox-api-result", result)])
}

fn dropbox_arg(h: &HeaderMap) -> Value {
    h.get("dropbox-api-arg")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or(Value::Null)
}

async fn dropbox_download(State(src): State<Arc<Source>>, h: HeaderMap) -> Response {
    let arg = dropbox_arg(&h);
    let file = match arg["path"].as_str() {
        Some("/docs/report.pdf") | Some("id:abc123") => {
            Some(("report.pdf", 3u64 << 20, 31u64, false))
        }
        Some("/résumé.txt") => Some(("résumé.txt", 5000, 33, false)),
        Some("/docs/cut.bin") => Some(("cut.bin", 8 << 20, 34, true)),
        _ => None,
    };
    dropbox_answer(&src, &h, file)
}

async fn dropbox_shared(State(src): State<Arc<Source>>, h: HeaderMap) -> Response {
    let arg = dropbox_arg(&h);
    let file = match arg["url"].as_str() {
        Some("https://www.dropbox.com/s/abc/shared.bin?dl=0") => {
            Some(("shared.bin", 1u64 << 20, 32u64, false))
        }
        _ => None,
    };
    dropbox_answer(&src, &h, file)
}

/// An S3 object behind SigV4 (key `AKIDTEST`, secret `s3-secret`, region `eu-test-1`):
/// the signature is recomputed from what arrived and must match.
async fn s3_object(
    State(src): State<Arc<Source>>,
    Path((bucket, key)): Path<(String, String)>,
    h: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    src.requests.fetch_add(1, Ordering::Relaxed);
    let Some(auth) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code></Error>",
        )
            .into_response();
    };
    let signer = fms_downloader::sources::SigV4 {
        access_key_id: "AKIDTEST".into(),
        secret: "s3-secret".into(),
        session_token: String::new(),
        region: "eu-test-1".into(),
        service: "s3",
        now: h
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let url = url::Url::parse(&format!("http://{host}{uri}")).unwrap();
    let mut mine = HeaderMap::new();
    for (k, v) in &h {
        if k.as_str() == "range" {
            mine.insert(k.clone(), v.clone());
        }
    }
    fms_downloader::fetch::Sign::sign(&signer, &reqwest::Method::GET, &url, &mut mine);
    if mine
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(auth)
    {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>SignatureDoesNotMatch</Code></Error>",
        )
            .into_response();
    }
    if bucket != "bkt" || key != "dir/obj 1.bin" {
        return (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response();
    }
    ranged(&src, &h, 41, 2 << 20, Some(("s3-cut".into(), 1 << 20)), &[])
}

/// Start the source on a loopback port: (base URL, state).
async fn source() -> (String, Arc<Source>) {
    let src = Arc::new(Source::default());
    let app = axum::Router::new()
        .route("/f/{size}/{seed}", axum::routing::get(serve_file))
        .route("/drive/v3/files/{id}", axum::routing::get(drive_file))
        .route(
            "/drive/v3/files/{id}/export",
            axum::routing::get(drive_export),
        )
        .route("/2/files/download", axum::routing::post(dropbox_download))
        .route(
            "/2/sharing/get_shared_link_file",
            axum::routing::post(dropbox_shared),
        )
        .route("/s3/{bucket}/{*key}", axum::routing::get(s3_object))
        .with_state(src.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), src)
}

/// `fms serve` with `env`: (process, client, HTTP base).
fn serve_for_imports(env: &[(&str, String)]) -> (Proc, reqwest::Client, String) {
    let p = spawn(&["serve"], env, true);
    let url = p.http.clone();
    (p, client(), url)
}

async fn new_user(c: &reqwest::Client, url: &str) -> String {
    let t = login_session(c, url, &username()).await;
    t["access_token"].as_str().unwrap().to_string()
}

/// Loopback sources allowed (tests only).
fn allow_loopback() -> (&'static str, String) {
    ("FMS_DOWNLOADER__ALLOW", r#"["127.0.0.0/8"]"#.into())
}

async fn start_import(c: &reqwest::Client, url: &str, token: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{url}/api/files/download"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Wait until the job leaves `running`.
async fn finished(c: &reqwest::Client, url: &str, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j: Value = c
            .get(format!("{url}/api/jobs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["state"] != "running" && j["state"] != "queued" {
            return j;
        }
        assert!(std::time::Instant::now() < deadline, "job stuck: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn import(c: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let (status, j) = start_import(c, url, token, body).await;
    assert_eq!(status, 202, "{j}");
    assert_eq!(j["state"], "running");
    finished(c, url, token, j["id"].as_str().unwrap()).await
}

async fn file(c: &reqwest::Client, url: &str, token: &str, id: &str) -> Value {
    c.get(format!("{url}/api/files/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn file_count(c: &reqwest::Client, url: &str, token: &str) -> usize {
    let v: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().len()
}

/// Issue 7: imports from a URL store exactly the source's bytes — empty, 10 MiB, without a
/// length, through redirects, after a 429, and after a connection cut at 90% (resumed with
/// Range, little fetched twice) — and the job says how it went; bad requests are refused at
/// once with clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_imports_store_the_source_bytes_and_resume_after_a_cut() {
    let (base, src) = source().await;
    let (_p, c, url) = serve_for_imports(&[allow_loopback()]);
    let token = new_user(&c, &url).await;

    const MIB: u64 = 1 << 20;
    for (size, seed, query, name) in [
        (0u64, 1u64, "", "1"),
        (10 * MIB, 2, "name=ten.bin", "ten.bin"),
        (3 * MIB + 17, 3, "chunked=1", "3"),
        (MIB, 4, "hops=3", "4"),
        (MIB, 5, "throttle=1", "5"),
    ] {
        let j = import(
            &c,
            &url,
            &token,
            json!({"url": format!("{base}/f/{size}/{seed}?{query}")}),
        )
        .await;
        assert_eq!(j["state"], "completed", "{query}: {j}");
        assert_eq!(j["bytes_received"], size, "{query}: {j}");
        let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
        assert_eq!(f["size"], size, "{query}");
        assert_eq!(f["name"], name, "{query}");
        assert_eq!(f["content_hash"], blake3_of(seed, size), "{query}");
    }

    // Cut at 90%: resumed from there, not started over.
    let size = 20 * MIB;
    let before = src.sent.load(Ordering::Relaxed);
    let requests = src.requests.load(Ordering::Relaxed);
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/{size}/6?cut={}", size * 9 / 10), "name": "cut.bin"}),
    )
    .await;
    assert_eq!(j["state"], "completed", "{j}");
    let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
    assert_eq!(f["content_hash"], blake3_of(6, size));
    let sent = src.sent.load(Ordering::Relaxed) - before;
    assert_eq!(
        src.requests.load(Ordering::Relaxed) - requests,
        2,
        "cut once, resumed once"
    );
    assert!(
        sent < size + size * 15 / 100,
        "fetched {sent} bytes for {size}: more than 15% twice"
    );
    eprintln!("cut at 90%: {sent} bytes fetched for {size}");
    // Without an ETag the source is still resumed (it honours Range).
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/{}/7?cut={}&noetag=1", 4 * MIB, 3 * MIB)}),
    )
    .await;
    assert_eq!(j["state"], "completed", "{j}");
    let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
    assert_eq!(f["content_hash"], blake3_of(7, 4 * MIB));

    // Failures the job reports.
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/100/8?hops=6")}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["error"]["code"], "source_error", "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("redirects")
    );
    let j = import(&c, &url, &token, json!({"url": format!("{base}/nothing")})).await;
    assert_eq!(j["error"]["code"], "source_not_found", "{j}");

    // Refused at once.
    for (body, status, code) in [
        (json!({}), 400, "bad_request"),
        (
            json!({"source": "ftp-site", "url": "x"}),
            400,
            "unknown_source",
        ),
        (json!({"url": "ftp://127.0.0.1/x"}), 400, "url_refused"),
        (json!({"url": "not a url"}), 400, "url_refused"),
        (json!({"url": "http://u:p@127.0.0.1/x"}), 400, "url_refused"),
        (
            json!({"url": format!("{base}/f/1/1"), "name": "a/b"}),
            400,
            "bad_request",
        ),
    ] {
        let (s, e) = start_import(&c, &url, &token, body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
    }
    // Another user cannot see the job.
    let other = new_user(&c, &url).await;
    let r = c
        .get(format!("{url}/api/jobs/{}", j["id"].as_str().unwrap()))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Issue 7 (reliability test 28): a source larger than the limit (announced or not), one
/// that never ends, one that drips a byte a second, one that lies about its length: each
/// import stops at the limit or the timeout with a clear error and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_stop_at_the_limits_and_store_nothing() {
    let (base, _src) = source().await;
    let (_p, c, url) = serve_for_imports(&[
        allow_loopback(),
        ("FMS_DOWNLOADER__MAX_SIZE", "4MiB".into()),
        ("FMS_DOWNLOADER__TIMEOUT", "6s".into()),
        ("FMS_DOWNLOADER__IDLE_TIMEOUT", "2s".into()),
        ("FMS_DOWNLOADER__RETRIES", "2".into()),
    ]);
    let token = new_user(&c, &url).await;
    for (path, code) in [
        ("f/8388608/1", "too_large"),
        ("f/8388608/2?chunked=1", "too_large"),
        ("f/1/3?endless=1", "too_large"),
        ("f/1/4?drip=1", "timeout"),
        ("f/3000000/5?lie=1000000", "source_unavailable"),
    ] {
        let started = std::time::Instant::now();
        let j = import(&c, &url, &token, json!({"url": format!("{base}/{path}")})).await;
        assert_eq!(j["state"], "failed", "{path}: {j}");
        assert_eq!(j["error"]["code"], code, "{path}: {j}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(file_count(&c, &url, &token).await, 0, "nothing stored");
}

/// Issue 7 (reliability tests 25–27): with no allowlist, every spelling of a loopback,
/// private or otherwise internal address is refused before any connection — a decoy
/// listener on the loopback port named counts 0 connections — and so is a redirect from
/// an allowed host to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_before_any_connection() {
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = decoy.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while decoy.accept().await.is_ok() {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let (_p, c, url) = serve_for_imports(&[]);
    let token = new_user(&c, &url).await;
    let forms = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://localhost.:{port}/"),
        format!("http://LOCALHOST:{port}/"),
        format!("http://sub.localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://017700000001:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://127.0.0.2:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://0:{port}/"),
        format!("http://[::]:{port}/"),
        format!("http://[64:ff9b::7f00:1]:{port}/"),
        format!("http://[2002:7f00:1::]:{port}/"),
        format!("http://user@127.0.0.1:{port}/"),
        format!("http://example.com@127.0.0.1:{port}/"),
        "http://10.0.0.1/".into(),
        "http://172.16.0.1/".into(),
        "http://192.168.1.1/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://100.64.0.1/".into(),
        "http://[fd00::1]/".into(),
        "http://[fe80::1]/".into(),
        "http://224.0.0.1/".into(),
        "http://255.255.255.255/".into(),
        "file:///etc/passwd".into(),
        "gopher://127.0.0.1:70/".into(),
        "ftp://127.0.0.1/".into(),
        "data:text/plain,hello".into(),
    ];
    for form in &forms {
        let (s, e) = start_import(&c, &url, &token, json!({"url": form})).await;
        assert_eq!(s, 400, "{form}: {e}");
        assert_eq!(e["error"]["code"], "url_refused", "{form}: {e}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was dialed");
    assert_eq!(file_count(&c, &url, &token).await, 0);
    eprintln!("{} forms refused, 0 connections", forms.len());
}

/// Issue 7: a 1 GiB import streams through in bounded memory (the server's peak RSS stays
/// under 256 MiB) and stores exactly the source's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_import_streams_in_bounded_memory() {
    let (base, _src) = source().await;
    let (server, c, url) = serve_for_imports(&[allow_loopback()]);
    let token = new_user(&c, &url).await;
    let size = 1u64 << 30;
    let started = std::time::Instant::now();
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/{size}/11")}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(j["state"], "completed", "{j}");
    let peak = proc_kib(server.child.id(), "VmHWM:");
    let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
    assert_eq!(f["size"], size);
    assert_eq!(f["content_hash"], blake3_of(11, size));
    eprintln!("1 GiB import in {took:?}; server peak RSS {peak} KiB");
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
}

/// Issue 7: imports from Google Drive (a file, a Google Doc exported, a 429, a cut resumed
/// with Range), Dropbox (path, id, non-ASCII path, shared link, a cut resumed on the POST
/// download) and S3 (SigV4-signed bucket + key, re-signed for the resumed request; a
/// presigned URL), all against local servers that follow the providers' documented shapes
/// and check tokens and signatures; bad tokens, missing files and malformed requests each
/// get their error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_from_drive_dropbox_and_s3() {
    let (base, src) = source().await;
    let (_p, c, url) = serve_for_imports(&[
        allow_loopback(),
        ("FMS_DOWNLOADER__GOOGLE_API_URL", base.clone()),
        ("FMS_DOWNLOADER__DROPBOX_CONTENT_URL", base.clone()),
    ]);
    let token = new_user(&c, &url).await;
    let check = |j: &Value, name: &str, seed: u64, size: u64| {
        let (c, url, token, j, name) = (
            c.clone(),
            url.clone(),
            token.clone(),
            j.clone(),
            name.to_string(),
        );
        async move {
            assert_eq!(j["state"], "completed", "{name}: {j}");
            let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
            assert_eq!(f["name"], name, "{f}");
            assert_eq!(f["size"], size, "{f}");
            assert_eq!(f["content_hash"], blake3_of(seed, size), "{name}");
        }
    };
    let drive =
        |id: &str, tok: &str| json!({"source": "google_drive", "file_id": id, "access_token": tok});

    // Google Drive.
    let j = import(&c, &url, &token, drive("photo1", "drive-token")).await;
    check(&j, "photo.jpg", 21, 10 << 20).await;
    assert_eq!(
        j["source"],
        json!({"type": "google_drive", "file_id": "photo1"}),
        "no token shown"
    );
    let j = import(&c, &url, &token, drive("doc1", "drive-token")).await;
    check(&j, "Plan.docx", 22, 100_000).await;
    let mut pdf = drive("doc1", "drive-token");
    pdf["export_mime_type"] = json!("application/pdf");
    let j = import(&c, &url, &token, pdf).await;
    check(&j, "Plan.pdf", 25, 100_000).await;
    let j = import(&c, &url, &token, drive("slow1", "drive-token")).await;
    check(&j, "slow.txt", 24, 1000).await;
    let before = src.requests.load(Ordering::Relaxed);
    let j = import(&c, &url, &token, drive("cut1", "drive-token")).await;
    check(&j, "cut.bin", 23, 20 << 20).await;
    assert_eq!(
        src.requests.load(Ordering::Relaxed) - before,
        3,
        "metadata, media, resumed media"
    );
    for (body, code) in [
        (drive("photo1", "expired"), "source_denied"),
        (drive("nope", "drive-token"), "source_not_found"),
        (drive("folder1", "drive-token"), "source_error"),
    ] {
        let j = import(&c, &url, &token, body.clone()).await;
        assert_eq!(j["state"], "failed", "{body}");
        assert_eq!(j["error"]["code"], code, "{body}: {j}");
    }

    // Dropbox.
    let dbx = |path: &str| json!({"source": "dropbox", "path": path, "access_token": "dbx-token"});
    let j = import(&c, &url, &token, dbx("/docs/report.pdf")).await;
    check(&j, "report.pdf", 31, 3 << 20).await;
    let j = import(&c, &url, &token, dbx("id:abc123")).await;
    check(&j, "report.pdf", 31, 3 << 20).await;
    let j = import(&c, &url, &token, dbx("/résumé.txt")).await;
    check(&j, "résumé.txt", 33, 5000).await;
    let before = src.requests.load(Ordering::Relaxed);
    let j = import(&c, &url, &token, dbx("/docs/cut.bin")).await;
    check(&j, "cut.bin", 34, 8 << 20).await;
    assert_eq!(
        src.requests.load(Ordering::Relaxed) - before,
        2,
        "cut once, resumed once"
    );
    let j = import(
        &c,
        &url,
        &token,
        json!({"source": "dropbox", "shared_link": "https://www.dropbox.com/s/abc/shared.bin?dl=0",
               "access_token": "dbx-token"}),
    )
    .await;
    check(&j, "shared.bin", 32, 1 << 20).await;
    let j = import(&c, &url, &token, dbx("/missing.txt")).await;
    assert_eq!(j["error"]["code"], "source_not_found", "{j}");
    let mut bad = dbx("/docs/report.pdf");
    bad["access_token"] = json!("wrong");
    let j = import(&c, &url, &token, bad).await;
    assert_eq!(j["error"]["code"], "source_denied", "{j}");

    // S3: signed bucket + key (the cut forces a second, freshly signed request).
    let s3 = |secret: &str| {
        json!({"source": "s3", "endpoint": format!("{base}/s3"), "region": "eu-test-1",
               "bucket": "bkt", "key": "dir/obj 1.bin", "access_key_id": "AKIDTEST",
               "secret_access_key": secret})
    };
    let before = src.requests.load(Ordering::Relaxed);
    let j = import(&c, &url, &token, s3("s3-secret")).await;
    check(&j, "obj 1.bin", 41, 2 << 20).await;
    assert_eq!(src.requests.load(Ordering::Relaxed) - before, 2);
    assert!(!j["source"].to_string().contains("s3-secret"));
    let j = import(&c, &url, &token, s3("wrong-secret")).await;
    assert_eq!(j["error"]["code"], "source_denied", "{j}");
    let j = import(
        &c,
        &url,
        &token,
        json!({"source": "s3", "url": format!("{base}/f/4096/42?X-Amz-Signature=abc&X-Amz-Credential=x")}),
    )
    .await;
    check(&j, "42", 42, 4096).await;
    assert!(!j["source"].to_string().contains("Signature"), "{j}");

    // Refused at once.
    for (body, code) in [
        (
            json!({"source": "google_drive", "file_id": "photo1"}),
            "bad_request",
        ),
        (drive("../etc", "drive-token"), "invalid_source"),
        (
            json!({"source": "dropbox", "access_token": "dbx-token"}),
            "bad_request",
        ),
        (dbx("relative/path"), "invalid_source"),
        (json!({"source": "s3", "bucket": "bkt"}), "bad_request"),
        (
            json!({"source": "s3", "bucket": "Bad_Bucket", "key": "k", "endpoint": base.clone()}),
            "invalid_source",
        ),
    ] {
        let (s, e) = start_import(&c, &url, &token, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
    }
}
