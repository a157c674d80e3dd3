//! The picker's REST API (`docs/api/picker.md`). Every route is authenticated; every file
//! access is authorized by the permission service, and a file the caller may not read is
//! answered exactly like a file that does not exist (404).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use fms_auth::verify::{Authenticated, Authenticator};
use fms_permission::model::{Right, Rights};
use fms_platform::error::{ApiError, ApiJson};
use fms_platform::logging::rfc3339;
use fms_platform::range::{HeaderRange, from_header};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Picker;
use crate::authz::AuthzError;
use crate::meta::FileRow;

type Svc = State<Arc<Picker>>;

/// Largest JSON body of the small endpoints (rename, share).
const JSON_LIMIT: usize = 16 * 1024;
/// Bytes looked at to tell the content type.
pub(crate) const SNIFF_LEN: usize = 8192;
/// Uploads reach the engine in pieces of this size (small frames are gathered; the memory of
/// an upload is a few of these plus the engine's budget, see `engine::PIECES_IN_FLIGHT`).
pub(crate) const INGEST_PIECE: usize = 64 * 1024;
/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

pub fn routes(picker: Arc<Picker>, authenticator: Arc<Authenticator>) -> Router {
    let json_routes = Router::new()
        .route(
            "/api/files/{id}",
            get(file_meta).patch(rename).delete(delete_file),
        )
        .route("/api/files/share", post(share))
        .route("/api/files", get(list))
        .route("/api/files/download", post(crate::jobs::start_import))
        .route("/api/transform/{id}", post(crate::transform::start))
        .route("/api/jobs/{id}", get(crate::jobs::job))
        .route("/api/connect", get(crate::connect::accounts))
        .route(
            "/api/connect/{provider}",
            get(crate::connect::authorize).delete(crate::connect::disconnect),
        )
        .route(
            "/api/connect/{provider}/callback",
            get(crate::connect::callback),
        )
        .route("/api/connect/{provider}/list", get(crate::connect::list))
        .route(
            "/api/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    crate::openapi::json(),
                )
            }),
        )
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    let stream_routes = Router::new()
        .route("/api/upload", post(upload))
        .route("/api/files/{id}/content", get(content))
        .merge(crate::tus::routes())
        // Uploads are limited by `picker.max_file_size` and the quota, counted as they stream.
        .layer(DefaultBodyLimit::disable());
    // Archive requests name up to 1,000 files.
    let archive_routes = Router::new()
        .route(
            "/api/archive",
            get(crate::archive::download).post(crate::archive::start),
        )
        .layer(DefaultBodyLimit::max(128 << 10));
    let cors = crate::tus::Cors::new(&picker.cfg.cors_origins);
    let router = json_routes
        .merge(stream_routes)
        .merge(archive_routes)
        .layer(Extension(authenticator))
        .with_state(picker);
    match cors {
        Some(c) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(c),
            crate::tus::cors,
        )),
        None => router,
    }
}

impl From<AuthzError> for ApiError {
    fn from(e: AuthzError) -> Self {
        match e {
            AuthzError::NotFound => ApiError::not_found(),
            AuthzError::Denied(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            AuthzError::Invalid(m) => ApiError::bad_request(m),
            AuthzError::Unavailable(m) => {
                tracing::warn!(error = %m, "permission service unavailable");
                ApiError::unavailable("authorization is unavailable; try again", 1)
            }
        }
    }
}

pub(crate) fn db_error(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "metadata store error");
    ApiError::unavailable("the metadata store is unavailable; try again", 1)
}

