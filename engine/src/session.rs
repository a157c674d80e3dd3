//! Resumable upload sessions: appends over many calls and across restarts. Each checkpoint
//! commits the chunks cut so far (holding references to them) and persists the uncut tail in
//! the same synced index batch, so after a crash the session reports exactly the last
//! acknowledged offset.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::WriteBatch;

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::id::{ChunkId, FileId, SessionId, now_ms};
use crate::index::{
    self, CF_SESSIONS, FileMeta, ManifestEntry, SessionHeader, session_marker_key,
    session_member_key, session_segment_key,
};
use crate::read::read_chunk;
use crate::scope::Scope;
use crate::store::{FileInfo, Inner, NewFile, Store, WriterGuard, distinct, lock};
use crate::write::{Expect, Pipeline};

/// Chunks announced to one writer and not yet supplied (a dedup-aware client's window).
pub const MAX_ANNOUNCED: usize = 4096;

/// A session as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    /// Bytes acknowledged so far.
    pub offset: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Exclusive access to one session for one append (a tus PATCH, a gRPC stream).
/// Bytes become acknowledged at [`SessionWriter::checkpoint`]; dropping the writer discards
/// what was written since the last checkpoint and releases the session.
pub struct SessionWriter {
    inner: Arc<Inner>,
    id: SessionId,
    header: SessionHeader,
    /// Chunks known to be held by the session (distinct), for refcount bookkeeping: all of
    /// them for a session without member keys, else those this writer checked or added.
    held: HashSet<ChunkId>,
    /// The session lists its chunks as member keys (looked up one by one, never loaded).
    members: bool,
    pipeline: Option<Pipeline>,
    guard: WriterGuard,
    /// Bytes written through this writer past `header.offset` not yet checkpointed.
    unacked: u64,
    /// Whether the pipeline's hasher covers the session from byte 0.
    hashing: bool,
    /// Bytes this writer stored as new chunks, as of its last checkpoint.
    new_bytes: u64,
    /// The scope the finished file is committed in.
    scope: Option<Scope>,
    /// Announced chunks not yet supplied, in order: (entry, whether the scope holds it).
    plan: VecDeque<(ManifestEntry, bool)>,
    /// A chunk shorter than the minimum was announced: it must be the last.
    short: bool,
}

