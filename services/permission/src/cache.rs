//! The decision cache: what a user holds on a file, per process, never a stale allow.
//!
//! Three rules keep it honest (the full argument is in `docs/design/permissions.md`):
//!
//! 1. **Invalidation from the change log.** Every committed change writes `(revision,
//!    object, subject)` rows; each process reads the log every `sync_interval` and drops the
//!    entries named, then publishes `synced`: every change up to it has been applied.
//! 2. **No insert behind an invalidation.** A decision read from the database at revision
//!    `r` is inserted only if its shard has applied no change newer than `r`; otherwise a
//!    revoke that landed while the read was in flight could be undone by the insert.
//! 3. **A lease (several replicas).** A process answers from its cache only while its last
//!    read of the change log *started* less than `lease` ago, and a call that removes
//!    rights returns only `lease` after its commit. So a replica answering from its cache
//!    after a revoke returned has read the log after the revoke committed.
//!
//! In a single process (the embedded database) the writer applies its own change before it
//! returns, so no lease is needed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::Rights;

const SHARDS: usize = 64;

/// One change read from the log (or made by this process). An empty `subject` means every
/// subject of the object; an empty `object` means everything (a bulk load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub object: String,
    pub subject: String,
}

#[derive(Default)]
struct Shard {
    files: HashMap<String, HashMap<String, Rights>>,
    entries: usize,
    /// Newest change applied to this shard.
    applied: u64,
}

pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    /// Every change up to this revision has been applied.
    synced: AtomicU64,
    /// The newest revision this cache has heard of (log reads and database reads).
    high_water: AtomicU64,
    /// When the read of the change log that produced `synced` started (ns since `base`;
    /// 0: never).
    lease_from: AtomicU64,
    base: Instant,
    /// `None`: one process, no lease.
    lease: Option<Duration>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("per_shard", &self.per_shard)
            .field("synced", &self.synced.load(Ordering::Relaxed))
            .field("lease", &self.lease)
            .finish()
    }
}