/// A file name users can see: 1..=255 bytes, no path separators, no control characters,
/// not `.` or `..`.
pub fn check_name(name: &str) -> Result<&str, ApiError> {
    let bad = |why: &str| Err(ApiError::bad_request(format!("invalid file name: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not names");
    }
    if name.contains(['/', '\\']) {
        return bad("no path separators (`/`, `\\`)");
    }
    if name.chars().any(char::is_control) {
        return bad("no control characters");
    }
    Ok(name)
}

/// Longest folder path, bytes.
pub const MAX_FOLDER_LEN: usize = 1024;
/// Deepest folder path, names.
pub const MAX_FOLDER_DEPTH: usize = 32;

/// A folder: names (each a valid file name) joined by `/`; leading and trailing `/` and
/// empty segments are dropped, so `/a//b/` is `a/b`; `""` is the top.
pub fn check_folder(folder: &str) -> Result<String, ApiError> {
    let bad = |why: String| Err(ApiError::bad_request(format!("invalid folder: {why}")));
    if folder.len() > MAX_FOLDER_LEN {
        return bad(format!("longer than {MAX_FOLDER_LEN} bytes"));
    }
    let parts: Vec<&str> = folder.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > MAX_FOLDER_DEPTH {
        return bad(format!("deeper than {MAX_FOLDER_DEPTH} names"));
    }
    for p in &parts {
        if let Err(e) = check_name(p) {
            return bad(format!("{p:?}: {}", e.message));
        }
    }
    Ok(parts.join("/"))
}

/// The `filename` of a `Content-Disposition` header (`filename*=UTF-8''...` preferred).
fn disposition_name(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let v = v.trim();
                let rest = v
                    .strip_prefix("UTF-8''")
                    .or_else(|| v.strip_prefix("utf-8''"))?;
                return percent_decode(rest);
            }
            "filename" => plain = Some(v.trim().trim_matches('"').to_string()),
            _ => {}
        }
    }
    plain
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266).
pub(crate) fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The content type told by the bytes, never by the client.
fn sniff(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        return t.mime_type().to_string();
    }
    if head.is_empty() {
        return "application/octet-stream".into();
    }
    // Text: valid UTF-8 (a character cut at the end of the sample is fine), no NUL.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() >= SNIFF_LEN,
    };
    if valid && !head.contains(&0) {
        "text/plain; charset=utf-8".into()
    } else {
        "application/octet-stream".into()
    }
}

fn rights_json(r: Rights) -> Value {
    json!(r.rights().iter().map(|x| x.relation()).collect::<Vec<_>>())
}

pub(crate) fn file_json(f: &FileRow, rights: Rights) -> Value {
    let mut v = json!({
        "id": f.id,
        "name": f.name,
        "folder": f.folder,
        "size": f.size,
        "content_type": f.content_type,
        "content_hash": f.content_hash,
        "owner_id": f.owner_id,
        "owned": rights.is_owner(),
        "shared_with_me": !rights.is_owner(),
        "rights": rights_json(rights),
        "created_at": rfc3339(f.created_at / 1000, (f.created_at % 1000) as u32),
        "updated_at": rfc3339(f.updated_at / 1000, (f.updated_at % 1000) as u32),
    });
    if !f.derived_from.is_empty() {
        v["derived_from"] = json!({"file_id": f.derived_from, "transform": f.transform});
    }
    v
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    name: Option<String>,
}

pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("files may be at most {limit} bytes"),
    )
}

pub(crate) fn over_quota(quota: u64, used: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "quota_exceeded",
        format!("storage quota of {quota} bytes exceeded ({used} bytes in use)"),
    )
}

/// How much more a request may store: the file-size limit per file, the quota across the
/// request's files.
pub(crate) struct Budget {
    pub(crate) max_file: u64,
    pub(crate) quota: u64,
    pub(crate) used: u64,
}

impl Budget {
    /// The limits from configuration and what `user` stores now.
    pub(crate) async fn of(p: &Picker, user: &str) -> Result<Budget, ApiError> {
        Ok(Budget {
            max_file: p.cfg.max_file_size.0,
            quota: p.cfg.quota.0,
            used: p.meta.usage(user).await.map_err(db_error)?,
        })
    }

    pub(crate) fn room(&self) -> u64 {
        if self.quota > 0 {
            self.quota.saturating_sub(self.used)
        } else {
            u64::MAX
        }
    }
}

/// A file stored by this request (undone if a later file of the same request fails).
pub(crate) struct Stored {
    pub(crate) row: FileRow,
    engine_id: fms_engine::FileId,
    pub(crate) new_bytes: u64,
}

