//! `fms.transformer.v1.TransformerService/TransformFile`: a spec, then the source's bytes in;
//! a result header, then the output's bytes out.
//!
//! Three kinds of work ([`Kind`]). An image (and OCR, which starts from one) is decoded
//! whole, so its encoded bytes are gathered (at most `Limits::max_input_bytes`; a larger
//! announced or actual source is refused) and the work runs on a blocking thread within
//! `timeout`. A stream transform (`compress`, `decompress`) runs on a blocking thread fed
//! piece by piece while the output flows back: nothing is held whole. Either way at most
//! `slots` transforms run at once (the cores): a request beyond that is refused at once with
//! `RESOURCE_EXHAUSTED` rather than queued. A panic inside a decoder fails that request only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fms_proto::transformer::v1 as pb;
use pb::transformer_service_server::{TransformerService, TransformerServiceServer};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{self, StreamError, StreamLimits};
use crate::image_ops::{self, ImageError, Limits};
use crate::ocr;
use crate::ops::{Kind, Op, Transform};

/// Output bytes per message.
const PIECE: usize = 256 << 10;

/// The service: limits, the pool of work slots, idle OCR engines.
#[derive(Debug, Clone)]
pub struct Service {
    limits: Limits,
    stream: StreamLimits,
    timeout: Duration,
    slots: Arc<Semaphore>,
    ocr: Arc<ocr::Pool>,
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Service {
    /// `slots`: transforms at once (0: one per core); other settings at their defaults.
    pub fn new(limits: Limits, slots: usize) -> Service {
        Service::from_config(
            &fms_platform::config::TransformerConfig {
                concurrency: u32::try_from(slots).unwrap_or(u32::MAX),
                ..Default::default()
            },
            limits,
        )
    }

    /// From `[transformer]` (image limits given apart, usually `Limits::from_config`).
    pub fn from_config(c: &fms_platform::config::TransformerConfig, limits: Limits) -> Service {
        let slots = if c.concurrency == 0 {
            cores()
        } else {
            c.concurrency as usize
        };
        Service {
            limits,
            stream: StreamLimits {
                max_output: c.max_output.0,
                max_ratio: c.max_ratio,
            },
            timeout: c.timeout.0,
            slots: Arc::new(Semaphore::new(slots)),
            ocr: Arc::new(ocr::Pool::new(&c.tessdata, slots)),
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
        ImageError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
    }
}

type Out = mpsc::Sender<Result<pb::TransformFileResponse, Status>>;

/// A work slot, counted in `transformer_slots_busy` while held (also while a timed-out
/// transform's thread finishes).
struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Slot {
    fn taken(permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        metrics::gauge!("transformer_slots_busy").increment(1.0);
        Slot(permit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("transformer_slots_busy").decrement(1.0);
    }
}

fn header(content_type: &str, width: u32, height: u32) -> pb::TransformFileResponse {
    pb::TransformFileResponse {
        msg: Some(pb::transform_file_response::Msg::Result(
            pb::TransformResult {
                content_type: content_type.into(),
                width,
                height,
            },
        )),
    }
}

fn data(b: Bytes) -> pb::TransformFileResponse {
    pb::TransformFileResponse {
        msg: Some(pb::transform_file_response::Msg::Data(b)),
    }
}

/// Send `bytes` in pieces; false if the caller went away.
async fn send_all(tx: &Out, bytes: Bytes) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + PIECE).min(bytes.len());
        if tx.send(Ok(data(bytes.slice(at..end)))).await.is_err() {
            return false;
        }
        at = end;
    }
    true
}

fn panicked(what: &str) -> Status {
    tracing::error!("a {what} transform panicked");
    metrics::counter!("transformer_panics_total").increment(1);
    Status::internal("the transform failed")
}

