//! The store: opening, configuration, commits, deletes, listing and stats.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rocksdb::WriteBatch;

use crate::chunker::ChunkParams;
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, FileId, SessionId, now_ms};
use crate::index::{
    self, CF_CHUNKS, CF_FILES, CF_MANIFESTS, ChunkEntry, FileMeta, Index, ManifestEntry,
};
use crate::io::{IoBackend, IoMode, open_backend};
use crate::pack::{
    LocalPacks, Location, NewRecord, PACK_HEADER_LEN, PackStore, RECORD_HEADER_LEN, RecordKind,
};
use crate::read::{LayoutCache, ReadPool};
use crate::scope::Scope;

const STORE_FILE: &str = "STORE";
const STORE_FORMAT: &str = "fms-store 1";

/// Opens or creates a store. Every setting has a documented default.
#[derive(Debug, Clone)]
pub struct StoreBuilder {
    path: PathBuf,
    params: Option<ChunkParams>,
    io_mode: IoMode,
    pack_size: u64,
    session_ttl: Duration,
    gc_dead_ratio: f64,
    read_ahead: usize,
    create: bool,
    io: Option<Arc<dyn IoBackend>>,
}

impl std::fmt::Debug for dyn IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl StoreBuilder {
    /// Use this I/O back end instead of one chosen by [`IoMode`] (fault-injection tests wrap
    /// a real back end this way).
    pub fn io_backend(mut self, io: Arc<dyn IoBackend>) -> Self {
        self.io = Some(io);
        self
    }
    /// Chunking parameters. Default: the stored ones, or 16/64/256 KiB for a new store.
    /// Opening an existing store with other parameters is an error.
    pub fn chunk_params(mut self, p: ChunkParams) -> Self {
        self.params = Some(p);
        self
    }
    /// I/O back end. Default: [`IoMode::Auto`].
    pub fn io_mode(mut self, m: IoMode) -> Self {
        self.io_mode = m;
        self
    }
    /// A pack is sealed once it would grow past this. Default 256 MiB.
    pub fn pack_size(mut self, bytes: u64) -> Self {
        self.pack_size = bytes.max(PACK_HEADER_LEN + RECORD_HEADER_LEN);
        self
    }
    /// How long an idle upload session lives. Default 24 h.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }
    /// GC compacts a sealed pack once this share of it is dead. Default 0.5.
    pub fn gc_dead_ratio(mut self, r: f64) -> Self {
        self.gc_dead_ratio = r.clamp(0.0, 1.0);
        self
    }
    /// Read-ahead per reader, in groups of about 512 KiB of chunks. Default 4.
    pub fn read_ahead(mut self, n: usize) -> Self {
        self.read_ahead = n.clamp(1, 64);
        self
    }
    /// Create the store if the directory holds none. Default true.
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    /// Open the store (recovering from a crash if needed).
    pub fn open(self) -> Result<Store> {
        let params = load_or_create_params(&self.path, self.params, self.create)?;
        let io = match self.io {
            Some(io) => io,
            None => open_backend(self.io_mode).ctx(|| "open I/O back end".to_string())?,
        };
        let index = Index::open(&self.path.join("index"))?;
        let packs: Arc<dyn PackStore> = Arc::new(LocalPacks::open(
            &self.path.join("packs"),
            io,
            self.pack_size,
        )?);
        tracing::info!(path = %self.path.display(), io = packs.io_name(), %params, "store open");
        let inner = Arc::new(Inner {
            path: self.path,
            params,
            index,
            syncer: start_syncer(packs.clone()),
            packs,
            commit: Mutex::new(()),
            pins: Mutex::new(HashMap::new()),
            writers: Mutex::new((0, std::collections::BTreeMap::new())),
            gc_lock: Mutex::new(()),
            live_sessions: Mutex::new(HashMap::new()),
            session_ttl: self.session_ttl,
            gc_dead_ratio: self.gc_dead_ratio,
            read_ahead: self.read_ahead,
            readers: ReadPool::new(self.read_ahead.max(2)),
            layouts: LayoutCache::new(64),
        });
        Ok(Store { inner })
    }
}

