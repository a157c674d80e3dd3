//! `verify`: a full scan in the manner of `restic check --read-data` — every pack record read
//! and hashed, every index entry matched to a good record, every manifest resolved, every
//! file's content rehashed, every refcount recomputed.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::id::{ChunkId, FileId};
use crate::index::{self, CF_CHUNKS, CF_MANIFESTS, ChunkEntry, FileMeta};
use crate::index::{CF_FILE_SCOPES, CF_FILES, CF_SCOPE_CHUNKS};
use crate::pack::{Location, RECORD_HEADER_LEN, RecordKind};
use crate::scope::{self, Scope};
use crate::store::{Store, distinct};

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
        // Manifest records found in the packs: what a reindex would rebuild each file from.
        let mut recorded: HashMap<FileId, (FileMeta, [u8; 32])> = HashMap::new();
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
                } else if r.header.kind == RecordKind::Manifest {
                    if let Some((id, meta, m, _)) = index::decode_manifest_record(&buf) {
                        let mut enc = Vec::new();
                        index::encode_entries(&m, &mut enc);
                        recorded.insert(id, (meta, *blake3::hash(&enc).as_bytes()));
                    }
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
            rep.chunks += 1;
            let (Ok(id), Some(e)) = (<[u8; 32]>::try_from(k), ChunkEntry::decode(v)) else {
                rep.problems
                    .push(format!("index: undecodable chunk entry {}", hex::encode(k)));
                return Ok(());
            };
            let id = ChunkId(id);
            match good.get(&e.loc) {
                Some(&(gid, glen)) if gid == id && glen == e.len => {}
                _ => {
                    bad_chunks.insert(id);
                    rep.problems.push(format!(
                        "chunk {id}: no intact record at pack {} offset {}",
                        e.loc.pack, e.loc.offset
                    ));
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
            let Ok(id) = <[u8; 16]>::try_from(k) else {
                rep.problems.push(format!(
                    "index: manifest under a bad key {}",
                    hex::encode(k)
                ));
                return Ok(());
            };
            let id = FileId(id);
            file_ids.push(id);
            rep.files += 1;
            let Some(m) = index::decode_entries(v) else {
                rep.problems
                    .push(format!("file {id}: undecodable manifest in the index"));
                damaged.push(id);
                return Ok(());
            };
            let mut enc = Vec::new();
            index::encode_entries(&m, &mut enc);
            let manifest_hash = *blake3::hash(&enc).as_bytes();
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
            match inner.index.file_meta(&id).ok().flatten() {
                Some(meta) => {
                    match recorded.get(&id) {
                        Some((rmeta, rhash)) if *rmeta == meta && *rhash == manifest_hash => {}
                        Some(_) => {
                            rep.problems.push(format!(
                                "file {id}: index differs from its manifest record in the packs"
                            ));
                            broken = true;
                        }
                        None => rep.problems.push(format!(
                            "file {id}: no manifest record in the packs (a reindex would lose it)"
                        )),
                    }
                    let size: u64 = m.iter().map(|e| e.len as u64).sum();
                    if size != meta.size || m.len() != meta.chunks as usize {
                        rep.problems
                            .push(format!("file {id}: manifest does not match its metadata"));
                        broken = true;
                    }
                }
                None => {
                    rep.problems
                        .push(format!("file {id}: metadata missing or undecodable"));
                    broken = true;
                }
            }
            if broken {
                damaged.push(id);
            }
            Ok(())
        })?;
        // Every intact file's bytes hash to its recorded content hash (catches a damaged
        // hash in the metadata, which no chunk check can).
        let already: HashSet<FileId> = damaged.iter().copied().collect();
        for id in &file_ids {
            if already.contains(id) {
                continue;
            }
            let Some(meta) = inner.index.file_meta(id).ok().flatten() else {
                continue;
            };
            let mut h = blake3::Hasher::new();
            let mut failure = None;
            let reader = match self.read_range(*id, 0, meta.size) {
                Ok(r) => r,
                Err(e) => {
                    rep.problems.push(format!("file {id}: cannot be read: {e}"));
                    damaged.push(*id);
                    continue;
                }
            };
            for piece in reader {
                match piece {
                    Ok(b) => {
                        h.update(&b);
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                rep.problems.push(format!("file {id}: cannot be read: {e}"));
                damaged.push(*id);
            } else if h.finalize().as_bytes() != &meta.hash {
                rep.problems.push(format!(
                    "file {id}: content does not match its recorded hash"
                ));
                damaged.push(*id);
            }
        }
        let known: HashSet<FileId> = file_ids.iter().copied().collect();
        let mut orphans = Vec::new();
        inner.index.scan(CF_FILES, |k, _| {
            match <[u8; 16]>::try_from(k) {
                Ok(id) if !known.contains(&FileId(id)) => orphans.push(FileId(id)),
                Ok(_) => {}
                Err(_) => orphans.push(FileId([0; 16])),
            }
            Ok(())
        })?;
        for id in orphans {
            rep.problems
                .push(format!("file {id}: metadata without manifest"));
            damaged.push(id);
        }
        for sid in self.session_ids()? {
            rep.sessions += 1;
            if let Some((_, m)) = inner.index.session(&sid)? {
                if inner.index.session_has_members(&sid)? {
                    let mut members = inner.index.session_members(&sid)?;
                    members.sort_unstable();
                    if members != distinct(&m) {
                        rep.problems.push(format!(
                            "upload session {sid}: member keys differ from its chunk list"
                        ));
                    }
                }
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
        // 5. Scope counts equal the number of the scope's files naming each chunk.
        let mut scoped: HashMap<[u8; 48], u32> = HashMap::new();
        let mut scopes = Vec::new();
        inner.index.scan(CF_FILE_SCOPES, |k, v| {
            match (<[u8; 16]>::try_from(k), <[u8; 16]>::try_from(v)) {
                (Ok(f), Ok(s)) => scopes.push((FileId(f), Scope(s))),
                _ => rep
                    .problems
                    .push(format!("index: undecodable file scope {}", hex::encode(k))),
            }
            Ok(())
        })?;
        for (f, s) in scopes {
            match inner.index.manifest(&f)? {
                Some(m) => {
                    for c in distinct(&m) {
                        *scoped.entry(scope::key(s, &c)).or_default() += 1;
                    }
                }
                None => rep
                    .problems
                    .push(format!("file {f}: a scope but no manifest")),
            }
        }
        inner.index.scan(CF_SCOPE_CHUNKS, |k, v| {
            let want = <[u8; 48]>::try_from(k)
                .ok()
                .and_then(|k| scoped.remove(&k))
                .unwrap_or(0);
            if scope::decode_count(v) != Some(want) {
                rep.problems.push(format!(
                    "scope chunk {}: count {:?} but {want} files",
                    hex::encode(k),
                    scope::decode_count(v)
                ));
            }
            Ok(())
        })?;
        for k in scoped.keys() {
            rep.problems
                .push(format!("scope chunk {}: missing count", hex::encode(k)));
        }
        damaged.sort_unstable();
        damaged.dedup();
        rep.damaged_files = damaged;
        Ok(rep)
    }
}
