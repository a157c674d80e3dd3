//! Connected cloud accounts: the OAuth 2.0 authorization-code flow (with PKCE) for Google
//! Drive and Dropbox, tokens sealed at rest, refreshed when they expire, used by imports
//! that carry no token of their own, and a browser over the remote drive.
//!
//! `GET /api/connect/{provider}` answers the provider's authorization URL (the app sends the
//! browser there); the provider sends the browser back to `.../callback` with a code, which
//! is exchanged for tokens. Tokens are stored sealed with XChaCha20-Poly1305 (the row's user
//! and provider are the associated data, so a sealed value cannot be moved to another row)
//! under `connect.token_key`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use fms_auth::verify::Authenticated;
use fms_platform::ApiError;
use fms_platform::config::{ConnectConfig, OAuthProvider};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use sqlx::Row;

use crate::Picker;
use crate::api::{db_error, now_ms};

/// An authorization started but not finished is forgotten after this.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// Tokens this close to expiry are refreshed before use.
const REFRESH_MARGIN_MS: i64 = 60_000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The providers and the sealing key.
pub struct Connect {
    cfg: ConnectConfig,
    cipher: XChaCha20Poly1305,
    http: reqwest::Client,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect").finish_non_exhaustive()
    }
}

/// What is kept per connected account (sealed).
#[derive(Serialize, Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default)]
    refresh_token: String,
    /// Milliseconds since the epoch; 0: no expiry given.
    expires_at: i64,
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}

fn bad_gateway(code: &'static str, m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, code, m)
}

