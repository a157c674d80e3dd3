//! File metadata rows (PostgreSQL or the embedded SQLite file).

use fms_platform::db::{Db, DbError, Migration};
use serde::Serialize;
use sqlx::Row;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/0001_picker.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/0002_put_keys.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../migrations/0003_uploads.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("../migrations/0004_folders.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("../migrations/0005_jobs.sql"),
    },
    Migration {
        version: 6,
        sql: include_str!("../migrations/0006_connect.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("../migrations/0007_transforms.sql"),
    },
];

/// A resumable upload (tus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    pub owner_id: String,
    /// The engine session holding its bytes.
    pub session_id: String,
    /// Declared length; `None` while deferred.
    pub length: Option<u64>,
    /// `Upload-Metadata` as sent.
    pub metadata: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// The file it became, once complete.
    pub file_id: Option<String>,
    /// `partial` or `final` (concatenation), else `None`.
    pub concat: Option<String>,
    /// A completed partial upload's engine file (it is no user's file on its own).
    pub part_engine_id: Option<String>,
}

const UPLOAD_COLUMNS: &str = "id, owner_id, session_id, length, metadata, name, created_at, \
     expires_at, file_id, concat, part_engine_id";

fn upload_row(r: sqlx::any::AnyRow) -> Result<UploadRow, sqlx::Error> {
    Ok(UploadRow {
        id: r.try_get(0)?,
        owner_id: r.try_get(1)?,
        session_id: r.try_get(2)?,
        length: r.try_get::<Option<i64>, _>(3)?.map(|n| n.max(0) as u64),
        metadata: r.try_get(4)?,
        name: r.try_get(5)?,
        created_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        file_id: r.try_get(8)?,
        concat: r.try_get(9)?,
        part_engine_id: r.try_get(10)?,
    })
}

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRow {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub size: u64,
    pub content_type: String,
    pub content_hash: String,
    #[serde(skip)]
    pub engine_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Relative path of names it was uploaded under ('' = the top); see `api::check_folder`.
    pub folder: String,
    /// For a transform's result: the source file's id ('' otherwise).
    pub derived_from: String,
    /// For a transform's result: `v<version>:<canonical transform>` ('' otherwise).
    pub transform: String,
}

impl FileRow {
    /// The chunk store's id of this file's content.
    pub fn engine_file(&self) -> Result<fms_engine::FileId, String> {
        self.engine_id
            .parse()
            .map_err(|e| format!("file {} has a bad engine id: {e}", self.id))
    }
}

const COLUMNS: &str = "id, owner_id, name, size, content_type, content_hash, engine_id, created_at, updated_at, \
     folder, derived_from, transform";

fn row(r: sqlx::any::AnyRow) -> Result<FileRow, sqlx::Error> {
    Ok(FileRow {
        id: r.try_get(0)?,
        owner_id: r.try_get(1)?,
        name: r.try_get(2)?,
        size: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
        content_type: r.try_get(4)?,
        content_hash: r.try_get(5)?,
        engine_id: r.try_get(6)?,
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
        folder: r.try_get(9)?,
        derived_from: r.try_get(10)?,
        transform: r.try_get(11)?,
    })
}

#[derive(Debug, Clone)]
pub struct Meta {
    db: Db,
}

impl Meta {
    pub async fn open(db: Db) -> Result<Meta, DbError> {
        db.migrate("picker", MIGRATIONS).await?;
        Ok(Meta { db })
    }