fn start_syncer(packs: Arc<dyn PackStore>) -> std::sync::mpsc::SyncSender<u32> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<u32>(4);
    let spawned = std::thread::Builder::new()
        .name("fms-writeback".into())
        .spawn(move || {
            // Ends when the store (the only sender) is dropped.
            while let Ok(pack) = rx.recv() {
                // A failure poisons the pack store; the writer's own sync reports it.
                let _ = packs.sync(pack);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no background writeback thread; syncs happen at commit only");
    }
    tx
}

fn load_or_create_params(
    path: &Path,
    wanted: Option<ChunkParams>,
    create: bool,
) -> Result<ChunkParams> {
    let file = path.join(STORE_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let stored = parse_store_file(&text).ok_or_else(|| Error::BadStore {
                path: path.to_path_buf(),
                reason: format!("cannot parse {}", file.display()),
            })?;
            if let Some(w) = wanted.filter(|w| *w != stored) {
                return Err(Error::ParamsMismatch {
                    path: path.to_path_buf(),
                    stored: stored.to_string(),
                    requested: w.to_string(),
                });
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Err(Error::BadStore {
                    path: path.to_path_buf(),
                    reason: "no STORE file".into(),
                });
            }
            if path.join("index").exists() || path.join("packs").exists() {
                return Err(Error::BadStore {
                    path: path.to_path_buf(),
                    reason: "STORE file missing but index or packs present".into(),
                });
            }
            let p = wanted.unwrap_or_default();
            p.validate()?;
            std::fs::create_dir_all(path).ctx(|| format!("create {}", path.display()))?;
            let text = format!(
                "{STORE_FORMAT}\nchunking fastcdc2020 {} {} {}\n",
                p.min, p.avg, p.max
            );
            durable::write_file_atomic(&file, text.as_bytes())?;
            Ok(p)
        }
        Err(e) => Err(Error::io(format!("read {}", file.display()), e)),
    }
}

fn parse_store_file(text: &str) -> Option<ChunkParams> {
    let mut lines = text.lines();
    if lines.next()? != STORE_FORMAT {
        return None;
    }
    let mut f = lines
        .next()?
        .strip_prefix("chunking fastcdc2020 ")?
        .split(' ');
    let p = ChunkParams {
        min: f.next()?.parse().ok()?,
        avg: f.next()?.parse().ok()?,
        max: f.next()?.parse().ok()?,
    };
    p.validate().ok()?;
    Some(p)
}

/// In-memory state of an open upload session between appends.
#[derive(Default)]
pub(crate) struct LiveSession {
    pub(crate) busy: bool,
    /// Hash of the first `.0` bytes, valid while the process lives.
    pub(crate) hasher: Option<(u64, blake3::Hasher)>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) params: ChunkParams,
    pub(crate) index: Index,
    pub(crate) packs: Arc<dyn PackStore>,
    /// Background writeback: pack ids to fdatasync early, so the sync before a commit finds
    /// little left to write (durability still comes from that commit-time sync).
    pub(crate) syncer: std::sync::mpsc::SyncSender<u32>,
    /// Serializes every refcount read-modify-write and index commit.
    pub(crate) commit: Mutex<()>,
    /// Chunks an in-flight writer found in the index and will reference at its commit;
    /// compaction keeps them (see docs/design/gc.md).
    pub(crate) pins: Mutex<HashMap<ChunkId, u32>>,
    /// In-flight writers: token -> the active pack when they started. Their uncommitted
    /// records live in packs >= that one, which compaction therefore leaves alone.
    pub(crate) writers: Mutex<(u64, std::collections::BTreeMap<u64, u32>)>,
    /// One GC pass at a time.
    pub(crate) gc_lock: Mutex<()>,
    pub(crate) live_sessions: Mutex<HashMap<SessionId, LiveSession>>,
    pub(crate) session_ttl: Duration,
    pub(crate) gc_dead_ratio: f64,
    pub(crate) read_ahead: usize,
    pub(crate) readers: ReadPool,
    pub(crate) layouts: LayoutCache,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Internal("an engine lock was poisoned by a panic"))
}

