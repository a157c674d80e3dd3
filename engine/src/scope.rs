//! Scopes: which chunks one owner's files name. A file may be committed in a scope (the
//! picker uses one per user); the index then counts, per scope and chunk, the scope's files
//! naming the chunk, in the same synced batch as the file itself, and a delete takes the
//! counts back. Dedup-aware uploads ask this index, never the store-wide chunk map: a chunk
//! counts as present for an owner only if that owner's own files hold it, so the answer
//! reveals nothing about anyone else's data.

use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{CF_FILE_SCOPES, CF_SCOPE_CHUNKS, Index};
use crate::store::{Inner, Store};

/// An opaque 128-bit owner name for [`Store`] files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(pub [u8; 16]);

impl Scope {
    /// The scope of a name (a user id): a keyed BLAKE3 derivation, stable across versions.
    pub fn named(name: &str) -> Scope {
        let h = blake3::derive_key("fms-engine 2026 scope v1", name.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
        Scope(out)
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scope({})", hex::encode(self.0))
    }
}

pub(crate) fn key(scope: Scope, chunk: &ChunkId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&scope.0);
    k[16..].copy_from_slice(&chunk.0);
    k
}

pub(crate) fn decode_count(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_le_bytes)
}

impl Index {
    /// How many of `scope`'s files name `chunk`.
    pub(crate) fn scope_count(&self, scope: Scope, chunk: &ChunkId) -> Result<u32> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_SCOPE_CHUNKS)?, key(scope, chunk))?
        {
            None => Ok(0),
            Some(v) => decode_count(&v).ok_or_else(|| Error::CorruptIndex {
                key: format!("scope {scope:?} chunk {chunk}"),
                reason: "cannot decode a scope count".into(),
            }),
        }
    }

    pub(crate) fn file_scope(&self, id: &FileId) -> Result<Option<Scope>> {
        match self.db.get_pinned_cf(self.cf(CF_FILE_SCOPES)?, id.0)? {
            None => Ok(None),
            Some(v) => <[u8; 16]>::try_from(&v[..])
                .map(|s| Some(Scope(s)))
                .map_err(|_| Error::CorruptIndex {
                    key: format!("file {id}"),
                    reason: "cannot decode its scope".into(),
                }),
        }
    }
}

impl Inner {
    /// Whether `scope`'s own files hold `chunk` with length `len` (what a dedup-aware upload
    /// may skip sending). Only the scope's counts are asked, never the store-wide map alone.
    pub(crate) fn scope_holds(&self, scope: Scope, chunk: &ChunkId, len: u32) -> Result<bool> {
        Ok(self.index.scope_count(scope, chunk)? > 0
            && self.index.chunk(chunk)?.is_some_and(|e| e.len == len))
    }

    /// Add `delta` to the scope's count of each chunk (distinct) and record (or forget) the
    /// file's scope. Called under the commit lock, into the file's own batch.
    pub(crate) fn apply_scope(
        &self,
        wb: &mut WriteBatch,
        file: FileId,
        scope: Scope,
        chunks: &[ChunkId],
        delta: i64,
    ) -> Result<()> {
        let cf = self.index.cf(CF_SCOPE_CHUNKS)?;
        for c in chunks {
            let now = self.index.scope_count(scope, c)? as i64;
            let next = (now + delta).clamp(0, u32::MAX as i64) as u32;
            if next == 0 {
                wb.delete_cf(cf, key(scope, c));
            } else {
                wb.put_cf(cf, key(scope, c), next.to_le_bytes());
            }
        }
        let fcf = self.index.cf(CF_FILE_SCOPES)?;
        if delta > 0 {
            wb.put_cf(fcf, file.0, scope.0);
        } else {
            wb.delete_cf(fcf, file.0);
        }
        Ok(())
    }
}

impl Store {
    /// Whether each chunk is named by a file of `scope` (with that length). Only the scope's
    /// own files count: the store-wide chunk map is never consulted.
    pub fn scope_holds(&self, scope: Scope, chunks: &[(ChunkId, u32)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(chunks.len());
        for (id, len) in chunks {
            let held = self.inner.index.scope_count(scope, id)? > 0
                && self.inner.index.chunk(id)?.is_some_and(|e| e.len == *len);
            out.push(held);
        }
        Ok(out)
    }

    /// The scope a file was committed in.
    pub fn file_scope(&self, id: FileId) -> Result<Option<Scope>> {
        self.inner.index.file_scope(&id)
    }
}
