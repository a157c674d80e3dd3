//! Scopes and dedup-aware appends: a scope sees only its own files' chunks; an append built
//! from announced chunks (some sent, some taken from the scope's files) commits the right
//! bytes, writes only what is new, survives reindex and verify, and refuses bad input.

mod common;

use bytes::Bytes;
use common::{random, read_all};
use fms_engine::{ChunkId, Chunker, Error, IoMode, Scope, Store};

fn store(dir: &std::path::Path) -> Store {
    Store::builder(dir)
        .create_if_missing(true)
        .io_mode(IoMode::Std)
        .open()
        .unwrap()
}

/// Cut `data` as a client would, with the store's parameters.
fn cut(store: &Store, data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut c = Chunker::new(store.chunk_params());
    let mut emit = |b: Bytes| -> Result<(), ()> {
        out.push(b);
        Ok(())
    };
    c.push(data, &mut emit).unwrap();
    c.finish(&mut emit).unwrap();
    out
}

fn refs(chunks: &[Bytes]) -> Vec<(ChunkId, u32)> {
    chunks
        .iter()
        .map(|c| (ChunkId::of(c), c.len() as u32))
        .collect()
}

/// Upload `data` dedup-aware in `scope`; returns (file, bytes sent).
fn dedup_upload(store: &Store, scope: Scope, data: &[u8]) -> (fms_engine::FileInfo, u64) {
    let s = store.create_session(None).unwrap();
    let mut w = store.session_writer(s.id, 0).unwrap();
    w.set_scope(Some(scope));
    let chunks = cut(store, data);
    let mut sent = 0u64;
    for batch in chunks.chunks(100) {
        let need = w.announce(scope, &refs(batch)).unwrap();
        assert_eq!(need.len(), batch.len());
        w.reuse().unwrap();
        for (c, n) in batch.iter().zip(need) {
            if n {
                w.chunk(c.clone()).unwrap();
                sent += c.len() as u64;
                w.reuse().unwrap();
            }
        }
        assert_eq!(w.announced(), 0);
    }
    (w.finish().unwrap(), sent)
}

