//! Resumable uploads: tus 1.0 (<https://tus.io/protocols/resumable-upload>) at
//! `/api/uploads/`, with the creation, creation-with-upload, creation-defer-length,
//! termination, expiration, checksum and concatenation extensions. Concatenation joins
//! partial uploads by their chunk lists: no byte is copied.
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
use std::time::Duration;

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
const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,\
                          expiration,checksum,concatenation";
/// Most partial uploads one final upload joins.
const MAX_PARTS: usize = 1000;
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

/// The folder named by `relativePath` metadata (as Uppy sends for files from a dropped
/// folder: `folder/sub/name.jpg`): its path without the last name, checked; `""` without.
pub(crate) fn folder_of(raw: &str) -> Result<String, ApiError> {
    for pair in raw.split(',').map(str::trim) {
        let mut it = pair.splitn(2, ' ');
        if it.next() != Some("relativePath") {
            continue;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(it.next().map(str::trim).unwrap_or(""))
            .map_err(|_| {
                ApiError::bad_request("Upload-Metadata relativePath is not valid base64")
            })?;
        let path = String::from_utf8(decoded)
            .map_err(|_| ApiError::bad_request("Upload-Metadata relativePath is not UTF-8"))?;
        let dir = path
            .trim_end_matches('/')
            .rsplit_once('/')
            .map_or("", |(d, _)| d);
        return crate::api::check_folder(dir);
    }
    Ok(String::new())
}

/// Upload-Metadata for an upload named `name` in `folder` (how the bulk API records it).
pub(crate) fn metadata_for(name: &str, folder: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    if folder.is_empty() {
        format!("filename {}", b64(name))
    } else {
        format!(
            "filename {},relativePath {}",
            b64(name),
            b64(&format!("{folder}/{name}"))
        )
    }
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

pub(crate) fn session_of(row: &UploadRow) -> Result<SessionId, ApiError> {
    row.session_id
        .parse()
        .map_err(|e| ApiError::internal(format!("upload {} has a bad session id: {e}", row.id)))
}

/// The upload `id` if `user` created it: 404 otherwise (whether it exists is not told),
/// 410 if it expired unfinished.
pub(crate) async fn owned_upload(p: &Picker, user: &str, id: &str) -> Result<UploadRow, ApiError> {
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
    if !is_complete(&row) && row.expires_at <= now_ms() {
        return Err(tus_error(410, "expired", "this upload expired unfinished"));
    }
    Ok(row)
}

/// Complete: a file (or, for a partial upload, an engine file waiting to be joined).
pub(crate) fn is_complete(row: &UploadRow) -> bool {
    row.file_id.is_some() || row.part_engine_id.is_some()
}

fn is_partial(row: &UploadRow) -> bool {
    row.concat.as_deref() == Some("partial")
}

fn is_final(row: &UploadRow) -> bool {
    row.concat
        .as_deref()
        .is_some_and(|c| c.starts_with("final;"))
}

pub(crate) fn engine_error(e: EngineError) -> ApiError {
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
    let concat = h
        .get("upload-concat")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request("Upload-Concat must be ASCII"))
        })
        .transpose()?;
    if let Some(spec) = concat.as_deref().and_then(|c| c.strip_prefix("final;")) {
        return create_final(&p, &user, &h, spec).await;
    }
    if concat.as_deref().is_some_and(|c| c != "partial") {
        return Err(ApiError::bad_request(
            "Upload-Concat must be `partial` or `final;<upload URLs>`",
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
    folder_of(&metadata)?;
    let with_body = is_octets(&h);
    if !with_body && number(&h, "content-length")?.unwrap_or(0) > 0 {
        return Err(tus_error(
            415,
            "unsupported_media_type",
            format!("upload bytes must be sent as {OCTETS}"),
        ));
    }
    let row = new_upload(&p, &user, name, length, metadata, concat).await?;
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
        let (offset, file_id) = match write(&p, &row, 0, checksum, body, &mut budget).await {
            Ok(o) => o,
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => {
                tracing::info!(upload = %row.id, error = %e.message, "creation-with-upload failed");
                (acknowledged(&p, &row).await.unwrap_or(0), None)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
            r.headers_mut().insert("upload-offset", v);
        }
        if let Some(v) = file_id.and_then(|f| HeaderValue::from_str(&f).ok()) {
            r.headers_mut().insert("fms-file-id", v);
        }
    }
    Ok(r)
}

/// A new resumable upload of `user`'s: an engine session and its row.
pub(crate) async fn new_upload(
    p: &Picker,
    user: &str,
    name: String,
    length: Option<u64>,
    metadata: String,
    concat: Option<String>,
) -> Result<UploadRow, ApiError> {
    let session = p
        .engine
        .create_session(p.cfg.upload_expiry.0)
        .await
        .map_err(ApiError::internal)?;
    let row = UploadRow {
        id: uuid::Uuid::now_v7().simple().to_string(),
        owner_id: user.to_string(),
        session_id: session.id.to_string(),
        length,
        metadata,
        name,
        created_at: now_ms(),
        expires_at: session.expires_ms as i64,
        file_id: None,
        concat,
        part_engine_id: None,
    };
    if let Err(e) = p.meta.insert_upload(&row).await {
        let _ = p.engine.abort_session(session.id).await;
        return Err(db_error(e));
    }
    metrics::counter!("picker_uploads_created_total").increment(1);
    Ok(row)
}

/// The id of an upload named by URL (absolute or a path) in `Upload-Concat`.
fn upload_id_of(url: &str) -> Option<&str> {
    let id = url.rsplit_once("/api/uploads/")?.1;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `POST` with `Upload-Concat: final;<URLs>`: join the user's completed partial uploads, in
/// order, into one file, from their chunk lists (no byte copied); the parts are then gone.
async fn create_final(
    p: &Picker,
    user: &str,
    h: &HeaderMap,
    spec: &str,
) -> Result<Response, ApiError> {
    if h.contains_key("upload-length") || h.contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "a final upload's length is the sum of its parts; send no Upload-Length",
        ));
    }
    let urls: Vec<&str> = spec.split(' ').filter(|u| !u.is_empty()).collect();
    if urls.is_empty() || urls.len() > MAX_PARTS {
        return Err(ApiError::bad_request(format!(
            "Upload-Concat final names 1 to {MAX_PARTS} partial uploads"
        )));
    }
    let mut parts = Vec::new();
    let mut engine_parts = Vec::new();
    let mut total = 0u64;
    for url in &urls {
        // Another user's upload reads exactly like a missing one.
        let unknown = || ApiError::bad_request(format!("{url} is not one of your partial uploads"));
        let id = upload_id_of(url).ok_or_else(unknown)?;
        let row = p
            .meta
            .upload(id)
            .await
            .map_err(db_error)?
            .filter(|r| r.owner_id == user && is_partial(r))
            .ok_or_else(unknown)?;
        let Some(engine_id) = row.part_engine_id.as_deref() else {
            return Err(ApiError::bad_request(format!(
                "the partial upload {url} is not complete"
            )));
        };
        engine_parts.push(
            engine_id
                .parse::<fms_engine::FileId>()
                .map_err(|e| ApiError::internal(format!("upload {id}: bad engine id: {e}")))?,
        );
        total = total.saturating_add(row.length.unwrap_or(0));
        parts.push(row);
    }
    let mut budget = Budget::of(p, user).await?;
    if total > budget.max_file {
        return Err(too_large(budget.max_file));
    }
    if total > budget.room() {
        return Err(over_quota(budget.quota, budget.used));
    }
    let metadata = h
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let name = parse_metadata(&metadata)?.unwrap_or_else(|| "untitled".to_string());
    let folder = folder_of(&metadata)?;
    let info = p
        .engine
        .concat(engine_parts.clone(), user)
        .await
        .map_err(|e| match e {
            EngineError::Engine(fms_engine::Error::NotFound(_)) => tus_error(
                409,
                "conflict",
                "a partial upload went away; upload it again",
            ),
            e => ApiError::internal(e),
        })?;
    let hash = hex::encode(info.meta.hash);
    let head = head_of(p, &info).await;
    let stored = commit_stored(
        p,
        user,
        (name.clone(), folder).into(),
        info,
        hash,
        &head,
        None,
        &mut budget,
    )
    .await?;
    let now = now_ms();
    let row = UploadRow {
        id: uuid::Uuid::now_v7().simple().to_string(),
        owner_id: user.to_string(),
        session_id: String::new(),
        length: Some(stored.row.size),
        metadata,
        name,
        created_at: now,
        expires_at: now,
        file_id: Some(stored.row.id.clone()),
        concat: Some(format!("final;{}", urls.join(" "))),
        part_engine_id: None,
    };
    p.meta.insert_upload(&row).await.map_err(db_error)?;
    // Joined: the parts are not needed any more (the file holds their chunks).
    for (part, engine_id) in parts.iter().zip(engine_parts) {
        let _ = p.meta.delete_upload(&part.id).await;
        let _ = p.engine.delete(engine_id).await;
    }
    metrics::counter!("picker_tus_uploads_concatenated_total").increment(1);
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/uploads/{}", row.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&stored.row.size.to_string()) {
        r.headers_mut().insert("upload-offset", v);
    }
    if let Ok(v) = HeaderValue::from_str(&stored.row.id) {
        r.headers_mut().insert("fms-file-id", v);
    }
    Ok(r)
}