impl Connect {
    /// The key from `connect.token_key`, else from `<data_dir>/connect.key` (created).
    pub fn open(cfg: &ConnectConfig, data_dir: &std::path::Path) -> Result<Connect, String> {
        let key: Vec<u8> = if cfg.token_key.is_empty() {
            let path = data_dir.join("connect.key");
            match std::fs::read(&path) {
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let k = random::<32>()?;
                    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    f.write_all(&k)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    k.to_vec()
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(cfg.token_key.trim())
                .map_err(|e| format!("connect.token_key: not base64: {e}"))?
        };
        if key.len() != 32 {
            return Err("connect.token_key: must be 32 bytes (base64)".into());
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Connect {
            cfg: cfg.clone(),
            cipher: XChaCha20Poly1305::new_from_slice(&key).map_err(|e| e.to_string())?,
            http,
        })
    }

    /// Whether accounts of `name` can be connected here.
    pub fn offers(&self, name: &str) -> bool {
        self.provider(name).is_ok()
    }

    fn provider(&self, name: &str) -> Result<&OAuthProvider, ApiError> {
        let p = match name {
            "google_drive" => &self.cfg.google_drive,
            "dropbox" => &self.cfg.dropbox,
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_provider",
                    "providers: google_drive, dropbox",
                ));
            }
        };
        if p.client_id.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "provider_not_configured",
                format!("{name} is not configured here (connect.{name}.client_id)"),
            ));
        }
        Ok(p)
    }

    fn seal(&self, user: &str, provider: &str, t: &Tokens) -> Result<String, ApiError> {
        let nonce = random::<24>().map_err(ApiError::internal)?;
        let plain = serde_json::to_vec(t).map_err(ApiError::internal)?;
        let aad = format!("{user}/{provider}");
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| ApiError::internal("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(B64.encode(out))
    }

    fn open_sealed(&self, user: &str, provider: &str, text: &str) -> Option<Tokens> {
        let raw = B64.decode(text).ok()?;
        if raw.len() < 24 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(24);
        let aad = format!("{user}/{provider}");
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// POST a form to the provider's token endpoint.
    async fn token_call(
        &self,
        p: &OAuthProvider,
        form: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().copied())
            .finish();
        let r = self
            .http
            .post(&p.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| {
                ApiError::unavailable("the provider's token endpoint is unreachable", 5)
            })?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() && v["access_token"].is_string() {
            return Ok(v);
        }
        if status.is_client_error() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "reconnect_required",
                format!(
                    "the provider refused the grant ({}); connect the account again",
                    v["error"].as_str().unwrap_or("error")
                ),
            ));
        }
        Err(bad_gateway(
            "provider_error",
            format!("the provider's token endpoint answered {status}"),
        ))
    }

    fn tokens_from(v: &Value, old_refresh: &str) -> Tokens {
        let expires_in = v["expires_in"].as_i64().unwrap_or(0);
        Tokens {
            access_token: v["access_token"].as_str().unwrap_or_default().to_string(),
            refresh_token: v["refresh_token"]
                .as_str()
                .unwrap_or(old_refresh)
                .to_string(),
            expires_at: if expires_in > 0 {
                now_ms() + expires_in * 1000
            } else {
                0
            },
        }
    }

    /// Save `t` for `user`'s `provider` account. `replacing`: only over that sealed value
    /// (a refresh: a concurrent refresh or a disconnect meanwhile wins, nothing is revived);
    /// `None`: a new connection, over whatever was there.
    async fn store(
        &self,
        p: &Picker,
        user: &str,
        provider: &str,
        t: &Tokens,
        replacing: Option<&str>,
    ) -> Result<(), ApiError> {
        let sealed = self.seal(user, provider, t)?;
        let pool = &p.meta.db().pool;
        match replacing {
            Some(old) => {
                sqlx::query(
                    "UPDATE connected_accounts SET sealed = $1, updated_at = $2
                     WHERE user_id = $3 AND provider = $4 AND sealed = $5",
                )
                .bind(&sealed)
                .bind(now_ms())
                .bind(user)
                .bind(provider)
                .bind(old)
                .execute(pool)
                .await
                .map_err(db_error)?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO connected_accounts (user_id, provider, sealed, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, provider)
                     DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
                )
                .bind(user)
                .bind(provider)
                .bind(&sealed)
                .bind(now_ms())
                .execute(pool)
                .await
                .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// A current access token for `user`'s `provider` account, refreshed if it is about
    /// to expire.
    pub async fn access_token(
        &self,
        p: &Picker,
        user: &str,
        provider: &str,
    ) -> Result<String, ApiError> {
        let prov = self.provider(provider)?;
        let row = sqlx::query(
            "SELECT sealed FROM connected_accounts WHERE user_id = $1 AND provider = $2",
        )
        .bind(user)
        .bind(provider)
        .fetch_optional(&p.meta.db().pool)
        .await
        .map_err(db_error)?;
        let not_connected = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_connected",
                format!(
                    "no {provider} account is connected: pass an access_token or connect one (GET /api/connect/{provider})"
                ),
            )
        };
        let Some(row) = row else {
            return Err(not_connected());
        };
        let sealed: String = row.try_get(0).map_err(db_error)?;
        let Some(t) = self.open_sealed(user, provider, &sealed) else {
            tracing::warn!(%provider, "a connected account's tokens cannot be opened (key changed?)");
            return Err(not_connected());
        };
        if t.expires_at == 0 || t.expires_at - REFRESH_MARGIN_MS > now_ms() {
            return Ok(t.access_token);
        }
        if t.refresh_token.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "reconnect_required",
                "the access token expired and there is no refresh token; connect again",
            ));
        }
        let v = self
            .token_call(
                prov,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &t.refresh_token),
                    ("client_id", &prov.client_id),
                    ("client_secret", &prov.client_secret),
                ],
            )
            .await?;
        let fresh = Self::tokens_from(&v, &t.refresh_token);
        self.store(p, user, provider, &fresh, Some(&sealed)).await?;
        metrics::counter!("picker_oauth_refreshes_total").increment(1);
        Ok(fresh.access_token)
    }

    fn callback_url(&self, h: &HeaderMap, provider: &str) -> String {
        let base = if self.cfg.public_url.is_empty() {
            let host = h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        } else {
            self.cfg.public_url.trim_end_matches('/').to_string()
        };
        format!("{base}/api/connect/{provider}/callback")
    }
}

/// `GET /api/connect`: the providers offered here and the accounts connected.
#[utoipa::path(get, path = "/api/connect", tag = "connect",
    responses((status = 200, description = "`providers` offered here, `accounts` connected"),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn accounts(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
) -> Result<Json<Value>, ApiError> {
    let rows = sqlx::query(
        "SELECT provider, updated_at FROM connected_accounts WHERE user_id = $1 ORDER BY provider",
    )
    .bind(&claims.sub)
    .fetch_all(&p.meta.db().pool)
    .await
    .map_err(db_error)?;
    let connected: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"provider": r.try_get::<String, _>(0).unwrap_or_default(),
                   "updated_at": fms_platform::logging::rfc3339_ms(r.try_get::<i64, _>(1).unwrap_or(0))})
        })
        .collect();
    let offered: Vec<&str> = ["google_drive", "dropbox"]
        .into_iter()
        .filter(|n| p.connect.offers(n))
        .collect();
    Ok(Json(json!({"providers": offered, "accounts": connected})))
}

