//! The write path: a bounded three-stage pipeline. The caller's thread cuts chunks (FastCDC);
//! a hasher thread computes chunk ids and the whole-file hash and looks each chunk up in the
//! index; a writer thread appends the new ones to the active pack in batches. On two cores
//! the stages overlap (duplicate data never reaches the writer). The bytes of cut chunks not
//! yet decided or written are held to a per-writer budget ([`Credit`]: one write batch plus
//! one largest chunk, 320 KiB with the default parameters), so a slow stage makes the one
//! before it wait and the memory of an upload is the budget plus the chunker's carry (at most
//! one largest chunk), whatever the file size.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId, now_ms};
use crate::index::{FileMeta, ManifestEntry};
use crate::pack::{Location, NewRecord, RecordKind};
use crate::scope::Scope;
use crate::store::{FileInfo, Inner, NewFile, Store, WriterGuard, lock};

/// Chunks queued between the chunker and the worker (their bytes are bounded by the credit).
const CHANNEL_CHUNKS: usize = 64;
/// New chunk bytes gathered before one pack append (a batch may pass this by one chunk).
const WRITE_BATCH_BYTES: usize = 64 << 10;
/// Batches queued for the writer stage (their bytes are bounded by the credit).
const WRITER_BATCHES: usize = 2;
/// Appended bytes after which background writeback of the pack is requested.
const WRITEBACK_BYTES: usize = 32 << 20;

/// The bytes of cut chunks in flight inside one pipeline, bounded: the chunker takes credit
/// before handing a chunk on and the stage that is done with it (the hasher for a duplicate,
/// the writer after the append) gives it back.
#[derive(Debug)]
pub(crate) struct Credit {
    used: Mutex<usize>,
    freed: Condvar,
    limit: usize,
    /// The most ever in flight at once (tests check it against the limit).
    #[cfg(test)]
    peak: std::sync::atomic::AtomicUsize,
}

impl Credit {
    fn new(limit: usize) -> Credit {
        Credit {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit,
            #[cfg(test)]
            peak: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Wait until `n` more bytes fit (a chunk larger than the whole budget goes alone).
    fn take(&self, n: usize) -> Result<()> {
        let mut used = lock(&self.used)?;
        while *used > 0 && *used + n > self.limit {
            used = self
                .freed
                .wait(used)
                .map_err(|_| Error::Internal("an engine lock was poisoned by a panic"))?;
        }
        *used += n;
        #[cfg(test)]
        self.peak
            .fetch_max(*used, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn give(&self, n: usize) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(n);
            self.freed.notify_all();
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }

    #[cfg(test)]
    fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the worker has produced since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    pub(crate) entries: Vec<ManifestEntry>,
    pub(crate) new_locs: HashMap<ChunkId, (Location, u32)>,
    pub(crate) packs: Vec<u32>,
    pub(crate) new_bytes: u64,
    /// Chunks pinned since the last flush; the caller holds them until its commit.
    pub(crate) pinned: Vec<ChunkId>,
}

/// What the worker knows of a chunk's id before hashing it.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    /// Cut here: hash it.
    Cut,
    /// Cut by a client that named it: hash it and refuse it if the name is wrong.
    Claimed(ChunkId),
    /// Read back from the store, already verified against this id.
    Verified(ChunkId),
}

enum Msg {
    Chunk(Bytes, Expect),
    Flush(SyncSender<Result<Flushed>>),
    /// Flush and hand back the file hash (ends the worker).
    Finish(SyncSender<Result<(Flushed, Option<blake3::Hasher>)>>),
}

/// The worker stage.
struct Sink {
    inner: Arc<Inner>,
    /// The whole-file hash (the chunker's thread has enough to do cutting).
    hasher: Option<blake3::Hasher>,
    /// Chunks this writer already decided (written or pinned): never written twice.
    known: HashSet<ChunkId>,
    pending: Vec<(ChunkId, Bytes)>,
    pending_bytes: usize,
    writer: SyncSender<WMsg>,
    writer_thread: Option<JoinHandle<()>>,
    out: Flushed,
    credit: Arc<Credit>,
    batch_bytes: usize,
}

impl Sink {
    /// Decide one chunk; its credit is given back here unless it goes on to the writer.
    fn add(&mut self, chunk: Bytes, expect: Expect) -> Result<()> {
        let len = chunk.len();
        match self.decide(chunk, expect) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.credit.give(len);
                Ok(())
            }
            Err(e) => {
                self.credit.give(len);
                Err(e)
            }
        }
    }