    /// The database (for tables kept by other modules: jobs).
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn insert(&self, f: &FileRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO files (id, owner_id, name, size, content_type, content_hash, engine_id,
                 created_at, updated_at, folder, derived_from, transform)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&f.id)
        .bind(&f.owner_id)
        .bind(&f.name)
        .bind(i64::try_from(f.size).unwrap_or(i64::MAX))
        .bind(&f.content_type)
        .bind(&f.content_hash)
        .bind(&f.engine_id)
        .bind(f.created_at)
        .bind(f.updated_at)
        .bind(&f.folder)
        .bind(&f.derived_from)
        .bind(&f.transform)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<FileRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM files WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .map(row)
            .transpose()
    }

    /// Rows for `ids` (any order; missing ids are skipped).
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<FileRow>, sqlx::Error> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM files WHERE id IN ({})",
                params.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.db.pool).await? {
                out.push(row(r)?);
            }
        }
        Ok(out)
    }

    pub async fn rename(&self, id: &str, name: &str, now: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE files SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Bytes `owner` owns (the quota's measure: file sizes, whatever dedup saves).
    pub async fn usage(&self, owner: &str) -> Result<u64, sqlx::Error> {
        // PostgreSQL's SUM(bigint) is numeric: cast back for both backends.
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM files WHERE owner_id = $1",
        )
        .bind(owner)
        .fetch_one(&self.db.pool)
        .await?;
        let v: i64 = r.try_get(0)?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Whether `owner` already has a file with this content (drives `new_bytes`, which
    /// must not reveal what other users store).
    pub async fn owner_has_content(&self, owner: &str, hash: &str) -> Result<bool, sqlx::Error> {
        let r =
            sqlx::query("SELECT 1 FROM files WHERE owner_id = $1 AND content_hash = $2 LIMIT 1")
                .bind(owner)
                .bind(hash)
                .fetch_optional(&self.db.pool)
                .await?;
        Ok(r.is_some())
    }

    /// The file an idempotency key already produced, if any.
    pub async fn put_key(&self, owner: &str, key: &str) -> Result<Option<String>, sqlx::Error> {
        let r = sqlx::query("SELECT file_id FROM put_keys WHERE owner_id = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?;
        r.map(|r| r.try_get::<String, _>(0)).transpose()
    }

    /// Record that `key` produced `file`; false if another call recorded it first.
    pub async fn claim_put_key(
        &self,
        owner: &str,
        key: &str,
        file: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO put_keys (owner_id, key, file_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(file)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every row created before `before_ms` (id, owner, engine id): the reconciliation
    /// pass's view. Scans the table.
    pub async fn rows_before(
        &self,
        before_ms: i64,
    ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, owner_id, engine_id FROM files WHERE created_at < $1")
            .bind(before_ms)
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Every engine id a row names.
    pub async fn engine_ids(&self) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT engine_id FROM files UNION \
             SELECT part_engine_id FROM uploads WHERE part_engine_id IS NOT NULL UNION \
             SELECT engine_id FROM transform_cache",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.into_iter().map(|r| r.try_get(0)).collect()
    }

    pub async fn insert_upload(&self, u: &UploadRow) -> Result<(), sqlx::Error> {
        // Constant column list; values are bound.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO uploads ({UPLOAD_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(&u.id)
        .bind(&u.owner_id)
        .bind(&u.session_id)
        .bind(u.length.map(|n| n as i64))
        .bind(&u.metadata)
        .bind(&u.name)
        .bind(u.created_at)
        .bind(u.expires_at)
        .bind(&u.file_id)
        .bind(&u.concat)
        .bind(&u.part_engine_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        .map(upload_row)
        .transpose()
    }

    /// Fix a deferred length (once: only while it is still NULL). False if it was set.
    pub async fn set_upload_length(&self, id: &str, length: u64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE uploads SET length = $1 WHERE id = $2 AND length IS NULL")
            .bind(length as i64)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Record the file an upload became (remembered from `now` on, see `tus::REMEMBER_MS`).
    pub async fn complete_upload(
        &self,
        id: &str,
        file_id: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE uploads SET file_id = $1, expires_at = $2 WHERE id = $3")
            .bind(file_id)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Record the engine file a partial upload became (remembered from `now` on).
    pub async fn complete_part(
        &self,
        id: &str,
        engine_id: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE uploads SET part_engine_id = $1, expires_at = $2 WHERE id = $3")
            .bind(engine_id)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_upload(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Unfinished uploads that expired before `now` (their sessions are to be dropped).
    pub async fn expired_uploads(&self, now: i64) -> Result<Vec<UploadRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE expires_at < $1 AND file_id IS NULL"
        )))
        .bind(now)
        .fetch_all(&self.db.pool)
        .await?
        .into_iter()
        .map(upload_row)
        .collect()
    }

    /// Engine files of partial uploads remembered before `before` (to delete as they go).
    pub async fn old_parts(&self, before: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query(
            "SELECT part_engine_id FROM uploads WHERE expires_at < $1 AND part_engine_id IS NOT NULL",
        )
        .bind(before)
        .fetch_all(&self.db.pool)
        .await?
        .into_iter()
        .map(|r| r.try_get(0))
        .collect()
    }

    /// Forget uploads whose expiry (or completion's keep-alive) passed before `before`.
    pub async fn forget_uploads(&self, before: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM uploads WHERE expires_at < $1")
            .bind(before)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
