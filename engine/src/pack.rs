//! Pack files: append-only sequences of self-describing records, and the [`PackStore`] trait
//! the store writes chunks through.
//!
//! On-disk format v1 (little endian), see `docs/design/on-disk-format.md`:
//!
//! ```text
//! pack   := header(32) record*
//! header := "FMSPACK\0" version:u32 pack_id:u32 zero[12] check:u32
//! record := "FMSR" kind:u8 zero[3] len:u32 hash:[32] check:u32 payload[len]
//! ```
//! `hash` is the BLAKE3 of the payload (for a chunk record that is its [`ChunkId`]), `check`
//! is the first four bytes of the BLAKE3 of the preceding header bytes. A reader can walk a
//! pack from its start alone; a torn tail shows as a record that fails its checks.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::io::IoBackend;

pub(crate) const PACK_MAGIC: &[u8; 8] = b"FMSPACK\0";
pub(crate) const PACK_VERSION: u32 = 1;
/// Bytes before the first record of a pack.
pub const PACK_HEADER_LEN: u64 = 32;
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"FMSR";
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: u64 = 48;
/// Largest payload a record may carry (manifests of very large files are the biggest).
pub const MAX_RECORD_PAYLOAD: u32 = 1 << 30;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Chunk bytes; `hash` is the chunk id.
    Chunk = 1,
    /// A committed file's metadata and chunk list (so the index can be rebuilt).
    Manifest = 2,
    /// A deleted file's id.
    Tombstone = 3,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Chunk),
            2 => Some(RecordKind::Manifest),
            3 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub len: u32,
    pub hash: [u8; 32],
}

fn check4(bytes: &[u8]) -> [u8; 4] {
    let h = blake3::hash(bytes);
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.as_bytes()[..4]);
    out
}

impl RecordHeader {
    /// Header for `payload` of `kind`, hashing it.
    pub fn for_payload(kind: RecordKind, payload: &[u8]) -> Self {
        RecordHeader {
            kind,
            len: payload.len() as u32,
            hash: *blake3::hash(payload).as_bytes(),
        }
    }

    /// Encode to the 48 on-disk bytes.
    pub fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[..4].copy_from_slice(RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..44].copy_from_slice(&self.hash);
        let c = check4(&b[..44]);
        b[44..].copy_from_slice(&c);
        b
    }

    /// Decode and check 48 on-disk bytes.
    pub fn decode(b: &[u8; 48]) -> Result<Self, &'static str> {
        let (body, check) = b.split_at(44);
        if body.get(..4) != Some(RECORD_MAGIC.as_slice()) {
            return Err("bad record magic");
        }
        if check != check4(body) {
            return Err("record header checksum mismatch");
        }
        let kind = body
            .get(4)
            .copied()
            .and_then(RecordKind::from_u8)
            .ok_or("unknown record kind")?;
        let mut len = [0u8; 4];
        len.copy_from_slice(body.get(8..12).ok_or("short header")?);
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD_PAYLOAD {
            return Err("record length too large");
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(body.get(12..44).ok_or("short header")?);
        Ok(RecordHeader { kind, len, hash })
    }

    /// Whole record size on disk.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN + self.len as u64
    }
}

pub(crate) fn encode_pack_header(id: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(PACK_MAGIC);
    b[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&id.to_le_bytes());
    let c = check4(&b[..28]);
    b[28..].copy_from_slice(&c);
    b
}

fn decode_pack_header(b: &[u8; 32], id: u32) -> Result<(), &'static str> {
    if b.get(..8) != Some(PACK_MAGIC.as_slice()) {
        return Err("bad pack magic");
    }
    if b.get(28..) != Some(check4(&b[..28]).as_slice()) {
        return Err("pack header checksum mismatch");
    }
    if b.get(8..12) != Some(PACK_VERSION.to_le_bytes().as_slice()) {
        return Err("unsupported pack version");
    }
    if b.get(12..16) != Some(id.to_le_bytes().as_slice()) {
        return Err("pack id does not match file name");
    }
    Ok(())
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Pack number.
    pub pack: u32,
    /// Offset of the record header in the pack.
    pub offset: u64,
}

/// A record to append: its header fields and payload.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub kind: RecordKind,
    /// Hash of the payload, already computed by the caller.
    pub hash: [u8; 32],
    pub payload: &'a [u8],
}

/// One record found while scanning a pack.
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub offset: u64,
    pub header: RecordHeader,
}

/// The end of a scan: where valid records stop and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset just past the last valid record.
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// Why the scan stopped before `file_len`, if it did.
    pub problem: Option<String>,
}

