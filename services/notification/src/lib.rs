//! # fms-notification
//!
//! Real-time events for users over WebSocket (`GET /ws`), published by the other services
//! through `fms.notification.v1.NotificationService/Publish`.
//!
//! Every event is stored first, per user, numbered 1, 2, 3... (the id a client resumes
//! from), in the database (the embedded file by default, PostgreSQL in production), then
//! handed to the user's open sockets. A client reconnecting with the last id it saw gets
//! exactly what it missed, then live events: no gap, no duplicate, across restarts of any
//! component; past the retention it is told so (`gap`). A socket that falls
//! `notification.send_queue` events behind is closed (memory stays bounded).
//!
//! Replicas: with Redis configured, a stored event is published on one Redis channel and
//! every replica delivers it to its own sockets (history is shared through PostgreSQL, so a
//! client may resume on any replica). A socket that sees a number skipped (a lost Redis
//! message) fetches the missing events from the history before going on.
//!
//! Access is re-checked at delivery: an event published with `recheck_subject` (about a
//! file's content) is written to a socket only if its user may still read that file, asked of
//! the permission service ([`access::Access`]) as the event goes out, live or replayed.

pub mod access;
pub mod grpc;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use fms_platform::Config;
use fms_platform::config::NotificationConfig;
use fms_platform::db::{Db, Migration};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::mpsc;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/0001_notification.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/0002_recheck.sql"),
    },
];

/// Events replayed per database read.
const REPLAY_PAGE: i64 = 500;

/// One stored event as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Delivered {
    /// Per-user number: 1, 2, 3... (resume from it).
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The publisher's event id.
    pub event_id: String,
    pub source: String,
    pub subject: String,
    /// RFC 3339.
    pub time: String,
    pub data: serde_json::Value,
    /// Deliver only to users who may still read `subject` (not shown to clients).
    #[serde(skip)]
    pub recheck: bool,
}

impl Delivered {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub kind: String,
    pub source: String,
    pub subject: String,
    pub time_ms: i64,
    /// JSON text.
    pub data: String,
    /// Deliver only to users who may still read the file `subject` (checked at delivery).
    pub recheck: bool,
}

/// One socket's queue: events waiting to be written to it.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Arc<Delivered>>,
}

/// The service: history in the database, live sockets in this process.
pub struct Notifier {
    db: Db,
    pub cfg: NotificationConfig,
    conns: std::sync::Mutex<HashMap<String, Vec<Conn>>>,
    next_conn: AtomicU64,
    open: AtomicUsize,
    /// One writer per user at a time in this process (numbers are also safe across
    /// processes: the counter row is updated atomically).
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Redis: where stored events are announced to every replica.
    fanout: Option<(redis::aio::ConnectionManager, String)>,
    /// Who answers access re-checks; without one, events that need a re-check are withheld.
    access: Option<access::Access>,
}

/// What goes over the Redis channel.
#[derive(Serialize, serde::Deserialize)]
struct Wire {
    user: String,
    event: Delivered,
    #[serde(default)]
    recheck: bool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// Why a publish failed.
#[derive(Debug)]
pub enum PublishError {
    /// The event or its users break the limits.
    Invalid(String),
    /// The history could not be written.
    Db(String),
}

impl std::error::Error for PublishError {}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Invalid(m) => write!(f, "invalid event: {m}"),
            PublishError::Db(m) => write!(f, "event history: {m}"),
        }
    }
}

use fms_platform::logging::rfc3339_ms as rfc3339;

fn row_event(r: &sqlx::any::AnyRow) -> Result<Delivered, sqlx::Error> {
    let data: String = r.try_get(6)?;
    let recheck: i64 = r.try_get(7)?;
    Ok(Delivered {
        id: u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
        event_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        source: r.try_get(3)?,
        subject: r.try_get(4)?,
        time: rfc3339(r.try_get(5)?),
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        recheck: recheck != 0,
    })
}

impl Notifier {
    /// The history tables, migrated.
    pub async fn open(
        cfg: &Config,
        db: Db,
        access: Option<access::Access>,
    ) -> Result<Arc<Notifier>, String> {
        db.migrate("notification", MIGRATIONS)
            .await
            .map_err(|e| format!("notification history: {e}"))?;
        Ok(Arc::new(Notifier {
            db,
            cfg: cfg.notification.clone(),
            conns: std::sync::Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            fanout: None,
            access,
        }))
    }

