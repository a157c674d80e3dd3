//! State that every replica of every service must see the same: revoked access tokens and
//! login-failure counters. In Redis when one is configured (several processes), else in the
//! process (`fms serve`). Redis calls are bounded in time; a Redis that does not answer is
//! an error, and callers fail closed (a revocation check that cannot be made refuses the
//! request with 503).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// How long one Redis call may take.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Purge expired in-process entries once the map is this large.
const PURGE_AT: usize = 10_000;

/// Shared state could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct Unavailable(pub String);

#[derive(Default)]
struct Local {
    /// jti -> expiry (seconds since the epoch).
    revoked: HashMap<String, u64>,
    /// counter key -> (count, window end).
    counters: HashMap<String, (u64, Instant)>,
    /// Purge expired entries when a map reaches this size (then twice its live size), so
    /// purging costs O(1) per insert amortised.
    purge_revoked_at: usize,
    purge_counters_at: usize,
}

/// Revocations and counters, in the process or in Redis.
#[derive(Clone)]
pub enum Shared {
    Local(Arc<Mutex<LocalState>>),
    /// A connection and the prefix of every key (`redis.key_prefix`).
    Redis(ConnectionManager, Arc<str>),
}

/// The in-process variant's state.
#[derive(Default)]
pub struct LocalState(Local);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shared::Local(_) => "Shared::Local",
            Shared::Redis(..) => "Shared::Redis",
        })
    }
}

fn now_secs() -> u64 {
    crate::tokens::now_secs()
}

async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Unavailable(e.to_string())),
        Err(_) => Err(Unavailable(format!(
            "redis: no answer within {REDIS_TIMEOUT:?}"
        ))),
    }
}

impl Shared {
    /// In-process state.
    pub fn local() -> Shared {
        Shared::Local(Arc::new(Mutex::new(LocalState::default())))
    }