impl Cache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: u64, lease: Option<Duration>) -> Cache {
        let per_shard = usize::try_from(capacity.div_ceil(SHARDS as u64)).unwrap_or(usize::MAX);
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard,
            synced: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            lease_from: AtomicU64::new(0),
            base: Instant::now(),
            lease,
        }
    }

    fn shard(&self, object: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(object) as usize) % SHARDS;
        // A panic while holding a shard cannot leave it inconsistent in a way that grants
        // anything: entries are only removed or inserted whole.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether the cache may answer now (enabled, and within the lease when there is one).
    pub fn usable(&self) -> bool {
        if self.per_shard == 0 {
            return false;
        }
        match self.lease {
            None => true,
            Some(lease) => {
                let from = self.lease_from.load(Ordering::Acquire);
                from != 0
                    && self.nanos(Instant::now()).saturating_sub(from) < lease.as_nanos() as u64
            }
        }
    }

    /// The revision every cached answer is at least as new as.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// A cached decision, if the cache may answer and is at least as new as `min_revision`.
    /// Returns the rights and the revision they are valid at.
    pub fn get(&self, object: &str, subject: &str, min_revision: u64) -> Option<(Rights, u64)> {
        if !self.usable() {
            return None;
        }
        let synced = self.synced();
        if min_revision > synced {
            return None;
        }
        let shard = self.shard(object);
        let rights = *shard.files.get(object)?.get(subject)?;
        Some((rights, synced))
    }

    /// Remember a decision read from the database at `revision` (rule 2).
    pub fn insert(&self, object: &str, subject: &str, rights: Rights, revision: u64) {
        if self.per_shard == 0 {
            return;
        }
        self.high_water.fetch_max(revision, Ordering::AcqRel);
        let mut shard = self.shard(object);
        if shard.applied > revision {
            return;
        }
        if shard.entries >= self.per_shard {
            // Evict one whole object: cheap, and keeps `entries` exact.
            if let Some(victim) = shard.files.keys().next().cloned()
                && let Some(m) = shard.files.remove(&victim)
            {
                shard.entries -= m.len();
            }
        }
        let m = shard.files.entry(object.to_string()).or_default();
        if m.insert(subject.to_string(), rights).is_none() {
            shard.entries += 1;
        }
    }

    /// Drop every entry a change names and record it as applied.
    pub fn apply(&self, changes: &[Change]) {
        for c in changes {
            if c.object.is_empty() {
                self.reset(c.revision);
                continue;
            }
            let mut shard = self.shard(&c.object);
            shard.applied = shard.applied.max(c.revision);
            if c.subject.is_empty() {
                if let Some(m) = shard.files.remove(&c.object) {
                    shard.entries -= m.len();
                }
            } else {
                let shard = &mut *shard;
                if let Some(m) = shard.files.get_mut(&c.object)
                    && m.remove(&c.subject).is_some()
                {
                    shard.entries -= 1;
                    if m.is_empty() {
                        shard.files.remove(&c.object);
                    }
                }
            }
        }
    }

    /// Publish that every change up to `revision` is applied, from a read of the log that
    /// started at `started`.
    pub fn advance(&self, revision: u64, started: Instant) {
        self.high_water.fetch_max(revision, Ordering::AcqRel);
        self.synced.fetch_max(revision, Ordering::AcqRel);
        self.lease_from
            .fetch_max(self.nanos(started), Ordering::AcqRel);
    }

    /// Forget everything (the log could not be followed) and start again at `revision`.
    pub fn reset(&self, revision: u64) {
        for s in self.shards.iter() {
            let mut shard = s.lock().unwrap_or_else(|p| p.into_inner());
            shard.files.clear();
            shard.entries = 0;
            shard.applied = shard.applied.max(revision);
        }
    }

    /// The database went back to `revision` (restored): forget everything and follow the
    /// log from there. Every shard is marked as having applied the newest revision this
    /// cache ever heard of, so no read from before the restore (numbered up to that) is
    /// cached; caching resumes once new revisions pass it.
    pub fn rewind(&self, revision: u64) {
        self.reset(self.high_water.load(Ordering::Acquire).max(revision));
        self.synced.store(revision, Ordering::Release);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the lease runs out without a new read of the log (for tests and metrics).
    pub fn lease_age(&self) -> Option<Duration> {
        let from = self.lease_from.load(Ordering::Acquire);
        (from != 0).then(|| Duration::from_nanos(self.nanos(Instant::now()).saturating_sub(from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Right;

    fn change(revision: u64, object: &str, subject: &str) -> Change {
        Change {
            revision,
            object: object.into(),
            subject: subject.into(),
        }
    }

    #[test]
    fn changes_drop_entries_and_block_older_inserts() {
        let c = Cache::new(1000, None);
        let read = Rights::of(Right::Read);
        c.insert("f", "u", read, 5);
        assert_eq!(c.get("f", "u", 0), Some((read, 0)));
        c.apply(&[change(6, "f", "u")]);
        assert_eq!(c.get("f", "u", 0), None);
        // A read that started before revision 6 landed must not come back.
        c.insert("f", "u", read, 5);
        assert_eq!(c.get("f", "u", 0), None);
        c.insert("f", "u", Rights::NONE, 6);
        assert_eq!(c.get("f", "u", 0), Some((Rights::NONE, 0)));
        c.advance(6, Instant::now());
        assert_eq!(
            c.get("f", "u", 7),
            None,
            "asked for a revision not yet synced"
        );
        assert_eq!(c.get("f", "u", 6), Some((Rights::NONE, 6)));
        c.insert("f", "v", read, 7);
        c.apply(&[change(8, "f", "")]);
        assert!(c.is_empty(), "an object-wide change drops every subject");
    }

    #[test]
    fn lease_expires_without_sync_and_capacity_is_bounded() {
        let c = Cache::new(64, Some(Duration::from_secs(600)));
        c.insert("f", "u", Rights::OWNER, 0);
        assert_eq!(c.get("f", "u", 0), None, "never synced: no lease");
        c.advance(0, Instant::now());
        assert!(c.get("f", "u", 0).is_some());
        let short = Cache::new(64, Some(Duration::from_millis(20)));
        short.insert("f", "u", Rights::OWNER, 0);
        short.advance(0, Instant::now());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.get("f", "u", 0), None, "lease ran out");
        for i in 0..10_000 {
            c.insert(&format!("f{i}"), "u", Rights::OWNER, 0);
        }
        assert!(c.len() <= 64, "{}", c.len());
        c.reset(9);
        assert!(c.is_empty());
        c.insert("g", "u", Rights::OWNER, 8);
        assert!(c.is_empty(), "reads older than a reset are not cached");
        assert!(Cache::new(0, None).get("f", "u", 0).is_none());
    }

    #[test]
    fn a_restored_database_is_followed_from_its_revision() {
        let c = Cache::new(100, None);
        c.advance(100, Instant::now());
        c.insert("f", "u", Rights::OWNER, 100);
        c.rewind(40);
        assert!(c.is_empty());
        assert_eq!(
            c.synced(),
            40,
            "later changes (41...) must be read, not skipped"
        );
        c.insert("f", "u", Rights::OWNER, 90);
        assert!(c.is_empty(), "reads from before the restore are not cached");
    }
}
