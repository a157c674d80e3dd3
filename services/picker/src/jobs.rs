//! Imports: `POST /api/files/download` asks the downloader (`DownloadFile`), which streams
//! the source into this picker's internal `PutFile`; `GET /api/jobs/{id}` shows how it goes.
//!
//! A job row is written before the downloader is called (its id is the import's idempotency
//! key); what the downloader refuses at once (a bad or forbidden URL, too many imports) is
//! answered synchronously and leaves no job. Otherwise a task follows the call's stream,
//! recording progress, then `completed` with the file or `failed` with a reason, and
//! publishes `import.progress`, `file.imported` or `import.failed` to the user. The task
//! touches the row every few seconds while it waits; a `running` job untouched for a minute
//! lost its picker (a restart) and reads as `failed: interrupted`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fms_platform::ApiError;
use fms_proto::downloader::v1 as pb;
use pb::downloader_service_client::DownloaderServiceClient;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use tonic::transport::Channel;

use fms_auth::verify::Authenticated;
use fms_platform::error::ApiJson;
use fms_platform::logging::rfc3339_ms;

use crate::Picker;
use crate::api::{db_error, now_ms};

/// A running job untouched for this long has lost its picker.
const STALE_MS: i64 = 60_000;
/// How often a waiting job's row is touched.
pub(crate) const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// `import.progress` events, at most this often per job.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);

/// The downloader, over gRPC.
pub type Downloader = DownloaderServiceClient<Channel>;

/// Connect (lazily) to the downloader at `url`.
pub fn downloader(url: &str) -> Result<Downloader, String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("picker.downloader_url: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    Ok(DownloaderServiceClient::new(channel))
}

/// `POST /api/files/download` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// `url` (default), `google_drive`, `dropbox`, `s3`.
    #[serde(default)]
    pub source: Option<String>,
    /// For `url`: an absolute http(s) URL. For `s3`: a presigned URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Name for the stored file; default: from the source.
    #[serde(default)]
    pub name: Option<String>,
    /// For `google_drive` and `dropbox`: the user's OAuth access token (never stored).
    #[serde(default)]
    pub access_token: Option<String>,
    /// For `google_drive`: the Drive file id.
    #[serde(default)]
    pub file_id: Option<String>,
    /// For `google_drive`: what to export Google Docs/Sheets/Slides/Drawings to (a MIME
    /// type); default: the Office format (PNG for drawings).
    #[serde(default)]
    pub export_mime_type: Option<String>,
    /// For `dropbox`: a path (`/dir/file`) or `id:...`; with `shared_link`, a path inside
    /// a shared folder.
    #[serde(default)]
    pub path: Option<String>,
    /// For `dropbox`: a shared link.
    #[serde(default)]
    pub shared_link: Option<String>,
    /// For `s3` without a presigned URL: endpoint (empty: AWS), region, bucket, key and
    /// credentials (never stored).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
}

