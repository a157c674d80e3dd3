//! The chunk engine seen from async code. The engine is synchronous (its own pipeline
//! threads, blocking disk I/O); bytes cross over bounded channels, so a slow disk slows the
//! client (backpressure) and a slow client parks one blocking thread, never memory.

use bytes::Bytes;
use fms_engine::{ChunkId, FileId, FileInfo, Scope, SessionId, SessionInfo, Store};
use tokio::sync::{mpsc, oneshot};

/// Download frames in flight between the engine and a response (8 x 256 KiB).
const FRAMES_IN_FLIGHT: usize = 8;
/// Upload pieces queued between a request and the engine: with the piece being gathered and
/// the one being cut, three pieces (`api::INGEST_PIECE`, or a connection read buffer) per
/// upload on this side of the engine's own budget (window and credit, see fms_engine).
const PIECES_IN_FLIGHT: usize = 1;
/// Download frames are gathered up to this size.
const FRAME: usize = 256 * 1024;

/// Gathers small frames into pieces of at least `size` bytes (one copy); a frame already
/// that large passes through untouched.
#[derive(Debug)]
pub struct Gather {
    size: usize,
    pending: bytes::BytesMut,
}

impl Gather {
    pub fn new(size: usize) -> Gather {
        Gather {
            size,
            pending: bytes::BytesMut::new(),
        }
    }

    /// A piece to send on, if one is complete.
    pub fn push(&mut self, frame: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() && frame.len() >= self.size {
            return Some(frame);
        }
        self.pending.extend_from_slice(&frame);
        (self.pending.len() >= self.size).then(|| self.pending.split().freeze())
    }

    /// What is left at the end.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }
}

/// The time an upload of new content takes per byte (ingest start to durable commit), as a
/// moving average. Deduplicated uploads skip the pack writes and their fdatasync, which
/// would tell a user that someone else already stores their file (reliability test 40); such
/// an upload is padded to the time new content of its size would have taken.
///
/// Only uploads that ran alone teach it: under concurrency every upload is slower, and a
/// deduplicated one then is too, so the padding needed is no more than what one upload alone
/// shows (samples from concurrent uploads would pad by the load of the past).
#[derive(Debug, Default)]
pub struct WriteCost {
    /// Nanoseconds per byte; 0 until a first sample.
    ns_per_byte: std::sync::Mutex<f64>,
    /// Uploads in flight.
    active: std::sync::atomic::AtomicUsize,
    /// Uploads started, ever.
    starts: std::sync::atomic::AtomicU64,
}

/// One upload's clock (see [`WriteCost::begin`]); counts it as in flight until dropped.
#[derive(Debug)]
pub struct Timing<'a> {
    cost: &'a WriteCost,
    started: std::time::Instant,
    alone: bool,
    seq: u64,
}

impl Timing<'_> {
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// No other upload ran at any time during this one.
    fn ran_alone(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.alone
            && self.cost.starts.load(Ordering::Relaxed) == self.seq
            && self.cost.active.load(Ordering::Relaxed) == 1
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        self.cost
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl WriteCost {
    /// Uploads smaller than this teach nothing (fixed costs dominate).
    const MIN_SAMPLE: u64 = 1 << 20;
    /// Longest padding.
    const MAX_PAD: std::time::Duration = std::time::Duration::from_secs(30);

    /// An upload starts.
    pub fn begin(&self) -> Timing<'_> {
        use std::sync::atomic::Ordering;
        let alone = self.active.fetch_add(1, Ordering::Relaxed) == 0;
        let seq = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        Timing {
            cost: self,
            started: std::time::Instant::now(),
            alone,
            seq,
        }
    }

    /// Learn from an upload that was (almost) all new bytes and ran alone.
    pub fn observe(&self, size: u64, new_bytes: u64, timing: &Timing<'_>) {
        if size < Self::MIN_SAMPLE
            || new_bytes.saturating_mul(10) < size.saturating_mul(9)
            || !timing.ran_alone()
        {
            return;
        }
        let sample = timing.elapsed().as_nanos() as f64 / size as f64;
        if let Ok(mut v) = self.ns_per_byte.lock() {
            *v = if *v == 0.0 {
                sample
            } else {
                *v * 0.8 + sample * 0.2
            };
        }
    }

    /// How much longer an upload of `size` bytes that took `elapsed` should wait to look
    /// like new content.
    pub fn pad(&self, size: u64, elapsed: std::time::Duration) -> std::time::Duration {
        let ns = self.ns_per_byte.lock().map(|v| *v).unwrap_or(0.0);
        let expected = std::time::Duration::from_nanos((ns * size as f64) as u64);
        expected.saturating_sub(elapsed).min(Self::MAX_PAD)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Engine(#[from] fms_engine::Error),
    #[error("the engine task stopped: {0}")]
    Task(String),
}

impl EngineError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::Engine(fms_engine::Error::NotFound(_)))
    }
}

