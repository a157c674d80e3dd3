//! Upload sessions keep exact refcounts whatever repeats across their appends: sessions list
//! the chunks they hold as member keys (opening one reads its header only), and sessions
//! written before member keys existed (no marker) still work from their chunk lists.

mod common;

use common::{random, read_all};
use fms_engine::{IoMode, Store};

fn store(dir: &std::path::Path) -> Store {
    Store::builder(dir)
        .create_if_missing(true)
        .io_mode(IoMode::Std)
        .open()
        .unwrap()
}

/// Four appends whose content repeats itself and an earlier file: every checkpoint and the
/// finish leave refcounts that `verify` recounts exactly; aborting another releases all.
#[test]
fn repeated_content_across_appends_keeps_exact_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let a = random(1, 3 << 20);
    let b = random(2, 2 << 20);
    store.put(&a).unwrap();
    let s = store.create_session(None).unwrap();
    let mut offset = 0;
    let mut whole = Vec::new();
    for part in [&a, &b, &a, &b] {
        let mut w = store.session_writer(s.id, offset).unwrap();
        w.write(part).unwrap();
        offset = w.checkpoint().unwrap();
        drop(w);
        whole.extend_from_slice(part);
        let rep = store.verify().unwrap();
        assert!(rep.is_ok(), "{:?}", rep.problems);
    }
    let f = store
        .session_writer(s.id, offset)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(read_all(&store, f.id), whole);
    assert!(store.verify().unwrap().is_ok());

    let s2 = store.create_session(None).unwrap();
    let mut w = store.session_writer(s2.id, 0).unwrap();
    w.write(&b).unwrap();
    w.write(&random(3, 1 << 20)).unwrap();
    w.checkpoint().unwrap();
    drop(w);
    store.abort_session(s2.id).unwrap();
    assert!(store.verify().unwrap().is_ok());
    store.delete(f.id).unwrap();
    store.gc().unwrap();
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
}

/// A session without member keys (as written before they existed) is appended to and
/// finished correctly.
#[test]
fn sessions_without_member_keys_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = random(4, 3 << 20);
    let (sid, offset) = {
        let store = store(dir.path());
        let s = store.create_session(None).unwrap();
        let mut w = store.session_writer(s.id, 0).unwrap();
        w.write(&a).unwrap();
        let offset = w.checkpoint().unwrap();
        (s.id, offset)
    };
    // Remove the marker and the member keys, as an older version would have left it.
    {
        let path = dir.path().join("index");
        let cfs = [
            "chunks",
            "files",
            "manifests",
            "sessions",
            "file_scopes",
            "scope_chunks",
        ];
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let cf = db.cf_handle("sessions").unwrap();
        let keys: Vec<Box<[u8]>> = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|r| r.unwrap().0)
            .filter(|k| k.len() > 16 && k[16] >= 0xFE && k[..16] == sid.0)
            .collect();
        assert!(keys.len() > 1, "a marker and member keys were written");
        for k in keys {
            db.delete_cf(cf, k).unwrap();
        }
    }
    let store = store(dir.path());
    let mut w = store.session_writer(sid, offset).unwrap();
    w.write(&a).unwrap();
    let f = w.finish().unwrap();
    assert_eq!(read_all(&store, f.id), [a.as_slice(), &a].concat());
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    store.delete(f.id).unwrap();
    store.gc().unwrap();
    assert_eq!(store.stats().unwrap().live_chunk_bytes, 0);
}