/// Storage for pack files.
///
/// Contract:
/// - `append` writes whole records after all earlier ones; the bytes are not durable until a
///   later `sync` of that pack returns Ok.
/// - After a failed `sync` the store is poisoned: every later `append` and `sync` fails with
///   [`Error::Poisoned`], since the kernel may have dropped the unsynced pages.
/// - `read` returns exactly the bytes written at that location or an error, never other bytes
///   (callers verify hashes on top).
/// - A removed pack is gone for new readers; readers that already hold it finish their reads.
/// - Readers never see a partially written pack header: a pack exists once it is durable.
pub trait PackStore: Send + Sync {
    /// Append records to the active pack. Returns where each record starts.
    fn append(&self, records: &[NewRecord<'_>]) -> Result<Vec<Location>>;
    /// Make every record appended so far to `pack` durable.
    fn sync(&self, pack: u32) -> Result<()>;
    /// Read `buf.len()` bytes at `offset` in `pack`. `Ok(false)` if the pack no longer exists.
    fn read(&self, pack: u32, offset: u64, buf: &mut [u8]) -> Result<bool>;
    /// All packs and their lengths, ascending by id.
    fn list(&self) -> Result<Vec<(u32, u64)>>;
    /// The pack new records go to.
    fn active(&self) -> u32;
    /// Remove a pack (not the active one).
    fn remove(&self, pack: u32) -> Result<()>;
    /// Walk the records of a pack from its start, calling `f` for each valid one.
    fn scan(&self, pack: u32, f: &mut dyn FnMut(&ScannedRecord) -> Result<()>) -> Result<ScanEnd>;
    /// The I/O back end's name.
    fn io_name(&self) -> &'static str;
    /// Why writes are refused, if they are.
    fn poisoned(&self) -> Option<String>;
}

struct Active {
    id: u32,
    file: Arc<File>,
    len: u64,
    /// Where the bytes whose writeback has not been started yet begin.
    unstarted: u64,
}

/// Appended bytes after which their writeback to disk is started (not waited for), so the
/// sync that makes them durable finds most of them written already.
const START_WRITEBACK: u64 = 1 << 20;

/// Packs as files `packs/NNNNNNNN.pack` on a local volume.
pub struct LocalPacks {
    dir: PathBuf,
    io: Arc<dyn IoBackend>,
    target_size: u64,
    files: RwLock<HashMap<u32, Arc<File>>>,
    /// The pack appends go to; `None` only while `open` recovers the newest pack.
    active: Mutex<Option<Active>>,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
}

impl std::fmt::Debug for LocalPacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPacks")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn pack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.pack"))
}

fn parse_pack_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".pack")?;
    if stem.len() != 8 {
        return None;
    }
    u32::from_str_radix(stem, 16).ok()
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx(|| format!("open {}", path.display()))
}

