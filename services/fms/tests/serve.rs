//! The `fms` binary as users and operators run it: `fms serve` (everything in one process,
//! no external server) and `fms auth` replicas on PostgreSQL + Redis.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fms_serve_runs_the_system_with_no_external_server() {
    let mut p = spawn(&["serve"], &[], true);
    let c = client();
    let url = p.http.clone();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(me_status(&c, &url, token).await, 200);
    let r = c
        .post(format!("{url}/auth/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        me_status(&c, &url, token).await,
        401,
        "refused after logout"
    );
    // Operations endpoints.
    let r = c.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(
        c.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds",
        "auth_logins_total",
        "auth_token_verifications_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // The picker: upload, list, ranged download through `fms serve`.
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let up: Value = c
        .post(format!("{url}/api/upload?name=hello.bin"))
        .bearer_auth(token)
        .body(data.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = up["id"].as_str().unwrap();
    let r = c
        .get(format!("{url}/api/files/{id}/content"))
        .bearer_auth(token)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    // gRPC: the standard health service and reflection answer.
    let grpc = p.grpc.clone().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream_once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    // Every service of the system, in one process.
    for service in [
        "grpc.health.v1.Health",
        "fms.permission.v1.PermissionService",
        "fms.picker.v1.FilesService",
        "fms.picker.v1.PickerInternalService",
        "fms.notification.v1.NotificationService",
        "fms.downloader.v1.DownloaderService",
        "fms.transformer.v1.TransformerService",
    ] {
        assert!(names.iter().any(|n| n == service), "{service}: {names:?}");
    }
    // SIGTERM: a clean exit within the grace period.
    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    futures_once(item)
}

fn futures_once<T: Send + 'static>(
    item: T,
) -> impl futures_core_stream::Stream<Item = T> + Send + 'static {
    futures_core_stream::once(item)
}

