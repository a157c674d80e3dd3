//! The picker's REST API end to end over real sockets, on both backends (embedded SQLite,
//! and PostgreSQL): auth, permission and picker in one process, as `fms serve` runs them.

mod common;

use std::time::Duration;

use common::{client, random, start, start_full, start_with, user};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn upload(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    name: &str,
    data: Vec<u8>,
) -> (u16, Value) {
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = c
        .post(format!("{url}/api/upload?name={encoded}"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An upload's headers with no body: the answer the server gives before reading any byte.
async fn headers_only(addr: &str, token: &str, length: u64) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/upload?name=h HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
        .await
        .expect("answered before the body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_download_share_revoke_delete() {
    for postgres in [false, true] {
        let s = start(postgres).await;
        let c = client();
        let url = &s.url;
        let (alice, _) = user(&c, url).await;
        let (bob, bob_name) = user(&c, url).await;

        // Uploads: empty, one byte, 3 MiB, and a PNG the client calls text/plain.
        let big = random(3 << 20, 7);
        let png = [
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".as_slice(),
            &random(1000, 1),
        ]
        .concat();
        let mut ids = Vec::new();
        for (name, data) in [
            ("empty", vec![]),
            ("one.bin", vec![42u8]),
            ("big.bin", big.clone()),
            ("pic.png", png.clone()),
        ] {
            let (status, f) = upload(&c, url, &alice, name, data.clone()).await;
            assert_eq!(status, 201, "{postgres} {name}: {f}");
            assert_eq!(f["size"], data.len() as u64);
            assert_eq!(f["name"], name);
            assert_eq!(f["content_hash"], blake3::hash(&data).to_hex().as_str());
            assert_eq!(f["owned"], true);
            assert_eq!(f["new_bytes"], data.len() as u64);
            ids.push(f["id"].as_str().unwrap().to_string());
        }
        let (big_id, png_id) = (ids[2].clone(), ids[3].clone());
        let meta: Value = c
            .get(format!("{url}/api/files/{png_id}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["content_type"], "image/png", "sniffed, not trusted");
        assert_eq!(
            (meta["owned"].clone(), meta["shared_with_me"].clone()),
            (json!(true), json!(false))
        );

        // Dedup never shows across users: Bob's copy of the same bytes is "all new" to him;
        // Alice's second copy is not.
        let (_, again) = upload(&c, url, &alice, "again.bin", big.clone()).await;
        assert_eq!(again["new_bytes"], 0);
        let (_, bobs) = upload(&c, url, &bob, "mine.bin", big.clone()).await;
        assert_eq!(bobs["new_bytes"], big.len() as u64);

        // Listing: Alice's five, in creation order; Bob sees only his own.
        let list: Value = c
            .get(format!("{url}/api/files?limit=2"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_url = match &cursor {
                Some(cur) => format!("{url}/api/files?limit=2&cursor={cur}"),
                None => format!("{url}/api/files?limit=2"),
            };
            let req = c.get(page_url).bearer_auth(&alice);
            let page: Value = req.send().await.unwrap().json().await.unwrap();
            all.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(n) => cursor = Some(n.to_string()),
                None => break,
            }
        }
        assert_eq!(all.len(), 5);
        assert_eq!(&all[..4], &ids[..]);
        let list: Value = c
            .get(format!("{url}/api/files"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);

        // Downloads: whole, ranges, conditional, HEAD.
        let content = format!("{url}/api/files/{big_id}/content");
        let r = c.get(&content).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("big.bin")
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
        for (range, start, end) in [
            ("bytes=100-199", 100, 200),
            ("bytes=-1000", big.len() - 1000, big.len()),
            ("bytes=65530-70000", 65530, 70001),
        ] {
            let r = c
                .get(&content)
                .bearer_auth(&alice)
                .header("range", range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(
                r.headers()["content-range"].to_str().unwrap(),
                format!("bytes {start}-{}/{}", end - 1, big.len())
            );
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                &big[start..end],
                "{range}"
            );
        }
        let r = c
            .get(&content)
            .bearer_auth(&alice)
            .header("range", format!("bytes={}-", big.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes */{}", big.len())
        );
        let r = c
            .get(&content)
            .bearer_auth(&alice)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let r = c
            .get(&content)
            .bearer_auth(&alice)
            .header("range", "bytes=0-9")
            .header("if-range", "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "If-Range mismatch: the whole file");
        let r = c.head(&content).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            big.len().to_string()
        );
        let r = c
            .get(format!("{url}/api/files/{}/content", ids[0]))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.bytes().await.unwrap().len()),
            (200, 0),
            "empty file"
        );

        // Rename.
        let r = c
            .patch(format!("{url}/api/files/{big_id}"))
            .bearer_auth(&alice)
            .json(&json!({"name": "renamed.bin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .patch(format!("{url}/api/files/{big_id}"))
            .bearer_auth(&alice)
            .json(&json!({"name": "../etc/passwd"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        // Bob cannot tell Alice's file from a missing one.
        let theirs = c
            .get(format!("{url}/api/files/{big_id}"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        let missing = c
            .get(format!("{url}/api/files/{}", uuid::Uuid::now_v7()))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (theirs.status().as_u16(), missing.status().as_u16()),
            (404, 404)
        );
        assert_eq!(theirs.text().await.unwrap(), missing.text().await.unwrap());
        assert_eq!(
            c.get(&content)
                .bearer_auth(&bob)
                .send()
                .await
                .unwrap()
                .status(),
            404
        );

        // Share read with Bob: he lists and downloads it, but cannot delete or rename.
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&alice)
            .json(&json!({"file_id": big_id, "with": bob_name, "rights": ["read"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let list: Value = c
            .get(format!("{url}/api/files"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let shared = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == big_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            (shared["owned"].clone(), shared["rights"].clone()),
            (json!(false), json!(["read"]))
        );
        let r = c.get(&content).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
        assert_eq!(
            c.delete(format!("{url}/api/files/{big_id}"))
                .bearer_auth(&bob)
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            c.patch(format!("{url}/api/files/{big_id}"))
                .bearer_auth(&bob)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&bob)
            .json(&json!({"file_id": big_id, "with": bob_name, "rights": ["read", "write"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a reader cannot share");
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&alice)
            .json(&json!({"file_id": big_id, "with": "nobody-here", "rights": ["read"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&alice)
            .json(&json!({"file_id": big_id, "with": bob_name, "rights": ["admin"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        // Revoke (an empty list): Bob is back to 404 at once.
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&alice)
            .json(&json!({"file_id": big_id, "with": bob_name, "rights": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            c.get(&content)
                .bearer_auth(&bob)
                .send()
                .await
                .unwrap()
                .status(),
            404
        );

        // Delete.
        assert_eq!(
            c.delete(format!("{url}/api/files/{big_id}"))
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
        assert_eq!(
            c.get(&content)
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            c.delete(format!("{url}/api/files/{big_id}"))
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;

    let r = c
        .post(format!("{url}/api/upload"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{url}/api/files"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Over the size limit (8 MiB here), refused from Content-Length before any byte is read.
    let addr = url.trim_start_matches("http://").to_string();
    let answer = headers_only(&addr, &alice, (8 << 20) + 1).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("file_too_large"), "{answer}");
    // Over the quota (12 MiB here).
    for i in 0..2 {
        let (status, v) = upload(&c, url, &alice, "q", random(5 << 20, i)).await;
        assert_eq!(status, 201, "{v}");
    }
    // (Refused from Content-Length too: sent as headers alone, so the early answer cannot
    // race the body into a broken pipe.)
    let answer = headers_only(&addr, &alice, 3 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("quota_exceeded"), "{answer}");
    // Names.
    for bad in ["a/b", "..", ""] {
        let (status, v) = upload(&c, url, &alice, bad, b"x".to_vec()).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
    // Malformed multipart: a clear 400, nothing stored.
    for (ctype, body) in [
        ("multipart/form-data; boundary=x", "garbage".to_string()),
        (
            "multipart/form-data; boundary=x",
            "--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nunterminated"
                .to_string(),
        ),
        ("multipart/form-data", "--x--".to_string()),
    ] {
        let r = c
            .post(format!("{url}/api/upload"))
            .bearer_auth(&alice)
            .header("content-type", ctype)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{ctype} {body:?}");
    }
    // Without a downloader configured, imports say so rather than pretend.
    let r = c
        .post(format!("{url}/api/files/download"))
        .bearer_auth(&alice)
        .json(&json!({"url": "http://example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("downloader_url")
    );
    let r = c
        .get(format!("{url}/api/files?limit=0"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{url}/api/files?cursor=garbage"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A stalled upload is cut off after the idle timeout (1 s here): 408, and no file.
    let addr = addr.as_str();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/upload?name=slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "slow")
    );
}

fn multipart(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/x-whatever\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_many_files_or_none() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let a = random(200_000, 3);
    let b = b"second file".to_vec();
    let body = multipart(
        "XyZ",
        &[
            ("note", None, b"a form field"),
            ("f1", Some("a.bin"), &a),
            ("f2", Some("b.txt"), &b),
        ],
    );
    let r = c
        .post(format!("{url}/api/upload"))
        .bearer_auth(&alice)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{v}");
    for (f, (name, data)) in files.iter().zip([("a.bin", &a), ("b.txt", &b)]) {
        assert_eq!(f["name"], name);
        assert_eq!(f["content_hash"], blake3::hash(data).to_hex().as_str());
        let got = c
            .get(format!(
                "{url}/api/files/{}/content",
                f["id"].as_str().unwrap()
            ))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), data.as_slice());
    }
    assert_eq!(files[1]["content_type"], "text/plain; charset=utf-8");
    // A bad second part undoes the first: the request stores all of its files or none.
    let body = multipart(
        "XyZ",
        &[
            ("f1", Some("ok.bin"), b"fine"),
            ("f2", Some("../bad"), b"x"),
        ],
    );
    let r = c
        .post(format!("{url}/api/upload"))
        .bearer_auth(&alice)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let body = multipart("XyZ", &[("only", None, b"no files here")]);
    let r = c
        .post(format!("{url}/api/upload"))
        .bearer_auth(&alice)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A client that disconnects mid-upload leaves no file, and GC leaves no chunk behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_leaves_nothing() {
    let s = start_with(false, 1 << 30, 0).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let store = s.picker.engine.store().clone();
    let before = tokio::task::spawn_blocking({
        let st = store.clone();
        move || st.stats().unwrap()
    })
    .await
    .unwrap();
    let addr = url.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/upload?name=cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nContent-Length: {}\r\n\r\n",
        20 << 20
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    sock.write_all(&random(6 << 20, 5)).await.unwrap();
    drop(sock);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let after = tokio::task::spawn_blocking(move || {
        store.gc().unwrap();
        store.stats().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(after.files, before.files);
    assert_eq!(
        after.chunks, before.chunks,
        "no chunk of the abandoned upload survives GC"
    );
}

/// 100 MiB through HTTP and back, and 64 parallel uploads and downloads across 8 users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_parallel_transfers_keep_every_byte() {
    let s = start_with(true, 1 << 30, 0).await;
    let c = client();
    let url = s.url.clone();
    let (alice, _) = user(&c, &url).await;
    let big = random(100 << 20, 11);
    let (status, f) = upload(&c, &url, &alice, "100mib.bin", big.clone()).await;
    assert_eq!(status, 201, "{f}");
    let got = c
        .get(format!(
            "{url}/api/files/{}/content",
            f["id"].as_str().unwrap()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(blake3::hash(&got), blake3::hash(&big));
    drop((big, got));

    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(user(&c, &url).await.0);
    }
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let (c, url, token) = (c.clone(), url.clone(), users[i as usize % 8].clone());
        tasks.push(tokio::spawn(async move {
            let data = random(256 * 1024 + i as usize * 4099, 100 + i);
            let (status, f) = upload(&c, &url, &token, &format!("p{i}"), data.clone()).await;
            assert_eq!(status, 201, "{f}");
            let id = f["id"].as_str().unwrap().to_string();
            let got = c
                .get(format!("{url}/api/files/{id}/content"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(got.as_ref(), data.as_slice(), "upload {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reliability test 32: every route that takes a file id x {owner, reader, writer,
/// stranger}: each cell matches the policy, and a stranger's answer is byte-for-byte a
/// missing id's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_role_matches_the_policy() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (owner, _) = user(&c, url).await;
    let (reader, reader_name) = user(&c, url).await;
    let (writer, writer_name) = user(&c, url).await;
    let (stranger, _) = user(&c, url).await;
    let (_, other_name) = user(&c, url).await;
    let (status, f) = upload(&c, url, &owner, "m.bin", random(70_000, 4)).await;
    assert_eq!(status, 201);
    let id = f["id"].as_str().unwrap().to_string();
    for (who, rights) in [
        (&reader_name, json!(["read"])),
        (&writer_name, json!(["read", "write"])),
    ] {
        let r = c
            .post(format!("{url}/api/files/share"))
            .bearer_auth(&owner)
            .json(&json!({"file_id": id, "with": who, "rights": rights}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let missing = uuid::Uuid::now_v7().to_string();
    // (method, path with {id}, JSON body, expected for owner, reader, writer, stranger)
    let share_body = |file: &str| json!({"file_id": file, "with": other_name, "rights": ["read"]});
    let cells: Vec<(&str, &str, Option<Value>, [u16; 4])> = vec![
        ("GET", "/api/files/{id}", None, [200, 200, 200, 404]),
        ("GET", "/api/files/{id}/content", None, [200, 200, 200, 404]),
        (
            "HEAD",
            "/api/files/{id}/content",
            None,
            [200, 200, 200, 404],
        ),
        (
            "PATCH",
            "/api/files/{id}",
            Some(json!({"name": "renamed.bin"})),
            [200, 403, 200, 404],
        ),
        (
            "POST",
            "/api/files/share",
            Some(json!("share")),
            [200, 403, 403, 404],
        ),
        ("DELETE", "/api/files/{id}", None, [204, 403, 403, 404]),
        (
            "POST",
            "/api/transform/{id}",
            Some(json!({"transform": "flip"})),
            // Readers may transform; no transformer is configured in this harness (503).
            [503, 503, 503, 404],
        ),
    ];
    let send = |method: &str, path: &str, body: &Option<Value>, token: &str, file: &str| {
        let u = format!("{url}{}", path.replace("{id}", file));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = c.request(m, u).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&if b == &json!("share") {
                share_body(file)
            } else {
                b.clone()
            });
        }
        req.send()
    };
    // The owner's DELETE goes last: every other cell runs against a live file.
    for pass in ["others", "owner"] {
        for (method, path, body, expect) in &cells {
            for (i, token) in [&owner, &reader, &writer, &stranger]
                .into_iter()
                .enumerate()
            {
                let is_owner_delete = i == 0 && *method == "DELETE";
                if (pass == "owner") != is_owner_delete {
                    continue;
                }
                let r = send(method, path, body, token, &id).await.unwrap();
                let role = ["owner", "reader", "writer", "stranger"][i];
                assert_eq!(r.status().as_u16(), expect[i], "{method} {path} as {role}");
                if i == 3 {
                    let got = r.text().await.unwrap();
                    let gone = send(method, path, body, token, &missing).await.unwrap();
                    assert_eq!(
                        gone.status().as_u16(),
                        expect[3],
                        "{method} {path} on a missing id"
                    );
                    let gone_body = gone.text().await.unwrap();
                    assert_eq!(
                        got.replace(&id, "ID"),
                        gone_body.replace(&missing, "ID"),
                        "{method} {path}: a stranger learns nothing"
                    );
                }
            }
        }
    }
    // After the owner's delete, nobody sees anything.
    for token in [&owner, &reader, &writer] {
        assert_eq!(
            c.get(format!("{url}/api/files/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
}

/// The internal gRPC API (used by the downloader and the transformer): PutFile streams a
/// file in for a user (size and BLAKE3 checked, idempotent by key, a broken or lying stream
/// stores nothing); ReadFile and StatFile are authorized like REST reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_grpc_put_read_stat() {
    use fms_proto::picker::v1 as pb;
    use pb::picker_internal_service_client::PickerInternalServiceClient;
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let (bob, _) = user(&c, url).await;
    let id_of = |token: String| {
        let c = c.clone();
        async move {
            let me: Value = c
                .get(format!("{url}/auth/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            me["id"].as_str().unwrap().to_string()
        }
    };
    let (alice_id, bob_id) = (id_of(alice.clone()).await, id_of(bob.clone()).await);
    let services = fms_platform::grpc::GrpcServices::new()
        .with(fms_picker::grpc::Internal::server(s.picker.clone()));
    let (routes, health) = fms_platform::grpc::routes(services).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(fms_platform::grpc::serve(
        listener,
        routes,
        health,
        "t",
        s.stop.clone(),
        Duration::from_secs(1),
    ));
    let mut g = PickerInternalServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let data = random(1_500_000, 21);
    let hash = blake3::hash(&data).to_hex().to_string();
    let put = |header: pb::PutFileHeader, data: Vec<u8>, pieces: usize| {
        let mut msgs = vec![pb::PutFileRequest {
            msg: Some(pb::put_file_request::Msg::Header(header)),
        }];
        let step = data.len().div_ceil(pieces.max(1)).max(1);
        for piece in data.chunks(step) {
            msgs.push(pb::PutFileRequest {
                msg: Some(pb::put_file_request::Msg::Data(
                    bytes::Bytes::copy_from_slice(piece),
                )),
            });
        }
        tokio_stream::iter(msgs)
    };
    let header = |key: &str, blake: &str, size: Option<u64>| pb::PutFileHeader {
        owner_id: alice_id.clone(),
        name: "imported.bin".into(),
        expected_size: size,
        expected_blake3: blake.into(),
        idempotency_key: key.into(),
        origin: "import:url".into(),
    };
    let f = g
        .put_file(put(
            header("k1", &hash, Some(data.len() as u64)),
            data.clone(),
            3,
        ))
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(
        (f.size, f.blake3.as_str(), f.owner_id.as_str()),
        (data.len() as u64, hash.as_str(), alice_id.as_str())
    );
    // Retried with the same key: the same file, nothing stored twice.
    let again = g
        .put_file(put(header("k1", &hash, None), data.clone(), 1))
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(again.id, f.id);
    // Lies are refused and store nothing: wrong hash, wrong size, data before the header.
    let e = g
        .put_file(put(header("", &"0".repeat(64), None), data.clone(), 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = g
        .put_file(put(header("", "", Some(5)), data.clone(), 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = g
        .put_file(tokio_stream::iter(vec![pb::PutFileRequest {
            msg: Some(pb::put_file_request::Msg::Data(bytes::Bytes::from_static(
                b"x",
            ))),
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // ReadFile: info first, then the bytes of the range; strangers get NOT_FOUND.
    let mut stream = g
        .read_file(pb::ReadFileRequest {
            file_id: f.id.clone(),
            user_id: alice_id.clone(),
            offset: 1000,
            length: 500_000,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::read_file_response::Msg::Info(_))
    ));
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        match m.msg {
            Some(pb::read_file_response::Msg::Data(b)) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.as_slice(), &data[1000..501_000]);
    let e = g
        .read_file(pb::ReadFileRequest {
            file_id: f.id.clone(),
            user_id: bob_id.clone(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = g
        .read_file(pb::ReadFileRequest {
            file_id: f.id.clone(),
            user_id: alice_id.clone(),
            offset: data.len() as u64 + 1,
            length: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    let st = g
        .stat_file(pb::StatFileRequest {
            file_id: f.id.clone(),
            user_id: alice_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(st.blake3, hash);
    let e = g
        .stat_file(pb::StatFileRequest {
            file_id: f.id.clone(),
            user_id: bob_id,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// Deleting a file drops its references at once (its bytes become dead, reclaimable), and
/// the background GC runs on its interval (every second here). Compaction itself — sealed
/// packs only; the active 256 MiB pack is left alone — is proven by the engine's tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_free_references_and_gc_runs_in_the_background() {
    let s = start_full(false, 1 << 30, 0, Duration::from_secs(1), "").await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let (_, doomed) = upload(&c, url, &alice, "doomed", random(4 << 20, 31)).await;
    let (_, kept) = upload(&c, url, &alice, "kept", random(1 << 20, 32)).await;
    let stats = || {
        let st = s.picker.engine.store().clone();
        async move {
            tokio::task::spawn_blocking(move || st.stats().unwrap())
                .await
                .unwrap()
        }
    };
    let before = stats().await;
    assert_eq!(before.files, 2);
    let id = doomed["id"].as_str().unwrap();
    assert_eq!(
        c.delete(format!("{url}/api/files/{id}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let after = stats().await;
    assert_eq!(after.files, 1);
    assert_eq!(
        after.live_chunk_bytes,
        1 << 20,
        "only the kept file's bytes are live"
    );
    assert!(after.dead_bytes >= 4 << 20, "{after:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.picker.gc_runs.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "background GC did not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept_id = kept["id"].as_str().unwrap();
    let r = c
        .get(format!("{url}/api/files/{kept_id}/content"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        random(1 << 20, 32).as_slice(),
        "GC keeps live data"
    );
}

/// `?q=` filters by name (case-insensitive) across pages, in creation order; an unknown
/// `sort` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_name_across_pages() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let mut want = Vec::new();
    for i in 0..30 {
        let name = if i % 3 == 0 {
            format!("Report-{i}.pdf")
        } else {
            format!("photo-{i}.jpg")
        };
        let (status, f) = upload(&c, url, &alice, &name, vec![i as u8; 10]).await;
        assert_eq!(status, 201);
        if i % 3 == 0 {
            want.push(f["id"].as_str().unwrap().to_string());
        }
    }
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let u = match &cursor {
            Some(cur) => format!("{url}/api/files?q=rePORT&limit=4&cursor={cur}"),
            None => format!("{url}/api/files?q=rePORT&limit=4"),
        };
        let page: Value = c
            .get(u)
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        assert!(
            items
                .iter()
                .all(|i| i["name"].as_str().unwrap().starts_with("Report-"))
        );
        got.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(got, want, "every match, once, in creation order");
    let r = c
        .get(format!("{url}/api/files?sort=owner"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let long = "x".repeat(256);
    let r = c
        .get(format!("{url}/api/files?q={long}"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "q longer than any name");
    let r = c
        .get(format!("{url}/api/files?sort=created&q=nothing-matches"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["items"].as_array().unwrap().len(),
            v["next_cursor"].clone()
        ),
        (0, Value::Null)
    );
}

/// Every page of a listing, following cursors: the ids and names in order.
async fn list_all(c: &reqwest::Client, url: &str, token: &str, query: &str) -> Vec<Value> {
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let u = match &cursor {
            Some(cur) => format!("{url}/api/files?{query}&cursor={cur}"),
            None => format!("{url}/api/files?{query}"),
        };
        let r = c.get(u).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{query}");
        let page: Value = r.json().await.unwrap();
        got.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => return got,
        }
    }
    panic!("listing {query} never ended");
}

/// `sort=name|size|created`, `-` for descending, across pages of owned and shared files,
/// with `q`; ties broken by id; a cursor from another order is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_sorts_by_name_size_and_age() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let (alice, alice_name) = user(&c, url).await;
    let (bob, _) = user(&c, url).await;
    // (name, size); repeated sizes and names that differ only in case test the tie-breaks.
    let mut files: Vec<(String, u64, String)> = Vec::new();
    for i in 0..17u64 {
        let name = match i % 4 {
            0 => format!("b-{i}.txt"),
            1 => format!("A-{i}.txt"),
            2 => "same.txt".to_string(),
            _ => format!("c-{}.txt", 20 - i),
        };
        let size = (i * 7919) % 5 * 100;
        let (status, f) = upload(&c, url, &alice, &name, vec![i as u8; size as usize]).await;
        assert_eq!(status, 201);
        files.push((name, size, f["id"].as_str().unwrap().to_string()));
    }
    // One file of bob's shared with alice is listed among hers.
    let (_, shared) = upload(&c, url, &bob, "B-shared.txt", vec![1; 250]).await;
    let shared_id = shared["id"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{url}/api/files/share"))
        .bearer_auth(&bob)
        .json(&json!({"file_id": shared_id, "with": alice_name, "rights": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    files.push(("B-shared.txt".into(), 250, shared_id));
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut by_name = files.clone();
    by_name.sort_by(|a, b| (a.0.to_lowercase(), &a.0, &a.2).cmp(&(b.0.to_lowercase(), &b.0, &b.2)));
    let want: Vec<String> = by_name.iter().map(|f| f.2.clone()).collect();
    assert_eq!(
        ids(&list_all(&c, url, &alice, "sort=name&limit=4").await),
        want
    );
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(
        ids(&list_all(&c, url, &alice, "sort=-name&limit=5").await),
        rev
    );
    let mut by_size = files.clone();
    by_size.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    let want: Vec<String> = by_size.iter().map(|f| f.2.clone()).collect();
    assert_eq!(
        ids(&list_all(&c, url, &alice, "sort=size&limit=3").await),
        want
    );
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(
        ids(&list_all(&c, url, &alice, "sort=-size&limit=1000").await),
        rev
    );
    let oldest_first = ids(&list_all(&c, url, &alice, "limit=6").await);
    let mut newest_first = oldest_first.clone();
    newest_first.reverse();
    assert_eq!(
        ids(&list_all(&c, url, &alice, "sort=-created&limit=6").await),
        newest_first
    );
    // Filter and order together; the shared file says so.
    let got = list_all(&c, url, &alice, "sort=-size&q=b-&limit=2").await;
    let mut want: Vec<&(String, u64, String)> = files
        .iter()
        .filter(|f| f.0.to_lowercase().contains("b-"))
        .collect();
    want.sort_by(|a, b| (b.1, &b.2).cmp(&(a.1, &a.2)));
    assert_eq!(
        ids(&got),
        want.iter().map(|f| f.2.clone()).collect::<Vec<_>>()
    );
    let shared_item = got
        .iter()
        .find(|i| i["name"] == "B-shared.txt")
        .expect("shared file listed");
    assert_eq!(shared_item["rights"], json!(["read"]));
    // A cursor belongs to its order.
    let page: Value = c
        .get(format!("{url}/api/files?sort=name&limit=2"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    for other in ["sort=size", "sort=-name", ""] {
        let r = c
            .get(format!("{url}/api/files?{other}&cursor={cursor}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{other}");
    }
    // Bob sees only his own file, in any order.
    assert_eq!(list_all(&c, url, &bob, "sort=name").await.len(), 1);
}

/// A client that stops reading a download is cut off after the idle timeout (1 s here): it
/// does not hold a reader thread and the file open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_cut_off() {
    let s = start_with(false, 1 << 30, 0).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let size = 48 << 20;
    let (_, f) = upload(&c, url, &alice, "big", random(size, 41)).await;
    let id = f["id"].as_str().unwrap();
    let addr = url.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/files/{id}/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    // Read nothing for a while: socket buffers fill, the server's sends stall.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the server neither sent nor closed"),
        }
        assert!(std::time::Instant::now() < deadline);
    }
    assert!(
        total < size,
        "the whole file arrived ({total} bytes): nothing was cut off"
    );
}

/// The same 50 MiB uploaded by two users is stored once; each sees only their own file, and
/// each is charged its full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_same_bytes_stored_once() {
    let s = start_with(false, 1 << 30, 0).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let (bob, _) = user(&c, url).await;
    let data = random(50 << 20, 51);
    let (_, a) = upload(&c, url, &alice, "same.bin", data.clone()).await;
    let (_, b) = upload(&c, url, &bob, "same.bin", data.clone()).await;
    assert_ne!(a["id"], b["id"]);
    // Reliability test 40: bob's answer is alice's (new bytes included) but for what is his.
    let strip = |v: &Value| {
        let mut v = v.clone();
        for k in ["id", "owner_id", "created_at", "updated_at"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(strip(&a), strip(&b), "both see the same answer");
    assert_eq!(b["new_bytes"], 50 << 20);
    let st = s.picker.engine.store().clone();
    let stats = tokio::task::spawn_blocking(move || st.stats().unwrap())
        .await
        .unwrap();
    assert_eq!(stats.logical_bytes, 2 * (50 << 20));
    assert_eq!(stats.live_chunk_bytes, 50 << 20, "stored once");
    for (token, mine) in [(&alice, &a), (&bob, &b)] {
        let list: Value = c
            .get(format!("{url}/api/files"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![mine["id"].as_str().unwrap()]);
    }
    for who in [
        s.picker
            .meta
            .usage(a["owner_id"].as_str().unwrap())
            .await
            .unwrap(),
        s.picker
            .meta
            .usage(b["owner_id"].as_str().unwrap())
            .await
            .unwrap(),
    ] {
        assert_eq!(who, 50 << 20, "each charged in full");
    }
}

/// Records what the picker publishes, following the `fms.notification.v1` contract (the
/// notification service itself lands with its own issue).
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<fms_proto::notification::v1::PublishRequest>>>);

#[tonic::async_trait]
impl fms_proto::notification::v1::notification_service_server::NotificationService for Recorder {
    async fn publish(
        &self,
        request: tonic::Request<fms_proto::notification::v1::PublishRequest>,
    ) -> Result<tonic::Response<fms_proto::notification::v1::PublishResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_notification_service_and_never_block_requests() {
    use fms_proto::notification::v1::notification_service_server::NotificationServiceServer;
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NotificationServiceServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let s = start_full(false, 1 << 30, 0, Duration::ZERO, &format!("http://{addr}")).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let (_, bob_name) = user(&c, url).await;
    let (_, f) = upload(&c, url, &alice, "e.bin", b"event me".to_vec()).await;
    let id = f["id"].as_str().unwrap();
    let r = c
        .post(format!("{url}/api/files/share"))
        .bearer_auth(&alice)
        .json(&json!({"file_id": id, "with": bob_name, "rights": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revision = r.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap();
    assert_eq!(
        c.delete(format!("{url}/api/files/{id}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.0.lock().unwrap().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "events did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = recorder.0.lock().unwrap().clone();
    let kinds: Vec<&str> = got
        .iter()
        .map(|r| r.event.as_ref().unwrap().r#type.as_str())
        .collect();
    assert_eq!(kinds, ["file.uploaded", "file.shared", "file.deleted"]);
    let shared = &got[1];
    assert_eq!(shared.user_ids.len(), 2, "the grantee and the owner");
    let data: Value = serde_json::from_str(&shared.event.as_ref().unwrap().data_json).unwrap();
    assert_eq!(
        data["revision"].as_u64(),
        Some(revision),
        "the grantee can list at this revision"
    );
    assert!(got.iter().all(|r| r.event.as_ref().unwrap().subject == id));

    // The notification service down: requests go on as fast as ever.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let s = start_full(false, 1 << 30, 0, Duration::ZERO, &format!("http://{dead}")).await;
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    for i in 0..20 {
        let t = std::time::Instant::now();
        let (status, _) = upload(&c, url, &alice, &format!("n{i}"), vec![i; 100]).await;
        assert_eq!(status, 201);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "an upload waited for the notification service"
        );
    }
}

/// Concurrent uploads cannot together pass the quota (12 MiB here): of six 5 MiB uploads at
/// once, at most two are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_cannot_pass_the_quota() {
    let s = start(false).await;
    let c = client();
    let url = s.url.clone();
    let (alice, _) = user(&c, &url).await;
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let (c, url, alice) = (c.clone(), url.clone(), alice.clone());
        // Each is 5 MiB, alone fine. One that starts after two have committed is refused
        // from its Content-Length while its body is still on the way (a broken pipe for
        // the client: counted as refused, the listing below is the judge).
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(format!("{url}/api/upload?name=c{i}"))
                .bearer_auth(&alice)
                .body(random(5 << 20, 60 + i))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => stored += 1,
            413 | 0 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=2).contains(&stored),
        "{stored} uploads of 5 MiB stored under a 12 MiB quota"
    );
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let used: u64 = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["size"].as_u64().unwrap())
        .sum();
    assert!(used <= 12 << 20, "{used} bytes stored");
}

/// Reliability tests 16 and 17: 10,000 random ranges (`a-b`, `a-`, `-n`, boundaries, past
/// the end, stale `If-Range`) with 0 byte mismatches; abusive Range headers (1,000 ranges,
/// overlapping ranges, 64 KiB of header) served whole, each quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_conformance_and_abuse() {
    let s = start_with(false, 1 << 30, 0).await;
    let c = client();
    let url = s.url.clone();
    let (alice, _) = user(&c, &url).await;
    let len = 300_001usize;
    let data = std::sync::Arc::new(random(len, 71));
    let (_, f) = upload(&c, &url, &alice, "r.bin", data.to_vec()).await;
    let content = std::sync::Arc::new(format!(
        "{url}/api/files/{}/content",
        f["id"].as_str().unwrap()
    ));
    let etag = c
        .head(content.as_str())
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (c, content, alice, data, etag) = (
            c.clone(),
            content.clone(),
            alice.clone(),
            data.clone(),
            etag.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ worker;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let len = data.len() as u64;
            for _ in 0..1250 {
                let near = |v: u64| {
                    [0, 1, 65_535, 65_536, 65_537, len - 1, len, len + 1, v][(v % 9) as usize]
                };
                let a = if next(4) == 0 {
                    near(next(len + 2))
                } else {
                    next(len + 2)
                };
                let b = if next(4) == 0 {
                    near(next(len + 2))
                } else {
                    next(len + 2)
                };
                let (spec, want): (String, Option<(u64, u64)>) = match next(3) {
                    0 => {
                        let (a, b) = (a.min(b), a.max(b));
                        (
                            format!("bytes={a}-{b}"),
                            (a < len).then(|| (a, b.min(len - 1) + 1)),
                        )
                    }
                    1 => (format!("bytes={a}-"), (a < len).then_some((a, len))),
                    _ => {
                        let n = a;
                        (
                            format!("bytes=-{n}"),
                            (n > 0).then(|| (len.saturating_sub(n), len)),
                        )
                    }
                };
                let stale = next(20) == 0;
                let mut req = c
                    .get(content.as_str())
                    .bearer_auth(&alice)
                    .header("range", &spec);
                if stale {
                    req = req.header("if-range", "\"stale\"");
                } else if next(2) == 0 {
                    req = req.header("if-range", &etag);
                }
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                match (stale, want) {
                    (true, _) => {
                        assert_eq!(status, 200, "{spec} with a stale If-Range");
                        assert_eq!(r.bytes().await.unwrap().len() as u64, len);
                    }
                    (false, None) => {
                        assert_eq!(status, 416, "{spec}");
                        assert_eq!(
                            r.headers()["content-range"].to_str().unwrap(),
                            format!("bytes */{len}")
                        );
                    }
                    (false, Some((s, e))) => {
                        assert_eq!(status, 206, "{spec}");
                        assert_eq!(
                            r.headers()["content-range"].to_str().unwrap(),
                            format!("bytes {s}-{}/{len}", e - 1)
                        );
                        let body = r.bytes().await.unwrap();
                        assert_eq!(body.as_ref(), &data[s as usize..e as usize], "{spec}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Abuse: served whole, quickly.
    let many: Vec<String> = (0..1000)
        .map(|i| format!("{}-{}", i * 7, i * 7 + 3))
        .collect();
    let overlapping: Vec<String> = (0..100).map(|_| "0-299999".to_string()).collect();
    let huge = format!("bytes=0-{}", "9".repeat(64 * 1024));
    for h in [
        format!("bytes={}", many.join(",")),
        format!("bytes={}", overlapping.join(",")),
        huge,
    ] {
        let t = std::time::Instant::now();
        let r = c
            .get(content.as_str())
            .bearer_auth(&alice)
            .header("range", &h)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 200 || status == 431 || status == 400,
            "{status} for a {}-byte Range",
            h.len()
        );
        if status == 200 {
            assert_eq!(r.bytes().await.unwrap().len(), len);
        }
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}

/// The OpenAPI document: served, covering every route with its methods, its schemas naming
/// exactly the fields real responses carry, and equal to the copy in docs/api/openapi.json
/// (`FMS_UPDATE_OPENAPI=1` rewrites the copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_api() {
    let s = start(false).await;
    let c = client();
    let url = &s.url;
    let doc: Value = c
        .get(format!("{url}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, methods) in [
        ("/api/upload", &["post"][..]),
        ("/api/files", &["get"]),
        ("/api/files/{id}", &["get", "patch", "delete"]),
        ("/api/files/{id}/content", &["get"]),
        ("/api/files/share", &["post"]),
        ("/api/files/download", &["post"]),
        ("/api/transform/{id}", &["post"]),
        ("/api/jobs/{id}", &["get"]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} missing from the document"
            );
        }
    }
    let props = |schema: &str| -> std::collections::BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let (alice, _) = user(&c, url).await;
    let (bob, bob_name) = user(&c, url).await;
    let _ = bob;
    let (_, f) = upload(&c, url, &alice, "doc.txt", b"hello".to_vec()).await;
    assert_eq!(
        keys(&f),
        props("FileRecord"),
        "upload response vs FileRecord"
    );
    let list: Value = c
        .get(format!("{url}/api/files"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&list), props("FileList"));
    let mut item_keys = keys(&list["items"][0]);
    item_keys.insert("new_bytes".into()); // uploads only
    assert_eq!(item_keys, props("FileRecord"), "listing item vs FileRecord");
    let shared: Value = c
        .post(format!("{url}/api/files/share"))
        .bearer_auth(&alice)
        .json(&json!({"file_id": f["id"], "with": bob_name, "rights": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&shared), props("ShareResult"));
    let err: Value = c
        .get(format!("{url}/api/files/nope"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&err), props("ErrorBody"));
    assert_eq!(keys(&err["error"]), props("ErrorDetail"));

    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json");
    let generated = fms_picker::openapi::json();
    if std::env::var_os("FMS_UPDATE_OPENAPI").is_some() {
        std::fs::write(&copy, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&copy).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/api/openapi.json is stale: run FMS_UPDATE_OPENAPI=1 cargo test -p fms-picker --test api openapi"
    );
}

/// What a crash between an upload's steps leaves behind — an engine file no row names, a
/// row whose owner holds nothing — is removed by the reconciliation pass; live files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_removes_what_crashes_leave_behind() {
    let s = start_with(false, 1 << 30, 0).await;
    let c = client();
    let url = &s.url;
    let (alice, _) = user(&c, url).await;
    let data = random(100_000, 81);
    let (_, live) = upload(&c, url, &alice, "live.bin", data.clone()).await;
    // Crash after the engine commit, before the row: an engine file nobody names.
    let store = s.picker.engine.store().clone();
    let orphan = tokio::task::spawn_blocking(move || store.put(b"orphaned bytes").unwrap().id)
        .await
        .unwrap();
    // Crash after the row, before the owner grant: a row nobody can see.
    let store = s.picker.engine.store().clone();
    let hidden_engine = tokio::task::spawn_blocking(move || store.put(b"hidden bytes").unwrap().id)
        .await
        .unwrap();
    let row = fms_picker::meta::FileRow {
        id: uuid::Uuid::now_v7().to_string(),
        owner_id: live["owner_id"].as_str().unwrap().to_string(),
        name: "hidden".into(),
        size: 12,
        content_type: "text/plain".into(),
        content_hash: "00".repeat(32),
        engine_id: hidden_engine.to_string(),
        created_at: 0,
        updated_at: 0,
        folder: String::new(),
        derived_from: String::new(),
        transform: String::new(),
    };
    s.picker.meta.insert(&row).await.unwrap();
    // A grace longer than any of them: nothing happens (uploads in flight are safe).
    let none = s.picker.reconcile(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        (none.engine_orphans, none.row_orphans),
        (0, 1),
        "only the row dated 1970 is old enough"
    );
    s.picker
        .meta
        .insert(&fms_picker::meta::FileRow {
            id: uuid::Uuid::now_v7().to_string(),
            created_at: 0,
            ..row.clone()
        })
        .await
        .unwrap();
    let done = s.picker.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!(done.row_orphans, 1);
    assert!(done.engine_orphans >= 1, "{done:?}");
    let store = s.picker.engine.store().clone();
    let (gone, hidden_gone) = tokio::task::spawn_blocking(move || {
        (
            store.stat_file(orphan).is_err(),
            store.stat_file(hidden_engine).is_err(),
        )
    })
    .await
    .unwrap();
    assert!(gone && hidden_gone);
    let got = c
        .get(format!(
            "{url}/api/files/{}/content",
            live["id"].as_str().unwrap()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        data.as_slice(),
        "live files untouched"
    );
}
