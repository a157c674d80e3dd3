//! The `fms` binary end to end: real process, real store directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fms(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fms"))
        .env("FMS_DATA_DIR", dir)
        .env_remove("FMS_IO")
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = fms(dir, args);
    assert!(
        out.status.success(),
        "fms {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn put_get_ls_rm_stat_and_admin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let data = random(3_000_000, 1);
    let src = tmp.path().join("input.bin");
    std::fs::write(&src, &data).unwrap();

    let id = ok(&dir, &["put", src.to_str().unwrap()]).trim().to_string();
    assert_eq!(id.len(), 32, "put prints the id alone: {id:?}");
    let out = tmp.path().join("out.bin");
    ok(&dir, &["get", &id, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data);
    // Ranges are inclusive, as in HTTP.
    let got = fms(&dir, &["get", &id, "--range", "100-199"]);
    assert_eq!(got.stdout, &data[100..200]);
    let got = fms(&dir, &["get", &id, "--range", "-10"]);
    assert_eq!(got.stdout, &data[data.len() - 10..]);
    let got = fms(&dir, &["get", &id, "--range", "2999990-"]);
    assert_eq!(got.stdout, &data[2_999_990..]);
    let past = fms(&dir, &["get", &id, "--range", "3000000-3000001"]);
    assert_eq!(past.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&past.stderr).contains("outside the file"));

    // Standard input, and --json.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fms"))
        .env("FMS_DATA_DIR", &dir)
        .args(["put", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success());
    let rec: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(rec["size"], 3_000_000);
    assert_eq!(rec["new_bytes"], 0, "the same bytes again are deduplicated");
    assert_eq!(rec["hash"], blake3::hash(&data).to_hex().as_str());
    let id2 = rec["id"].as_str().unwrap().to_string();

    let ls = ok(&dir, &["ls"]);
    assert_eq!(ls.lines().count(), 2);
    assert!(ls.contains(&id) && ls.contains(&id2));

    let stat: serde_json::Value = serde_json::from_str(&ok(&dir, &["stat", "--json"])).unwrap();
    for k in [
        "logical_bytes",
        "stored_bytes",
        "chunks",
        "packs",
        "dead_bytes",
    ] {
        assert!(stat[k].is_u64(), "stat lacks {k}: {stat}");
    }
    assert_eq!(stat["logical_bytes"], 6_000_000);
    assert!(stat["stored_bytes"].as_u64().unwrap() < 3_200_000);

    ok(&dir, &["rm", &id]);
    let gone = fms(&dir, &["get", &id]);
    assert_eq!(gone.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
    assert_eq!(fms(&dir, &["rm", "not-an-id"]).status.code(), Some(2));

    assert!(ok(&dir, &["admin", "verify"]).contains("no problems found"));
    ok(&dir, &["admin", "gc"]);
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    ok(&dir, &["admin", "reindex"]);
    ok(&dir, &["get", &id2, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(ok(&dir, &["ls"]).lines().count(), 1);
}

#[test]
fn verify_fails_and_names_the_file_after_a_flipped_byte() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let src = tmp.path().join("input.bin");
    std::fs::write(&src, random(1_000_000, 2)).unwrap();
    let id = ok(&dir, &["put", src.to_str().unwrap()]).trim().to_string();
    let pack = dir.join("packs/00000001.pack");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 500_000).unwrap();
    f.write_all_at(&[!b[0]], 500_000).unwrap();
    let v = fms(&dir, &["admin", "verify"]);
    assert_eq!(
        v.status.code(),
        Some(5),
        "{:?}: {}",
        v.status,
        String::from_utf8_lossy(&v.stderr)
    );
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains(&format!("damaged file: {id}")), "{text}");
    let get = fms(&dir, &["get", &id]);
    assert_eq!(get.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&get.stderr).contains("corrupt data in file"));
}

#[test]
fn config_print_shows_the_effective_configuration_and_names_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("fms.toml");
    std::fs::write(&file, "[log]\nformat = \"json\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fms"))
        .args(["config", "print", "--config", file.to_str().unwrap()])
        .env("FMS_LISTEN", "127.0.0.1:7777")
        .env("FMS_DATA_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:7777\""), "{text}");
    assert!(text.contains("format = \"json\""), "{text}");
    assert!(text.contains(tmp.path().to_str().unwrap()), "{text}");
    let bad = Command::new(env!("CARGO_BIN_EXE_fms"))
        .args(["config", "print"])
        .env("FMS_SHUTDOWN__GRACE", "forever")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("shutdown.grace") && err.contains("FMS_SHUTDOWN__GRACE"),
        "{err}"
    );
}