/// A one-item stream without pulling in another crate.
mod futures_core_stream {
    pub use tokio_stream::{Stream, once};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replicas_share_users_keys_and_revocations() {
    let env = shared_env().await;
    let a = spawn(&["auth"], &env, false);
    let b = spawn(&["auth"], &env, false);
    let c = client();
    // Registered through A, logged in through B, verified by both.
    let user = username();
    let body = json!({"username": user, "password": "correct horse battery staple"});
    assert_eq!(
        c.post(format!("{}/auth/register", a.http))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let r = c
        .post(format!("{}/auth/login", b.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let token = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(me_status(&c, &a.http, &token).await, 200);
    assert_eq!(me_status(&c, &b.http, &token).await, 200);
    // A third process's view: the verification library with A's JWKS and the shared Redis.
    let shared = fms_auth::shared::Shared::redis(&env[1].1, &env[2].1)
        .await
        .unwrap();
    let expect = fms_auth::tokens::Expect {
        issuer: "fms".into(),
        audience: "fms".into(),
    };
    let verifier = fms_auth::verify::Authenticator::remote(
        expect,
        &format!("{}/.well-known/jwks.json", a.http),
        shared,
    )
    .await
    .unwrap();
    assert!(verifier.authenticate_token(&token).await.is_ok());
    // Logout through A: refused by B and by the library within 1 s.
    let r = c
        .post(format!("{}/auth/logout", a.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let start = Instant::now();
    loop {
        let b_refuses = me_status(&c, &b.http, &token).await == 401;
        let lib_refuses = verifier.authenticate_token(&token).await.is_err();
        if b_refuses && lib_refuses {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revocation not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "revocation seen by the other replica and the library after {:?}",
        start.elapsed()
    );
    // A flood of tokens naming random kids costs at most one JWKS fetch per second.
    let before = verifier.fetches();
    let parts: Vec<&str> = token.split('.').collect();
    let flood_start = Instant::now();
    let mut i = 0u64;
    while flood_start.elapsed() < Duration::from_secs(3) {
        i += 1;
        let header = json!({"alg": "EdDSA", "kid": format!("random-{i}")});
        let h = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            header.to_string(),
        );
        let forged = format!("{h}.{}.{}", parts[1], parts[2]);
        assert!(verifier.authenticate_token(&forged).await.is_err());
    }
    let fetched = verifier.fetches() - before;
    let secs = flood_start.elapsed().as_secs_f64();
    println!("{i} random-kid tokens in {secs:.2}s caused {fetched} JWKS fetches");
    assert!(i > 1000);
    assert!(fetched >= 1, "an unknown kid does trigger a refetch");
    assert!(
        fetched as f64 <= secs + 1.0,
        "{fetched} fetches in {secs:.2}s"
    );
    // The real token of a live session still verifies after the flood.
    let t2 = login_session(&c, &b.http, &username()).await;
    assert!(
        verifier
            .authenticate_token(t2["access_token"].as_str().unwrap())
            .await
            .is_ok()
    );
}

/// Reliability test 33: two `fms permission` replicas on one PostgreSQL (and Redis), checks
/// hammering replica B from its cache while replica A revokes. No check sent after the
/// revoke returned may be allowed — for `UpdatePermission` revokes and for `DeleteObject`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_replicas_never_allow_after_a_revoke_returned() {
    use fms_proto::permission::v1::{
        self as pb, permission_service_client::PermissionServiceClient,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = shared_env().await;
    // Accounts come from the auth service on the same database.
    let auth = spawn(&["auth"], &env, false);
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = login_session(&c, &auth.http, &username()).await;
        ids.push(user_id(&c, &auth.http, t["access_token"].as_str().unwrap()).await);
    }
    let (alice, bob) = (ids[0].clone(), ids[1].clone());
    let a = spawn(&["permission"], &env, true);
    let b = spawn(&["permission"], &env, true);
    let connect = |url: String| async move {
        PermissionServiceClient::new(
            tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let mut ca = connect(a.grpc.clone().unwrap()).await;
    let cb = connect(b.grpc.clone().unwrap()).await;
    let check = |file: &str, fresh: u64| pb::CheckPermissionRequest {
        user_id: bob.clone(),
        file_id: file.to_string(),
        right: pb::Right::Read as i32,
        at_least_as_fresh: fresh,
    };
    let mut after_revoke = 0usize;
    for round in 0..12 {
        let file = uuid::Uuid::now_v7().to_string();
        ca.create_owner(pb::CreateOwnerRequest {
            file_id: file.clone(),
            user_id: alice.clone(),
        })
        .await
        .unwrap();
        let r = ca
            .update_permission(pb::UpdatePermissionRequest {
                actor_id: alice.clone(),
                file_id: file.clone(),
                grants: vec![pb::Grant {
                    user_id: bob.clone(),
                    rights: vec![pb::Right::Read as i32],
                }],
                revokes: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .revision;
        assert!(
            cb.clone()
                .check_permission(check(&file, r))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        // Four checkers on B record when each check was sent and what it said.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (mut cb, stop, req) = (cb.clone(), stop.clone(), check(&file, 0));
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let allowed = cb
                        .check_permission(req.clone())
                        .await
                        .unwrap()
                        .into_inner()
                        .allowed;
                    seen.push((sent, allowed));
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        if round % 2 == 0 {
            ca.update_permission(pb::UpdatePermissionRequest {
                actor_id: alice.clone(),
                file_id: file.clone(),
                grants: vec![],
                revokes: vec![pb::Grant {
                    user_id: bob.clone(),
                    rights: vec![pb::Right::Read as i32],
                }],
            })
            .await
            .unwrap();
        } else {
            ca.delete_object(pb::DeleteObjectRequest {
                file_id: file.clone(),
            })
            .await
            .unwrap();
        }
        let returned = Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, Ordering::SeqCst);
        let mut allowed_before = 0;
        for t in tasks {
            for (sent, allowed) in t.await.unwrap() {
                if sent > returned {
                    after_revoke += 1;
                    assert!(
                        !allowed,
                        "round {round}: replica B allowed a read after the revoke returned"
                    );
                } else if allowed {
                    allowed_before += 1;
                }
            }
        }
        assert!(
            allowed_before > 0,
            "round {round}: B never allowed before the revoke"
        );
    }
    assert!(
        after_revoke > 100,
        "too few checks after revokes: {after_revoke}"
    );
    // The checks were answered from B's cache: the race was real.
    let metrics = c
        .get(format!("{}/metrics", b.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cached: f64 = metrics
        .lines()
        .find(|l| l.starts_with("permission_checks_total") && l.contains("source=\"cache\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        cached > 100.0,
        "B answered {cached} checks from its cache:\n{metrics}"
    );
}

/// The split deployment: `fms auth`, `fms permission` and `fms picker` as three processes on
/// PostgreSQL + Redis, the picker verifying tokens against the auth service's JWKS and
/// asking the permission service over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_deployment_serves_the_picker_api() {
    let mut env = shared_env().await;
    let auth = spawn(&["auth"], &env, false);
    let perm = spawn(&["permission"], &env, true);
    env.push((
        "FMS_AUTH__JWKS_URL",
        format!("{}/.well-known/jwks.json", auth.http),
    ));
    env.push(("FMS_PICKER__PERMISSION_URL", perm.grpc.clone().unwrap()));
    let picker = spawn(&["picker"], &env, false);
    let c = client();
    let (alice_name, bob_name) = (username(), username());
    let alice = login_session(&c, &auth.http, &alice_name).await;
    let bob = login_session(&c, &auth.http, &bob_name).await;
    let (alice, bob) = (
        alice["access_token"].as_str().unwrap().to_string(),
        bob["access_token"].as_str().unwrap().to_string(),
    );
    let url = &picker.http;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = c
        .post(format!("{url}/api/upload?name=split.bin"))
        .bearer_auth(&alice)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    let id = f["id"].as_str().unwrap().to_string();
    let content = format!("{url}/api/files/{id}/content");
    assert_eq!(
        c.get(&content)
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let share = |rights: Value| {
        c.post(format!("{url}/api/files/share"))
            .bearer_auth(&alice)
            .json(&json!({"file_id": id, "with": bob_name, "rights": rights}))
            .send()
    };
    assert_eq!(share(json!(["read"])).await.unwrap().status(), 200);
    let got = c.get(&content).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(share(json!([])).await.unwrap().status(), 200);
    assert_eq!(
        c.get(&content)
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "revoked: refused at once"
    );
    // Logout at the auth service is honoured by the picker (shared revocations in Redis).
    let r = c
        .post(format!("{}/auth/logout", auth.http))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s = c
            .get(format!("{url}/api/files"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status();
        if s == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "picker still accepts a logged-out token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = c.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// Reliability test 9 (the picker's part): `fms serve` killed at each step of an upload —
/// after the engine commit, after the metadata row, after the owner grant. The upload is
/// never acknowledged; after a restart the file is either whole and visible (killed after
/// the owner grant: committed, answer lost) or invisible, and reconciliation removes the
/// leftovers, so the store holds exactly the visible files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_killed_between_steps_leave_nothing_half_done() {
    let c = client();
    for (point, visible_after) in [
        ("picker.after_engine_commit", false),
        ("picker.after_row", false),
        ("picker.after_owner", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let quick = [
            ("FMS_PICKER__GC_INTERVAL", "1s".to_string()),
            ("FMS_PICKER__RECONCILE_GRACE", "1s".to_string()),
        ];
        let mut env = quick.to_vec();
        env.push(("FMS_KILL_AT", point.to_string()));
        let mut p = spawn_in(dir.path(), &["serve"], &env, false);
        let name = username();
        let body = json!({"username": name, "password": "correct horse battery staple"});
        assert_eq!(
            c.post(format!("{}/auth/register", p.http))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
        let login = |url: String| {
            let (c, body) = (c.clone(), body.clone());
            async move {
                let t: Value = c
                    .post(format!("{url}/auth/login"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                t["access_token"].as_str().unwrap().to_string()
            }
        };
        let token = login(p.http.clone()).await;
        let data: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let r = c
            .post(format!("{}/api/upload?name=k.bin", p.http))
            .bearer_auth(&token)
            .body(data.clone())
            .send()
            .await;
        assert!(
            r.is_err(),
            "{point}: the upload was answered (kill points are compiled in by the workspace build: run ./test or cargo test --workspace): {r:?}"
        );
        let status = p.child.wait().unwrap();
        assert!(
            !status.success(),
            "{point}: the process should have aborted"
        );
        // Restart on the same data, without the kill point.
        let p = spawn_in(dir.path(), &["serve"], &quick, false);
        let token = login(p.http.clone()).await;
        let list: Value = c
            .get(format!("{}/api/files", p.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), usize::from(visible_after), "{point}: {list}");
        if visible_after {
            let id = items[0]["id"].as_str().unwrap();
            let got = c
                .get(format!("{}/api/files/{id}/content", p.http))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(
                got.as_ref(),
                data.as_slice(),
                "{point}: visible means whole"
            );
        }
        // Reconciliation (every second here, for leftovers older than a second) empties the
        // store of everything no visible file uses.
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(p);
        let out = Command::new(env!("CARGO_BIN_EXE_fms"))
            .args(["stat", "--json", "--data-dir"])
            .arg(dir.path().join("store"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stat: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stat["files"], u64::from(visible_after), "{point}: {stat}");
    }
}

/// `/proc/<pid>/status` field in KiB.
/// Reliability test 18, memory: many uploads at once, each from a client faster than the
/// server (2 cores cutting, hashing and writing for 32 streams, so every queue is full).
/// What the code holds per upload is inside 2 x max chunk + 1 MiB (1.5 MiB): the engine's
/// window (1.5 x max) and credit (64 KiB batch + max), one gathering piece, one queued and one
/// being cut (each <= 128 KiB) and the connection's read buffer (<= 80 KiB): ~1.1 MiB. The
/// process's resident memory adds glibc's per-thread-arena slack on top (0.3-0.5 MiB per
/// upload measured; 56 thread stacks cost ~23 KiB each), which this allows for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_active_upload_is_bounded() {
    const UPLOADS: usize = 32;
    const SIZE: usize = 24 << 20;
    const MAX_CHUNK: u64 = 256 << 10;
    let p = spawn(&["serve"], &[], false);
    let pid = p.child.id();
    let c = client();
    let url = p.http.clone();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let bodies: Vec<Vec<u8>> = (0..UPLOADS + 1)
        .map(|i| noise(SIZE, i as u64 + 1))
        .collect();
    // Warm up: thread pools, allocator arenas, the database's caches.
    let r = c
        .post(format!("{url}/api/upload?name=warm.bin"))
        .bearer_auth(&token)
        .body(bodies[UPLOADS].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proc_kib(pid, "VmRSS:");
    // Reset the high-water mark so VmHWM is this run's peak.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().take(UPLOADS).enumerate() {
        let (c, url, token) = (c.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let hash = blake3::hash(&body).to_hex().to_string();
            let r = c
                .post(format!("{url}/api/upload?name=m{i}.bin"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(120))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["content_hash"], hash);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = proc_kib(pid, "VmHWM:");
    let per_upload = peak.saturating_sub(before) * 1024 / UPLOADS as u64;
    const ALLOCATOR_SLACK: u64 = 512 << 10;
    let bound = 2 * MAX_CHUNK + (1 << 20) + ALLOCATOR_SLACK;
    eprintln!(
        "memory: rss before {before} KiB, peak {peak} KiB, {} KiB per active upload (bound {} KiB incl. allocator slack)",
        per_upload / 1024,
        bound / 1024
    );
    assert!(
        per_upload <= bound,
        "{} KiB per upload > {} KiB",
        per_upload / 1024,
        bound / 1024
    );
}

/// The file named `name` in the user's listing: (id, content hash).
async fn listed(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    name: &str,
) -> Option<(String, String)> {
    let list: Value = c
        .get(format!("{url}/api/files?limit=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["content_hash"].as_str().unwrap().to_string(),
            )
        })
}

async fn download_hash(c: &reqwest::Client, url: &str, token: &str, id: &str) -> String {
    let mut r = c
        .get(format!("{url}/api/files/{id}/content"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut h = blake3::Hasher::new();
    while let Some(b) = r.chunk().await.unwrap() {
        h.update(&b);
    }
    h.finalize().to_hex().to_string()
}

/// Run a client script; its stdout's last line is JSON.
fn run_client(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// Issue 6: the real tus-js-client (Node.js) and tuspy (Python) upload 0 B, 1 B, 5 MiB and
/// 200 MiB to `fms serve`, in one PATCH and in chunks that split at odd offsets; every file
/// downloads byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tus_clients_upload_every_size() {
    let node_path = test_env("FMS_TEST_NODE_PATH");
    let python = test_env("FMS_TEST_PYTHON");
    let p = spawn(&["serve"], &[], false);
    let c = client();
    let url = p.http.clone();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let files = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 5 << 20, 200 << 20];
    let mut paths = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let path = files.path().join(format!("f{i}"));
        std::fs::write(&path, noise(*n, 100 + i as u64)).unwrap();
        paths.push((path, *n));
    }
    let endpoint = format!("{url}/api/uploads/");
    for (client_name, chunk) in [
        ("node", 0u64),
        ("node", 1_000_003),
        ("python", 0),
        ("python", 999_983),
    ] {
        for (path, n) in &paths {
            // 200 MiB in 1 MB pieces is 200 PATCHes; once per client is enough.
            if *n == 200 << 20 && chunk != 0 && client_name == "python" {
                continue;
            }
            let name = format!("{client_name}-{chunk}-{n}.bin");
            let mut cmd = if client_name == "node" {
                let mut cmd = Command::new("node");
                cmd.arg(clients_dir().join("tus-upload.mjs"))
                    .env("FMS_TEST_NODE_PATH", &node_path);
                cmd
            } else {
                let mut cmd = Command::new(&python);
                cmd.arg(clients_dir().join("tus_upload.py"));
                cmd
            };
            cmd.args([
                endpoint.as_str(),
                token.as_str(),
                path.to_str().unwrap(),
                name.as_str(),
                &chunk.to_string(),
            ]);
            let out = tokio::task::spawn_blocking(move || run_client(&mut cmd))
                .await
                .unwrap();
            assert_eq!(out["bytes"], *n, "{name}");
            let want = blake3::hash(&std::fs::read(path).unwrap())
                .to_hex()
                .to_string();
            let (id, hash) = listed(&c, &url, &token, &name)
                .await
                .unwrap_or_else(|| panic!("{name} is not listed"));
            assert_eq!(hash, want, "{name}");
            assert_eq!(download_hash(&c, &url, &token, &id).await, want, "{name}");
        }
    }
}

/// Issue 6 / reliability test 13: `fms serve` killed (SIGKILL) in the middle of a
/// tus-js-client upload and started again on the same address: the client resumes from
/// what was acknowledged and the file is whole. Then the same by hand: after the restart the
/// offset is at least what a 204 acknowledged, at most what was sent, and what must be sent
/// again is at most one checkpoint interval plus one chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_after_the_server_is_killed() {
    const MIB: u64 = 1 << 20;
    let node_path = test_env("FMS_TEST_NODE_PATH");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut p = spawn_at(dir.path(), &listen, &["serve"], &[], false);
    let c = client();
    let url = p.http.clone();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("big");
    let data = noise(160 << 20, 7);
    std::fs::write(&path, &data).unwrap();
    let want = blake3::hash(&data).to_hex().to_string();
    drop(data);

    // tus-js-client, 16 MiB PATCHes; the server dies after ~48 MiB.
    let mut child = Command::new("node")
        .arg(clients_dir().join("tus-upload.mjs"))
        .args([
            &format!("{url}/api/uploads/"),
            token.as_str(),
            path.to_str().unwrap(),
            "resumed.bin",
            &(16 * MIB).to_string(),
        ])
        .env("FMS_TEST_NODE_PATH", &node_path)
        .env("FMS_TUS_PROGRESS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no progress from tus-js-client");
        if let Some(n) = line.strip_prefix("progress ")
            && n.parse::<u64>().unwrap() >= 48 * MIB
        {
            break;
        }
    }
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = spawn_at(dir.path(), &listen, &["serve"], &[], false);
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (id, hash) = listed(&c, &url, &token, "resumed.bin").await.unwrap();
    assert_eq!(hash, want);
    assert_eq!(download_hash(&c, &url, &token, &id).await, want);

    // By hand: one acknowledged PATCH, then one streamed and cut by the kill.
    let r = c
        .post(format!("{url}/api/uploads"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", (64 * MIB).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = format!("{url}{}", r.headers()["location"].to_str().unwrap());
    let data = noise(64 << 20, 8);
    let r = c
        .patch(&loc)
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", "0")
        .body(data[..(5 * MIB) as usize].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let acked = 5 * MIB;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let req = c
        .patch(&loc)
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", acked.to_string())
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
    let inflight = tokio::spawn(async move { req.send().await });
    let sent = 21 * MIB + 12_345;
    for piece in data[acked as usize..(acked + sent) as usize].chunks(MIB as usize) {
        tx.send(Ok(piece.to_vec())).await.unwrap();
    }
    // Let the server take in everything sent, then kill it mid-PATCH.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);
    drop(tx);
    let _ = inflight.await;
    let _p = spawn_at(dir.path(), &listen, &["serve"], &[], false);
    let r = c
        .head(&loc)
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let offset: u64 = r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "resume: acknowledged {acked}, sent {}, offset after restart {offset}",
        acked + sent
    );
    assert!(offset >= acked, "went backwards: {offset} < {acked}");
    assert!(offset <= acked + sent, "more than was sent: {offset}");
    assert!(
        acked + sent - offset <= fms_picker::tus::CHECKPOINT_EVERY + 256 * 1024,
        "{} bytes to send again",
        acked + sent - offset
    );
    // Finish from there; the file is whole.
    let r = c
        .patch(&loc)
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
        .body(data[offset as usize..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let id = loc.rsplit('/').next().unwrap();
    let (_, hash) = listed(&c, &url, &token, "untitled")
        .await
        .unwrap_or_else(|| panic!("upload {id} not listed"));
    assert_eq!(hash, blake3::hash(&data).to_hex().to_string());
}
