//! Resumable uploads: tus 1.0 (<https://tus.io/protocols/resumable-upload>) at
//! `/api/uploads/`, with the creation, creation-with-upload, creation-defer-length,
//! termination, expiration and checksum extensions.
//!
//! The bytes go straight into a chunk-engine session (no temporary files): the offset a
//! client is told is the session's acknowledged offset, made durable by a checkpoint before
//! it is reported, so after a restart (`kill -9` included) `HEAD` reports exactly what was
//! acknowledged. A PATCH without a checksum is acknowledged every [`CHECKPOINT_EVERY`] bytes
//! and when its body ends, even early; one with `Upload-Checksum` only whole, after the
//! digest matched (else 460 and the offset is unchanged). When the last byte arrives the
//! session becomes an ordinary file (listed, downloadable, shareable; `file.uploaded`).
//!
//! Only the creating user can see, resume or end an upload (anyone else: 404). Two PATCHes
//! to one upload never interleave: the engine lets one writer hold a session (the second
//! gets 423).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use fms_auth::verify::Authenticated;
use fms_engine::SessionId;
use fms_platform::error::ApiError;
use futures_util::StreamExt;
use sha1::Digest as _;

use crate::Picker;
use crate::api::{
    Budget, INGEST_PIECE, check_name, commit_stored, db_error, now_ms, over_quota, too_large,
};
use crate::engine::{Append, EngineError, Gather};
use crate::meta::UploadRow;

/// The protocol version spoken (and the only one accepted).
pub const VERSION: &str = "1.0.0";
const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum";
const ALGORITHMS: &str = "sha1,md5,blake3";
const OCTETS: &str = "application/offset+octet-stream";
/// A PATCH without a checksum is acknowledged every this many bytes: a dropped connection
/// costs the client at most this much (plus one chunk) to send again.
pub const CHECKPOINT_EVERY: u64 = 8 << 20;
/// Longest `Upload-Metadata` header.
const MAX_METADATA: usize = 4096;
/// Completed and expired uploads are remembered this long (HEAD answers the final offset to
/// a client that lost the last response; an expired one gets 410 rather than 404).
pub const REMEMBER_MS: i64 = 24 * 3600 * 1000;

type Svc = State<Arc<Picker>>;

pub fn routes() -> Router<Arc<Picker>> {
    Router::new()
        .route("/api/uploads", post(create).options(options))
        .route("/api/uploads/", post(create).options(options))
        .route(
            "/api/uploads/{id}",
            axum::routing::head(status)
                .patch(append)
                .delete(terminate)
                .options(options),
        )
        .layer(axum::middleware::map_response(stamp))
}

/// Every tus response says the protocol version; a 412 also says which versions we speak.
async fn stamp(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if r.status() == StatusCode::PRECONDITION_FAILED {
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(VERSION));
    }
    r
}

fn tus_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        code,
        message,
    )
}

fn check_version(h: &HeaderMap) -> Result<(), ApiError> {
    match h.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(v) if v == VERSION.as_bytes() => Ok(()),
        Some(_) => Err(tus_error(
            412,
            "tus_version",
            format!("Tus-Resumable must be {VERSION}"),
        )),
        None => Err(tus_error(
            412,
            "tus_version",
            format!("the Tus-Resumable header is required ({VERSION})"),
        )),
    }
}

/// A header holding a non-negative decimal integer.
fn number(h: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = h.get(name) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{name} must be a non-negative integer"
        )));
    }
    s.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} is out of range")))
}