/// Stream one file into the engine, then record it: metadata row, owner grant.
pub(crate) async fn store_stream<S, E>(
    p: &Picker,
    user: &str,
    name: String,
    mut stream: S,
    declared: Option<u64>,
    expected_blake3: Option<&str>,
    budget: &mut Budget,
) -> Result<Stored, ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if let Some(n) = declared {
        if n > budget.max_file {
            return Err(too_large(budget.max_file));
        }
        if n > budget.room() {
            return Err(over_quota(budget.quota, budget.used));
        }
    }
    let idle = p.cfg.idle_timeout.0;
    let timing = p.write_cost.begin();
    let mut ingest = p.engine.ingest(user);
    let mut size = 0u64;
    let mut head = Vec::new();
    let mut pieces = crate::engine::Gather::new(INGEST_PIECE);
    loop {
        let frame = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("no upload data for {}s", idle.as_secs()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(error = %e, "upload body ended early");
                return Err(ApiError::bad_request(format!(
                    "the upload was interrupted or malformed: {e}"
                )));
            }
            Ok(Some(Ok(b))) => b,
        };
        size += frame.len() as u64;
        if size > budget.max_file {
            return Err(too_large(budget.max_file));
        }
        if size > budget.room() {
            return Err(over_quota(budget.quota, budget.used));
        }
        if head.len() < SNIFF_LEN {
            let take = (SNIFF_LEN - head.len()).min(frame.len());
            head.extend_from_slice(&frame[..take]);
        }
        // Network frames are often small (16 KiB): gathered into pieces, the engine's
        // pipeline gets fewer, larger hand-offs (frames as they come: 0.33 of the engine's
        // rate; docs/performance.md). Large frames pass as they are; the engine copies
        // chunks out, so a frame is free once cut (connection buffers are bounded by
        // fms_platform::http::HTTP1_MAX_BUF).
        if let Some(piece) = pieces.push(frame) {
            ingest.write(piece).await.map_err(ApiError::internal)?;
        }
    }
    if let Some(piece) = pieces.finish() {
        ingest.write(piece).await.map_err(ApiError::internal)?;
    }
    if declared.is_some_and(|n| n != size) {
        return Err(ApiError::bad_request(
            "the body is shorter or longer than its Content-Length",
        ));
    }
    let info = ingest.finish().await.map_err(ApiError::internal)?;
    crate::failpoint::hit("picker.after_engine_commit");
    let hash = hex::encode(info.meta.hash);
    if let Some(want) = expected_blake3
        && !want.eq_ignore_ascii_case(&hash)
    {
        let _ = p.engine.delete(info.id).await;
        return Err(ApiError::bad_request(format!(
            "the content's BLAKE3 is {hash}, not the expected {want}"
        )));
    }
    commit_stored(
        p,
        user,
        (name, String::new()).into(),
        info,
        hash,
        &head,
        Some(&timing),
        budget,
    )
    .await
}

/// What a new file is called and where it comes from.
#[derive(Debug, Default)]
pub(crate) struct NewFile {
    pub(crate) name: String,
    pub(crate) folder: String,
    /// Its media type when known (a transform's result); else sniffed from its first bytes.
    pub(crate) content_type: Option<String>,
    /// For a transform's result: the source file's id and the transform.
    pub(crate) derived_from: String,
    pub(crate) transform: String,
}

impl From<(String, String)> for NewFile {
    fn from((name, folder): (String, String)) -> NewFile {
        NewFile {
            name,
            folder,
            ..NewFile::default()
        }
    }
}

/// Make a file the engine holds `user`'s: quota checked under the user's commit lock, the
/// metadata row, the owner grant (each undone if a later step fails), the event
/// (`file.uploaded`; a transform's result is announced by its job). `timing` (the upload's
/// clock, if it was one request) holds a deduplicated upload to the time new content would
/// have taken.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn commit_stored(
    p: &Picker,
    user: &str,
    new: NewFile,
    info: fms_engine::FileInfo,
    hash: String,
    head: &[u8],
    timing: Option<&crate::engine::Timing<'_>>,
    budget: &mut Budget,
) -> Result<Stored, ApiError> {
    // Counted against this user's own files only: whether anyone else stores the same
    // bytes is never observable — not in the answer, the quota, nor the time it takes.
    let own = p
        .meta
        .owner_has_content(user, &hash)
        .await
        .map_err(db_error)?;
    let new_bytes = if own { 0 } else { info.meta.size };
    if let Some(timing) = timing {
        let elapsed = timing.elapsed();
        p.write_cost.observe(info.meta.size, info.new_bytes, timing);
        if !own && info.new_bytes < info.meta.size {
            tokio::time::sleep(p.write_cost.pad(info.meta.size, elapsed)).await;
        }
    }
    let now = now_ms();
    let row = FileRow {
        id: uuid::Uuid::now_v7().to_string(),
        owner_id: user.to_string(),
        name: new.name,
        size: info.meta.size,
        content_type: new.content_type.unwrap_or_else(|| sniff(head)),
        content_hash: hash,
        engine_id: info.id.to_string(),
        created_at: now,
        updated_at: now,
        folder: new.folder,
        derived_from: new.derived_from,
        transform: new.transform,
    };
    // The quota again, against what is committed now (other uploads of this user may have
    // finished meanwhile), under the user's commit lock: concurrent uploads cannot together
    // pass it. Then metadata, then the owner grant; undo both if either fails.
    let commit = p.commit_lock(user).lock().await;
    if budget.quota > 0 {
        let used = match p.meta.usage(user).await {
            Ok(u) => u,
            Err(e) => {
                let _ = p.engine.delete(info.id).await;
                return Err(db_error(e));
            }
        };
        if used.saturating_add(row.size) > budget.quota {
            let _ = p.engine.delete(info.id).await;
            return Err(over_quota(budget.quota, used));
        }
    }
    if let Err(e) = p.meta.insert(&row).await {
        let _ = p.engine.delete(info.id).await;
        return Err(db_error(e));
    }
    drop(commit);
    crate::failpoint::hit("picker.after_row");
    if let Err(e) = p.authz.create_owner(&row.id, user).await {
        let _ = p.meta.delete(&row.id).await;
        let _ = p.engine.delete(info.id).await;
        return Err(e.into());
    }
    crate::failpoint::hit("picker.after_owner");
    budget.used += row.size;
    if row.derived_from.is_empty() {
        p.events.publish_content(
            "file.uploaded",
            vec![user.to_string()],
            &row.id,
            json!({"file_id": row.id, "name": row.name, "size": row.size,
                   "content_type": row.content_type}),
        );
    }
    metrics::counter!("picker_uploads_total").increment(1);
    metrics::counter!("picker_upload_bytes_total").increment(row.size);
    Ok(Stored {
        row,
        engine_id: info.id,
        new_bytes,
    })
}