/// A content-addressed, deduplicating, crash-safe chunk store. Cheap to clone; all clones
/// share one open store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What a committed file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub id: FileId,
    pub meta: FileMeta,
    /// Bytes of chunk payload this commit added to the store (0 for fully duplicate data).
    pub new_bytes: u64,
}

/// Store-wide numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub files: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Bytes of pack files on disk.
    pub stored_bytes: u64,
    /// Chunk entries in the index (live and dead).
    pub chunks: u64,
    /// Chunks named by at least one file or session.
    pub live_chunks: u64,
    /// Payload bytes of live chunks.
    pub live_chunk_bytes: u64,
    pub packs: u64,
    /// Pack bytes not holding a live chunk or a live manifest (reclaimable by GC).
    pub dead_bytes: u64,
    /// logical_bytes / live_chunk_bytes.
    pub dedup_ratio: f64,
    pub open_sessions: u64,
    /// `io_uring` or `std`.
    pub io_backend: String,
}

impl Store {
    /// Start configuring a store at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> StoreBuilder {
        StoreBuilder {
            path: path.into(),
            params: None,
            io_mode: IoMode::Auto,
            pack_size: 256 << 20,
            session_ttl: Duration::from_secs(24 * 3600),
            gc_dead_ratio: 0.5,
            read_ahead: 4,
            create: true,
            io: None,
        }
    }

    /// Open with defaults.
    pub fn open(path: impl Into<PathBuf>) -> Result<Store> {
        Store::builder(path).open()
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The chunking parameters recorded in the store.
    pub fn chunk_params(&self) -> ChunkParams {
        self.inner.params
    }

    /// The I/O back end in use (`io_uring` or `std`).
    pub fn io_backend(&self) -> &'static str {
        self.inner.packs.io_name()
    }

    /// Metadata of a committed file.
    pub fn stat_file(&self, id: FileId) -> Result<FileMeta> {
        self.inner.index.file_meta(&id)?.ok_or(Error::NotFound(id))
    }

    /// The chunk list of a committed file.
    pub fn manifest(&self, id: FileId) -> Result<Vec<ManifestEntry>> {
        self.inner.index.manifest(&id)?.ok_or(Error::NotFound(id))
    }

    /// Every committed file, in id order.
    pub fn list(&self) -> Result<Vec<(FileId, FileMeta)>> {
        let mut out = Vec::new();
        self.inner.index.scan(CF_FILES, |k, v| {
            let id = FileId(k.try_into().map_err(|_| bad_key("file", k))?);
            let meta = FileMeta::decode(v).ok_or_else(|| bad_key("file", k))?;
            out.push((id, meta));
            Ok(())
        })?;
        Ok(out)
    }

    /// A chunk's index entry (for tests and tools).
    pub fn chunk_entry(&self, id: &ChunkId) -> Result<Option<ChunkEntry>> {
        self.inner.index.chunk(id)
    }

    /// Delete a file. Its chunks lose a reference; GC reclaims chunks nobody names.
    pub fn delete(&self, id: FileId) -> Result<()> {
        let inner = &self.inner;
        let _g = lock(&inner.commit)?;
        let manifest = inner.index.manifest(&id)?.ok_or(Error::NotFound(id))?;
        // The tombstone is durable before the index forgets the file, so a reindex from the
        // packs never brings a deleted file back.
        let payload = index::encode_tombstone(id, now_ms());
        let loc = inner.packs.append(&[NewRecord {
            kind: RecordKind::Tombstone,
            hash: *blake3::hash(&payload).as_bytes(),
            payload: &payload,
        }])?;
        for l in &loc {
            inner.packs.sync(l.pack)?;
        }
        let mut wb = WriteBatch::default();
        wb.delete_cf(inner.index.cf(CF_FILES)?, id.0);
        wb.delete_cf(inner.index.cf(CF_MANIFESTS)?, id.0);
        let chunks = distinct(&manifest);
        let deltas = chunks.iter().map(|&c| (c, -1)).collect();
        inner.apply_refs(&mut wb, &deltas, &HashMap::new())?;
        if let Some(scope) = inner.index.file_scope(&id)? {
            inner.apply_scope(&mut wb, id, scope, &chunks, -1)?;
        }
        inner.index.write_sync(wb)?;
        inner.layouts.forget(&id);
        Ok(())
    }

    /// Store-wide numbers (a scan of the index; cheap enough for `fms stat` and metrics).
    pub fn stats(&self) -> Result<Stats> {
        let inner = &self.inner;
        let mut s = Stats {
            io_backend: self.io_backend().to_string(),
            ..Stats::default()
        };
        let mut manifest_record_bytes = 0u64;
        inner.index.scan(CF_FILES, |k, v| {
            let m = FileMeta::decode(v).ok_or_else(|| bad_key("file", k))?;
            s.files += 1;
            s.logical_bytes += m.size;
            manifest_record_bytes +=
                RECORD_HEADER_LEN + 16 + index::FILE_META_LEN as u64 + 4 + 36 * m.chunks as u64;
            Ok(())
        })?;
        let mut live_record_bytes = 0u64;
        inner.index.scan(CF_CHUNKS, |k, v| {
            let e = ChunkEntry::decode(v).ok_or_else(|| bad_key("chunk", k))?;
            s.chunks += 1;
            if e.refs > 0 {
                s.live_chunks += 1;
                s.live_chunk_bytes += e.len as u64;
                live_record_bytes += RECORD_HEADER_LEN + e.len as u64;
            }
            Ok(())
        })?;
        for (_, len) in inner.packs.list()? {
            s.packs += 1;
            s.stored_bytes += len;
        }
        s.dead_bytes = s
            .stored_bytes
            .saturating_sub(s.packs * PACK_HEADER_LEN + live_record_bytes + manifest_record_bytes);
        s.dedup_ratio = if s.live_chunk_bytes == 0 {
            1.0
        } else {
            s.logical_bytes as f64 / s.live_chunk_bytes as f64
        };
        s.open_sessions = self.session_ids()?.len() as u64;
        Ok(s)
    }
}