    /// Share live delivery with the other replicas through Redis at `url`: stored events
    /// are published on the channel `<prefix>notification:events`, and a task delivers what
    /// arrives there to this process's sockets (resubscribing after a lost connection).
    pub async fn open_shared(
        cfg: &Config,
        db: Db,
        access: Option<access::Access>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Notifier>, String> {
        let local = Notifier::open(cfg, db, access).await?;
        let mut n = Arc::try_unwrap(local).map_err(|_| "notifier shared too early".to_string())?;
        let client =
            redis::Client::open(cfg.redis.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            redis::aio::ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(|_| "redis: connect timed out".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
        let channel = format!("{}notification:events", cfg.redis.key_prefix);
        n.fanout = Some((conn, channel.clone()));
        let n = Arc::new(n);
        let weak = Arc::downgrade(&n);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                let sub = async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                match sub.await {
                    Ok(ps) => {
                        let mut msgs = ps.into_on_message();
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                m = msgs.next() => {
                                    let Some(m) = m else { break };
                                    let Some(n) = weak.upgrade() else { return };
                                    match serde_json::from_slice::<Wire>(m.get_payload_bytes()) {
                                        Ok(w) => n.deliver(&w.user, Arc::new(Delivered { recheck: w.recheck, ..w.event })),
                                        Err(e) => tracing::warn!(error = %e, "bad event on the Redis channel"),
                                    }
                                }
                            }
                        }
                        tracing::warn!("Redis event channel lost; resubscribing");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis events"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(n)
    }

    fn lock_for(&self, user: &str) -> &tokio::sync::Mutex<()> {
        let h = user
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[h % self.locks.len()]
    }

    /// Store `event` for each user, then deliver it to their open sockets. Returns each
    /// user's number for it. A repeat of an event id a user already has stores nothing and
    /// returns the number it got the first time.
    pub async fn publish(
        &self,
        users: &[String],
        event: &NewEvent,
    ) -> Result<HashMap<String, u64>, PublishError> {
        check_event(users, event)?;
        let mut out = HashMap::new();
        for user in users {
            let seq = self.store(user, event).await?;
            out.insert(user.clone(), seq);
        }
        Ok(out)
    }

    async fn store(&self, user: &str, e: &NewEvent) -> Result<u64, PublishError> {
        let db_err = |err: sqlx::Error| PublishError::Db(err.to_string());
        let _g = self.lock_for(user).lock().await;
        if let Some(r) =
            sqlx::query("SELECT seq FROM notification_events WHERE user_id = $1 AND event_id = $2")
                .bind(user)
                .bind(&e.event_id)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_err)?
        {
            return Ok(u64::try_from(r.try_get::<i64, _>(0).map_err(db_err)?).unwrap_or(0));
        }
        let mut tx = self.db.pool.begin().await.map_err(db_err)?;
        let seq: i64 = sqlx::query(
            "INSERT INTO notification_seqs (user_id, last) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET last = notification_seqs.last + 1
             RETURNING last",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO notification_events
                 (user_id, seq, event_id, type, source, subject, time_ms, data, recheck)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(user)
        .bind(seq)
        .bind(&e.event_id)
        .bind(&e.kind)
        .bind(&e.source)
        .bind(&e.subject)
        .bind(e.time_ms)
        .bind(&e.data)
        .bind(i64::from(e.recheck))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        metrics::counter!("notification_events_stored_total").increment(1);
        let delivered = Arc::new(Delivered {
            id: seq as u64,
            kind: e.kind.clone(),
            event_id: e.event_id.clone(),
            source: e.source.clone(),
            subject: e.subject.clone(),
            time: rfc3339(e.time_ms),
            data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
            recheck: e.recheck,
        });
        match &self.fanout {
            Some((conn, channel)) => {
                let wire = serde_json::to_string(&Wire {
                    user: user.to_string(),
                    event: (*delivered).clone(),
                    recheck: delivered.recheck,
                })
                .unwrap_or_default();
                let mut conn = conn.clone();
                let sent: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(wire)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    // Stored all the same: sockets here get it now, elsewhere at the next
                    // event (they fetch skipped numbers) or when they reconnect.
                    tracing::warn!(error = %e, "Redis publish failed; delivering locally");
                    self.deliver(user, delivered);
                }
            }
            None => self.deliver(user, delivered),
        }
        Ok(seq as u64)
    }

    /// Hand an event to every open socket of `user`; a socket whose queue is full is
    /// dropped from the list (its task then closes it as too slow).
    fn deliver(&self, user: &str, e: Arc<Delivered>) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        if let Some(list) = conns.get_mut(user) {
            list.retain(|c| match c.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("notification_slow_consumers_total").increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if list.is_empty() {
                conns.remove(user);
            }
        }
    }

    /// Register a socket of `user`; `None` when the limits are reached.
    pub(crate) fn attach(&self, user: &str) -> Option<(u64, mpsc::Receiver<Arc<Delivered>>)> {
        let mut conns = self.conns.lock().ok()?;
        if self.open.load(Ordering::Relaxed) >= self.cfg.max_connections as usize {
            return None;
        }
        let list = conns.entry(user.to_string()).or_default();
        if list.len() >= self.cfg.max_connections_per_user as usize {
            return None;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.send_queue.max(1) as usize);
        list.push(Conn { id, tx });
        self.open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("notification_sockets").increment(1.0);
        Some((id, rx))
    }

    pub(crate) fn detach(&self, user: &str, id: u64) {
        if let Ok(mut conns) = self.conns.lock()
            && let Some(list) = conns.get_mut(user)
        {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(user);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("notification_sockets").decrement(1.0);
    }

    /// `user`'s events after `after`, oldest first, at most one page.
    pub(crate) async fn replay(&self, user: &str, after: u64) -> Result<Vec<Delivered>, String> {
        let rows = sqlx::query(
            "SELECT seq, event_id, type, source, subject, time_ms, data, recheck
             FROM notification_events
             WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(user)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(REPLAY_PAGE)
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| row_event(r).map_err(|e| e.to_string()))
            .collect()
    }

    /// The oldest number still kept for `user` and the last number given — read in one
    /// statement (one snapshot): an event stored between two separate reads would look like
    /// a trimmed history.
    pub(crate) async fn bounds(&self, user: &str) -> Result<(Option<u64>, u64), String> {
        let row = sqlx::query(
            "SELECT (SELECT MIN(seq) FROM notification_events WHERE user_id = $1),
                    (SELECT last FROM notification_seqs WHERE user_id = $1)",
        )
        .bind(user)
        .fetch_one(&self.db.pool)
        .await
        .map_err(|e| e.to_string())?;
        let first: Option<i64> = row.try_get(0).map_err(|e| e.to_string())?;
        let last: Option<i64> = row.try_get(1).map_err(|e| e.to_string())?;
        Ok((first.map(|f| f as u64), last.map(|l| l as u64).unwrap_or(0)))
    }

    /// Whether `e` may be written to `user`'s socket now: yes unless it needs an access
    /// re-check and `user` may no longer read its subject. `Err` when that cannot be decided
    /// (the socket must not go past the event).
    pub(crate) async fn may_deliver(&self, user: &str, e: &Delivered) -> Result<bool, String> {
        if !e.recheck {
            return Ok(true);
        }
        let Some(access) = &self.access else {
            metrics::counter!("notification_withheld_total").increment(1);
            return Ok(false);
        };
        let allowed = access.may_read(user, &e.subject).await?;
        if !allowed {
            metrics::counter!("notification_withheld_total").increment(1);
        }
        Ok(allowed)
    }

    /// Forget events older than the retention. Returns how many went.
    pub async fn trim(&self) -> Result<u64, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let cutoff = now - self.cfg.retention.0.as_millis() as i64;
        let r = sqlx::query("DELETE FROM notification_events WHERE time_ms < $1")
            .bind(cutoff)
            .execute(&self.db.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.rows_affected())
    }

    /// Trim every quarter of the retention (at most hourly, at least every second) until
    /// `stop`.
    pub fn spawn_trimmer(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let this = Arc::downgrade(self);
        let every = (self.cfg.retention.0 / 4).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(3600),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(n) = this.upgrade() else { return };
                match n.trim().await {
                    Ok(k) if k > 0 => tracing::info!(events = k, "event history trimmed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "event history trim failed"),
                }
            }
        });
    }
}

