//! The permission service: who may do what to which file.
//!
//! Grants are relation tuples (object, relation, subject) in the database; nothing is
//! allowed unless granted; a file's owner holds every right and cannot lose it. Every change
//! bumps a global revision; reads take `at_least_as_fresh` and never answer from older
//! state. Checks are served from a per-process cache that never gives a stale allow (see
//! [`cache`] and `docs/design/permissions.md`).

pub mod cache;
pub mod grpc;
pub mod model;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fms_platform::Config;
use fms_platform::db::{Backend, Db};
use tokio_util::sync::CancellationToken;

use cache::{Cache, Change};
use model::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageToken, Right, Rights, check_id};
use store::Store;

/// Why a call failed. Each maps to one gRPC status (see [`grpc`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnknownUser(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }
}

/// A decision and the revision it was made at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub revision: u64,
}

/// One file of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accessible {
    pub file_id: String,
    pub rights: Rights,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub files: Vec<Accessible>,
    pub next_page_token: String,
    pub revision: u64,
}

/// Changes for one user in an [`Permissions::update`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub user_id: String,
    pub rights: Vec<Right>,
}

/// Rows read from the change log at most per sync; a longer backlog resets the cache.
const SYNC_BATCH: u32 = 10_000;
/// Change-log rows are kept at least this long.
const CHANGE_RETENTION: Duration = Duration::from_secs(3600);

/// The service core, shared by the gRPC server and in-process callers.
#[derive(Debug)]
pub struct Permissions {
    store: Store,
    cache: Cache,
    /// Several processes may share the database: use the lease and wait it out on
    /// revocation.
    shared: bool,
    lease: Duration,
    max_changes: usize,
    /// Tests: stop the background change-log reads (the lease then runs out).
    sync_paused: std::sync::atomic::AtomicBool,
}