pub(crate) fn bad_key(what: &str, k: &[u8]) -> Error {
    Error::CorruptIndex {
        key: format!("{what} {}", hex::encode(k)),
        reason: "cannot decode".into(),
    }
}

/// The distinct chunk ids of a chunk list: refcounts count manifests, not occurrences.
pub(crate) fn distinct(entries: &[ManifestEntry]) -> Vec<ChunkId> {
    let mut ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Inner {
    /// Add `deltas` to chunk refcounts inside `wb`. A chunk with a positive delta that the
    /// index lacks must be in `new_locs` (written by this commit). Call with `commit` held.
    pub(crate) fn apply_refs(
        &self,
        wb: &mut WriteBatch,
        deltas: &HashMap<ChunkId, i64>,
        new_locs: &HashMap<ChunkId, (Location, u32)>,
    ) -> Result<()> {
        let cf = self.index.cf(CF_CHUNKS)?;
        for (id, &delta) in deltas {
            if delta == 0 {
                continue;
            }
            let entry = match self.index.chunk(id)? {
                Some(mut e) => {
                    let refs = (e.refs as i64 + delta).max(0);
                    if e.refs as i64 + delta < 0 {
                        tracing::error!(chunk = %id, refs = e.refs, delta, "refcount would go negative");
                    }
                    e.refs = refs.min(u32::MAX as i64) as u32;
                    e
                }
                None => match new_locs.get(id) {
                    Some(&(loc, len)) if delta > 0 => ChunkEntry {
                        loc,
                        len,
                        refs: delta.min(u32::MAX as i64) as u32,
                    },
                    _ => {
                        return Err(Error::Index(format!(
                            "chunk {id} vanished from the index while referenced"
                        )));
                    }
                },
            };
            wb.put_cf(cf, id.0, entry.encode());
        }
        Ok(())
    }

    /// Append a manifest record and make it and everything in `packs` durable.
    pub(crate) fn write_manifest_record(
        &self,
        f: &NewFile<'_>,
        packs: &mut Vec<u32>,
    ) -> Result<()> {
        let payload = index::encode_manifest_record(f.id, f.meta, f.entries, f.scope);
        let locs = self.packs.append(&[NewRecord {
            kind: RecordKind::Manifest,
            hash: *blake3::hash(&payload).as_bytes(),
            payload: &payload,
        }])?;
        packs.extend(locs.iter().map(|l| l.pack));
        self.sync_packs(packs)
    }

    pub(crate) fn sync_packs(&self, packs: &mut Vec<u32>) -> Result<()> {
        packs.sort_unstable();
        packs.dedup();
        for &p in packs.iter() {
            self.packs.sync(p)?;
        }
        Ok(())
    }

    /// Commit a new file: metadata, manifest and refcounts in one synced batch.
    /// `carried` are chunks whose references the caller already holds (a session's).
    pub(crate) fn commit_file(
        &self,
        f: &NewFile<'_>,
        new_locs: &HashMap<ChunkId, (Location, u32)>,
        carried: &[ChunkId],
        extra: impl FnOnce(&mut WriteBatch) -> Result<()>,
    ) -> Result<()> {
        let NewFile {
            id,
            meta,
            entries,
            scope,
        } = *f;
        let mut wb = WriteBatch::default();
        let mut v = Vec::with_capacity(index::FILE_META_LEN);
        meta.encode(&mut v);
        wb.put_cf(self.index.cf(CF_FILES)?, id.0, &v);
        let mut m = Vec::with_capacity(4 + entries.len() * 36);
        index::encode_entries(entries, &mut m);
        wb.put_cf(self.index.cf(CF_MANIFESTS)?, id.0, &m);
        let chunks = distinct(entries);
        let mut deltas: HashMap<ChunkId, i64> = chunks.iter().map(|&c| (c, 1)).collect();
        for c in carried {
            if let Some(d) = deltas.get_mut(c) {
                *d -= 1;
            }
        }
        extra(&mut wb)?;
        let _g = lock(&self.commit)?;
        self.apply_refs(&mut wb, &deltas, new_locs)?;
        if let Some(scope) = scope {
            self.apply_scope(&mut wb, id, scope, &chunks, 1)?;
        }
        self.index.write_sync(wb)
    }

    pub(crate) fn pin(&self, id: ChunkId) -> Result<()> {
        *lock(&self.pins)?.entry(id).or_insert(0) += 1;
        Ok(())
    }

    /// The lowest pack an in-flight writer may have uncommitted records in.
    pub(crate) fn writer_floor(&self) -> Result<u32> {
        Ok(lock(&self.writers)?
            .1
            .values()
            .copied()
            .min()
            .unwrap_or(u32::MAX))
    }

    pub(crate) fn unpin_all(&self, ids: &[ChunkId]) {
        if let Ok(mut pins) = self.pins.lock() {
            for id in ids {
                if let Some(n) = pins.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        pins.remove(id);
                    }
                }
            }
        }
    }
}

