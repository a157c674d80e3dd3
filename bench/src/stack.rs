//! The system under test in the benchmark's own process: auth, permission and picker on a
//! fresh data dir (embedded database, local packs), REST on a loopback port, the picker's
//! public gRPC API on another. Shared by the picker and tus benchmarks (each uses part).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::http::{self, Service};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error>;

pub struct Stack {
    /// `http://127.0.0.1:port` of the REST API.
    pub url: String,
    /// `http://127.0.0.1:port` of the gRPC API.
    pub grpc: String,
    pub picker: Arc<fms_picker::Picker>,
    pub stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Start the stack (no quota, 64 GiB files) with `extra` routes beside the API.
pub async fn start(extra: axum::Router) -> Result<Stack, BoxError> {
    let dir = tempfile::tempdir_in(std::env::var("FMS_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.picker.quota = fms_platform::units::ByteSize(0);
    cfg.picker.max_file_size = fms_platform::units::ByteSize(64 << 30);
    let stop = CancellationToken::new();
    let db = Db::connect(&cfg.database, &cfg.data_dir).await?;
    let auth = fms_auth::start(
        &cfg,
        db.clone(),
        fms_auth::shared::Shared::local(),
        stop.clone(),
    )
    .await?;
    let authenticator = auth.authenticator.clone();
    let perms = fms_permission::start(&cfg, db.clone(), stop.clone()).await?;
    let picker = fms_picker::start(&cfg, db, fms_picker::authz::Authz::Local(perms)).await?;
    let routes = fms_auth::api::routes(auth)
        .merge(fms_picker::api::routes(
            picker.clone(),
            authenticator.clone(),
        ))
        .merge(extra);
    let app = http::app(
        Service {
            name: "fms-bench",
            checks: vec![],
        },
        routes,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(http::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    let services = fms_platform::grpc::GrpcServices::new().with(fms_picker::files::Files::server(
        picker.clone(),
        authenticator,
    ));
    let (grpc_routes, health) = fms_platform::grpc::routes(services).await?;
    let glistener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gaddr = glistener.local_addr()?;
    tokio::spawn(fms_platform::grpc::serve(
        glistener,
        grpc_routes,
        health,
        "fms-bench",
        stop.clone(),
        Duration::from_secs(1),
    ));
    Ok(Stack {
        url: format!("http://{addr}"),
        grpc: format!("http://{gaddr}"),
        picker,
        stop,
        _dir: dir,
    })
}

/// A client for long transfers.
pub fn client() -> Result<reqwest::Client, BoxError> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3600))
        .build()?)
}

/// Register `username` and log in: its access token.
pub async fn login(c: &reqwest::Client, url: &str, username: &str) -> Result<String, BoxError> {
    let body = json!({"username": username, "password": "correct horse battery staple"});
    c.post(format!("{url}/auth/register"))
        .json(&body)
        .send()
        .await?;
    let t: Value = c
        .post(format!("{url}/auth/login"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    Ok(t["access_token"]
        .as_str()
        .ok_or("login failed")?
        .to_string())
}
