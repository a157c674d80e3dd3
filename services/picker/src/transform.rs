//! Transforms: `POST /api/transform/{id}` (a job whose result is a new file of the caller's,
//! linked to its source) and `GET /api/files/{id}/content?transform=...` (the result served
//! directly: the image-CDN case). Both speak the operation language of
//! [`fms_transformer::ops`] and share one result cache.
//!
//! The transformer is called over gRPC (`TransformFile`): this picker streams the source out
//! of the engine into the call and the result back into the engine, both with backpressure.
//! The result is kept under (source BLAKE3, `v<version>:<canonical transform>`) in
//! `transform_cache`, as an engine file of its own; a repeated request by anyone who may read
//! the source is answered from it without calling the transformer. A user's result file is
//! a join of the cached file's chunks (no copy), so deleting either leaves the other whole.
//! Identical requests arriving together in this process run the transform once.
//!
//! A job that finds the transformer busy waits (`queued`) and retries with backoff for up to
//! [`QUEUE_FOR`]; an on-the-fly read answers 429 with Retry-After at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use fms_auth::verify::Authenticated;
use fms_permission::model::Right;
use fms_platform::ApiError;
use fms_platform::error::ApiJson;
use fms_proto::transformer::v1 as pb;
use fms_transformer::ops::{self, Transform};
use pb::transformer_service_client::TransformerServiceClient;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::Picker;
use crate::api::{Budget, NewFile, authorized, commit_stored, db_error, now_ms};
use crate::jobs::{self, JobRow};
use crate::meta::FileRow;

/// The transformer, over gRPC.
pub type Client = TransformerServiceClient<Channel>;

/// How long a job waits for a busy transformer before it fails.
pub const QUEUE_FOR: Duration = Duration::from_secs(600);
/// Transform jobs one user may have queued or running.
const MAX_JOBS_PER_USER: i64 = 16;
/// Source bytes per message to the transformer.
const PIECE: usize = 256 << 10;
/// A cache entry's `used_at` is refreshed at most this often (a hot entry is not a write
/// per read).
const TOUCH_AFTER_MS: i64 = 60_000;

/// The transformer client and the transforms running in this process.
#[derive(Debug, Default)]
pub struct Transforms {
    client: Option<Client>,
    /// One lock per cache key being produced: identical requests wait for the first.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Jobs running per user in this process (the rest wait `queued`): one user's batch
    /// of expensive jobs cannot take every transformer slot from everyone else's.
    per_user: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    jobs_per_user: usize,
}

impl Transforms {
    /// Connect (lazily) to the transformer at `url`; empty: transforms answer 503.
    pub fn new(url: &str, jobs_per_user: u32) -> Result<Transforms, String> {
        let client = if url.is_empty() {
            None
        } else {
            let channel = tonic::transport::Endpoint::from_shared(url.to_string())
                .map_err(|e| format!("picker.transformer_url: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            Some(
                TransformerServiceClient::new(channel)
                    .max_decoding_message_size(8 << 20)
                    .max_encoding_message_size(8 << 20),
            )
        };
        Ok(Transforms {
            client,
            flights: Mutex::default(),
            per_user: Mutex::default(),
            jobs_per_user: (jobs_per_user as usize).max(1),
        })
    }

    /// The semaphore of `user`'s job places.
    fn places(&self, user: &str) -> Arc<tokio::sync::Semaphore> {
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        // Forget users with nothing running (only the map holds their semaphore).
        if m.len() > 10_000 {
            m.retain(|_, s| Arc::strong_count(s) > 1);
        }
        m.entry(user.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.jobs_per_user)))
            .clone()
    }
}

/// A cached result.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) engine_id: String,
    pub(crate) content_hash: String,
    /// Empty: not known (sniffed when it becomes a file).
    pub(crate) content_type: String,
    pub(crate) size: u64,
}

/// The cache key's transform part.
pub(crate) fn key(t: &Transform) -> String {
    format!("v{}:{}", ops::VERSION, t.canonical())
}