/// A file about to be committed.
#[derive(Clone, Copy)]
pub(crate) struct NewFile<'a> {
    pub(crate) id: FileId,
    pub(crate) meta: &'a FileMeta,
    pub(crate) entries: &'a [ManifestEntry],
    /// The owner scope it is committed in, if any.
    pub(crate) scope: Option<Scope>,
}

/// Registration of one in-flight writer (a file upload, a session append): keeps compaction
/// away from the packs holding its uncommitted records and holds its chunk pins until its
/// commit is done. Dropping it ends both.
pub(crate) struct WriterGuard {
    inner: Arc<Inner>,
    token: u64,
    pub(crate) pinned: Vec<ChunkId>,
}

impl WriterGuard {
    pub(crate) fn new(inner: &Arc<Inner>) -> Result<Self> {
        let mut w = lock(&inner.writers)?;
        w.0 += 1;
        let token = w.0;
        // Read under the registry lock: a pack compaction may pick is already sealed, so it
        // is older than this one unless this writer was registered before compaction looked.
        w.1.insert(token, inner.packs.active());
        Ok(WriterGuard {
            inner: inner.clone(),
            token,
            pinned: Vec::new(),
        })
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.inner.unpin_all(&self.pinned);
        if let Ok(mut w) = self.inner.writers.lock() {
            w.1.remove(&self.token);
        }
    }
}