/// The picker's handle on the store.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Store,
}

enum Msg {
    Data(Bytes),
    Finish,
}

/// An upload on its way into the store. Dropped without [`Ingest::finish`], nothing is
/// committed (the chunks written so far are garbage for GC).
pub struct Ingest {
    tx: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<Result<FileInfo, EngineError>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

impl Ingest {
    /// Hand one frame to the engine; waits while the engine is behind.
    pub async fn write(&mut self, data: Bytes) -> Result<(), EngineError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.tx.send(Msg::Data(data)).await.is_err() {
            // The engine side ended early: its error is the answer.
            return Err(self.failure().await);
        }
        Ok(())
    }

    async fn failure(&mut self) -> EngineError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => EngineError::Task("finished before the end of the upload".into()),
            Err(e) => EngineError::Task(e.to_string()),
        }
    }

    /// Commit: the file is durable when this returns.
    pub async fn finish(mut self) -> Result<FileInfo, EngineError> {
        if self.tx.send(Msg::Finish).await.is_err() {
            return Err(self.failure().await);
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(EngineError::Task(e.to_string())),
        }
    }
}

enum Step {
    Data(Bytes),
    /// Dedup-aware: announce chunks; answer which are needed (then take the held ones).
    Announce(
        Vec<(ChunkId, u32)>,
        oneshot::Sender<Result<Vec<bool>, EngineError>>,
    ),
    /// Dedup-aware: the bytes of the next needed chunk (then take the held ones after it).
    Chunk(Bytes),
    Checkpoint(oneshot::Sender<Result<u64, EngineError>>),
    /// Checkpoint, release the session, then answer (offset, bytes stored as new).
    Close(oneshot::Sender<Result<(u64, u64), EngineError>>),
    /// Discard what is not acknowledged, release the session, then answer.
    Abandon(oneshot::Sender<()>),
    Finish(oneshot::Sender<Result<FileInfo, EngineError>>),
}

/// One append to a resumable session (a tus PATCH): bytes in, acknowledged (durable) at each
/// checkpoint. End it with [`Append::close`], [`Append::abandon`] or [`Append::finish`]: each
/// returns once the session is free again, so the client's next request finds it free.
/// Merely dropped, it discards what was written since the last checkpoint and releases the
/// session a moment later.
pub struct Append {
    tx: mpsc::Sender<Step>,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").finish_non_exhaustive()
    }
}

impl Append {
    /// Hand bytes to the session; waits while the engine is behind.
    pub async fn write(&mut self, data: Bytes) -> Result<(), EngineError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.tx.send(Step::Data(data)).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    async fn failure(&mut self) -> EngineError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => EngineError::Task("the session writer ended early".into()),
            Err(e) => EngineError::Task(e.to_string()),
        }
    }

    /// Dedup-aware: announce the next chunks; for each, whether its bytes must be sent
    /// (only chunks the owner's own files hold are not). Held chunks are taken as soon as
    /// the chunks before them are in.
    pub async fn announce(
        &mut self,
        chunks: Vec<(ChunkId, u32)>,
    ) -> Result<Vec<bool>, EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Step::Announce(chunks, tx)).await.is_err() {
            return Err(self.failure().await);
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.failure().await),
        }
    }

    /// Dedup-aware: the bytes of the next announced chunk that was needed.
    pub async fn chunk(&mut self, data: Bytes) -> Result<(), EngineError> {
        if self.tx.send(Step::Chunk(data)).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Make everything written so far durable; returns the acknowledged offset.
    pub async fn checkpoint(&mut self) -> Result<u64, EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Step::Checkpoint(tx)).await.is_err() {
            return Err(self.failure().await);
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.failure().await),
        }
    }

    /// Checkpoint and release the session; returns the acknowledged offset and how many of
    /// the bytes this append acknowledged were new to the store.
    pub async fn close(mut self) -> Result<(u64, u64), EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Step::Close(tx)).await.is_err() {
            return Err(self.failure().await);
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.failure().await),
        }
    }

    /// Discard what was written since the last checkpoint and release the session.
    pub async fn abandon(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Step::Abandon(tx)).await.is_ok() {
            let _ = rx.await;
        } else {
            let _ = self.task.await;
        }
    }

    /// Checkpoint and turn the session into a file (the session is gone afterwards).
    pub async fn finish(mut self) -> Result<FileInfo, EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Step::Finish(tx)).await.is_err() {
            return Err(self.failure().await);
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.failure().await),
        }
    }
}