impl Permissions {
    /// Open the store (running migrations) and build the cache from `cfg.permission`.
    pub async fn open(cfg: &Config, db: Db) -> Result<Arc<Permissions>, Error> {
        let shared = db.backend == Backend::Postgres;
        let p = &cfg.permission;
        let store = Store::open(db).await?;
        let lease = p.lease.0;
        let cache = Cache::new(p.cache_entries, shared.then_some(lease));
        let this = Arc::new(Permissions {
            store,
            cache,
            shared,
            lease,
            max_changes: p.max_changes_per_call as usize,
            sync_paused: false.into(),
        });
        if shared {
            // Writers elsewhere wait at least this long before a revoke returns.
            this.store
                .publish_lease(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
                .await?;
        }
        // Start from the current revision: nothing is cached yet.
        let start = Instant::now();
        let revision = this.store.revision().await?;
        this.cache.advance(revision, start);
        Ok(this)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether `user` holds `right` on `file`, from state at least as new as `min_revision`.
    pub async fn check(
        &self,
        user: &str,
        file: &str,
        right: Right,
        min_revision: u64,
    ) -> Result<Decision, Error> {
        check_id(user, "user_id")?;
        check_id(file, "file_id")?;
        if let Some((rights, revision)) = self.cache.get(file, user, min_revision) {
            metrics::counter!("permission_checks_total", "source" => "cache").increment(1);
            return Ok(Decision {
                allowed: rights.allows(right),
                revision,
            });
        }
        metrics::counter!("permission_checks_total", "source" => "database").increment(1);
        let (rights, revision) = self.store.rights(file, user).await?;
        fresh_enough(min_revision, revision)?;
        self.cache.insert(file, user, rights, revision);
        Ok(Decision {
            allowed: rights.allows(right),
            revision,
        })
    }

    /// Grant and revoke rights on `file` as `actor`.
    pub async fn update(
        &self,
        actor: &str,
        file: &str,
        grants: &[GrantSpec],
        revokes: &[GrantSpec],
    ) -> Result<u64, Error> {
        check_id(actor, "actor_id")?;
        check_id(file, "file_id")?;
        let count = grants.len() + revokes.len();
        if count == 0 {
            return Err(Error::invalid("nothing to grant or revoke"));
        }
        if count > self.max_changes {
            return Err(Error::Limit(format!(
                "{count} grants and revokes in one call; at most {} are allowed (split the change)",
                self.max_changes
            )));
        }
        let grant_set = merge(grants, "grants")?;
        let revoke_set = merge(revokes, "revokes")?;
        for (user, rights) in &grant_set {
            if let Some(other) = revoke_set.get(user)
                && let Some(r) = rights.rights().into_iter().find(|r| other.allows(*r))
            {
                return Err(Error::invalid(format!(
                    "user {user} is both granted and revoked {}",
                    r.relation()
                )));
            }
        }
        let removes = !revoke_set.is_empty();
        let updated = self
            .store
            .update(actor, file, &grant_set, &revoke_set)
            .await?;
        // Every user named in a revoke is dropped from this process's cache even when the
        // call changed nothing: it may be the retry of a revoke that committed and lost its
        // answer, or it lost the race to an identical revoke still on its way back.
        let changes: Vec<Change> = updated
            .changed
            .iter()
            .chain(revoke_set.keys())
            .map(|u| Change {
                revision: updated.revision,
                object: file.to_string(),
                subject: u.clone(),
            })
            .collect();
        self.cache.apply(&changes);
        if removes {
            // For the same reason a revoke that changed nothing waits out the lease too.
            self.commit_wait(updated.lease_ms).await;
        }
        Ok(updated.revision)
    }

    /// Every file `user` holds `right` on (owned included), one page at a time.
    pub async fn list(
        &self,
        user: &str,
        right: Option<Right>,
        page_token: &str,
        page_size: u32,
        min_revision: u64,
    ) -> Result<Page, Error> {
        check_id(user, "user_id")?;
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::invalid(format!(
                    "page_size {n} is out of range (1..={MAX_PAGE_SIZE}, 0 for {DEFAULT_PAGE_SIZE})"
                )));
            }
            n => n,
        };
        let (right, after) = if page_token.is_empty() {
            (right.unwrap_or(Right::Read), String::new())
        } else {
            let t = PageToken::decode(page_token)?;
            if right.is_some_and(|r| r != t.right) {
                return Err(Error::invalid(
                    "page_token belongs to a listing of another right",
                ));
            }
            (t.right, t.after)
        };
        let (mut rows, revision) = self.store.list(user, right, &after, size + 1).await?;
        fresh_enough(min_revision, revision)?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some((last, _))) => PageToken {
                right,
                after: last.clone(),
            }
            .encode(),
            _ => String::new(),
        };
        Ok(Page {
            files: rows
                .into_iter()
                .map(|(file_id, rights)| Accessible { file_id, rights })
                .collect(),
            next_page_token,
            revision,
        })
    }

    /// Record a new file owned by `user`.
    pub async fn create_owner(&self, file: &str, user: &str) -> Result<u64, Error> {
        check_id(file, "file_id")?;
        check_id(user, "user_id")?;
        let (revision, created) = self.store.create_owner(file, user).await?;
        if created {
            self.cache.apply(&[Change {
                revision,
                object: file.to_string(),
                subject: String::new(),
            }]);
        }
        Ok(revision)
    }

    /// Remove a file and every grant on it. Deleting an unknown file is not an error.
    pub async fn delete_object(&self, file: &str) -> Result<u64, Error> {
        Ok(self.delete_object_holders(file).await?.0)
    }

    /// [`Permissions::delete_object`], also answering the users who held a direct grant on
    /// the file (owner included) so they can be told it is gone; empty when there was
    /// nothing to delete.
    pub async fn delete_object_holders(&self, file: &str) -> Result<(u64, Vec<String>), Error> {
        check_id(file, "file_id")?;
        let (revision, lease_ms, holders) = match self.store.delete_object(file).await? {
            (Some(revision), lease_ms, holders) => (revision, lease_ms, holders),
            (None, lease_ms, _) => (self.store.revision().await?, lease_ms, Vec::new()),
        };
        // Applied even when there was nothing to delete (a retry, or a lost race with a
        // concurrent delete), as for revokes.
        self.cache.apply(&[Change {
            revision,
            object: file.to_string(),
            subject: String::new(),
        }]);
        self.commit_wait(lease_ms).await;
        Ok((revision, holders))
    }

    /// With several replicas: wait until every replica's cache lease has renewed past this
    /// commit (rule 3 of [`cache`]): the longer of this process's lease and the longest any
    /// replica has published. A tenth more covers clock-rate differences.
    async fn commit_wait(&self, published_ms: u64) {
        if self.shared {
            let lease = self.lease.max(Duration::from_millis(published_ms));
            tokio::time::sleep(lease + lease / 10).await;
        }
    }

    /// Tests only: stop (or resume) the background change-log reads.
    #[doc(hidden)]
    pub fn pause_sync(&self, paused: bool) {
        self.sync_paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Read the change log once: apply what changed since the last read and renew the lease.
    pub async fn sync(&self) -> Result<(), Error> {
        let started = Instant::now();
        let current = self.store.revision().await?;
        let synced = self.cache.synced();
        let stale = self
            .cache
            .lease_age()
            .is_none_or(|age| self.shared && age > self.lease);
        if current < synced {
            // The database went back in time (a restore or a failover that lost commits):
            // start over from its revision, which later changes will number upwards from.
            self.cache.rewind(current);
        } else if stale {
            // This process could not follow the log for longer than its lease: start over.
            self.cache.reset(current);
        } else if current > synced {
            let changes = self.store.changes(synced, current, SYNC_BATCH + 1).await?;
            if changes.len() > SYNC_BATCH as usize {
                self.cache.reset(current);
            } else {
                self.cache.apply(&changes);
            }
        }
        self.cache.advance(current, started);
        metrics::gauge!("permission_cache_entries").set(self.cache.len() as f64);
        metrics::gauge!("permission_revision").set(current as f64);
        Ok(())
    }
}

