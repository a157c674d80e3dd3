//! The auth REST API: `/auth/register`, `/auth/login`, `/auth/logout`, `/auth/refresh`,
//! `/auth/me`, `/.well-known/jwks.json`.
//!
//! Login answers every failure with the same 401 body, and spends one argon2id
//! verification whether or not the user exists. Failures are counted per account, per
//! account and address, and per address; past a limit the answer is 429 with
//! `Retry-After`. An account under attack from elsewhere stays open to addresses that have
//! not failed for it, so the real user still gets in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fms_platform::config::AuthConfig;
use fms_platform::logging::rfc3339;
use fms_platform::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::keys::Keys;
use crate::password::{self, HashError, Hasher};
use crate::shared::{Shared, Unavailable};
use crate::store::{AuthStore, RefreshUse, StoreError, User};
use crate::tokens::{LEEWAY_SECS, now_secs};
use crate::verify::{Authenticated, Authenticator};

/// Everything the auth endpoints need.
pub struct AuthService {
    pub store: AuthStore,
    pub keys: Arc<Keys>,
    pub hasher: Hasher,
    pub shared: Shared,
    pub authenticator: Arc<Authenticator>,
    pub cfg: AuthConfig,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

type Svc = State<Arc<AuthService>>;

/// The auth routes (to be wrapped by `fms_platform::http::app`).
pub fn routes(svc: Arc<AuthService>) -> Router {
    let limit = svc.cfg.max_body.0 as usize;
    let authenticator = svc.authenticator.clone();
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/refresh", post(refresh))
        .route("/auth/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(authenticator))
        .with_state(svc)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "already exists")
            }
            StoreError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => ApiError::unavailable("too many logins in progress; retry", 1),
            HashError::Failed(m) => ApiError::internal(m),
        }
    }
}

fn unavailable(e: Unavailable) -> ApiError {
    tracing::warn!(error = %e, "shared state unavailable; refusing (fail closed)");
    ApiError::unavailable("temporarily unavailable; retry", 1)
}

/// A user as the API shows it.
#[derive(Debug, Serialize)]
struct UserView {
    id: String,
    username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            created_at: rfc3339(u.created_at, 0),
        }
    }
}

/// Usernames: 3-64 of `a-z 0-9 . _ -`, starting with a letter or digit, compared
/// case-insensitively (stored lower-case).
fn normalize_username(raw: &str) -> Result<String, String> {
    let u = raw.to_ascii_lowercase();
    if !(3..=64).contains(&u.len()) {
        return Err("username must be 3 to 64 characters".into());
    }
    if !u
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("username may contain only letters, digits, '.', '_' and '-'".into());
    }
    if !u.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("username must start with a letter or digit".into());
    }
    Ok(u)
}

fn check_email(e: &str) -> Result<(), String> {
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && d.contains('.')
                && !d.contains('@')
                && !d.starts_with('.')
                && !d.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err("email is not a valid address".into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
}

async fn register(
    State(svc): Svc,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    let username = normalize_username(&req.username)
        .map_err(|e| problems.push(e))
        .ok();
    if let Err(e) = password::check_policy(&req.password, &req.username) {
        problems.push(e);
    }
    let email = req.email.filter(|e| !e.is_empty());
    if let Some(e) = &email
        && let Err(p) = check_email(e)
    {
        problems.push(p);
    }
    let Some(username) = username.filter(|_| problems.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            problems.join("; "),
        ));
    };
    if svc.store.user_by_name(&username).await?.is_some() {
        return Err(taken());
    }
    let password_hash = svc.hasher.hash(req.password).await?;
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        username,
        email,
        password_hash,
        created_at: now_secs() as i64,
    };
    match svc.store.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => return Err(taken()),
        Err(e) => return Err(e.into()),
    }
    ::metrics::counter!("auth_registrations_total").increment(1);
    tracing::info!(user.id = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(UserView::from(&user))).into_response())
}

fn taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "username is already taken",
    )
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

/// The OAuth 2.0-style token response.
#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    refresh_expires_in: u64,
}

fn no_store(body: TokenResponse) -> Response {
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid username or password",
    )
}

fn too_many(wait: Duration) -> ApiError {
    ApiError {
        retry_after: Some(wait.as_secs().max(1)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed login attempts; retry later",
        )
    }
}

