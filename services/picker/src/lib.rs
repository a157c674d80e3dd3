//! The picker: the REST API over the chunk engine — streaming uploads, listings, downloads
//! with ranges, rename, delete, share. It owns the engine and the file metadata; who may see
//! a file is the permission service's answer, asked on every access.

pub mod api;
pub mod archive;
pub mod authz;
pub mod connect;
pub mod engine;
pub mod events;
pub mod failpoint;
pub mod files;
pub mod grpc;
pub mod jobs;
pub mod meta;
pub mod openapi;
pub mod transform;
pub mod tus;

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
    /// The downloader (imports); `None`: imports answer 503.
    pub downloader: Option<jobs::Downloader>,
    /// The transformer and the transforms in flight.
    pub transforms: transform::Transforms,
    /// Connected cloud accounts.
    pub connect: connect::Connect,
    /// Background GC passes completed (for tests and metrics).
    pub gc_runs: std::sync::atomic::AtomicU64,
    /// Bytes the bulk gRPC API received in data and chunk messages (also the metric
    /// `picker_grpc_upload_bytes_received_total`).
    pub grpc_bytes_received: std::sync::atomic::AtomicU64,
    /// Quota checks at commit are serialized per user (by hash) in this process, so
    /// concurrent uploads cannot together pass the quota.
    commit_locks: Vec<tokio::sync::Mutex<()>>,
    /// What storing a byte costs, learned from uploads of new content; a deduplicated upload
    /// is held to it so another user's copy never shows in the response time.
    pub(crate) write_cost: engine::WriteCost,
}

/// What a reconciliation pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Engine files no metadata row names (a crash between engine commit and row insert).
    pub engine_orphans: u64,
    /// Rows whose owner holds nothing on them (a crash between row insert and owner grant,
    /// or between access removal and row delete).
    pub row_orphans: u64,
}

impl Picker {
    /// Remove what a crash between the steps of an upload or delete left behind, older than
    /// `grace` (so uploads in flight are never touched). Scans the store and the table: run
    /// it rarely (the GC loop does, each tick).
    pub async fn reconcile(&self, grace: std::time::Duration) -> Result<Reconciled, String> {
        let now_ms = api::now_ms();
        let cutoff = now_ms - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let mut out = Reconciled::default();
        // Rows without an owner grant: invisible to everyone, so gone for good.
        for (id, owner, engine_id) in self
            .meta
            .rows_before(cutoff)
            .await
            .map_err(|e| e.to_string())?
        {
            // The owner holds every right on their file; holding none means the owner grant
            // never landed (or was removed by a delete that did not finish).
            match self
                .authz
                .check(&owner, &id, fms_permission::model::Right::Read)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    let _ = self.authz.delete_object(&id).await;
                    self.meta.delete(&id).await.map_err(|e| e.to_string())?;
                    if let Ok(eid) = engine_id.parse() {
                        let _ = self.engine.delete(eid).await;
                    }
                    out.row_orphans += 1;
                }
                // Cannot tell now: leave it for the next pass.
                Err(_) => {}
            }
        }
        // Engine files no row names.
        let named = self.meta.engine_ids().await.map_err(|e| e.to_string())?;
        let store = self.engine.store().clone();
        let files = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for (id, meta) in files {
            let old = i64::try_from(meta.created_ms).unwrap_or(i64::MAX) < cutoff;
            if old && !named.contains(&id.to_string()) {
                match self.engine.delete(id).await {
                    Ok(()) => out.engine_orphans += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if out != Reconciled::default() {
            tracing::warn!(
                ?out,
                "reconciliation removed what interrupted uploads or deletes left behind"
            );
        }
        Ok(out)
    }

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
    let every = cfg.picker.stats_interval.0;
    if !every.is_zero() {
        let store = picker.engine.store().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.stats()).await {
                    Ok(Ok(s)) => record_engine_stats(&s),
                    Ok(Err(e)) => tracing::warn!(error = %e, "chunk store totals"),
                    Err(e) => tracing::warn!(error = %e, "chunk store totals task"),
                }
            }
        });
    }
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
                if let Some(p) = this.upgrade()
                    && let Err(e) = p.reconcile(p.cfg.reconcile_grace.0).await
                {
                    tracing::warn!(error = %e, "reconciliation failed");
                }
                if let Some(p) = this.upgrade()
                    && let Err(e) = tus::forget_old(&p).await
                {
                    tracing::warn!(error = %e, "forgetting old uploads failed");
                }
                if let Some(p) = this.upgrade()
                    && let Err(e) = jobs::forget_old(&p).await
                {
                    tracing::warn!(error = %e, "forgetting old jobs failed");
                }
                if let Some(p) = this.upgrade()
                    && let Err(e) = transform::evict(&p, p.cfg.transform_cache_max.0).await
                {
                    tracing::warn!(error = %e, "transform cache eviction failed");
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

/// The chunk store's totals as gauges, with when they were taken.
fn record_engine_stats(s: &fms_engine::Stats) {
    metrics::gauge!("engine_files").set(s.files as f64);
    metrics::gauge!("engine_logical_bytes").set(s.logical_bytes as f64);
    metrics::gauge!("engine_stored_bytes").set(s.stored_bytes as f64);
    metrics::gauge!("engine_live_chunk_bytes").set(s.live_chunk_bytes as f64);
    metrics::gauge!("engine_dead_bytes").set(s.dead_bytes as f64);
    metrics::gauge!("engine_dedup_ratio").set(s.dedup_ratio);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("engine_stats_timestamp_seconds").set(now);
}

/// Open the store under `cfg.data_dir` and the metadata tables (no background work).
pub async fn start(cfg: &Config, db: Db, authz: Authz) -> Result<Arc<Picker>, String> {
    // The store has a directory of its own: reconciliation may delete engine files no row
    // names, so nothing else (e.g. `fms put` on the data directory) may share it.
    let store_dir = cfg.data_dir.join("store");
    let engine = Engine::open(store_dir.clone())
        .await
        .map_err(|e| format!("chunk store in {}: {e}", store_dir.display()))?;
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
    let downloader = if cfg.picker.downloader_url.is_empty() {
        None
    } else {
        Some(jobs::downloader(&cfg.picker.downloader_url)?)
    };
    let connect = connect::Connect::open(&cfg.connect, &cfg.data_dir)?;
    Ok(Arc::new(Picker {
        connect,
        engine,
        meta,
        authz,
        users,
        cfg: cfg.picker.clone(),
        events,
        downloader,
        transforms: transform::Transforms::new(
            &cfg.picker.transformer_url,
            cfg.picker.transform_jobs_per_user,
        )?,
        gc_runs: 0.into(),
        grpc_bytes_received: std::sync::atomic::AtomicU64::new(0),
        commit_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        write_cost: engine::WriteCost::default(),
    }))
}
