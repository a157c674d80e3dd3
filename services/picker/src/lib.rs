//! The picker: the REST API over the chunk engine — streaming uploads, listings, downloads
//! with ranges, rename, delete, share. It owns the engine and the file metadata; who may see
//! a file is the permission service's answer, asked on every access.

pub mod api;
pub mod authz;
pub mod engine;
pub mod events;
pub mod grpc;
pub mod meta;
pub mod openapi;

use std::sync::Arc;

use fms_auth::store::AuthStore;
use fms_platform::Config;
use fms_platform::config::PickerConfig;
use fms_platform::db::Db;

use authz::Authz;
use engine::Engine;
use meta::Meta;

/// Everything the picker's handlers share.
#[derive(Debug)]
pub struct Picker {
    pub engine: Engine,
    pub meta: Meta,
    pub authz: Authz,
    /// Accounts (share targets are named by username).
    pub users: AuthStore,
    pub cfg: PickerConfig,
    /// Events for the notification service.
    pub events: events::Publisher,
    /// Background GC passes completed (for tests and metrics).
    pub gc_runs: std::sync::atomic::AtomicU64,
    /// Quota checks at commit are serialized per user (by hash) in this process, so
    /// concurrent uploads cannot together pass the quota.
    commit_locks: Vec<tokio::sync::Mutex<()>>,
}

impl Picker {
    /// The commit lock of `user`.
    pub(crate) fn commit_lock(&self, user: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        &self.commit_locks[(h as usize) % self.commit_locks.len()]
    }
}

/// Open the store under `cfg.data_dir` and the metadata tables; collect garbage every
/// `picker.gc_interval` until `stop`.
pub async fn start_with_gc(
    cfg: &Config,
    db: Db,
    authz: Authz,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Arc<Picker>, String> {
    let picker = start(cfg, db, authz).await?;
    let every = cfg.picker.gc_interval.0;
    if !every.is_zero() {
        let engine = picker.engine.clone();
        let this = Arc::downgrade(&picker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await; // not at start-up
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let store = engine.store().clone();
                match tokio::task::spawn_blocking(move || store.gc()).await {
                    Ok(Ok(r)) => {
                        if let Some(p) = this.upgrade() {
                            p.gc_runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        metrics::counter!("picker_gc_bytes_reclaimed_total")
                            .increment(r.bytes_reclaimed);
                        tracing::info!(
                            sessions_expired = r.sessions_expired,
                            packs_compacted = r.packs_compacted,
                            bytes_reclaimed = r.bytes_reclaimed,
                            "chunk store GC"
                        );
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "chunk store GC failed"),
                    Err(e) => tracing::error!(error = %e, "chunk store GC task failed"),
                }
            }
        });
    }
    Ok(picker)
}

/// Open the store under `cfg.data_dir` and the metadata tables (no background work).
pub async fn start(cfg: &Config, db: Db, authz: Authz) -> Result<Arc<Picker>, String> {
    let engine = Engine::open(cfg.data_dir.clone())
        .await
        .map_err(|e| format!("chunk store in {}: {e}", cfg.data_dir.display()))?;
    let meta = Meta::open(db.clone())
        .await
        .map_err(|e| format!("picker metadata: {e}"))?;
    let users = AuthStore::open(db)
        .await
        .map_err(|e| format!("accounts: {e}"))?;
    let events = if cfg.picker.notification_url.is_empty() {
        events::Publisher::none()
    } else {
        events::Publisher::grpc(&cfg.picker.notification_url)?
    };
    Ok(Arc::new(Picker {
        engine,
        meta,
        authz,
        users,
        cfg: cfg.picker.clone(),
        events,
        gc_runs: 0.into(),
        commit_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
    }))
}
