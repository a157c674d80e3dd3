//! # fms-auth
//!
//! The auth service and the verification library every other service uses.
//!
//! - [`tokens`]: EdDSA-signed JWT access tokens, strict verification, JWKS.
//! - [`keys`]: signing keys in the database, shared by replicas, rotated with a lead time.
//! - [`password`]: the NIST registration policy and argon2id hashing behind a semaphore.
//! - [`store`]: users, refresh-token families, revocations and keys in PostgreSQL or the
//!   embedded database.
//! - [`shared`]: revocations and login-failure counters in Redis or in the process.
//! - [`verify`]: [`verify::Authenticator`], how any service turns a bearer token into claims.
//! - [`api`]: the REST endpoints; [`start`] builds the whole service from configuration.

pub mod api;
pub mod keys;
pub mod password;
pub mod shared;
pub mod store;
pub mod tokens;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use fms_platform::Config;
use fms_platform::db::Db;
use tokio_util::sync::CancellationToken;

pub use tokens::{Claims, TokenError, TokenService};

/// How often expired refresh tokens, revocations and keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often persisted revocations are pushed into Redis again.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

async fn resync_revocations(
    store: &store::AuthStore,
    shared: &shared::Shared,
) -> Result<(), String> {
    for (jti, until) in store.live_revocations().await.map_err(|e| e.to_string())? {
        // Stored with the leeway included; `revoke` adds it again, harmlessly.
        shared
            .revoke(&jti, until.max(0) as u64)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Build the auth service: migrations, keys (first one made if needed), revocations loaded,
/// background key maintenance and purging until `stop`.
pub async fn start(
    cfg: &Config,
    db: Db,
    shared: shared::Shared,
    stop: CancellationToken,
) -> Result<Arc<api::AuthService>, String> {
    let a = &cfg.auth;
    let store = store::AuthStore::open(db)
        .await
        .map_err(|e| e.to_string())?;
    let keys = keys::Keys::open(
        store.clone(),
        &a.issuer,
        &a.audience,
        a.access_ttl.0,
        a.key_rotation.0,
    )
    .await
    .map_err(|e| e.to_string())?;
    keys.spawn_maintenance(stop.clone());
    // Revocations are persisted in the database and pushed into the shared state at start
    // and every RESYNC_EVERY: in-process state survives a restart, and a Redis that lost its
    // data (restart without persistence, failover, eviction) is refilled.
    resync_revocations(&store, &shared).await?;
    {
        let (store, shared, stop) = (store.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RESYNC_EVERY) => {}
                }
                if shared.is_distributed()
                    && let Err(e) = resync_revocations(&store, &shared).await
                {
                    tracing::warn!(error = %e, "revocation resync failed");
                }
            }
        });
    }
    let g = &a.argon2;
    let hasher =
        password::Hasher::new(g.memory_kib, g.iterations, g.parallelism, g.max_concurrent)?;
    let expect = tokens::Expect {
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
    };
    let authenticator = Arc::new(verify::Authenticator::local(
        expect,
        keys.published(),
        shared.clone(),
    ));
    let purge_store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(PURGE_EVERY) => {}
            }
            match purge_store.purge_expired().await {
                Ok(n) => tracing::debug!(rows = n, "expired auth rows purged"),
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    });
    Ok(Arc::new(api::AuthService {
        store,
        keys,
        hasher,
        shared,
        authenticator,
        cfg: a.clone(),
    }))
}