/// `GET /api/connect/{provider}`: where to send the browser to connect an account.
#[utoipa::path(get, path = "/api/connect/{provider}", tag = "connect",
    params(("provider" = String, Path, description = "google_drive or dropbox")),
    responses((status = 200, description = "`authorize_url`: send the browser there; sets the `fms_connect` cookie the callback requires"),
        (status = 404, description = "unknown_provider", body = crate::openapi::ErrorBody),
        (status = 501, description = "provider_not_configured", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn authorize(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Path(provider): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let prov = p.connect.provider(&provider)?;
    let state = B64.encode(random::<24>().map_err(ApiError::internal)?);
    let verifier = B64.encode(random::<32>().map_err(ApiError::internal)?);
    let challenge = B64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let binding = B64.encode(random::<24>().map_err(ApiError::internal)?);
    let redirect_uri = p.connect.callback_url(&h, &provider);
    let now = now_ms();
    let pool = &p.meta.db().pool;
    sqlx::query(
        "DELETE FROM oauth_states WHERE created_at < $1 OR (user_id = $2 AND provider = $3)",
    )
    .bind(now - STATE_TTL_MS)
    .bind(&claims.sub)
    .bind(&provider)
    .execute(pool)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO oauth_states
             (state, user_id, provider, verifier, binding, redirect_uri, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&state)
    .bind(&claims.sub)
    .bind(&provider)
    .bind(&verifier)
    .bind(hex_sha256(&binding))
    .bind(&redirect_uri)
    .bind(now)
    .execute(pool)
    .await
    .map_err(db_error)?;
    let mut u = url::Url::parse(&prov.auth_url)
        .map_err(|e| ApiError::internal(format!("connect auth_url: {e}")))?;
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &prov.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if !prov.scope.is_empty() {
            q.append_pair("scope", &prov.scope);
        }
        if provider == "google_drive" {
            q.append_pair("access_type", "offline")
                .append_pair("prompt", "consent");
        } else {
            q.append_pair("token_access_type", "offline");
        }
    }
    // The browser that starts the authorization must be the one that finishes it.
    let secure = if p.connect.cfg.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={binding}; Path=/api/connect/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        STATE_TTL_MS / 1000
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(
            json!({"provider": provider, "authorize_url": u.as_str(), "expires_in": STATE_TTL_MS / 1000}),
        ),
    )
        .into_response())
}

/// The cookie binding an authorization to the browser that started it.
const COOKIE: &str = "fms_connect";

fn hex_sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cookie_value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /api/connect/{provider}/callback`: the provider sends the browser back here.
#[utoipa::path(get, path = "/api/connect/{provider}/callback", tag = "connect",
    params(("provider" = String, Path, description = "google_drive or dropbox"),
        ("code" = Option<String>, Query, description = "From the provider"),
        ("state" = Option<String>, Query, description = "From the provider"),
        ("error" = Option<String>, Query, description = "From the provider")),
    responses((status = 200, description = "Connected (a small page; 302 to connect.return_url when set)"),
        (status = 400, description = "bad_callback: unknown or used state, another browser (no matching `fms_connect` cookie), the provider's error", body = crate::openapi::ErrorBody),
        (status = 409, description = "reconnect_required: the provider refused the code", body = crate::openapi::ErrorBody)))]
pub(crate) async fn callback(
    State(p): State<Arc<Picker>>,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let prov = p.connect.provider(&provider)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_callback", m);
    if let Some(e) = &q.error {
        return Err(bad(&format!("the provider said: {e}")));
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        return Err(bad("code and state are required"));
    };
    // One use: taken out before anything else.
    let pool = &p.meta.db().pool;
    let row = sqlx::query(
        "SELECT user_id, provider, verifier, created_at, binding, redirect_uri
         FROM oauth_states WHERE state = $1",
    )
    .bind(state)
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    let taken = sqlx::query("DELETE FROM oauth_states WHERE state = $1")
        .bind(state)
        .execute(pool)
        .await
        .map_err(db_error)?;
    let Some(row) = row.filter(|_| taken.rows_affected() == 1) else {
        return Err(bad("unknown or used state"));
    };
    let user: String = row.try_get(0).map_err(db_error)?;
    let for_provider: String = row.try_get(1).map_err(db_error)?;
    let verifier: String = row.try_get(2).map_err(db_error)?;
    let created: i64 = row.try_get(3).map_err(db_error)?;
    let binding: String = row.try_get(4).map_err(db_error)?;
    let redirect_uri: String = row.try_get(5).map_err(db_error)?;
    if for_provider != provider || now_ms() - created > STATE_TTL_MS {
        return Err(bad("unknown or used state"));
    }
    if cookie_value(&h, COOKIE).map(hex_sha256).as_deref() != Some(binding.as_str()) {
        // Someone else's authorization link: the account must not be linked to its author.
        return Err(bad(
            "this browser did not start the connection; start it again from the app",
        ));
    }
    let v = p
        .connect
        .token_call(
            prov,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("client_id", &prov.client_id),
                ("client_secret", &prov.client_secret),
                ("code_verifier", &verifier),
            ],
        )
        .await?;
    p.connect
        .store(&p, &user, &provider, &Connect::tokens_from(&v, ""), None)
        .await?;
    tracing::info!(%provider, "account connected");
    if !p.connect.cfg.return_url.is_empty() {
        return Ok((
            StatusCode::FOUND,
            [(header::LOCATION, p.connect.cfg.return_url.clone())],
        )
            .into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Connected</title><p>Account connected. You can close this window.</p>",
    )
        .into_response())
}

/// `DELETE /api/connect/{provider}`: forget the account's tokens.
#[utoipa::path(delete, path = "/api/connect/{provider}", tag = "connect",
    params(("provider" = String, Path, description = "google_drive or dropbox")),
    responses((status = 204, description = "Disconnected"),
        (status = 404, description = "Not connected", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn disconnect(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Path(provider): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.connect.provider(&provider)?;
    let r = sqlx::query("DELETE FROM connected_accounts WHERE user_id = $1 AND provider = $2")
        .bind(&claims.sub)
        .bind(&provider)
        .execute(&p.meta.db().pool)
        .await
        .map_err(db_error)?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    /// Drive: a folder id (default `root`); Dropbox: a path (default the top).
    folder: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/connect/{provider}/list`: one page of a folder of the connected drive.