async fn lookup(p: &Picker, source_hash: &str, key: &str) -> Result<Option<Cached>, ApiError> {
    let row = sqlx::query(
        "SELECT engine_id, content_hash, content_type, size, used_at FROM transform_cache
         WHERE source_hash = $1 AND transform = $2",
    )
    .bind(source_hash)
    .bind(key)
    .fetch_optional(&p.meta.db().pool)
    .await
    .map_err(db_error)?;
    let Some(r) = row else { return Ok(None) };
    let cached = Cached {
        engine_id: r.try_get(0).map_err(db_error)?,
        content_hash: r.try_get(1).map_err(db_error)?,
        content_type: r.try_get(2).map_err(db_error)?,
        size: u64::try_from(r.try_get::<i64, _>(3).map_err(db_error)?).unwrap_or(0),
    };
    let used: i64 = r.try_get(4).map_err(db_error)?;
    let now = now_ms();
    if now - used > TOUCH_AFTER_MS {
        let _ = sqlx::query(
            "UPDATE transform_cache SET used_at = $1 WHERE source_hash = $2 AND transform = $3",
        )
        .bind(now)
        .bind(source_hash)
        .bind(key)
        .execute(&p.meta.db().pool)
        .await;
    }
    Ok(Some(cached))
}

/// What a user is told for a transformer status.
fn failure(s: &tonic::Status) -> ApiError {
    use tonic::Code as C;
    let m = s.message().to_string();
    match s.code() {
        C::InvalidArgument => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "transform_failed", m)
        }
        C::OutOfRange => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
        C::ResourceExhausted => {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", m);
            e.retry_after = Some(1);
            e
        }
        C::DeadlineExceeded => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m),
        C::Unavailable => {
            tracing::warn!(error = %m, "transformer unreachable");
            ApiError::unavailable("the transformer is unavailable", 5)
        }
        _ => {
            tracing::error!(code = ?s.code(), error = %m, "transform failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "transform_failed", m)
        }
    }
}

/// The result of `t` on `row`'s content: from the cache, or made now (and cached). The
/// boolean says whether it came from the cache.
pub(crate) async fn produce(
    p: &Picker,
    row: &FileRow,
    t: &Transform,
) -> Result<(Cached, bool), ApiError> {
    let key = key(t);
    if let Some(c) = lookup(p, &row.content_hash, &key).await? {
        metrics::counter!("picker_transform_cache_hits_total").increment(1);
        return Ok((c, true));
    }
    // One flight per key in this process: the others wait, then find it cached.
    let flight_key = format!("{}/{key}", row.content_hash);
    let flight = {
        let mut f = p
            .transforms
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f.entry(flight_key.clone()).or_default().clone()
    };
    let guard = flight.lock().await;
    let result = async {
        if let Some(c) = lookup(p, &row.content_hash, &key).await? {
            metrics::counter!("picker_transform_cache_hits_total").increment(1);
            return Ok((c, true));
        }
        metrics::counter!("picker_transform_cache_misses_total").increment(1);
        Ok((make(p, row, t, &key).await?, false))
    }
    .await;
    drop(guard);
    {
        let mut f = p
            .transforms
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&flight) <= 2 {
            f.remove(&flight_key);
        }
    }
    result
}