impl LocalPacks {
    /// Open (creating if needed) the pack directory. The newest pack's torn tail, if any, is
    /// cut off after the last valid record, so the next append lands right after it.
    pub fn open(dir: &Path, io: Arc<dyn IoBackend>, target_size: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let mut ids: Vec<u32> = Vec::new();
        for entry in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(parse_pack_name) {
                ids.push(id);
            } else if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                durable::remove_durable(&entry.path())?;
            }
        }
        ids.sort_unstable();
        let mut files = HashMap::new();
        for &id in &ids {
            files.insert(id, Arc::new(open_rw(&pack_path(dir, id))?));
        }
        let packs = LocalPacks {
            dir: dir.to_path_buf(),
            io,
            target_size,
            files: RwLock::new(files),
            active: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
        };
        let active = match ids.last().copied() {
            None => packs.create_pack(1)?,
            Some(id) => packs.recover_tail(id)?,
        };
        *packs.active.lock().map_err(|_| lock_err())? = Some(active);
        Ok(packs)
    }

    /// Make the newest pack usable: a bad header means it was being created when the process
    /// died (recreate it); otherwise truncate after its last valid record.
    fn recover_tail(&self, id: u32) -> Result<Active> {
        let path = pack_path(&self.dir, id);
        let file = self
            .file(id)
            .ok_or_else(|| Error::Config(format!("pack {id} vanished")))?;
        let mut hdr = [0u8; 32];
        let header_ok = self.io.read_exact_at(&file, 0, &mut hdr).is_ok()
            && decode_pack_header(&hdr, id).is_ok();
        if !header_ok {
            let len = file
                .metadata()
                .ctx(|| format!("stat {}", path.display()))?
                .len();
            if len <= PACK_HEADER_LEN {
                // Created but its header never became durable: nothing was ever in it.
                tracing::warn!(pack = id, "newest pack has no valid header; recreating it");
                self.files.write().map_err(|_| lock_err())?.remove(&id);
                durable::remove_durable(&path)?;
                return self.create_pack(id);
            }
            // A damaged header on a pack with records: never touch its data (verify reports
            // it; reads locate records by offset); new records go to a fresh pack.
            tracing::error!(
                pack = id,
                "newest pack has a damaged header; leaving it as is"
            );
            let next = id
                .checked_add(1)
                .ok_or_else(|| Error::Config("pack ids exhausted".into()))?;
            return self.create_pack(next);
        }
        let end = self.scan_file(id, &file, &mut |_| Ok(()))?;
        if end.valid_len < end.file_len {
            tracing::warn!(
                pack = id,
                valid = end.valid_len,
                len = end.file_len,
                problem = end.problem.as_deref().unwrap_or(""),
                "cutting torn tail off the newest pack"
            );
            file.set_len(end.valid_len)
                .ctx(|| format!("truncate {}", path.display()))?;
            file.sync_all()
                .ctx(|| format!("fsync {}", path.display()))?;
        }
        Ok(Active {
            id,
            file,
            len: end.valid_len,
            unstarted: end.valid_len,
        })
    }

    fn create_pack(&self, id: u32) -> Result<Active> {
        let path = pack_path(&self.dir, id);
        let file = Arc::new(durable::create_new_durable(&path, &encode_pack_header(id))?);
        self.files
            .write()
            .map_err(|_| lock_err())?
            .insert(id, file.clone());
        Ok(Active {
            id,
            file,
            len: PACK_HEADER_LEN,
            unstarted: PACK_HEADER_LEN,
        })
    }

    fn file(&self, id: u32) -> Option<Arc<File>> {
        self.files.read().ok()?.get(&id).cloned()
    }

    fn poison(&self, why: String) -> Error {
        self.poisoned.store(true, Ordering::SeqCst);
        if let Ok(mut r) = self.poison_reason.lock() {
            r.get_or_insert(why.clone());
        }
        tracing::error!(reason = %why, "pack store poisoned: refusing further writes");
        Error::Poisoned(why)
    }

    fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned(self.poisoned().unwrap_or_default()));
        }
        Ok(())
    }

    fn scan_file(
        &self,
        id: u32,
        file: &File,
        f: &mut dyn FnMut(&ScannedRecord) -> Result<()>,
    ) -> Result<ScanEnd> {
        let file_len = file.metadata().ctx(|| format!("stat pack {id}"))?.len();
        let mut offset = PACK_HEADER_LEN;
        let mut problem = None;
        while offset < file_len {
            if file_len - offset < RECORD_HEADER_LEN {
                problem = Some(format!(
                    "{} trailing bytes shorter than a record header",
                    file_len - offset
                ));
                break;
            }
            let mut hb = [0u8; 48];
            self.io
                .read_exact_at(file, offset, &mut hb)
                .ctx(|| format!("read pack {id} at {offset}"))?;
            let header = match RecordHeader::decode(&hb) {
                Ok(h) => h,
                Err(why) => {
                    problem = Some(format!("{why} at offset {offset}"));
                    break;
                }
            };
            if offset + header.record_len() > file_len {
                problem = Some(format!(
                    "record at offset {offset} runs past the end of the pack"
                ));
                break;
            }
            f(&ScannedRecord { offset, header })?;
            offset += header.record_len();
        }
        Ok(ScanEnd {
            valid_len: offset.min(file_len),
            file_len,
            problem,
        })
    }
}

fn lock_err() -> Error {
    Error::Internal("a pack lock was poisoned by a panic")
}