/// Undo the files a failed request had stored.
pub(crate) async fn unstore(p: &Picker, stored: Vec<Stored>) {
    for s in stored {
        let _ = p.authz.delete_object(&s.row.id).await;
        let _ = p.meta.delete(&s.row.id).await;
        let _ = p.engine.delete(s.engine_id).await;
    }
}

fn stored_json(s: &Stored) -> Value {
    let mut v = file_json(&s.row, Rights::OWNER);
    v["new_bytes"] = json!(s.new_bytes);
    v
}

/// Most files in one multipart upload.
const MAX_PARTS: usize = 1000;

/// `POST /api/upload`: the request body is the file (any content type), or
/// `multipart/form-data` with one or many files; streamed into the engine either way.
#[utoipa::path(post, path = "/api/upload", tag = "files",
    params(("name" = Option<String>, Query, description = "File name (raw bodies; else Content-Disposition, else `untitled`)")),
    request_body(description = "The file itself (any content type), or multipart/form-data with one or many files", content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored (multipart: `{\"files\": [...]}`, see UploadedFiles)", body = crate::openapi::FileRecord),
        (status = 400, description = "Bad name, malformed multipart, body and Content-Length disagree", body = crate::openapi::ErrorBody),
        (status = 408, description = "No data for picker.idle_timeout", body = crate::openapi::ErrorBody),
        (status = 413, description = "file_too_large or quota_exceeded", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn upload(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Query(q): Query<UploadQuery>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let user = claims.sub;
    let headers = request.headers().clone();
    let mut budget = Budget::of(&p, &user).await?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        let mut form = axum::extract::Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
        let mut stored = Vec::new();
        let result: Result<(), ApiError> = async {
            loop {
                let field = match form.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(ApiError::bad_request(format!(
                            "malformed multipart body: {e}"
                        )));
                    }
                };
                // Parts without a file name are form fields, not files.
                let Some(name) = field.file_name().map(str::to_string) else {
                    continue;
                };
                if stored.len() >= MAX_PARTS {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_PARTS} files per upload"
                    )));
                }
                let name = check_name(&name)?.to_string();
                let s = store_stream(&p, &user, name, field, None, None, &mut budget).await?;
                stored.push(s);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            unstore(&p, stored).await;
            return Err(e);
        }
        if stored.is_empty() {
            return Err(ApiError::bad_request(
                "the multipart body holds no file (a part with a filename)",
            ));
        }
        let files: Vec<Value> = stored.iter().map(stored_json).collect();
        return Ok((StatusCode::CREATED, Json(json!({ "files": files }))).into_response());
    }
    let name = match q.name.or_else(|| {
        headers
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(disposition_name)
    }) {
        Some(n) => check_name(&n)?.to_string(),
        None => "untitled".to_string(),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = request.into_body().into_data_stream();
    let s = store_stream(&p, &user, name, stream, declared, None, &mut budget).await?;
    Ok((StatusCode::CREATED, Json(stored_json(&s))).into_response())
}

/// The row of a file `user` holds `right` on; 404 if they cannot read it, 403 if they can
/// read it but lack `right`. One permission check when allowed (the download path).
pub(crate) async fn authorized(
    p: &Picker,
    user: &str,
    id: &str,
    right: Right,
) -> Result<FileRow, ApiError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::not_found());
    }
    if !p.authz.check(user, id, right).await? {
        // Someone who can read the file learns what they lack; anyone else learns nothing.
        if right != Right::Read && p.authz.check(user, id, Right::Read).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the {} right on the file", right.relation()),
            ));
        }
        return Err(ApiError::not_found());
    }
    p.meta
        .get(id)
        .await
        .map_err(db_error)?
        .ok_or_else(ApiError::not_found)
}

