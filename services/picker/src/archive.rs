//! Archives: a zip of several files the caller may read, streamed — never held. On the fly
//! (`GET /api/archive?ids=...`: the zip is the response body) or as a job
//! (`POST /api/archive`: the zip becomes a new file of the caller's).
//!
//! The zip is written by the `zip` crate on a blocking thread (entries with data descriptors,
//! ZIP64 where a file needs it), reading each file's verified bytes from the engine and handing
//! the output on in pieces through a bounded channel: memory is a few pieces whatever the
//! sizes. A file that cannot be read cuts the stream with an error (a job fails; a download
//! ends short, which zip readers report), never a zip of wrong bytes.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use fms_auth::verify::Authenticated;
use fms_permission::model::Right;
use fms_platform::ApiError;
use fms_platform::error::ApiJson;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Picker;
use crate::api::{Budget, authorized, check_name, db_error, store_stream};
use crate::jobs::{self, JobRow};
use crate::meta::FileRow;

/// Most files in one archive.
pub const MAX_FILES: usize = 1000;
/// Output piece size.
const PIECE: usize = 256 << 10;

/// How entries are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// As they are (the default: fastest, and media is compressed already).
    Store,
    /// Deflate (level 6).
    Deflate,
}

/// The readable files named by `ids`, in order; 404 for the first one the caller cannot read.
async fn files(p: &Picker, user: &str, ids: &[String]) -> Result<Vec<FileRow>, ApiError> {
    if ids.is_empty() || ids.len() > MAX_FILES {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_FILES} file ids"
        )));
    }
    let mut seen = HashSet::new();
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        if seen.insert(id.as_str()) {
            rows.push(authorized(p, user, id, Right::Read).await?);
        }
    }
    Ok(rows)
}

/// Entry names: `folder/name`, made unique (`name (2).ext`).
fn entry_names(rows: &[FileRow]) -> Vec<String> {
    let mut used = HashSet::new();
    rows.iter()
        .map(|r| {
            let base = if r.folder.is_empty() {
                r.name.clone()
            } else {
                format!("{}/{}", r.folder, r.name)
            };
            let mut name = base.clone();
            let mut n = 2;
            while !used.insert(name.clone()) {
                name = match base.rsplit_once('.') {
                    Some((stem, ext)) if !stem.is_empty() && !stem.ends_with('/') => {
                        format!("{stem} ({n}).{ext}")
                    }
                    _ => format!("{base} ({n})"),
                };
                n += 1;
            }
            name
        })
        .collect()
}

/// Output to the channel in pieces; a closed channel is a broken pipe.
struct Pieces {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn push(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))
    }
}