/// The client's address: the socket peer, or the address `hops` proxies back in
/// `X-Forwarded-For` when proxies are trusted.
fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, hops: u32) -> String {
    if hops > 0 {
        // Every X-Forwarded-For line, in order: a proxy may add its own line rather than
        // append to the client's.
        let list: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let idx = list.len().saturating_sub(hops as usize);
        if let Some(ip) = list.get(idx).and_then(|s| s.parse::<IpAddr>().ok()) {
            return ip.to_string();
        }
    }
    peer.map_or_else(|| "unknown".into(), |p| p.ip().to_string())
}

/// The per-account failure counters one login attempt is charged to.
struct Attempt {
    /// `pair:<account>:<address>` and `acct:<account>`.
    keys: [String; 2],
}

impl Attempt {
    /// Give the attempt back (it was refused before the password was checked, failed on our
    /// side, or succeeded): only failed password checks stay counted.
    async fn release(&self, shared: &Shared) -> Result<(), ApiError> {
        for k in &self.keys {
            shared.decr(k).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

async fn login(
    State(svc): Svc,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = client_ip(&headers, peer.map(|p| p.0.0), svc.cfg.trusted_proxy_hops);
    // An invalid name cannot exist; it still goes through the same steps and costs. Counter
    // keys carry a digest of the name, so their size does not depend on the request.
    let name =
        normalize_username(&req.username).unwrap_or_else(|_| req.username.to_ascii_lowercase());
    let name_key = &blake3::hash(name.as_bytes()).to_hex()[..32];
    let rl = &svc.cfg.rate_limit;
    let window = rl.window.0;
    let k_ip = format!("ip:{ip}");
    let (n_ip, w_ip) = svc.shared.count(&k_ip).await.map_err(unavailable)?;
    if n_ip >= u64::from(rl.per_address) {
        ::metrics::counter!("auth_logins_total", "result" => "throttled").increment(1);
        return Err(too_many(w_ip));
    }
    // Per account, reserve first and check after: concurrent guesses at one account each
    // see their own count, so a burst cannot slip past the limit between a check and an
    // increment. (The per-address counter only counts failures: many different users
    // behind one address may log in at once.)
    let attempt = Attempt {
        keys: [format!("pair:{name_key}:{ip}"), format!("acct:{name_key}")],
    };
    let (n_pair, w_pair) = svc
        .shared
        .incr(&attempt.keys[0], window)
        .await
        .map_err(unavailable)?;
    let (n_acct, w_acct) = match svc.shared.incr(&attempt.keys[1], window).await {
        Ok(v) => v,
        Err(e) => {
            let _ = svc.shared.decr(&attempt.keys[0]).await;
            return Err(unavailable(e));
        }
    };
    let refused = if n_pair > u64::from(rl.per_account_address) {
        Some(w_pair)
    } else if n_acct > u64::from(rl.per_account) && n_pair > 1 {
        // The account is under attack: only addresses that have not failed for it may try.
        Some(w_acct)
    } else {
        None
    };
    if let Some(wait) = refused {
        attempt.release(&svc.shared).await?;
        ::metrics::counter!("auth_logins_total", "result" => "throttled").increment(1);
        return Err(too_many(wait));
    }
    let user = match check_password(&svc, &name, &req.password).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            svc.shared.incr(&k_ip, window).await.map_err(unavailable)?;
            ::metrics::counter!("auth_logins_total", "result" => "failed").increment(1);
            return Err(bad_credentials());
        }
        Err(e) => {
            attempt.release(&svc.shared).await?;
            return Err(e);
        }
    };
    attempt.release(&svc.shared).await?;
    svc.shared
        .reset(&attempt.keys[0])
        .await
        .map_err(unavailable)?;
    if svc.hasher.needs_rehash(&user.password_hash) {
        let phc = svc.hasher.hash(req.password).await?;
        svc.store.set_password_hash(&user.id, &phc).await?;
    }
    let family = uuid::Uuid::new_v4().to_string();
    let family_expires = now_secs() + svc.cfg.refresh_ttl.0.as_secs();
    let (refresh_token, hash) = new_refresh_token()?;
    svc.store
        .start_family(&family, &user.id, &hash, family_expires as i64)
        .await?;
    let resp = token_response(&svc, &user.id, &family, refresh_token, family_expires)?;
    ::metrics::counter!("auth_logins_total", "result" => "ok").increment(1);
    tracing::info!(user.id = %user.id, "login");
    Ok(no_store(resp))
}

/// The user if `password` is theirs; one argon2id verification either way.
async fn check_password(
    svc: &AuthService,
    name: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let user = svc.store.user_by_name(name).await?;
    let ok = match &user {
        Some(u) => {
            svc.hasher
                .verify(password.to_string(), u.password_hash.clone())
                .await?
        }
        None => {
            svc.hasher.verify_dummy(password.to_string()).await?;
            false
        }
    };
    Ok(user.filter(|_| ok))
}

fn refresh_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A new opaque refresh token and the hash it is stored under.
fn new_refresh_token() -> Result<(String, String), ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(ApiError::internal)?;
    let token = format!("fmsr_{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = refresh_hash(&token);
    Ok((token, hash))
}

/// The token response: an access token for the session and the given refresh token.
fn token_response(
    svc: &AuthService,
    user_id: &str,
    family: &str,
    refresh_token: String,
    family_expires: u64,
) -> Result<TokenResponse, ApiError> {
    let tokens = svc.keys.current();
    let (access_token, claims) = tokens
        .issue_in_session(user_id, family)
        .map_err(ApiError::internal)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        refresh_token,
        refresh_expires_in: family_expires.saturating_sub(now_secs()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

fn bad_refresh() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_grant",
        "refresh token is invalid, expired or revoked",
    )
}

/// Revoke a login session: its refresh family, and every access token issued in it.
async fn end_session(svc: &AuthService, family: &str) -> Result<(), ApiError> {
    svc.store.revoke_family(family).await?;
    let until = now_secs() + svc.cfg.access_ttl.0.as_secs() + LEEWAY_SECS;
    let key = format!("sid:{family}");
    svc.store.revoke_jti(&key, until as i64).await?;
    svc.shared.revoke(&key, until).await.map_err(unavailable)?;
    Ok(())
}

async fn refresh(
    State(svc): Svc,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    if req.refresh_token.len() > 128 {
        return Err(bad_refresh());
    }
    let (next, next_hash) = new_refresh_token()?;
    match svc
        .store
        .rotate_refresh(&refresh_hash(&req.refresh_token), &next_hash)
        .await?
    {
        RefreshUse::Fresh {
            family,
            user_id,
            expires_at,
        } => {
            let resp = token_response(&svc, &user_id, &family, next, expires_at.max(0) as u64)?;
            ::metrics::counter!("auth_refreshes_total", "result" => "ok").increment(1);
            Ok(no_store(resp))
        }
        RefreshUse::Reused { family, user_id } => {
            tracing::warn!(user.id = %user_id, "refresh token reused; revoking its session");
            end_session(&svc, &family).await?;
            ::metrics::counter!("auth_refreshes_total", "result" => "reuse").increment(1);
            Err(bad_refresh())
        }
        RefreshUse::Invalid => {
            ::metrics::counter!("auth_refreshes_total", "result" => "invalid").increment(1);
            Err(bad_refresh())
        }
    }
}

async fn logout(
    State(svc): Svc,
    Authenticated(claims): Authenticated,
) -> Result<Response, ApiError> {
    // Verification accepts a token up to LEEWAY_SECS past `exp`; so must the revocation last.
    svc.store
        .revoke_jti(&claims.jti, (claims.exp + LEEWAY_SECS) as i64)
        .await?;
    svc.shared
        .revoke(&claims.jti, claims.exp)
        .await
        .map_err(unavailable)?;
    if !claims.sid.is_empty() {
        end_session(&svc, &claims.sid).await?;
    }
    tracing::info!(user.id = %claims.sub, "logout");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn me(State(svc): Svc, Authenticated(claims): Authenticated) -> Result<Response, ApiError> {
    let user = svc
        .store
        .user_by_id(&claims.sub)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok(Json(json!({
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "created_at": rfc3339(user.created_at, 0),
        "session_expires_at": rfc3339(claims.exp as i64, 0),
    }))
    .into_response())
}

async fn jwks(State(svc): Svc) -> Response {
    let doc = svc
        .keys
        .published()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .jwks();
    let mut resp = Json(doc).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=30"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_addresses() {
        assert_eq!(normalize_username("Alice.B").unwrap(), "alice.b");
        for bad in [
            "ab",
            "-alice",
            "al ice",
            "alice/../x",
            "ålice",
            &"a".repeat(65),
            "a\0b",
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?}");
        }
        assert!(check_email("a@b.io").is_ok());
        for bad in ["a", "@b.io", "a@b", "a b@c.io", "a@b.io@c.io", "a@.io"] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 5.6.7.8"),
        );
        assert_eq!(
            client_ip(&h, Some(peer), 0),
            "10.0.0.9",
            "untrusted header ignored"
        );
        assert_eq!(client_ip(&h, Some(peer), 1), "5.6.7.8");
        assert_eq!(client_ip(&h, Some(peer), 2), "1.2.3.4");
    }
}
