//! The `PackStore` contract, as one conformance suite every back end runs: today the local
//! pack files over both I/O back ends; the object-store back end will run the same function.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fms_engine::Error;
use fms_engine::io::{IoBackend, StdIo, open_backend};
use fms_engine::pack::{
    LocalPacks, NewRecord, PACK_HEADER_LEN, PackStore, RECORD_HEADER_LEN, RecordHeader, RecordKind,
};

mod common;
use common::{modes, random};

fn record(payload: &[u8]) -> NewRecord<'_> {
    NewRecord {
        kind: RecordKind::Chunk,
        hash: *blake3::hash(payload).as_bytes(),
        payload,
    }
}

/// The contract in docs of `PackStore`, against a store made by `open` (reopenable).
fn conformance(open: &dyn Fn(&Path, u64) -> Arc<dyn PackStore>) {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..40)
        .map(|i| random(i, 10_000 + i as usize * 997))
        .collect();
    let mut locs = Vec::new();
    {
        let packs = open(dir.path(), 150_000);
        // Appends return where each record starts, in order, back to back within a pack.
        for batch in payloads.chunks(3) {
            let records: Vec<_> = batch.iter().map(|p| record(p)).collect();
            let got = packs.append(&records).unwrap();
            assert_eq!(got.len(), batch.len());
            for w in got.windows(2) {
                if w[0].pack == w[1].pack {
                    assert!(w[1].offset > w[0].offset);
                }
            }
            locs.extend(got);
        }
        // The target size rolled appends over to new packs; the newest is active.
        let list = packs.list().unwrap();
        assert!(list.len() >= 3, "{list:?}");
        assert_eq!(packs.active(), list.last().unwrap().0);
        for (l, p) in locs.iter().zip(&payloads) {
            packs.sync(l.pack).unwrap();
            let mut buf = vec![0u8; RECORD_HEADER_LEN as usize + p.len()];
            assert!(packs.read(l.pack, l.offset, &mut buf).unwrap());
            let h = RecordHeader::decode(buf[..48].try_into().unwrap()).unwrap();
            assert_eq!(h, RecordHeader::for_payload(RecordKind::Chunk, p));
            assert_eq!(&buf[48..], &p[..], "read returns exactly what was appended");
        }
        // A scan walks every record of a pack from its start.
        let first = list[0].0;
        let mut seen = Vec::new();
        let end = packs
            .scan(first, &mut |r| {
                seen.push(r.offset);
                Ok(())
            })
            .unwrap();
        assert_eq!(end.problem, None);
        assert_eq!(end.valid_len, end.file_len);
        let want: Vec<u64> = locs
            .iter()
            .filter(|l| l.pack == first)
            .map(|l| l.offset)
            .collect();
        assert_eq!(seen, want);
        assert_eq!(seen.first(), Some(&PACK_HEADER_LEN));
        // Removal: gone for new readers; the active pack cannot be removed.
        packs.remove(first).unwrap();
        let mut buf = vec![0u8; 10];
        assert!(!packs.read(first, PACK_HEADER_LEN, &mut buf).unwrap());
        assert!(packs.remove(packs.active()).is_err());
    }
    // Everything synced survives a reopen; a torn tail is cut and appends go after it.
    let active = {
        let packs = open(dir.path(), 150_000);
        let last = *locs.last().unwrap();
        let p = payloads.last().unwrap();
        let mut buf = vec![0u8; RECORD_HEADER_LEN as usize + p.len()];
        assert!(packs.read(last.pack, last.offset, &mut buf).unwrap());
        assert_eq!(&buf[48..], &p[..]);
        packs.active()
    };
    let path = dir.path().join(format!("{active:08x}.pack"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let packs = open(dir.path(), 150_000);
    let end = packs.scan(active, &mut |_| Ok(())).unwrap();
    assert_eq!((end.problem, end.valid_len), (None, end.file_len));
    let at = packs.append(&[record(b"after the tear")]).unwrap()[0];
    assert_eq!((at.pack, at.offset), (active, end.valid_len));
}

#[test]
fn local_packs_conform_on_every_io_backend() {
    for mode in modes() {
        conformance(&|dir, size| {
            Arc::new(LocalPacks::open(dir, open_backend(mode).unwrap(), size).unwrap())
        });
    }
}

/// Std I/O whose fdatasync can be made to fail.
#[derive(Default)]
struct FailingSync(AtomicBool);

impl IoBackend for FailingSync {
    fn name(&self) -> &'static str {
        "failing-sync"
    }
    fn write_all_at(&self, f: &File, o: u64, b: &[&[u8]]) -> io::Result<()> {
        StdIo.write_all_at(f, o, b)
    }
    fn read_exact_at(&self, f: &File, o: u64, b: &mut [u8]) -> io::Result<()> {
        StdIo.read_exact_at(f, o, b)
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        StdIo.sync_data(f)
    }
}

#[test]
fn a_failed_sync_poisons_the_pack_store() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FailingSync::default());
    let packs = LocalPacks::open(dir.path(), io.clone(), 1 << 20).unwrap();
    let l = packs.append(&[record(b"one")]).unwrap()[0];
    packs.sync(l.pack).unwrap();
    io.0.store(true, Ordering::SeqCst);
    assert!(matches!(packs.sync(l.pack), Err(Error::Poisoned(_))));
    io.0.store(false, Ordering::SeqCst);
    assert!(packs.poisoned().is_some());
    assert!(matches!(
        packs.append(&[record(b"two")]),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(packs.sync(l.pack), Err(Error::Poisoned(_))));
    // Reads still work: what was synced before is intact.
    let mut buf = vec![0u8; 48 + 3];
    assert!(packs.read(l.pack, l.offset, &mut buf).unwrap());
    assert_eq!(&buf[48..], b"one");
}
