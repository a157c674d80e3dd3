//! Helpers shared by the engine's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

use fms_engine::{Error, FileId, IoMode, Store};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

pub fn modes() -> Vec<IoMode> {
    let mut v = vec![IoMode::Std];
    match fms_engine::io::open_backend(IoMode::Uring) {
        Ok(_) => v.push(IoMode::Uring),
        Err(e) if std::env::var_os("FMS_REQUIRE_URING").is_some() => {
            panic!("io_uring unavailable: {e}")
        }
        Err(e) => eprintln!("io_uring unavailable here ({e}); testing std I/O only"),
    }
    v
}

pub fn open(dir: &Path, mode: IoMode) -> Store {
    Store::builder(dir).io_mode(mode).open().unwrap()
}

pub fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn read_all(store: &Store, id: FileId) -> Vec<u8> {
    let mut out = Vec::new();
    let size = store.stat_file(id).unwrap().size;
    store.read_to(id, 0, size, &mut out).unwrap();
    out
}

pub fn read_range(store: &Store, id: FileId, a: u64, b: u64) -> Vec<u8> {
    let mut out = Vec::new();
    store.read_to(id, a, b, &mut out).unwrap();
    out
}

/// Packs in a store, oldest first.
pub fn packs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

/// Read a whole file, or the error that stopped the read.
pub fn try_read_all(store: &Store, id: FileId) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let size = store.stat_file(id)?.size;
    store.read_to(id, 0, size, &mut out)?;
    Ok(out)
}
