//! Tuples in the database (PostgreSQL or the embedded SQLite file), in portable SQL.
//!
//! Every write runs in one transaction that first bumps `perm_meta.revision`: the row lock
//! serializes writers, so revisions are assigned in commit order and a reader that sees
//! revision `r` sees every change up to `r`.

use std::collections::{BTreeMap, HashSet};

use fms_platform::db::{Backend, Db, Migration, is_unique_violation, now_secs};
use sqlx::{Any, Row, Transaction};

use crate::Error;
use crate::cache::Change;
use crate::model::{Right, Rights};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/0001_permission.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/0002_lease.sql"),
    },
];

/// Objects are files today; the column leaves room for folders.
const FILE: &str = "file";
/// Subjects are users today; the column leaves room for groups.
const USER: &str = "user";

/// Rows per multi-row INSERT in bulk loads (keeps statements under every driver's
/// parameter limit: at most 8 parameters a row, 4,000 a statement).
const BULK_ROWS: usize = 500;

fn db_err(e: sqlx::Error) -> Error {
    Error::Unavailable(format!("database: {e}"))
}

fn rev(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What an `update` changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The revision of the change, or the current one when nothing changed.
    pub revision: u64,
    /// Subjects whose rights changed.
    pub changed: Vec<String>,
    /// The longest lease any replica has published (ms), read under the writers' lock.
    pub lease_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub async fn open(db: Db) -> Result<Store, Error> {
        db.migrate("permission", MIGRATIONS)
            .await
            .map_err(|e| Error::Unavailable(format!("migrations: {e}")))?;
        Ok(Store { db })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>, Error> {
        match self.db.backend {
            Backend::Postgres => self.db.pool.begin().await,
            Backend::Sqlite => self.db.pool.begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(db_err)
    }

    /// Take the writers' lock and the next revision; also the longest published lease.
    async fn bump(tx: &mut Transaction<'static, Any>) -> Result<(u64, u64), Error> {
        let row = sqlx::query(
            "UPDATE perm_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision, lease_ms",
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok((
            rev(row.try_get::<i64, _>(0).map_err(db_err)?),
            rev(row.try_get::<i64, _>(1).map_err(db_err)?),
        ))
    }

    /// Record that a replica runs with a cache lease of `ms` (raises the published maximum).
    pub(crate) async fn publish_lease(&self, ms: u64) -> Result<(), Error> {
        sqlx::query("UPDATE perm_meta SET lease_ms = $1 WHERE id = 1 AND lease_ms < $1")
            .bind(i64::try_from(ms).unwrap_or(i64::MAX))
            .execute(&self.db.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn revision(&self) -> Result<u64, Error> {
        let row = sqlx::query("SELECT revision FROM perm_meta WHERE id = 1")
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_err)?;
        Ok(rev(row.try_get::<i64, _>(0).map_err(db_err)?))
    }

    /// What `user` holds on `file`, and the revision of the snapshot it was read in (one
    /// statement, so one snapshot).
    pub async fn rights(&self, file: &str, user: &str) -> Result<(Rights, u64), Error> {
        let rows = sqlx::query(
            "SELECT m.revision, t.relation FROM perm_meta m
             LEFT JOIN perm_tuples t ON t.object_type = $1 AND t.object_id = $2
                 AND t.subject_type = $3 AND t.subject_id = $4 AND t.subject_relation = ''
             WHERE m.id = 1",
        )
        .bind(FILE)
        .bind(file)
        .bind(USER)
        .bind(user)
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_err)?;
        let mut rights = Rights::NONE;
        let mut revision = 0;
        for row in rows {
            revision = rev(row.try_get::<i64, _>(0).map_err(db_err)?);
            if let Some(r) = row.try_get::<Option<String>, _>(1).map_err(db_err)? {
                rights = rights.union(Rights::from_relation(&r));
            }
        }
        Ok((rights, revision))
    }

    async fn rights_in(
        tx: &mut Transaction<'static, Any>,
        file: &str,
        user: &str,
    ) -> Result<Rights, Error> {
        let rows = sqlx::query(
            "SELECT relation FROM perm_tuples WHERE object_type = $1 AND object_id = $2
                 AND subject_type = $3 AND subject_id = $4 AND subject_relation = ''",
        )
        .bind(FILE)
        .bind(file)
        .bind(USER)
        .bind(user)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
        let mut rights = Rights::NONE;
        for row in rows {
            rights = rights.union(Rights::from_relation(
                &row.try_get::<String, _>(0).map_err(db_err)?,
            ));
        }
        Ok(rights)
    }

    /// One page of the files `user` holds `right` on (or owns), after `after` in id order,
    /// at most `limit`. The revision is read first, so the page is at least that new.
    pub async fn list(
        &self,
        user: &str,
        right: Right,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<(String, Rights)>, u64), Error> {
        let revision = self.revision().await?;
        let rows = sqlx::query(
            "SELECT object_id, SUM(CASE relation WHEN 'owner' THEN 1 WHEN 'read' THEN 2
                     WHEN 'write' THEN 4 WHEN 'delete' THEN 8 WHEN 'share' THEN 16 ELSE 0 END)
             FROM perm_tuples
             WHERE subject_type = $1 AND subject_id = $2 AND subject_relation = ''
                 AND object_type = $3 AND object_id > $4
             GROUP BY object_id
             HAVING SUM(CASE WHEN relation = 'owner' OR relation = $5 THEN 1 ELSE 0 END) > 0
             ORDER BY object_id
             LIMIT $6",
        )
        .bind(USER)
        .bind(user)
        .bind(FILE)
        .bind(after)
        .bind(right.relation())
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0).map_err(db_err)?;
            let bits: i64 = row.try_get(1).map_err(db_err)?;
            out.push((id, Rights::from_bits(bits)));
        }
        Ok((out, revision))
    }

    /// Record a new file owned by `user`. Idempotent for the same owner; a file owned by
    /// someone else is a conflict.
    pub(crate) async fn create_owner(&self, file: &str, user: &str) -> Result<(u64, bool), Error> {
        let mut tx = self.begin().await?;
        match Self::create_owner_in(&mut tx, file, user).await {
            Ok(Some(revision)) => {
                tx.commit().await.map_err(db_err)?;
                Ok((revision, true))
            }
            Ok(None) => {
                Self::rollback(tx).await?;
                Ok((self.revision().await?, false))
            }
            Err(e) => {
                // The first error is the one to report.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Give back the writers' lock now (not whenever the pool reuses the connection).
    async fn rollback(tx: Transaction<'static, Any>) -> Result<(), Error> {
        tx.rollback().await.map_err(db_err)
    }

    /// `Some(revision)` if created, `None` if it already was, with this owner.
    async fn create_owner_in(
        tx: &mut Transaction<'static, Any>,
        file: &str,
        user: &str,
    ) -> Result<Option<u64>, Error> {
        let (revision, _) = Self::bump(tx).await?;
        if let Some(owner) = Self::owner_in(tx, file).await? {
            return if owner == user {
                Ok(None)
            } else {
                Err(Error::AlreadyExists(format!(
                    "file {file} already has an owner"
                )))
            };
        }
        if Self::missing_users(tx, &[user.to_string()])
            .await?
            .is_some()
        {
            return Err(Error::UnknownUser(format!("user {user} does not exist")));
        }
        let now = now_secs();
        sqlx::query(
            "INSERT INTO perm_objects (object_type, object_id, owner_id, created_at, revision)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(FILE)
        .bind(file)
        .bind(user)
        .bind(now)
        .bind(revision as i64)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Self::insert_tuple(tx, file, user, "owner", user, now, revision).await?;
        Self::log(tx, revision, file, "", now).await?;
        Ok(Some(revision))
    }

    async fn owner_in(
        tx: &mut Transaction<'static, Any>,
        file: &str,
    ) -> Result<Option<String>, Error> {
        let row = sqlx::query(
            "SELECT owner_id FROM perm_objects WHERE object_type = $1 AND object_id = $2",
        )
        .bind(FILE)
        .bind(file)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>(0).map_err(db_err))
            .transpose()
    }

    /// The first of `users` that has no account, if any.
    async fn missing_users(
        tx: &mut Transaction<'static, Any>,
        users: &[String],
    ) -> Result<Option<String>, Error> {
        for chunk in users.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT id FROM users WHERE id IN ({})", params.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            let found: HashSet<String> = q
                .fetch_all(&mut **tx)
                .await
                .map_err(db_err)?
                .into_iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            if let Some(u) = chunk.iter().find(|u| !found.contains(*u)) {
                return Ok(Some(u.clone()));
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_tuple(
        tx: &mut Transaction<'static, Any>,
        file: &str,
        user: &str,
        relation: &str,
        granted_by: &str,
        now: i64,
        revision: u64,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO perm_tuples (object_type, object_id, subject_type, subject_id,
                 subject_relation, relation, granted_by, granted_at, revision)
             VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(FILE)
        .bind(file)
        .bind(USER)
        .bind(user)
        .bind(relation)
        .bind(granted_by)
        .bind(now)
        .bind(revision as i64)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn log(
        tx: &mut Transaction<'static, Any>,
        revision: u64,
        file: &str,
        subject: &str,
        now: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO perm_changes (revision, object_type, object_id, subject_id, changed_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(revision as i64)
        .bind(FILE)
        .bind(file)
        .bind(subject)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Grant and revoke, as `actor`. `grants` and `revokes` are already merged per user and
    /// checked for contradictions.
    pub(crate) async fn update(
        &self,
        actor: &str,
        file: &str,
        grants: &BTreeMap<String, Rights>,
        revokes: &BTreeMap<String, Rights>,
    ) -> Result<Updated, Error> {
        let mut tx = self.begin().await?;
        match Self::update_in(&mut tx, actor, file, grants, revokes).await {
            Ok(u) if !u.changed.is_empty() => {
                tx.commit().await.map_err(db_err)?;
                Ok(u)
            }
            Ok(u) => {
                // Nothing to do: give back the lock and the revision number.
                Self::rollback(tx).await?;
                Ok(Updated {
                    revision: self.revision().await?,
                    changed: Vec::new(),
                    lease_ms: u.lease_ms,
                })
            }
            Err(e) => {
                // The first error is the one to report.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn update_in(
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        file: &str,
        grants: &BTreeMap<String, Rights>,
        revokes: &BTreeMap<String, Rights>,
    ) -> Result<Updated, Error> {
        let (revision, lease_ms) = Self::bump(tx).await?;
        let Some(owner) = Self::owner_in(tx, file).await? else {
            return Err(Error::NotFound(format!("file {file} not found")));
        };
        let held = Self::rights_in(tx, file, actor).await?;
        if held.is_empty() {
            // The actor cannot see the file: do not confirm that it exists.
            return Err(Error::NotFound(format!("file {file} not found")));
        }
        if !held.allows(Right::Share) {
            return Err(Error::Denied(
                "sharing this file needs the share right".into(),
            ));
        }
        if !held.is_owner() {
            for (what, set) in [("grant", grants), ("revoke", revokes)] {
                for rights in set.values() {
                    if let Some(r) = rights.rights().into_iter().find(|r| !held.allows(*r)) {
                        return Err(Error::Denied(format!(
                            "cannot {what} {}: only rights you hold can be granted or revoked",
                            r.relation()
                        )));
                    }
                }
            }
        }
        if revokes.contains_key(&owner) {
            return Err(Error::invalid(
                "the owner holds every right; the owner's rights cannot be revoked",
            ));
        }
        let grantees: Vec<String> = grants.keys().filter(|u| **u != owner).cloned().collect();
        if let Some(u) = Self::missing_users(tx, &grantees).await? {
            return Err(Error::UnknownUser(format!("user {u} does not exist")));
        }
        let now = now_secs();
        let mut changed = Vec::new();
        for user in &grantees {
            let mut any = false;
            for r in grants[user].rights() {
                any |=
                    Self::insert_tuple(tx, file, user, r.relation(), actor, now, revision).await?;
            }
            if any {
                changed.push(user.clone());
            }
        }
        for (user, rights) in revokes {
            let mut any = false;
            for r in rights.rights() {
                let done = sqlx::query(
                    "DELETE FROM perm_tuples WHERE object_type = $1 AND object_id = $2
                         AND subject_type = $3 AND subject_id = $4 AND subject_relation = ''
                         AND relation = $5",
                )
                .bind(FILE)
                .bind(file)
                .bind(USER)
                .bind(user)
                .bind(r.relation())
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                any |= done.rows_affected() > 0;
            }
            if any && !changed.contains(user) {
                changed.push(user.clone());
            }
        }
        for user in &changed {
            Self::log(tx, revision, file, user, now).await?;
        }
        Ok(Updated {
            revision,
            changed,
            lease_ms,
        })
    }

    /// Remove a file and every tuple on it. The revision is `None` if there was no such
    /// file; the second value is the longest published lease (ms).
    /// Delete `file` and its grants: (revision, lease, the users who held a direct grant).
    pub(crate) async fn delete_object(
        &self,
        file: &str,
    ) -> Result<(Option<u64>, u64, Vec<String>), Error> {
        let mut tx = self.begin().await?;
        match Self::delete_in(&mut tx, file).await {
            Ok((Some(revision), lease_ms, holders)) => {
                tx.commit().await.map_err(db_err)?;
                Ok((Some(revision), lease_ms, holders))
            }
            Ok((None, lease_ms, _)) => {
                Self::rollback(tx).await?;
                Ok((None, lease_ms, Vec::new()))
            }
            Err(e) => {
                // The first error is the one to report.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn delete_in(
        tx: &mut Transaction<'static, Any>,
        file: &str,
    ) -> Result<(Option<u64>, u64, Vec<String>), Error> {
        let (revision, lease_ms) = Self::bump(tx).await?;
        let holders = sqlx::query(
            "SELECT DISTINCT subject_id FROM perm_tuples
             WHERE object_type = $1 AND object_id = $2 AND subject_type = $3
                 AND subject_relation = '' ORDER BY subject_id",
        )
        .bind(FILE)
        .bind(file)
        .bind(USER)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
        let gone =
            sqlx::query("DELETE FROM perm_objects WHERE object_type = $1 AND object_id = $2")
                .bind(FILE)
                .bind(file)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        // Tuples go whether or not the object row was there (no orphan can outlive a delete).
        let tuples =
            sqlx::query("DELETE FROM perm_tuples WHERE object_type = $1 AND object_id = $2")
                .bind(FILE)
                .bind(file)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        if gone.rows_affected() == 0 && tuples.rows_affected() == 0 {
            return Ok((None, lease_ms, Vec::new()));
        }
        Self::log(tx, revision, file, "", now_secs()).await?;
        Ok((Some(revision), lease_ms, holders))
    }

    /// Changes after `after` up to `upto`, at most `limit` (in revision order).
    pub async fn changes(&self, after: u64, upto: u64, limit: u32) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query(
            "SELECT revision, object_id, subject_id FROM perm_changes
             WHERE revision > $1 AND revision <= $2 ORDER BY revision LIMIT $3",
        )
        .bind(after as i64)
        .bind(upto as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                Ok(Change {
                    revision: rev(r.try_get::<i64, _>(0)?),
                    object: r.try_get(1)?,
                    subject: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err)
    }

    /// Forget change-log rows up to revision `upto`.
    pub(crate) async fn prune_changes(&self, upto: u64) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM perm_changes WHERE revision <= $1")
            .bind(upto as i64)
            .execute(&self.db.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    /// Bulk load for imports and benchmarks: files with owners, and grants, in one
    /// transaction and one revision. Trusts its input (no account checks, no actor): an
    /// operator's tool, not an API.
    pub async fn bulk_load(
        &self,
        owned: &[(String, String)],
        grants: &[(String, String, Right)],
    ) -> Result<u64, Error> {
        let files: HashSet<&str> = owned.iter().map(|(f, _)| f.as_str()).collect();
        if let Some((f, _, _)) = grants.iter().find(|(f, _, _)| !files.contains(f.as_str())) {
            return Err(Error::invalid(format!(
                "bulk load: grant on {f}, which is not among the files loaded"
            )));
        }
        let mut tx = self.begin().await?;
        let result = Self::bulk_load_in(&mut tx, owned, grants).await;
        match result {
            Ok(revision) => {
                tx.commit().await.map_err(db_err)?;
                Ok(revision)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn bulk_load_in(
        tx: &mut Transaction<'static, Any>,
        owned: &[(String, String)],
        grants: &[(String, String, Right)],
    ) -> Result<u64, Error> {
        let (revision, _) = Self::bump(tx).await?;
        let now = now_secs();
        for chunk in owned.chunks(BULK_ROWS) {
            let mut sql = String::from(
                "INSERT INTO perm_objects (object_type, object_id, owner_id, created_at, revision) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            // No ON CONFLICT: a file that already has an owner fails the whole load.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (file, owner) in chunk {
                q = q
                    .bind(FILE)
                    .bind(file)
                    .bind(owner)
                    .bind(now)
                    .bind(revision as i64);
            }
            q.execute(&mut **tx).await.map_err(|e| {
                if is_unique_violation(&e) {
                    Error::AlreadyExists(
                        "bulk load: a file already exists (or is listed twice)".into(),
                    )
                } else {
                    db_err(e)
                }
            })?;
        }
        let tuples: Vec<(&str, &str, &str)> = owned
            .iter()
            .map(|(f, o)| (f.as_str(), o.as_str(), "owner"))
            .chain(
                grants
                    .iter()
                    .map(|(f, u, r)| (f.as_str(), u.as_str(), r.relation())),
            )
            .collect();
        for chunk in tuples.chunks(BULK_ROWS) {
            let mut sql = String::from(
                "INSERT INTO perm_tuples (object_type, object_id, subject_type, subject_id,
                     subject_relation, relation, granted_by, granted_at, revision) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 8;
                if i > 0 {
                    sql.push_str(", ");
                }
                let p: Vec<String> = (1..=8).map(|k| format!("${}", b + k)).collect();
                sql.push_str(&format!(
                    "({}, {}, {}, {}, '', {}, {}, {}, {})",
                    p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
                ));
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (file, user, relation) in chunk {
                q = q
                    .bind(FILE)
                    .bind(*file)
                    .bind(USER)
                    .bind(*user)
                    .bind(*relation)
                    .bind("import")
                    .bind(now)
                    .bind(revision as i64);
            }
            q.execute(&mut **tx).await.map_err(db_err)?;
        }
        // One log row that names no object: every cache starts over.
        Self::log(tx, revision, "", "", now).await?;
        Ok(revision)
    }
}
