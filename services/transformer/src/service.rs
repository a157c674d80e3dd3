//! `fms.transformer.v1.TransformerService/TransformFile`: a spec, then the source's bytes in;
//! a result header, then the output's bytes out.
//!
//! An image is decoded whole, so its encoded bytes are gathered (at most
//! `Limits::max_input_bytes`; a larger announced or actual source is refused). The work runs
//! on a blocking thread, at most `slots` at once (the cores): a request beyond that is refused
//! at once with `RESOURCE_EXHAUSTED` rather than queued. A panic inside a decoder fails that
//! request only.

use std::sync::Arc;

use fms_proto::transformer::v1 as pb;
use pb::transformer_service_server::{TransformerService, TransformerServiceServer};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::image_ops::{self, ImageError, Limits};
use crate::ops::Transform;

/// Output bytes per message.
const PIECE: usize = 256 << 10;

/// The service: limits and the pool of work slots.
#[derive(Debug, Clone)]
pub struct Service {
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl Service {
    /// `slots`: transforms at once (0: one per core).
    pub fn new(limits: Limits, slots: usize) -> Service {
        let slots = if slots == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            slots
        };
        Service {
            limits,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    pub fn server(self) -> TransformerServiceServer<Service> {
        TransformerServiceServer::new(self)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }
}

fn status(e: ImageError) -> Status {
    match e {
        ImageError::Unsupported(_) | ImageError::Corrupt(_) | ImageError::Invalid(_) => {
            Status::invalid_argument(e.to_string())
        }
        ImageError::TooLarge(_) => Status::out_of_range(e.to_string()),
    }
}

#[tonic::async_trait]
impl TransformerService for Service {
    type TransformFileStream = ReceiverStream<Result<pb::TransformFileResponse, Status>>;

    async fn transform_file(
        &self,
        request: Request<Streaming<pb::TransformFileRequest>>,
    ) -> Result<Response<Self::TransformFileStream>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await else {
            return Err(Status::invalid_argument("empty stream: send a spec first"));
        };
        let Some(pb::transform_file_request::Msg::Spec(spec)) = first?.msg else {
            return Err(Status::invalid_argument("the first message must be a spec"));
        };
        let transform = Transform::from_compact(&spec.transform)
            .map_err(|e| Status::invalid_argument(format!("transform: {e}")))?;
        let max = self.limits.max_input_bytes;
        if spec.source_size > max {
            return Err(status(ImageError::TooLarge(format!(
                "{} bytes; at most {max}",
                spec.source_size
            ))));
        }
        // Refused now, before any byte is read, when every slot is busy.
        let slot =
            self.slots.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("the transformer is busy; retry shortly")
            })?;
        let mut input = Vec::with_capacity(spec.source_size.min(max) as usize);
        while let Some(m) = stream.next().await {
            match m?.msg {
                Some(pb::transform_file_request::Msg::Data(b)) => {
                    if input.len() as u64 + b.len() as u64 > max {
                        return Err(status(ImageError::TooLarge(format!(
                            "more than {max} bytes"
                        ))));
                    }
                    input.extend_from_slice(&b);
                }
                _ => return Err(Status::invalid_argument("only data may follow the spec")),
            }
        }
        let limits = self.limits;
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            image_ops::transform(&input, &transform, &limits)
        })
        .await;
        let out = match done {
            Ok(r) => r.map_err(status)?,
            Err(e) if e.is_panic() => {
                tracing::error!("a transform panicked");
                metrics::counter!("transformer_panics_total").increment(1);
                return Err(Status::internal("the transform failed"));
            }
            Err(e) => return Err(Status::internal(format!("transform task: {e}"))),
        };
        metrics::counter!("transformer_transforms_total").increment(1);
        metrics::histogram!("transformer_seconds").record(started.elapsed().as_secs_f64());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let head = pb::TransformFileResponse {
                msg: Some(pb::transform_file_response::Msg::Result(
                    pb::TransformResult {
                        content_type: out.format.mime().into(),
                        width: out.width,
                        height: out.height,
                    },
                )),
            };
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            let bytes = bytes::Bytes::from(out.bytes);
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + PIECE).min(bytes.len());
                let m = pb::TransformFileResponse {
                    msg: Some(pb::transform_file_response::Msg::Data(bytes.slice(at..end))),
                };
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
                at = end;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