/// One job as stored.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) owner_id: String,
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) source: String,
    pub(crate) bytes: i64,
    pub(crate) total: i64,
    pub(crate) file_id: String,
    pub(crate) error_code: String,
    pub(crate) error_message: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl JobRow {
    /// A new job of `owner`'s, running from now.
    pub(crate) fn running(owner: String, kind: &str, source: String) -> JobRow {
        let now = now_ms();
        JobRow {
            id: uuid::Uuid::now_v7().to_string(),
            owner_id: owner,
            kind: kind.into(),
            state: "running".into(),
            source,
            bytes: 0,
            total: -1,
            file_id: String::new(),
            error_code: String::new(),
            error_message: String::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

pub(crate) fn job_json(j: &JobRow) -> Value {
    let mut state = j.state.as_str();
    let (mut code, mut message) = (j.error_code.as_str(), j.error_message.as_str());
    if (state == "running" || state == "queued") && now_ms() - j.updated_at > STALE_MS {
        state = "failed";
        code = "interrupted";
        message = "the job was interrupted (the picker restarted); start it again";
    }
    let mut v = json!({
        "id": j.id,
        "kind": j.kind,
        "state": state,
        "source": serde_json::from_str::<Value>(&j.source).unwrap_or(Value::Null),
        "bytes_received": j.bytes,
        "total_bytes": if j.total >= 0 { json!(j.total) } else { Value::Null },
        "created_at": rfc3339_ms(j.created_at),
        "updated_at": rfc3339_ms(j.updated_at),
    });
    if !j.file_id.is_empty() {
        v["file_id"] = json!(j.file_id);
    }
    if state == "failed" {
        v["error"] = json!({"code": code, "message": message});
    }
    v
}

const COLUMNS: &str = "id, owner_id, kind, state, source, bytes, total, file_id, error_code, \
                       error_message, created_at, updated_at";

fn row(r: sqlx::any::AnyRow) -> Result<JobRow, sqlx::Error> {
    Ok(JobRow {
        id: r.try_get(0)?,
        owner_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        state: r.try_get(3)?,
        source: r.try_get(4)?,
        bytes: r.try_get(5)?,
        total: r.try_get(6)?,
        file_id: r.try_get(7)?,
        error_code: r.try_get(8)?,
        error_message: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

async fn get(p: &Picker, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&p.meta.db().pool)
    .await?
    .map(row)
    .transpose()
}

pub(crate) async fn insert(p: &Picker, j: &JobRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO jobs (id, owner_id, kind, state, source, bytes, total, file_id,
             error_code, error_message, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&j.id)
    .bind(&j.owner_id)
    .bind(&j.kind)
    .bind(&j.state)
    .bind(&j.source)
    .bind(j.bytes)
    .bind(j.total)
    .bind(&j.file_id)
    .bind(&j.error_code)
    .bind(&j.error_message)
    .bind(j.created_at)
    .bind(j.updated_at)
    .execute(&p.meta.db().pool)
    .await?;
    Ok(())
}

/// Record progress (or just that the job is alive).
pub(crate) async fn touch(p: &Picker, id: &str, bytes: i64, total: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET bytes = $1, total = $2, updated_at = $3 WHERE id = $4")
        .bind(bytes)
        .bind(total)
        .bind(now_ms())
        .bind(id)
        .execute(&p.meta.db().pool)
        .await?;
    Ok(())
}

pub(crate) async fn finish(
    p: &Picker,
    id: &str,
    state: &str,
    file_id: &str,
    error: (&str, &str),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = $1, file_id = $2, error_code = $3, error_message = $4,
             updated_at = $5 WHERE id = $6",
    )
    .bind(state)
    .bind(file_id)
    .bind(error.0)
    .bind(error.1)
    .bind(now_ms())
    .bind(id)
    .execute(&p.meta.db().pool)
    .await?;
    Ok(())
}

/// Set a job's state (`queued` while it waits for capacity, `running` again).
pub(crate) async fn set_state(p: &Picker, id: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(state)
        .bind(now_ms())
        .bind(id)
        .execute(&p.meta.db().pool)
        .await?;
    Ok(())
}

/// How many of `user`'s jobs of `kind` are queued or running (and alive).
pub(crate) async fn active(p: &Picker, user: &str, kind: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT COUNT(*) FROM jobs WHERE owner_id = $1 AND kind = $2
         AND state IN ('queued', 'running') AND updated_at > $3",
    )
    .bind(user)
    .bind(kind)
    .bind(now_ms() - STALE_MS)
    .fetch_one(&p.meta.db().pool)
    .await?
    .try_get(0)
}

/// What a user is told for a downloader status: (HTTP status, code).
fn classify(s: &tonic::Status) -> (StatusCode, &'static str) {
    use tonic::Code as C;
    use tonic_types::StatusExt;
    // The picker's own refusals (passed through by the downloader) carry their reason.
    if let Some(info) = s.get_error_details().error_info() {
        match info.reason.as_str() {
            "QUOTA_EXCEEDED" => return (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"),
            "FILE_TOO_LARGE" => return (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            _ => {}
        }
    }
    match s.code() {
        C::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_source"),
        C::PermissionDenied => (StatusCode::BAD_GATEWAY, "source_denied"),
        C::NotFound => (StatusCode::BAD_GATEWAY, "source_not_found"),
        C::OutOfRange => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        C::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        C::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "too_many_imports"),
        C::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
        C::FailedPrecondition => (StatusCode::BAD_GATEWAY, "source_error"),
        C::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "source_unavailable"),
        _ => (StatusCode::BAD_GATEWAY, "import_failed"),
    }
}

/// Forbidden addresses are refused as the request's fault: 400 `url_refused`.
fn refused(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::InvalidArgument && s.message().contains("refused")
}

/// What was asked, without secrets: the URL without credentials or query.
fn describe_url(raw: &str) -> Value {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            json!({"type": "url", "url": u.as_str()})
        }
        Err(_) => json!({"type": "url"}),
    }
}

/// The downloader's source for a request, and what the job shows of it (no secrets).
fn source_of(
    source: &str,
    b: &ImportBody,
) -> Result<(pb::download_file_request::Source, Value), ApiError> {
    use pb::download_file_request::Source;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .filter(|x| !x.is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("`{what}` is required for {source}")))
    };
    Ok(match source {
        "url" => {
            let url = need(&b.url, "url")?;
            (
                Source::Url(pb::UrlSource { url: url.clone() }),
                describe_url(&url),
            )
        }
        "google_drive" => {
            let file_id = need(&b.file_id, "file_id")?;
            let d = pb::GoogleDriveSource {
                file_id: file_id.clone(),
                access_token: text(&b.access_token),
                export_mime_type: text(&b.export_mime_type),
            };
            (
                Source::GoogleDrive(d),
                json!({"type": "google_drive", "file_id": file_id}),
            )
        }
        "dropbox" => {
            let d = pb::DropboxSource {
                path: text(&b.path),
                access_token: text(&b.access_token),
                shared_link: text(&b.shared_link),
            };
            if d.path.is_empty() && d.shared_link.is_empty() {
                return Err(ApiError::bad_request(
                    "`path` or `shared_link` is required for dropbox",
                ));
            }
            let mut shown = json!({"type": "dropbox"});
            if !d.path.is_empty() {
                shown["path"] = json!(d.path);
            }
            if !d.shared_link.is_empty() {
                shown["shared_link"] = describe_url(&d.shared_link)["url"].clone();
            }
            (Source::Dropbox(d), shown)
        }
        "s3" => {
            let s = pb::S3Source {
                endpoint: text(&b.endpoint),
                region: text(&b.region),
                bucket: text(&b.bucket),
                key: text(&b.key),
                access_key_id: text(&b.access_key_id),
                secret_access_key: text(&b.secret_access_key),
                session_token: text(&b.session_token),
                presigned_url: text(&b.url),
            };
            let shown = if s.presigned_url.is_empty() {
                if s.bucket.is_empty() || s.key.is_empty() {
                    return Err(ApiError::bad_request(
                        "`url` (presigned) or `bucket` and `key` are required for s3",
                    ));
                }
                json!({"type": "s3", "endpoint": s.endpoint, "bucket": s.bucket, "key": s.key})
            } else {
                let mut d = describe_url(&s.presigned_url);
                d["type"] = json!("s3");
                d
            };
            (Source::S3(s), shown)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_source",
                format!("unknown source {other:?}: use url, google_drive, dropbox or s3"),
            ));
        }
    })
}

