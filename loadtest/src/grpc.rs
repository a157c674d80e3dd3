//! The gRPC bulk API as a bulk client uses it: `FilesService/Upload` (plain or dedup-aware:
//! chunks cut with the server's FastCDC parameters, announced, only the asked-for ones
//! sent) and `FilesService/Download`.
//!
//! Content is generated as it is sent, in 256 KiB blocks: a block is new random bytes, or —
//! with probability `duplicate` — one of the user's 16 *pool* blocks, which the user uploaded
//! once at set-up ([`Grpc::upload_pool`]). Memory stays at one announcement's worth of chunks
//! per upload whatever the file size.

use std::time::Duration;

use bytes::Bytes;
use fms_engine::{ChunkId, ChunkParams, Chunker};
use fms_proto::picker::v1 as pb;
use pb::files_service_client::FilesServiceClient;
use pb::upload_request::Msg as In;
use pb::upload_response::Msg as Out;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::client::content;
use crate::stats::Outcome;

const BLOCK: u64 = 256 << 10;
const POOL_BLOCKS: u64 = 16;
/// Chunks per announcement (at most the server's `max_announced`).
const ANNOUNCE: usize = 64;
/// Bytes per `data` message.
const PIECE: usize = 1 << 20;

/// A connection to the gRPC address and the server's chunking parameters.
#[derive(Clone)]
pub struct Grpc {
    channel: Channel,
    params: ChunkParams,
    announce: usize,
}

/// One upload.
pub struct Plan {
    pub size: u64,
    pub dedup_aware: bool,
    pub duplicate: f64,
    /// Whose pool repeats come from.
    pub user: u64,
    pub seed: u64,
}

fn status_kind(s: &tonic::Status) -> String {
    format!("grpc_{:?}", s.code()).to_lowercase()
}

fn bearer<T>(token: &str, msg: T) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(msg);
    let v = format!("Bearer {token}")
        .parse()
        .map_err(|_| "grpc_bad_token".to_string())?;
    r.metadata_mut().insert("authorization", v);
    Ok(r)
}

fn pool_seed(user: u64, j: u64) -> u64 {
    0x706f_6f6c ^ (user << 8) ^ j
}

/// The content of a plan, block by block.
fn blocks(plan: &Plan) -> impl Iterator<Item = Bytes> + '_ {
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let n = plan.size.div_ceil(BLOCK);
    (0..n).map(move |k| {
        let len = (plan.size - k * BLOCK).min(BLOCK) as usize;
        if rng.random::<f64>() < plan.duplicate {
            let j = rng.random_range(0..POOL_BLOCKS);
            content(pool_seed(plan.user, j), 0, len)
        } else {
            content(plan.seed, k * BLOCK, len)
        }
    })
}

struct Stream {
    tx: mpsc::Sender<pb::UploadRequest>,
    rx: tonic::Streaming<pb::UploadResponse>,
}

impl Stream {
    async fn send(&self, msg: In, o: &mut Outcome) -> Result<(), String> {
        if let In::Data(b) | In::Chunk(b) = &msg {
            o.bytes_sent += b.len() as u64;
        }
        self.tx
            .send(pb::UploadRequest { msg: Some(msg) })
            .await
            .map_err(|_| "grpc_stream_closed".to_string())
    }

    async fn next(&mut self) -> Result<Out, String> {
        match self.rx.message().await {
            Ok(Some(pb::UploadResponse { msg: Some(m) })) => Ok(m),
            Ok(_) => Err("grpc_stream_ended".into()),
            Err(s) => Err(status_kind(&s)),
        }
    }
}

