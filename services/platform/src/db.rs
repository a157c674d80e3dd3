//! The relational database every stateful service uses: PostgreSQL in production, or the
//! embedded SQLite file `<data_dir>/fms.db` (no server needed). Both are reached through
//! sqlx's `Any` driver with portable SQL (`$1` placeholders, TEXT and BIGINT columns), so
//! one code path and one test suite cover both.
//!
//! Migrations are per component (`auth`, `picker`, ...), numbered, applied at start-up in
//! one transaction each, under a lock so replicas starting together apply them once.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::config::DatabaseConfig;

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database pool.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// One numbered migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database: {0}")]
    Other(String),
}

/// Create a new, empty database on the PostgreSQL server `admin_url` names (a role that may
/// `CREATE DATABASE`) and return its URL: each test or benchmark run gets its own.
pub async fn create_database(admin_url: &str, prefix: &str) -> Result<String, DbError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(DbError::Other(format!(
            "bad database name prefix {prefix:?}"
        )));
    }
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| DbError::Other("the admin URL names no database".into()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url).await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    Ok(format!("{base}/{name}"))
}

impl Db {
    /// Connect to `cfg.url`, or open (creating) the embedded database under `data_dir`.
    pub async fn connect(cfg: &DatabaseConfig, data_dir: &Path) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = if cfg.url.is_empty() {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                DbError::Other(format!("cannot create {}: {e}", data_dir.display()))
            })?;
            let path = data_dir.join("fms.db");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                Backend::Sqlite,
            )
        } else {
            (cfg.url.clone(), Backend::Postgres)
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let max = match backend {
            // SQLite has one writer; a small pool with a busy timeout queues the rest.
            Backend::Sqlite => cfg.max_connections.min(8),
            Backend::Postgres => cfg.max_connections,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db { pool, backend })
    }

    /// Apply `component`'s migrations that are not applied yet, all in one transaction
    /// under a lock (PostgreSQL advisory lock; SQLite's write lock), so replicas starting
    /// together apply them once and a failed migration leaves nothing half done.
    pub async fn migrate(&self, component: &str, migrations: &[Migration]) -> Result<(), DbError> {
        let mut tx = match self.backend {
            Backend::Postgres => self.pool.begin().await?,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        if self.backend == Backend::Postgres {
            tx.execute("SELECT pg_advisory_xact_lock(7311989)").await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                component  TEXT NOT NULL,
                version    BIGINT NOT NULL,
                applied_at BIGINT NOT NULL,
                PRIMARY KEY (component, version))",
        )
        .await?;
        for m in migrations {
            let done: Option<(i64,)> = sqlx::query_as(
                "SELECT version FROM schema_migrations WHERE component = $1 AND version = $2",
            )
            .bind(component)
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?;
            if done.is_some() {
                continue;
            }
            for statement in statements(m.sql) {
                tx.execute(sqlx::AssertSqlSafe(statement)).await?;
            }
            sqlx::query(
                "INSERT INTO schema_migrations (component, version, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(component)
            .bind(m.version)
            .bind(now_secs())
            .execute(&mut *tx)
            .await?;
            tracing::info!(component, version = m.version, "migration applied");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        self.pool
            .execute("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The statements of a migration: split at `;` ending a line, comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Seconds since the epoch, as stored in BIGINT columns.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether an error is a unique-constraint violation (a duplicate insert).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_line_ends() {
        let s = statements("-- c\nCREATE TABLE a (x TEXT);\n\nCREATE INDEX i\n  ON a (x);\n");
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x TEXT)", "CREATE INDEX i\n  ON a (x)"]
        );
    }

    #[tokio::test]
    async fn embedded_database_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseConfig::default(), dir.path())
            .await
            .unwrap();
        assert_eq!(db.backend, Backend::Sqlite);
        let m = [Migration {
            version: 1,
            sql: "CREATE TABLE t (id TEXT PRIMARY KEY);",
        }];
        db.migrate("test", &m).await.unwrap();
        db.migrate("test", &m).await.unwrap();
        sqlx::query("INSERT INTO t (id) VALUES ($1)")
            .bind("a")
            .execute(&db.pool)
            .await
            .unwrap();
        let err = sqlx::query("INSERT INTO t (id) VALUES ($1)")
            .bind("a")
            .execute(&db.pool)
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err), "{err}");
        db.ping().await.unwrap();
    }
}