/// Everything `user` holds on `row`, for responses that show it. Checks say which rights
/// are held, not whether they come from ownership: the row knows.
async fn rights_on(p: &Picker, user: &str, row: &FileRow) -> Result<Rights, ApiError> {
    if row.owner_id == user {
        return Ok(Rights::OWNER);
    }
    Ok(p.authz.rights(user, &row.id).await?)
}

/// The records of one page of ListAccessible, in its order; files whose row is gone (deleted
/// a moment ago) are skipped.
pub(crate) async fn records(
    p: &Picker,
    files: &[(String, Rights)],
) -> Result<Vec<(FileRow, Rights)>, ApiError> {
    let ids: Vec<String> = files.iter().map(|(id, _)| id.clone()).collect();
    let mut rows: std::collections::HashMap<String, FileRow> = p
        .meta
        .get_many(&ids)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    Ok(files
        .iter()
        .filter_map(|(id, rights)| rows.remove(id).map(|r| (r, *rights)))
        .collect())
}

#[utoipa::path(get, path = "/api/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The record", body = crate::openapi::FileRecord),
        (status = 404, description = "No such file, or you may not read it", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn file_meta(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = authorized(&p, &claims.sub, &id, Right::Read).await?;
    let rights = rights_on(&p, &claims.sub, &row).await?;
    Ok(Json(file_json(&row, rights)))
}

/// `GET`/`HEAD /api/files/:id/content`: the bytes, whole or one range.
#[utoipa::path(get, path = "/api/files/{id}/content", tag = "files",
    params(
        ("id" = String, Path, description = "File id"),
        ("Range" = Option<String>, Header, description = "One range: bytes=a-b, a- or -n"),
        ("If-None-Match" = Option<String>, Header, description = "ETag; 304 when it matches"),
        ("If-Range" = Option<String>, Header, description = "ETag; the range only if it matches"),
        ("transform" = Option<String>, Query, description = "A transform in the compact form (docs/api/transform.md): the result is served, made once and cached")),
    responses(
        (status = 200, description = "The whole file (also for HEAD, without a body)", content_type = "application/octet-stream"),
        (status = 206, description = "The range, with Content-Range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such file, or you may not read it", body = crate::openapi::ErrorBody),
        (status = 416, description = "Outside the file; Content-Range: bytes */size", body = crate::openapi::ErrorBody),
        (status = 400, description = "invalid_transform", body = crate::openapi::ErrorBody),
        (status = 413, description = "too_large: the source is over the transformer's input limit, or the image over its pixel limits", body = crate::openapi::ErrorBody),
        (status = 422, description = "transform_failed: the source is not something the transform reads (unsupported or damaged)", body = crate::openapi::ErrorBody),
        (status = 429, description = "busy: the transformer is at capacity; retry after Retry-After", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn content(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = authorized(&p, &claims.sub, &id, Right::Read).await?;
    let served = match &q.transform {
        None => Served {
            engine_id: row.engine_file().map_err(ApiError::internal)?,
            size: row.size,
            content_type: row.content_type.clone(),
            content_hash: row.content_hash.clone(),
            name: row.name.clone(),
        },
        Some(t) => crate::transform::on_the_fly(&p, &row, t).await?,
    };
    serve(&p, served, &method, &headers)
}

/// `GET /api/files/:id/content` query.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentQuery {
    /// A transform in the compact form: the result is served instead of the file.
    transform: Option<String>,
}

/// Bytes to serve: a file's, or a cached transform result's.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) engine_id: fms_engine::FileId,
    pub(crate) size: u64,
    pub(crate) content_type: String,
    pub(crate) content_hash: String,
    pub(crate) name: String,
}

/// Answer a GET or HEAD for `row`'s bytes: conditional requests, one range.
fn serve(
    p: &Picker,
    row: Served,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", row.content_hash);
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| {
        v.trim() == "*"
            || v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
    }) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let size = row.size;
    // If-Range: the range only if the client's copy is this content.
    let range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if range_ok => from_header(v, size),
        _ => HeaderRange::Whole,
    };
    let (status, start, end) = match range {
        HeaderRange::Whole => (StatusCode::OK, 0, size),
        HeaderRange::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        HeaderRange::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, &row.content_type)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_value)
        .header(header::CONTENT_DISPOSITION, content_disposition(&row.name))
        .header(header::CACHE_CONTROL, "private, no-cache")
        .header("x-content-type-options", "nosniff");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    let body = if method == Method::HEAD || start == end {
        Body::empty()
    } else {
        metrics::counter!("picker_download_bytes_total").increment(end - start);
        Body::from_stream(
            p.engine
                .read(row.engine_id, start, end, p.cfg.idle_timeout.0),
        )
    };
    builder.body(body).map_err(ApiError::internal)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    cursor: Option<String>,
    limit: Option<u32>,
    q: Option<String>,
    sort: Option<String>,
}

