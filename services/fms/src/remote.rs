//! The bulk client: `fms login`, `fms push`, `fms pull` against a running server, through
//! the picker's gRPC `FilesService` (REST only to log in).
//!
//! `push` sends files and directory trees over N concurrent streams. Files of at least
//! [`DEDUP_FROM`] bytes go dedup-aware: cut here with the server's FastCDC parameters, only
//! the chunks the user's own files do not hold are sent. A journal (one JSON line per event)
//! remembers each file's upload id as soon as the server gives it and its file id once
//! committed, so running the same `push` again after an interruption skips what is done
//! and resumes what was under way from the server's durable offset.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fms_engine::{ChunkId, ChunkParams, Chunker};
use fms_proto::picker::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use pb::files_service_client::FilesServiceClient;
use pb::upload_request::Msg as In;
use pb::upload_response::Msg as Out;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tonic::transport::Channel;

/// Files this large or larger are uploaded dedup-aware (smaller ones are one chunk or a
/// few: a round trip to ask costs more than sending them).
pub const DEDUP_FROM: u64 = 1 << 20;
/// Chunk ids announced per message.
const ANNOUNCE: usize = 1024;
/// Bytes per data message.
const PIECE: usize = 1 << 20;
/// Attempts per file before `push` gives up on it.
const ATTEMPTS: u32 = 6;

/// A failed remote command: what to tell the user, and the server's status if it answered.
#[derive(Debug)]
pub struct RemoteError {
    pub message: String,
    code: Option<tonic::Code>,
}

impl RemoteError {
    pub fn new(message: impl Into<String>) -> RemoteError {
        RemoteError {
            message: message.into(),
            code: None,
        }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn err(m: impl Into<String>) -> RemoteError {
    RemoteError::new(m)
}

impl From<tonic::Status> for RemoteError {
    fn from(s: tonic::Status) -> Self {
        RemoteError {
            message: format!("{:?}: {}", s.code(), s.message()),
            code: Some(s.code()),
        }
    }
}

type Result<T> = std::result::Result<T, RemoteError>;

/// What `fms login` saves (mode 0600).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub server: String,
    pub grpc: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds after which the access token is refreshed first.
    pub refresh_after: u64,
}

/// Where credentials live: `$FMS_CREDENTIALS`, else `$XDG_CONFIG_HOME/fms/credentials.json`,
/// else `~/.config/fms/credentials.json`.
pub fn credentials_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FMS_CREDENTIALS") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("fms").join("credentials.json")
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn save_credentials(c: &Credentials) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = credentials_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    let text = serde_json::to_vec_pretty(c).map_err(|e| err(e.to_string()))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(format!("{}: {e}", path.display())))
}