impl Grpc {
    /// Connect to `address` (`http://host:port`) and ask for the chunking parameters.
    pub async fn connect(address: &str, token: &str) -> Result<Grpc, String> {
        let channel = Channel::from_shared(address.to_string())
            .map_err(|e| format!("gRPC address {address}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("gRPC {address}: {e}"))?;
        let p = FilesServiceClient::new(channel.clone())
            .get_upload_params(bearer(token, pb::GetUploadParamsRequest {})?)
            .await
            .map_err(|e| format!("gRPC GetUploadParams: {e}"))?
            .into_inner();
        Ok(Grpc {
            channel,
            params: ChunkParams {
                min: p.min_chunk,
                avg: p.avg_chunk,
                max: p.max_chunk,
            },
            announce: ANNOUNCE.min(p.max_announced.max(1) as usize),
        })
    }

    /// The user's pool blocks as one file (set-up, not measured): what `duplicate` repeats.
    pub async fn upload_pool(&self, token: &str, user: u64) -> Result<String, String> {
        let mut o = Outcome::default();
        let plan = Plan {
            size: POOL_BLOCKS * BLOCK,
            dedup_aware: true,
            duplicate: 0.0,
            user,
            seed: 0,
        };
        // Block k of the pool file is pool block k.
        let pool = (0..POOL_BLOCKS).map(|j| content(pool_seed(user, j), 0, BLOCK as usize));
        self.send_file(token, &plan, pool, &mut o).await
    }

    /// Upload `plan` on a stream of its own; the new file's id.
    pub async fn upload(
        &self,
        token: &str,
        plan: &Plan,
        o: &mut Outcome,
    ) -> Result<String, String> {
        let id = self.send_file(token, plan, blocks(plan), o).await?;
        o.file_bytes = plan.size;
        Ok(id)
    }

    async fn send_file(
        &self,
        token: &str,
        plan: &Plan,
        blocks: impl Iterator<Item = Bytes>,
        o: &mut Outcome,
    ) -> Result<String, String> {
        let (tx, rx) = mpsc::channel(4);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut s = Stream {
            tx,
            rx: FilesServiceClient::new(self.channel.clone())
                .max_decoding_message_size(8 << 20)
                .upload(bearer(token, outbound)?)
                .await
                .map_err(|e| status_kind(&e))?
                .into_inner(),
        };
        s.send(
            In::Start(pb::UploadStart {
                name: "lt-bulk.bin".into(),
                size: Some(plan.size),
                upload_id: String::new(),
                offset: 0,
                resume: false,
                folder: String::new(),
            }),
            o,
        )
        .await?;
        match s.next().await? {
            Out::Progress(_) => {}
            _ => return Err("grpc_unexpected_answer".into()),
        }
        let mut hasher = blake3::Hasher::new();
        if plan.dedup_aware {
            let mut chunker = Chunker::new(self.params);
            let mut batch: Vec<Bytes> = Vec::with_capacity(self.announce);
            for b in blocks {
                hasher.update(&b);
                let mut cut = Vec::new();
                chunker
                    .push(&b, &mut |c: Bytes| {
                        cut.push(c);
                        Ok::<(), ()>(())
                    })
                    .map_err(|()| "chunking".to_string())?;
                for c in cut {
                    batch.push(c);
                    if batch.len() >= self.announce {
                        self.announce_and_send(&mut s, std::mem::take(&mut batch), o)
                            .await?;
                    }
                }
            }
            chunker
                .finish(&mut |c: Bytes| {
                    batch.push(c);
                    Ok::<(), ()>(())
                })
                .map_err(|()| "chunking".to_string())?;
            if !batch.is_empty() {
                self.announce_and_send(&mut s, batch, o).await?;
            }
        } else {
            for b in blocks {
                hasher.update(&b);
                for piece in b.chunks(PIECE) {
                    s.send(In::Data(b.slice_ref(piece)), o).await?;
                }
            }
        }
        s.send(
            In::End(pb::UploadEnd {
                blake3: hasher.finalize().to_hex().to_string(),
            }),
            o,
        )
        .await?;
        loop {
            match s.next().await? {
                Out::File(f) => return Ok(f.id),
                Out::Progress(_) => {}
                Out::Needed(_) => return Err("grpc_unexpected_answer".into()),
            }
        }
    }

    async fn announce_and_send(
        &self,
        s: &mut Stream,
        chunks: Vec<Bytes>,
        o: &mut Outcome,
    ) -> Result<(), String> {
        let refs = chunks
            .iter()
            .map(|c| pb::ChunkRef {
                blake3: Bytes::copy_from_slice(&ChunkId::of(c).0),
                size: c.len() as u32,
            })
            .collect();
        s.send(In::Chunks(pb::ChunkRefs { refs }), o).await?;
        let send = loop {
            match s.next().await? {
                Out::Needed(n) => break n.send,
                Out::Progress(_) => {}
                Out::File(_) => return Err("grpc_unexpected_answer".into()),
            }
        };
        if send.len() != chunks.len() {
            return Err("grpc_unexpected_answer".into());
        }
        for (c, need) in chunks.into_iter().zip(send) {
            if need {
                s.send(In::Chunk(c), o).await?;
            }
        }
        Ok(())
    }

    /// Download a file whole.
    pub async fn download(&self, token: &str, file: &str, o: &mut Outcome) -> Result<(), String> {
        let mut rx = FilesServiceClient::new(self.channel.clone())
            .max_decoding_message_size(8 << 20)
            .download(bearer(
                token,
                pb::DownloadRequest {
                    file_id: file.to_string(),
                    offset: 0,
                    length: 0,
                },
            )?)
            .await
            .map_err(|e| status_kind(&e))?
            .into_inner();
        loop {
            match rx.message().await {
                Ok(Some(pb::DownloadResponse {
                    msg: Some(pb::download_response::Msg::Data(b)),
                })) => o.bytes_received += b.len() as u64,
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) => return Err(status_kind(&s)),
            }
        }
    }
}
