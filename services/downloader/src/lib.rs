//! # fms-downloader
//!
//! Imports from outside (`fms.downloader.v1.DownloaderService/DownloadFile`): the source is
//! fetched over HTTP(S) and its bytes streamed into the picker's internal `PutFile` as they
//! arrive — no temporary file, at most a few pieces of 256 KiB in flight per import,
//! whatever the size. The picker commits the file only when the stream ends cleanly; any
//! failure cancels the call and nothing is stored.
//!
//! Every URL, every address a name resolves to and every redirect hop is checked by
//! [`guard`] before a connection is made, and the connection goes to the address that was
//! checked. Transient failures are retried with backoff and resumed with `Range`.
//!
//! Sources ([`sources`]): plain URLs, Google Drive (v3, with Docs exported), Dropbox (v2,
//! paths, ids and shared links), S3 (presigned URLs, or SigV4-signed bucket + key). The
//! caller passes the user's access token (the picker's connected accounts supply one).

pub mod fetch;
pub mod guard;
pub mod sources;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fetch::{FetchError, Http, Limits, Piece, Plan};
use fms_platform::Config;
use fms_platform::config::DownloaderConfig;
use fms_proto::downloader::v1 as pb;
use fms_proto::picker::v1 as picker_pb;
use pb::downloader_service_server::{DownloaderService, DownloaderServiceServer};
use picker_pb::picker_internal_service_client::PickerInternalServiceClient;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// An empty data message goes to the picker at least this often (well inside any
/// `picker.idle_timeout`, which is at least 1 s).
const KEEPALIVE: Duration = Duration::from_millis(500);

/// The service.
pub struct Downloader {
    cfg: DownloaderConfig,
    http: Http,
    bases: sources::Bases,
    picker: PickerInternalServiceClient<Channel>,
    running: Arc<Semaphore>,
    per_user: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader").finish_non_exhaustive()
    }
}

/// One user's slot, given back on drop.
struct Slot {
    d: Arc<Downloader>,
    user: String,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.d.per_user.lock()
            && let Some(n) = m.get_mut(&self.user)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl Downloader {
    /// A downloader writing into the picker at `picker_url` (gRPC), resolving names with
    /// `lookup`.
    pub fn new(
        cfg: &Config,
        picker_url: &str,
        lookup: fetch::Lookup,
    ) -> Result<Arc<Downloader>, String> {
        let d = &cfg.downloader;
        let allow = guard::Allow::parse(&d.allow).map_err(|e| format!("downloader.allow: {e}"))?;
        let channel = tonic::transport::Endpoint::from_shared(picker_url.to_string())
            .map_err(|e| format!("downloader.picker_url: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let http = Http::new(allow, lookup)?;
        // Provider bases pass the same guard as user URLs (names are checked again at
        // every connection by the resolver).
        let base = |key: &str, v: &str| http.check(v).map_err(|e| format!("downloader.{key}: {e}"));
        Ok(Arc::new(Downloader {
            cfg: d.clone(),
            bases: sources::Bases {
                google_api: base("google_api_url", &d.google_api_url)?,
                dropbox_content: base("dropbox_content_url", &d.dropbox_content_url)?,
            },
            http,
            picker: PickerInternalServiceClient::new(channel)
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20),
            running: Arc::new(Semaphore::new(d.max_concurrent as usize)),
            per_user: Mutex::new(HashMap::new()),
        }))
    }

    fn slot(self: &Arc<Self>, user: &str) -> Result<Slot, Status> {
        let global =
            self.running.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("too many imports running; retry shortly")
            })?;
        let mut m = self
            .per_user
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?;
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= self.cfg.max_per_user {
            return Err(Status::resource_exhausted(format!(
                "at most {} imports at once per user; retry when one ends",
                self.cfg.max_per_user
            )));
        }
        *n += 1;
        Ok(Slot {
            d: self.clone(),
            user: user.to_string(),
            _global: global,
        })
    }

    /// What to fetch for a request, as far as it can be known without asking the source
    /// (bad requests are refused here, synchronously).
    fn plan(&self, r: &pb::DownloadFileRequest) -> Result<Ready, Status> {
        use pb::download_file_request::Source;
        let bad = |e: FetchError| match e {
            FetchError::Invalid(m) => Status::invalid_argument(m),
            e => status(e),
        };
        match &r.source {
            Some(Source::Url(u)) => {
                if u.url.len() > 8192 {
                    return Err(Status::invalid_argument("the URL is longer than 8 KiB"));
                }
                let url = self.http.check(&u.url).map_err(status)?;
                Ok(Ready::Plan(Box::new(Plan::get(url))))
            }
            Some(Source::GoogleDrive(d)) => {
                sources::check_drive(d).map_err(bad)?;
                Ok(Ready::Drive(d.clone()))
            }
            Some(Source::Dropbox(d)) => Ok(Ready::Plan(Box::new(
                sources::dropbox(&self.bases, d).map_err(bad)?,
            ))),
            Some(Source::S3(x)) => Ok(Ready::Plan(Box::new(
                sources::s3(&self.http, x).map_err(bad)?,
            ))),
            None => Err(Status::invalid_argument("a source is required")),
        }
    }

