//! `fms.picker.v1.FilesService`: the public gRPC API for bulk clients. Same token, same
//! authorization, same limits as REST; uploads are the resumable uploads of the tus endpoint
//! (one table, one engine session each), driven by a bidirectional stream that reports
//! durable offsets as it goes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use fms_auth::verify::Authenticator;
use fms_permission::model::Right;
use fms_platform::ApiError;
use fms_proto::picker::v1 as pb;
use futures_util::{Stream, StreamExt};
use pb::files_service_server::{FilesService, FilesServiceServer};
use pb::upload_request::Msg as In;
use pb::upload_response::Msg as Out;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::Picker;
use crate::api::{Budget, authorized, check_name, over_quota, remove_file, too_large};
use crate::engine::{Append, EngineError, Gather};
use crate::grpc::{info, invalid, read_range, status};
use crate::meta::UploadRow;
use crate::tus;

/// Largest message either way (a data message, a chunk, a batch of chunk ids).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The public service over a shared [`Picker`].
#[derive(Clone)]
pub struct Files {
    picker: Arc<Picker>,
    auth: Arc<Authenticator>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files").finish_non_exhaustive()
    }
}

impl Files {
    pub fn server(picker: Arc<Picker>, auth: Arc<Authenticator>) -> FilesServiceServer<Files> {
        FilesServiceServer::new(Files { picker, auth })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The caller, from `authorization: Bearer <token>`.
    async fn user<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        let claims = self
            .auth
            .authenticate_token(token)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(claims.sub)
    }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages to the client; `false` once it is gone.
async fn send(tx: &mpsc::Sender<Result<pb::UploadResponse, Status>>, msg: Out) -> bool {
    tx.send(Ok(pb::UploadResponse { msg: Some(msg) }))
        .await
        .is_ok()
}

/// The file of an Upload stream that is open.
struct Open<'a> {
    row: UploadRow,
    app: Append,
    /// Where this stream started writing it.
    from: u64,
    at: u64,
    /// Bytes received since the last checkpoint.
    since_checkpoint: u64,
    /// Dedup-aware: bytes taken from the caller's own chunks since the last checkpoint,
    /// and in all.
    reused_since_checkpoint: u64,
    reused: u64,
    /// Dedup-aware: announced chunks still to come (size, whether the bytes are needed).
    plan: VecDeque<(u32, bool)>,
    pieces: Gather,
    budget: Budget,
    timing: crate::engine::Timing<'a>,
}

impl Open<'_> {
    /// Checkpoint; the acknowledged offset.
    async fn checkpoint(&mut self) -> Result<u64, Status> {
        if let Some(piece) = self.pieces.finish() {
            self.app
                .write(piece)
                .await
                .map_err(|e| status(ApiError::internal(e)))?;
        }
        self.app.checkpoint().await.map_err(chunk_error)
    }
}

/// What a start message leads to.
enum Started<'a> {
    Open(Box<Open<'a>>),
    /// The upload named was complete already: its file.
    Done(pb::FileInfo),
}

/// Open (or resume) one file of an Upload stream.
async fn start<'a>(p: &'a Picker, user: &str, s: pb::UploadStart) -> Result<Started<'a>, Status> {
    let budget = Budget::of(p, user).await.map_err(status)?;
    let row = if s.upload_id.is_empty() {
        if s.offset != 0 {
            return Err(invalid("a new upload starts at offset 0"));
        }
        let name = check_name(&s.name).map_err(status)?.to_string();
        let folder = crate::api::check_folder(&s.folder).map_err(status)?;
        if let Some(n) = s.size {
            if n > budget.max_file {
                return Err(status(too_large(budget.max_file)));
            }
            if n > budget.room() {
                return Err(status(over_quota(budget.quota, budget.used)));
            }
        }
        let metadata = tus::metadata_for(&name, &folder);
        tus::new_upload(p, user, name, s.size, metadata, None)
            .await
            .map_err(status)?
    } else {
        let row = tus::owned_upload(p, user, &s.upload_id)
            .await
            .map_err(status)?;
        if tus::is_complete(&row) {
            // A client whose stream broke between its end message and the record learns
            // the record now (no second file).
            let file = match &row.file_id {
                Some(id) => p
                    .meta
                    .get(id)
                    .await
                    .map_err(|e| status(crate::api::db_error(e)))?,
                None => None,
            };
            return match file {
                Some(f) if f.owner_id == user => Ok(Started::Done(info(&f, f.size))),
                _ => Err(Status::failed_precondition(
                    "this upload is complete and its file is gone; nothing to resume",
                )),
            };
        }
        if row.concat.is_some() {
            return Err(invalid(
                "a tus concatenation part is resumed through /api/uploads, not here",
            ));
        }
        row
    };
    let at = (!s.resume).then_some(s.offset);
    let (app, at) = p
        .engine
        .append(tus::session_of(&row).map_err(status)?, at, user)
        .await
        .map_err(|e| match e {
            EngineError::Engine(fms_engine::Error::OffsetMismatch { current, .. }) => {
                Status::aborted(format!(
                    "the upload is at offset {current}; resume from there"
                ))
            }
            EngineError::Engine(fms_engine::Error::SessionBusy(_)) => {
                Status::aborted("another stream is writing to this upload")
            }
            e => status(tus::engine_error(e)),
        })?;
    Ok(Started::Open(Box::new(Open {
        row,
        app,
        from: at,
        at,
        since_checkpoint: 0,
        reused_since_checkpoint: 0,
        reused: 0,
        plan: VecDeque::new(),
        pieces: Gather::new(crate::api::INGEST_PIECE),
        budget,
        timing: p.write_cost.begin(),
    })))
}

