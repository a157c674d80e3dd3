//! RELIABILITY.md test 1: random SIGKILL during ingest. The child (`fms-torture ingest`)
//! prints what it acknowledged; after each kill the store is reopened here and checked:
//! G1 every acknowledged file reads back with its hash, G2 every visible file is whole,
//! G3 verify passes, G4 refcounts exact (part of verify), sessions resume at an offset no
//! smaller than the acknowledged one, and reopening takes under 5 s.
//!
//! `FMS_CRASH_ITERS` sets the number of kills (default 50; the `--long` mode of the test
//! script runs thousands).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fms_engine::{Error, FileId, SessionId, Store};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn read_all(store: &Store, id: FileId) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let size = store.stat_file(id)?.size;
    store.read_to(id, 0, size, &mut out)?;
    Ok(out)
}

/// A numeric test knob from the environment; a value that does not parse is an error, not
/// a silent fall-back to the default.
fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[derive(Default)]
struct Oracle {
    acked: HashMap<FileId, ([u8; 32], u64)>,
    /// Sessions: (content seed, length, acknowledged offset).
    sessions: HashMap<SessionId, (u64, usize, u64)>,
}

impl Oracle {
    fn take(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ACK", id, hash, size] => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(hash, &mut h).unwrap();
                self.acked
                    .insert(id.parse().unwrap(), (h, size.parse().unwrap()));
            }
            // A delete in flight may or may not have happened; a finished one has.
            ["DELETING", id] | ["DELETED", id] => {
                self.acked.remove(&id.parse().unwrap());
            }
            ["SESSION", sid, seed, len, at] => {
                self.sessions.insert(
                    sid.parse().unwrap(),
                    (
                        seed.parse().unwrap(),
                        len.parse().unwrap(),
                        at.parse().unwrap(),
                    ),
                );
            }
            ["SESSIONDONE", sid] => {
                self.sessions.remove(&sid.parse().unwrap());
            }
            _ => panic!("unexpected line from the child: {line:?}"),
        }
    }
}

/// Reopen the store and check G1-G4 against the oracle; resume and finish every session the
/// child acknowledged; drop the sessions it never acknowledged.
fn check(dir: &std::path::Path, oracle: &mut Oracle, at: &str) -> Duration {
    let t = Instant::now();
    let store = Store::open(dir).unwrap_or_else(|e| panic!("{at}: reopen failed: {e}"));
    let reopen = t.elapsed();
    // G1: every acknowledged file is there, bit-exact.
    for (id, (hash, size)) in &oracle.acked {
        let data = read_all(&store, *id)
            .unwrap_or_else(|e| panic!("{at}: acknowledged {id} unreadable: {e}"));
        assert_eq!(data.len() as u64, *size);
        assert_eq!(
            blake3::hash(&data).as_bytes(),
            hash,
            "{at}: {id} has wrong bytes"
        );
    }
    // G2: whatever is visible is whole (its bytes match its recorded hash).
    for (id, meta) in store.list().unwrap() {
        let data = read_all(&store, id).unwrap();
        assert_eq!(
            blake3::hash(&data).as_bytes(),
            &meta.hash,
            "{at}: {id} is partial"
        );
    }
    // G3 + G4.
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{at}: verify: {:?}", rep.problems);
    // Sessions: resume from the reported offset, finish, compare.
    let sessions: Vec<_> = oracle.sessions.drain().collect();
    for (sid, (seed, len, acked)) in sessions {
        let info = match store.session(sid) {
            Ok(info) => info,
            // Finished (committed) just before the kill, its SESSIONDONE line unprinted.
            Err(Error::SessionNotFound(_)) if acked == len as u64 => continue,
            Err(e) => panic!("{at}: session {sid}: {e}"),
        };
        assert!(
            info.offset >= acked && info.offset <= len as u64,
            "{at}: session at {} acked {acked}",
            info.offset
        );
        let data = content(seed, len);
        let mut w = store.session_writer(sid, info.offset).unwrap();
        w.write(&data[info.offset as usize..]).unwrap();
        let done = w.finish().unwrap();
        assert_eq!(
            done.meta.hash,
            *blake3::hash(&data).as_bytes(),
            "{at}: resumed session has wrong bytes"
        );
        store.delete(done.id).unwrap();
    }
    // Sessions the child opened but never acknowledged anything for: drop them.
    for sid in store.session_ids().unwrap() {
        store.abort_session(sid).unwrap();
    }
    reopen
}

