//! What the picker's integration tests share: an in-process server (auth, permission and
//! picker, as `fms serve` runs them) on either backend, a client, users, test data.
#![allow(dead_code)]

use std::time::Duration;

use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::http::{self, Service};
use fms_platform::units::{ByteSize, Duration as Dur};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub url: String,
    pub authenticator: std::sync::Arc<fms_auth::verify::Authenticator>,
    pub picker: std::sync::Arc<fms_picker::Picker>,
    pub stop: CancellationToken,
    pub _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn fresh_postgres() -> String {
    let admin = std::env::var("FMS_TEST_POSTGRES_URL")
        .expect("FMS_TEST_POSTGRES_URL is not set: run the tests with ./test");
    fms_platform::db::create_database(&admin, "t")
        .await
        .expect("create a database on the test PostgreSQL")
}

pub async fn start(postgres: bool) -> Server {
    start_with(postgres, 8 << 20, 12 << 20).await
}

pub async fn start_with(postgres: bool, max_file: u64, quota: u64) -> Server {
    start_full(postgres, max_file, quota, Duration::ZERO, "").await
}

pub async fn start_full(
    postgres: bool,
    max_file: u64,
    quota: u64,
    gc_every: Duration,
    notification_url: &str,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.picker.notification_url = notification_url.to_string();
    cfg.picker.gc_interval = Dur(gc_every);
    cfg.picker.max_file_size = ByteSize(max_file);
    cfg.picker.quota = ByteSize(quota);
    cfg.picker.idle_timeout = Dur(Duration::from_secs(1));
    if postgres {
        cfg.database.url = fresh_postgres().await;
    }
    start_cfg(cfg, dir).await
}

/// A server on `cfg` (its data dir kept alive by `dir`).
pub async fn start_cfg(cfg: Config, dir: tempfile::TempDir) -> Server {
    let stop = CancellationToken::new();
    let db = Db::connect(&cfg.database, &cfg.data_dir).await.unwrap();
    let auth = fms_auth::start(
        &cfg,
        db.clone(),
        fms_auth::shared::Shared::local(),
        stop.clone(),
    )
    .await
    .unwrap();
    let authenticator = auth.authenticator.clone();
    let perms = fms_permission::start(&cfg, db.clone(), stop.clone())
        .await
        .unwrap();
    let picker = fms_picker::start_with_gc(
        &cfg,
        db,
        fms_picker::authz::Authz::Local(perms),
        stop.clone(),
    )
    .await
    .unwrap();
    let routes = fms_auth::api::routes(auth).merge(fms_picker::api::routes(
        picker.clone(),
        authenticator.clone(),
    ));
    let app = http::app(
        Service {
            name: "fms-test",
            checks: vec![],
        },
        routes,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    Server {
        url: format!("http://{addr}"),
        authenticator,
        picker,
        stop,
        _dir: dir,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Register and log in; returns (token, username).
pub async fn user(c: &reqwest::Client, url: &str) -> (String, String) {
    let name = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let body = json!({"username": name, "password": "correct horse battery staple"});
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
    let t: Value = r.json().await.unwrap();
    (t["access_token"].as_str().unwrap().to_string(), name)
}

pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