/// Whether `n` more bytes fit the open file's limits.
fn room_for(open: &Open<'_>, n: u64) -> Result<(), Status> {
    let next = open.at.saturating_add(n);
    if let Some(len) = open.row.length
        && next > len
    {
        return Err(Status::out_of_range(format!(
            "more bytes than the declared size ({len})"
        )));
    }
    if next > open.budget.max_file {
        return Err(status(too_large(open.budget.max_file)));
    }
    if next > open.budget.room() {
        return Err(status(over_quota(open.budget.quota, open.budget.used)));
    }
    Ok(())
}

/// Bytes received from clients by the bulk API (data and chunk messages).
fn received(p: &Picker, n: usize) {
    p.grpc_bytes_received
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("picker_grpc_upload_bytes_received_total").increment(n as u64);
}

/// Checkpoint if enough arrived since the last one: every 8 MiB received, or every
/// 64 MiB of the file when most of it is the caller's own chunks (each checkpoint syncs).
async fn maybe_checkpoint(open: &mut Open<'_>) -> Result<Option<u64>, Status> {
    if open.since_checkpoint >= tus::CHECKPOINT_EVERY
        || open.since_checkpoint + open.reused_since_checkpoint >= 8 * tus::CHECKPOINT_EVERY
    {
        open.since_checkpoint = 0;
        open.reused_since_checkpoint = 0;
        return open.checkpoint().await.map(Some);
    }
    Ok(None)
}

/// Dedup-aware: take the announced chunks at the front that the caller's files hold (the
/// engine reads them in itself).
fn take_held(open: &mut Open<'_>) {
    while let Some(&(len, false)) = open.plan.front() {
        open.plan.pop_front();
        open.reused += len as u64;
        open.reused_since_checkpoint += len as u64;
    }
}

/// Dedup-aware: the next chunks of the open file as the client cut them.
async fn announce(open: &mut Open<'_>, refs: pb::ChunkRefs) -> Result<Vec<bool>, Status> {
    if refs.refs.is_empty() {
        return Err(invalid("a chunks message names no chunk"));
    }
    let mut chunks = Vec::with_capacity(refs.refs.len());
    let mut total = 0u64;
    for r in &refs.refs {
        let id: [u8; 32] = r.blake3[..]
            .try_into()
            .map_err(|_| invalid("a chunk's blake3 must be 32 bytes"))?;
        chunks.push((fms_engine::ChunkId(id), r.size));
        total += r.size as u64;
    }
    room_for(open, total)?;
    // Raw bytes gathered so far go in first: the chunks follow them.
    if let Some(piece) = open.pieces.finish() {
        open.app
            .write(piece)
            .await
            .map_err(|e| status(ApiError::internal(e)))?;
    }
    let needed = open.app.announce(chunks).await.map_err(chunk_error)?;
    open.at += total;
    for (r, &n) in refs.refs.iter().zip(&needed) {
        open.plan.push_back((r.size, n));
    }
    take_held(open);
    Ok(needed)
}

/// Dedup-aware: the bytes of the next announced chunk that was needed.
async fn chunk(open: &mut Open<'_>, bytes: bytes::Bytes) -> Result<Option<u64>, Status> {
    match open.plan.front() {
        Some(&(len, true)) if len as usize == bytes.len() => {}
        Some(&(len, true)) => {
            return Err(invalid(format!(
                "the next chunk was announced with {len} bytes, not {}",
                bytes.len()
            )));
        }
        _ => return Err(invalid("chunk bytes the server did not ask for")),
    }
    open.plan.pop_front();
    open.since_checkpoint += bytes.len() as u64;
    open.app.chunk(bytes).await.map_err(chunk_error)?;
    take_held(open);
    maybe_checkpoint(open).await
}

