//! RELIABILITY.md test 6: bit rot. Bits flipped in pack payloads, record headers, pack
//! headers and index values are always detected: no read ever returns wrong bytes, and
//! `verify` reports a problem for every flip and names every file a flip damaged.
//! `FMS_BITROT_FLIPS` sets the number of flips (default 1,000).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::Path;

use fms_engine::{FileId, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type KeyValue = (Box<[u8]>, Box<[u8]>);

mod common;
use common::random;

/// Read every file: each read is either exact or an error. Returns the files that failed.
fn read_everything(store: &Store, files: &HashMap<FileId, Vec<u8>>) -> HashSet<FileId> {
    let mut failed = HashSet::new();
    for (id, want) in files {
        let mut got = Vec::new();
        match store.read_to(*id, 0, want.len() as u64, &mut got) {
            Ok(_) => assert!(got == *want, "file {id}: a read returned wrong bytes"),
            Err(_) => {
                failed.insert(*id);
            }
        }
    }
    failed
}

fn flip(path: &Path, offset: u64, bit: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ (1 << bit)], offset).unwrap();
}

#[test]
fn flipped_bits_are_always_detected() {
    let flips: usize = std::env::var("FMS_BITROT_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let mut files: HashMap<FileId, Vec<u8>> = HashMap::new();
    // Records of each live chunk: (pack, start, end) -> files naming it.
    let mut spans: Vec<(u32, u64, u64, Vec<FileId>)> = Vec::new();
    {
        let store = Store::builder(dir.path())
            .pack_size(1 << 20)
            .open()
            .unwrap();
        let shared = random(1, 300_000);
        let mut rng = SmallRng::seed_from_u64(2);
        for i in 0..24u64 {
            let mut data = random(100 + i, rng.random_range(0..200_000));
            if i % 3 == 0 {
                data.extend_from_slice(&shared); // chunks named by several files
            }
            let info = store.put(&data).unwrap();
            files.insert(info.id, data);
        }
        // A deleted file leaves dead records behind: flips there must be caught too.
        let gone = store.put(&random(999, 100_000)).unwrap();
        store.delete(gone.id).unwrap();
        let mut users: HashMap<fms_engine::ChunkId, Vec<FileId>> = HashMap::new();
        for id in files.keys() {
            for e in store.manifest(*id).unwrap() {
                users.entry(e.id).or_default().push(*id);
            }
        }
        for (c, who) in users {
            let e = store.chunk_entry(&c).unwrap().unwrap();
            spans.push((
                e.loc.pack,
                e.loc.offset,
                e.loc.offset + 48 + e.len as u64,
                who,
            ));
        }
        assert!(store.verify().unwrap().is_ok());
    }
    let packs: Vec<(u32, std::path::PathBuf, u64)> = {
        let mut v: Vec<_> = std::fs::read_dir(dir.path().join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let id = u32::from_str_radix(&p.file_stem().unwrap().to_str().unwrap()[..8], 16)
                    .unwrap();
                let len = std::fs::metadata(&p).unwrap().len();
                (id, p, len)
            })
            .collect();
        v.sort();
        v
    };
    let mut rng = SmallRng::seed_from_u64(3);
    let pack_flips = flips * 9 / 10;
    let per_round = 10;
    let mut detected = 0;
    let mut rounds = 0;
    while detected < pack_flips {
        rounds += 1;
        let mut done = Vec::new();
        let mut hit_files: HashSet<FileId> = HashSet::new();
        for _ in 0..per_round {
            let (id, path, len) = &packs[rng.random_range(0..packs.len())];
            let offset = rng.random_range(0..*len);
            let bit = rng.random_range(0..8u8);
            flip(path, offset, bit);
            done.push((path.clone(), offset, bit));
            for (p, a, b, who) in &spans {
                if p == id && (*a..*b).contains(&offset) {
                    hit_files.extend(who.iter().copied());
                }
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let failed = read_everything(&store, &files);
        assert!(
            hit_files.is_subset(&failed),
            "round {rounds}: a damaged file read back without error"
        );
        let rep = store.verify().unwrap();
        assert!(
            !rep.is_ok(),
            "round {rounds}: verify missed {per_round} flipped bits"
        );
        let named: HashSet<FileId> = rep.damaged_files.iter().copied().collect();
        assert!(
            hit_files.is_subset(&named),
            "round {rounds}: verify did not name every damaged file"
        );
        drop(store);
        for (path, offset, bit) in done.into_iter().rev() {
            flip(&path, offset, bit);
        }
        detected += per_round;
    }

    // Index values: flip a bit in a stored value through RocksDB itself (a logical
    // corruption RocksDB's own block checksums cannot see).
    let index_flips = flips - pack_flips;
    let cfs = ["chunks", "files", "manifests"];
    for n in 0..index_flips {
        let path = dir.path().join("index");
        let (cf_name, key, old) = {
            let mut opts = rocksdb::Options::default();
            opts.create_missing_column_families(true);
            let db = rocksdb::DB::open_cf(
                &opts,
                &path,
                cfs.iter()
                    .chain(["sessions", "file_scopes", "scope_chunks"].iter()),
            )
            .unwrap();
            let cf_name = cfs[n % cfs.len()];
            let cf = db.cf_handle(cf_name).unwrap();
            let all: Vec<KeyValue> = db
                .iterator_cf(cf, rocksdb::IteratorMode::Start)
                .map(|r| r.unwrap())
                .collect();
            let (key, old) = all[rng.random_range(0..all.len())].clone();
            let mut new = old.to_vec();
            let bit = rng.random_range(0..new.len() * 8);
            new[bit / 8] ^= 1 << (bit % 8);
            db.put_cf(cf, &key, &new).unwrap();
            (cf_name, key, old)
        };
        let store = Store::open(dir.path()).unwrap();
        read_everything(&store, &files);
        let rep = store.verify().unwrap();
        assert!(!rep.is_ok(), "index flip {n} in {cf_name} went unnoticed");
        drop(store);
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(
            &opts,
            &path,
            cfs.iter()
                .chain(["sessions", "file_scopes", "scope_chunks"].iter()),
        )
        .unwrap();
        db.put_cf(db.cf_handle(cf_name).unwrap(), &key, &old)
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.verify().unwrap().is_ok(),
        "restoring every flip restores a clean store"
    );
    eprintln!(
        "{pack_flips} pack flips in {rounds} rounds and {index_flips} index flips: all detected"
    );
}