/// `GET /api/files`: the files the caller may read, owned and shared, one page at a time; by
/// default in creation order (ids are UUIDv7), straight from the permission service's pages.
#[utoipa::path(get, path = "/api/files", tag = "files",
    params(
        ("limit" = Option<u32>, Query, description = "1-1000, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("q" = Option<String>, Query, description = "Names containing this, case-insensitive"),
        ("sort" = Option<String>, Query, description = "`created` (the default), `name` (case-insensitive) or `size`; `-` in front for descending. Orders other than `created` work for up to 10,000 accessible files (422 `too_many_to_sort` beyond)")),
    responses(
        (status = 200, description = "Files you may read, in the order asked for", body = crate::openapi::FileList),
        (status = 400, description = "Bad limit, cursor or sort", body = crate::openapi::ErrorBody),
        (status = 422, description = "Too many accessible files to sort other than by creation", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let order = Order::parse(q.sort.as_deref())?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let needle = match q.q.as_deref().filter(|s| !s.is_empty()) {
        Some(n) if n.len() > MAX_NAME_LEN => {
            return Err(ApiError::bad_request("q is longer than a file name can be"));
        }
        n => n.map(str::to_lowercase),
    };
    if order != Order::default() {
        return sorted(&p, &claims.sub, order, needle.as_deref(), q.cursor, limit).await;
    }
    if let Some(needle) = needle {
        return filtered(&p, &claims.sub, &needle, q.cursor, limit).await;
    }
    let page = p
        .authz
        .list(&claims.sub, q.cursor.as_deref().unwrap_or(""), limit)
        .await
        .map_err(list_error)?;
    let items: Vec<Value> = records(&p, &page.files)
        .await?
        .iter()
        .map(|(row, rights)| file_json(row, *rights))
        .collect();
    Ok(Json(json!({
        "items": items,
        "next_cursor": if page.next.is_empty() { Value::Null } else { json!(page.next) },
    })))
}

/// What a listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum SortKey {
    #[default]
    Created,
    Name,
    Size,
}

impl SortKey {
    fn as_str(self) -> &'static str {
        match self {
            SortKey::Created => "created",
            SortKey::Name => "name",
            SortKey::Size => "size",
        }
    }
}

/// `?sort=`: a key, `-` in front for descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Order {
    key: SortKey,
    desc: bool,
}

impl Order {
    fn parse(sort: Option<&str>) -> Result<Order, ApiError> {
        let Some(sort) = sort.filter(|s| !s.is_empty()) else {
            return Ok(Order::default());
        };
        let (desc, name) = match sort.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, sort),
        };
        let key = match name {
            "created" => SortKey::Created,
            "name" => SortKey::Name,
            "size" => SortKey::Size,
            _ => {
                return Err(ApiError::bad_request(
                    "sort must be one of created, name, size (prefix - for descending)",
                ));
            }
        };
        Ok(Order { key, desc })
    }
}

/// A file's place in a sorted listing; ties broken by id so the order is total.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pos {
    Created(String),
    /// Case-folded name, name, id.
    Name(String, String, String),
    Size(u64, String),
}

impl Pos {
    fn of(key: SortKey, row: &FileRow) -> Pos {
        Pos::from_parts(key, &row.id, &row.name, row.size)
    }

    fn from_parts(key: SortKey, id: &str, name: &str, size: u64) -> Pos {
        match key {
            SortKey::Created => Pos::Created(id.to_owned()),
            SortKey::Name => Pos::Name(name.to_lowercase(), name.to_owned(), id.to_owned()),
            SortKey::Size => Pos::Size(size, id.to_owned()),
        }
    }
}