/// An engine error on the dedup-aware path: the client's fault where it is.
fn chunk_error(e: EngineError) -> Status {
    match e {
        EngineError::Engine(e @ fms_engine::Error::BadChunks(_))
        | EngineError::Engine(e @ fms_engine::Error::ChunkMismatch { .. }) => {
            invalid(e.to_string())
        }
        e => status(ApiError::internal(e)),
    }
}

/// The next bytes of the open file, within its limits.
async fn data(open: &mut Open<'_>, bytes: bytes::Bytes) -> Result<Option<u64>, Status> {
    if !open.plan.is_empty() {
        return Err(invalid(
            "data while announced chunks are still to come (send them as chunk messages)",
        ));
    }
    room_for(open, bytes.len() as u64)?;
    open.at += bytes.len() as u64;
    open.since_checkpoint += bytes.len() as u64;
    if let Some(piece) = open.pieces.push(bytes) {
        open.app
            .write(piece)
            .await
            .map_err(|e| status(ApiError::internal(e)))?;
    }
    maybe_checkpoint(open).await
}

/// The end of the open file: commit it.
async fn end(p: &Picker, mut open: Open<'_>, e: pb::UploadEnd) -> Result<pb::FileInfo, Status> {
    if !open.plan.is_empty() {
        return Err(invalid(format!(
            "{} announced chunks were not sent",
            open.plan.iter().filter(|(_, n)| *n).count()
        )));
    }
    let expected = (!e.blake3.is_empty()).then_some(e.blake3.as_str());
    if let Some(want) = expected
        && (want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid("blake3 must be 64 hex digits"));
    }
    match open.row.length {
        Some(len) if len != open.at => {
            return Err(invalid(format!(
                "the file ended at {} bytes, its declared size is {len}",
                open.at
            )));
        }
        Some(_) => {}
        None => {
            p.meta
                .set_upload_length(&open.row.id, open.at)
                .await
                .map_err(|e| status(crate::api::db_error(e)))?;
            open.row.length = Some(open.at);
        }
    }
    if let Some(piece) = open.pieces.finish() {
        open.app
            .write(piece)
            .await
            .map_err(|e| status(ApiError::internal(e)))?;
    }
    let mut new_bytes = 0;
    let stored = tus::complete(
        p,
        &open.row,
        open.app,
        &mut open.budget,
        expected,
        Some(&mut new_bytes),
    )
    .await
    .map_err(status)?
    .ok_or_else(|| status(ApiError::internal("a bulk upload became a partial upload")))?;
    // Content (partly) in the store already must not commit sooner than new content would
    // (reliability test 40), as for REST and tus uploads. The caller's own chunks, which it
    // did not send, are no secret to it: only the bytes received count.
    let bytes = open.at - open.from - open.reused;
    // An upload that reused the caller's chunks took time for bytes it did not receive (they
    // were read back): it would teach a wrong cost per byte.
    if open.reused == 0 {
        p.write_cost.observe(bytes, new_bytes, &open.timing);
    }
    if new_bytes < bytes {
        tokio::time::sleep(p.write_cost.pad(bytes, open.timing.elapsed())).await;
    }
    Ok(info(&stored.row, stored.new_bytes))
}

