//! Test harness: an auth server on a real socket over a real database (the embedded file,
//! or a fresh database on the throwaway PostgreSQL that `./test` starts) and real shared
//! state (in-process, or the throwaway Redis).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use fms_auth::api::AuthService;
use fms_auth::shared::Shared;
use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::http::{self, Service};
use tokio_util::sync::CancellationToken;

/// Where a test's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded database file, in-process shared state (`fms serve`).
    Embedded,
    /// PostgreSQL and Redis (a split deployment).
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Postgres];

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with ./test, which starts throwaway servers")
    })
}

pub fn redis_url() -> String {
    env_url("FMS_TEST_REDIS_URL")
}

/// A new, empty database on the test PostgreSQL; returns its URL.
pub async fn fresh_postgres() -> String {
    fms_platform::db::create_database(&env_url("FMS_TEST_POSTGRES_URL"), "t")
        .await
        .expect("create a database on the test PostgreSQL")
}

/// A configuration for `backend`, with its data under `dir`.
pub async fn config(backend: Backend, dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    if backend == Backend::Postgres {
        cfg.database.url = fresh_postgres().await;
        cfg.redis.url = redis_url();
        // This test's own keys in the shared test Redis.
        cfg.redis.key_prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    }
    cfg
}

/// A running auth server.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    pub svc: Arc<AuthService>,
    pub stop: CancellationToken,
    pub cfg: Config,
    /// The data directory when the server made it (take it to outlive the server).
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(backend, dir.path()).await;
        tweak(&mut cfg);
        let mut s = Self::start_config(cfg).await;
        s.dir = Some(dir);
        s
    }

    /// Start on an existing configuration (several servers may share a database).
    pub async fn start_config(cfg: Config) -> Server {
        let stop = CancellationToken::new();
        let db = Db::connect(&cfg.database, &cfg.data_dir).await.unwrap();
        let shared = Shared::from_config(&cfg.redis).await.unwrap();
        let svc = fms_auth::start(&cfg, db, shared, stop.clone())
            .await
            .unwrap();
        let app = http::app(
            Service {
                name: "fms-auth-test",
                checks: Vec::new(),
            },
            fms_auth::api::routes(svc.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(http::serve(
            listener,
            app,
            stop.clone(),
            std::time::Duration::from_secs(5),
        ));
        Server {
            addr,
            url: format!("http://{addr}"),
            svc,
            stop,
            cfg,
            dir: None,
        }
    }
}

/// A client that connects from `source` (127.0.0.x) so tests can act as several addresses.
pub fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(source.parse().unwrap()))
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    client_from("127.0.0.1")
}

/// A unique username.
pub fn username(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub const PASSWORD: &str = "correct horse battery staple";

pub async fn register(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    c.post(format!("{url}/auth/register"))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

pub async fn login(
    c: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    c.post(format!("{url}/auth/login"))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Register and log in; returns the token response.
pub async fn session(c: &reqwest::Client, url: &str, user: &str) -> serde_json::Value {
    let r = register(c, url, user, PASSWORD).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let r = login(c, url, user, PASSWORD).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

pub async fn me(c: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    c.get(format!("{url}/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}