fn is_octets(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OCTETS))
}

/// The offset an upload has acknowledged (its length once complete).
pub(crate) async fn acknowledged(p: &Picker, row: &UploadRow) -> Result<u64, ApiError> {
    if is_complete(row) {
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
    if !is_complete(&row) {
        h.insert("upload-expires", http_date(row.expires_at));
    }
    if let Some(v) = row
        .file_id
        .as_deref()
        .and_then(|f| HeaderValue::from_str(f).ok())
    {
        h.insert("fms-file-id", v);
    }
    if let Some(c) = row.concat.as_deref()
        && let Ok(v) = HeaderValue::from_str(c)
    {
        h.insert("upload-concat", v);
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
    if is_final(&row) {
        return Err(tus_error(
            403,
            "forbidden",
            "a final upload is made of its parts; it takes no PATCH",
        ));
    }
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
    if is_complete(&row) {
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
        tracing::debug!(upload = %row.id, "PATCH on a completed upload");
        return Ok(offset_response(len, row.file_id.as_deref()));
    }
    let (offset, file) =
        write(&p, &row, offset, checksum, request.into_body(), &mut budget).await?;
    Ok(offset_response(offset, file.as_deref()))
}

/// `204` with the offset, and the file's id (`Fms-File-Id`) once the upload became one.
fn offset_response(offset: u64, file_id: Option<&str>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        r.headers_mut().insert("upload-offset", v);
    }
    if let Some(v) = file_id.and_then(|f| HeaderValue::from_str(f).ok()) {
        r.headers_mut().insert("fms-file-id", v);
    }
    r
}

/// Stream `body` into the upload's session from `offset`; complete the upload when its last
/// byte arrived. Returns the offset acknowledged at the end, and the new file's id when the
/// upload completed. The session is free again when this returns, whatever the outcome.
async fn write(
    p: &Picker,
    row: &UploadRow,
    offset: u64,
    checksum: Option<Checksum>,
    body: Body,
    budget: &mut Budget,
) -> Result<(u64, Option<String>), ApiError> {
    let session = session_of(row)?;
    let (mut app, _) = p
        .engine
        .append(session, Some(offset), &row.owner_id)
        .await
        .map_err(engine_error)?;
    let timing = p.write_cost.begin();
    let mut file_id = None;
    let (at, new_bytes) = match stream_into(p, row, offset, checksum, body, budget, &mut app).await
    {
        Ok(Ending::Acknowledge) => app.close().await.map_err(ApiError::internal)?,
        Ok(Ending::Complete(at)) => {
            let mut new_bytes = 0;
            let stored = complete(p, row, app, budget, None, Some(&mut new_bytes)).await?;
            file_id = stored.map(|s| s.row.id);
            (at, new_bytes)
        }
        Ok(Ending::KeepAndFail(e)) => {
            // Keep what arrived: the client resumes from there.
            let (kept, _) = app.close().await.map_err(ApiError::internal)?;
            tracing::info!(upload = %row.id, kept, "PATCH cut short; received bytes kept");
            return Err(e);
        }
        Err(e) => {
            // Nothing of this PATCH past the last checkpoint is kept.
            app.abandon().await;
            return Err(e);
        }
    };
    // A PATCH whose bytes were (partly) in the store already must not answer sooner than
    // one of new bytes (reliability test 40): padded like a single-request upload.
    let bytes = at - offset;
    p.write_cost.observe(bytes, new_bytes, &timing);
    if new_bytes < bytes {
        tokio::time::sleep(p.write_cost.pad(bytes, timing.elapsed())).await;
    }
    Ok((at, file_id))
}

/// How a PATCH body ended.
enum Ending {
    /// Acknowledge everything received.
    Acknowledge,
    /// The last byte is in (at this offset).
    Complete(u64),
    /// The body stopped early (timeout, disconnect): acknowledge what came, then fail.
    KeepAndFail(ApiError),
}

#[allow(clippy::too_many_arguments)]
async fn stream_into(
    p: &Picker,
    row: &UploadRow,
    offset: u64,
    mut checksum: Option<Checksum>,
    body: Body,
    budget: &mut Budget,
    app: &mut Append,
) -> Result<Ending, ApiError> {
    let idle = p.cfg.idle_timeout.0;
    let whole = checksum.is_some();
    let mut stream = body.into_data_stream();
    let mut pieces = Gather::new(INGEST_PIECE);
    let mut at = offset;
    let mut since_checkpoint = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                let e = tus_error(
                    408,
                    "timeout",
                    format!("no upload data for {}s", idle.as_secs()),
                );
                return keep_or_fail(app, &mut pieces, whole, e).await;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e = ApiError::bad_request(format!("the upload was interrupted: {e}"));
                return keep_or_fail(app, &mut pieces, whole, e).await;
            }
            Ok(Some(Ok(b))) => b,
        };
        let next = at + frame.len() as u64;
        if let Some(len) = row.length
            && next > len
        {
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
            flush(app, &mut pieces).await?;
            app.checkpoint().await.map_err(ApiError::internal)?;
            since_checkpoint = 0;
        }
    }
    flush(app, &mut pieces).await?;
    if let Some(c) = checksum
        && !c.matches()
    {
        metrics::counter!("picker_tus_checksum_mismatches_total").increment(1);
        return Err(tus_error(
            460,
            "checksum_mismatch",
            "the body does not match Upload-Checksum; nothing of it was kept",
        ));
    }
    if row.length == Some(at) {
        Ok(Ending::Complete(at))
    } else {
        Ok(Ending::Acknowledge)
    }
}