impl Service {
    /// A stream transform: input pieces to a blocking codec thread, output pieces back.
    fn stream(
        &self,
        op: Op,
        mut input: Streaming<pb::TransformFileRequest>,
        slot: Slot,
    ) -> ReceiverStream<Result<pb::TransformFileResponse, Status>> {
        let (tx, rx) = mpsc::channel(4);
        let (in_tx, in_rx) = mpsc::channel::<Result<Bytes, String>>(4);
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            while let Some(m) = input.next().await {
                let item = match m {
                    Ok(pb::TransformFileRequest {
                        msg: Some(pb::transform_file_request::Msg::Data(b)),
                    }) => Ok(b),
                    Ok(_) => Err("only data may follow the spec".to_string()),
                    Err(s) => Err(s.message().to_string()),
                };
                let stop = item.is_err();
                if in_tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        let limits = self.stream;
        let content_type = match &op {
            Op::Compress { codec, .. } => codec.mime(),
            // Decompressed bytes are whatever they are: the picker tells from them.
            _ => "",
        };
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            codec::run(&op, in_rx, out_tx, limits)
        });
        tokio::spawn(async move {
            if tx.send(Ok(header(content_type, 0, 0))).await.is_err() {
                return;
            }
            while let Some(b) = out_rx.recv().await {
                if tx.send(Ok(data(b))).await.is_err() {
                    // The codec thread sees its output closed and stops.
                    return;
                }
            }
            let end = match work.await {
                Ok(Ok(())) => {
                    metrics::counter!("transformer_transforms_total", "kind" => "stream")
                        .increment(1);
                    metrics::histogram!("transformer_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return;
                }
                Ok(Err(StreamError::Gone)) => return,
                Ok(Err(StreamError::Invalid(m))) => Status::invalid_argument(m),
                Ok(Err(StreamError::TooLarge(m))) => Status::out_of_range(m),
                Err(e) if e.is_panic() => panicked("stream"),
                Err(e) => Status::internal(format!("transform task: {e}")),
            };
            let _ = tx.send(Err(end)).await;
        });
        ReceiverStream::new(rx)
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
        let kind = transform.kind();
        let max = self.limits.max_input_bytes;
        if kind != Kind::Stream && spec.source_size > max {
            return Err(status(ImageError::TooLarge(format!(
                "{} bytes; at most {max}",
                spec.source_size
            ))));
        }
        // Refused now, before any byte is read, when every slot is busy.
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map(Slot::taken)
            .map_err(|_| {
                metrics::counter!("transformer_busy_total").increment(1);
                Status::resource_exhausted("the transformer is busy; retry shortly")
            })?;
        if kind == Kind::Stream {
            let op = transform.ops[0].clone();
            return Ok(Response::new(self.stream(op, stream, slot)));
        }
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
        let pool = self.ocr.clone();
        let started = std::time::Instant::now();
        let deadline = Some(started + self.timeout);
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if kind == Kind::Ocr {
                pool.recognise(&input, &transform, &limits, deadline)
                    .map(|r| {
                        (
                            r.format.mime().to_string(),
                            r.width,
                            r.height,
                            Bytes::from(r.text),
                        )
                    })
            } else {
                image_ops::transform_within(&input, &transform, &limits, deadline).map(|o| {
                    (
                        o.format.mime().to_string(),
                        o.width,
                        o.height,
                        Bytes::from(o.bytes),
                    )
                })
            }
        });
        // The work gives up itself between steps once the deadline has passed, and the
        // answer waits for it: when the caller hears "timeout" the slot is free again (so a
        // caller pacing itself by our answers never has more running than it thinks). The
        // outer limit is a backstop for a single step that runs far over.
        let backstop = self.timeout * 2 + Duration::from_secs(10);
        let (content_type, width, height, bytes) = match tokio::time::timeout(backstop, work).await
        {
            Err(_) => {
                metrics::counter!("transformer_timeouts_total").increment(1);
                return Err(Status::deadline_exceeded(format!(
                    "the transform took longer than {}s",
                    self.timeout.as_secs()
                )));
            }
            Ok(Ok(Err(ImageError::Timeout(m)))) => {
                metrics::counter!("transformer_timeouts_total").increment(1);
                return Err(Status::deadline_exceeded(format!(
                    "the transform took longer than {}s ({m})",
                    self.timeout.as_secs()
                )));
            }
            Ok(Ok(r)) => r.map_err(status)?,
            Ok(Err(e)) if e.is_panic() => return Err(panicked("image")),
            Ok(Err(e)) => return Err(Status::internal(format!("transform task: {e}"))),
        };
        let label = if kind == Kind::Ocr { "ocr" } else { "image" };
        metrics::counter!("transformer_transforms_total", "kind" => label).increment(1);
        metrics::histogram!("transformer_seconds").record(started.elapsed().as_secs_f64());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if tx
                .send(Ok(header(&content_type, width, height)))
                .await
                .is_ok()
            {
                send_all(&tx, bytes).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
