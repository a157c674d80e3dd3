//! The RocksDB index: chunk locations and refcounts, file metadata and manifests, open upload
//! sessions. Values have fixed little-endian encodings (documented in
//! `docs/design/on-disk-format.md`); every decode is checked and a bad value is an error
//! naming its key, never a panic.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};
use crate::id::{ChunkId, ContentHash, FileId, SessionId};
use crate::pack::Location;
use crate::scope::Scope;

pub(crate) const CF_CHUNKS: &str = "chunks";
pub(crate) const CF_FILES: &str = "files";
pub(crate) const CF_MANIFESTS: &str = "manifests";
pub(crate) const CF_SESSIONS: &str = "sessions";
/// File id -> the scope it was committed in.
pub(crate) const CF_FILE_SCOPES: &str = "file_scopes";
/// Scope ++ chunk id -> how many of the scope's files name the chunk.
pub(crate) const CF_SCOPE_CHUNKS: &str = "scope_chunks";

/// Where a chunk lives and how many manifests (and open sessions) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    pub loc: Location,
    pub len: u32,
    pub refs: u32,
}

impl ChunkEntry {
    pub(crate) fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&self.loc.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.loc.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let e = ChunkEntry {
            loc: Location {
                pack: r.u32()?,
                offset: r.u64()?,
            },
            len: r.u32()?,
            refs: r.u32()?,
        };
        r.end()?;
        Some(e)
    }
}

/// What the store knows of a committed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the whole content.
    pub hash: ContentHash,
    /// Number of chunks in the manifest.
    pub chunks: u32,
    /// Commit time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

pub(crate) const FILE_META_LEN: usize = 52;

impl FileMeta {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.chunks.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(FileMeta {
            size: r.u64()?,
            hash: r.array()?,
            chunks: r.u32()?,
            created_ms: r.u64()?,
        })
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let m = FileMeta::read(&mut r)?;
        r.end()?;
        Some(m)
    }
}

/// One chunk of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    pub id: ChunkId,
    pub len: u32,
}

pub(crate) fn encode_entries(entries: &[ManifestEntry], out: &mut Vec<u8>) {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.len.to_le_bytes());
    }
}

fn read_entries(r: &mut Reader<'_>) -> Option<Vec<ManifestEntry>> {
    let n = r.u32()? as usize;
    if n > r.0.len() / 36 {
        return None;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(ManifestEntry {
            id: ChunkId(r.array()?),
            len: r.u32()?,
        });
    }
    Some(v)
}

pub(crate) fn decode_entries(b: &[u8]) -> Option<Vec<ManifestEntry>> {
    let mut r = Reader(b);
    let v = read_entries(&mut r)?;
    r.end()?;
    Some(v)
}

/// The payload of a manifest record in a pack: id, metadata, chunk list, then the scope if
/// the file has one (records written before scopes existed simply end after the list).
pub(crate) fn encode_manifest_record(
    id: FileId,
    meta: &FileMeta,
    entries: &[ManifestEntry],
    scope: Option<Scope>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + FILE_META_LEN + 4 + entries.len() * 36 + 16);
    out.extend_from_slice(&id.0);
    meta.encode(&mut out);
    encode_entries(entries, &mut out);
    if let Some(s) = scope {
        out.extend_from_slice(&s.0);
    }
    out
}

/// A manifest record's content.
pub(crate) type ManifestRecord = (FileId, FileMeta, Vec<ManifestEntry>, Option<Scope>);

pub(crate) fn decode_manifest_record(b: &[u8]) -> Option<ManifestRecord> {
    let mut r = Reader(b);
    let id = FileId(r.array()?);
    let meta = FileMeta::read(&mut r)?;
    let entries = read_entries(&mut r)?;
    let scope = if r.0.is_empty() {
        None
    } else {
        Some(Scope(r.array()?))
    };
    r.end()?;
    Some((id, meta, entries, scope))
}

pub(crate) fn encode_tombstone(id: FileId, time_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&time_ms.to_le_bytes());
    out
}

pub(crate) fn decode_tombstone(b: &[u8]) -> Option<FileId> {
    let mut r = Reader(b);
    let id = FileId(r.array()?);
    r.u64()?;
    r.end()?;
    Some(id)
}

/// An open upload session as persisted (its chunk list is stored in segments beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader {
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Bytes acknowledged: chunk bytes plus the tail.
    pub offset: u64,
    pub chunks: u32,
    pub segments: u32,
    pub tail: Vec<u8>,
}

