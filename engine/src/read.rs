//! The read path: a manifest located by binary search, chunk reads kept in flight on a small
//! pool of reader threads, every chunk verified against its BLAKE3 before it is returned.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{FileMeta, ManifestEntry};
use crate::pack::{RECORD_HEADER_LEN, RecordHeader, RecordKind};
use crate::store::{Inner, Store};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run chunk reads (disk read + BLAKE3 verify) ahead of the consumer.
pub(crate) struct ReadPool {
    tx: Mutex<Sender<Job>>,
}

impl ReadPool {
    pub(crate) fn new(threads: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fms-read-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // store dropped
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a reader thread");
            }
        }
        ReadPool { tx: Mutex::new(tx) }
    }

    /// Queue a job; hands it back if the pool is gone.
    fn submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.lock() {
            Ok(tx) => tx.send(job).map_err(|e| e.0),
            Err(_) => Err(job),
        }
    }
}

type LayoutMap = std::collections::HashMap<FileId, (u64, Arc<Layout>)>;

/// A small LRU of decoded manifests (random range reads of a large file would otherwise
/// decode its whole manifest each time).
pub(crate) struct LayoutCache {
    /// (use counter, id -> (last use, layout)).
    map: Mutex<(u64, LayoutMap)>,
    cap: usize,
}

impl LayoutCache {
    pub(crate) fn new(cap: usize) -> Self {
        LayoutCache {
            map: Mutex::new((0, std::collections::HashMap::new())),
            cap,
        }
    }

    fn get(&self, id: &FileId) -> Option<Arc<Layout>> {
        let mut m = self.map.lock().ok()?;
        m.0 += 1;
        let tick = m.0;
        let slot = m.1.get_mut(id)?;
        slot.0 = tick;
        Some(slot.1.clone())
    }

    fn put(&self, id: FileId, layout: Arc<Layout>) {
        let Ok(mut m) = self.map.lock() else { return };
        m.0 += 1;
        let tick = m.0;
        if m.1.len() >= self.cap
            && let Some(oldest) = m.1.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k)
        {
            m.1.remove(&oldest);
        }
        m.1.insert(id, (tick, layout));
    }

    pub(crate) fn forget(&self, id: &FileId) {
        if let Ok(mut m) = self.map.lock() {
            m.1.remove(id);
        }
    }
}

/// Read one chunk of `file` and verify it. Retries the lookup once if compaction moved the
/// chunk between our lookup and our read.
pub(crate) fn read_chunk(inner: &Inner, file: FileId, id: ChunkId, len: u32) -> Result<Bytes> {
    for _ in 0..3 {
        let Some(entry) = inner.index.chunk(&id)? else {
            return Err(missing(inner, file, id));
        };
        let corrupt = |reason: String| Error::Corrupt {
            file,
            chunk: id,
            pack: entry.loc.pack,
            offset: entry.loc.offset,
            reason,
        };
        if entry.len != len {
            return Err(corrupt(format!(
                "index says {} bytes, manifest {len}",
                entry.len
            )));
        }
        let mut buf = vec![0u8; RECORD_HEADER_LEN as usize + len as usize];
        match inner.packs.read(entry.loc.pack, entry.loc.offset, &mut buf) {
            Ok(true) => {}
            Ok(false) => continue, // pack compacted away: look the chunk up again
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(corrupt("record runs past the end of its pack".into()));
            }
            Err(e) => return Err(e),
        }
        let mut hb = [0u8; 48];
        hb.copy_from_slice(buf.get(..48).ok_or_else(|| corrupt("short read".into()))?);
        let header = RecordHeader::decode(&hb).map_err(|why| corrupt(why.to_string()))?;
        if header.kind != RecordKind::Chunk || header.hash != id.0 || header.len != len {
            return Err(corrupt("record header does not describe this chunk".into()));
        }
        let data = Bytes::from(buf).slice(RECORD_HEADER_LEN as usize..);
        if ChunkId::of(&data) != id {
            return Err(corrupt("content does not match its BLAKE3".into()));
        }
        return Ok(data);
    }
    Err(missing(inner, file, id))
}

/// A chunk is gone: either its file was deleted while we read it (and GC took the chunk),
/// or the store lost it.
fn missing(inner: &Inner, file: FileId, chunk: ChunkId) -> Error {
    match inner.index.file_meta(&file) {
        Ok(None) => Error::NotFound(file),
        _ => Error::MissingChunk { file, chunk },
    }
}