    /// Run one import: fetch `plan` into a PutFile call, reporting progress on `progress`.
    async fn run(
        &self,
        r: &pb::DownloadFileRequest,
        ready: Ready,
        progress: &mpsc::Sender<Result<pb::DownloadFileResponse, Status>>,
    ) -> Result<picker_pb::FileInfo, Status> {
        let limits = Limits {
            max_size: self.cfg.max_size.0,
            idle: self.cfg.idle_timeout.0,
            deadline: Instant::now() + self.cfg.timeout.0,
            retries: self.cfg.retries,
        };
        let plan = match ready {
            Ready::Plan(p) => *p,
            Ready::Drive(d) => sources::google_drive(&self.http, &self.bases, &limits, &d)
                .await
                .map_err(status)?,
        };
        let origin = plan.origin;
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let http = self.http.clone();
        let fetcher = tokio::spawn(async move { http.fetch(&plan, &limits, &tx).await });
        // Aborted (and the fetch with it) if this future is dropped.
        let _abort = AbortOnDrop(fetcher.abort_handle());
        let Some(Piece::Opened { name, size }) = rx.recv().await else {
            // The fetch ended before the source answered: its error says why.
            return Err(match fetcher.await {
                Ok(Err(e)) => status(e),
                Ok(Ok(_)) => Status::internal("the fetch ended without opening"),
                Err(e) => Status::internal(format!("fetch task: {e}")),
            });
        };
        let name = if r.name.is_empty() {
            name
        } else {
            r.name.clone()
        };
        let (put_tx, put_rx) = mpsc::channel::<picker_pb::PutFileRequest>(4);
        let header = picker_pb::PutFileRequest {
            msg: Some(picker_pb::put_file_request::Msg::Header(
                picker_pb::PutFileHeader {
                    owner_id: r.owner_id.clone(),
                    name,
                    // The picker refuses at once what is over its size limit or the quota;
                    // the fetch fails (`Changed`) before a different length gets through.
                    expected_size: size,
                    expected_blake3: String::new(),
                    idempotency_key: r.idempotency_key.clone(),
                    origin: origin.into(),
                },
            )),
        };
        put_tx
            .send(header.clone())
            .await
            .map_err(|_| Status::internal("put stream closed"))?;
        // Unless disarmed, a second header goes after whatever was sent — however this
        // import ends (an error, or this future dropped) — and the picker refuses the stream
        // instead of committing a file cut short. The slot is reserved now: it never waits.
        let mut poison = Poison(Some((
            put_tx
                .clone()
                .reserve_owned()
                .await
                .map_err(|_| Status::internal("put stream closed"))?,
            header,
        )));
        let mut picker = self.picker.clone();
        let put = tokio::spawn(async move { picker.put_file(ReceiverStream::new(put_rx)).await });
        let mut sent = 0u64;
        let mut told = Instant::now();
        // While the source is slow or being retried, empty data messages keep the picker's
        // idle timeout (`picker.idle_timeout`) from ending the upload.
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let b = tokio::select! {
                p = rx.recv() => match p {
                    Some(Piece::Data(b)) => b,
                    Some(Piece::Opened { .. }) => continue,
                    None => break,
                },
                _ = keepalive.tick() => bytes::Bytes::new(),
            };
            sent += b.len() as u64;
            let msg = picker_pb::PutFileRequest {
                msg: Some(picker_pb::put_file_request::Msg::Data(b)),
            };
            if put_tx.send(msg).await.is_err() {
                // The picker ended the call early (quota, size, a bad name): its answer
                // says why. The fetch stops with it.
                drop(rx);
                drop(poison);
                drop(put_tx);
                return Err(match put.await {
                    Ok(Err(s)) => s,
                    Ok(Ok(_)) => Status::internal("the picker ended the stream early"),
                    Err(e) => Status::internal(format!("put task: {e}")),
                });
            }
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                let p = pb::DownloadFileResponse {
                    msg: Some(pb::download_file_response::Msg::Progress(
                        pb::DownloadProgress {
                            bytes_received: sent,
                            total_bytes: size,
                        },
                    )),
                };
                if progress.send(Ok(p)).await.is_err() {
                    return Err(Status::cancelled("the caller went away"));
                }
            }
        }
        let fetched = fetcher
            .await
            .map_err(|e| Status::internal(format!("fetch task: {e}")))?;
        if let Err(e) = fetched {
            // The poisoned stream is refused: the picker stores nothing.
            drop(poison);
            drop(put_tx);
            let _ = put.await;
            return Err(status(e));
        }
        if progress.is_closed() {
            // Nobody follows this import any more (the picker restarted): store nothing
            // rather than a file no job will name.
            drop(poison);
            drop(put_tx);
            let _ = put.await;
            return Err(Status::cancelled("the caller went away"));
        }
        // The end of the stream commits the file.
        poison.0 = None;
        drop(put_tx);
        let answer = put
            .await
            .map_err(|e| Status::internal(format!("put task: {e}")))?;
        metrics::counter!("downloader_bytes_total").increment(sent);
        answer?
            .into_inner()
            .file
            .ok_or_else(|| Status::internal("the picker answered without a file"))
    }
}