/// The cursor of a sorted listing: the order and the last file shown, opaque to clients.
fn sort_cursor(order: Order, row: &FileRow) -> String {
    use base64::Engine as _;
    let value = match order.key {
        SortKey::Created => String::new(),
        SortKey::Name => row.name.clone(),
        SortKey::Size => row.size.to_string(),
    };
    let dir = if order.desc { "d" } else { "a" };
    let raw = format!("s1:{}:{dir}:{}:{value}", order.key.as_str(), row.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_sort_cursor(order: Order, cursor: &str) -> Result<Pos, ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid cursor (or one from a listing with another sort)");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = raw.splitn(5, ':');
    let (Some("s1"), Some(key), Some(dir), Some(id), Some(value)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if key != order.key.as_str() || dir != if order.desc { "d" } else { "a" } {
        return Err(bad());
    }
    let size = match order.key {
        SortKey::Size => value.parse().map_err(|_| bad())?,
        _ => 0,
    };
    Ok(Pos::from_parts(order.key, id, value, size))
}

/// Accessible files one sorted listing may order, at most: every page reads them all (the
/// permission service hands them out in id order), so the cost is bounded by refusing more.
const SORT_LIMIT: usize = 10_000;

/// `GET /api/files?sort=`: every accessible file (filtered by `needle`), ordered, one page
/// after the cursor.
async fn sorted(
    p: &Picker,
    user: &str,
    order: Order,
    needle: Option<&str>,
    cursor: Option<String>,
    limit: u32,
) -> Result<Json<Value>, ApiError> {
    let after = cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| parse_sort_cursor(order, c))
        .transpose()?;
    let mut all: Vec<(Pos, FileRow, Rights)> = Vec::new();
    let mut token = String::new();
    let mut scanned = 0usize;
    loop {
        let page = p.authz.list(user, &token, 1000).await.map_err(list_error)?;
        scanned += page.files.len();
        if scanned > SORT_LIMIT {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_to_sort",
                format!(
                    "sorting by name or size, or newest first, is limited to {SORT_LIMIT} \
                     accessible files; list in creation order (no sort) instead"
                ),
            ));
        }
        for (row, rights) in records(p, &page.files).await? {
            if needle.is_none_or(|n| row.name.to_lowercase().contains(n)) {
                all.push((Pos::of(order.key, &row), row, rights));
            }
        }
        if page.next.is_empty() {
            break;
        }
        token = page.next;
    }
    if let Some(after) = &after {
        all.retain(|(pos, _, _)| if order.desc { pos < after } else { pos > after });
    }
    all.sort_unstable_by(|a, b| {
        if order.desc {
            b.0.cmp(&a.0)
        } else {
            a.0.cmp(&b.0)
        }
    });
    let more = all.len() > limit as usize;
    all.truncate(limit as usize);
    let next = match all.last() {
        Some((_, row, _)) if more => json!(sort_cursor(order, row)),
        _ => Value::Null,
    };
    let items: Vec<Value> = all
        .iter()
        .map(|(_, row, rights)| file_json(row, *rights))
        .collect();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// Files looked at, at most, by one filtered listing request. A request that runs out
/// returns what it found (maybe nothing) and a cursor to go on from: never a silent cut-off.
const FILTER_SCAN: usize = 10_000;

fn list_error(e: AuthzError) -> ApiError {
    match e {
        AuthzError::Invalid(_) => ApiError::bad_request("invalid cursor"),
        e => e.into(),
    }
}