/// Run the transformer on `row`'s content and keep the result in the cache.
async fn make(p: &Picker, row: &FileRow, t: &Transform, key: &str) -> Result<Cached, ApiError> {
    let Some(client) = p.transforms.client.clone() else {
        return Err(ApiError::unavailable(
            "transforms are not configured here (picker.transformer_url)",
            30,
        ));
    };
    let engine_id = row.engine_file().map_err(ApiError::internal)?;
    let idle = p.cfg.idle_timeout.0;
    let mut source = p.engine.read(engine_id, 0, row.size, idle);
    let spec = pb::TransformFileRequest {
        msg: Some(pb::transform_file_request::Msg::Spec(pb::TransformSpec {
            source_size: row.size,
            transform: t.canonical(),
        })),
    };
    // The source goes out through a channel. A read error must never look like the end of
    // the source (a stream transform would make a valid result of half a file): the pump
    // reports it and keeps the request stream open until the call is dropped, so the
    // transformer sees a broken stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (broken_tx, broken) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        if tx.send(spec).await.is_err() {
            return;
        }
        while let Some(frame) = source.next().await {
            match frame {
                Ok(b) => {
                    for piece in pieces(b) {
                        let m = pb::TransformFileRequest {
                            msg: Some(pb::transform_file_request::Msg::Data(piece)),
                        };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = broken_tx.send(e.to_string());
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.set_timeout(p.cfg.transform_timeout.0);
    let call = async {
        let stream = client
            .clone()
            .transform_file(request)
            .await
            .map_err(|s| failure(&s))?
            .into_inner();
        receive(p, stream, idle).await
    };
    tokio::pin!(call);
    let (head, info) = tokio::select! {
        r = &mut call => r?,
        Ok(e) = broken => {
            tracing::error!(error = %e, file = %row.id, "transform source unreadable");
            return Err(ApiError::internal(format!("the source could not be read: {e}")));
        }
    };
    store_cached(p, row, key, head, info).await
}

/// The transformer's next message, within `idle`.
async fn next(
    s: &mut tonic::Streaming<pb::TransformFileResponse>,
    idle: Duration,
) -> Result<Option<pb::transform_file_response::Msg>, ApiError> {
    match tokio::time::timeout(idle, s.message()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the transformer sent nothing for {}s", idle.as_secs()),
        )),
        Ok(Err(s)) => Err(failure(&s)),
        Ok(Ok(m)) => Ok(m.and_then(|m| m.msg)),
    }
}

/// The transformer's answer stored in the engine (not yet in the cache table).
async fn receive(
    p: &Picker,
    mut stream: tonic::Streaming<pb::TransformFileResponse>,
    idle: Duration,
) -> Result<(pb::TransformResult, fms_engine::FileInfo), ApiError> {
    let Some(pb::transform_file_response::Msg::Result(head)) = next(&mut stream, idle).await?
    else {
        return Err(ApiError::internal(
            "the transformer answered without a result header",
        ));
    };
    let max = p.cfg.max_file_size.0;
    let mut ingest = p.engine.ingest(CACHE_SCOPE);
    let mut size = 0u64;
    let mut gather = crate::engine::Gather::new(crate::api::INGEST_PIECE);
    while let Some(m) = next(&mut stream, idle).await? {
        let pb::transform_file_response::Msg::Data(b) = m else {
            return Err(ApiError::internal("the transformer sent a second header"));
        };
        size += b.len() as u64;
        if size > max {
            return Err(crate::api::too_large(max));
        }
        if let Some(piece) = gather.push(b) {
            ingest.write(piece).await.map_err(ApiError::internal)?;
        }
    }
    if let Some(piece) = gather.finish() {
        ingest.write(piece).await.map_err(ApiError::internal)?;
    }
    let info = ingest.finish().await.map_err(ApiError::internal)?;
    Ok((head, info))
}

/// Record a stored result in the cache (or take the one another replica recorded first).
async fn store_cached(
    p: &Picker,
    row: &FileRow,
    key: &str,
    head: pb::TransformResult,
    info: fms_engine::FileInfo,
) -> Result<Cached, ApiError> {
    let cached = Cached {
        engine_id: info.id.to_string(),
        content_hash: hex::encode(info.meta.hash),
        content_type: head.content_type,
        size: info.meta.size,
    };
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO transform_cache (source_hash, transform, engine_id, content_hash,
             content_type, size, width, height, created_at, used_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (source_hash, transform) DO NOTHING",
    )
    .bind(&row.content_hash)
    .bind(key)
    .bind(&cached.engine_id)
    .bind(&cached.content_hash)
    .bind(&cached.content_type)
    .bind(i64::try_from(cached.size).unwrap_or(i64::MAX))
    .bind(i64::from(head.width))
    .bind(i64::from(head.height))
    .bind(now)
    .bind(now)
    .execute(&p.meta.db().pool)
    .await;
    match inserted {
        Ok(r) if r.rows_affected() == 1 => Ok(cached),
        Ok(_) => {
            // Another replica cached it meanwhile: theirs is the one.
            let _ = p.engine.delete(info.id).await;
            lookup(p, &row.content_hash, key)
                .await?
                .ok_or_else(|| ApiError::unavailable("retry the request", 1))
        }
        Err(e) => {
            let _ = p.engine.delete(info.id).await;
            Err(db_error(e))
        }
    }
}

/// The engine scope of cached results (no user's).
const CACHE_SCOPE: &str = "\0transform-cache";

fn pieces(b: Bytes) -> Vec<Bytes> {
    if b.len() <= PIECE {
        return vec![b];
    }
    (0..b.len())
        .step_by(PIECE)
        .map(|at| b.slice(at..(at + PIECE).min(b.len())))
        .collect()
}

/// A file name for a result: the source's stem and an extension for its type.
pub(crate) fn result_name(source: &str, content_type: &str) -> String {
    let stem = |s: &str| match s.rsplit_once('.') {
        Some((a, _)) if !a.is_empty() => a.to_string(),
        _ => s.to_string(),
    };
    let ext = match content_type.split(';').next().unwrap_or("").trim() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "text/plain" => "txt",
        "text/tab-separated-values" => "tsv",
        "text/html" => "hocr.html",
        "application/zstd" => return format!("{source}.zst"),
        "application/gzip" => return format!("{source}.gz"),
        // Decompressed: the name without the compression's suffix.
        "" => {
            for suffix in [".zst", ".gz", ".gzip"] {
                if let Some(s) = source.strip_suffix(suffix)
                    && !s.is_empty()
                {
                    return s.to_string();
                }
            }
            return source.to_string();
        }
        _ => "bin",
    };
    let mut base = stem(source);
    // Names are at most 255 bytes: shorten the stem, on a character boundary.
    while base.len() + 1 + ext.len() > crate::api::MAX_NAME_LEN {
        base.pop();
    }
    format!("{base}.{ext}")
}