fn fresh_enough(min_revision: u64, revision: u64) -> Result<(), Error> {
    if min_revision > revision {
        return Err(Error::invalid(format!(
            "at_least_as_fresh {min_revision} is newer than the latest revision {revision}"
        )));
    }
    Ok(())
}

/// Merge a request's grants into one set of rights per user.
fn merge(specs: &[GrantSpec], field: &str) -> Result<BTreeMap<String, Rights>, Error> {
    let mut out = BTreeMap::new();
    for (i, g) in specs.iter().enumerate() {
        check_id(&g.user_id, &format!("{field}[{i}].user_id"))?;
        if g.rights.is_empty() {
            return Err(Error::invalid(format!(
                "{field}[{i}].rights must not be empty"
            )));
        }
        let e = out.entry(g.user_id.clone()).or_insert(Rights::NONE);
        for r in &g.rights {
            *e = e.union(Rights::of(*r));
        }
    }
    Ok(out)
}

/// Open the service and run its background work (change-log reads, pruning) until `stop`.
pub async fn start(
    cfg: &Config,
    db: Db,
    stop: CancellationToken,
) -> Result<Arc<Permissions>, String> {
    let perms = Permissions::open(cfg, db)
        .await
        .map_err(|e| format!("permission service: {e}"))?;
    let every = cfg.permission.sync_interval.0;
    {
        let perms = perms.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if perms.sync_paused.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                match perms.sync().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("permission change log readable again");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        metrics::counter!("permission_sync_failures_total").increment(1);
                        if !failing {
                            failing = true;
                            tracing::warn!(error = %e, "cannot read the permission change log; checks bypass the cache until it is readable");
                        }
                    }
                }
            }
        });
    }
    {
        let perms = perms.clone();
        tokio::spawn(async move {
            // Prune by revision, timed on this process's monotonic clock (no wall clock, no
            // other machine's clock): rows up to the revision seen an hour ago go. Every live
            // replica has read them long since, or reset its cache (its lease ran out).
            let mut seen: std::collections::VecDeque<(Instant, u64)> = Default::default();
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match perms.store.revision().await {
                    Ok(r) => seen.push_back((Instant::now(), r)),
                    Err(_) => continue,
                }
                let mut upto = None;
                while let Some((at, r)) = seen.front().copied()
                    && at.elapsed() >= CHANGE_RETENTION
                {
                    upto = Some(r);
                    seen.pop_front();
                }
                if let Some(upto) = upto
                    && let Err(e) = perms.store.prune_changes(upto).await
                {
                    tracing::warn!(error = %e, "cannot prune the permission change log");
                }
            }
        });
    }
    Ok(perms)
}