#[utoipa::path(get, path = "/api/connect/{provider}/list", tag = "connect",
    params(("provider" = String, Path, description = "google_drive or dropbox"),
        ("folder" = Option<String>, Query, description = "Drive folder id (default root) or Dropbox path"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "`items` (id, name, kind file|folder, size), `next_cursor`"),
        (status = 400, description = "not_connected", body = crate::openapi::ErrorBody),
        (status = 409, description = "reconnect_required", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(p): State<Arc<Picker>>,
    Authenticated(claims): Authenticated,
    Path(provider): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let token = p.connect.access_token(&p, &claims.sub, &provider).await?;
    let prov = p.connect.provider(&provider)?;
    let api = prov.api_url.trim_end_matches('/');
    let http = &p.connect.http;
    let answer = |r: Result<reqwest::Response, reqwest::Error>| async move {
        let r = r.map_err(|_| ApiError::unavailable("the provider is unreachable", 5))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        match status.as_u16() {
            200 => Ok(v),
            401 => Err(ApiError::new(
                StatusCode::CONFLICT,
                "reconnect_required",
                "the provider refused the token; connect again",
            )),
            404 | 409 => Err(ApiError::not_found()),
            s => Err(bad_gateway(
                "provider_error",
                format!("the provider answered {s}"),
            )),
        }
    };
    if provider == "google_drive" {
        let folder = q.folder.unwrap_or_else(|| "root".into());
        if !folder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || folder.len() > 256
        {
            return Err(ApiError::bad_request("folder: a Drive folder id"));
        }
        let mut u = url::Url::parse(&format!("{api}/drive/v3/files"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        u.query_pairs_mut()
            .append_pair("q", &format!("'{folder}' in parents and trashed = false"))
            .append_pair("fields", "nextPageToken,files(id,name,mimeType,size)")
            .append_pair("pageSize", "100")
            .append_pair("supportsAllDrives", "true")
            .append_pair("includeItemsFromAllDrives", "true");
        if let Some(c) = &q.cursor {
            u.query_pairs_mut().append_pair("pageToken", c);
        }
        let v = answer(http.get(u).bearer_auth(&token).send().await).await?;
        let items: Vec<Value> = v["files"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let mime = f["mimeType"].as_str().unwrap_or("");
                json!({
                    "id": f["id"], "name": f["name"], "mime_type": mime,
                    "kind": if mime == "application/vnd.google-apps.folder" { "folder" } else { "file" },
                    "size": f["size"].as_str().and_then(|s| s.parse::<u64>().ok()),
                })
            })
            .collect();
        return Ok(Json(
            json!({"items": items, "next_cursor": v["nextPageToken"]}),
        ));
    }
    let v = match &q.cursor {
        Some(c) => {
            answer(
                http.post(format!("{api}/2/files/list_folder/continue"))
                    .bearer_auth(&token)
                    .json(&json!({"cursor": c}))
                    .send()
                    .await,
            )
            .await?
        }
        None => {
            answer(
                http.post(format!("{api}/2/files/list_folder"))
                    .bearer_auth(&token)
                    .json(&json!({"path": q.folder.unwrap_or_default(), "limit": 100}))
                    .send()
                    .await,
            )
            .await?
        }
    };
    let items: Vec<Value> = v["entries"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            json!({
                "id": e["id"], "name": e["name"], "path": e["path_display"],
                "kind": if e[".tag"] == "folder" { "folder" } else { "file" },
                "size": e["size"],
            })
        })
        .collect();
    let next = if v["has_more"] == true {
        v["cursor"].clone()
    } else {
        Value::Null
    };
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
