//! Fault injection (RELIABILITY.md tests 3, 5, 8): a wrapping I/O back end that fails syncs,
//! runs out of space, fails reads, or "loses power" (drops every byte not yet synced), and
//! compaction racing with writers that deduplicate against the chunks being compacted.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fms_engine::io::{IoBackend, StdIo};
use fms_engine::{Error, FileId, Store};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

mod common;
use common::{random, try_read_all as read_all};

/// Std I/O that can be told to fail, and that remembers which written ranges are not yet
/// synced so a test can throw them away as a power loss would.
#[derive(Default)]
struct FaultyIo {
    fail_sync: AtomicBool,
    enospc: AtomicBool,
    fail_read: AtomicBool,
    unsynced: Mutex<HashMap<PathBuf, Vec<(u64, u64)>>>,
}

fn path_of(f: &File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap_or_default()
}

impl IoBackend for FaultyIo {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn write_all_at(&self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        if self.enospc.load(Ordering::SeqCst) {
            // Part of the data lands before the device fills up.
            if let Some(first) = bufs.first() {
                let _ = file.write_all_at(&first[..first.len() / 2], offset);
            }
            return Err(io::Error::from_raw_os_error(28));
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.unsynced
            .lock()
            .unwrap()
            .entry(path_of(file))
            .or_default()
            .push((offset, len as u64));
        StdIo.write_all_at(file, offset, bufs)
    }
    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.fail_read.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        StdIo.read_exact_at(file, offset, buf)
    }
    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        StdIo.sync_data(file)?;
        self.unsynced.lock().unwrap().remove(&path_of(file));
        Ok(())
    }
}

impl FaultyIo {
    /// Lose every unsynced range: each is zeroed, filled with garbage, or the file is cut
    /// at its start — what a power loss may leave of pages the kernel had not written back.
    fn lose_power(&self, rng: &mut SmallRng) -> usize {
        let mut lost = 0;
        for (path, ranges) in self.unsynced.lock().unwrap().drain() {
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            let cut_at = ranges.iter().map(|r| r.0).min().unwrap_or(0);
            match rng.random_range(0..3) {
                0 => f.set_len(cut_at).unwrap(),
                1 => {
                    for (o, l) in &ranges {
                        f.write_all_at(&vec![0u8; *l as usize], *o).unwrap();
                    }
                }
                _ => {
                    for (o, l) in &ranges {
                        let mut junk = vec![0u8; *l as usize];
                        rng.fill_bytes(&mut junk);
                        f.write_all_at(&junk, *o).unwrap();
                    }
                }
            }
            lost += ranges.len();
        }
        lost
    }
}

#[test]
fn power_loss_never_loses_an_acknowledged_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<FileId, [u8; 32]> = HashMap::new();
    let mut deleted: HashSet<FileId> = HashSet::new();
    let mut rng = SmallRng::seed_from_u64(42);
    let mut lost_total = 0;
    for round in 0..25u64 {
        let io = Arc::new(FaultyIo::default());
        let store = Store::builder(dir.path())
            .io_backend(io.clone())
            .pack_size(2 << 20)
            .open()
            .unwrap();
        // Everything acknowledged before must be intact.
        for (id, hash) in &acked {
            let data =
                read_all(&store, *id).unwrap_or_else(|e| panic!("round {round}: {id} lost: {e}"));
            assert_eq!(blake3::hash(&data).as_bytes(), hash);
        }
        for id in &deleted {
            assert!(matches!(store.stat_file(*id), Err(Error::NotFound(_))));
        }
        let rep = store.verify().unwrap();
        assert!(rep.is_ok(), "round {round}: {:?}", rep.problems);
        for op in 0..rng.random_range(1..8) {
            match rng.random_range(0..10) {
                0 if !acked.is_empty() => {
                    let id = *acked.keys().next().unwrap();
                    store.delete(id).unwrap();
                    acked.remove(&id);
                    deleted.insert(id);
                }
                1 => {
                    store.gc().unwrap();
                }
                _ => {
                    // Half the uploads repeat earlier content (dedup against older packs).
                    let seed = if rng.random_bool(0.5) {
                        rng.random_range(0..4)
                    } else {
                        1000 + round * 10 + op
                    };
                    let data = random(seed, rng.random_range(0..600_000));
                    let info = store.put(&data).unwrap();
                    acked.insert(info.id, info.meta.hash);
                }
            }
        }
        // An upload in flight when the power goes: written, never committed.
        let mut w = store.writer().unwrap();
        w.write(&random(round + 5000, 5 << 20)).unwrap();
        drop(w);
        drop(store);
        lost_total += io.lose_power(&mut rng);
    }
    assert!(lost_total > 0, "the test never dropped unsynced data");
}