fn load_credentials() -> Result<Credentials> {
    let path = credentials_path();
    let text = std::fs::read(&path).map_err(|e| {
        err(format!(
            "not logged in ({}: {e}); run `fms login` first",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// The token response of `/auth/login` and `/auth/refresh`.
#[derive(serde::Deserialize)]
struct Tokens {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

async fn token_call(http: &reqwest::Client, url: String, body: Value) -> Result<Tokens> {
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| err(format!("{url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(err(format!("{url}: {status}: {message}")));
    }
    resp.json().await.map_err(|e| err(format!("{url}: {e}")))
}

/// `fms login`: exchange a username and password for tokens and save them.
pub async fn login(server: &str, grpc: Option<&str>, username: &str, password: &str) -> Result<()> {
    let server = server.trim_end_matches('/').to_string();
    let grpc = match grpc {
        Some(g) => g.trim_end_matches('/').to_string(),
        None => default_grpc(&server)?,
    };
    let http = reqwest::Client::new();
    let t = token_call(
        &http,
        format!("{server}/auth/login"),
        json!({"username": username, "password": password}),
    )
    .await?;
    save_credentials(&Credentials {
        server,
        grpc,
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        refresh_after: now_s() + t.expires_in * 4 / 5,
    })?;
    eprintln!("logged in; credentials in {}", credentials_path().display());
    Ok(())
}

/// `http://host:8080` -> `http://host:9090` (the default ports of `fms serve`).
fn default_grpc(server: &str) -> Result<String> {
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| err(format!("{server}: not a URL (http://host:port)")))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    Ok(format!("{scheme}://{host}:9090"))
}

/// A logged-in session shared by the workers: refreshes the access token when it is old.
struct Session {
    creds: Mutex<Credentials>,
    http: reqwest::Client,
    channel: Channel,
}

impl Session {
    async fn open() -> Result<Arc<Session>> {
        let creds = load_credentials()?;
        let channel = tonic::transport::Endpoint::from_shared(creds.grpc.clone())
            .map_err(|e| err(format!("{}: {e}", creds.grpc)))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| err(format!("{}: {e}", creds.grpc)))?;
        Ok(Arc::new(Session {
            creds: Mutex::new(creds),
            http: reqwest::Client::new(),
            channel,
        }))
    }

    /// A valid access token (refreshed and saved first if it is about to expire).
    async fn token(&self) -> Result<String> {
        let mut c = self.creds.lock().await;
        if now_s() >= c.refresh_after {
            let t = token_call(
                &self.http,
                format!("{}/auth/refresh", c.server),
                json!({"refresh_token": c.refresh_token}),
            )
            .await
            .map_err(|e| err(format!("{e} (log in again with `fms login`)")))?;
            c.access_token = t.access_token;
            c.refresh_token = t.refresh_token;
            c.refresh_after = now_s() + t.expires_in * 4 / 5;
            save_credentials(&c)?;
        }
        Ok(c.access_token.clone())
    }

    fn client(&self) -> FilesServiceClient<Channel> {
        FilesServiceClient::new(self.channel.clone())
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }

    async fn request<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(msg);
        let token = self.token().await?;
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| err("the saved token is not valid header text"))?,
        );
        Ok(r)
    }
}

/// One file to push.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    /// Journal key: the canonical path.
    key: String,
    name: String,
    /// Where it goes on the server: for a file found in a directory named on the command
    /// line, that directory's name and the path below it (`photos/2024`); else empty.
    folder: String,
    size: u64,
    mtime_ns: u128,
}

fn collect(paths: &[PathBuf]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    // (path, folder it goes to)
    let mut stack: Vec<(PathBuf, String)> = Vec::new();
    for p in paths.iter().rev() {
        stack.push((p.clone(), String::new()));
    }
    while let Some((p, folder)) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| err(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            // A directory named on the command line keeps its own name as the top folder
            // (like `cp -r dir dest`); `.`, `..` and `/` have none.
            let own = std::fs::canonicalize(&p)
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let below = match (folder.is_empty(), own.is_empty()) {
                (true, _) => own,
                (false, true) => folder.clone(),
                (false, false) => format!("{folder}/{own}"),
            };
            stack.extend(entries.into_iter().rev().map(|e| (e, below.clone())));
        } else if meta.is_file() {
            let canonical =
                std::fs::canonicalize(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| err(format!("{}: no file name", p.display())))?;
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.push(Item {
                key: canonical.to_string_lossy().into_owned(),
                path: p,
                name,
                folder: folder.clone(),
                size: meta.len(),
                mtime_ns,
            });
        }
        // Symbolic links, sockets, devices: skipped (a link's target is pushed when named).
    }
    Ok(out)
}

/// The push journal: JSON lines; the last line about a file wins.
struct Journal {
    file: std::sync::Mutex<File>,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    upload_id: Option<String>,
    file_id: Option<String>,
}