#[test]
fn a_scope_sees_only_its_own_files_and_dedup_aware_appends_send_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (alice, bob) = (Scope::named("alice"), Scope::named("bob"));
    assert_ne!(alice, bob);
    let original = random(1, 8 << 20);
    let mut w = store.writer().unwrap();
    w.set_scope(Some(alice));
    w.write(&original).unwrap();
    let first = w.finish().unwrap();
    assert_eq!(store.file_scope(first.id).unwrap(), Some(alice));

    // 10% changed in the middle.
    let mut edited = original.clone();
    let at = edited.len() / 2;
    edited[at..at + (800 << 10)].copy_from_slice(&random(2, 800 << 10));
    let all = refs(&cut(&store, &edited));
    let held_alice = store.scope_holds(alice, &all).unwrap();
    let held_bob = store.scope_holds(bob, &all).unwrap();
    assert!(held_bob.iter().all(|h| !h), "bob holds nothing of alice's");
    let held_bytes: u64 = all
        .iter()
        .zip(&held_alice)
        .filter(|(_, h)| **h)
        .map(|((_, l), _)| *l as u64)
        .sum();
    assert!(
        held_bytes >= edited.len() as u64 * 8 / 10,
        "{held_bytes} of {} held",
        edited.len()
    );

    let (second, sent) = dedup_upload(&store, alice, &edited);
    assert_eq!(read_all(&store, second.id), edited);
    assert_eq!(second.meta.hash, *blake3::hash(&edited).as_bytes());
    assert!(
        sent <= edited.len() as u64 * 15 / 100,
        "sent {sent} of {}",
        edited.len()
    );
    assert!(second.new_bytes <= sent);

    // Bob sends everything, though the store keeps one copy.
    let (third, bob_sent) = dedup_upload(&store, bob, &edited);
    assert_eq!(bob_sent, edited.len() as u64);
    assert_eq!(third.new_bytes, 0, "stored once");
    assert_eq!(read_all(&store, third.id), edited);
    assert!(store.verify().unwrap().is_ok());

    // Deleting alice's files takes her scope's counts back; bob's stay.
    store.delete(first.id).unwrap();
    store.delete(second.id).unwrap();
    assert!(store.scope_holds(alice, &all).unwrap().iter().all(|h| !h));
    assert!(store.scope_holds(bob, &all).unwrap().iter().all(|h| *h));
    assert!(store.verify().unwrap().is_ok());

    // Reindex rebuilds the scopes from the packs.
    drop(store);
    Store::reindex(dir.path(), IoMode::Std).unwrap();
    let store = self::store(dir.path());
    assert!(store.scope_holds(bob, &all).unwrap().iter().all(|h| *h));
    assert!(store.scope_holds(alice, &all).unwrap().iter().all(|h| !h));
    assert_eq!(store.file_scope(third.id).unwrap(), Some(bob));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn dedup_aware_appends_resume_across_checkpoints_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let scope = Scope::named("carol");
    let data = random(3, 4 << 20);
    let mut w = store.writer().unwrap();
    w.set_scope(Some(scope));
    w.write(&data[..2 << 20]).unwrap();
    w.finish().unwrap();
    let chunks = cut(&store, &data);
    let s = store.create_session(None).unwrap();
    let half = chunks.len() / 2;
    let mut w = store.session_writer(s.id, 0).unwrap();
    w.set_scope(Some(scope));
    for c in &chunks[..half] {
        if w.announce(scope, &refs(std::slice::from_ref(c))).unwrap()[0] {
            w.chunk(c.clone()).unwrap();
        }
        w.reuse().unwrap();
    }
    let at = w.checkpoint().unwrap();
    let want: u64 = chunks[..half].iter().map(|c| c.len() as u64).sum();
    assert_eq!(at, want);
    drop(w);
    // A new writer (as after a reconnect) goes on at the acknowledged offset.
    let mut w = store.session_writer(s.id, at).unwrap();
    w.set_scope(Some(scope));
    let need = w.announce(scope, &refs(&chunks[half..])).unwrap();
    w.reuse().unwrap();
    for (c, n) in chunks[half..].iter().zip(need) {
        if n {
            w.chunk(c.clone()).unwrap();
            w.reuse().unwrap();
        }
    }
    let f = w.finish().unwrap();
    assert_eq!(read_all(&store, f.id), data);
    assert_eq!(f.meta.hash, *blake3::hash(&data).as_bytes());
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn bad_announcements_and_chunks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let scope = Scope::named("dave");
    let p = store.chunk_params();
    let data = random(4, 1 << 20);
    let chunks = cut(&store, &data);
    let s = store.create_session(None).unwrap();
    let mut w = store.session_writer(s.id, 0).unwrap();
    // Too long, empty.
    let big = (ChunkId([1; 32]), p.max + 1);
    assert!(matches!(
        w.announce(scope, &[big]),
        Err(Error::BadChunks(_))
    ));
    assert!(matches!(
        w.announce(scope, &[(ChunkId([1; 32]), 0)]),
        Err(Error::BadChunks(_))
    ));
    drop(w);
    // Bytes that are not the announced chunk.
    let mut w = store.session_writer(s.id, 0).unwrap();
    w.announce(scope, &refs(&chunks[..1])).unwrap();
    let wrong = Bytes::from(vec![0u8; chunks[0].len()]);
    assert!(matches!(
        w.chunk(wrong),
        Ok(()) | Err(Error::ChunkMismatch { .. })
    ));
    assert!(matches!(w.checkpoint(), Err(Error::ChunkMismatch { .. })));
    drop(w);
    // Raw bytes while announced chunks are outstanding; length mismatch.
    let mut w = store.session_writer(s.id, 0).unwrap();
    w.announce(scope, &refs(&chunks[..2])).unwrap();
    assert!(matches!(w.write(b"x"), Err(Error::BadChunks(_))));
    assert!(matches!(
        w.chunk(chunks[1].clone()),
        Err(Error::BadChunks(_))
    ));
    drop(w);
    // A short chunk must be the last.
    let mut w = store.session_writer(s.id, 0).unwrap();
    let short = (ChunkId::of(b"ab"), 2);
    w.announce(scope, &[short]).unwrap();
    assert!(matches!(
        w.announce(scope, &refs(&chunks[..1])),
        Err(Error::BadChunks(_))
    ));
    drop(w);
    // Nothing was acknowledged by any of it.
    assert_eq!(store.session(s.id).unwrap().offset, 0);
}