/// Read a run of consecutive manifest entries: chunks that sit back to back in one pack are
/// fetched with a single read, then each is verified on its own. Anything unusual (a pack
/// compacted away meanwhile, a missing entry) falls back to [`read_chunk`] per chunk.
fn read_group(inner: &Inner, file: FileId, entries: &[ManifestEntry]) -> Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(entries.len());
    let mut located = Vec::with_capacity(entries.len());
    for e in entries {
        match inner.index.chunk(&e.id)? {
            Some(c) if c.len == e.len => located.push((*e, c.loc)),
            _ => {
                return entries
                    .iter()
                    .map(|e| read_chunk(inner, file, e.id, e.len))
                    .collect();
            }
        }
    }
    let mut i = 0;
    while i < located.len() {
        // Extend the run while the next record starts where this one ends.
        let mut j = i + 1;
        let (first, loc) = located
            .get(i)
            .copied()
            .ok_or(Error::Internal("group index"))?;
        let mut end = loc.offset + RECORD_HEADER_LEN + first.len as u64;
        while let Some((e, l)) = located.get(j) {
            if l.pack != loc.pack || l.offset != end || end - loc.offset > 4 << 20 {
                break;
            }
            end += RECORD_HEADER_LEN + e.len as u64;
            j += 1;
        }
        let mut buf = vec![0u8; (end - loc.offset) as usize];
        let whole = match inner.packs.read(loc.pack, loc.offset, &mut buf) {
            Ok(true) => Bytes::from(buf),
            // Moved by compaction, or a short pack: the careful path sorts it out.
            Ok(false) | Err(Error::Io { .. }) => {
                for (e, _) in located.get(i..j).unwrap_or_default() {
                    out.push(read_chunk(inner, file, e.id, e.len)?);
                }
                i = j;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut at = 0usize;
        for (e, l) in located.get(i..j).unwrap_or_default() {
            let len = RECORD_HEADER_LEN as usize + e.len as usize;
            let record = whole.slice(at..at + len);
            at += len;
            out.push(verify_record(file, e.id, e.len, l.pack, l.offset, record)?);
        }
        i = j;
    }
    Ok(out)
}

/// Check one record (header + payload) against the chunk it should hold; return the payload.
fn verify_record(
    file: FileId,
    id: ChunkId,
    len: u32,
    pack: u32,
    offset: u64,
    record: Bytes,
) -> Result<Bytes> {
    let corrupt = |reason: &str| Error::Corrupt {
        file,
        chunk: id,
        pack,
        offset,
        reason: reason.to_string(),
    };
    let mut hb = [0u8; 48];
    hb.copy_from_slice(record.get(..48).ok_or_else(|| corrupt("short read"))?);
    let header = RecordHeader::decode(&hb).map_err(corrupt)?;
    if header.kind != RecordKind::Chunk || header.hash != id.0 || header.len != len {
        return Err(corrupt("record header does not describe this chunk"));
    }
    let data = record.slice(RECORD_HEADER_LEN as usize..);
    if ChunkId::of(&data) != id {
        return Err(corrupt("content does not match its BLAKE3"));
    }
    Ok(data)
}

/// A decoded manifest with each chunk's start offset, shared by readers of the same file.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) entries: Vec<ManifestEntry>,
    pub(crate) starts: Vec<u64>,
}

/// Bytes of chunks one read-ahead job fetches.
const GROUP_BYTES: u64 = 512 << 10;

type GroupResult = Result<Vec<Bytes>>;

/// A verified stream of a file's bytes (or a range of them), as `Bytes` frames.
pub struct FileReader {
    inner: Arc<Inner>,
    id: FileId,
    meta: FileMeta,
    layout: Arc<Layout>,
    end: u64,
    /// Next chunk to request.
    next: usize,
    /// Where output begins inside the first chunk.
    skip_first: u64,
    first_pending: bool,
    inflight: VecDeque<(usize, Receiver<GroupResult>)>,
    /// Chunks of the group being handed out: (chunk index, bytes).
    ready: VecDeque<(usize, Bytes)>,
    failed: bool,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    /// The file's metadata.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    fn wanted(&self, i: usize) -> bool {
        self.layout.starts.get(i).is_some_and(|&s| s < self.end)
    }

    /// Keep up to `read_ahead` groups of chunks in flight.
    fn request(&mut self) {
        while self.inflight.len() < self.inner.read_ahead && self.wanted(self.next) {
            let first = self.next;
            let mut bytes = 0u64;
            while self.wanted(self.next) && (self.next == first || bytes < GROUP_BYTES) {
                bytes += self
                    .layout
                    .entries
                    .get(self.next)
                    .map_or(0, |e| e.len as u64);
                self.next += 1;
            }
            let range = first..self.next;
            let (tx, rx): (SyncSender<GroupResult>, _) = sync_channel(1);
            let inner = self.inner.clone();
            let layout = self.layout.clone();
            let file = self.id;
            let job: Job = Box::new(move || {
                let r = read_group(&inner, file, layout.entries.get(range).unwrap_or_default());
                // Release the store before the reader can see the result: once the last
                // reader is done, dropping the Store must really close it.
                drop(inner);
                drop(layout);
                let _ = tx.send(r);
            });
            if let Err(job) = self.inner.readers.submit(job) {
                job(); // no pool (shutting down): read inline
            }
            self.inflight.push_back((first, rx));
        }
    }
}