fn http_date(ms: i64) -> HeaderValue {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    HeaderValue::from_str(&httpdate::fmt_http_date(t))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
/// Returns the file name it names (`filename`, else `name`), checked like any file name.
fn parse_metadata(raw: &str) -> Result<Option<String>, ApiError> {
    if raw.len() > MAX_METADATA {
        return Err(ApiError::bad_request(format!(
            "Upload-Metadata is longer than {MAX_METADATA} bytes"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut name = None;
    let mut fallback = None;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, ' ');
        let key = it.next().unwrap_or("");
        let value = it.next().map(str::trim).unwrap_or("");
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(ApiError::bad_request(
                "Upload-Metadata keys must be printable ASCII without spaces or commas",
            ));
        }
        if !seen.insert(key.to_string()) {
            return Err(ApiError::bad_request(format!(
                "Upload-Metadata repeats the key {key}"
            )));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| {
                ApiError::bad_request(format!("Upload-Metadata {key} is not valid base64"))
            })?;
        if key == "filename" || key == "name" {
            let text = String::from_utf8(decoded).map_err(|_| {
                ApiError::bad_request(format!("Upload-Metadata {key} is not UTF-8"))
            })?;
            let checked = check_name(&text)?.to_string();
            if key == "filename" {
                name = Some(checked);
            } else {
                fallback = Some(checked);
            }
        }
    }
    Ok(name.or(fallback))
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Md5(md5::Md5, Vec<u8>),
    Blake3(Box<blake3::Hasher>, Vec<u8>),
}

impl Checksum {
    fn parse(h: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
        let Some(v) = h.get("upload-checksum") else {
            return Ok(None);
        };
        let s = v.to_str().unwrap_or("");
        let (alg, digest) = s.split_once(' ').ok_or_else(|| {
            ApiError::bad_request("Upload-Checksum must be `<algorithm> <base64 digest>`")
        })?;
        let want = base64::engine::general_purpose::STANDARD
            .decode(digest.trim())
            .map_err(|_| ApiError::bad_request("the Upload-Checksum digest is not base64"))?;
        let c = match alg {
            "sha1" => Checksum::Sha1(sha1::Sha1::new(), want),
            "md5" => Checksum::Md5(md5::Md5::new(), want),
            "blake3" => Checksum::Blake3(Box::default(), want),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "checksum algorithm {alg:?} is not supported (supported: {ALGORITHMS})"
                )));
            }
        };
        Ok(Some(c))
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Sha1(h, _) => h.update(data),
            Checksum::Md5(h, _) => h.update(data),
            Checksum::Blake3(h, _) => {
                h.update(data);
            }
        }
    }

    fn matches(self) -> bool {
        match self {
            Checksum::Sha1(h, want) => h.finalize().as_slice() == want.as_slice(),
            Checksum::Md5(h, want) => h.finalize().as_slice() == want.as_slice(),
            Checksum::Blake3(h, want) => h.finalize().as_bytes().as_slice() == want.as_slice(),
        }
    }
}

/// `OPTIONS`: what this server speaks (no authentication: browsers send it as a preflight).
async fn options(State(p): Svc) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(VERSION));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(ALGORITHMS),
    );
    if let Ok(v) = HeaderValue::from_str(&p.cfg.max_file_size.0.to_string()) {
        h.insert("tus-max-size", v);
    }
    r
}

fn session_of(row: &UploadRow) -> Result<SessionId, ApiError> {
    row.session_id
        .parse()
        .map_err(|e| ApiError::internal(format!("upload {} has a bad session id: {e}", row.id)))
}

/// The upload `id` if `user` created it: 404 otherwise (whether it exists is not told),
/// 410 if it expired unfinished.
async fn owned_upload(p: &Picker, user: &str, id: &str) -> Result<UploadRow, ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found());
    }
    let row = p
        .meta
        .upload(id)
        .await
        .map_err(db_error)?
        .filter(|r| r.owner_id == user)
        .ok_or_else(ApiError::not_found)?;
    if row.file_id.is_none() && row.expires_at <= now_ms() {
        return Err(tus_error(410, "expired", "this upload expired unfinished"));
    }
    Ok(row)
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Engine(fms_engine::Error::OffsetMismatch { given, current, .. }) => tus_error(
            409,
            "offset_mismatch",
            format!("Upload-Offset is {given}, but the upload is at {current}"),
        ),
        EngineError::Engine(fms_engine::Error::SessionBusy(_)) => tus_error(
            423,
            "upload_busy",
            "another request is writing to this upload; retry when it ends",
        ),
        EngineError::Engine(fms_engine::Error::SessionNotFound(_)) => {
            tus_error(410, "expired", "this upload expired unfinished")
        }
        e => ApiError::internal(e),
    }
}

