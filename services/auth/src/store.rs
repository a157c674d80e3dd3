//! Auth state in the database: users, refresh-token families, persisted revocations and
//! signing keys. One implementation over [`Db`] serves the embedded database and
//! PostgreSQL alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fms_platform::db::{Db, DbError, Migration, is_unique_violation, now_secs};
use sqlx::Row;

use crate::tokens::KeyRecord;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/0001_auth.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/0002_refresh_families.sql"),
    },
];

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub created_at: i64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Unused and valid: it is now used; issue the next one in `family`.
    Fresh {
        family: String,
        user_id: String,
        expires_at: i64,
    },
    /// Already used: someone replays it. The family must be revoked.
    Reused { family: String, user_id: String },
    /// Revoked, expired or never issued.
    Invalid,
}

/// Database failure (everything else is an answer).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unique_violation(&e) {
            StoreError::Conflict
        } else {
            StoreError::Db(DbError::Sql(e))
        }
    }
}

/// The auth tables.
#[derive(Debug, Clone)]
pub struct AuthStore {
    db: Db,
}

fn user_from(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

impl AuthStore {
    /// Apply migrations and wrap the pool.
    pub async fn open(db: Db) -> Result<AuthStore, StoreError> {
        db.migrate("auth", MIGRATIONS).await?;
        Ok(AuthStore { db })
    }

    /// The underlying database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Insert a user; `Conflict` when the username is taken.
    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.created_at)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, email, password_hash, created_at FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(user_from).transpose()?)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, email, password_hash, created_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(user_from).transpose()?)
    }

    pub async fn set_password_hash(&self, id: &str, phc: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(phc)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Start a login session: its family and its first refresh token, in one transaction.
    pub async fn start_family(
        &self,
        family: &str,
        user_id: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (family_id, user_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(family)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(family)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Present refresh token `old` and, if it is fresh, replace it by `new` in the same
    /// family, atomically: the family row is locked first (and must be unrevoked), the old
    /// token is marked used, the new one inserted, all in one transaction. Of two concurrent
    /// presentations exactly one gets `Fresh`; a failure leaves the old token unused.
    pub async fn rotate_refresh(&self, old: &str, new: &str) -> Result<RefreshUse, StoreError> {
        let now = now_secs();
        let mut tx = self.db.pool.begin().await?;
        // Locks the family row (PostgreSQL) / takes the write lock (SQLite) before anything
        // is read, so a concurrent revocation either precedes this or waits for it.
        let locked = sqlx::query(
            "UPDATE refresh_families SET revoked_at = NULL
             WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)
               AND revoked_at IS NULL AND expires_at > $2
             RETURNING family_id, user_id, expires_at",
        )
        .bind(old)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(family_row) = locked else {
            drop(tx);
            return self.classify(old).await;
        };
        let family: String = family_row.try_get("family_id")?;
        let used = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() == 0 {
            drop(tx);
            return self.classify(old).await;
        }
        let user_id: String = family_row.try_get("user_id")?;
        let expires_at: i64 = family_row.try_get("expires_at")?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new)
        .bind(&family)
        .bind(&user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefreshUse::Fresh {
            family,
            user_id,
            expires_at,
        })
    }

    /// Why a refresh token could not be rotated: replayed (used, family still live) or not
    /// usable at all.
    async fn classify(&self, token_hash: &str) -> Result<RefreshUse, StoreError> {
        let row = sqlx::query(
            "SELECT t.family_id, t.user_id, t.used_at, f.revoked_at
             FROM refresh_tokens t JOIN refresh_families f ON f.family_id = t.family_id
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshUse::Invalid);
        };
        let used: Option<i64> = row.try_get("used_at")?;
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        if used.is_some() && revoked.is_none() {
            return Ok(RefreshUse::Reused {
                family: row.try_get("family_id")?,
                user_id: row.try_get("user_id")?,
            });
        }
        Ok(RefreshUse::Invalid)
    }

    /// Revoke a family: no token of it can be rotated any more. Returns whether it was live.
    pub async fn revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        let now = now_secs();
        let mut tx = self.db.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Persist a revoked access-token id until `expires_at`.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Revocations that have not expired, for loading into memory at start-up.
    pub async fn live_revocations(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
            .bind(now_secs())
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
            .collect()
    }

    /// Signing keys that have not been retired.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seed, created_at, retire_after FROM signing_keys
             WHERE retire_after IS NULL OR retire_after > $1",
        )
        .bind(now_secs())
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let seed: String = r.try_get("seed")?;
            let bytes = URL_SAFE_NO_PAD
                .decode(seed)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| DbError::Other("signing_keys holds a malformed seed".into()))?;
            let created: i64 = r.try_get("created_at")?;
            let retire: Option<i64> = r.try_get("retire_after")?;
            out.push(KeyRecord {
                seed: bytes,
                created: created.max(0) as u64,
                retire_after: retire.map(|t| t.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// Store key records: new ones inserted, the end time of known ones updated.
    pub async fn save_keys(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO signing_keys (kid, seed, created_at, retire_after) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kid) DO UPDATE SET retire_after = excluded.retire_after",
            )
            .bind(r.kid())
            .bind(URL_SAFE_NO_PAD.encode(r.seed))
            .bind(r.created as i64)
            .bind(r.retire_after.map(|t| t as i64))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Drop what can no longer matter: expired refresh tokens and revocations, retired keys.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = now_secs();
        let mut n = 0;
        for sql in [
            "DELETE FROM refresh_tokens WHERE expires_at <= $1",
            "DELETE FROM refresh_families WHERE expires_at <= $1",
            "DELETE FROM revoked_tokens WHERE expires_at <= $1",
            "DELETE FROM signing_keys WHERE retire_after IS NOT NULL AND retire_after <= $1",
        ] {
            n += sqlx::query(sql)
                .bind(now)
                .execute(&self.db.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
