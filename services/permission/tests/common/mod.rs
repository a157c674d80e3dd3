//! Shared set-up: a fresh database on either backend (the embedded SQLite file, or a new
//! database on the throwaway PostgreSQL that `./test` starts), accounts made through the
//! auth store, and the permission service over real gRPC sockets.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use fms_auth::store::{AuthStore, User};
use fms_permission::Permissions;
use fms_platform::Config;
use fms_platform::db::Db;
use fms_platform::grpc::{self, GrpcServices};
use fms_proto::permission::v1::permission_service_client::PermissionServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database file (`fms serve`).
    Embedded,
    /// PostgreSQL (replicas).
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Postgres];

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with ./test, which starts throwaway servers")
    })
}

/// A new, empty database on the test PostgreSQL; returns its URL.
pub async fn fresh_postgres() -> String {
    fms_platform::db::create_database(&env_url("FMS_TEST_POSTGRES_URL"), "t")
        .await
        .expect("create a database on the test PostgreSQL")
}

/// One database with the auth schema (accounts live there) and a config that points at it.
pub struct Env {
    pub backend: Backend,
    pub cfg: Config,
    pub db: Db,
    pub stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Env {
    pub async fn new(backend: Backend) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        // Short intervals keep revocations (which wait out the lease) fast in tests.
        cfg.permission.sync_interval = fms_platform::units::Duration(Duration::from_millis(5));
        cfg.permission.lease = fms_platform::units::Duration(Duration::from_millis(40));
        if backend == Backend::Postgres {
            cfg.database.url = fresh_postgres().await;
        }
        let db = Db::connect(&cfg.database, &cfg.data_dir).await.unwrap();
        AuthStore::open(db.clone()).await.unwrap();
        Env {
            backend,
            cfg,
            db,
            stop: CancellationToken::new(),
            _dir: dir,
        }
    }

    /// Another connection pool on the same database (what a second replica has).
    pub async fn second_db(&self) -> Db {
        Db::connect(&self.cfg.database, &self.cfg.data_dir)
            .await
            .unwrap()
    }

    /// The service with its change-log reader running, as `fms serve` starts it.
    pub async fn start(&self) -> Arc<Permissions> {
        fms_permission::start(&self.cfg, self.db.clone(), self.stop.clone())
            .await
            .unwrap()
    }

    /// A second replica on its own pool.
    pub async fn replica(&self) -> Arc<Permissions> {
        fms_permission::start(&self.cfg, self.second_db().await, self.stop.clone())
            .await
            .unwrap()
    }

    /// `n` accounts; returns their ids.
    pub async fn users(&self, n: usize) -> Vec<String> {
        let store = AuthStore::open(self.db.clone()).await.unwrap();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = uuid::Uuid::now_v7().to_string();
            store
                .create_user(&User {
                    id: id.clone(),
                    username: format!("u{}", uuid::Uuid::new_v4().simple()),
                    email: None,
                    // Never used to log in here.
                    password_hash: "x".into(),
                    created_at: 0,
                })
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    /// Serve `perms` over gRPC on a loopback port; returns a connected client.
    pub async fn grpc(&self, perms: Arc<Permissions>) -> PermissionServiceClient<Channel> {
        let services = GrpcServices::new().with(fms_permission::grpc::Service::server(perms));
        let (routes, health) = grpc::routes(services).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(grpc::serve(
            listener,
            routes,
            health,
            "fms-permission-test",
            self.stop.clone(),
            Duration::from_secs(1),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        PermissionServiceClient::new(channel)
    }
}

pub fn file_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