/// `POST /api/files/download`: start an import; `202` with the job.
#[utoipa::path(post, path = "/api/files/download", tag = "jobs",
    request_body = ImportBody,
    responses(
        (status = 202, description = "The import runs; follow it at /api/jobs/{id}"),
        (status = 400, description = "invalid_source or url_refused (a forbidden address or scheme)", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_imports", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody),
        (status = 503, description = "The downloader is unavailable; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn start_import(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<ImportBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = claims.sub;
    let source = body.source.as_deref().unwrap_or("url");
    let (mut request_source, described) = source_of(source, &body)?;
    // No token given: the user's connected account (refreshed if need be).
    {
        use pb::download_file_request::Source;
        let token = match &mut request_source {
            Source::GoogleDrive(d) => Some((&mut d.access_token, "google_drive")),
            Source::Dropbox(d) => Some((&mut d.access_token, "dropbox")),
            _ => None,
        };
        if let Some((t, provider)) = token
            && t.is_empty()
        {
            if !p.connect.offers(provider) {
                return Err(ApiError::bad_request(format!(
                    "`access_token` is required for {provider} (no connected accounts here)"
                )));
            }
            *t = p.connect.access_token(&p, &user, provider).await?;
        }
    }
    if let Some(n) = &body.name {
        crate::api::check_name(n)?;
    }
    let Some(downloader) = p.downloader.clone() else {
        return Err(ApiError::unavailable(
            "imports are not configured here (picker.downloader_url)",
            30,
        ));
    };
    let job = JobRow::running(user.clone(), "import", described.to_string());
    insert(&p, &job).await.map_err(db_error)?;
    let request = pb::DownloadFileRequest {
        owner_id: user.clone(),
        name: body.name.clone().unwrap_or_default(),
        idempotency_key: job.id.clone(),
        source: Some(request_source),
    };
    let stream = match downloader.clone().download_file(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            // Refused before anything ran: no job.
            let _ = sqlx::query("DELETE FROM jobs WHERE id = $1")
                .bind(&job.id)
                .execute(&p.meta.db().pool)
                .await;
            let (status, code) = if refused(&s) {
                (StatusCode::BAD_REQUEST, "url_refused")
            } else if s.code() == tonic::Code::Unavailable {
                // DownloadFile answers nothing synchronously as Unavailable itself: this is
                // the downloader out of reach.
                tracing::warn!(error = %s.message(), "downloader unreachable");
                return Err(ApiError::unavailable("the downloader is unavailable", 5));
            } else {
                classify(&s)
            };
            return Err(ApiError::new(status, code, s.message().to_string()));
        }
    };
    let task = p.clone();
    let id = job.id.clone();
    tokio::spawn(async move { follow(task, id, user, stream).await });
    metrics::counter!("picker_imports_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(job_json(&job))))
}

/// Follow one import's stream to its end.
async fn follow(
    p: Arc<Picker>,
    id: String,
    user: String,
    mut stream: tonic::Streaming<pb::DownloadFileResponse>,
) {
    let (mut bytes, mut total) = (0i64, -1i64);
    let mut last_event = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TOUCH_EVERY);
    tick.tick().await;
    let outcome: Result<fms_proto::picker::v1::FileInfo, tonic::Status> = loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(pb::DownloadFileResponse { msg: Some(pb::download_file_response::Msg::Progress(pr)) })) => {
                    bytes = pr.bytes_received as i64;
                    total = pr.total_bytes.map(|t| t as i64).unwrap_or(-1);
                    if let Err(e) = touch(&p, &id, bytes, total).await {
                        tracing::warn!(error = %e, job = %id, "job progress not recorded");
                    }
                    if last_event.elapsed() >= PROGRESS_EVENT_EVERY {
                        last_event = tokio::time::Instant::now();
                        p.events.publish_access(
                            "import.progress",
                            vec![user.clone()],
                            &id,
                            json!({"job_id": id, "bytes_received": bytes,
                                   "total_bytes": if total >= 0 { json!(total) } else { Value::Null }}),
                        );
                    }
                }
                Ok(Some(pb::DownloadFileResponse { msg: Some(pb::download_file_response::Msg::File(f)) })) => break Ok(f),
                Ok(Some(_)) => continue,
                Ok(None) => break Err(tonic::Status::internal("the downloader ended without a file")),
                Err(s) => break Err(s),
            },
            _ = tick.tick() => {
                let _ = touch(&p, &id, bytes, total).await;
            }
        }
    };
    match outcome {
        Ok(f) => {
            if let Err(e) = touch(&p, &id, f.size as i64, f.size as i64).await {
                tracing::warn!(error = %e, job = %id, "job progress not recorded");
            }
            if let Err(e) = finish(&p, &id, "completed", &f.id, ("", "")).await {
                tracing::error!(error = %e, job = %id, "job completion not recorded");
            }
            p.events.publish_content(
                "file.imported",
                vec![user],
                &f.id,
                json!({"job_id": id, "file_id": f.id, "name": f.name, "size": f.size,
                       "content_type": f.content_type}),
            );
        }
        Err(s) => {
            let (_, code) = if refused(&s) {
                (StatusCode::BAD_REQUEST, "url_refused")
            } else {
                classify(&s)
            };
            if let Err(e) = finish(&p, &id, "failed", "", (code, s.message())).await {
                tracing::error!(error = %e, job = %id, "job failure not recorded");
            }
            p.events.publish_access(
                "import.failed",
                vec![user],
                &id,
                json!({"job_id": id, "error": {"code": code, "message": s.message()}}),
            );
        }
    }
}

/// Finished jobs are kept this long, then forgotten.
const JOB_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// Forget jobs finished (or abandoned) longer than 30 days ago. Returns how many.
pub async fn forget_old(p: &Picker) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM jobs WHERE updated_at < $1")
        .bind(now_ms() - JOB_RETENTION_MS)
        .execute(&p.meta.db().pool)
        .await?;
    Ok(r.rows_affected())
}

/// `GET /api/jobs/{id}`: the job, to its owner (anyone else: 404).
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job: state queued|running|completed|failed, bytes_received, total_bytes, file_id, error"),
        (status = 404, description = "No such job (or not yours)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn job(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found());
    }
    match get(&p, &id).await.map_err(db_error)? {
        Some(j) if j.owner_id == claims.sub => Ok(Json(job_json(&j))),
        _ => Err(ApiError::not_found()),
    }
}