/// `POST /api/transform/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformBody {
    /// The steps, in order (docs/api/transform.md); or use `transform`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub operations: Option<Value>,
    /// The same in the compact form: `resize:w=800/output:f=webp`.
    #[serde(default)]
    pub transform: Option<String>,
    /// Name of the result; default: the source's with the result's extension.
    #[serde(default)]
    pub name: Option<String>,
}

fn parse(body: &TransformBody) -> Result<Transform, ApiError> {
    let invalid = |e: ops::OpError| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_transform", e.to_string())
    };
    match (&body.operations, &body.transform) {
        (Some(o), None) => Transform::from_json(o).map_err(invalid),
        (None, Some(t)) => Transform::from_compact(t).map_err(invalid),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_transform",
            "give `operations` (an array of steps) or `transform` (the compact form)",
        )),
    }
}

/// `POST /api/transform/{id}`: start a transform of a file the caller may read; `202` with
/// the job. The result becomes the caller's file.
#[utoipa::path(post, path = "/api/transform/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Source file id")),
    request_body = TransformBody,
    responses(
        (status = 202, description = "The transform runs; follow it at /api/jobs/{id} or wait for transform.completed"),
        (status = 400, description = "invalid_transform", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such file, or you may not read it", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_transforms: 16 of yours are queued or running", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody),
        (status = 503, description = "Transforms are not configured, or a dependency is unavailable", body = crate::openapi::ErrorBody)))]
pub(crate) async fn start(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransformBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = claims.sub;
    let t = parse(&body)?;
    if let Some(n) = &body.name {
        crate::api::check_name(n)?;
    }
    let row = authorized(&p, &user, &id, Right::Read).await?;
    if p.transforms.client.is_none() {
        return Err(ApiError::unavailable(
            "transforms are not configured here (picker.transformer_url)",
            30,
        ));
    }
    let active = jobs::active(&p, &user, "transform")
        .await
        .map_err(db_error)?;
    if active >= MAX_JOBS_PER_USER {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_transforms",
            format!("{MAX_JOBS_PER_USER} of your transforms are queued or running; wait for one"),
        );
        e.retry_after = Some(5);
        return Err(e);
    }
    let job = JobRow::running(
        user.clone(),
        "transform",
        json!({"type": "transform", "file_id": row.id, "transform": t.canonical()}).to_string(),
    );
    jobs::insert(&p, &job).await.map_err(db_error)?;
    let task = p.clone();
    let job_id = job.id.clone();
    let name = body.name.clone();
    tokio::spawn(async move { run_job(task, job_id, user, row, t, name).await });
    metrics::counter!("picker_transform_jobs_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(jobs::job_json(&job))))
}