/// `POST /api/uploads`: create an upload (and take its first bytes, if sent).
async fn create(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    let user = claims.sub;
    let h = request.headers().clone();
    check_version(&h)?;
    if h.contains_key("upload-concat") {
        return Err(ApiError::bad_request(
            "the concatenation extension is not offered by this server",
        ));
    }
    let length = number(&h, "upload-length")?;
    let deferred = match h.get("upload-defer-length").map(HeaderValue::as_bytes) {
        None => false,
        Some(b"1") => true,
        Some(_) => return Err(ApiError::bad_request("Upload-Defer-Length must be 1")),
    };
    if length.is_some() == deferred {
        return Err(ApiError::bad_request(
            "send exactly one of Upload-Length and Upload-Defer-Length: 1",
        ));
    }
    let mut budget = Budget::of(&p, &user).await?;
    if let Some(n) = length {
        if n > budget.max_file {
            return Err(too_large(budget.max_file));
        }
        if n > budget.room() {
            return Err(over_quota(budget.quota, budget.used));
        }
    }
    let metadata = h
        .get("upload-metadata")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request("Upload-Metadata must be ASCII"))
        })
        .transpose()?
        .unwrap_or_default();
    let name = parse_metadata(&metadata)?.unwrap_or_else(|| "untitled".to_string());
    let with_body = is_octets(&h);
    if !with_body && number(&h, "content-length")?.unwrap_or(0) > 0 {
        return Err(tus_error(
            415,
            "unsupported_media_type",
            format!("upload bytes must be sent as {OCTETS}"),
        ));
    }
    let session = p
        .engine
        .create_session(p.cfg.upload_expiry.0)
        .await
        .map_err(ApiError::internal)?;
    let row = UploadRow {
        id: uuid::Uuid::now_v7().simple().to_string(),
        owner_id: user.clone(),
        session_id: session.id.to_string(),
        length,
        metadata,
        name,
        created_at: now_ms(),
        expires_at: session.expires_ms as i64,
        file_id: None,
    };
    if let Err(e) = p.meta.insert_upload(&row).await {
        let _ = p.engine.abort_session(session.id).await;
        return Err(db_error(e));
    }
    metrics::counter!("picker_tus_uploads_created_total").increment(1);
    let mut r = StatusCode::CREATED.into_response();
    let location = format!("/api/uploads/{}", row.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert("upload-expires", http_date(row.expires_at));
    if with_body || length == Some(0) {
        // creation-with-upload (or an empty upload, complete at once). If the bytes fail,
        // the upload still exists: the client learns the offset and resumes.
        let checksum = Checksum::parse(&h)?;
        let body = request.into_body();
        let offset = match write(&p, &row, 0, checksum, body, &mut budget).await {
            Ok(o) => o,
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => {
                tracing::info!(upload = %row.id, error = %e.message, "creation-with-upload failed");
                acknowledged(&p, &row).await.unwrap_or(0)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
            r.headers_mut().insert("upload-offset", v);
        }
    }
    Ok(r)
}

fn is_octets(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OCTETS))
}

/// The offset an upload has acknowledged (its length once complete).
async fn acknowledged(p: &Picker, row: &UploadRow) -> Result<u64, ApiError> {
    if row.file_id.is_some() {
        return Ok(row.length.unwrap_or(0));
    }
    let info = p
        .engine
        .session(session_of(row)?)
        .await
        .map_err(engine_error)?;
    Ok(info.offset)
}

/// `HEAD /api/uploads/{id}`: where to resume.
async fn status(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let row = owned_upload(&p, &claims.sub, &id).await?;
    let offset = acknowledged(&p, &row).await?;
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        h.insert("upload-offset", v);
    }
    match row.length {
        Some(n) => {
            if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
                h.insert("upload-length", v);
            }
        }
        None => {
            h.insert("upload-defer-length", HeaderValue::from_static("1"));
        }
    }
    if !row.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&row.metadata)
    {
        h.insert("upload-metadata", v);
    }
    if row.file_id.is_none() {
        h.insert("upload-expires", http_date(row.expires_at));
    }
    Ok(r)
}

/// `PATCH /api/uploads/{id}`: the next bytes, at the offset the upload is at.
async fn append(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let h = request.headers().clone();
    check_version(&h)?;
    if !is_octets(&h) {
        return Err(tus_error(
            415,
            "unsupported_media_type",
            format!("PATCH bodies must be {OCTETS}"),
        ));
    }
    let offset = number(&h, "upload-offset")?
        .ok_or_else(|| ApiError::bad_request("the Upload-Offset header is required"))?;
    let checksum = Checksum::parse(&h)?;
    let mut row = owned_upload(&p, &claims.sub, &id).await?;
    let mut budget = Budget::of(&p, &claims.sub).await?;
    if let Some(n) = number(&h, "upload-length")? {
        match row.length {
            Some(len) if len == n => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Upload-Length was already set and cannot change",
                ));
            }
            None => {
                if n > budget.max_file {
                    return Err(too_large(budget.max_file));
                }
                if n > budget.room() {
                    return Err(over_quota(budget.quota, budget.used));
                }
                if n < offset {
                    return Err(ApiError::bad_request(
                        "Upload-Length is shorter than what was already uploaded",
                    ));
                }
                if !p
                    .meta
                    .set_upload_length(&row.id, n)
                    .await
                    .map_err(db_error)?
                {
                    return Err(tus_error(
                        409,
                        "conflict",
                        "Upload-Length was set meanwhile",
                    ));
                }
                row.length = Some(n);
            }
        }
    }
    if let Some(file) = &row.file_id {
        // Complete already: only a repeat of the final, empty PATCH is fine.
        let len = row.length.unwrap_or(0);
        if offset != len {
            return Err(tus_error(
                409,
                "offset_mismatch",
                format!("Upload-Offset is {offset}, but the upload is complete at {len}"),
            ));
        }
        if number(&h, "content-length")?.unwrap_or(0) > 0 {
            return Err(tus_error(
                413,
                "upload_too_long",
                "the upload is complete; no more bytes fit",
            ));
        }
        tracing::debug!(upload = %row.id, %file, "PATCH on a completed upload");
        return Ok(offset_response(len));
    }
    let offset = write(&p, &row, offset, checksum, request.into_body(), &mut budget).await?;
    Ok(offset_response(offset))
}

