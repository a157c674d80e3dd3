//! `fms push` and `fms pull` against `fms serve`: trees, interruption, resume.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Every file the user can read: id -> content hash (REST listing, all pages).
async fn all_files(
    c: &reqwest::Client,
    url: &str,
    token: &str,
) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut u = format!("{url}/api/files?limit=1000");
        if let Some(cur) = &cursor {
            u.push_str(&format!("&cursor={cur}"));
        }
        let page: Value = c
            .get(u)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for i in page["items"].as_array().unwrap() {
            out.insert(
                i["id"].as_str().unwrap().to_string(),
                i["content_hash"].as_str().unwrap().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => return out,
        }
    }
}

/// The upload id of `big/large-0.bin` (the largest file) once the journal has it.
fn largest_upload(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/big/large-0.bin")
        })
        .and_then(|v| v["upload_id"].as_str().map(str::to_string))
}

/// From a push journal: files finished, their bytes, large files started, large files done.
fn journal_counts(path: &std::path::Path) -> (usize, u64, usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut done, mut bytes, mut big_started, mut big_done) = (0, 0, 0, 0);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let big = v["path"].as_str().unwrap_or("").contains("/big/");
        if v.get("file_id").is_some() {
            done += 1;
            bytes += v["size"].as_u64().unwrap();
            big_done += big as usize;
        } else if big {
            big_started += 1;
        }
    }
    (done, bytes, big_started, big_done)
}

/// Issue 6: `fms push` of a tree of 2,000 small files and three large ones over 4 streams,
/// killed (SIGKILL) mid-run and run again: the second run skips what the first finished,
/// resumes the large file that was under way, and every file on the server matches its
/// source; `fms pull` brings files back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fms_push_of_a_tree_is_interrupted_and_resumed() {
    let p = spawn(&["serve"], &[], true);
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let user = username();
    let t = login_session(&c, &url, &user).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let creds = work.path().join("credentials.json");
    let fms = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fms"));
        cmd.args(args)
            .env("FMS_CREDENTIALS", &creds)
            .env("FMS_PASSWORD", "correct horse battery staple")
            .stdin(Stdio::null());
        cmd
    };
    let out = fms(&[
        "login",
        "--server",
        &url,
        "--grpc",
        &grpc,
        "--username",
        &user,
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The tree: big/ first (so streams are busy with them when the run is cut), then 2,000
    // small files in 20 directories, some empty, some identical.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    for (i, mib) in [256usize, 128, 64].iter().enumerate() {
        std::fs::write(
            tree.join(format!("big/large-{i}.bin")),
            noise(mib << 20, 500 + i as u64),
        )
        .unwrap();
    }
    for i in 0..2000usize {
        let d = tree.join(format!("small-{:02}", i % 20));
        std::fs::create_dir_all(&d).unwrap();
        let body = match i % 10 {
            0 => Vec::new(),
            1 => b"the same bytes in many files".to_vec(),
            _ => noise(1 + (i * 7919) % 20_000, i as u64),
        };
        std::fs::write(d.join(format!("f{i}.dat")), body).unwrap();
    }
    let journal = work.path().join("push.jsonl");
    let journal_s = journal.to_string_lossy().to_string();
    let tree_s = tree.to_string_lossy().to_string();
    let args = [
        "push",
        "--streams",
        "4",
        "--json",
        "--journal",
        &journal_s,
        &tree_s,
    ];

    // First run, killed while the large files are under way and some small ones are done.
    let mut first = fms(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (done, _, _, big_done) = journal_counts(&journal);
        if big_done == 0
            && done >= 20
            && let Some(id) = largest_upload(&journal)
        {
            // The server's durable offset of the largest file, through tus.
            let r = c
                .head(format!("{url}/api/uploads/{id}"))
                .bearer_auth(&token)
                .header("tus-resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            let offset: u64 = r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if offset >= 8 << 20 {
                break;
            }
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the push ended before it could be cut"
        );
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (done_before, done_bytes, _, big_done) = journal_counts(&journal);
    assert!(done_before < 2003, "interrupted before the end");

    // Second run: to the end.
    let out = fms(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = summary["files"].as_object().unwrap();
    assert_eq!(files.len(), 2003);
    assert!(summary["skipped"].as_u64().unwrap() >= done_before as u64 - 4);
    assert_eq!(summary["failed"], 0);
    let total: u64 = summary["bytes"].as_u64().unwrap();
    eprintln!(
        "push cut after {done_before} files; second run: {} skipped, {} of {total} bytes sent",
        summary["skipped"], summary["bytes_sent"]
    );
    // What the first run left unfinished was resumed from the server's offsets, not sent
    // again whole.
    assert!(big_done < 3);
    assert!(
        summary["bytes_sent"].as_u64().unwrap() < total - done_bytes,
        "the second run re-sent every unfinished byte"
    );

    // Every file on the server is its source, and nothing was stored twice (a file whose
    // commit raced the kill may be, at most one per stream).
    let server = all_files(&c, &url, &token).await;
    assert!(
        server.len() >= 2003 && server.len() <= 2003 + 4,
        "{} files",
        server.len()
    );
    for (path, id) in files {
        let want = blake3::hash(&std::fs::read(path).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(server.get(id.as_str().unwrap()), Some(&want), "{path}");
    }

    // A third run has nothing to do.
    let out = fms(&args).output().unwrap();
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["skipped"], 2003);
    assert_eq!(again["bytes_sent"], 0);

    // Pull everything back: the tree comes back as it was (folders kept), byte for byte.
    let back = work.path().join("back");
    let back_s = back.to_string_lossy().to_string();
    let out = fms(&["pull", "--to", &back_s]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in files.keys() {
        let rel = std::path::Path::new(path)
            .strip_prefix(work.path())
            .unwrap();
        let got = std::fs::read(back.join(rel)).unwrap_or_else(|e| panic!("{rel:?}: {e}"));
        assert!(got == std::fs::read(path).unwrap(), "{}", rel.display());
    }
    // One file by id, into another directory.
    let (path, id) = files.iter().find(|(p, _)| p.ends_with("/f5.dat")).unwrap();
    let one = work.path().join("one");
    let one_s = one.to_string_lossy().to_string();
    let out = fms(&["pull", "--to", &one_s, id.as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let got = std::fs::read(one.join("tree/small-05/f5.dat")).unwrap();
    assert!(got == std::fs::read(path).unwrap());
}