impl SessionHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + self.tail.len());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.chunks.to_le_bytes());
        out.extend_from_slice(&self.segments.to_le_bytes());
        out.extend_from_slice(&(self.tail.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.tail);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let created_ms = r.u64()?;
        let expires_ms = r.u64()?;
        let offset = r.u64()?;
        let chunks = r.u32()?;
        let segments = r.u32()?;
        let tail_len = r.u32()? as usize;
        let tail = r.take(tail_len)?.to_vec();
        r.end()?;
        Some(SessionHeader {
            created_ms,
            expires_ms,
            offset,
            chunks,
            segments,
            tail,
        })
    }
}

/// Marks a session whose held chunks are listed as member keys (sessions created before
/// member keys existed have none and are handled from their segments).
pub(crate) fn session_marker_key(id: SessionId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(&id.0);
    k[16] = 0xFE;
    k
}

/// "The session holds a reference to this chunk" (one key per distinct chunk).
pub(crate) fn session_member_key(id: SessionId, chunk: &ChunkId) -> [u8; 49] {
    let mut k = [0u8; 49];
    k[..16].copy_from_slice(&id.0);
    k[16] = 0xFF;
    k[17..].copy_from_slice(&chunk.0);
    k
}

pub(crate) fn session_segment_key(id: SessionId, seg: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&seg.to_be_bytes());
    k
}

/// Checked little-endian reads over a byte slice.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// The RocksDB handle.
pub(crate) struct Index {
    pub(crate) db: DB,
}

