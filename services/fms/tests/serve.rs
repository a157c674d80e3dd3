//! The `fms` binary as users and operators run it: `fms serve` (everything in one process,
//! no external server) and `fms auth` replicas on PostgreSQL + Redis.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Proc {
    child: Child,
    http: String,
    grpc: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `fms <args>` with a fresh data dir and `env`; wait until it prints its addresses.
fn spawn(args: &[&str], env: &[(&str, String)], want_grpc: bool) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_in(dir.path(), args, env, want_grpc);
    p._dir = Some(dir);
    p
}

/// Start `fms <args>` on the data dir `dir` (kept by the caller across restarts).
fn spawn_in(dir: &std::path::Path, args: &[&str], env: &[(&str, String)], want_grpc: bool) -> Proc {
    spawn_at(dir, "127.0.0.1:0", args, env, want_grpc)
}

/// Start `fms <args>` on `dir` with HTTP on `listen` (a fixed port survives restarts).
fn spawn_at(
    dir: &std::path::Path,
    listen: &str,
    args: &[&str],
    env: &[(&str, String)],
    want_grpc: bool,
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fms"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen, "--grpc-listen", "127.0.0.1:0"])
        .env("FMS_LOG__FORMAT", "json")
        .env_remove("FMS_DATABASE__URL")
        .env_remove("FMS_REDIS__URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut http, mut grpc) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.is_none() || (want_grpc && grpc.is_none()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("fms {args:?} did not start"));
        if let Some(rest) = line.strip_prefix("fms: HTTP on ") {
            http = Some(rest.split_whitespace().next().unwrap().to_string());
        }
        if let Some(rest) = line.strip_prefix("fms: gRPC on ") {
            grpc = Some(format!("http://{}", rest.trim()));
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Proc {
        child,
        http: http.unwrap(),
        grpc,
        _dir: None,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn username() -> String {
    format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn login_session(c: &reqwest::Client, url: &str, user: &str) -> Value {
    let body = json!({"username": user, "password": "correct horse battery staple"});
    let r = c
        .post(format!("{url}/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{url}/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn me_status(c: &reqwest::Client, url: &str, token: &str) -> u16 {
    c.get(format!("{url}/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

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
    for service in [
        "grpc.health.v1.Health",
        "fms.permission.v1.PermissionService",
    ] {
        assert!(names.iter().any(|n| n == service), "{service}: {names:?}");
    }
    // Contracts of services not built yet stay out of the list.
    assert!(
        !names.iter().any(|n| n.starts_with("fms.transformer")),
        "{names:?}"
    );
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

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./test"))
}

async fn fresh_postgres() -> String {
    fms_platform::db::create_database(&env_url("FMS_TEST_POSTGRES_URL"), "t")
        .await
        .expect("create a database on the test PostgreSQL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replicas_share_users_keys_and_revocations() {
    let env = [
        ("FMS_DATABASE__URL", fresh_postgres().await),
        ("FMS_REDIS__URL", env_url("FMS_TEST_REDIS_URL")),
        // This test's own keys in the shared test Redis.
        (
            "FMS_REDIS__KEY_PREFIX",
            format!("t{}:", uuid::Uuid::new_v4().simple()),
        ),
    ];
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
    let env = [
        ("FMS_DATABASE__URL", fresh_postgres().await),
        ("FMS_REDIS__URL", env_url("FMS_TEST_REDIS_URL")),
        (
            "FMS_REDIS__KEY_PREFIX",
            format!("t{}:", uuid::Uuid::new_v4().simple()),
        ),
    ];
    // Accounts come from the auth service on the same database.
    let auth = spawn(&["auth"], &env, false);
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = login_session(&c, &auth.http, &username()).await;
        let me: Value = c
            .get(format!("{}/auth/me", auth.http))
            .bearer_auth(t["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(me["id"].as_str().unwrap().to_string());
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
    let mut env = vec![
        ("FMS_DATABASE__URL", fresh_postgres().await),
        ("FMS_REDIS__URL", env_url("FMS_TEST_REDIS_URL")),
        (
            "FMS_REDIS__KEY_PREFIX",
            format!("t{}:", uuid::Uuid::new_v4().simple()),
        ),
    ];
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
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Pseudo-random bytes, distinct per seed (so nothing deduplicates).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

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

/// A loopback port free right now (for a server restarted on the same address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./test"))
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `/ws` with a bearer token (and `query`, e.g. `last_event_id=3`).
async fn socket(http: &str, token: &str, query: &str) -> Result<Socket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws?{query}", http.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if !token.is_empty() {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, _)) => Ok(s),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The next JSON frame within `wait`; `None` on timeout, `Some(Err(code))` on close.
async fn next_json(s: &mut Socket, wait: Duration) -> Option<Result<Value, u16>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let m = tokio::time::timeout_at(deadline, s.next()).await.ok()?;
        match m {
            Some(Ok(Message::Text(t))) => return Some(Ok(serde_json::from_str(&t).unwrap())),
            Some(Ok(Message::Close(f))) => {
                return Some(Err(f.map(|f| u16::from(f.code)).unwrap_or(1005)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Some(Err(1006)),
        }
    }
}

async fn publish(
    grpc: &str,
    users: &[&str],
    event_id: &str,
    kind: &str,
) -> Result<std::collections::HashMap<String, u64>, tonic::Status> {
    use fms_proto::notification::v1 as pb;
    let mut c =
        pb::notification_service_client::NotificationServiceClient::connect(grpc.to_string())
            .await
            .unwrap();
    c.publish(pb::PublishRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        event: Some(pb::Event {
            id: event_id.into(),
            r#type: kind.into(),
            source: "test".into(),
            subject: "s".into(),
            time: None,
            data_json: r#"{"n":1}"#.into(),
        }),
    })
    .await
    .map(|r| r.into_inner().sequences)
}

/// Issue 9: events reach exactly their user's sockets (an upload through the picker
/// produces `file.uploaded`); a client reconnecting with the last id gets exactly what it
/// missed, in order, then live events; a repeated publish is stored once; events past the
/// retention are announced as a gap; tickets work once; bad token, no token, bad Origin are
/// refused at the upgrade; a revoked token closes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_their_user_and_resume_exactly() {
    use futures_util::SinkExt;
    let p = spawn(
        &["serve"],
        &[
            ("FMS_NOTIFICATION__HEARTBEAT", "2s".into()),
            ("FMS_NOTIFICATION__RETENTION", "8s".into()),
        ],
        true,
    );
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let a = login_session(&c, &url, &username()).await;
    let b = login_session(&c, &url, &username()).await;
    let (ta, tb) = (
        a["access_token"].as_str().unwrap().to_string(),
        b["access_token"].as_str().unwrap().to_string(),
    );
    let me: Value = c
        .get(format!("{url}/auth/me"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid_a = me["id"].as_str().unwrap().to_string();

    // Refused at the upgrade.
    assert_eq!(
        socket(&url, "", "").await.err().unwrap(),
        "401 Unauthorized"
    );
    assert_eq!(
        socket(&url, "not-a-token", "").await.err().unwrap(),
        "401 Unauthorized"
    );
    {
        // Forged: `alg: none`, and A's signature over claims naming someone else.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = ta.split('.').collect();
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("someone-else");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        for forged in [none, tampered] {
            assert_eq!(
                socket(&url, &forged, "").await.err().unwrap(),
                "401 Unauthorized"
            );
        }
    }
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/ws", url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {ta}").parse().unwrap());
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("bad Origin accepted: {:?}", other.map(|_| ())),
        }
    }

    // Delivery: both of A's sockets, none of B's.
    let mut a1 = socket(&url, &ta, "").await.unwrap();
    let mut a2 = socket(&url, &ta, "").await.unwrap();
    let mut b1 = socket(&url, &tb, "").await.unwrap();
    let r = c
        .post(format!("{url}/api/upload?name=hello.txt"))
        .bearer_auth(&ta)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let file: Value = r.json().await.unwrap();
    for s in [&mut a1, &mut a2] {
        let e = next_json(s, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(e["type"], "file.uploaded");
        assert_eq!(e["data"]["file_id"], file["id"]);
        assert_eq!(e["id"], 1);
    }
    assert!(
        next_json(&mut b1, Duration::from_millis(500))
            .await
            .is_none(),
        "B hears nothing"
    );

    // Resume: 100 events while A is away, then exactly those, in order, then live ones.
    a1.close(None).await.unwrap();
    for i in 0..100 {
        publish(&grpc, &[&uid_a], &format!("ev-{i}"), "test.event")
            .await
            .unwrap();
    }
    // A publisher retrying the same event stores it once.
    let again = publish(&grpc, &[&uid_a], "ev-99", "test.event")
        .await
        .unwrap();
    assert_eq!(again[&uid_a], 101);
    let mut a3 = socket(&url, &ta, "last_event_id=1").await.unwrap();
    for want in 2..=101u64 {
        let e = next_json(&mut a3, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
        assert_eq!(e["event_id"], format!("ev-{}", want - 2));
    }
    publish(&grpc, &[&uid_a], "live", "test.event")
        .await
        .unwrap();
    let e = next_json(&mut a3, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 102);
    assert!(
        next_json(&mut a3, Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate"
    );
    // The other socket, live all along, saw all 101 once each.
    for want in 2..=102u64 {
        let e = next_json(&mut a2, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
    }
    // Bad publishes.
    assert_eq!(
        publish(&grpc, &[], "x", "t").await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        publish(&grpc, &[&uid_a], "x", "bad type!")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );

    // A ticket opens one socket, once.
    let t: Value = c
        .post(format!("{url}/ws/ticket"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = t["ticket"].as_str().unwrap();
    let mut viat = socket(&url, "", &format!("ticket={ticket}&last_event_id=101"))
        .await
        .unwrap();
    let e = next_json(&mut viat, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 102);
    assert_eq!(
        socket(&url, "", &format!("ticket={ticket}"))
            .await
            .err()
            .unwrap(),
        "401 Unauthorized"
    );

    // An oversized client frame closes the socket.
    viat.send(tokio_tungstenite::tungstenite::Message::Text(
        "x".repeat(10_000).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_json(&mut viat, Duration::from_secs(5)).await,
        Some(Err(_))
    ));

    // Past the retention: the client is told what it cannot get back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    publish(&grpc, &[&uid_a], "after", "test.event")
        .await
        .unwrap();
    let mut late = socket(&url, &ta, "last_event_id=50").await.unwrap();
    let g = next_json(&mut late, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g["type"], "gap");
    assert_eq!(g["from"], 51);
    assert_eq!(g["to"], 102);
    let e = next_json(&mut late, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 103);

    // Logout: the open socket is closed with 4001.
    let r = c
        .post(format!("{url}/auth/logout"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut code = None;
    for _ in 0..50 {
        match next_json(&mut late, Duration::from_millis(200)).await {
            Some(Err(c)) => {
                code = Some(c);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(code, Some(4001));
    drop(b1);
}

/// Issue 9: two `fms notification` replicas on PostgreSQL + Redis: a socket on one gets
/// events published through either, in order, with no gap; a client resumes on the other
/// replica with exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_replicas_share_events_through_redis() {
    let mut env = vec![
        ("FMS_DATABASE__URL", fresh_postgres().await),
        ("FMS_REDIS__URL", env_url("FMS_TEST_REDIS_URL")),
        (
            "FMS_REDIS__KEY_PREFIX",
            format!("t{}:", uuid::Uuid::new_v4().simple()),
        ),
    ];
    let auth = spawn(&["auth"], &env, false);
    env.push((
        "FMS_AUTH__JWKS_URL",
        format!("{}/.well-known/jwks.json", auth.http),
    ));
    let n1 = spawn(&["notification"], &env, true);
    let n2 = spawn(&["notification"], &env, true);
    let c = client();
    let t = login_session(&c, &auth.http, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let me: Value = c
        .get(format!("{}/auth/me", auth.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid = me["id"].as_str().unwrap().to_string();
    let (g1, g2) = (n1.grpc.clone().unwrap(), n2.grpc.clone().unwrap());

    let mut s = socket(&n2.http, &token, "").await.unwrap();
    // Subscribed replicas: give the channel a moment after the socket is up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..21 {
        let via = if i % 2 == 0 { &g1 } else { &g2 };
        publish(via, &[&uid], &format!("r-{i}"), "test.event")
            .await
            .unwrap();
    }
    for want in 1..=21u64 {
        let e = next_json(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want, "in order, no gap, across replicas");
    }
    drop(s);
    for i in 21..31 {
        publish(&g2, &[&uid], &format!("r-{i}"), "test.event")
            .await
            .unwrap();
    }
    let mut s = socket(&n1.http, &token, "last_event_id=21").await.unwrap();
    for want in 22..=31u64 {
        let e = next_json(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
        assert_eq!(e["event_id"], format!("r-{}", want - 1));
    }
    assert!(
        next_json(&mut s, Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// Issue 9 (reliability test 35): a client that stops reading is cut off (4008) once its
/// queue is full, instead of the server holding what it cannot send; the server's memory
/// stays bounded; the client then resumes with its last id and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_cut_off_and_resumes() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let p = spawn(
        &["serve"],
        &[("FMS_NOTIFICATION__SEND_QUEUE", "8".into())],
        true,
    );
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let me: Value = c
        .get(format!("{url}/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid = me["id"].as_str().unwrap().to_string();

    // A client with a small receive buffer that reads nothing for now.
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut slow, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = proc_kib(p.child.id(), "VmRSS:");

    // 300 events of ~60 KiB each (~18 MiB), far more than the socket's buffers hold.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(60_000));
    let mut n = fms_proto::notification::v1::notification_service_client::NotificationServiceClient::connect(grpc.clone())
        .await
        .unwrap();
    for i in 0..300 {
        n.publish(fms_proto::notification::v1::PublishRequest {
            user_ids: vec![uid.clone()],
            event: Some(fms_proto::notification::v1::Event {
                id: format!("big-{i}"),
                r#type: "test.big".into(),
                source: "test".into(),
                subject: String::new(),
                time: None,
                data_json: big.clone(),
            }),
        })
        .await
        .unwrap();
    }
    let rss_after = proc_kib(p.child.id(), "VmRSS:");

    // Reading now: some events, then the server's close with 4008; never all 300.
    let mut last = 0u64;
    let mut code = None;
    while let Some(m) = next_json(&mut slow, Duration::from_secs(10)).await {
        match m {
            Ok(e) => last = e["id"].as_u64().unwrap(),
            Err(c) => {
                code = Some(c);
                break;
            }
        }
    }
    assert_eq!(code, Some(4008), "cut off as too slow");
    assert!(last < 300, "received {last} of 300 before the cut");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "server RSS grew {} KiB",
        rss_after.saturating_sub(rss_before)
    );
    // Resuming from the last id it saw, it gets the rest.
    let mut again = socket(&url, &token, &format!("last_event_id={last}"))
        .await
        .unwrap();
    for want in last + 1..=300 {
        let e = next_json(&mut again, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
    }
    eprintln!(
        "slow consumer: cut after {last} of 300 events; server RSS {rss_before} -> {rss_after} KiB"
    );
}
