//! The picker: the REST API over the chunk engine — streaming uploads, listings, downloads
//! with ranges, rename, delete, share. It owns the engine and the file metadata; who may see
//! a file is the permission service's answer, asked on every access.

pub mod api;
pub mod authz;
pub mod engine;
pub mod grpc;
pub mod meta;

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
}

/// Open the store under `cfg.data_dir` and the metadata tables.
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
    Ok(Arc::new(Picker {
        engine,
        meta,
        authz,
        users,
        cfg: cfg.picker.clone(),
    }))
}