fn bad(key: impl std::fmt::Display, what: &str) -> Error {
    Error::CorruptIndex {
        key: key.to_string(),
        reason: format!("cannot decode {what}"),
    }
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let cfs = [
            CF_CHUNKS,
            CF_FILES,
            CF_MANIFESTS,
            CF_SESSIONS,
            CF_FILE_SCOPES,
            CF_SCOPE_CHUNKS,
        ]
        .map(|n| {
            let mut o = Options::default();
            if n == CF_CHUNKS {
                // Dedup looks up every chunk; most uploads are new data, so misses dominate.
                let mut bo = rocksdb::BlockBasedOptions::default();
                bo.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&bo);
            }
            ColumnFamilyDescriptor::new(n, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let text = e.into_string();
            if text.contains("lock") || text.contains("LOCK") {
                // RocksDB's LOCK file: another process (or another Store in this one) has it.
                Error::InUse(path.parent().unwrap_or(path).to_path_buf())
            } else {
                Error::Index(text)
            }
        })?;
        Ok(Index { db })
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Index(format!("column family {name} missing")))
    }

    pub(crate) fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkEntry>> {
        match self.db.get_pinned_cf(self.cf(CF_CHUNKS)?, id.0)? {
            None => Ok(None),
            Some(v) => ChunkEntry::decode(&v)
                .map(Some)
                .ok_or_else(|| bad(format!("chunk {id}"), "chunk entry")),
        }
    }

    pub(crate) fn file_meta(&self, id: &FileId) -> Result<Option<FileMeta>> {
        match self.db.get_pinned_cf(self.cf(CF_FILES)?, id.0)? {
            None => Ok(None),
            Some(v) => FileMeta::decode(&v)
                .map(Some)
                .ok_or_else(|| bad(format!("file {id}"), "file metadata")),
        }
    }

    pub(crate) fn manifest(&self, id: &FileId) -> Result<Option<Vec<ManifestEntry>>> {
        match self.db.get_pinned_cf(self.cf(CF_MANIFESTS)?, id.0)? {
            None => Ok(None),
            Some(v) => decode_entries(&v)
                .map(Some)
                .ok_or_else(|| bad(format!("manifest {id}"), "manifest")),
        }
    }

    pub(crate) fn session(
        &self,
        id: &SessionId,
    ) -> Result<Option<(SessionHeader, Vec<ManifestEntry>)>> {
        let cf = self.cf(CF_SESSIONS)?;
        // One snapshot for the header and its segments: a concurrent checkpoint or finish
        // must not be seen half-way.
        let snap = self.db.snapshot();
        let Some(v) = snap.get_cf(cf, id.0)? else {
            return Ok(None);
        };
        let header =
            SessionHeader::decode(&v).ok_or_else(|| bad(format!("session {id}"), "session"))?;
        let mut entries = Vec::with_capacity(header.chunks as usize);
        for seg in 0..header.segments {
            let key = session_segment_key(*id, seg);
            let v = snap
                .get_cf(cf, key)?
                .ok_or_else(|| bad(format!("session {id} segment {seg}"), "missing segment"))?;
            entries.extend(
                decode_entries(&v)
                    .ok_or_else(|| bad(format!("session {id} segment {seg}"), "segment"))?,
            );
        }
        if entries.len() != header.chunks as usize {
            return Err(bad(format!("session {id}"), "chunk count"));
        }
        Ok(Some((header, entries)))
    }

    /// A session's header alone (its chunk list is not read).
    pub(crate) fn session_header(&self, id: &SessionId) -> Result<Option<SessionHeader>> {
        match self.db.get_pinned_cf(self.cf(CF_SESSIONS)?, id.0)? {
            None => Ok(None),
            Some(v) => SessionHeader::decode(&v)
                .map(Some)
                .ok_or_else(|| bad(format!("session {id}"), "session")),
        }
    }

    /// Whether the session lists its held chunks as member keys.
    pub(crate) fn session_has_members(&self, id: &SessionId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_SESSIONS)?, session_marker_key(*id))?
            .is_some())
    }

    pub(crate) fn session_member(&self, id: &SessionId, chunk: &ChunkId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_SESSIONS)?, session_member_key(*id, chunk))?
            .is_some())
    }

    /// Every chunk the session holds, from its member keys.
    pub(crate) fn session_members(&self, id: &SessionId) -> Result<Vec<ChunkId>> {
        let mut prefix = [0u8; 17];
        prefix[..16].copy_from_slice(&id.0);
        prefix[16] = 0xFF;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_SESSIONS)?,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let c = <[u8; 32]>::try_from(k.get(17..).unwrap_or_default())
                .map_err(|_| bad(format!("session {id}"), "member key"))?;
            out.push(ChunkId(c));
        }
        Ok(out)
    }

    /// Every key/value of a column family, in key order.
    pub(crate) fn scan(
        &self,
        cf: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(&[], Direction::Forward))
        {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }

    pub(crate) fn write_sync(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        crate::failpoint::hit("index.after_commit");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Decoders of bytes read from disk never panic, whatever the bytes.
        #[test]
        fn decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ChunkEntry::decode(&bytes);
            let _ = FileMeta::decode(&bytes);
            let _ = decode_entries(&bytes);
            let _ = decode_manifest_record(&bytes);
            let _ = decode_tombstone(&bytes);
            let _ = SessionHeader::decode(&bytes);
        }
    }

    #[test]
    fn encodings_round_trip_and_reject_garbage() {
        let e = ChunkEntry {
            loc: Location {
                pack: 3,
                offset: 99,
            },
            len: 7,
            refs: 2,
        };
        assert_eq!(ChunkEntry::decode(&e.encode()), Some(e));
        assert_eq!(ChunkEntry::decode(&e.encode()[..19]), None);
        let meta = FileMeta {
            size: 10,
            hash: [1; 32],
            chunks: 1,
            created_ms: 5,
        };
        let entries = vec![ManifestEntry {
            id: ChunkId([2; 32]),
            len: 10,
        }];
        let id = FileId([9; 16]);
        let rec = encode_manifest_record(id, &meta, &entries, None);
        assert_eq!(
            decode_manifest_record(&rec),
            Some((id, meta, entries.clone(), None))
        );
        assert_eq!(decode_manifest_record(&rec[..rec.len() - 1]), None);
        let scope = Some(Scope([4; 16]));
        let rec = encode_manifest_record(id, &meta, &entries, scope);
        assert_eq!(
            decode_manifest_record(&rec),
            Some((id, meta, entries, scope))
        );
        assert_eq!(decode_manifest_record(&rec[..rec.len() - 1]), None);
        // A count far larger than the bytes present must not allocate or panic.
        let mut lying = Vec::new();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_entries(&lying), None);
        let s = SessionHeader {
            created_ms: 1,
            expires_ms: 2,
            offset: 3,
            chunks: 0,
            segments: 0,
            tail: vec![1, 2],
        };
        assert_eq!(SessionHeader::decode(&s.encode()), Some(s));
        assert_eq!(decode_tombstone(&encode_tombstone(id, 4)), Some(id));
    }
}
