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
    /// OAuth: code -> PKCE challenge; refresh grants honoured.
    challenges: Mutex<std::collections::HashMap<String, String>>,
    refreshes: AtomicU64,
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
    /// Answer a resume (a Range request) with a whole, shorter version (200).
    shrink: Option<u32>,
    /// Stall this many seconds after the first 512 KiB.
    pause: Option<u64>,
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
    if k.shrink.is_some() && start.is_some_and(|s| s > 0) {
        let short = size / 2;
        let body = Bytes::from(content(seed + 1, 0, short as usize));
        src.sent.fetch_add(short, Ordering::Relaxed);
        return ([(header::CONTENT_LENGTH, short.to_string())], body).into_response();
    }
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
    let pause = k.pause;
    let body = futures_util::stream::unfold(from, move |pos| {
        let src = src2.clone();
        async move {
            if let Some(secs) = pause
                && pos == 512 << 10
            {
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
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
        "empty1" => ("empty.txt", "text/plain", 0, 26),
        "big1" => ("big.bin", "application/octet-stream", 1 << 30, 12),
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
    if !mime.starts_with("application/vnd.google-apps.") {
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
        Some("/empty.txt") => Some(("empty.txt", 0, 35, false)),
        Some("/big.bin") => Some(("big.bin", 1 << 30, 13, false)),
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
    match (bucket.as_str(), key.as_str()) {
        ("bkt", "dir/obj 1.bin") => {
            ranged(&src, &h, 41, 2 << 20, Some(("s3-cut".into(), 1 << 20)), &[])
        }
        ("bkt", "empty") => ranged(&src, &h, 43, 0, None, &[]),
        ("bkt", "big.bin") => ranged(&src, &h, 14, 1 << 30, None, &[]),
        _ => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

/// The provider's consent page, consenting at once: back to `redirect_uri` with a code
/// (bound to the PKCE challenge).
async fn oauth_authorize(
    State(src): State<Arc<Source>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let ok = q.get("response_type").map(String::as_str) == Some("code")
        && q.get("code_challenge_method").map(String::as_str) == Some("S256")
        && (q.get("client_id").map(String::as_str) == Some("cid"));
    if !ok {
        return json_error(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
    }
    let code = if q["redirect_uri"].contains("/dropbox/") {
        "dbx-code"
    } else {
        "good-code"
    };
    src.challenges
        .lock()
        .unwrap()
        .insert(code.to_string(), q["code_challenge"].clone());
    let mut to = url::Url::parse(&q["redirect_uri"]).unwrap();
    to.query_pairs_mut()
        .append_pair("code", code)
        .append_pair("state", &q["state"]);
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

/// The token endpoint: codes (PKCE checked) and refresh tokens. Drive's first access token
/// is already expired, so the first use must refresh it.
async fn oauth_token(State(src): State<Arc<Source>>, body: String) -> Response {
    use base64::Engine;
    use sha2::Digest;
    let f: std::collections::HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != "cid" || get("client_secret") != "csecret" {
        return json_error(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let grant = json_error(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
    match get("grant_type") {
        "authorization_code" => {
            let Some(challenge) = src.challenges.lock().unwrap().remove(get("code")) else {
                return grant;
            };
            let verified = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(get("code_verifier").as_bytes()));
            if verified != challenge || !get("redirect_uri").ends_with("/callback") {
                return grant;
            }
            if get("code") == "dbx-code" {
                axum::Json(json!({"access_token": "dbx-token", "token_type": "bearer",
                                  "expires_in": 14400, "refresh_token": "rt-dropbox"}))
                .into_response()
            } else {
                axum::Json(
                    json!({"access_token": "stale-token", "token_type": "Bearer",
                                  "expires_in": 1, "refresh_token": "rt-drive"}),
                )
                .into_response()
            }
        }
        "refresh_token" if get("refresh_token") == "rt-drive" => {
            src.refreshes.fetch_add(1, Ordering::SeqCst);
            axum::Json(
                json!({"access_token": "drive-token", "token_type": "Bearer", "expires_in": 3600}),
            )
            .into_response()
        }
        _ => grant,
    }
}

/// Drive `files.list` of the root folder.
async fn drive_list(
    Query(q): Query<std::collections::HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer drive-token") {
        return json_error(StatusCode::UNAUTHORIZED, json!({"error": {"code": 401}}));
    }
    if q.get("q").map(String::as_str) != Some("'root' in parents and trashed = false") {
        return json_error(StatusCode::BAD_REQUEST, json!({"error": {"code": 400}}));
    }
    axum::Json(json!({"files": [
        {"id": "photo1", "name": "photo.jpg", "mimeType": "image/jpeg", "size": "10485760"},
        {"id": "dir1", "name": "Holidays", "mimeType": "application/vnd.google-apps.folder"},
    ]}))
    .into_response()
}

/// Dropbox `list_folder` of the top.
async fn dropbox_list(h: HeaderMap, body: String) -> Response {
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer dbx-token") {
        return json_error(
            StatusCode::UNAUTHORIZED,
            json!({"error_summary": "invalid_access_token/"}),
        );
    }
    let arg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if arg["path"] != "" {
        return json_error(
            StatusCode::CONFLICT,
            json!({"error_summary": "path/not_found/"}),
        );
    }
    axum::Json(json!({"entries": [
        {".tag": "folder", "name": "docs", "id": "id:d1", "path_display": "/docs"},
        {".tag": "file", "name": "report.pdf", "id": "id:abc123", "path_display": "/docs/report.pdf", "size": 3145728},
    ], "cursor": "c1", "has_more": false}))
    .into_response()
}

/// A listener that counts connections and answers none: (its URL, the count).
async fn decoy() -> (String, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while l.accept().await.is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("http://{addr}"), n)
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
        .route("/oauth/authorize", axum::routing::get(oauth_authorize))
        .route("/oauth/token", axum::routing::post(oauth_token))
        .route("/drive/v3/files", axum::routing::get(drive_list))
        .route("/2/files/list_folder", axum::routing::post(dropbox_list))
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
        let (_, j) = get_json(c, format!("{url}/api/jobs/{id}"), token).await;
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
    get_json(c, format!("{url}/api/files/{id}"), token).await.1
}

async fn file_count(c: &reqwest::Client, url: &str, token: &str) -> usize {
    let (_, v) = get_json(c, format!("{url}/api/files"), token).await;
    v["items"].as_array().unwrap().len()
}

/// Issue 7: imports from a URL store exactly the source's bytes — empty, 10 MiB, without a
/// length, through redirects, after a 429, and after a connection cut at 90% (resumed with
/// Range, little fetched twice) — and the job says how it went; bad requests are refused at
/// once with clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_imports_store_the_source_bytes_and_resume_after_a_cut() {
    let (base, src) = source().await;
    // Proxy variables are ignored (reliability test 27): a decoy proxy sees nothing.
    let (proxy, proxied) = decoy().await;
    let (_p, c, url) = serve_for_imports(&[
        allow_loopback(),
        ("HTTP_PROXY", proxy.clone()),
        ("http_proxy", proxy.clone()),
        ("HTTPS_PROXY", proxy.clone()),
        ("ALL_PROXY", proxy.clone()),
        // Shorter than the stall below: the downloader keeps the upload alive meanwhile.
        ("FMS_PICKER__IDLE_TIMEOUT", "3s".into()),
    ]);
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

    // A source that stalls longer than the picker's idle timeout mid-file still completes.
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/{}/10?pause=5", 2 * MIB)}),
    )
    .await;
    assert_eq!(j["state"], "completed", "{j}");
    let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
    assert_eq!(f["content_hash"], blake3_of(10, 2 * MIB));
    // A resume answered with another, shorter version (no validator to tell): refused as
    // changed, nothing stored.
    let files_before = file_count(&c, &url, &token).await;
    let j = import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/{}/12?cut={}&noetag=1&shrink=1", 4 * MIB, 3 * MIB)}),
    )
    .await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(
        j["error"]["message"].as_str().unwrap().contains("changed"),
        "{j}"
    );
    assert_eq!(file_count(&c, &url, &token).await, files_before);

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
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "no request went through the proxy"
    );
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
        ("FMS_DOWNLOADER__MAX_PER_USER", "1".into()),
        ("FMS_PICKER__QUOTA", "3MiB".into()),
    ]);
    let token = new_user(&c, &url).await;
    // One import at a time per user: a second is refused while the first runs.
    let (s, first) = start_import(
        &c,
        &url,
        &token,
        json!({"url": format!("{base}/f/1/9?drip=1")}),
    )
    .await;
    assert_eq!(s, 202, "{first}");
    let (s, e) = start_import(&c, &url, &token, json!({"url": format!("{base}/f/1/1")})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (429, Some("too_many_imports")),
        "{e}"
    );
    let other = new_user(&c, &url).await;
    let j = import(&c, &url, &other, json!({"url": format!("{base}/f/1000/1")})).await;
    assert_eq!(j["state"], "completed", "another user is not held up: {j}");
    let j = finished(&c, &url, &token, first["id"].as_str().unwrap()).await;
    assert_eq!(j["error"]["code"], "timeout", "{j}");
    for (path, code) in [
        ("f/8388608/1", "too_large"),
        ("f/8388608/2?chunked=1", "too_large"),
        ("f/1/3?endless=1", "too_large"),
        ("f/1/4?drip=1", "timeout"),
        ("f/3670016/6", "quota_exceeded"),
        ("f/3670016/7?chunked=1", "quota_exceeded"),
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
    let (decoy_url, accepted) = decoy().await;
    let port: u16 = decoy_url.rsplit(':').next().unwrap().parse().unwrap();
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
async fn one_gib_imports_from_each_source_stream_in_bounded_memory() {
    let (base, _src) = source().await;
    let (server, c, url) = serve_for_imports(&[
        allow_loopback(),
        ("FMS_DOWNLOADER__GOOGLE_API_URL", base.clone()),
        ("FMS_DOWNLOADER__DROPBOX_CONTENT_URL", base.clone()),
    ]);
    let token = new_user(&c, &url).await;
    let size = 1u64 << 30;
    for (body, seed) in [
        (json!({"url": format!("{base}/f/{size}/11")}), 11),
        (
            json!({"source": "google_drive", "file_id": "big1", "access_token": "drive-token"}),
            12,
        ),
        (
            json!({"source": "dropbox", "path": "/big.bin", "access_token": "dbx-token"}),
            13,
        ),
        (
            json!({"source": "s3", "endpoint": format!("{base}/s3"), "region": "eu-test-1",
                   "bucket": "bkt", "key": "big.bin", "access_key_id": "AKIDTEST",
                   "secret_access_key": "s3-secret"}),
            14,
        ),
    ] {
        let started = std::time::Instant::now();
        let j = import(&c, &url, &token, body.clone()).await;
        let took = started.elapsed();
        assert_eq!(j["state"], "completed", "{body}: {j}");
        let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
        assert_eq!(f["size"], size);
        assert_eq!(f["content_hash"], blake3_of(seed, size), "{body}");
        eprintln!("1 GiB import ({}) in {took:?}", body["source"]);
    }
    let peak = proc_kib(server.child.id(), "VmHWM:");
    eprintln!("server peak RSS after 4 x 1 GiB: {peak} KiB");
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
    let j = import(&c, &url, &token, drive("empty1", "drive-token")).await;
    check(&j, "empty.txt", 26, 0).await;
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
    let j = import(&c, &url, &token, dbx("/empty.txt")).await;
    check(&j, "empty.txt", 35, 0).await;
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
    let mut empty = s3("s3-secret");
    empty["key"] = json!("empty");
    let j = import(&c, &url, &token, empty).await;
    check(&j, "empty", 43, 0).await;
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

/// Issue 7: connected accounts. The OAuth authorization-code flow with PKCE, run as a
/// browser would (authorize URL -> the provider's consent -> our callback), for Drive and
/// Dropbox; tokens stored sealed (no token text anywhere in the data directory); an
/// expired access token refreshed before an import uses it, once; the remote drive browsed;
/// a used state, a provider's error, an unconnected or disconnected account refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_accounts_authorize_refresh_browse_and_import() {
    let (base, src) = source().await;
    let mut env = vec![
        allow_loopback(),
        ("FMS_DOWNLOADER__GOOGLE_API_URL", base.clone()),
        ("FMS_DOWNLOADER__DROPBOX_CONTENT_URL", base.clone()),
    ];
    for p in ["GOOGLE_DRIVE", "DROPBOX"] {
        for (k, v) in [
            ("CLIENT_ID", "cid".to_string()),
            ("CLIENT_SECRET", "csecret".to_string()),
            ("AUTH_URL", format!("{base}/oauth/authorize")),
            ("TOKEN_URL", format!("{base}/oauth/token")),
            ("API_URL", base.clone()),
        ] {
            let name: &'static str = Box::leak(format!("FMS_CONNECT__{p}__{k}").into_boxed_str());
            env.push((name, v));
        }
    }
    let (server, c, url) = serve_for_imports(&env);
    let token = new_user(&c, &url).await;
    let get = |path: String| get_json(&c, path, &token);
    let (s, v) = get(format!("{url}/api/connect")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"providers": ["google_drive", "dropbox"], "accounts": []})
    );
    let photo = json!({"source": "google_drive", "file_id": "photo1"});
    let (s, e) = start_import(&c, &url, &token, photo.clone()).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("not_connected")),
        "{e}"
    );

    // Connect Drive as a browser would: our authorize (sets the binding cookie) -> the
    // provider's consent (redirects back with a code) -> our callback (with the cookie).
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = |provider: &'static str, token: String| {
        let (browser, url) = (browser.clone(), url.clone());
        async move {
            let r = browser
                .get(format!("{url}/api/connect/{provider}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let cookie = r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let a: Value = r.json().await.unwrap();
            let authorize = a["authorize_url"].as_str().unwrap().to_string();
            let r = browser.get(&authorize).send().await.unwrap();
            assert_eq!(r.status(), 302, "the provider sends the browser back");
            let callback = r.headers()["location"].to_str().unwrap().to_string();
            (cookie, authorize, callback)
        }
    };
    let finish = |callback: String, cookie: Option<String>| {
        let browser = browser.clone();
        async move {
            let mut rq = browser.get(callback);
            if let Some(c) = cookie {
                rq = rq.header("cookie", c);
            }
            rq.send().await.unwrap().status().as_u16()
        }
    };
    // Someone else's link (the attacker's authorization, followed by a browser without its
    // cookie) links nothing.
    let attacker = new_user(&c, &url).await;
    let (_, _, callback) = start("google_drive", attacker.clone()).await;
    assert_eq!(
        finish(callback, Some("fms_connect=forged".into())).await,
        400
    );
    let (_, _, callback) = start("google_drive", attacker.clone()).await;
    assert_eq!(finish(callback, None).await, 400);
    let (_, v) = get_json(&c, format!("{url}/api/connect"), &attacker).await;
    assert_eq!(v["accounts"], json!([]), "nothing linked to the attacker");
    let (cookie, authorize, callback) = start("google_drive", token.clone()).await;
    assert!(authorize.starts_with(&format!("{base}/oauth/authorize?")));
    assert!(
        authorize.contains("code_challenge_method=S256")
            && authorize.contains("access_type=offline")
    );
    assert_eq!(finish(callback.clone(), Some(cookie.clone())).await, 200);
    // The same callback again: its state is used up.
    assert_eq!(finish(callback, Some(cookie)).await, 400);
    let (_, v) = get(format!("{url}/api/connect")).await;
    assert_eq!(v["accounts"][0]["provider"], "google_drive", "{v}");
    // Sealed at rest: no token text in any file of the data directory.
    let dir = server._dir.as_ref().unwrap().path().to_path_buf();
    let mut files = vec![dir];
    while let Some(f) = files.pop() {
        if f.is_dir() {
            files.extend(std::fs::read_dir(&f).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&f) {
            for secret in [&b"rt-drive"[..], b"stale-token"] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{} holds a token in clear",
                    f.display()
                );
            }
        }
    }

    // The expired access token is refreshed before the import, once.
    let j = import(&c, &url, &token, photo.clone()).await;
    assert_eq!(j["state"], "completed", "{j}");
    let f = file(&c, &url, &token, j["file_id"].as_str().unwrap()).await;
    assert_eq!(f["content_hash"], blake3_of(21, 10 << 20));
    assert_eq!(src.refreshes.load(Ordering::SeqCst), 1);
    let j = import(&c, &url, &token, photo.clone()).await;
    assert_eq!(j["state"], "completed", "{j}");
    assert_eq!(
        src.refreshes.load(Ordering::SeqCst),
        1,
        "still fresh: not refreshed again"
    );
    let (s, l) = get(format!("{url}/api/connect/google_drive/list")).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["items"][0]["name"], "photo.jpg");
    assert_eq!(l["items"][0]["size"], 10 << 20);
    assert_eq!(l["items"][1]["kind"], "folder");

    // Dropbox.
    let (cookie, authorize, callback) = start("dropbox", token.clone()).await;
    assert!(authorize.contains("token_access_type=offline"));
    assert_eq!(finish(callback, Some(cookie)).await, 200);
    let (s, l) = get(format!("{url}/api/connect/dropbox/list")).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["items"][1]["path"], "/docs/report.pdf");
    let j = import(
        &c,
        &url,
        &token,
        json!({"source": "dropbox", "path": "/docs/report.pdf"}),
    )
    .await;
    assert_eq!(j["state"], "completed", "{j}");

    // Refusals.
    let r = c
        .get(format!(
            "{url}/api/connect/google_drive/callback?error=access_denied&state=x"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!(
            "{url}/api/connect/google_drive/callback?code=good-code&state=forged"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(get(format!("{url}/api/connect/onedrive")).await.0, 404);
    let (s, _) = get_json(
        &c,
        format!("{url}/api/connect/google_drive/list"),
        &attacker,
    )
    .await;
    assert_eq!(s, 400, "another user has no account here");
    let del = |p: &'static str| {
        let (c, url, token) = (c.clone(), url.clone(), token.clone());
        async move {
            c.delete(format!("{url}/api/connect/{p}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(del("google_drive").await, 204);
    assert_eq!(del("google_drive").await, 404);
    let (s, e) = start_import(&c, &url, &token, photo).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("not_connected")),
        "{e}"
    );
}
