//! `fms.picker.v1.PickerInternalService`: how the downloader and the transformer write into
//! and read from the store, on behalf of a user, with the same limits and the same
//! authorization as the REST API.

use std::pin::Pin;
use std::sync::Arc;

use fms_permission::model::Right;
use fms_platform::ApiError;
use fms_proto::picker::v1 as pb;
use futures_util::{Stream, StreamExt};
use pb::picker_internal_service_server::{PickerInternalService, PickerInternalServiceServer};
use tonic::{Request, Response, Status, Streaming};

use crate::Picker;
use crate::api::{Budget, authorized, check_name, now_ms, store_stream, unstore};
use crate::meta::FileRow;

/// `google.rpc.ErrorInfo.domain` of this service's errors.
pub const DOMAIN: &str = "fms.picker";

pub(crate) fn status(e: ApiError) -> Status {
    e.to_grpc(DOMAIN)
}

pub(crate) fn invalid(message: impl Into<String>) -> Status {
    status(ApiError::bad_request(message))
}

/// Bytes `offset..offset+length` (0: to the end) of a file `user` may read, as verified
/// frames, after its record: what ReadFile and the bulk API's Download both send.
pub(crate) async fn read_range(
    p: &Picker,
    user: &str,
    file_id: &str,
    offset: u64,
    length: u64,
) -> Result<
    (
        pb::FileInfo,
        impl Stream<Item = Result<bytes::Bytes, Status>> + Send + 'static,
    ),
    Status,
> {
    let row = authorized(p, user, file_id, Right::Read)
        .await
        .map_err(status)?;
    if offset > row.size {
        return Err(Status::out_of_range(format!(
            "offset {offset} is past the end of the file ({} bytes)",
            row.size
        )));
    }
    let end = match length {
        0 => row.size,
        n => offset.saturating_add(n).min(row.size),
    };
    let engine_id = row
        .engine_file()
        .map_err(|e| status(ApiError::internal(e)))?;
    let frames = p
        .engine
        .read(engine_id, offset, end, p.cfg.idle_timeout.0)
        .map(|frame| frame.map_err(|e| Status::data_loss(e.to_string())));
    Ok((info(&row, 0), frames))
}

pub(crate) fn info(row: &FileRow, new_bytes: u64) -> pb::FileInfo {
    pb::FileInfo {
        id: row.id.clone(),
        owner_id: row.owner_id.clone(),
        name: row.name.clone(),
        size: row.size,
        content_type: row.content_type.clone(),
        blake3: row.content_hash.clone(),
        created_at: Some(prost_types::Timestamp {
            seconds: row.created_at.div_euclid(1000),
            nanos: (row.created_at.rem_euclid(1000) * 1_000_000) as i32,
        }),
        new_bytes,
        folder: row.folder.clone(),
    }
}

fn check_user(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "a user id (1-128 printable characters) is required",
        ));
    }
    Ok(())
}

/// The tonic service over a shared [`Picker`].
#[derive(Debug, Clone)]
pub struct Internal(pub Arc<Picker>);

impl Internal {
    pub fn server(picker: Arc<Picker>) -> PickerInternalServiceServer<Internal> {
        PickerInternalServiceServer::new(Internal(picker))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadFileResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PickerInternalService for Internal {
    async fn put_file(
        &self,
        request: Request<Streaming<pb::PutFileRequest>>,
    ) -> Result<Response<pb::PutFileResponse>, Status> {
        let p = &self.0;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| invalid("empty stream: send a header first"))?;
        let Some(pb::put_file_request::Msg::Header(h)) = first.msg else {
            return Err(invalid("the first message must be a header"));
        };
        check_user(&h.owner_id)?;
        let name = check_name(&h.name).map_err(status)?.to_string();
        if h.idempotency_key.len() > 128 {
            return Err(invalid("idempotency_key is longer than 128 bytes"));
        }
        let expected = (!h.expected_blake3.is_empty()).then_some(h.expected_blake3.as_str());
        if let Some(e) = expected
            && (e.len() != 64 || !e.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("expected_blake3 must be 64 hex digits"));
        }
        let key = h.idempotency_key.as_str();
        let db = |e: sqlx::Error| {
            tracing::warn!(error = %e, "metadata store error");
            status(ApiError::unavailable(
                "the metadata store is unavailable",
                1,
            ))
        };
        if !key.is_empty()
            && let Some(id) = p.meta.put_key(&h.owner_id, key).await.map_err(db)?
            && let Some(row) = p.meta.get(&id).await.map_err(db)?
        {
            return Ok(Response::new(pb::PutFileResponse {
                file: Some(info(&row, 0)),
            }));
        }
        let mut budget = Budget::of(p, &h.owner_id).await.map_err(status)?;
        let data = stream.map(|m| match m {
            Ok(pb::PutFileRequest {
                msg: Some(pb::put_file_request::Msg::Data(b)),
            }) => Ok(b),
            Ok(_) => Err("only data may follow the header".to_string()),
            Err(s) => Err(format!("stream broken: {}", s.message())),
        });
        let stored = store_stream(
            p,
            &h.owner_id,
            name,
            data,
            h.expected_size,
            expected,
            &mut budget,
        )
        .await
        .map_err(status)?;
        if !key.is_empty()
            && !p
                .meta
                .claim_put_key(&h.owner_id, key, &stored.row.id, now_ms())
                .await
                .map_err(db)?
        {
            // A concurrent retry with the same key won: keep its file, drop ours.
            let winner = p.meta.put_key(&h.owner_id, key).await.map_err(db)?;
            unstore(p, vec![stored]).await;
            let row = match winner {
                Some(id) => p.meta.get(&id).await.map_err(db)?,
                None => None,
            }
            .ok_or_else(|| status(ApiError::unavailable("retry the call", 1)))?;
            return Ok(Response::new(pb::PutFileResponse {
                file: Some(info(&row, 0)),
            }));
        }
        Ok(Response::new(pb::PutFileResponse {
            file: Some(info(&stored.row, stored.new_bytes)),
        }))
    }

    type ReadFileStream = ReadStream;

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let r = request.into_inner();
        check_user(&r.user_id)?;
        let (file, frames) =
            read_range(&self.0, &r.user_id, &r.file_id, r.offset, r.length).await?;
        let head = pb::ReadFileResponse {
            msg: Some(pb::read_file_response::Msg::Info(file)),
        };
        let data = frames.map(|frame| {
            frame.map(|b| pb::ReadFileResponse {
                msg: Some(pb::read_file_response::Msg::Data(b)),
            })
        });
        let out = futures_util::stream::once(async move { Ok(head) }).chain(data);
        Ok(Response::new(Box::pin(out)))
    }

    async fn stat_file(
        &self,
        request: Request<pb::StatFileRequest>,
    ) -> Result<Response<pb::StatFileResponse>, Status> {
        let r = request.into_inner();
        check_user(&r.user_id)?;
        let row = authorized(&self.0, &r.user_id, &r.file_id, Right::Read)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StatFileResponse {
            file: Some(info(&row, 0)),
        }))
    }
}