/// A job: produce (waiting while the transformer is busy), then the caller's file.
async fn run_job(
    p: Arc<Picker>,
    id: String,
    user: String,
    row: FileRow,
    t: Transform,
    name: Option<String>,
) {
    let outcome = async {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut queued = false;
        // This user's place among their jobs (the others wait, queued and touched).
        let places = p.transforms.places(&user);
        let _place = match places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                queued = true;
                let _ = jobs::set_state(&p, &id, "queued").await;
                let place = places.acquire_owned();
                tokio::pin!(place);
                let mut tick = tokio::time::interval(jobs::TOUCH_EVERY);
                tick.tick().await;
                loop {
                    tokio::select! {
                        permit = &mut place => match permit {
                            Ok(permit) => break permit,
                            Err(_) => return Err(ApiError::internal("job places closed")),
                        },
                        _ = tick.tick() => { let _ = jobs::touch(&p, &id, 0, -1).await; }
                    }
                }
            }
        };
        if queued {
            queued = false;
            let _ = jobs::set_state(&p, &id, "running").await;
        }
        // The row is touched while the job waits, so it never reads as interrupted.
        let (cached, hit) = loop {
            let attempt = produce(&p, &row, &t);
            let mut tick = tokio::time::interval(jobs::TOUCH_EVERY);
            tick.tick().await;
            tokio::pin!(attempt);
            let r = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    _ = tick.tick() => { let _ = jobs::touch(&p, &id, 0, -1).await; }
                }
            };
            match r {
                Err(e) if e.code == "busy" && started.elapsed() < QUEUE_FOR => {
                    if !queued {
                        queued = true;
                        let _ = jobs::set_state(&p, &id, "queued").await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    let _ = jobs::touch(&p, &id, 0, -1).await;
                }
                Err(e) => return Err(e),
                Ok(c) => {
                    if queued {
                        let _ = jobs::set_state(&p, &id, "running").await;
                    }
                    break c;
                }
            }
        };
        let file = materialize(&p, &user, &row, &t, &cached, name).await?;
        Ok::<_, ApiError>((file, hit))
    }
    .await;
    match outcome {
        Ok((f, hit)) => {
            let size = i64::try_from(f.size).unwrap_or(i64::MAX);
            let _ = jobs::touch(&p, &id, size, size).await;
            if let Err(e) = jobs::finish(&p, &id, "completed", &f.id, ("", "")).await {
                tracing::error!(error = %e, job = %id, "job completion not recorded");
            }
            p.events.publish_content(
                "transform.completed",
                vec![user],
                &f.id,
                json!({"job_id": id, "file_id": f.id, "source_file_id": row.id,
                       "name": f.name, "size": f.size, "content_type": f.content_type,
                       "cached": hit}),
            );
        }
        Err(e) => {
            if let Err(err) = jobs::finish(&p, &id, "failed", "", (e.code, &e.message)).await {
                tracing::error!(error = %err, job = %id, "job failure not recorded");
            }
            p.events.publish_access(
                "transform.failed",
                vec![user],
                &id,
                json!({"job_id": id, "source_file_id": row.id,
                       "error": {"code": e.code, "message": e.message}}),
            );
        }
    }
}

/// The caller's file for a result: the one they already have for this source and transform,
/// else a new one joining the cached result's chunks.
async fn materialize(
    p: &Picker,
    user: &str,
    source: &FileRow,
    t: &Transform,
    cached: &Cached,
    name: Option<String>,
) -> Result<FileRow, ApiError> {
    let key = key(t);
    if name.is_none()
        && let Some(id) = sqlx::query(
            "SELECT id FROM files WHERE owner_id = $1 AND derived_from = $2 AND transform = $3
             AND content_hash = $4 ORDER BY created_at LIMIT 1",
        )
        .bind(user)
        .bind(&source.id)
        .bind(&key)
        .bind(&cached.content_hash)
        .fetch_optional(&p.meta.db().pool)
        .await
        .map_err(db_error)?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()
        .map_err(db_error)?
        && let Some(row) = p.meta.get(&id).await.map_err(db_error)?
    {
        return Ok(row);
    }
    let mut budget = Budget::of(p, user).await?;
    if cached.size > budget.max_file {
        return Err(crate::api::too_large(budget.max_file));
    }
    let engine_id = cached.engine_id.parse().map_err(ApiError::internal)?;
    let info = p
        .engine
        .concat(vec![engine_id], user)
        .await
        .map_err(ApiError::internal)?;
    let new = NewFile {
        name: name.unwrap_or_else(|| result_name(&source.name, &cached.content_type)),
        folder: source.folder.clone(),
        content_type: (!cached.content_type.is_empty()).then(|| cached.content_type.clone()),
        derived_from: source.id.clone(),
        transform: key,
    };
    let head = if cached.content_type.is_empty() {
        let mut head = Vec::new();
        let mut s = p.engine.read(
            info.id,
            0,
            info.meta.size.min(crate::api::SNIFF_LEN as u64),
            p.cfg.idle_timeout.0,
        );
        while let Some(Ok(b)) = s.next().await {
            head.extend_from_slice(&b);
        }
        head
    } else {
        Vec::new()
    };
    let hash = hex::encode(info.meta.hash);
    let stored = commit_stored(p, user, new, info, hash, &head, None, &mut budget).await?;
    Ok(stored.row)
}