impl Engine {
    /// A new resumable session that expires after `ttl`.
    pub async fn create_session(
        &self,
        ttl: std::time::Duration,
    ) -> Result<SessionInfo, EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.create_session(Some(ttl)))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    /// A session's acknowledged offset and expiry.
    pub async fn session(&self, id: SessionId) -> Result<SessionInfo, EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.session(id))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    /// Drop a session and the references it holds.
    pub async fn abort_session(&self, id: SessionId) -> Result<(), EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.abort_session(id))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    /// Start appending to session `id` of user `owner` at `offset` (its acknowledged offset,
    /// or `OffsetMismatch`); `SessionBusy` while another append holds it. `offset: None`
    /// resumes wherever the session is.
    pub async fn append(
        &self,
        id: SessionId,
        offset: Option<u64>,
        owner: &str,
    ) -> Result<(Append, u64), EngineError> {
        let scope = Scope::named(owner);
        let (tx, mut rx) = mpsc::channel::<Step>(PIECES_IN_FLIGHT);
        let (opened_tx, opened_rx) = oneshot::channel();
        let store = self.store.clone();
        let task = tokio::task::spawn_blocking(move || {
            let opened = match offset {
                Some(o) => store.session_writer(id, o),
                None => store
                    .session(id)
                    .and_then(|s| store.session_writer(id, s.offset)),
            };
            let mut w = match opened {
                Ok(mut w) => {
                    w.set_scope(Some(scope));
                    let _ = opened_tx.send(Ok(w.acknowledged()));
                    w
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(EngineError::from(e)));
                    return Ok(());
                }
            };
            while let Some(step) = rx.blocking_recv() {
                match step {
                    Step::Data(b) => w.write_bytes(b)?,
                    Step::Announce(chunks, reply) => {
                        let r = w.announce(scope, &chunks).map_err(EngineError::from);
                        let failed = r.is_err();
                        let _ = reply.send(r);
                        if failed {
                            return Ok(());
                        }
                        w.reuse()?;
                    }
                    Step::Chunk(b) => {
                        w.chunk(b)?;
                        w.reuse()?;
                    }
                    Step::Checkpoint(reply) => {
                        let r = w.checkpoint().map_err(EngineError::from);
                        let failed = r.is_err();
                        let _ = reply.send(r);
                        if failed {
                            return Ok(());
                        }
                    }
                    Step::Close(reply) => {
                        let r = w
                            .checkpoint()
                            .map(|offset| (offset, w.new_bytes()))
                            .map_err(EngineError::from);
                        drop(w);
                        let _ = reply.send(r);
                        return Ok(());
                    }
                    Step::Abandon(reply) => {
                        drop(w);
                        let _ = reply.send(());
                        return Ok(());
                    }
                    Step::Finish(reply) => {
                        let _ = reply.send(w.finish().map_err(EngineError::from));
                        return Ok(());
                    }
                }
            }
            // The request went away: the writer is dropped, the unacknowledged part with it.
            Ok(())
        });
        match opened_rx.await {
            Ok(Ok(at)) => Ok((Append { tx, task }, at)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => EngineError::Task("the session writer did not start".into()),
                Err(e) => EngineError::Task(e.to_string()),
            }),
        }
    }

    /// Open (or create) the store in `dir`.
    pub async fn open(dir: std::path::PathBuf) -> Result<Engine, EngineError> {
        let store =
            tokio::task::spawn_blocking(move || Store::builder(dir).create_if_missing(true).open())
                .await
                .map_err(|e| EngineError::Task(e.to_string()))??;
        tracing::info!(io = store.io_backend(), "chunk store open");
        Ok(Engine { store })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Start an upload by user `owner`.
    pub fn ingest(&self, owner: &str) -> Ingest {
        let (tx, mut rx) = mpsc::channel::<Msg>(PIECES_IN_FLIGHT);
        let store = self.store.clone();
        let scope = Scope::named(owner);
        let task = tokio::task::spawn_blocking(move || {
            let mut w = store.writer()?;
            w.set_scope(Some(scope));
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Data(b) => w.write_bytes(b)?,
                    Msg::Finish => return Ok(w.finish()?),
                }
            }
            // The request went away: drop the writer, commit nothing.
            Err(EngineError::Task("upload abandoned".into()))
        });
        Ingest { tx, task }
    }

    /// Bytes `start..end` of a file as a stream of frames. Every chunk is verified; a
    /// corrupt one ends the stream with an error (the client sees a cut-short body, never
    /// wrong bytes).
    ///
    /// A reader that takes nothing for `stall` is cut off: a client that stops reading does
    /// not hold a thread and the file open forever.
    pub fn read(
        &self,
        id: FileId,
        start: u64,
        end: u64,
        stall: std::time::Duration,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>> {
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // `false`: the reader is gone or stalled; stop.
            let send = |item: Result<Bytes, std::io::Error>| -> bool {
                match handle.block_on(tokio::time::timeout(stall, tx.send(item))) {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) => false,
                    Err(_) => {
                        tracing::info!(file = %id, "download stalled; cut off");
                        metrics::counter!("picker_downloads_stalled_total").increment(1);
                        false
                    }
                }
            };
            let reader = match store.read_range(id, start, end) {
                Ok(r) => r,
                Err(e) => {
                    send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            // Chunks (~64 KiB) are gathered into frames of 256 KiB: a quarter as many
            // channel hand-offs and socket writes for one memcpy.
            let mut frames = Gather::new(FRAME);
            for chunk in reader {
                match chunk {
                    Ok(b) => {
                        if let Some(f) = frames.push(b)
                            && !send(Ok(f))
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, file = %id, "read failed");
                        // What was verified goes out first; then the error cuts the body.
                        if let Some(f) = frames.finish()
                            && !send(Ok(f))
                        {
                            return;
                        }
                        send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
            }
            if let Some(f) = frames.finish() {
                send(Ok(f));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Drop a file's references (GC reclaims unshared chunks).
    /// A new file joining `parts` (their chunks, not copies of them).
    pub async fn concat(&self, parts: Vec<FileId>, owner: &str) -> Result<FileInfo, EngineError> {
        let store = self.store.clone();
        let scope = Some(Scope::named(owner));
        tokio::task::spawn_blocking(move || store.concat(&parts, scope))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    pub async fn delete(&self, id: FileId) -> Result<(), EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.delete(id))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_cost_learns_from_lone_uploads_of_new_content_only() {
        use std::time::Duration;
        let c = WriteCost::default();
        assert_eq!(
            c.pad(10 << 20, Duration::ZERO),
            Duration::ZERO,
            "nothing learned yet"
        );
        let t = c.begin();
        std::thread::sleep(Duration::from_millis(20));
        c.observe(10 << 20, 1 << 20, &t); // mostly deduplicated: ignored
        c.observe(100, 100, &t); // too small: ignored
        {
            let other = c.begin(); // not alone: ignored
            c.observe(10 << 20, 10 << 20, &t);
            drop(other);
        }
        c.observe(10 << 20, 10 << 20, &t); // another upload started meanwhile: ignored
        assert_eq!(c.pad(10 << 20, Duration::ZERO), Duration::ZERO);
        drop(t);
        let t = c.begin();
        std::thread::sleep(Duration::from_millis(50));
        c.observe(10 << 20, 10 << 20, &t);
        let learned = t.elapsed();
        drop(t);
        let pad = c.pad(20 << 20, Duration::from_millis(10));
        assert!(
            pad >= learned * 2 - Duration::from_millis(12),
            "{pad:?} vs {learned:?}"
        );
        assert!(pad <= learned * 2, "{pad:?} vs {learned:?}");
        assert_eq!(c.pad(1 << 20, Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(c.pad(u64::MAX / 2, Duration::ZERO), WriteCost::MAX_PAD);
    }

    #[test]
    fn gather_makes_pieces_of_at_least_the_size_and_loses_nothing() {
        let mut g = Gather::new(10);
        let mut out = Vec::new();
        for frame in [&b"abc"[..], b"defg", b"hijkl", b"0123456789ABCD", b"xy"] {
            if let Some(p) = g.push(Bytes::copy_from_slice(frame)) {
                out.push(p);
            }
        }
        out.extend(g.finish());
        let sizes: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(
            sizes,
            [12, 14, 2],
            "gathered, passed through, the rest at the end"
        );
        assert_eq!(out.concat(), b"abcdefghijkl0123456789ABCDxy");
        assert!(g.finish().is_none());
    }
}
