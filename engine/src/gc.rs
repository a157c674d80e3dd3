//! Garbage collection: expire sessions, then compact sealed packs whose dead share passed the
//! threshold (live records copied to the active pack, the pack dropped). The protocol that
//! keeps concurrent uploads safe is written up in `docs/design/gc.md`.

use std::collections::{HashMap, HashSet};

use rocksdb::WriteBatch;

use crate::error::Result;
use crate::id::ChunkId;
use crate::index::{self, CF_CHUNKS, ChunkEntry};
use crate::pack::{Location, NewRecord, PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordKind};
use crate::store::{Store, bad_key, lock};

/// What one GC pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub sessions_expired: u64,
    pub packs_examined: u64,
    pub packs_compacted: u64,
    /// Packs whose compaction was skipped because a chunk came back to life meanwhile.
    pub packs_deferred: u64,
    pub chunks_moved: u64,
    pub chunks_dropped: u64,
    /// Pack bytes before minus after.
    pub bytes_reclaimed: u64,
}

impl Store {
    /// One GC pass. Safe to run while other threads read and write.
    pub fn gc(&self) -> Result<GcReport> {
        let _one_at_a_time = lock(&self.inner.gc_lock)?;
        let mut report = GcReport {
            sessions_expired: self.expire_sessions()? as u64,
            ..GcReport::default()
        };
        let inner = &self.inner;
        // Live bytes per pack, from the index.
        let mut live: HashMap<u32, u64> = HashMap::new();
        {
            let pins = lock(&inner.pins)?;
            inner.index.scan(CF_CHUNKS, |k, v| {
                let e = ChunkEntry::decode(v).ok_or_else(|| bad_key("chunk", k))?;
                let pinned =
                    <[u8; 32]>::try_from(k).is_ok_and(|id| pins.contains_key(&ChunkId(id)));
                if e.refs > 0 || pinned {
                    *live.entry(e.loc.pack).or_default() += RECORD_HEADER_LEN + e.len as u64;
                }
                Ok(())
            })?;
        }
        let active = inner.packs.active();
        let floor = inner.writer_floor()?;
        for (pack, len) in inner.packs.list()? {
            // In-flight writers may have uncommitted records in packs from `floor` on.
            if pack == active || pack >= floor {
                continue;
            }
            report.packs_examined += 1;
            let body = len.saturating_sub(PACK_HEADER_LEN).max(1);
            let live_bytes = live.get(&pack).copied().unwrap_or(0).min(body);
            let dead_share = 1.0 - live_bytes as f64 / body as f64;
            if dead_share + f64::EPSILON < inner.gc_dead_ratio {
                continue;
            }
            if self.compact_pack(pack, &mut report)? {
                report.packs_compacted += 1;
                report.bytes_reclaimed += len;
            } else {
                report.packs_deferred += 1;
            }
        }
        Ok(report)
    }

    /// Copy the live records of `pack` forward and drop it. Returns false if a chunk was
    /// resurrected during the copy (the pack is kept for a later pass).
    fn compact_pack(&self, pack: u32, report: &mut GcReport) -> Result<bool> {
        let inner = &self.inner;
        // 1. Pick the live records (snapshot; re-checked under the commit lock below).
        let mut to_copy: Vec<(RecordKind, [u8; 32], u64, u32)> = Vec::new();
        let mut in_pack: Vec<ChunkId> = Vec::new();
        let pins_snapshot: HashSet<ChunkId> = lock(&inner.pins)?.keys().copied().collect();
        inner.packs.scan(pack, &mut |r| {
            match r.header.kind {
                RecordKind::Chunk => {
                    let id = ChunkId(r.header.hash);
                    if let Some(e) = inner.index.chunk(&id)?
                        && e.loc
                            == (Location {
                                pack,
                                offset: r.offset,
                            })
                    {
                        in_pack.push(id);
                        if e.refs > 0 || pins_snapshot.contains(&id) {
                            to_copy.push((r.header.kind, r.header.hash, r.offset, r.header.len));
                        }
                    }
                }
                // Manifests of existing files and all tombstones keep the packs sufficient
                // for a reindex.
                RecordKind::Manifest | RecordKind::Tombstone => {
                    to_copy.push((r.header.kind, r.header.hash, r.offset, r.header.len));
                }
            }
            Ok(())
        })?;
        // 2. Copy them, in batches, and make the copies durable.
        let mut moved: HashMap<ChunkId, Location> = HashMap::new();
        let mut packs_written = Vec::new();
        for batch in to_copy.chunks(64) {
            let mut payloads: Vec<(RecordKind, [u8; 32], Vec<u8>)> =
                Vec::with_capacity(batch.len());
            for &(kind, hash, offset, len) in batch {
                let mut buf = vec![0u8; len as usize];
                if !inner
                    .packs
                    .read(pack, offset + RECORD_HEADER_LEN, &mut buf)?
                {
                    return Ok(false);
                }
                if blake3::hash(&buf).as_bytes() != &hash {
                    // Never copy damaged bytes forward; verify reports them.
                    tracing::error!(
                        pack,
                        offset,
                        "record fails its hash during compaction; pack kept"
                    );
                    return Ok(false);
                }
                if kind == RecordKind::Manifest {
                    let alive = match index::decode_manifest_record(&buf) {
                        Some((id, ..)) => inner.index.file_meta(&id)?.is_some(),
                        None => false,
                    };
                    if !alive {
                        continue;
                    }
                }
                payloads.push((kind, hash, buf));
            }
            let records: Vec<NewRecord<'_>> = payloads
                .iter()
                .map(|(kind, hash, p)| NewRecord {
                    kind: *kind,
                    hash: *hash,
                    payload: p,
                })
                .collect();
            let locs = inner.packs.append(&records)?;
            for ((kind, hash, _), loc) in payloads.iter().zip(locs) {
                packs_written.push(loc.pack);
                if *kind == RecordKind::Chunk {
                    moved.insert(ChunkId(*hash), loc);
                }
            }
        }
        inner.sync_packs(&mut packs_written)?;
        crate::failpoint::hit("gc.after_copy");
        // 3. Switch the index over, atomically with respect to commits and pins.
        {
            let _commit = lock(&inner.commit)?;
            if pack >= inner.writer_floor()? {
                return Ok(false); // a writer started meanwhile with records possibly in it
            }
            let pins = lock(&inner.pins)?;
            let cf = inner.index.cf(CF_CHUNKS)?;
            let mut wb = WriteBatch::default();
            let mut dropped = 0u64;
            for id in &in_pack {
                let Some(mut e) = inner.index.chunk(id)? else {
                    continue;
                };
                if e.loc.pack != pack {
                    continue;
                }
                match moved.get(id) {
                    Some(&loc) => {
                        e.loc = loc;
                        wb.put_cf(cf, id.0, e.encode());
                    }
                    None if e.refs == 0 && !pins.contains_key(id) => {
                        wb.delete_cf(cf, id.0);
                        dropped += 1;
                    }
                    // Referenced again since the snapshot and not copied: keep the pack.
                    None => return Ok(false),
                }
            }
            inner.index.write_sync(wb)?;
            report.chunks_moved += moved.len() as u64;
            report.chunks_dropped += dropped;
        }
        crate::failpoint::hit("gc.after_switch");
        // 4. Drop the pack. Readers that already hold it finish; new ones look up again.
        inner.packs.remove(pack)?;
        crate::failpoint::hit("gc.after_unlink");
        Ok(true)
    }
}