/// A body that stopped early: without a checksum what came is kept, with one nothing is.
async fn keep_or_fail(
    app: &mut Append,
    pieces: &mut Gather,
    whole: bool,
    e: ApiError,
) -> Result<Ending, ApiError> {
    if whole {
        return Err(e);
    }
    flush(app, pieces).await?;
    Ok(Ending::KeepAndFail(e))
}

async fn flush(app: &mut Append, pieces: &mut Gather) -> Result<(), ApiError> {
    if let Some(piece) = pieces.finish() {
        app.write(piece).await.map_err(ApiError::internal)?;
    }
    Ok(())
}

/// The last byte is in: the session becomes the user's file (`None` for a partial upload,
/// which waits as an engine file for the final upload that joins it). With
/// `expected_blake3`, content that does not match is not kept.
pub(crate) async fn complete(
    p: &Picker,
    row: &UploadRow,
    app: Append,
    budget: &mut Budget,
    expected_blake3: Option<&str>,
    new_bytes: Option<&mut u64>,
) -> Result<Option<crate::api::Stored>, ApiError> {
    let info = app.finish().await.map_err(|e| match e {
        // A dedup-aware client's chunk that is not what it announced.
        EngineError::Engine(e @ fms_engine::Error::ChunkMismatch { .. })
        | EngineError::Engine(e @ fms_engine::Error::BadChunks(_)) => {
            ApiError::bad_request(e.to_string())
        }
        e => ApiError::internal(e),
    })?;
    if let Some(n) = new_bytes {
        *n = info.new_bytes;
    }
    if is_partial(row) {
        p.meta
            .complete_part(&row.id, &info.id.to_string(), now_ms())
            .await
            .map_err(db_error)?;
        return Ok(None);
    }
    let hash = hex::encode(info.meta.hash);
    if let Some(want) = expected_blake3
        && !want.eq_ignore_ascii_case(&hash)
    {
        let _ = p.engine.delete(info.id).await;
        let _ = p.meta.delete_upload(&row.id).await;
        return Err(ApiError::bad_request(format!(
            "the content's BLAKE3 is {hash}, not the expected {want}; the upload was discarded"
        )));
    }
    let head = head_of(p, &info).await;
    let stored = commit_stored(
        p,
        &row.owner_id,
        (
            row.name.clone(),
            folder_of(&row.metadata).unwrap_or_default(),
        )
            .into(),
        info,
        hash,
        &head,
        None,
        budget,
    )
    .await?;
    p.meta
        .complete_upload(&row.id, &stored.row.id, now_ms())
        .await
        .map_err(db_error)?;
    metrics::counter!("picker_uploads_completed_total").increment(1);
    Ok(Some(stored))
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
    if let Some(engine_id) = row.part_engine_id.as_deref()
        && let Ok(id) = engine_id.parse()
    {
        let _ = p.engine.delete(id).await;
    } else if !is_complete(&row) {
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
    let before = now_ms() - REMEMBER_MS;
    // Partial uploads never joined: their engine files go with them.
    for engine_id in p.meta.old_parts(before).await? {
        if let Ok(id) = engine_id.parse() {
            let _ = p.engine.delete(id).await;
        }
    }
    p.meta.forget_uploads(before).await
}

/// Request headers a browser may send cross-origin.
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, tus-resumable, upload-length, \
    upload-defer-length, upload-metadata, upload-offset, upload-checksum, upload-concat, \
    x-http-method-override, x-requested-with, range, if-none-match, if-range";
/// Response headers a browser lets cross-origin scripts read.
const CORS_EXPOSE_HEADERS: &str = "location, fms-file-id, tus-resumable, tus-version, tus-extension, \
    tus-max-size, tus-checksum-algorithm, upload-offset, upload-length, upload-defer-length, \
    upload-metadata, upload-expires, content-range, content-disposition, etag, retry-after";
const CORS_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE, OPTIONS";

/// Origins allowed cross-origin (`picker.cors_origins`).
#[derive(Debug, Clone)]
pub struct Cors {
    any: bool,
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// `None` when no origin is configured (no CORS headers at all).
    pub fn new(origins: &[String]) -> Option<Cors> {
        (!origins.is_empty()).then(|| Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                .collect(),
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }
}

/// CORS for browser clients (Uppy, tus-js-client) on another origin: a preflight (OPTIONS
/// with `Access-Control-Request-Method`) is answered here; any other request goes on, its
/// response marked for an allowed origin. A plain OPTIONS still reaches tus discovery.
pub async fn cors(
    State(cors): State<Arc<Cors>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| cors.allows(o))
        .cloned();
    let preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut r = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = r.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("3600"),
            );
        } else {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
        }
    }
    r
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