/// What an on-the-fly read serves: the cached result of `transform` on `row`.
pub(crate) async fn on_the_fly(
    p: &Picker,
    row: &FileRow,
    transform: &str,
) -> Result<crate::api::Served, ApiError> {
    let t = Transform::from_compact(transform)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_transform", e.to_string()))?;
    let (cached, _) = produce(p, row, &t).await?;
    let mut content_type = cached.content_type.clone();
    if content_type.is_empty() {
        content_type = "application/octet-stream".into();
    }
    Ok(crate::api::Served {
        engine_id: cached.engine_id.parse().map_err(ApiError::internal)?,
        size: cached.size,
        content_hash: cached.content_hash,
        name: result_name(&row.name, &cached.content_type),
        content_type,
    })
}

/// Drop least recently used cache entries while the cache holds more than `max` bytes.
/// Returns how many went. Users' result files are their own engine files: untouched.
pub async fn evict(p: &Picker, max: u64) -> Result<u64, sqlx::Error> {
    let pool = &p.meta.db().pool;
    let total: i64 = sqlx::query("SELECT COALESCE(SUM(size), 0) FROM transform_cache")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    let mut over = u64::try_from(total).unwrap_or(0).saturating_sub(max);
    let mut gone = 0;
    while over > 0 {
        let rows = sqlx::query(
            "SELECT source_hash, transform, engine_id, size FROM transform_cache
             ORDER BY used_at LIMIT 100",
        )
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let (source, transform, engine_id): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let size = u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0);
            sqlx::query("DELETE FROM transform_cache WHERE source_hash = $1 AND transform = $2")
                .bind(&source)
                .bind(&transform)
                .execute(pool)
                .await?;
            if let Ok(id) = engine_id.parse() {
                let _ = p.engine.delete(id).await;
            }
            gone += 1;
            over = over.saturating_sub(size);
            if over == 0 {
                break;
            }
        }
    }
    if gone > 0 {
        metrics::counter!("picker_transform_cache_evicted_total").increment(gone);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_names_follow_the_result() {
        assert_eq!(result_name("cat.jpeg", "image/webp"), "cat.webp");
        assert_eq!(
            result_name("scan.png", "text/plain; charset=utf-8"),
            "scan.txt"
        );
        assert_eq!(result_name("noext", "image/png"), "noext.png");
        assert_eq!(result_name(".hidden", "image/png"), ".hidden.png");
        assert_eq!(result_name("log.txt", "application/zstd"), "log.txt.zst");
        assert_eq!(result_name("log.txt.zst", ""), "log.txt");
        assert_eq!(result_name("x.gz", ""), "x");
        assert_eq!(result_name("plain", ""), "plain");
        let long = format!("{}.png", "é".repeat(127));
        let n = result_name(&long, "image/webp");
        assert!(n.len() <= 255 && n.ends_with(".webp"), "{n}");
    }

    #[test]
    fn big_frames_are_cut_into_pieces() {
        let b = Bytes::from(vec![7u8; PIECE * 2 + 5]);
        let p = pieces(b);
        assert_eq!(
            p.iter().map(Bytes::len).collect::<Vec<_>>(),
            [PIECE, PIECE, 5]
        );
        assert_eq!(pieces(Bytes::from_static(b"abc")).len(), 1);
    }
}