fn offset_response(offset: u64) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        r.headers_mut().insert("upload-offset", v);
    }
    r
}

/// Stream `body` into the upload's session from `offset`; complete the upload when its last
/// byte arrived. Returns the offset acknowledged at the end.
async fn write(
    p: &Picker,
    row: &UploadRow,
    offset: u64,
    mut checksum: Option<Checksum>,
    body: Body,
    budget: &mut Budget,
) -> Result<u64, ApiError> {
    let session = session_of(row)?;
    let mut app = p
        .engine
        .append(session, offset)
        .await
        .map_err(engine_error)?;
    let idle = p.cfg.idle_timeout.0;
    let whole = checksum.is_some();
    let mut stream = body.into_data_stream();
    let mut pieces = Gather::new(INGEST_PIECE);
    let mut at = offset;
    let mut since_checkpoint = 0u64;
    // Why the body stopped early, if it did.
    let mut cut_short: Option<ApiError> = None;
    loop {
        let frame = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                cut_short = Some(tus_error(
                    408,
                    "timeout",
                    format!("no upload data for {}s", idle.as_secs()),
                ));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                cut_short = Some(ApiError::bad_request(format!(
                    "the upload was interrupted: {e}"
                )));
                break;
            }
            Ok(Some(Ok(b))) => b,
        };
        let next = at + frame.len() as u64;
        if let Some(len) = row.length
            && next > len
        {
            // Nothing of this PATCH past the last checkpoint is kept.
            return Err(tus_error(
                413,
                "upload_too_long",
                format!("the body goes past Upload-Length ({len})"),
            ));
        }
        if next > budget.max_file {
            return Err(too_large(budget.max_file));
        }
        if row.length.is_none() && next > budget.room() {
            return Err(over_quota(budget.quota, budget.used));
        }
        if let Some(c) = checksum.as_mut() {
            c.update(&frame);
        }
        at = next;
        since_checkpoint += frame.len() as u64;
        if let Some(piece) = pieces.push(frame) {
            app.write(piece).await.map_err(ApiError::internal)?;
        }
        if !whole && since_checkpoint >= CHECKPOINT_EVERY {
            flush(&mut app, &mut pieces).await?;
            app.checkpoint().await.map_err(ApiError::internal)?;
            since_checkpoint = 0;
        }
    }
    if let Some(e) = cut_short {
        if !whole {
            // Keep what arrived: the client resumes from here.
            flush(&mut app, &mut pieces).await?;
            let kept = app.checkpoint().await.map_err(ApiError::internal)?;
            tracing::info!(upload = %row.id, kept, "PATCH cut short; received bytes kept");
        }
        return Err(e);
    }
    flush(&mut app, &mut pieces).await?;
    if let Some(c) = checksum
        && !c.matches()
    {
        // Dropping the append discards this PATCH: the offset stays where it was.
        drop(app);
        metrics::counter!("picker_tus_checksum_mismatches_total").increment(1);
        return Err(tus_error(
            460,
            "checksum_mismatch",
            "the body does not match Upload-Checksum; nothing of it was kept",
        ));
    }
    if row.length != Some(at) {
        return app.checkpoint().await.map_err(ApiError::internal);
    }
    complete(p, row, app, budget).await?;
    Ok(at)
}

async fn flush(app: &mut Append, pieces: &mut Gather) -> Result<(), ApiError> {
    if let Some(piece) = pieces.finish() {
        app.write(piece).await.map_err(ApiError::internal)?;
    }
    Ok(())
}

/// The last byte is in: the session becomes the user's file.
async fn complete(
    p: &Picker,
    row: &UploadRow,
    app: Append,
    budget: &mut Budget,
) -> Result<(), ApiError> {
    let info = app.finish().await.map_err(ApiError::internal)?;
    let hash = hex::encode(info.meta.hash);
    let head = head_of(p, &info).await;
    let stored = commit_stored(
        p,
        &row.owner_id,
        row.name.clone(),
        info,
        hash,
        &head,
        None::<Instant>,
        budget,
    )
    .await?;
    p.meta
        .complete_upload(&row.id, &stored.row.id, now_ms())
        .await
        .map_err(db_error)?;
    metrics::counter!("picker_tus_uploads_completed_total").increment(1);
    Ok(())
}

