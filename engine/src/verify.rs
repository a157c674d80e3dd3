//! `verify`: a full scan in the manner of `restic check --read-data` — every pack record read
//! and hashed, every index entry matched to a good record, every manifest resolved, every
//! refcount recomputed.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::id::{ChunkId, FileId};
use crate::index::{self, CF_CHUNKS, CF_MANIFESTS, ChunkEntry};
use crate::pack::{Location, RECORD_HEADER_LEN, RecordKind};
use crate::store::{Store, bad_key, distinct};

/// The outcome of [`Store::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub packs: u64,
    pub records: u64,
    pub bytes_read: u64,
    pub chunks: u64,
    pub files: u64,
    pub sessions: u64,
    /// Every problem found, one line each.
    pub problems: Vec<String>,
    /// Files that cannot be read back correctly.
    pub damaged_files: Vec<FileId>,
}

impl VerifyReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Check everything; never changes the store.
    pub fn verify(&self) -> Result<VerifyReport> {
        let inner = &self.inner;
        let mut rep = VerifyReport::default();
        // 1. Packs: every record's payload against its hash.
        let mut good: HashMap<Location, (ChunkId, u32)> = HashMap::new();
        let active = inner.packs.active();
        for (pack, _) in inner.packs.list()? {
            rep.packs += 1;
            let mut bad_records = Vec::new();
            let end = inner.packs.scan(pack, &mut |r| {
                rep.records += 1;
                let mut buf = vec![0u8; r.header.len as usize];
                inner
                    .packs
                    .read(pack, r.offset + RECORD_HEADER_LEN, &mut buf)?;
                rep.bytes_read += r.header.record_len();
                if blake3::hash(&buf).as_bytes() != &r.header.hash {
                    bad_records.push(format!(
                        "pack {pack} offset {}: {:?} record content does not match its hash",
                        r.offset, r.header.kind
                    ));
                } else if r.header.kind == RecordKind::Chunk {
                    good.insert(
                        Location {
                            pack,
                            offset: r.offset,
                        },
                        (ChunkId(r.header.hash), r.header.len),
                    );
                }
                Ok(())
            })?;
            rep.problems.extend(bad_records);
            if let Some(p) = end.problem {
                // The active pack's tail may legitimately hold a write in progress.
                if pack != active || end.valid_len < end.file_len {
                    rep.problems.push(format!(
                        "pack {pack}: records end early at {}: {p}",
                        end.valid_len
                    ));
                }
            }
        }
        // 2. Index entries point at good records.
        let mut entries: HashMap<ChunkId, ChunkEntry> = HashMap::new();
        let mut bad_chunks: HashSet<ChunkId> = HashSet::new();
        inner.index.scan(CF_CHUNKS, |k, v| {
            let id = ChunkId(k.try_into().map_err(|_| bad_key("chunk", k))?);
            let e = ChunkEntry::decode(v).ok_or_else(|| bad_key("chunk", k))?;
            rep.chunks += 1;
            match good.get(&e.loc) {
                Some(&(gid, glen)) if gid == id && glen == e.len => {}
                _ => {
                    bad_chunks.insert(id);
                    if e.refs > 0 {
                        rep.problems.push(format!(
                            "chunk {id}: no intact record at pack {} offset {}",
                            e.loc.pack, e.loc.offset
                        ));
                    }
                }
            }
            entries.insert(id, e);
            Ok(())
        })?;
        // 3. Manifests resolve; recount references.
        let mut tally: HashMap<ChunkId, u32> = HashMap::new();
        let mut damaged: Vec<FileId> = Vec::new();
        let mut file_ids = Vec::new();
        inner.index.scan(CF_MANIFESTS, |k, v| {
            let id = FileId(k.try_into().map_err(|_| bad_key("manifest", k))?);
            let m = index::decode_entries(v).ok_or_else(|| bad_key("manifest", k))?;
            file_ids.push(id);
            rep.files += 1;
            let mut broken = false;
            for c in distinct(&m) {
                *tally.entry(c).or_default() += 1;
                if !entries.contains_key(&c) {
                    rep.problems
                        .push(format!("file {id}: chunk {c} missing from the index"));
                    broken = true;
                } else if bad_chunks.contains(&c) {
                    rep.problems
                        .push(format!("file {id}: chunk {c} is corrupt"));
                    broken = true;
                }
            }
            match inner.index.file_meta(&id)? {
                Some(meta) => {
                    let size: u64 = m.iter().map(|e| e.len as u64).sum();
                    if size != meta.size || m.len() != meta.chunks as usize {
                        rep.problems
                            .push(format!("file {id}: manifest does not match its metadata"));
                        broken = true;
                    }
                }
                None => rep
                    .problems
                    .push(format!("file {id}: manifest without metadata")),
            }
            if broken {
                damaged.push(id);
            }
            Ok(())
        })?;
        for (id, _) in self.list()? {
            if !file_ids.contains(&id) {
                rep.problems
                    .push(format!("file {id}: metadata without manifest"));
                damaged.push(id);
            }
        }
        for sid in self.session_ids()? {
            rep.sessions += 1;
            if let Some((_, m)) = inner.index.session(&sid)? {
                for c in distinct(&m) {
                    *tally.entry(c).or_default() += 1;
                    if bad_chunks.contains(&c) || !entries.contains_key(&c) {
                        rep.problems.push(format!(
                            "upload session {sid}: chunk {c} is missing or corrupt"
                        ));
                    }
                }
            }
        }
        // 4. Refcounts equal the number of manifests and sessions naming each chunk.
        for (id, e) in &entries {
            let want = tally.get(id).copied().unwrap_or(0);
            if e.refs != want {
                rep.problems.push(format!(
                    "chunk {id}: refcount {} but {want} references",
                    e.refs
                ));
            }
        }
        damaged.sort_unstable();
        damaged.dedup();
        rep.damaged_files = damaged;
        Ok(rep)
    }
}
