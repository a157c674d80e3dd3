//! The verification library every service uses to authenticate requests, so none
//! re-implements it: bearer token -> signature and claims checked against the JWKS ->
//! revocation checked -> [`Claims`].
//!
//! Keys come from the auth service in this process (`fms serve`) or from its JWKS URL.
//! Fetched keys are cached and refreshed every [`REFRESH_EVERY`]; a token naming an
//! unknown `kid` triggers at most one refetch per [`MIN_REFETCH`] (single flight), so a
//! flood of random kids cannot turn into a flood of JWKS requests. New signing keys are
//! published [`crate::keys::PUBLISH_AHEAD`] before they sign, longer than the refresh
//! period, so a rotation fails no request.
//!
//! Verified tokens are cached by their exact text until they expire (a service sees the
//! same token on every request of a session); the revocation check is never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fms_platform::ApiError;

use crate::shared::Shared;
use crate::tokens::{self, Claims, Expect, KeySet, LEEWAY_SECS, TokenError};

/// Background refresh period of fetched keys.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Least time between two fetches triggered by unknown kids.
pub const MIN_REFETCH: Duration = Duration::from_secs(1);
/// Verified tokens remembered at most.
const CACHE_MAX: usize = 10_000;

/// Why a request is not authenticated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    Invalid(#[from] TokenError),
    #[error("token revoked")]
    Revoked,
    /// The revocation state could not be read: refused (fail closed), but as 503 so clients
    /// retry instead of logging the user out.
    #[error("cannot check revocation: {0}")]
    Unavailable(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(m) => {
                tracing::warn!(error = %m, "revocation check failed; refusing (fail closed)");
                ApiError::unavailable("authentication temporarily unavailable", 1)
            }
            _ => ApiError::unauthorized(),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let unauthorized = !matches!(self, AuthError::Unavailable(_));
        let mut resp = ApiError::from(self).into_response();
        if unauthorized && resp.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"fms\""),
            );
        }
        resp
    }
}

enum Source {
    /// Keys maintained by the auth service in this process.
    Local,
    /// Keys fetched from a JWKS URL.
    Remote {
        url: String,
        client: reqwest::Client,
        /// Serialises fetches; holds when the last one happened.
        last: tokio::sync::Mutex<Option<Instant>>,
    },
}

/// Authenticates bearer tokens. Cheap to share (`Arc`).
pub struct Authenticator {
    expect: Expect,
    keys: Arc<RwLock<KeySet>>,
    source: Source,
    shared: Shared,
    /// token -> (its kid, its claims).
    cache: Mutex<HashMap<String, (String, Claims)>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Keys shared with an auth service in this process (it updates `keys` on rotation).
    pub fn local(expect: Expect, keys: Arc<RwLock<KeySet>>, shared: Shared) -> Authenticator {
        Authenticator {
            expect,
            keys,
            source: Source::Local,
            shared,
            cache: Mutex::new(HashMap::new()),
            fetches: 0.into(),
        }
    }

    /// Keys fetched from `jwks_url`; fails if the first fetch fails (a service that cannot
    /// verify anything should not report ready).
    pub async fn remote(
        expect: Expect,
        jwks_url: &str,
        shared: Shared,
    ) -> Result<Arc<Authenticator>, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let a = Arc::new(Authenticator {
            expect,
            keys: Arc::new(RwLock::new(KeySet::default())),
            source: Source::Remote {
                url: jwks_url.to_string(),
                client,
                last: tokio::sync::Mutex::new(None),
            },
            shared,
            cache: Mutex::new(HashMap::new()),
            fetches: 0.into(),
        });
        a.refetch(true).await?;
        let weak = Arc::downgrade(&a);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                let Some(a) = weak.upgrade() else { break };
                if let Err(e) = a.refetch(true).await {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys we have");
                }
            }
        });
        Ok(a)
    }

    /// How many times the JWKS was fetched (for tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetch the JWKS now if `force` or if the last fetch is older than [`MIN_REFETCH`].
    async fn refetch(&self, force: bool) -> Result<(), String> {
        let Source::Remote { url, client, last } = &self.source else {
            return Ok(());
        };
        let mut last = last.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::counter!("auth_jwks_fetches_total").increment(1);
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetch {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetch {url}: HTTP {}", resp.status()));
        }
        let doc: serde_json::Value = resp.json().await.map_err(|e| format!("fetch {url}: {e}"))?;
        let set = KeySet::from_jwks(&doc)?;
        if set.is_empty() {
            return Err(format!("{url} lists no usable key"));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    fn verify_now(&self, token: &str) -> Result<Claims, TokenError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        tokens::verify(token, &keys, &self.expect)
    }

    /// Verify signature and claims (no revocation check).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = tokens::now_secs();
        if let Some((kid, c)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            && c.exp + LEEWAY_SECS > now
            // A key withdrawn from the JWKS takes its tokens with it, cached or not.
            && self
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(kid)
        {
            return Ok(c.clone());
        }
        let claims = match self.verify_now(token) {
            Err(TokenError::UnknownKey) if matches!(self.source, Source::Remote { .. }) => {
                // A key we have not seen: maybe a new one. Refetch (rate-limited), retry once.
                if tokens::token_kid(token).is_some()
                    && let Err(e) = self.refetch(false).await
                {
                    tracing::warn!(error = %e, "JWKS refetch failed");
                }
                self.verify_now(token)?
            }
            other => other?,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, c)| c.exp + LEEWAY_SECS > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        let kid = tokens::token_kid(token).unwrap_or_default();
        cache.insert(token.to_string(), (kid, claims.clone()));
        Ok(claims)
    }

    /// Authenticate a bearer token completely: signature, claims, revocation.
    pub async fn authenticate_token(&self, token: &str) -> Result<Claims, AuthError> {
        let result = async {
            let claims = self.verify(token).await?;
            let sid = format!("sid:{}", claims.sid);
            let ids: &[&str] = if claims.sid.is_empty() {
                &[&claims.jti]
            } else {
                &[&claims.jti, &sid]
            };
            match self.shared.is_revoked(ids).await {
                Ok(false) => Ok(claims),
                Ok(true) => Err(AuthError::Revoked),
                Err(e) => Err(AuthError::Unavailable(e.0)),
            }
        }
        .await;
        let label = match &result {
            Ok(_) => "ok",
            Err(AuthError::Revoked) => "revoked",
            Err(AuthError::Unavailable(_)) => "unavailable",
            Err(_) => "invalid",
        };
        ::metrics::counter!("auth_token_verifications_total", "result" => label).increment(1);
        result
    }

    /// Authenticate a request by its `Authorization: Bearer` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, AuthError> {
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        self.authenticate_token(token).await
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// An authenticated request: its verified claims. Needs an `Arc<Authenticator>` in the
/// request extensions (`axum::Extension` layer).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let auth = parts
            .extensions
            .get::<Arc<Authenticator>>()
            .cloned()
            .ok_or_else(|| AuthError::Unavailable("no authenticator configured".into()))?;
        auth.authenticate(&parts.headers).await.map(Authenticated)
    }
}