impl Write for Pieces {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.push()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The zip of `rows` as a stream of pieces.
pub(crate) fn zip_stream(
    p: &Picker,
    rows: Vec<FileRow>,
    compression: Compression,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(4);
    let engine = p.engine.clone();
    let idle = p.cfg.idle_timeout.0;
    let names = entry_names(&rows);
    let handle = tokio::runtime::Handle::current();
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let run = || -> std::io::Result<()> {
            let mut zip = zip::ZipWriter::new_stream(Pieces {
                tx,
                buf: Vec::with_capacity(PIECE),
            });
            for (row, name) in rows.iter().zip(names) {
                let method = match compression {
                    Compression::Store => zip::CompressionMethod::Stored,
                    Compression::Deflate => zip::CompressionMethod::Deflated,
                };
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(method)
                    .large_file(row.size >= u64::from(u32::MAX) / 2);
                zip.start_file(name, options)
                    .map_err(std::io::Error::other)?;
                let id = row.engine_file().map_err(std::io::Error::other)?;
                // The engine's reader needs the runtime for its channel; entered here.
                let mut frames = {
                    let _rt = handle.enter();
                    engine.read(id, 0, row.size, idle).into_inner()
                };
                while let Some(frame) = frames.blocking_recv() {
                    zip.write_all(&frame?)?;
                }
            }
            let mut out = zip.finish().map_err(std::io::Error::other)?.into_inner();
            out.push()
        };
        if let Err(e) = run()
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            tracing::error!(error = %e, "archive cut short");
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn archive_name(name: Option<&str>) -> Result<String, ApiError> {
    let n = name.unwrap_or("files.zip");
    check_name(n)?;
    Ok(n.to_string())
}

/// `GET /api/archive` query.
#[derive(Debug, Deserialize)]
pub(crate) struct ArchiveQuery {
    /// Comma-separated file ids.
    ids: String,
    name: Option<String>,
    compression: Option<Compression>,
}

/// `GET /api/archive?ids=a,b,c`: the zip of files the caller may read, streamed.
#[utoipa::path(get, path = "/api/archive", tag = "files",
    params(
        ("ids" = String, Query, description = "Comma-separated file ids (1-1000)"),
        ("name" = Option<String>, Query, description = "File name for Content-Disposition (default files.zip)"),
        ("compression" = Option<String>, Query, description = "`store` (default) or `deflate`")),
    responses(
        (status = 200, description = "The zip, streamed (no Content-Length)", content_type = "application/zip"),
        (status = 400, description = "No ids, too many, or a bad name", body = crate::openapi::ErrorBody),
        (status = 404, description = "A file does not exist or you may not read it", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn download(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Query(q): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let name = archive_name(q.name.as_deref())?;
    let ids: Vec<String> = q
        .ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let rows = files(&p, &claims.sub, &ids).await?;
    let body = Body::from_stream(zip_stream(
        &p,
        rows,
        q.compression.unwrap_or(Compression::Store),
    ));
    metrics::counter!("picker_archives_total", "kind" => "download").increment(1);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/zip")
        .header(
            header::CONTENT_DISPOSITION,
            crate::api::content_disposition(&name),
        )
        .header(header::CACHE_CONTROL, "private, no-store")
        .body(body)
        .map_err(ApiError::internal)
}

/// `POST /api/archive` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveBody {
    /// Files to put in (1-1000), each one you may read.
    pub file_ids: Vec<String>,
    /// Name of the zip (default files.zip).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub compression: Option<Compression>,
}

/// `POST /api/archive`: a job that stores the zip as a new file of the caller's.
#[utoipa::path(post, path = "/api/archive", tag = "jobs",
    request_body = ArchiveBody,
    responses(
        (status = 202, description = "The job; archive.completed / archive.failed follow"),
        (status = 400, description = "No ids, too many, or a bad name", body = crate::openapi::ErrorBody),
        (status = 404, description = "A file does not exist or you may not read it", body = crate::openapi::ErrorBody),
        (status = 413, description = "too_large / quota_exceeded: the zip would not fit", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn start(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<ArchiveBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = claims.sub;
    let name = archive_name(body.name.as_deref())?;
    let rows = files(&p, &user, &body.file_ids).await?;
    // Refused now if even the stored bytes cannot fit (the zip adds ~100 bytes per file).
    let budget = Budget::of(&p, &user).await?;
    let least: u64 = rows.iter().map(|r| r.size + 100).sum();
    if body.compression != Some(Compression::Deflate) {
        if least > budget.max_file {
            return Err(crate::api::too_large(budget.max_file));
        }
        if least > budget.room() {
            return Err(crate::api::over_quota(budget.quota, budget.used));
        }
    }
    let mut job = JobRow::running(
        user.clone(),
        "archive",
        json!({"type": "archive", "files": rows.len(), "name": name}).to_string(),
    );
    job.total = i64::try_from(least).unwrap_or(-1);
    jobs::insert(&p, &job).await.map_err(db_error)?;
    let (task, id) = (p.clone(), job.id.clone());
    let compression = body.compression.unwrap_or(Compression::Store);
    tokio::spawn(async move {
        let p = task;
        let outcome = async {
            let mut budget = Budget::of(&p, &user).await?;
            let stream = zip_stream(&p, rows, compression);
            store_stream(&p, &user, name, stream, None, None, &mut budget).await
        }
        .await;
        match outcome {
            Ok(s) => {
                let size = i64::try_from(s.row.size).unwrap_or(i64::MAX);
                let _ = jobs::touch(&p, &id, size, size).await;
                if let Err(e) = jobs::finish(&p, &id, "completed", &s.row.id, ("", "")).await {
                    tracing::error!(error = %e, job = %id, "job completion not recorded");
                }
                p.events.publish_content(
                    "archive.completed",
                    vec![user],
                    &s.row.id,
                    json!({"job_id": id, "file_id": s.row.id, "name": s.row.name,
                           "size": s.row.size}),
                );
            }
            Err(e) => {
                if let Err(err) = jobs::finish(&p, &id, "failed", "", (e.code, &e.message)).await {
                    tracing::error!(error = %err, job = %id, "job failure not recorded");
                }
                p.events.publish_access(
                    "archive.failed",
                    vec![user],
                    &id,
                    json!({"job_id": id, "error": {"code": e.code, "message": e.message}}),
                );
            }
        }
    });
    metrics::counter!("picker_archives_total", "kind" => "job").increment(1);
    Ok((StatusCode::ACCEPTED, Json(jobs::job_json(&job))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, folder: &str) -> FileRow {
        FileRow {
            id: String::new(),
            owner_id: String::new(),
            name: name.into(),
            size: 0,
            content_type: String::new(),
            content_hash: String::new(),
            engine_id: String::new(),
            created_at: 0,
            updated_at: 0,
            folder: folder.into(),
            derived_from: String::new(),
            transform: String::new(),
        }
    }

    #[test]
    fn entry_names_keep_folders_and_never_repeat() {
        let rows = [
            row("a.txt", ""),
            row("a.txt", ""),
            row("a.txt", "docs"),
            row("a.txt", ""),
            row("README", ""),
            row("README", ""),
            row(".env", ""),
            row(".env", ""),
        ];
        assert_eq!(
            entry_names(&rows),
            [
                "a.txt",
                "a (2).txt",
                "docs/a.txt",
                "a (3).txt",
                "README",
                "README (2)",
                ".env",
                ".env (2)"
            ]
        );
    }
}
