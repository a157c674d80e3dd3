//! On-disk format v1 fixture: a store written by this version (packs and STORE only; the
//! RocksDB index is rebuilt from them), committed so later versions must keep reading it.
//! Regenerate with `FMS_WRITE_FIXTURES=1 cargo test -p fms-engine --test format_v1` only when
//! the format version changes.

use std::path::{Path, PathBuf};

use fms_engine::{ChunkParams, Error, IoMode, Store};

const SMALL: ChunkParams = ChunkParams {
    min: 256,
    avg: 1024,
    max: 4096,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// The files the fixture holds, by content.
fn expected() -> Vec<Vec<u8>> {
    vec![
        b"hello, fms".to_vec(),
        Vec::new(),
        content(60_000, 7),
        [content(20_000, 7), content(5_000, 8)].concat(),
    ]
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to.join("packs")).unwrap();
    std::fs::copy(fixture().join("STORE"), to.join("STORE")).unwrap();
    for e in std::fs::read_dir(fixture().join("packs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("packs").join(e.file_name())).unwrap();
    }
}

#[test]
fn write_fixture_when_asked() {
    if std::env::var_os("FMS_WRITE_FIXTURES").is_none() {
        return;
    }
    let dir = fixture();
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::builder(&dir).chunk_params(SMALL).open().unwrap();
    let gone = store.put(&content(3_000, 99)).unwrap();
    for f in expected() {
        store.put(&f).unwrap();
    }
    store.delete(gone.id).unwrap();
    drop(store);
    std::fs::remove_dir_all(dir.join("index")).unwrap();
}

#[test]
fn v1_fixture_reads_back_after_reindex() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let rep = Store::reindex(tmp.path(), IoMode::Std).unwrap();
    assert_eq!(
        (rep.files, rep.deleted_files, rep.corrupt_records),
        (4, 1, 0)
    );
    let store = Store::builder(tmp.path())
        .chunk_params(SMALL)
        .open()
        .unwrap();
    let mut got: Vec<Vec<u8>> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, meta)| {
            let mut out = Vec::new();
            store.read_to(id, 0, meta.size, &mut out).unwrap();
            assert_eq!(*blake3::hash(&out).as_bytes(), meta.hash);
            out
        })
        .collect();
    let mut want = expected();
    got.sort();
    want.sort();
    assert!(got == want, "fixture content changed");
    // The last file shares its first 20,000 bytes with the third: dedup across files.
    let s = store.stats().unwrap();
    assert!(s.live_chunk_bytes < s.logical_bytes);
    assert!(store.verify().unwrap().is_ok());
    // Opening it with other chunking parameters is refused.
    drop(store);
    assert!(matches!(Store::open(tmp.path()).map(|s| s.chunk_params()), Ok(p) if p == SMALL));
    assert!(matches!(
        Store::builder(tmp.path())
            .chunk_params(ChunkParams::default())
            .open(),
        Err(Error::ParamsMismatch { .. })
    ));
}

#[test]
fn v1_fixture_damaged_variants() {
    use std::os::unix::fs::FileExt;
    // A flipped payload byte: reindex skips the record and names the incomplete file.
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let pack = tmp.path().join("packs/00000001.pack");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let at = 32 + 48 + 100; // inside the first record's payload
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
    let rep = Store::reindex(tmp.path(), IoMode::Std).unwrap();
    assert_eq!(rep.corrupt_records, 1);
    // The first record belongs to the deleted file, so no live file is incomplete.
    assert!(rep.incomplete_files.is_empty(), "{rep:?}");
    // A torn tail: everything before it still reads.
    let tmp2 = tempfile::tempdir().unwrap();
    copy_fixture(tmp2.path());
    let pack2 = tmp2.path().join("packs/00000001.pack");
    let len = std::fs::metadata(&pack2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack2)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let rep = Store::reindex(tmp2.path(), IoMode::Std).unwrap();
    // The last record (the tombstone) is gone: the deleted file comes back, whole.
    assert_eq!((rep.files, rep.deleted_files), (5, 0), "{rep:?}");
    let store = Store::open(tmp2.path()).unwrap();
    assert!(store.verify().unwrap().is_ok());
}