impl Drop for FileReader {
    /// Wait for reads still in flight: they hold the store open, and a process must not
    /// exit (or reopen the store) while a pool thread is still inside it.
    fn drop(&mut self) {
        for (_, rx) in self.inflight.drain(..) {
            let _ = rx.recv();
        }
    }
}

impl Iterator for FileReader {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Result<Bytes>> {
        if self.failed {
            return None;
        }
        if self.ready.is_empty() {
            self.request();
            let (first, rx) = self.inflight.pop_front()?;
            match rx.recv() {
                Ok(Ok(chunks)) => self
                    .ready
                    .extend(chunks.into_iter().enumerate().map(|(k, b)| (first + k, b))),
                Ok(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.failed = true;
                    return Some(Err(Error::Internal("reader thread stopped")));
                }
            }
            self.request();
        }
        let (i, data) = self.ready.pop_front()?;
        let start = self.layout.starts.get(i).copied().unwrap_or(0);
        let from = if self.first_pending {
            self.first_pending = false;
            self.skip_first as usize
        } else {
            0
        };
        let upto = ((self.end - start) as usize).min(data.len());
        Some(Ok(data.slice(from.min(upto)..upto)))
    }
}

impl Store {
    /// Read a whole file.
    pub fn read(&self, id: FileId) -> Result<FileReader> {
        let meta = self.stat_file(id)?;
        self.read_range(id, 0, meta.size)
    }

    /// Read bytes `start..end` (end exclusive) of a file.
    pub fn read_range(&self, id: FileId, start: u64, end: u64) -> Result<FileReader> {
        let meta = self.stat_file(id)?;
        if start > end || end > meta.size {
            return Err(Error::InvalidRange {
                start,
                end,
                size: meta.size,
            });
        }
        let layout = self.layout(id, &meta)?;
        // The chunk holding `start`: the last one starting at or before it.
        let first = layout
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let skip_first = start - layout.starts.get(first).copied().unwrap_or(0);
        let next = if start == end {
            layout.entries.len()
        } else {
            first
        };
        Ok(FileReader {
            inner: self.inner.clone(),
            id,
            meta,
            layout,
            end,
            next,
            skip_first,
            first_pending: true,
            inflight: VecDeque::new(),
            ready: VecDeque::new(),
            failed: false,
        })
    }

    /// The decoded manifest of a file, from a small cache (files never change once committed).
    fn layout(&self, id: FileId, meta: &FileMeta) -> Result<Arc<Layout>> {
        if let Some(l) = self.inner.layouts.get(&id) {
            return Ok(l);
        }
        let entries = self.manifest(id)?;
        let mut starts = Vec::with_capacity(entries.len());
        let mut at = 0u64;
        for e in &entries {
            starts.push(at);
            at += e.len as u64;
        }
        if at != meta.size {
            return Err(Error::CorruptIndex {
                key: format!("manifest {id}"),
                reason: format!("chunks add up to {at} bytes, file has {}", meta.size),
            });
        }
        let layout = Arc::new(Layout { entries, starts });
        self.inner.layouts.put(id, layout.clone());
        Ok(layout)
    }

    /// Copy a file (or a range) into `out`, returning the bytes written.
    pub fn read_to(
        &self,
        id: FileId,
        start: u64,
        end: u64,
        out: &mut impl std::io::Write,
    ) -> Result<u64> {
        let mut n = 0;
        for piece in self.read_range(id, start, end)? {
            let piece = piece?;
            out.write_all(&piece)
                .map_err(|e| Error::io("write output", e))?;
            n += piece.len() as u64;
        }
        Ok(n)
    }
}