/// `GET /api/files?q=`: names containing `needle` (case-insensitive), in creation order.
async fn filtered(
    p: &Picker,
    user: &str,
    needle: &str,
    cursor: Option<String>,
    limit: u32,
) -> Result<Json<Value>, ApiError> {
    let mut token = cursor.unwrap_or_default();
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let next = 'scan: loop {
        let page = p.authz.list(user, &token, 1000).await.map_err(list_error)?;
        scanned += page.files.len();
        for (row, rights) in records(p, &page.files).await? {
            if row.name.to_lowercase().contains(needle) {
                items.push(file_json(&row, rights));
                if items.len() == limit as usize {
                    // Go on right after this file.
                    break 'scan Some(
                        fms_permission::model::PageToken {
                            right: Right::Read,
                            after: row.id,
                        }
                        .encode(),
                    );
                }
            }
        }
        if page.next.is_empty() {
            break None;
        }
        if scanned >= FILTER_SCAN {
            break Some(page.next);
        }
        token = page.next;
    };
    Ok(Json(json!({
        "items": items,
        "next_cursor": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameBody {
    name: String,
}

#[utoipa::path(patch, path = "/api/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    request_body = crate::openapi::RenameRequest,
    responses(
        (status = 200, description = "Renamed", body = crate::openapi::FileRecord),
        (status = 400, description = "Bad name", body = crate::openapi::ErrorBody),
        (status = 403, description = "You can read it but not write it", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such file, or you may not read it", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn rename(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RenameBody>,
) -> Result<Json<Value>, ApiError> {
    let name = check_name(&body.name)?.to_string();
    let mut row = authorized(&p, &claims.sub, &id, Right::Write).await?;
    let rights = rights_on(&p, &claims.sub, &row).await?;
    let now = now_ms();
    if !p.meta.rename(&id, &name, now).await.map_err(db_error)? {
        return Err(ApiError::not_found());
    }
    row.name = name;
    row.updated_at = now;
    Ok(Json(file_json(&row, rights)))
}

#[utoipa::path(delete, path = "/api/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "You can read it but not delete it", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such file, or you may not read it", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn delete_file(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_file(&p, &claims.sub, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete file `id` as `user` (needs the delete right): access first (nobody reads a
/// half-deleted file), then the row, then the engine's references; `file.deleted`.
pub(crate) async fn remove_file(p: &Picker, user: &str, id: &str) -> Result<(), ApiError> {
    let row = authorized(p, user, id, Right::Delete).await?;
    let holders = p.authz.delete_object(id).await?;
    p.meta.delete(id).await.map_err(db_error)?;
    if let Ok(engine_id) = row.engine_file() {
        match p.engine.delete(engine_id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::error!(error = %e, file = %id, "engine delete failed; GC will not reclaim it until fixed")
            }
        }
    }
    // Everyone who held a grant on it (the owner, users it was shared with) and whoever
    // deleted it.
    let mut told = holders;
    for u in [&row.owner_id, user] {
        if !told.iter().any(|t| t == u) {
            told.push(u.to_string());
        }
    }
    p.events.publish_access(
        "file.deleted",
        told,
        id,
        json!({"file_id": id, "name": row.name}),
    );
    metrics::counter!("picker_deletes_total").increment(1);
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareBody {
    file_id: String,
    with: String,
    rights: Vec<String>,
}

/// `POST /api/files/share`: set a user's rights on a file to exactly the list given (an
/// empty list revokes everything).
#[utoipa::path(post, path = "/api/files/share", tag = "sharing",
    request_body = crate::openapi::ShareRequest,
    responses(
        (status = 200, description = "The user's rights are now exactly the list", body = crate::openapi::ShareResult),
        (status = 400, description = "Unknown right, yourself, or the owner", body = crate::openapi::ErrorBody),
        (status = 403, description = "You can see the file but may not share it", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such file (or you cannot see it), or no such user (user_not_found)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody), (status = 503, description = "A dependency is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn share(
    State(p): Svc,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<ShareBody>,
) -> Result<Json<Value>, ApiError> {
    let mut wanted = Rights::NONE;
    for r in &body.rights {
        let right = Right::ALL
            .into_iter()
            .find(|x| x.relation() == r)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown right {r:?}: use read, write, delete, share"
                ))
            })?;
        wanted = wanted.union(Rights::of(right));
    }
    let actor = claims.sub;
    let row = authorized(&p, &actor, &body.file_id, Right::Share).await?;
    let held = rights_on(&p, &actor, &row).await?;
    let target = p
        .users
        .user_by_name(&body.with)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "account store error");
            ApiError::unavailable("accounts are unavailable; try again", 1)
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "user_not_found",
                format!("no user named {:?}", body.with),
            )
        })?;
    if target.id == actor {
        return Err(ApiError::bad_request("you cannot change your own rights"));
    }
    if target.id == row.owner_id {
        return Err(ApiError::bad_request(
            "the owner holds every right; the owner's rights cannot be changed",
        ));
    }
    let grant: Vec<Right> = wanted.rights();
    // Revoke what is not wanted — of the rights the actor could hand out at all.
    let revoke: Vec<Right> = Right::ALL
        .into_iter()
        .filter(|r| !wanted.allows(*r) && held.allows(*r))
        .collect();
    let revision = p
        .authz
        .update(&actor, &row.id, &target.id, &grant, &revoke)
        .await?;
    // The grantee's next listing with this revision is guaranteed to show the file.
    let mut told = vec![target.id.clone(), row.owner_id.clone()];
    if actor != row.owner_id {
        told.push(actor.clone());
    }
    p.events.publish_access(
        "file.shared",
        told,
        &row.id,
        json!({"file_id": row.id, "name": row.name, "with": target.id,
               "rights": rights_json(wanted), "revision": revision}),
    );
    Ok(Json(json!({
        "file_id": row.id,
        "with": target.username,
        "rights": rights_json(wanted),
        "revision": revision,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dispositions() {
        assert!(check_name("report.pdf").is_ok());
        assert!(check_name("résumé 2026.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", "a\u{0}b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        assert_eq!(
            disposition_name("attachment; filename=\"a b.txt\"").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(
            disposition_name("attachment; filename=x; filename*=UTF-8''r%C3%A9sum%C3%A9.txt")
                .as_deref(),
            Some("résumé.txt")
        );
        let v = content_disposition("résumé \"x\".txt");
        let s = v.to_str().unwrap();
        assert!(s.contains("filename=\"r_sum_ _x_.txt\""), "{s}");
        assert!(
            s.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.txt"),
            "{s}"
        );
    }

    #[test]
    fn sniffing_ignores_what_the_client_says() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff(b"hello"), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"\0\x01\x02"), "application/octet-stream");
        assert_eq!(sniff(b""), "application/octet-stream");
    }
}