/// Run the child until it dies: killed by us after `kill_after`, or by itself (a kill point).
/// Returns its stdout lines and stderr.
fn run_child(
    dir: &std::path::Path,
    seed: u64,
    threads: u64,
    kill_after: Option<Duration>,
    env: &[(&str, String)],
) -> (Vec<String>, String, std::process::ExitStatus) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fms-torture"));
    cmd.args([
        "ingest",
        dir.to_str().unwrap(),
        &seed.to_string(),
        &threads.to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let deadline = Instant::now() + kill_after.unwrap_or(Duration::from_secs(60));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (reader.join().unwrap(), errors.join().unwrap(), status)
}

#[test]
fn random_sigkill_during_ingest() {
    let iters: u64 = knob("FMS_CRASH_ITERS", 50);
    let threads = knob("FMS_CRASH_THREADS", 8);
    let dir = tempfile::tempdir().unwrap();
    let mut oracle = Oracle::default();
    let mut rng = SmallRng::seed_from_u64(knob("FMS_CRASH_SEED", 7));
    let mut worst_reopen = Duration::ZERO;
    let mut acked_total = 0usize;
    for i in 0..iters {
        let wait = Duration::from_millis(rng.random_range(20..700));
        // Alternate the I/O back ends (auto is io_uring where the kernel allows it).
        let io = if i % 2 == 0 { "auto" } else { "std" };
        let env = [("FMS_IO", io.to_string())];
        let (lines, errors, status) = run_child(dir.path(), i, threads, Some(wait), &env);
        assert!(
            !status.success(),
            "iteration {i}: the child exited by itself: {status}"
        );
        assert!(
            !errors.contains("panicked") && !errors.contains("ERROR"),
            "iteration {i}: the child reported an error before the kill:\n{errors}"
        );
        acked_total += lines.iter().filter(|l| l.starts_with("ACK")).count();
        for l in &lines {
            oracle.take(l);
        }
        worst_reopen = worst_reopen.max(check(dir.path(), &mut oracle, &format!("iteration {i}")));
    }
    eprintln!(
        "{iters} kills, {acked_total} acknowledged uploads, {} files alive, worst reopen {worst_reopen:?}",
        oracle.acked.len()
    );
    assert!(
        acked_total > iters as usize,
        "the child acknowledged too little to test anything"
    );
    assert!(
        worst_reopen < Duration::from_secs(5),
        "reopen took {worst_reopen:?}"
    );
}

/// A 2 GiB streamed ingest keeps the process under 256 MiB of RSS.
#[test]
fn streamed_ingest_memory_is_bounded() {
    let bytes: u64 = knob("FMS_MEM_BYTES", 2 << 30);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fms-torture"))
        .args(["mem", dir.path().to_str().unwrap(), &bytes.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f[1].parse::<u64>().unwrap(), bytes);
    let hwm_kib: u64 = f[2].parse().unwrap();
    eprintln!(
        "{bytes} bytes ingested with peak RSS {} MiB",
        hwm_kib / 1024
    );
    assert!(
        hwm_kib > 0 && hwm_kib < 256 * 1024,
        "peak RSS {hwm_kib} KiB"
    );
}

/// RELIABILITY.md test 2: the child aborts at each named kill point (commit order, session
/// checkpoint, every step of compaction); every point must be reached, the guarantees hold
/// after each, and the next GC passes reclaim what an interrupted compaction left behind.
#[test]
fn named_kill_points() {
    let rounds: u64 = knob("FMS_KILLPOINT_ROUNDS", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut oracle = Oracle::default();
    let mut rng = SmallRng::seed_from_u64(11);
    let mut seed = 10_000;
    for round in 0..rounds {
        for point in fms_engine::KILL_POINTS {
            seed += 1;
            let after = rng.random_range(1..6u64).to_string();
            let env = [
                ("FMS_KILL_AT", point.to_string()),
                ("FMS_KILL_AFTER", after),
            ];
            let (lines, errors, status) = run_child(dir.path(), seed, 4, None, &env);
            let at = format!("round {round}, kill point {point}");
            assert!(
                errors.contains(&format!("failpoint {point} hit")),
                "{at}: never reached (exit {status}); stderr:\n{errors}"
            );
            assert!(
                !errors.contains("panicked"),
                "{at}: the child panicked:\n{errors}"
            );
            for l in &lines {
                oracle.take(l);
            }
            check(dir.path(), &mut oracle, &at);
        }
    }
    // Orphans of interrupted compactions (copies, packs left behind) are reclaimed.
    let store = Store::builder(dir.path())
        .gc_dead_ratio(0.3)
        .open()
        .unwrap();
    for _ in 0..3 {
        store.gc().unwrap();
    }
    let s = store.stats().unwrap();
    assert!(store.verify().unwrap().is_ok());
    // What remains dead sits in the active pack (never compacted) or below the threshold.
    assert!(
        (s.dead_bytes as f64) < 0.3 * s.stored_bytes as f64 + (4 << 20) as f64,
        "dead bytes not reclaimed: {s:?}"
    );
}