impl Journal {
    fn open(path: &Path) -> Result<(Journal, HashMap<String, Entry>)> {
        let mut known: HashMap<String, Entry> = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A line cut short by a crash is skipped.
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(key) = v["path"].as_str() else {
                    continue;
                };
                let e = known.entry(key.to_string()).or_default();
                e.size = v["size"].as_u64().unwrap_or(0);
                e.mtime_ns = v["mtime_ns"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if let Some(u) = v["upload_id"].as_str() {
                    e.upload_id = Some(u.to_string());
                    e.file_id = None;
                }
                if let Some(f) = v["file_id"].as_str() {
                    e.file_id = Some(f.to_string());
                }
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        Ok((
            Journal {
                file: std::sync::Mutex::new(file),
            },
            known,
        ))
    }

    fn record(&self, item: &Item, field: &str, value: &str) {
        let line = json!({
            "path": item.key, "size": item.size, "mtime_ns": item.mtime_ns.to_string(),
            field: value,
        });
        if let Ok(mut f) = self.file.lock() {
            // One write per line: a crash leaves at most the last line cut short.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The default journal of a push: per server and set of paths, under the user's state dir.
fn journal_path(server: &str, items: &[PathBuf]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(server.as_bytes());
    for p in items {
        let c = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        h.update(c.to_string_lossy().as_bytes());
        h.update(b"\0");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("fms")
        .join(format!("push-{}.jsonl", &h.finalize().to_hex()[..16]))
}

/// Totals of a push.
#[derive(Default)]
struct Totals {
    /// Bytes accounted for (sent, found on the server, or skipped as done).
    done: AtomicU64,
    /// Bytes actually sent.
    sent: AtomicU64,
    files: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

/// Options of `fms push`.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub streams: usize,
    pub journal: Option<PathBuf>,
    pub dedup: bool,
    pub json: bool,
}

/// `fms push PATH...`.
pub async fn push(paths: &[PathBuf], opts: PushOptions) -> Result<()> {
    let session = Session::open().await?;
    let server = session.creds.lock().await.server.clone();
    let items = collect(paths)?;
    let journal_at = opts
        .journal
        .clone()
        .unwrap_or_else(|| journal_path(&server, paths));
    let (journal, known) = Journal::open(&journal_at)?;
    let journal = Arc::new(journal);
    let params = session
        .client()
        .get_upload_params(session.request(pb::GetUploadParamsRequest {}).await?)
        .await?
        .into_inner();
    let chunking = ChunkParams {
        min: params.min_chunk,
        avg: params.avg_chunk,
        max: params.max_chunk,
    };
    chunking
        .validate()
        .map_err(|e| err(format!("the server's chunk parameters: {e}")))?;
    let total: u64 = items.iter().map(|i| i.size).sum();
    let totals = Arc::new(Totals::default());
    let mut queue = VecDeque::new();
    let mut results: Vec<(String, String)> = Vec::new();
    for item in items {
        let prior = known
            .get(&item.key)
            .filter(|e| e.size == item.size && e.mtime_ns == item.mtime_ns);
        match prior {
            Some(Entry {
                file_id: Some(f), ..
            }) => {
                totals.done.fetch_add(item.size, Ordering::Relaxed);
                totals.skipped.fetch_add(1, Ordering::Relaxed);
                results.push((item.path.display().to_string(), f.clone()));
            }
            p => queue.push_back((item, p.and_then(|e| e.upload_id.clone()))),
        }
    }
    let bar = bar(total);
    let start = Instant::now();
    let queue = Arc::new(Mutex::new(queue));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut workers = Vec::new();
    for _ in 0..opts.streams.max(1) {
        let w = Worker {
            session: session.clone(),
            journal: journal.clone(),
            totals: totals.clone(),
            chunking,
            max_announced: (params.max_announced as usize).clamp(1, ANNOUNCE),
            dedup: opts.dedup,
            done: done_tx.clone(),
            counted: AtomicU64::new(0),
        };
        let queue = queue.clone();
        workers.push(tokio::spawn(async move { w.run(queue).await }));
    }
    drop(done_tx);
    let ticker = {
        let totals = totals.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                if let Some(b) = &bar {
                    b.set_position(totals.done.load(Ordering::Relaxed));
                    b.set_message(format!(
                        "{} files",
                        totals.files.load(Ordering::Relaxed)
                            + totals.skipped.load(Ordering::Relaxed)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    while let Some(r) = done_rx.recv().await {
        results.push(r);
    }
    for w in workers {
        w.await.map_err(|e| err(e.to_string()))?;
    }
    ticker.abort();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let sent = totals.sent.load(Ordering::Relaxed);
    let failed = totals.failed.load(Ordering::Relaxed);
    if opts.json {
        results.sort();
        let files: serde_json::Map<String, Value> = results
            .into_iter()
            .map(|(p, f)| (p, Value::String(f)))
            .collect();
        println!(
            "{}",
            json!({
                "files": files, "bytes": total, "bytes_sent": sent, "seconds": secs,
                "pushed": totals.files.load(Ordering::Relaxed),
                "skipped": totals.skipped.load(Ordering::Relaxed), "failed": failed,
                "journal": journal_at.display().to_string(),
            })
        );
    } else {
        eprintln!(
            "pushed {} files, {} already done, {} failed: {} bytes, {} sent, {:.1} s ({:.1} MiB/s)",
            totals.files.load(Ordering::Relaxed),
            totals.skipped.load(Ordering::Relaxed),
            failed,
            total,
            sent,
            secs,
            total as f64 / secs.max(1e-9) / (1 << 20) as f64
        );
    }
    if failed > 0 {
        return Err(err(format!(
            "{failed} files failed; run the same command again to retry them"
        )));
    }
    Ok(())
}

fn bar(total: u64) -> Option<ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    Some(b)
}

/// Files still to push, with the upload id a previous run left for each.
type Queue = Arc<Mutex<VecDeque<(Item, Option<String>)>>>;

/// One cut chunk: offset in the file, length, id.
type Cut = (u64, u32, ChunkId);

/// One stream's worth of pushing.
struct Worker {
    session: Arc<Session>,
    journal: Arc<Journal>,
    totals: Arc<Totals>,
    chunking: ChunkParams,
    max_announced: usize,
    dedup: bool,
    done: mpsc::UnboundedSender<(String, String)>,
    /// Bytes the current attempt added to `totals.done` (taken back if it fails).
    counted: AtomicU64,
}

/// A live Upload stream.
struct Stream {
    tx: mpsc::Sender<pb::UploadRequest>,
    rx: tonic::Streaming<pb::UploadResponse>,
}

impl Stream {
    async fn send(&self, msg: In) -> Result<()> {
        self.tx
            .send(pb::UploadRequest { msg: Some(msg) })
            .await
            .map_err(|_| err("the upload stream closed"))
    }

    async fn next(&mut self) -> Result<Out> {
        match self.rx.message().await? {
            Some(pb::UploadResponse { msg: Some(m) }) => Ok(m),
            Some(_) => Err(err("an empty message from the server")),
            None => Err(err("the server ended the upload stream")),
        }
    }
}

impl Worker {
    async fn run(self, queue: Queue) {
        let mut stream: Option<Stream> = None;
        loop {
            let Some((item, mut upload_id)) = queue.lock().await.pop_front() else {
                break;
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                self.counted.store(0, Ordering::Relaxed);
                let r = async {
                    if stream.is_none() {
                        stream = Some(self.open().await?);
                    }
                    let s = stream.as_mut().ok_or_else(|| err("no stream"))?;
                    self.push_one(s, &item, &mut upload_id).await
                }
                .await;
                match r {
                    Ok(file_id) => {
                        self.totals.files.fetch_add(1, Ordering::Relaxed);
                        let _ = self.done.send((item.path.display().to_string(), file_id));
                        break;
                    }
                    Err(e) if upload_id.is_some() && e.code == Some(tonic::Code::NotFound) => {
                        // The upload of an earlier run expired or was removed: start over.
                        stream = None;
                        upload_id = None;
                        self.totals
                            .done
                            .fetch_sub(self.counted.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    Err(e) => {
                        stream = None;
                        // What this attempt counted is counted again by the next.
                        self.totals
                            .done
                            .fetch_sub(self.counted.load(Ordering::Relaxed), Ordering::Relaxed);
                        if attempt >= ATTEMPTS || permanent(&e) {
                            eprintln!("fms push: {}: {e}", item.path.display());
                            self.totals.failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                    }
                }
            }
        }
        if let Some(s) = stream {
            drop(s.tx);
        }
    }

    fn count(&self, n: u64) {
        self.totals.done.fetch_add(n, Ordering::Relaxed);
        self.counted.fetch_add(n, Ordering::Relaxed);
    }

    async fn open(&self) -> Result<Stream> {
        let (tx, rx) = mpsc::channel(4);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = self
            .session
            .client()
            .upload(self.session.request(outbound).await?)
            .await?;
        Ok(Stream {
            tx,
            rx: resp.into_inner(),
        })
    }

    /// Push one file on `s`; its new file id.
    async fn push_one(
        &self,
        s: &mut Stream,
        item: &Item,
        upload_id: &mut Option<String>,
    ) -> Result<String> {
        let file = File::open(&item.path).map_err(|e| err(format!("{e}")))?;
        let start = match upload_id.as_deref() {
            Some(id) => pb::UploadStart {
                name: item.name.clone(),
                size: Some(item.size),
                upload_id: id.to_string(),
                offset: 0,
                resume: true,
                folder: String::new(),
            },
            None => pb::UploadStart {
                name: item.name.clone(),
                size: Some(item.size),
                upload_id: String::new(),
                offset: 0,
                resume: false,
                folder: item.folder.clone(),
            },
        };
        s.send(In::Start(start)).await?;
        let offset = match s.next().await? {
            Out::Progress(p) => {
                if upload_id.as_deref() != Some(p.upload_id.as_str()) {
                    self.journal.record(item, "upload_id", &p.upload_id);
                    *upload_id = Some(p.upload_id);
                }
                p.offset
            }
            // The upload was complete already (the record of the last run got lost).
            Out::File(f) => {
                self.journal.record(item, "file_id", &f.id);
                self.count(item.size);
                return Ok(f.id);
            }
            Out::Needed(_) => return Err(err("expected the upload's offset first")),
        };
        if offset > item.size {
            return Err(err("the server holds more bytes than the file has"));
        }
        self.count(offset);
        let hasher = if self.dedup && item.size >= DEDUP_FROM {
            self.send_chunks(s, &file, item.size, offset).await?
        } else {
            self.send_data(s, &file, offset, item.size).await?;
            hash_file(&file, item.size).await?
        };
        s.send(In::End(pb::UploadEnd {
            blake3: hasher.to_hex().to_string(),
        }))
        .await?;
        loop {
            match s.next().await? {
                Out::File(f) => {
                    self.journal.record(item, "file_id", &f.id);
                    return Ok(f.id);
                }
                Out::Progress(_) => {}
                Out::Needed(_) => return Err(err("an unexpected chunks answer")),
            }
        }
    }

    /// Bytes `from..to` of the file as data messages.
    async fn send_data(&self, s: &mut Stream, file: &File, mut from: u64, to: u64) -> Result<()> {
        while from < to {
            let n = ((to - from) as usize).min(PIECE);
            let piece = read_at(file, from, n).await?;
            s.send(In::Data(piece.into())).await?;
            from += n as u64;
            self.totals.sent.fetch_add(n as u64, Ordering::Relaxed);
            self.count(n as u64);
        }
        Ok(())
    }

    /// Dedup-aware: cut the file, skip what the server has up to `offset`, announce the
    /// rest in batches, send what is asked for. Returns the whole file's hash.
    async fn send_chunks(
        &self,
        s: &mut Stream,
        file: &File,
        size: u64,
        offset: u64,
    ) -> Result<blake3::Hash> {
        // Cut on a blocking thread; chunk (offset, len, id) come back in batches.
        let (ctx, mut crx) = mpsc::channel::<Vec<Cut>>(2);
        let f = file.try_clone().map_err(|e| err(e.to_string()))?;
        let params = self.chunking;
        let batch = self.max_announced;
        let cutter = tokio::task::spawn_blocking(move || cut_file(f, size, params, batch, &ctx));
        let mut pos = offset;
        while let Some(chunks) = crx.recv().await {
            // Chunks wholly before the server's offset are there already; one straddling it
            // goes as raw bytes up to its end.
            let mut refs = Vec::with_capacity(chunks.len());
            for (at, len, id) in chunks {
                let end = at + len as u64;
                if end <= pos {
                    continue;
                }
                if at < pos {
                    self.send_data(s, file, pos, end).await?;
                    pos = end;
                    continue;
                }
                refs.push((at, len, id));
            }
            if refs.is_empty() {
                continue;
            }
            s.send(In::Chunks(pb::ChunkRefs {
                refs: refs
                    .iter()
                    .map(|(_, len, id)| pb::ChunkRef {
                        blake3: bytes::Bytes::copy_from_slice(&id.0),
                        size: *len,
                    })
                    .collect(),
            }))
            .await?;
            let send = loop {
                match s.next().await? {
                    Out::Needed(n) => break n.send,
                    Out::Progress(_) => {}
                    Out::File(_) => return Err(err("a file record before the end")),
                }
            };
            if send.len() != refs.len() {
                return Err(err("the server answered for a different number of chunks"));
            }
            for ((at, len, _), need) in refs.iter().zip(send) {
                if need {
                    let data = read_at(file, *at, *len as usize).await?;
                    s.send(In::Chunk(data.into())).await?;
                    self.totals.sent.fetch_add(*len as u64, Ordering::Relaxed);
                }
                self.count(*len as u64);
                pos = at + *len as u64;
            }
        }
        cutter
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("reading the file: {e}")))
    }
}

/// Errors a retry will not fix.
fn permanent(e: &RemoteError) -> bool {
    use tonic::Code::*;
    matches!(
        e.code,
        Some(
            InvalidArgument
                | PermissionDenied
                | ResourceExhausted
                | OutOfRange
                | FailedPrecondition
        )
    )
}

/// Read `n` bytes at `at` on a blocking thread.
async fn read_at(file: &File, at: u64, n: usize) -> Result<Vec<u8>> {
    let f = file.try_clone().map_err(|e| err(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, at).map(|_| buf)
    })
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(|e| err(format!("read: {e} (did the file change?)")))
}

async fn hash_file(file: &File, size: u64) -> Result<blake3::Hash> {
    let f = file.try_clone().map_err(|e| err(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let mut h = blake3::Hasher::new();
        let mut at = 0u64;
        let mut buf = vec![0u8; PIECE];
        while at < size {
            let n = ((size - at) as usize).min(PIECE);
            let b = buf.get_mut(..n).unwrap_or_default();
            f.read_exact_at(b, at)?;
            h.update(b);
            at += n as u64;
        }
        Ok::<_, std::io::Error>(h.finalize())
    })
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(|e| err(format!("read: {e}")))
}

/// Cut the whole file with the server's parameters; batches of (offset, len, id) go to
/// `out`. Returns the file's hash.
fn cut_file(
    f: File,
    size: u64,
    params: ChunkParams,
    batch: usize,
    out: &mpsc::Sender<Vec<Cut>>,
) -> std::io::Result<blake3::Hash> {
    let mut chunker = Chunker::new(params);
    let mut h = blake3::Hasher::new();
    let mut pending = Vec::with_capacity(batch);
    let mut at = 0u64;
    let mut cut_at = 0u64;
    let mut buf = vec![0u8; PIECE];
    let stop = || std::io::Error::other("the upload stopped");
    let mut emit = |c: bytes::Bytes| -> std::io::Result<()> {
        pending.push((cut_at, c.len() as u32, ChunkId::of(&c)));
        cut_at += c.len() as u64;
        if pending.len() >= batch {
            out.blocking_send(std::mem::take(&mut pending))
                .map_err(|_| stop())?;
        }
        Ok(())
    };
    while at < size {
        let n = ((size - at) as usize).min(PIECE);
        let b = buf.get_mut(..n).unwrap_or_default();
        f.read_exact_at(b, at)?;
        h.update(b);
        chunker.push(b, &mut emit)?;
        at += n as u64;
    }
    chunker.finish(&mut emit)?;
    if !pending.is_empty() {
        out.blocking_send(pending).map_err(|_| stop())?;
    }
    Ok(h.finalize())
}

/// Options of `fms pull`.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub to: PathBuf,
    pub streams: usize,
}

/// `fms pull [ID...]`: download files (all the user can read when none are named) into a
/// directory. A `.part` file left by an interrupted pull is continued from its end; every
/// file's BLAKE3 is checked before it takes its name.
pub async fn pull(ids: &[String], opts: PullOptions) -> Result<()> {
    let session = Session::open().await?;
    std::fs::create_dir_all(&opts.to).map_err(|e| err(format!("{}: {e}", opts.to.display())))?;
    let mut files = Vec::new();
    if ids.is_empty() {
        let mut token = String::new();
        loop {
            let page = session
                .client()
                .list(
                    session
                        .request(pb::ListRequest {
                            page_size: 1000,
                            page_token: token.clone(),
                        })
                        .await?,
                )
                .await?
                .into_inner();
            files.extend(page.files);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    } else {
        for id in ids {
            let r = session
                .client()
                .stat(
                    session
                        .request(pb::StatRequest {
                            file_id: id.clone(),
                        })
                        .await?,
                )
                .await
                .map_err(|e| {
                    let mut e = RemoteError::from(e);
                    e.message = format!("{id}: {}", e.message);
                    e
                })?;
            files.extend(r.into_inner().file);
        }
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = bar(total);
    let done = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let mut workers = Vec::new();
    for _ in 0..opts.streams.max(1) {
        let (session, queue, done, to, bar) = (
            session.clone(),
            queue.clone(),
            done.clone(),
            opts.to.clone(),
            bar.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut failed = 0u32;
            loop {
                let Some(f) = queue.lock().await.pop_front() else {
                    break;
                };
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match pull_one(&session, &f, &to, &done, bar.as_ref()).await {
                        Ok(()) => break,
                        Err(e) if attempt >= ATTEMPTS || permanent(&e) => {
                            eprintln!("fms pull: {} ({}): {e}", f.name, f.id);
                            failed += 1;
                            break;
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await
                        }
                    }
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for w in workers {
        failed += w.await.map_err(|e| err(e.to_string()))?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if failed > 0 {
        return Err(err(format!(
            "{failed} files failed; run the same command again"
        )));
    }
    Ok(())
}

/// Where a pulled file goes: its name, or `name (id)` when another file took the name.
fn target(dir: &Path, f: &pb::FileInfo) -> PathBuf {
    // The server checks names and folders; a file name here never leaves `dir` anyway.
    let clean = |s: &str| -> Option<String> {
        let c: String = s
            .chars()
            .map(|c| {
                if c == '/' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        (!c.is_empty() && c != "." && c != "..").then_some(c)
    };
    let mut dir = dir.to_path_buf();
    for part in f.folder.split('/').filter_map(clean) {
        dir.push(part);
    }
    let safe = clean(&f.name).unwrap_or_else(|| format!("file-{}", f.id));
    let plain = dir.join(&safe);
    match std::fs::metadata(&plain) {
        Err(_) => plain,
        Ok(_) if same_content(&plain, f) => plain,
        Ok(_) => dir.join(format!("{safe} ({})", f.id)),
    }
}

fn same_content(path: &Path, f: &pb::FileInfo) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(f.size) {
        return false;
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(file).is_ok() && h.finalize().to_hex().as_str() == f.blake3
}

async fn pull_one(
    session: &Session,
    f: &pb::FileInfo,
    dir: &Path,
    done: &AtomicU64,
    bar: Option<&ProgressBar>,
) -> Result<()> {
    let dest = target(dir, f);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(format!("{}: {e}", parent.display())))?;
    }
    if dest.exists() {
        done.fetch_add(f.size, Ordering::Relaxed);
        if let Some(b) = bar {
            b.inc(f.size);
        }
        return Ok(());
    }
    let part = dir.join(format!(".{}.part", f.id));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| err(format!("{}: {e}", part.display())))?;
    let have = out.metadata().map(|m| m.len()).unwrap_or(0).min(f.size);
    out.set_len(have).map_err(|e| err(e.to_string()))?;
    if let Some(b) = bar {
        b.inc(have);
    }
    if have < f.size {
        let mut s = session
            .client()
            .download(
                session
                    .request(pb::DownloadRequest {
                        file_id: f.id.clone(),
                        offset: have,
                        length: 0,
                    })
                    .await?,
            )
            .await?
            .into_inner();
        while let Some(m) = s.message().await? {
            if let Some(pb::download_response::Msg::Data(d)) = m.msg {
                out.write_all(&d)
                    .map_err(|e| err(format!("{}: {e}", part.display())))?;
                if let Some(b) = bar {
                    b.inc(d.len() as u64);
                }
            }
        }
    }
    out.sync_all().map_err(|e| err(e.to_string()))?;
    drop(out);
    if !same_content(&part, f) {
        let _ = std::fs::remove_file(&part);
        return Err(err(format!("{}: content does not match its BLAKE3", f.id)));
    }
    std::fs::rename(&part, &dest).map_err(|e| err(format!("{}: {e}", dest.display())))?;
    done.fetch_add(f.size, Ordering::Relaxed);
    Ok(())
}