/// One Upload stream: files one after another; progress as bytes become durable.
async fn upload_loop(
    p: Arc<Picker>,
    user: String,
    mut inbound: Streaming<pb::UploadRequest>,
    tx: mpsc::Sender<Result<pb::UploadResponse, Status>>,
) {
    let idle = p.cfg.idle_timeout.0;
    let mut open: Option<Open<'_>> = None;
    let failure: Option<Status> = loop {
        let msg = match tokio::time::timeout(idle, inbound.message()).await {
            Err(_) => {
                break Some(Status::deadline_exceeded(format!(
                    "no message for {}s",
                    idle.as_secs()
                )));
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                break open
                    .is_some()
                    .then(|| invalid("the stream ended inside a file (resume it later)"));
            }
            Ok(Err(e)) => break Some(e),
        };
        let step: Result<(), Status> = async {
            match msg.msg {
                Some(In::Start(s)) => {
                    if open.is_some() {
                        return Err(invalid("a file is open: end it before starting another"));
                    }
                    match start(&p, &user, s).await? {
                        Started::Open(o) => {
                            let progress = pb::UploadProgress {
                                upload_id: o.row.id.clone(),
                                offset: o.at,
                            };
                            open = Some(*o);
                            send(&tx, Out::Progress(progress)).await;
                        }
                        Started::Done(file) => {
                            send(&tx, Out::File(file)).await;
                        }
                    }
                }
                Some(In::Data(bytes)) => {
                    received(&p, bytes.len());
                    let o = open
                        .as_mut()
                        .ok_or_else(|| invalid("data before a start message"))?;
                    if let Some(offset) = data(o, bytes).await? {
                        let progress = pb::UploadProgress {
                            upload_id: o.row.id.clone(),
                            offset,
                        };
                        send(&tx, Out::Progress(progress)).await;
                    }
                }
                Some(In::Chunks(refs)) => {
                    let o = open
                        .as_mut()
                        .ok_or_else(|| invalid("chunks before a start message"))?;
                    let send_flags = announce(o, refs).await?;
                    send(&tx, Out::Needed(pb::ChunksNeeded { send: send_flags })).await;
                }
                Some(In::Chunk(bytes)) => {
                    received(&p, bytes.len());
                    let o = open
                        .as_mut()
                        .ok_or_else(|| invalid("a chunk before a start message"))?;
                    if let Some(offset) = chunk(o, bytes).await? {
                        let progress = pb::UploadProgress {
                            upload_id: o.row.id.clone(),
                            offset,
                        };
                        send(&tx, Out::Progress(progress)).await;
                    }
                }
                Some(In::End(e)) => {
                    let o = open
                        .take()
                        .ok_or_else(|| invalid("an end message with no file open"))?;
                    let file = end(&p, o, e).await?;
                    send(&tx, Out::File(file)).await;
                }
                None => return Err(invalid("an empty message")),
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            break Some(e);
        }
    };
    // A file left open keeps what arrived (the client resumes from the offset it learns).
    if let Some(mut o) = open.take() {
        match o.checkpoint().await {
            Ok(kept) => {
                tracing::info!(upload = %o.row.id, kept, "bulk upload stream ended inside a file");
                let _ = o.app.close().await;
            }
            Err(_) => o.app.abandon().await,
        }
    }
    if let Some(e) = failure {
        let _ = tx.send(Err(e)).await;
    }
}

#[tonic::async_trait]
impl FilesService for Files {
    type UploadStream = Outbound<pb::UploadResponse>;

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<Self::UploadStream>, Status> {
        let user = self.user(&request).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(upload_loop(
            self.picker.clone(),
            user,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type DownloadStream = Outbound<pb::DownloadResponse>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (file, frames) =
            read_range(&self.picker, &user, &r.file_id, r.offset, r.length).await?;
        let head = pb::DownloadResponse {
            msg: Some(pb::download_response::Msg::Info(file)),
        };
        let data = frames.map(|frame| {
            frame.map(|b| pb::DownloadResponse {
                msg: Some(pb::download_response::Msg::Data(b)),
            })
        });
        let out = futures_util::stream::once(async move { Ok(head) }).chain(data);
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_upload_params(
        &self,
        request: Request<pb::GetUploadParamsRequest>,
    ) -> Result<Response<pb::GetUploadParamsResponse>, Status> {
        let user = self.user(&request).await?;
        let budget = Budget::of(&self.picker, &user).await.map_err(status)?;
        let c = self.picker.engine.store().chunk_params();
        Ok(Response::new(pb::GetUploadParamsResponse {
            algorithm: "fastcdc-2020".into(),
            min_chunk: c.min,
            avg_chunk: c.avg,
            max_chunk: c.max,
            max_announced: fms_engine::MAX_ANNOUNCED as u32,
            max_message_bytes: MAX_MESSAGE_BYTES as u32,
            max_file_bytes: budget.max_file,
        }))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let user = self.user(&request).await?;
        let row = authorized(&self.picker, &user, &request.get_ref().file_id, Right::Read)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StatResponse {
            file: Some(info(&row, 0)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let size = match r.page_size {
            0 => 100,
            n @ 1..=1000 => n,
            _ => return Err(invalid("page_size must be between 1 and 1000")),
        };
        let p = &self.picker;
        let page = p
            .authz
            .list(&user, &r.page_token, size)
            .await
            .map_err(|e| match e {
                crate::authz::AuthzError::Invalid(_) => invalid("invalid page_token"),
                e => status(e.into()),
            })?;
        let files = crate::api::records(p, &page.files)
            .await
            .map_err(status)?
            .iter()
            .map(|(row, _)| info(row, 0))
            .collect();
        Ok(Response::new(pb::ListResponse {
            files,
            next_page_token: page.next,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let user = self.user(&request).await?;
        remove_file(&self.picker, &user, &request.get_ref().file_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }
}