    /// Whether the chunk was queued for writing.
    fn decide(&mut self, chunk: Bytes, expect: Expect) -> Result<bool> {
        let id = match expect {
            Expect::Cut => ChunkId::of(&chunk),
            Expect::Verified(id) => id,
            Expect::Claimed(claimed) => {
                let id = ChunkId::of(&chunk);
                if id != claimed {
                    return Err(Error::ChunkMismatch {
                        claimed,
                        actual: id,
                    });
                }
                id
            }
        };
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        let len = chunk.len() as u32;
        self.out.entries.push(ManifestEntry { id, len });
        if !self.known.insert(id) {
            return Ok(false);
        }
        // Pin before the lookup: compaction then either sees the pin or has already
        // dropped the entry (and we write the chunk ourselves).
        self.inner.pin(id)?;
        self.out.pinned.push(id);
        if self.inner.index.chunk(&id)?.is_some() {
            return Ok(false);
        }
        self.pending_bytes += chunk.len();
        self.pending.push((id, chunk));
        if self.pending_bytes >= self.batch_bytes {
            self.write_pending()?;
        }
        Ok(true)
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.pending_bytes);
        self.writer.send(WMsg::Batch(batch)).map_err(|_| {
            // The writer is gone: nobody else will give this batch's credit back.
            self.credit.give(bytes);
            Error::Internal("pack writer stopped")
        })
    }

    fn flush(&mut self) -> Result<Flushed> {
        self.write_pending()?;
        let (tx, rx) = sync_channel(1);
        self.writer
            .send(WMsg::Flush(tx))
            .map_err(|_| Error::Internal("pack writer stopped"))?;
        let w = rx
            .recv()
            .map_err(|_| Error::Internal("pack writer stopped"))??;
        self.out.new_locs.extend(w.new_locs);
        self.out.packs.extend(w.packs);
        self.out.new_bytes += w.new_bytes;
        Ok(std::mem::take(&mut self.out))
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut failed: Option<Error> = None;
        for msg in rx {
            match msg {
                Msg::Chunk(c, expect) => {
                    if failed.is_some() {
                        self.credit.give(c.len());
                    } else if let Err(e) = self.add(c, expect) {
                        failed = Some(e);
                    }
                }
                Msg::Flush(reply) => {
                    let r = match failed.take() {
                        Some(e) => Err(e),
                        None => self.flush(),
                    };
                    let _ = reply.send(r);
                }
                Msg::Finish(reply) => {
                    let r = match failed.take() {
                        Some(e) => Err(e),
                        None => self.flush().map(|f| (f, self.hasher.take())),
                    };
                    let _ = reply.send(r);
                    return;
                }
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Pins not handed over by a flush (the writer was abandoned).
        self.inner.unpin_all(&self.out.pinned);
        // Stop the writer stage: replace our sender so the channel closes, then wait.
        let (dead, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.writer, dead));
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

enum WMsg {
    Batch(Vec<(ChunkId, Bytes)>),
    Flush(SyncSender<Result<Written>>),
}

/// What the writer stage appended since the last flush.
#[derive(Default)]
struct Written {
    new_locs: HashMap<ChunkId, (Location, u32)>,
    packs: Vec<u32>,
    new_bytes: u64,
}

/// The writer stage: append batches of new chunks, ask for early writeback now and then.
fn writer_loop(inner: &Inner, credit: &Credit, rx: Receiver<WMsg>) {
    let mut out = Written::default();
    let mut failed: Option<Error> = None;
    let mut unsynced = 0usize;
    for msg in rx {
        match msg {
            WMsg::Batch(batch) => {
                let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
                if failed.is_some() {
                    credit.give(bytes);
                    continue;
                }
                let records: Vec<NewRecord<'_>> = batch
                    .iter()
                    .map(|(id, b)| NewRecord {
                        kind: RecordKind::Chunk,
                        hash: id.0,
                        payload: b,
                    })
                    .collect();
                match inner.packs.append(&records) {
                    Ok(locs) => {
                        for ((id, b), loc) in batch.iter().zip(locs) {
                            out.new_locs.insert(*id, (loc, b.len() as u32));
                            out.new_bytes += b.len() as u64;
                            unsynced += b.len();
                            if out.packs.last() != Some(&loc.pack) {
                                out.packs.push(loc.pack);
                            }
                        }
                    }
                    Err(e) => failed = Some(e),
                }
                drop(batch);
                credit.give(bytes);
                if unsynced >= WRITEBACK_BYTES
                    && let Some(&pack) = out.packs.last()
                {
                    // Start writing back now rather than all at the commit; skip if busy.
                    let _ = inner.syncer.try_send(pack);
                    unsynced = 0;
                }
            }
            WMsg::Flush(reply) => {
                let r = match failed.take() {
                    Some(e) => Err(e),
                    None => Ok(std::mem::take(&mut out)),
                };
                let _ = reply.send(r);
            }
        }
    }
}

/// The two stages, owned by one writer (a file upload or an upload session).
pub(crate) struct Pipeline {
    pub(crate) chunker: Chunker,
    tx: Option<SyncSender<Msg>>,
    worker: Option<JoinHandle<()>>,
    credit: Arc<Credit>,
}

impl Pipeline {
    pub(crate) fn new(
        inner: &Arc<Inner>,
        chunker: Chunker,
        hasher: Option<blake3::Hasher>,
        known: HashSet<ChunkId>,
    ) -> Result<Self> {
        let max_chunk = inner.params.max as usize;
        let batch_bytes = WRITE_BATCH_BYTES;
        // One batch being gathered or written plus one more chunk: never a deadlock (the
        // hasher hands a batch on before the chunker can be short of credit) and the stages
        // still overlap.
        let credit = Arc::new(Credit::new(batch_bytes + max_chunk));
        let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
        let (wtx, wrx) = sync_channel(WRITER_BATCHES);
        let winner = inner.clone();
        let wcredit = credit.clone();
        let writer_thread = std::thread::Builder::new()
            .name("fms-pack-writer".into())
            .spawn(move || writer_loop(&winner, &wcredit, wrx))
            .map_err(|e| Error::io("spawn pack writer", e))?;
        let sink = Sink {
            inner: inner.clone(),
            hasher,
            known,
            pending: Vec::new(),
            pending_bytes: 0,
            writer: wtx,
            writer_thread: Some(writer_thread),
            out: Flushed::default(),
            credit: credit.clone(),
            batch_bytes,
        };
        let worker = std::thread::Builder::new()
            .name("fms-ingest".into())
            .spawn(move || sink.run(rx))
            .map_err(|e| Error::io("spawn ingest worker", e))?;
        Ok(Pipeline {
            chunker,
            tx: Some(tx),
            worker: Some(worker),
            credit,
        })
    }

    fn sender(&self) -> Result<&SyncSender<Msg>> {
        self.tx
            .as_ref()
            .ok_or(Error::Internal("ingest worker already finished"))
    }

    pub(crate) fn write_bytes(&mut self, data: Bytes) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Internal("ingest worker already finished"))?;
        self.chunker
            .push_bytes(data, &mut forward(tx, &self.credit))
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Internal("ingest worker already finished"))?;
        self.chunker.push(data, &mut forward(tx, &self.credit))
    }

    /// Hand on one chunk cut elsewhere (cutting whatever uncut bytes come before it first).
    pub(crate) fn push_chunk(&mut self, chunk: Bytes, expect: Expect) -> Result<()> {
        self.cut_tail()?;
        let tx = self.sender()?;
        let n = chunk.len();
        self.credit.take(n)?;
        tx.send(Msg::Chunk(chunk, expect)).map_err(|_| {
            self.credit.give(n);
            Error::Internal("ingest worker stopped")
        })
    }

    /// Cut the tail too (end of the stream).
    pub(crate) fn cut_tail(&mut self) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Internal("ingest worker already finished"))?;
        self.chunker.finish(&mut forward(tx, &self.credit))
    }

    pub(crate) fn flush(&mut self) -> Result<Flushed> {
        let (rtx, rrx) = sync_channel(1);
        self.sender()?
            .send(Msg::Flush(rtx))
            .map_err(|_| Error::Internal("ingest worker stopped"))?;
        rrx.recv()
            .map_err(|_| Error::Internal("ingest worker stopped"))?
    }

    pub(crate) fn finish(&mut self) -> Result<(Flushed, Option<blake3::Hasher>)> {
        let (rtx, rrx) = sync_channel(1);
        self.sender()?
            .send(Msg::Finish(rtx))
            .map_err(|_| Error::Internal("ingest worker stopped"))?;
        let r = rrx
            .recv()
            .map_err(|_| Error::Internal("ingest worker stopped"))?;
        self.shutdown();
        r
    }

    fn shutdown(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Hand each cut chunk to the hasher stage (blocking while the pipeline is short of credit).
fn forward<'a>(
    tx: &'a SyncSender<Msg>,
    credit: &'a Credit,
) -> impl FnMut(Bytes) -> Result<()> + 'a {
    |c| {
        let n = c.len();
        credit.take(n)?;
        tx.send(Msg::Chunk(c, Expect::Cut)).map_err(|_| {
            credit.give(n);
            Error::Internal("ingest worker stopped")
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Streams one new file into the store. Nothing is visible until [`FileWriter::finish`];
/// dropping the writer abandons the upload (its written chunks become dead bytes for GC).
pub struct FileWriter {
    inner: Arc<Inner>,
    pipeline: Pipeline,
    guard: WriterGuard,
    entries: Vec<ManifestEntry>,
    new_locs: HashMap<ChunkId, (Location, u32)>,
    packs: Vec<u32>,
    new_bytes: u64,
    size: u64,
    scope: Option<Scope>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileWriter {
    /// Feed the next bytes of the file.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        self.pipeline.write(data)
    }

    /// Feed the next bytes of the file, owned: chunks inside `data` are stored without
    /// being copied (the form HTTP bodies and gRPC messages arrive in).
    pub fn write_bytes(&mut self, data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        self.pipeline.write_bytes(data)
    }

    fn absorb(&mut self, f: Flushed) {
        self.guard.pinned.extend(f.pinned);
        self.entries.extend(f.entries);
        self.new_locs.extend(f.new_locs);
        self.packs.extend(f.packs);
        self.new_bytes += f.new_bytes;
    }

    /// Commit the file in `scope` (its owner): see [`Store::scope_holds`].
    pub fn set_scope(&mut self, scope: Option<Scope>) {
        self.scope = scope;
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Make the file durable and visible; returns its id and metadata.
    pub fn finish(mut self) -> Result<FileInfo> {
        self.pipeline.cut_tail()?;
        let (f, hasher) = self.pipeline.finish()?;
        self.absorb(f);
        let hash = hasher
            .map(|h| *h.finalize().as_bytes())
            .ok_or(Error::Internal("file hasher missing"))?;
        let id = FileId::generate();
        let meta = FileMeta {
            size: self.size,
            hash,
            chunks: self.entries.len() as u32,
            created_ms: now_ms(),
        };
        let inner = self.inner.clone();
        let f = NewFile {
            id,
            meta: &meta,
            entries: &self.entries,
            scope: self.scope,
        };
        inner.write_manifest_record(&f, &mut self.packs)?;
        inner.commit_file(&f, &self.new_locs, &[], |_| Ok(()))?;
        Ok(FileInfo {
            id,
            meta,
            new_bytes: self.new_bytes,
        })
    }
}

impl Store {
    /// Start a new file.
    pub fn writer(&self) -> Result<FileWriter> {
        if let Some(why) = self.inner.packs.poisoned() {
            return Err(Error::Poisoned(why));
        }
        let guard = WriterGuard::new(&self.inner)?;
        let pipeline = Pipeline::new(
            &self.inner,
            Chunker::new(self.inner.params),
            Some(blake3::Hasher::new()),
            HashSet::new(),
        )?;
        Ok(FileWriter {
            inner: self.inner.clone(),
            pipeline,
            guard,
            entries: Vec::new(),
            new_locs: HashMap::new(),
            packs: Vec::new(),
            new_bytes: 0,
            size: 0,
            scope: None,
        })
    }

    /// Store everything `reader` yields as one new file.
    pub fn put_reader(&self, mut reader: impl std::io::Read) -> Result<FileInfo> {
        let mut w = self.writer()?;
        while let Some(piece) = read_piece(&mut reader, 1 << 20)? {
            w.write_bytes(piece)?;
        }
        w.finish()
    }

    /// Store `data` as one new file.
    pub fn put(&self, data: &[u8]) -> Result<FileInfo> {
        let mut w = self.writer()?;
        w.write(data)?;
        w.finish()
    }
}

/// Read up to `size` bytes into a fresh buffer (handed on without a copy); `None` at the end.
pub fn read_piece(reader: &mut impl std::io::Read, size: usize) -> Result<Option<Bytes>> {
    let mut buf = bytes::BytesMut::zeroed(size);
    let mut filled = 0;
    while filled < size {
        match reader.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read input", e)),
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    buf.truncate(filled);
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes in flight inside one upload never pass one batch plus one largest chunk,
    /// however the input is cut, and all credit comes back by the commit.
    #[test]
    fn an_upload_holds_at_most_its_credit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .create_if_missing(true)
            .open()
            .unwrap();
        let mut data = vec![0u8; 24 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut w = store.writer().unwrap();
        let credit = w.pipeline.credit.clone();
        for piece in data.chunks(3 << 20) {
            w.write_bytes(Bytes::copy_from_slice(piece)).unwrap();
            assert!(credit.used() <= credit.limit);
        }
        let info = w.finish().unwrap();
        assert_eq!(info.meta.size, data.len() as u64);
        let max = store.chunk_params().max as usize;
        assert_eq!(credit.limit, WRITE_BATCH_BYTES + max);
        assert!(
            credit.peak() <= credit.limit,
            "{} > {}",
            credit.peak(),
            credit.limit
        );
        assert!(credit.peak() > 0);
        assert_eq!(credit.used(), 0, "every byte's credit given back");
        assert_eq!(store.read(info.id).unwrap().meta().size, data.len() as u64);
    }
}

impl Store {
    /// A new file whose content is `parts` one after another, made from their manifests: no
    /// chunk byte is copied or written, only a manifest record (chunks keep the cuts they had
    /// in their parts). The whole-file hash is computed by reading the parts, every chunk
    /// verified. The parts are left as they are; the new file is committed in `scope`.
    pub fn concat(&self, parts: &[FileId], scope: Option<Scope>) -> Result<FileInfo> {
        if let Some(why) = self.inner.packs.poisoned() {
            return Err(Error::Poisoned(why));
        }
        let mut guard = WriterGuard::new(&self.inner)?;
        let mut entries = Vec::new();
        for &part in parts {
            let manifest = self.manifest(part)?;
            for e in &manifest {
                self.inner.pin(e.id)?;
                guard.pinned.push(e.id);
            }
            entries.extend(manifest);
        }
        // Every part still there once its chunks are pinned: their references cannot all go
        // (a delete now leaves pinned chunks to us), so the commit below finds them all.
        let mut size = 0u64;
        let mut hasher = blake3::Hasher::new();
        for &part in parts {
            size += self.stat_file(part)?.size;
            for piece in self.read(part)? {
                hasher.update(&piece?);
            }
        }
        let meta = FileMeta {
            size,
            hash: *hasher.finalize().as_bytes(),
            chunks: entries.len() as u32,
            created_ms: now_ms(),
        };
        let id = FileId::generate();
        let f = NewFile {
            id,
            meta: &meta,
            entries: &entries,
            scope,
        };
        let mut packs = Vec::new();
        self.inner.write_manifest_record(&f, &mut packs)?;
        self.inner
            .commit_file(&f, &HashMap::new(), &[], |_| Ok(()))?;
        drop(guard);
        Ok(FileInfo {
            id,
            meta,
            new_bytes: 0,
        })
    }
}

#[cfg(test)]
mod concat_tests {
    use super::*;

    #[test]
    fn concat_joins_parts_without_writing_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .create_if_missing(true)
            .open()
            .unwrap();
        let mut x = 7u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let a = noise(3 << 20);
        let b = noise(1);
        let c = a.clone(); // a part repeated: shared chunks counted once per manifest
        let parts: Vec<FileId> = [&a, &b, &c]
            .iter()
            .map(|d| store.put(d).unwrap().id)
            .collect();
        let before = store.stats().unwrap();
        let joined = store.concat(&parts, None).unwrap();
        let whole: Vec<u8> = [a.as_slice(), &b, &c].concat();
        assert_eq!(joined.meta.size, whole.len() as u64);
        assert_eq!(joined.meta.hash, *blake3::hash(&whole).as_bytes());
        let after = store.stats().unwrap();
        assert_eq!(
            after.live_chunk_bytes, before.live_chunk_bytes,
            "no chunk written"
        );
        // The parts can go; the joined file stays whole.
        for p in &parts {
            store.delete(*p).unwrap();
        }
        store.gc().unwrap();
        let got: Vec<u8> =
            store
                .read(joined.id)
                .unwrap()
                .map(|r| r.unwrap())
                .fold(Vec::new(), |mut v, b| {
                    v.extend_from_slice(&b);
                    v
                });
        assert!(got == whole);
        assert!(matches!(
            store.concat(&[parts[0]], None),
            Err(Error::NotFound(_))
        ));
        store.delete(joined.id).unwrap();
        store.gc().unwrap();
        assert_eq!(store.stats().unwrap().live_chunk_bytes, 0);
    }
}