    /// Connect to Redis (`redis://...`); every key starts with `prefix`. The connection
    /// reconnects by itself.
    pub async fn redis(url: &str, prefix: &str) -> Result<Shared, Unavailable> {
        let client = redis::Client::open(url).map_err(|e| Unavailable(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 5,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| Unavailable("redis: connect timed out".into()))?
        .map_err(|e| Unavailable(e.to_string()))?;
        Ok(Shared::Redis(conn, prefix.into()))
    }

    /// From configuration: Redis if a URL is given, else in-process.
    pub async fn from_config(
        cfg: &fms_platform::config::RedisConfig,
    ) -> Result<Shared, Unavailable> {
        if cfg.url.is_empty() {
            Ok(Shared::local())
        } else {
            Shared::redis(&cfg.url, &cfg.key_prefix).await
        }
    }

    /// Whether this state is visible to other processes.
    pub fn is_distributed(&self) -> bool {
        matches!(self, Shared::Redis(..))
    }

    fn lock(state: &Mutex<LocalState>) -> std::sync::MutexGuard<'_, LocalState> {
        state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuse access token `jti` until `exp` (seconds since the epoch).
    pub async fn revoke(&self, jti: &str, exp: u64) -> Result<(), Unavailable> {
        let now = now_secs();
        if exp + crate::tokens::LEEWAY_SECS <= now {
            return Ok(());
        }
        match self {
            Shared::Local(state) => {
                let mut s = Self::lock(state);
                if s.0.revoked.len() >= s.0.purge_revoked_at.max(PURGE_AT) {
                    s.0.revoked
                        .retain(|_, e| *e + crate::tokens::LEEWAY_SECS > now);
                    s.0.purge_revoked_at = s.0.revoked.len() * 2;
                }
                s.0.revoked.insert(jti.to_string(), exp);
                Ok(())
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                // Kept a little past expiry: a token within the verification leeway is
                // still refused.
                let ttl = (exp + crate::tokens::LEEWAY_SECS)
                    .saturating_sub(now)
                    .max(1);
                bounded(
                    redis::cmd("SET")
                        .arg(format!("{p}revoked:{jti}"))
                        .arg(1)
                        .arg("EX")
                        .arg(ttl)
                        .query_async::<()>(&mut c),
                )
                .await
            }
        }
    }

    /// Whether any of `ids` (a token's jti, its session `sid:<id>`) was revoked.
    pub async fn is_revoked(&self, ids: &[&str]) -> Result<bool, Unavailable> {
        match self {
            Shared::Local(state) => {
                let s = Self::lock(state);
                let now = now_secs();
                Ok(ids.iter().any(|id| {
                    s.0.revoked
                        .get(*id)
                        .is_some_and(|e| *e + crate::tokens::LEEWAY_SECS > now)
                }))
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                let mut cmd = redis::cmd("EXISTS");
                for id in ids {
                    cmd.arg(format!("{p}revoked:{id}"));
                }
                let n: u64 = bounded(cmd.query_async(&mut c)).await?;
                Ok(n > 0)
            }
        }
    }

    /// Count one event under `key` in a fixed window of `window` starting at its first
    /// event; returns the count and the time until the window ends.
    pub async fn incr(&self, key: &str, window: Duration) -> Result<(u64, Duration), Unavailable> {
        match self {
            Shared::Local(state) => {
                let mut s = Self::lock(state);
                let now = Instant::now();
                if s.0.counters.len() >= s.0.purge_counters_at.max(PURGE_AT) {
                    s.0.counters.retain(|_, (_, end)| *end > now);
                    s.0.purge_counters_at = s.0.counters.len() * 2;
                }
                let e =
                    s.0.counters
                        .entry(key.to_string())
                        .or_insert((0, now + window));
                if e.1 <= now {
                    *e = (0, now + window);
                }
                e.0 += 1;
                Ok((e.0, e.1 - now))
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                let k = format!("{p}rl:{key}");
                let (n, ttl): (u64, i64) = bounded(
                    redis::pipe()
                        .cmd("INCR")
                        .arg(&k)
                        .cmd("EXPIRE")
                        .arg(&k)
                        .arg(window.as_secs().max(1))
                        .arg("NX")
                        .ignore()
                        .cmd("PTTL")
                        .arg(&k)
                        .query_async(&mut c),
                )
                .await?;
                Ok((n, Duration::from_millis(ttl.max(0) as u64)))
            }
        }
    }

    /// Take one event back from `key` (never below zero, never creating the key).
    pub async fn decr(&self, key: &str) -> Result<(), Unavailable> {
        match self {
            Shared::Local(state) => {
                let mut s = Self::lock(state);
                if let Some(e) = s.0.counters.get_mut(key) {
                    e.0 = e.0.saturating_sub(1);
                }
                Ok(())
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                // DECR alone would create a key without expiry if the window just ended.
                const SCRIPT: &str = "local v = tonumber(redis.call('GET', KEYS[1])) \
                    if v and v > 0 then return redis.call('DECR', KEYS[1]) end return 0";
                bounded(
                    redis::cmd("EVAL")
                        .arg(SCRIPT)
                        .arg(1)
                        .arg(format!("{p}rl:{key}"))
                        .query_async::<i64>(&mut c),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// The current count under `key` and the time until its window ends.
    pub async fn count(&self, key: &str) -> Result<(u64, Duration), Unavailable> {
        match self {
            Shared::Local(state) => {
                let s = Self::lock(state);
                let now = Instant::now();
                Ok(match s.0.counters.get(key) {
                    Some((n, end)) if *end > now => (*n, *end - now),
                    _ => (0, Duration::ZERO),
                })
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                let k = format!("{p}rl:{key}");
                let (n, ttl): (Option<u64>, i64) = bounded(
                    redis::pipe()
                        .cmd("GET")
                        .arg(&k)
                        .cmd("PTTL")
                        .arg(&k)
                        .query_async(&mut c),
                )
                .await?;
                Ok((n.unwrap_or(0), Duration::from_millis(ttl.max(0) as u64)))
            }
        }
    }

    /// Forget the counter under `key`.
    pub async fn reset(&self, key: &str) -> Result<(), Unavailable> {
        match self {
            Shared::Local(state) => {
                Self::lock(state).0.counters.remove(key);
                Ok(())
            }
            Shared::Redis(conn, p) => {
                let mut c = conn.clone();
                bounded(
                    redis::cmd("DEL")
                        .arg(format!("{p}rl:{key}"))
                        .query_async::<()>(&mut c),
                )
                .await
            }
        }
    }

    /// Whether the state answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Shared::Local(_) => Ok(()),
            Shared::Redis(conn, _) => {
                let mut c = conn.clone();
                bounded(redis::cmd("PING").query_async::<String>(&mut c))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_revocations_and_counters() {
        let s = Shared::local();
        let exp = now_secs() + 60;
        assert!(!s.is_revoked(&["a"]).await.unwrap());
        s.revoke("a", exp).await.unwrap();
        assert!(s.is_revoked(&["a"]).await.unwrap());
        assert!(s.is_revoked(&["b", "a"]).await.unwrap());
        assert!(!s.is_revoked(&["b"]).await.unwrap());
        let w = Duration::from_millis(200);
        assert_eq!(s.incr("k", w).await.unwrap().0, 1);
        assert_eq!(s.incr("k", w).await.unwrap().0, 2);
        assert_eq!(s.count("k").await.unwrap().0, 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(s.count("k").await.unwrap().0, 0, "window over");
        assert_eq!(s.incr("k", w).await.unwrap().0, 1);
        s.reset("k").await.unwrap();
        assert_eq!(s.count("k").await.unwrap().0, 0);
    }
}