impl std::fmt::Debug for SessionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWriter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open a new upload session (expires after the store's session TTL unless `ttl` is given).
    pub fn create_session(&self, ttl: Option<Duration>) -> Result<SessionInfo> {
        let id = SessionId::generate();
        let now = now_ms();
        let ttl = ttl.unwrap_or(self.inner.session_ttl);
        let header = SessionHeader {
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis() as u64),
            offset: 0,
            chunks: 0,
            segments: 0,
            tail: Vec::new(),
        };
        let mut wb = WriteBatch::default();
        let cf = self.inner.index.cf(CF_SESSIONS)?;
        wb.put_cf(cf, id.0, header.encode());
        wb.put_cf(cf, session_marker_key(id), []);
        self.inner.index.write_sync(wb)?;
        Ok(SessionInfo {
            id,
            offset: 0,
            created_ms: header.created_ms,
            expires_ms: header.expires_ms,
        })
    }

    /// A session's acknowledged offset and expiry. Expired sessions are reported as not found.
    pub fn session(&self, id: SessionId) -> Result<SessionInfo> {
        let h = self
            .inner
            .index
            .session_header(&id)?
            .ok_or(Error::SessionNotFound(id))?;
        if h.expires_ms <= now_ms() {
            return Err(Error::SessionNotFound(id));
        }
        Ok(SessionInfo {
            id,
            offset: h.offset,
            created_ms: h.created_ms,
            expires_ms: h.expires_ms,
        })
    }

    /// Ids of every open session (expired ones included until GC reclaims them).
    pub fn session_ids(&self) -> Result<Vec<SessionId>> {
        let mut out = Vec::new();
        self.inner.index.scan(CF_SESSIONS, |k, _| {
            if let Ok(id) = <[u8; 16]>::try_from(k) {
                out.push(SessionId(id));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Take the session for appending at `offset` (which must be its current offset).
    pub fn session_writer(&self, id: SessionId, offset: u64) -> Result<SessionWriter> {
        if let Some(why) = self.inner.packs.poisoned() {
            return Err(Error::Poisoned(why));
        }
        let hasher = {
            let mut live = lock(&self.inner.live_sessions)?;
            let slot = live.entry(id).or_default();
            if slot.busy {
                return Err(Error::SessionBusy(id));
            }
            slot.busy = true;
            slot.hasher.clone()
        };
        self.open_claimed(id, offset, hasher).inspect_err(|_| {
            if let Ok(mut live) = self.inner.live_sessions.lock()
                && let Some(s) = live.get_mut(&id)
            {
                s.busy = false;
            }
        })
    }

    /// The rest of [`Store::session_writer`], once the session is claimed (the caller
    /// releases the claim if this fails).
    fn open_claimed(
        &self,
        id: SessionId,
        offset: u64,
        hasher: Option<(u64, blake3::Hasher)>,
    ) -> Result<SessionWriter> {
        // Only the header: opening costs the same at any size (the chunk list is read once,
        // at the finish).
        let header = self
            .inner
            .index
            .session_header(&id)?
            .ok_or(Error::SessionNotFound(id))?;
        if header.expires_ms <= now_ms() {
            return Err(Error::SessionNotFound(id));
        }
        if header.offset != offset {
            return Err(Error::OffsetMismatch {
                session: id,
                given: offset,
                current: header.offset,
            });
        }
        let (hasher, hashing) = match hasher {
            Some((at, h)) if at == header.offset - header.tail.len() as u64 => (Some(h), true),
            _ if header.offset == 0 => (Some(blake3::Hasher::new()), true),
            _ => (None, false),
        };
        let guard = WriterGuard::new(&self.inner)?;
        let members = self.inner.index.session_has_members(&id)?;
        let held: HashSet<ChunkId> = if members {
            HashSet::new()
        } else {
            let (_, entries) = self
                .inner
                .index
                .session(&id)?
                .ok_or(Error::SessionNotFound(id))?;
            entries.iter().map(|e| e.id).collect()
        };
        let chunker = Chunker::with_tail(self.inner.params, &header.tail);
        let pipeline = Pipeline::new(&self.inner, chunker, hasher, held.clone())?;
        Ok(SessionWriter {
            inner: self.inner.clone(),
            id,
            header,
            held,
            members,
            pipeline: Some(pipeline),
            guard,
            unacked: 0,
            hashing,
            new_bytes: 0,
            scope: None,
            plan: VecDeque::new(),
            short: false,
        })
    }

    /// Abandon a session: its references are released and its keys removed.
    pub fn abort_session(&self, id: SessionId) -> Result<()> {
        {
            // Claim the session like a writer would, so no append can start while it goes.
            let mut live = lock(&self.inner.live_sessions)?;
            let slot = live.entry(id).or_default();
            if slot.busy {
                return Err(Error::SessionBusy(id));
            }
            slot.busy = true;
        }
        let r = self.inner.drop_session(id);
        lock(&self.inner.live_sessions)?.remove(&id);
        r
    }

    /// Abort every session past its expiry. Returns how many were reclaimed.
    pub fn expire_sessions(&self) -> Result<usize> {
        let now = now_ms();
        let mut n = 0;
        for id in self.session_ids()? {
            let Some((h, _)) = self.inner.index.session(&id)? else {
                continue;
            };
            if h.expires_ms <= now {
                match self.abort_session(id) {
                    Ok(()) => n += 1,
                    Err(Error::SessionBusy(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }
}

impl Inner {
    fn drop_session(&self, id: SessionId) -> Result<()> {
        let _g = lock(&self.commit)?;
        let Some((header, entries)) = self.index.session(&id)? else {
            return Err(Error::SessionNotFound(id));
        };
        let mut wb = WriteBatch::default();
        let cf = self.index.cf(CF_SESSIONS)?;
        wb.delete_cf(cf, id.0);
        wb.delete_cf(cf, session_marker_key(id));
        for seg in 0..header.segments {
            wb.delete_cf(cf, session_segment_key(id, seg));
        }
        let held = distinct(&entries);
        for c in &held {
            wb.delete_cf(cf, session_member_key(id, c));
        }
        let deltas = held.into_iter().map(|c| (c, -1)).collect();
        self.apply_refs(&mut wb, &deltas, &HashMap::new())?;
        self.index.write_sync(wb)
    }
}

impl SessionWriter {
    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Offset after the bytes written so far (acknowledged or not).
    pub fn offset(&self) -> u64 {
        self.header.offset + self.unacked
    }

    /// Bytes this writer stored as new chunks up to its last checkpoint (the rest of what it
    /// acknowledged was already in the store).
    pub fn new_bytes(&self) -> u64 {
        self.new_bytes
    }

    /// The last acknowledged offset.
    pub fn acknowledged(&self) -> u64 {
        self.header.offset
    }

    fn pipeline(&mut self) -> Result<&mut Pipeline> {
        self.pipeline
            .as_mut()
            .ok_or(Error::Internal("session writer finished"))
    }

    /// Commit the finished file in `scope` (its owner).
    pub fn set_scope(&mut self, scope: Option<Scope>) {
        self.scope = scope;
    }

    fn no_plan(&self) -> Result<()> {
        if self.plan.is_empty() {
            Ok(())
        } else {
            Err(Error::BadChunks(format!(
                "{} announced chunks are still to come before other bytes",
                self.plan.len()
            )))
        }
    }

    /// Dedup-aware append: announce the next chunks as the client cut them (id and length,
    /// in order). Answers, for each, whether its bytes must be sent: `false` only for a
    /// chunk that `scope`'s own committed files hold (pinned from now until this writer
    /// ends, so it cannot go away before it is used). The announced chunks are then taken in
    /// order by [`SessionWriter::chunk`] (needed ones) and [`SessionWriter::reuse`] (held).
    /// Every chunk must be at most the store's maximum and, except the last of the file, at
    /// least its minimum; at most [`MAX_ANNOUNCED`] may be outstanding.
    pub fn announce(&mut self, scope: Scope, chunks: &[(ChunkId, u32)]) -> Result<Vec<bool>> {
        let p = self.inner.params;
        if self.plan.len() + chunks.len() > MAX_ANNOUNCED {
            return Err(Error::BadChunks(format!(
                "more than {MAX_ANNOUNCED} chunks announced and not yet sent"
            )));
        }
        for &(_, len) in chunks {
            if self.short {
                return Err(Error::BadChunks(format!(
                    "only the last chunk may be shorter than {} bytes",
                    p.min
                )));
            }
            if len == 0 || len > p.max {
                return Err(Error::BadChunks(format!(
                    "chunk of {len} bytes (1 to {} allowed)",
                    p.max
                )));
            }
            self.short = len < p.min;
        }
        let mut needed = Vec::with_capacity(chunks.len());
        for &(id, len) in chunks {
            // Pin before looking: the chunk then cannot be collected between the answer
            // and its use, whatever the scope's files do meanwhile.
            self.inner.pin(id)?;
            let held = self.inner.scope_holds(scope, &id, len)?;
            if held {
                self.guard.pinned.push(id);
            } else {
                self.inner.unpin_all(&[id]);
            }
            self.plan.push_back((ManifestEntry { id, len }, held));
            needed.push(!held);
        }
        Ok(needed)
    }

    /// The bytes of the next announced chunk, which must be one answered as needed.
    pub fn chunk(&mut self, data: bytes::Bytes) -> Result<()> {
        let Some(&(e, held)) = self.plan.front() else {
            return Err(Error::BadChunks(
                "chunk bytes with no chunk announced".into(),
            ));
        };
        if held {
            return Err(Error::BadChunks(format!(
                "chunk {} is held already; its bytes are not expected",
                e.id
            )));
        }
        if data.len() != e.len as usize {
            return Err(Error::BadChunks(format!(
                "chunk {} announced with {} bytes, sent with {}",
                e.id,
                e.len,
                data.len()
            )));
        }
        self.pipeline()?.push_chunk(data, Expect::Claimed(e.id))?;
        self.plan.pop_front();
        self.unacked += e.len as u64;
        Ok(())
    }

    /// Take the announced chunks at the front of the plan that the scope holds (read back
    /// and verified, for the file hash). Returns the bytes they add to the upload.
    pub fn reuse(&mut self) -> Result<u64> {
        let mut n = 0u64;
        while let Some(&(e, true)) = self.plan.front() {
            let data = read_chunk(&self.inner, FileId([0; 16]), e.id, e.len)?;
            self.pipeline()?.push_chunk(data, Expect::Verified(e.id))?;
            self.plan.pop_front();
            self.unacked += e.len as u64;
            n += e.len as u64;
        }
        Ok(n)
    }

    /// Announced chunks not yet taken.
    pub fn announced(&self) -> usize {
        self.plan.len()
    }

    /// Append bytes (not yet acknowledged).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.no_plan()?;
        self.pipeline()?.write(data)?;
        self.unacked += data.len() as u64;
        Ok(())
    }

    /// Append owned bytes without copying the chunks inside them (not yet acknowledged).
    pub fn write_bytes(&mut self, data: bytes::Bytes) -> Result<()> {
        self.no_plan()?;
        let n = data.len() as u64;
        self.pipeline()?.write_bytes(data)?;
        self.unacked += n;
        Ok(())
    }

    /// Make everything written so far durable; returns the new acknowledged offset.
    pub fn checkpoint(&mut self) -> Result<u64> {
        if self.unacked == 0 {
            return Ok(self.header.offset);
        }
        let mut flushed = self.pipeline()?.flush()?;
        self.new_bytes += flushed.new_bytes;
        self.guard.pinned.append(&mut flushed.pinned);
        let tail = self.pipeline()?.chunker.tail().to_vec();
        let inner = self.inner.clone();
        let mut packs = flushed.packs.clone();
        inner.sync_packs(&mut packs)?;
        let mut next = self.header.clone();
        next.offset += self.unacked;
        next.tail = tail;
        let mut deltas = HashMap::new();
        let mut newly_held = Vec::new();
        let mut wb = WriteBatch::default();
        let cf = inner.index.cf(CF_SESSIONS)?;
        for e in &flushed.entries {
            if self.held.contains(&e.id) || deltas.contains_key(&e.id) {
                continue;
            }
            if self.members && inner.index.session_member(&self.id, &e.id)? {
                self.held.insert(e.id);
                continue;
            }
            newly_held.push(e.id);
            deltas.insert(e.id, 1i64);
            if self.members {
                wb.put_cf(cf, session_member_key(self.id, &e.id), []);
            }
        }
        if !flushed.entries.is_empty() {
            let mut seg = Vec::new();
            index::encode_entries(&flushed.entries, &mut seg);
            wb.put_cf(cf, session_segment_key(self.id, next.segments), seg);
            next.segments += 1;
            next.chunks += flushed.entries.len() as u32;
        }
        wb.put_cf(cf, self.id.0, next.encode());
        crate::failpoint::hit("session.before_commit");
        {
            let _g = lock(&inner.commit)?;
            inner.apply_refs(&mut wb, &deltas, &flushed.new_locs)?;
            inner.index.write_sync(wb)?;
        }
        self.held.extend(newly_held);
        self.header = next;
        self.unacked = 0;
        Ok(self.header.offset)
    }

    /// Checkpoint, cut the tail and commit the session as a new file. The session ends.
    pub fn finish(mut self) -> Result<FileInfo> {
        self.no_plan()?;
        self.checkpoint()?;
        let inner = self.inner.clone();
        let Some((_, mut entries)) = inner.index.session(&self.id)? else {
            return Err(Error::SessionNotFound(self.id));
        };
        let mut pipeline = self
            .pipeline
            .take()
            .ok_or(Error::Internal("session writer finished"))?;
        let committed = entries.len();
        let tail = pipeline.chunker.tail().to_vec();
        pipeline.cut_tail()?;
        let (mut flushed, hasher) = pipeline.finish()?;
        self.guard.pinned.append(&mut flushed.pinned);
        drop(pipeline);
        entries.extend(flushed.entries.iter().copied());
        let mut packs = flushed.packs.clone();
        let hash = match hasher.filter(|_| self.hashing) {
            Some(h) => *h.finalize().as_bytes(),
            // Restarted since the session began: hash the committed chunks back from disk,
            // then the tail (still in memory).
            None => {
                let mut h = rehash(&inner, entries.get(..committed).unwrap_or_default())?;
                h.update(&tail);
                *h.finalize().as_bytes()
            }
        };
        let id = FileId::generate();
        let meta = FileMeta {
            size: self.header.offset,
            hash,
            chunks: entries.len() as u32,
            created_ms: now_ms(),
        };
        let f = NewFile {
            id,
            meta: &meta,
            entries: &entries,
            scope: self.scope,
        };
        inner.write_manifest_record(&f, &mut packs)?;
        let carried: Vec<ChunkId> = if self.members {
            inner.index.session_members(&self.id)?
        } else {
            self.held.iter().copied().collect()
        };
        let sid = self.id;
        let segments = self.header.segments;
        inner.commit_file(&f, &flushed.new_locs, &carried, |wb| {
            let cf = inner.index.cf(CF_SESSIONS)?;
            wb.delete_cf(cf, sid.0);
            wb.delete_cf(cf, session_marker_key(sid));
            for seg in 0..segments {
                wb.delete_cf(cf, session_segment_key(sid, seg));
            }
            for c in &carried {
                wb.delete_cf(cf, session_member_key(sid, c));
            }
            Ok(())
        })?;
        if let Ok(mut live) = inner.live_sessions.lock() {
            live.remove(&sid);
        }
        Ok(FileInfo {
            id,
            meta,
            // Everything this writer stored as new, checkpoints included.
            new_bytes: self.new_bytes + flushed.new_bytes,
        })
    }
}

fn rehash(inner: &Inner, entries: &[ManifestEntry]) -> Result<blake3::Hasher> {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(&read_chunk(inner, FileId([0; 16]), e.id, e.len)?);
    }
    Ok(h)
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        // The pipeline's hasher has seen every cut chunk, not the tail. If nothing unacked
        // was written, keep it for the next append so finishing needs no re-read.
        let mut kept = None;
        if let Some(mut p) = self.pipeline.take()
            && self.unacked == 0
            && self.hashing
            && let Ok((_, Some(h))) = p.finish()
        {
            kept = Some((self.header.offset - self.header.tail.len() as u64, h));
        }
        if let Ok(mut live) = self.inner.live_sessions.lock()
            && let Some(s) = live.get_mut(&self.id)
        {
            s.busy = false;
            s.hasher = kept;
        }
    }
}
