//! Signing keys of a running auth service: kept in the database so every replica signs
//! with the same keys and a restart logs nobody out; reloaded every [`RELOAD_EVERY`];
//! rotated on schedule with a lead time ([`PUBLISH_AHEAD`]) during which the new key is in
//! the JWKS but does not sign yet.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::{AuthStore, StoreError};
use crate::tokens::{KeyRecord, KeySet, TokenService, now_secs};

/// How long a new key is published before it signs. Longer than the verifiers' JWKS
/// refresh period ([`crate::verify::REFRESH_EVERY`]).
pub const PUBLISH_AHEAD: Duration = Duration::from_secs(60);
/// How often replicas reload keys from the database (and check the rotation schedule).
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The key ring of one auth replica.
pub struct Keys {
    store: AuthStore,
    issuer: String,
    audience: String,
    ttl: Duration,
    rotation: Duration,
    service: RwLock<Arc<TokenService>>,
    published: Arc<RwLock<KeySet>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// Keys could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("keys: {0}")]
    Key(String),
}

impl Keys {
    /// Load the stored keys, making the first one if there is none.
    pub async fn open(
        store: AuthStore,
        issuer: &str,
        audience: &str,
        ttl: Duration,
        rotation: Duration,
    ) -> Result<Arc<Keys>, KeyError> {
        let mut records = store.keys().await?;
        if records.is_empty() {
            store
                .save_keys(&[KeyRecord::generate(now_secs()).map_err(KeyError::Key)?])
                .await?;
            records = store.keys().await?;
        }
        let service =
            TokenService::from_records(issuer, audience, ttl, records).map_err(KeyError::Key)?;
        let published = Arc::new(RwLock::new(service.key_set().clone()));
        Ok(Arc::new(Keys {
            store,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl,
            rotation,
            service: RwLock::new(Arc::new(service)),
            published,
        }))
    }

    /// The token service to issue and verify with now.
    pub fn current(&self) -> Arc<TokenService> {
        self.service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The published keys, shared with in-process verifiers (updated on every reload).
    pub fn published(&self) -> Arc<RwLock<KeySet>> {
        self.published.clone()
    }

    fn install(&self, records: Vec<KeyRecord>) -> Result<(), KeyError> {
        let service = TokenService::from_records(&self.issuer, &self.audience, self.ttl, records)
            .map_err(KeyError::Key)?;
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = service.key_set().clone();
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(service);
        Ok(())
    }

    /// Reload from the database (picks up other replicas' rotations).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let records = self.store.keys().await?;
        if records.is_empty() {
            return Err(KeyError::Key("the database holds no signing key".into()));
        }
        self.install(records)
    }

    /// Rotate now: the new key signs after `publish_ahead`.
    pub async fn rotate(&self, publish_ahead: Duration) -> Result<(), KeyError> {
        let records = self
            .current()
            .rotated_records(publish_ahead)
            .map_err(KeyError::Key)?;
        self.store.save_keys(&records).await?;
        tracing::info!(
            publish_ahead_s = publish_ahead.as_secs(),
            "signing key rotated"
        );
        self.reload().await
    }

    /// One maintenance step: reload, rotate if due.
    pub async fn tick(&self) -> Result<(), KeyError> {
        self.reload().await?;
        let current = self.current();
        let due = !self.rotation.is_zero()
            && !current.has_pending()
            && current.current_created() + self.rotation.as_secs() <= now_secs();
        if due {
            self.rotate(PUBLISH_AHEAD).await?;
        }
        Ok(())
    }

    /// Run [`Keys::tick`] every [`RELOAD_EVERY`] until `stop`.
    pub fn spawn_maintenance(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                if let Err(e) = keys.tick().await {
                    tracing::warn!(error = %e, "key maintenance failed; keeping the keys we have");
                }
            }
        });
    }
}