/// The first bytes of a stored file (to tell its type).
async fn head_of(p: &Picker, info: &fms_engine::FileInfo) -> Vec<u8> {
    let end = info.meta.size.min(crate::api::SNIFF_LEN as u64);
    let mut out = Vec::new();
    let mut frames = p.engine.read(info.id, 0, end, p.cfg.idle_timeout.0);
    while let Some(Ok(b)) = frames.next().await {
        out.extend_from_slice(&b);
    }
    out
}

/// `DELETE /api/uploads/{id}` (termination): the upload and its bytes are gone.
async fn terminate(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let row = match owned_upload(&p, &claims.sub, &id).await {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::GONE => {
            // Expired: its bytes are reclaimed anyway; forget it now.
            p.meta.delete_upload(&id).await.map_err(db_error)?;
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Err(e) => return Err(e),
    };
    if row.file_id.is_none() {
        match p.engine.abort_session(session_of(&row)?).await {
            Ok(()) | Err(EngineError::Engine(fms_engine::Error::SessionNotFound(_))) => {}
            Err(e) => return Err(engine_error(e)),
        }
    }
    p.meta.delete_upload(&row.id).await.map_err(db_error)?;
    metrics::counter!("picker_tus_uploads_terminated_total").increment(1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Forget uploads expired or completed more than [`REMEMBER_MS`] ago (the engine's GC
/// reclaims expired sessions' bytes by itself).
pub async fn forget_old(p: &Picker) -> Result<u64, sqlx::Error> {
    p.meta.forget_uploads(now_ms() - REMEMBER_MS).await
}

/// CORS for browser clients (Uppy, tus-js-client) on another origin: the tus headers
/// allowed in and exposed out.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    let names = |list: &[&'static str]| -> Vec<header::HeaderName> {
        list.iter()
            .map(|n| header::HeaderName::from_static(n))
            .collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::HEAD,
                axum::http::Method::POST,
                axum::http::Method::PATCH,
                axum::http::Method::DELETE,
                axum::http::Method::OPTIONS,
            ])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "tus-resumable",
                "upload-length",
                "upload-defer-length",
                "upload-metadata",
                "upload-offset",
                "upload-checksum",
                "upload-concat",
                "x-http-method-override",
                "x-requested-with",
                "range",
                "if-none-match",
                "if-range",
            ]))
            .expose_headers(names(&[
                "location",
                "tus-resumable",
                "tus-version",
                "tus-extension",
                "tus-max-size",
                "tus-checksum-algorithm",
                "upload-offset",
                "upload-length",
                "upload-defer-length",
                "upload-metadata",
                "upload-expires",
                "content-range",
                "etag",
                "content-disposition",
            ]))
            .max_age(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_parsed_strictly() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ok = format!(
            "filename {},filetype {},flag",
            b64("a b.txt"),
            b64("text/plain")
        );
        assert_eq!(parse_metadata(&ok).unwrap(), Some("a b.txt".into()));
        assert_eq!(parse_metadata("").unwrap(), None);
        assert_eq!(
            parse_metadata(&format!("name {}", b64("n.bin"))).unwrap(),
            Some("n.bin".into())
        );
        for bad in [
            format!("filename {}", b64("../x")),
            format!("filename {}", b64("a\r\nb")),
            "filename !!!".to_string(),
            format!("k {},k {}", b64("1"), b64("2")),
            "x".repeat(5000),
        ] {
            assert!(parse_metadata(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checksums_check() {
        let mut h = HeaderMap::new();
        let digest = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b"hello"));
        h.insert(
            "upload-checksum",
            HeaderValue::from_str(&format!("sha1 {digest}")).unwrap(),
        );
        let mut c = Checksum::parse(&h).unwrap().unwrap();
        c.update(b"hel");
        c.update(b"lo");
        assert!(c.matches());
        let mut c = Checksum::parse(&h).unwrap().unwrap();
        c.update(b"hellO");
        assert!(!c.matches());
        h.insert("upload-checksum", HeaderValue::from_static("crc32 AAAA"));
        assert!(Checksum::parse(&h).is_err());
        h.insert(
            "upload-checksum",
            HeaderValue::from_static("md5 not*base64"),
        );
        assert!(Checksum::parse(&h).is_err());
    }
}