impl PackStore for LocalPacks {
    fn append(&self, records: &[NewRecord<'_>]) -> Result<Vec<Location>> {
        self.check_poison()?;
        let total: u64 = records
            .iter()
            .map(|r| RECORD_HEADER_LEN + r.payload.len() as u64)
            .sum();
        let mut guard = self.active.lock().map_err(|_| lock_err())?;
        let active = guard.as_mut().ok_or(Error::Internal("no active pack"))?;
        if active.len > PACK_HEADER_LEN && active.len + total > self.target_size {
            // Seal: everything written to the old pack becomes durable before the next one
            // exists, so only the newest pack can ever have a torn tail.
            if let Err(e) = self.io.sync_data(&active.file) {
                return Err(self.poison(format!("fdatasync pack {}: {e}", active.id)));
            }
            let next = active
                .id
                .checked_add(1)
                .ok_or_else(|| Error::Config("pack ids exhausted".into()))?;
            *active = self.create_pack(next)?;
        }
        let headers: Vec<[u8; 48]> = records
            .iter()
            .map(|r| {
                RecordHeader {
                    kind: r.kind,
                    len: r.payload.len() as u32,
                    hash: r.hash,
                }
                .encode()
            })
            .collect();
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(records.len() * 2);
        let mut locs = Vec::with_capacity(records.len());
        let mut at = active.len;
        for (h, r) in headers.iter().zip(records) {
            bufs.push(h);
            bufs.push(r.payload);
            locs.push(Location {
                pack: active.id,
                offset: at,
            });
            at += RECORD_HEADER_LEN + r.payload.len() as u64;
        }
        match self.io.write_all_at(&active.file, active.len, &bufs) {
            Ok(()) => {
                active.len = at;
                if at - active.unstarted >= START_WRITEBACK {
                    crate::io::start_writeback(
                        &active.file,
                        active.unstarted,
                        at - active.unstarted,
                    );
                    active.unstarted = at;
                }
                crate::failpoint::hit("pack.after_append");
                Ok(locs)
            }
            Err(e) => {
                // Cut off whatever part was written so the next append starts clean.
                let _ = active.file.set_len(active.len);
                Err(Error::io(format!("append to pack {}", active.id), e))
            }
        }
    }

    fn sync(&self, pack: u32) -> Result<()> {
        self.check_poison()?;
        let Some(file) = self.file(pack) else {
            return Ok(()); // removed by compaction: its live records were copied and synced
        };
        self.io
            .sync_data(&file)
            .map_err(|e| self.poison(format!("fdatasync pack {pack}: {e}")))?;
        crate::failpoint::hit("pack.after_sync");
        Ok(())
    }

    fn read(&self, pack: u32, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let Some(file) = self.file(pack) else {
            return Ok(false);
        };
        self.io
            .read_exact_at(&file, offset, buf)
            .ctx(|| format!("read pack {pack} at offset {offset}"))?;
        Ok(true)
    }

    fn list(&self) -> Result<Vec<(u32, u64)>> {
        let files: Vec<(u32, Arc<File>)> = self
            .files
            .read()
            .map_err(|_| lock_err())?
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for (id, f) in files {
            out.push((id, f.metadata().ctx(|| format!("stat pack {id}"))?.len()));
        }
        out.sort_unstable();
        Ok(out)
    }

    fn active(&self) -> u32 {
        self.active
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.id))
            .unwrap_or(0)
    }

    fn remove(&self, pack: u32) -> Result<()> {
        if pack == self.active() {
            return Err(Error::Config("cannot remove the active pack".into()));
        }
        self.files.write().map_err(|_| lock_err())?.remove(&pack);
        durable::remove_durable(&pack_path(&self.dir, pack))
    }

    fn scan(&self, pack: u32, f: &mut dyn FnMut(&ScannedRecord) -> Result<()>) -> Result<ScanEnd> {
        let file = self
            .file(pack)
            .ok_or_else(|| Error::Config(format!("pack {pack} does not exist")))?;
        let mut hdr = [0u8; 32];
        self.io
            .read_exact_at(&file, 0, &mut hdr)
            .ctx(|| format!("read header of pack {pack}"))?;
        if let Err(why) = decode_pack_header(&hdr, pack) {
            let len = file.metadata().ctx(|| format!("stat pack {pack}"))?.len();
            return Ok(ScanEnd {
                valid_len: 0,
                file_len: len,
                problem: Some(why.to_string()),
            });
        }
        self.scan_file(pack, &file, f)
    }

    fn io_name(&self) -> &'static str {
        self.io.name()
    }

    fn poisoned(&self) -> Option<String> {
        if !self.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        self.poison_reason.lock().ok().and_then(|r| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_header_round_trips(kind in 1u8..4, len in 0u32..MAX_RECORD_PAYLOAD, hash in any::<[u8; 32]>()) {
            let h = RecordHeader { kind: RecordKind::from_u8(kind).unwrap(), len, hash };
            prop_assert_eq!(RecordHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn header_decoder_survives_arbitrary_bytes(b in any::<[u8; 32]>(), c in any::<[u8; 16]>()) {
            let mut h = [0u8; 48];
            h[..32].copy_from_slice(&b);
            h[32..].copy_from_slice(&c);
            let _ = RecordHeader::decode(&h);
            let _ = decode_pack_header(&b, 1);
        }

        #[test]
        fn any_flipped_header_bit_is_detected(bit in 0usize..(48 * 8)) {
            let h = RecordHeader::for_payload(RecordKind::Chunk, b"payload");
            let mut b = h.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(RecordHeader::decode(&b).is_err());
        }
    }

    #[test]
    fn pack_names() {
        assert_eq!(parse_pack_name("0000001f.pack"), Some(31));
        assert_eq!(parse_pack_name("1f.pack"), None);
        assert_eq!(parse_pack_name("0000001f.tmp"), None);
    }
}