/// A reserved slot in the PutFile stream for a message the picker refuses.
struct Poison(
    Option<(
        mpsc::OwnedPermit<picker_pb::PutFileRequest>,
        picker_pb::PutFileRequest,
    )>,
);

impl Drop for Poison {
    fn drop(&mut self) {
        if let Some((permit, msg)) = self.0.take() {
            permit.send(msg);
        }
    }
}

/// A request checked and turned into what to fetch.
enum Ready {
    Plan(Box<Plan>),
    /// Drive needs a metadata call first (made in the import's task).
    Drive(pb::GoogleDriveSource),
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The gRPC status for a failed fetch; the message is what the user is shown.
pub fn status(e: FetchError) -> Status {
    match &e {
        // The request's fault (its URL, or where it redirects): the message says "refused".
        FetchError::Refused(_) => Status::invalid_argument(e.to_string()),
        FetchError::Source(401 | 403, _) => Status::permission_denied(e.to_string()),
        FetchError::Source(404 | 410, _) => Status::not_found(e.to_string()),
        FetchError::Source(..) | FetchError::Invalid(_) | FetchError::Changed => {
            Status::failed_precondition(e.to_string())
        }
        FetchError::TooLarge(_) => Status::out_of_range(e.to_string()),
        FetchError::Timeout => Status::deadline_exceeded(e.to_string()),
        FetchError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

/// The gRPC face of a [`Downloader`].
#[derive(Debug, Clone)]
pub struct Service(Arc<Downloader>);

impl Service {
    pub fn server(d: Arc<Downloader>) -> DownloaderServiceServer<Service> {
        DownloaderServiceServer::new(Service(d))
    }
}

#[tonic::async_trait]
impl DownloaderService for Service {
    type DownloadFileStream = ReceiverStream<Result<pb::DownloadFileResponse, Status>>;

    async fn download_file(
        &self,
        request: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<Self::DownloadFileStream>, Status> {
        let r = request.into_inner();
        if r.owner_id.is_empty() || r.owner_id.len() > 128 {
            return Err(Status::invalid_argument("owner_id: 1 to 128 bytes"));
        }
        if r.idempotency_key.len() > 128 {
            return Err(Status::invalid_argument(
                "idempotency_key is longer than 128 bytes",
            ));
        }
        let plan = self.0.plan(&r)?;
        // Taken now so a caller over the limits hears so at once.
        let slot = self.0.slot(&r.owner_id)?;
        let (tx, rx) = mpsc::channel(4);
        let d = self.0.clone();
        tokio::spawn(async move {
            metrics::counter!("downloader_imports_total").increment(1);
            let out = match d.run(&r, plan, &tx).await {
                Ok(file) => Ok(pb::DownloadFileResponse {
                    msg: Some(pb::download_file_response::Msg::File(file)),
                }),
                Err(s) => {
                    metrics::counter!("downloader_failures_total").increment(1);
                    tracing::info!(owner = %r.owner_id, code = ?s.code(), error = %s.message(), "import failed");
                    Err(s)
                }
            };
            // Free before the caller hears the end: its next import may start at once.
            drop(slot);
            let _ = tx.send(out).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Start the service: the picker at `downloader.picker_url` (or `picker_url` when given).
pub fn start(cfg: &Config, picker_url: &str) -> Result<Arc<Downloader>, String> {
    Downloader::new(cfg, picker_url, fetch::system_lookup())
}
