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

/// Start the source on a loopback port: (base URL, state).
async fn source() -> (String, Arc<Source>) {
    let src = Arc::new(Source::default());
    let app = axum::Router::new()
        .route("/f/{size}/{seed}", axum::routing::get(serve_file))
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
        (json!({"source": "google_drive"}), 501, "not_implemented"),
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
