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

    fn submit(&self, job: Job) -> bool {
        self.tx
            .lock()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false)
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

/// A verified stream of a file's bytes (or a range of them), as `Bytes` frames.
pub struct FileReader {
    inner: Arc<Inner>,
    id: FileId,
    meta: FileMeta,
    entries: Arc<Vec<ManifestEntry>>,
    /// Start offset of each chunk in the file.
    starts: Arc<Vec<u64>>,
    end: u64,
    /// Next chunk to request and the offset where output begins inside the first one.
    next: usize,
    skip_first: u64,
    first_pending: bool,
    inflight: VecDeque<(usize, Receiver<Result<Bytes>>)>,
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

    fn request(&mut self) {
        while self.inflight.len() < self.inner.read_ahead
            && self.next < self.entries.len()
            && self.starts.get(self.next).is_some_and(|&s| s < self.end)
        {
            let i = self.next;
            self.next += 1;
            let (tx, rx): (SyncSender<Result<Bytes>>, _) = sync_channel(1);
            let inner = self.inner.clone();
            let entries = self.entries.clone();
            let file = self.id;
            let job: Job = Box::new(move || {
                let r = match entries.get(i) {
                    Some(e) => read_chunk(&inner, file, e.id, e.len),
                    None => Err(Error::Index("chunk index out of range".into())),
                };
                // Release the store before the reader can see the result: once the last
                // reader is done, dropping the Store must really close it.
                drop(inner);
                drop(entries);
                let _ = tx.send(r);
            });
            if !self.inner.readers.submit(job) {
                // No pool (shutting down): read inline.
                let (tx2, rx2) = sync_channel(1);
                let r = match self.entries.get(i) {
                    Some(e) => read_chunk(&self.inner, file, e.id, e.len),
                    None => Err(Error::Index("chunk index out of range".into())),
                };
                let _ = tx2.send(r);
                self.inflight.push_back((i, rx2));
                continue;
            }
            self.inflight.push_back((i, rx));
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
        self.request();
        let (i, rx) = self.inflight.pop_front()?;
        let data = match rx.recv() {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                self.failed = true;
                return Some(Err(e));
            }
            Err(_) => {
                self.failed = true;
                return Some(Err(Error::Index("reader thread stopped".into())));
            }
        };
        let start = self.starts.get(i).copied().unwrap_or(0);
        let from = if self.first_pending {
            self.first_pending = false;
            self.skip_first as usize
        } else {
            0
        };
        let upto = ((self.end - start) as usize).min(data.len());
        self.request();
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
        // The chunk holding `start`: the last one starting at or before it.
        let first = starts.partition_point(|&s| s <= start).saturating_sub(1);
        let skip_first = start - starts.get(first).copied().unwrap_or(0);
        let next = if start == end { entries.len() } else { first };
        Ok(FileReader {
            inner: self.inner.clone(),
            id,
            meta,
            entries: Arc::new(entries),
            starts: Arc::new(starts),
            end,
            next,
            skip_first,
            first_pending: true,
            inflight: VecDeque::new(),
            failed: false,
        })
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
