//! Rebuild the index from the packs alone: chunk locations from chunk records, files from
//! manifest records minus tombstones, refcounts recounted. Open upload sessions live only in
//! the index and are not recovered (their clients start over).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rocksdb::WriteBatch;

use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, FileId};
use crate::index::{
    self, CF_CHUNKS, CF_FILE_SCOPES, CF_FILES, CF_MANIFESTS, CF_SCOPE_CHUNKS, ChunkEntry, FileMeta,
    Index, ManifestEntry,
};
use crate::io::{IoMode, open_backend};
use crate::pack::{LocalPacks, Location, PackStore, RECORD_HEADER_LEN, RecordKind};
use crate::scope::{self, Scope};
use crate::store::{Store, distinct};

/// What a reindex found.
#[derive(Debug, Clone, Default)]
pub struct ReindexReport {
    pub packs: u64,
    pub chunks: u64,
    pub files: u64,
    pub deleted_files: u64,
    /// Records skipped because their bytes do not match their hash.
    pub corrupt_records: u64,
    /// Files whose chunks were not all found intact (indexed anyway; reads will name the chunk).
    pub incomplete_files: Vec<FileId>,
}

impl Store {
    /// Rebuild the index of the (closed) store at `path` from its packs.
    pub fn reindex(path: &Path, io_mode: IoMode) -> Result<ReindexReport> {
        // Validate the store and its parameters first.
        let store_file = path.join("STORE");
        if !store_file.exists() {
            return Err(Error::BadStore {
                path: path.to_path_buf(),
                reason: "no STORE file".into(),
            });
        }
        let io = open_backend(io_mode).ctx(|| "open I/O back end".to_string())?;
        let packs = LocalPacks::open(&path.join("packs"), io, u64::MAX)?;
        let mut rep = ReindexReport::default();
        let mut chunks: HashMap<ChunkId, (Location, u32)> = HashMap::new();
        let mut files: HashMap<FileId, (FileMeta, Vec<ManifestEntry>, Option<Scope>)> =
            HashMap::new();
        let mut tombs: HashSet<FileId> = HashSet::new();
        for (pack, _) in packs.list()? {
            rep.packs += 1;
            packs.scan(pack, &mut |r| {
                let mut buf = vec![0u8; r.header.len as usize];
                packs.read(pack, r.offset + RECORD_HEADER_LEN, &mut buf)?;
                if blake3::hash(&buf).as_bytes() != &r.header.hash {
                    rep.corrupt_records += 1;
                    return Ok(());
                }
                match r.header.kind {
                    RecordKind::Chunk => {
                        chunks.entry(ChunkId(r.header.hash)).or_insert((
                            Location {
                                pack,
                                offset: r.offset,
                            },
                            r.header.len,
                        ));
                    }
                    RecordKind::Manifest => {
                        if let Some((id, meta, entries, scope)) =
                            index::decode_manifest_record(&buf)
                        {
                            files.insert(id, (meta, entries, scope));
                        } else {
                            rep.corrupt_records += 1;
                        }
                    }
                    RecordKind::Tombstone => {
                        if let Some(id) = index::decode_tombstone(&buf) {
                            tombs.insert(id);
                        }
                    }
                }
                Ok(())
            })?;
        }
        drop(packs);
        let fresh = path.join("index.rebuild");
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh).ctx(|| format!("remove {}", fresh.display()))?;
        }
        {
            let idx = Index::open(&fresh)?;
            let mut refs: HashMap<ChunkId, u32> = HashMap::new();
            let mut scoped: HashMap<(Scope, ChunkId), u32> = HashMap::new();
            let mut wb = WriteBatch::default();
            for (id, (meta, entries, scope)) in &files {
                if tombs.contains(id) {
                    rep.deleted_files += 1;
                    continue;
                }
                rep.files += 1;
                if entries.iter().any(|e| !chunks.contains_key(&e.id)) {
                    rep.incomplete_files.push(*id);
                }
                for c in distinct(entries) {
                    *refs.entry(c).or_default() += 1;
                    if let Some(s) = scope {
                        *scoped.entry((*s, c)).or_default() += 1;
                    }
                }
                if let Some(s) = scope {
                    wb.put_cf(idx.cf(CF_FILE_SCOPES)?, id.0, s.0);
                }
                let mut v = Vec::new();
                meta.encode(&mut v);
                wb.put_cf(idx.cf(CF_FILES)?, id.0, &v);
                let mut m = Vec::new();
                index::encode_entries(entries, &mut m);
                wb.put_cf(idx.cf(CF_MANIFESTS)?, id.0, &m);
                if wb.len() > 10_000 {
                    idx.db.write(std::mem::take(&mut wb))?;
                }
            }
            for ((s, c), n) in &scoped {
                wb.put_cf(idx.cf(CF_SCOPE_CHUNKS)?, scope::key(*s, c), n.to_le_bytes());
                if wb.len() > 10_000 {
                    idx.db.write(std::mem::take(&mut wb))?;
                }
            }
            for (id, (loc, len)) in &chunks {
                rep.chunks += 1;
                let e = ChunkEntry {
                    loc: *loc,
                    len: *len,
                    refs: refs.get(id).copied().unwrap_or(0),
                };
                wb.put_cf(idx.cf(CF_CHUNKS)?, id.0, e.encode());
                if wb.len() > 10_000 {
                    idx.db.write(std::mem::take(&mut wb))?;
                }
            }
            idx.write_sync(wb)?;
            idx.db.flush()?;
        }
        // Swap the rebuilt index in.
        let live = path.join("index");
        let old = path.join("index.old");
        if old.exists() {
            std::fs::remove_dir_all(&old).ctx(|| format!("remove {}", old.display()))?;
        }
        if live.exists() {
            std::fs::rename(&live, &old).ctx(|| "move old index aside".to_string())?;
        }
        std::fs::rename(&fresh, &live).ctx(|| "move rebuilt index in place".to_string())?;
        durable::sync_dir(path)?;
        if old.exists() {
            std::fs::remove_dir_all(&old).ctx(|| format!("remove {}", old.display()))?;
        }
        rep.incomplete_files.sort_unstable();
        Ok(rep)
    }
}
