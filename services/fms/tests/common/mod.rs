//! Helpers shared by the `fms` binary's integration tests: processes, clients, accounts.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Proc {
    pub child: Child,
    pub http: String,
    pub grpc: Option<String>,
    pub _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `fms <args>` with a fresh data dir and `env`; wait until it prints its addresses.
pub fn spawn(args: &[&str], env: &[(&str, String)], want_grpc: bool) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_in(dir.path(), args, env, want_grpc);
    p._dir = Some(dir);
    p
}

/// Start `fms <args>` on the data dir `dir` (kept by the caller across restarts).
pub fn spawn_in(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
    want_grpc: bool,
) -> Proc {
    spawn_at(dir, "127.0.0.1:0", args, env, want_grpc)
}

/// Start `fms <args>` on `dir` with HTTP on `listen` (a fixed port survives restarts).
pub fn spawn_at(
    dir: &std::path::Path,
    listen: &str,
    args: &[&str],
    env: &[(&str, String)],
    want_grpc: bool,
) -> Proc {
    spawn_on(dir, listen, "127.0.0.1:0", args, env, want_grpc)
}

/// Start `fms <args>` on `dir` with HTTP on `listen` and gRPC on `grpc_listen`.
pub fn spawn_on(
    dir: &std::path::Path,
    listen: &str,
    grpc_listen: &str,
    args: &[&str],
    env: &[(&str, String)],
    want_grpc: bool,
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fms"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen, "--grpc-listen", grpc_listen])
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn username() -> String {
    format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub async fn login_session(c: &reqwest::Client, url: &str, user: &str) -> Value {
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

pub async fn me_status(c: &reqwest::Client, url: &str, token: &str) -> u16 {
    c.get(format!("{url}/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./test"))
}

pub async fn fresh_postgres() -> String {
    fms_platform::db::create_database(&env_url("FMS_TEST_POSTGRES_URL"), "t")
        .await
        .expect("create a database on the test PostgreSQL")
}

pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Pseudo-random bytes, distinct per seed (so nothing deduplicates).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
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

/// A loopback port free right now (for a server restarted on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./test"))
}

/// Environment for processes sharing a fresh PostgreSQL database and the test Redis (with
/// keys of their own under a fresh prefix).
pub async fn shared_env() -> Vec<(&'static str, String)> {
    vec![
        ("FMS_DATABASE__URL", fresh_postgres().await),
        ("FMS_REDIS__URL", env_url("FMS_TEST_REDIS_URL")),
        (
            "FMS_REDIS__KEY_PREFIX",
            format!("t{}:", uuid::Uuid::new_v4().simple()),
        ),
    ]
}

/// The id of the user `token` belongs to (`GET /auth/me` on `auth_url`).
pub async fn user_id(c: &reqwest::Client, auth_url: &str, token: &str) -> String {
    let me: Value = c
        .get(format!("{auth_url}/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    me["id"].as_str().unwrap().to_string()
}

/// `GET address` as `token`: (status, JSON body or null).
pub async fn get_json(c: &reqwest::Client, address: String, token: &str) -> (u16, Value) {
    let r = c.get(address).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