/// Limits on what may be published.
fn check_event(users: &[String], e: &NewEvent) -> Result<(), PublishError> {
    let bad = |m: &str| Err(PublishError::Invalid(m.to_string()));
    if users.is_empty() || users.len() > 1000 {
        return bad("1 to 1000 user ids");
    }
    if users.iter().any(|u| u.is_empty() || u.len() > 128) {
        return bad("user ids are 1 to 128 bytes");
    }
    if e.event_id.is_empty() || e.event_id.len() > 128 {
        return bad("an event id of 1 to 128 bytes");
    }
    if e.kind.is_empty()
        || e.kind.len() > 64
        || !e
            .kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("a type of 1 to 64 letters, digits, `.`, `_`, `-`");
    }
    if e.recheck && e.subject.is_empty() {
        return bad("recheck_subject needs a subject (the file id)");
    }
    if e.source.len() > 128 || e.subject.len() > 256 {
        return bad("source up to 128 bytes, subject up to 256");
    }
    if e.data.len() > 64 << 10 {
        return bad("data up to 64 KiB");
    }
    if !e.data.is_empty() && serde_json::from_str::<serde_json::Value>(&e.data).is_err() {
        return bad("data must be JSON");
    }
    Ok(())
}

/// Start the service: history tables, trimming. `access` answers re-checks at delivery.
pub async fn start(
    cfg: &Config,
    db: Db,
    access: Option<access::Access>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Arc<Notifier>, String> {
    let n = if cfg.redis.url.is_empty() {
        Notifier::open(cfg, db, access).await?
    } else {
        Notifier::open_shared(cfg, db, access, stop.clone()).await?
    };
    n.spawn_trimmer(stop);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_999_999_999), "2026-11-30T00:53:19.999Z");
    }
}