#[test]
fn failed_fsync_poisons_the_store_and_nothing_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let store = Store::builder(dir.path())
        .io_backend(io.clone())
        .open()
        .unwrap();
    let good = store.put(&random(1, 300_000)).unwrap();
    io.fail_sync.store(true, Ordering::SeqCst);
    let err = store.put(&random(2, 300_000)).unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert_eq!(
        store.list().unwrap().len(),
        1,
        "the failed upload must not be visible"
    );
    // Healthy again, but the store still refuses: the kernel may have dropped pages.
    io.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(store.put(b"more"), Err(Error::Poisoned(_))));
    assert!(matches!(store.writer(), Err(Error::Poisoned(_))));
    assert_eq!(
        read_all(&store, good.id).unwrap(),
        random(1, 300_000),
        "reads still work"
    );
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read_all(&store, good.id).unwrap(), random(1, 300_000));
    store.put(b"after reopen").unwrap();
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn out_of_space_fails_cleanly_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let store = Store::builder(dir.path())
        .io_backend(io.clone())
        .open()
        .unwrap();
    let a = store.put(&random(1, 500_000)).unwrap();
    io.enospc.store(true, Ordering::SeqCst);
    let err = store.put(&random(2, 5 << 20)).unwrap_err();
    assert!(matches!(err, Error::NoSpace), "{err}");
    assert!(err.is_retryable());
    io.enospc.store(false, Ordering::SeqCst);
    let b = store.put(&random(3, 700_000)).unwrap();
    assert_eq!(read_all(&store, a.id).unwrap(), random(1, 500_000));
    assert_eq!(read_all(&store, b.id).unwrap(), random(3, 700_000));
    assert_eq!(store.list().unwrap().len(), 2);
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
}

#[test]
fn read_errors_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::default());
    let store = Store::builder(dir.path())
        .io_backend(io.clone())
        .open()
        .unwrap();
    let a = store.put(&random(1, 500_000)).unwrap();
    io.fail_read.store(true, Ordering::SeqCst);
    let err = read_all(&store, a.id).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    io.fail_read.store(false, Ordering::SeqCst);
    assert_eq!(read_all(&store, a.id).unwrap(), random(1, 500_000));
}

/// Writers keep deduplicating against chunks that deletes just made dead, while GC compacts
/// with the most eager threshold and readers read: nothing live may be lost.
#[test]
fn compaction_under_concurrent_dedup_reads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .pack_size(1 << 20)
        .gc_dead_ratio(0.05)
        .open()
        .unwrap();
    let blocks: Vec<Vec<u8>> = (0..6).map(|i| random(10 + i, 200_000)).collect();
    let live: Mutex<HashMap<FileId, Vec<u8>>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    let gc_passes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u64)
            .map(|t| {
                let (store, blocks, live) = (&store, &blocks, &live);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(t);
                    for i in 0..60u64 {
                        let mut data = blocks[rng.random_range(0..blocks.len())].clone();
                        data.extend_from_slice(&blocks[rng.random_range(0..blocks.len())]);
                        data.extend_from_slice(&random(t * 1000 + i, rng.random_range(0..50_000)));
                        let info = store.put(&data).unwrap();
                        let mut l = live.lock().unwrap();
                        l.insert(info.id, data);
                        // Delete about half, so chunks keep dying and being revived by dedup.
                        if rng.random_bool(0.5) {
                            let victim = *l.keys().nth(rng.random_range(0..l.len())).unwrap();
                            l.remove(&victim);
                            drop(l);
                            store.delete(victim).unwrap();
                        }
                    }
                })
            })
            .collect();
        {
            let (store, live, stop) = (&store, &live, &stop);
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(99);
                while !stop.load(Ordering::SeqCst) {
                    let pick = {
                        let l = live.lock().unwrap();
                        if l.is_empty() {
                            None
                        } else {
                            l.iter()
                                .nth(rng.random_range(0..l.len()))
                                .map(|(k, v)| (*k, v.clone()))
                        }
                    };
                    if let Some((id, data)) = pick {
                        match read_all(store, id) {
                            Ok(back) => assert!(back == data, "read wrong bytes for {id}"),
                            Err(Error::NotFound(_)) => {} // deleted meanwhile
                            Err(e) => panic!("read of {id} failed: {e}"),
                        }
                    }
                }
            });
        }
        {
            let (store, stop, gc_passes) = (&store, &stop, &gc_passes);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = store.gc().unwrap();
                    if r.packs_compacted > 0 {
                        gc_passes.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        }
        let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        stop.store(true, Ordering::SeqCst);
        for r in results {
            r.unwrap();
        }
    });
    assert!(
        gc_passes.load(Ordering::SeqCst) > 0,
        "no pack was compacted while writers ran"
    );
    for _ in 0..2 {
        store.gc().unwrap();
    }
    for (id, data) in live.lock().unwrap().iter() {
        assert!(read_all(&store, *id).unwrap() == *data);
    }
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    let s = store.stats().unwrap();
    assert!(
        s.dead_bytes as f64 <= 0.05 * s.stored_bytes as f64 + (2 << 20) as f64,
        "{s:?}"
    );
}
