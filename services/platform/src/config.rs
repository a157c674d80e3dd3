//! Configuration: one TOML file for every service, `FMS_*` environment variables on top,
//! validated into typed values. Only `main` reads files and the environment; libraries get
//! a [`Config`].
//!
//! Environment names map onto keys: `FMS_LISTEN` -> `listen`, `FMS_DATA_DIR` -> `data_dir`,
//! `FMS_LOG__FORMAT` -> `log.format` (a double underscore enters a section). Variables that
//! name no configuration key (`FMS_IO`, test knobs) are left alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// Settings shared by every fms process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public HTTP API (every user-facing route under `fms serve`).
    pub listen: SocketAddr,
    /// Address of the public gRPC API.
    pub grpc_listen: SocketAddr,
    /// Where the store and the embedded databases live.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Shutting down on SIGTERM / SIGINT.
    pub shutdown: ShutdownConfig,
    /// The relational database (users, file metadata, grants).
    pub database: DatabaseConfig,
    /// Redis (revocations, rate limits, caches, event fan-out). Empty URL: in-process.
    pub redis: RedisConfig,
    /// The auth service, and how every service verifies tokens.
    pub auth: AuthConfig,
    /// The permission service.
    pub permission: PermissionConfig,
    /// The picker: uploads, downloads, file metadata.
    pub picker: PickerConfig,
    /// The notification service: events over WebSocket.
    pub notification: NotificationConfig,
    /// The downloader: imports from URLs and cloud drives.
    pub downloader: DownloaderConfig,
    /// Connected cloud accounts (OAuth 2.0 for Google Drive and Dropbox), kept by the picker.
    pub connect: ConnectConfig,
    /// The transformer: image transforms.
    pub transformer: TransformerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data_dir: default_data_dir(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            permission: PermissionConfig::default(),
            picker: PickerConfig::default(),
            notification: NotificationConfig::default(),
            downloader: DownloaderConfig::default(),
            connect: ConnectConfig::default(),
            transformer: TransformerConfig::default(),
        }
    }
}

/// Transformer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Largest source accepted (images are decoded whole).
    pub max_input: ByteSize,
    /// Largest width x height, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_side: u32,
    /// Transforms at once in this process (0: one per core); more are refused at once.
    pub concurrency: u32,
    /// Longest an image or OCR transform may compute (the call fails then; its thread
    /// finishes in the background, holding its slot).
    pub timeout: Duration,
    /// Most bytes one `decompress` may produce.
    pub max_output: ByteSize,
    /// Most bytes one `decompress` may produce per compressed byte read (counted from 64 KiB):
    /// stops decompression bombs early.
    pub max_ratio: u64,
    /// Directory of tesseract's `.traineddata` files (empty: tesseract's default).
    pub tessdata: String,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            max_input: ByteSize(64 << 20),
            max_pixels: 50_000_000,
            max_side: 30_000,
            concurrency: 0,
            timeout: Duration(std::time::Duration::from_secs(60)),
            max_output: ByteSize(5 << 30),
            max_ratio: 1000,
            tessdata: String::new(),
        }
    }
}

/// Connected accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectConfig {
    /// This API's base URL as browsers reach it (`https://files.example.com`): OAuth
    /// callbacks go to `<public_url>/api/connect/<provider>/callback`. Empty: the address
    /// the request came in on.
    pub public_url: String,
    /// Where the browser goes after a successful connection (empty: a small page saying so).
    pub return_url: String,
    /// Key sealing stored tokens (base64 of 32 bytes; every replica needs the same). Empty:
    /// `<data_dir>/connect.key`, created on first use (embedded, one process).
    pub token_key: String,
    pub google_drive: OAuthProvider,
    pub dropbox: OAuthProvider,
}

/// One OAuth 2.0 provider. Empty `client_id`: not offered.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthProvider {
    pub client_id: String,
    pub client_secret: String,
    pub auth_url: String,
    pub token_url: String,
    /// API base for browsing (`/drive/v3/files`, `/2/files/list_folder`).
    pub api_url: String,
    pub scope: String,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            public_url: String::new(),
            return_url: String::new(),
            token_key: String::new(),
            google_drive: OAuthProvider {
                auth_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
                token_url: "https://oauth2.googleapis.com/token".into(),
                api_url: "https://www.googleapis.com".into(),
                scope: "https://www.googleapis.com/auth/drive.readonly".into(),
                ..OAuthProvider::default()
            },
            dropbox: OAuthProvider {
                auth_url: "https://www.dropbox.com/oauth2/authorize".into(),
                token_url: "https://api.dropboxapi.com/oauth2/token".into(),
                api_url: "https://api.dropboxapi.com".into(),
                scope: "files.metadata.read files.content.read".into(),
                ..OAuthProvider::default()
            },
        }
    }
}

/// Downloader settings (imports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloaderConfig {
    /// gRPC address of the picker's internal API, where imported bytes are written
    /// (`http://picker:9090`); empty under `fms serve` (its own).
    pub picker_url: String,
    /// Addresses and networks a fetch may reach although they are refused by default
    /// (loopback, private, link-local...): `["10.1.0.0/16", "127.0.0.1"]`. Empty: none.
    pub allow: Vec<String>,
    /// Largest file imported; a source that sends more is cut off and nothing is stored.
    pub max_size: ByteSize,
    /// Longest an import may take, retries included.
    pub timeout: Duration,
    /// A source that sends nothing for this long is dropped (and retried).
    pub idle_timeout: Duration,
    /// Connection attempts per import after the first (connection errors, 5xx, 429,
    /// a body cut short: resumed with `Range` where the source allows).
    pub retries: u32,
    /// Imports running at once in this process, and per user.
    pub max_concurrent: u32,
    pub max_per_user: u32,
    /// Google's API base (Drive v3 under `/drive/v3`); tests point it at a local server.
    pub google_api_url: String,
    /// Dropbox's content API base (`/2/files/download`).
    pub dropbox_content_url: String,
}

impl Default for DownloaderConfig {
    fn default() -> Self {
        DownloaderConfig {
            picker_url: String::new(),
            allow: Vec::new(),
            max_size: ByteSize(5 << 30),
            timeout: Duration(std::time::Duration::from_secs(3600)),
            idle_timeout: Duration(std::time::Duration::from_secs(30)),
            retries: 8,
            max_concurrent: 64,
            max_per_user: 4,
            google_api_url: "https://www.googleapis.com".into(),
            dropbox_content_url: "https://content.dropboxapi.com".into(),
        }
    }
}

/// Notification service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationConfig {
    /// Browser origins allowed to open `/ws` (`https://app.example.com`; `*` for any).
    /// Upgrades without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// How long each user's events are kept for clients that reconnect.
    pub retention: Duration,
    /// Events queued for one socket; a client that falls this far behind is disconnected.
    pub send_queue: u32,
    /// Open sockets per user, and in all.
    pub max_connections_per_user: u32,
    pub max_connections: u32,
    /// Ping interval; a socket silent for three intervals is closed.
    pub heartbeat: Duration,
    /// The permission service's gRPC address (`fms notification` only; `fms serve` asks
    /// the one in its process): events published with `recheck_subject` are delivered only
    /// to users who may still read their subject.
    pub permission_url: String,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        NotificationConfig {
            allowed_origins: Vec::new(),
            retention: Duration(std::time::Duration::from_secs(7 * 86400)),
            send_queue: 1024,
            max_connections_per_user: 32,
            max_connections: 20_000,
            heartbeat: Duration(std::time::Duration::from_secs(20)),
            permission_url: String::new(),
        }
    }
}

/// Picker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PickerConfig {
    /// Largest file accepted (413 beyond it).
    pub max_file_size: ByteSize,
    /// Bytes each user may own, counted by file size whatever dedup saves (0: no quota).
    pub quota: ByteSize,
    /// An upload that sends nothing for this long is cut off (408); so is a download whose
    /// client takes nothing for this long.
    pub idle_timeout: Duration,
    /// gRPC address of the permission service (`http://permission:9090`); empty when it
    /// runs in this process (`fms serve`).
    pub permission_url: String,
    /// gRPC address of the notification service (`http://notification:9090`) for
    /// `file.uploaded` / `file.shared` / `file.deleted`; empty: events are dropped (counted).
    pub notification_url: String,
    /// Reconciliation removes only leftovers older than this (uploads in flight are younger).
    pub reconcile_grace: Duration,
    /// How often the chunk store is garbage-collected (expired upload sessions, packs
    /// with much dead data compacted); 0s: never (run `fms admin gc`).
    pub gc_interval: Duration,
    /// How often the chunk store's totals (`engine_*` gauges: files, logical and stored
    /// bytes, dedup ratio) are recomputed — a scan of the index on a blocking thread, about
    /// 1 s per few million chunks; 0s: never.
    pub stats_interval: Duration,
    /// A resumable (tus) upload not completed within this of its creation expires: 410,
    /// its bytes reclaimed (`Upload-Expires` says when).
    pub upload_expiry: Duration,
    /// Browser origins allowed to call the API from another origin (CORS), e.g.
    /// `["https://app.example.com"]`; `["*"]`: any; empty: none.
    pub cors_origins: Vec<String>,
    /// gRPC address of the downloader (`http://downloader:9090`) for imports; empty under
    /// `fms serve` (its own); empty elsewhere: imports answer 503.
    pub downloader_url: String,
    /// gRPC address of the transformer (`http://transformer:9090`); empty under `fms serve`
    /// (its own); empty elsewhere: transforms answer 503.
    pub transformer_url: String,
    /// Longest one transform may take (the call to the transformer), source read to result
    /// stored.
    pub transform_timeout: Duration,
    /// Transform results kept for reuse, at most (least recently used dropped first; users'
    /// result files are not part of it).
    pub transform_cache_max: ByteSize,
    /// Transform jobs of one user running at once in this picker (more wait `queued`), so
    /// one user's batch cannot take every transformer slot.
    pub transform_jobs_per_user: u32,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            max_file_size: ByteSize(5 << 30),
            quota: ByteSize(10 << 30),
            idle_timeout: Duration(std::time::Duration::from_secs(30)),
            permission_url: String::new(),
            notification_url: String::new(),
            gc_interval: Duration(std::time::Duration::from_secs(600)),
            stats_interval: Duration(std::time::Duration::from_secs(30)),
            reconcile_grace: Duration(std::time::Duration::from_secs(600)),
            upload_expiry: Duration(std::time::Duration::from_secs(24 * 3600)),
            cors_origins: Vec::new(),
            downloader_url: String::new(),
            transformer_url: String::new(),
            transform_timeout: Duration(std::time::Duration::from_secs(120)),
            transform_cache_max: ByteSize(10 << 30),
            transform_jobs_per_user: 1,
        }
    }
}

/// Permission settings. See `docs/design/permissions.md` for how the cache, the change log
/// and the lease keep revocations immediate across replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionConfig {
    /// Decisions kept in each process's cache (0: no cache, every check reads the database).
    pub cache_entries: u64,
    /// How often each process reads the change log to invalidate its cache.
    pub sync_interval: Duration,
    /// With PostgreSQL (several replicas): a process answers from its cache only while its
    /// last read of the change log started less than this long ago, and a call that removes
    /// rights returns only after this long. Longer survives slower database reads without
    /// falling back to uncached checks; shorter makes revocations return sooner.
    pub lease: Duration,
    /// Most grants plus revokes in one `UpdatePermission` call.
    pub max_changes_per_call: u32,
}

impl Default for PermissionConfig {
    fn default() -> Self {
        PermissionConfig {
            cache_entries: 1_000_000,
            sync_interval: Duration(std::time::Duration::from_millis(25)),
            lease: Duration(std::time::Duration::from_millis(250)),
            max_changes_per_call: 1000,
        }
    }
}

/// Database settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host:port/db`, or empty for the embedded database file
    /// (`<data_dir>/fms.db`, SQLite).
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            max_connections: 16,
        }
    }
}

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or empty to keep revocations, rate limits and caches in the
    /// process (only right when one process serves everything, as `fms serve` does).
    pub url: String,
    /// Prefix of every key fms writes (lets deployments share one Redis).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            key_prefix: "fms:".into(),
        }
    }
}

/// Auth settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// Lifetime of a refresh-token family (rotation does not extend it).
    pub refresh_ttl: Duration,
    /// Start signing with a new key this often (0s: never). Old keys stay published until
    /// every token they signed has expired.
    pub key_rotation: Duration,
    /// Where services in other processes fetch the JWKS
    /// (`http://auth:8080/.well-known/jwks.json`); empty when auth runs in this process.
    pub jwks_url: String,
    /// Largest JSON body accepted by the auth endpoints.
    pub max_body: ByteSize,
    /// Trust this many `X-Forwarded-For` hops for the client address (0: the socket peer).
    pub trusted_proxy_hops: u32,
    /// Password hashing.
    pub argon2: Argon2Config,
    /// Login throttling.
    pub rate_limit: RateLimitConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "fms".into(),
            audience: "fms".into(),
            access_ttl: Duration(std::time::Duration::from_secs(15 * 60)),
            refresh_ttl: Duration(std::time::Duration::from_secs(30 * 86400)),
            key_rotation: Duration(std::time::Duration::from_secs(7 * 86400)),
            jwks_url: String::new(),
            max_body: ByteSize(16 * 1024),
            trusted_proxy_hops: 0,
            argon2: Argon2Config::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// argon2id parameters (defaults: OWASP's m = 19 MiB, t = 2, p = 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory per hash in KiB (at least 19456).
    pub memory_kib: u32,
    /// Passes (at least 2).
    pub iterations: u32,
    /// Lanes (at least 1).
    pub parallelism: u32,
    /// Hashes computed at once; the rest wait. Bounds memory under login storms
    /// (0: one per CPU).
    pub max_concurrent: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
        }
    }
}

/// Login throttling: failed attempts counted in a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Window over which failures count.
    pub window: Duration,
    /// Failures allowed for one account from one client address.
    pub per_account_address: u32,
    /// Failures allowed for one account from all addresses together; beyond it, only
    /// addresses that have not failed for the account may still try (the real user gets in).
    pub per_account: u32,
    /// Failures allowed from one client address across all accounts.
    pub per_address: u32,
    /// Registrations (successful or not) allowed from one client address.
    pub register_per_address: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            window: Duration(std::time::Duration::from_secs(15 * 60)),
            per_account_address: 5,
            per_account: 50,
            per_address: 100,
            register_per_address: 20,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (Elastic Common Schema, one object per line), `pretty`, or `auto`: pretty on a
    /// terminal, JSON otherwise.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `warn,fms_engine=debug`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// Shutdown settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM before they are cut off.
    /// Keep it below the orchestrator's termination grace period.
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration(std::time::Duration::from_secs(25)),
        }
    }
}

/// `$XDG_DATA_HOME/fms`, else `~/.local/share/fms`, else `./.fms-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("fms");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/fms"),
        None => PathBuf::from(".fms-data"),
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key has a bad value (or does not exist); `origin` says where it was set.
    #[error("invalid configuration: {key} (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

impl Config {
    /// Defaults, then `file` (if any), then `FMS_*` variables from `env`, then validation.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let mut sources: HashMap<String, String> = HashMap::new();
        let file_label = file.map(|p| format!("config file {}", p.display()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        let defaults = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("FMS_") else {
                continue;
            };
            let path: Vec<String> = rest
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_string)
                .collect();
            if !path.first().is_some_and(|k| defaults.contains_key(k)) {
                continue;
            }
            set_path(&mut table, &defaults, &path, env_value(&value)).map_err(|message| {
                ConfigError::Invalid {
                    key: path.join("."),
                    origin: name.clone(),
                    message,
                }
            })?;
            sources.insert(path.join("."), name);
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let origin = sources
                    .get(&key)
                    .cloned()
                    .or_else(|| file_label.clone())
                    .unwrap_or_else(|| "defaults".into());
                ConfigError::Invalid {
                    key,
                    origin,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate(&sources, file_label.as_deref())?;
        Ok(config)
    }

    fn validate(
        &self,
        sources: &HashMap<String, String>,
        file: Option<&str>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            origin: sources
                .get(key)
                .cloned()
                .or_else(|| file.map(str::to_string))
                .unwrap_or_else(|| "defaults".into()),
            message,
        };
        if self.listen == self.grpc_listen && self.listen.port() != 0 {
            return Err(invalid("grpc_listen", "must differ from listen".into()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        if self.shutdown.grace.0 > std::time::Duration::from_secs(3600) {
            return Err(invalid("shutdown.grace", "must be at most 1h".into()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        let url = &self.database.url;
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(invalid(
                "database.url",
                "must be a postgres:// URL, or empty for the embedded database".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid(
                "database.max_connections",
                "must be at least 1".into(),
            ));
        }
        let url = &self.redis.url;
        if !url.is_empty() && !url.starts_with("redis://") && !url.starts_with("unix://") {
            return Err(invalid(
                "redis.url",
                "must be a redis:// or unix:// URL (TLS to Redis is left to the mesh), or empty for in-process state".into(),
            ));
        }
        if self.picker.max_file_size.0 == 0 {
            return Err(invalid(
                "picker.max_file_size",
                "must be at least 1B".into(),
            ));
        }
        if self.picker.reconcile_grace.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "picker.reconcile_grace",
                "must be at least 1s (uploads in flight must never look like leftovers)".into(),
            ));
        }
        if self.picker.transform_timeout.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "picker.transform_timeout",
                "must be at least 1s".into(),
            ));
        }
        let idle = self.picker.idle_timeout.0;
        if idle < std::time::Duration::from_secs(1) || idle > std::time::Duration::from_secs(3600) {
            return Err(invalid(
                "picker.idle_timeout",
                "must be between 1s and 1h".into(),
            ));
        }
        for (key, u) in [
            ("picker.permission_url", &self.picker.permission_url),
            ("picker.notification_url", &self.picker.notification_url),
            ("picker.downloader_url", &self.picker.downloader_url),
            ("picker.transformer_url", &self.picker.transformer_url),
            ("downloader.picker_url", &self.downloader.picker_url),
            ("downloader.google_api_url", &self.downloader.google_api_url),
            (
                "downloader.dropbox_content_url",
                &self.downloader.dropbox_content_url,
            ),
            (
                "notification.permission_url",
                &self.notification.permission_url,
            ),
        ] {
            if !u.is_empty() && !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(invalid(
                    key,
                    "must be an http(s):// gRPC address or empty".into(),
                ));
            }
        }
        let d = &self.downloader;
        if d.max_size.0 == 0 {
            return Err(invalid("downloader.max_size", "must be above 0".into()));
        }
        if d.idle_timeout.0 < std::time::Duration::from_secs(1) || d.timeout.0 < d.idle_timeout.0 {
            return Err(invalid(
                "downloader.timeout",
                "idle_timeout must be at least 1s and timeout at least idle_timeout".into(),
            ));
        }
        if d.max_concurrent == 0 || d.max_per_user == 0 || d.retries > 100 {
            return Err(invalid(
                "downloader.max_concurrent",
                "max_concurrent and max_per_user must be above 0, retries at most 100".into(),
            ));
        }
        let p = &self.permission;
        if p.sync_interval.0 < std::time::Duration::from_millis(1)
            || p.sync_interval.0 > std::time::Duration::from_secs(10)
        {
            return Err(invalid(
                "permission.sync_interval",
                "must be between 1ms and 10s".into(),
            ));
        }
        if p.lease.0 < p.sync_interval.0 * 2 || p.lease.0 > std::time::Duration::from_secs(60) {
            return Err(invalid(
                "permission.lease",
                "must be at least twice permission.sync_interval and at most 1m".into(),
            ));
        }
        if !(1..=100_000).contains(&p.max_changes_per_call) {
            return Err(invalid(
                "permission.max_changes_per_call",
                "must be between 1 and 100000".into(),
            ));
        }
        let a = &self.auth;
        if a.issuer.is_empty() {
            return Err(invalid("auth.issuer", "must not be empty".into()));
        }
        if a.audience.is_empty() {
            return Err(invalid("auth.audience", "must not be empty".into()));
        }
        let ttl = a.access_ttl.0.as_secs();
        if !(60..=86400).contains(&ttl) {
            return Err(invalid(
                "auth.access_ttl",
                "must be between 1m and 24h".into(),
            ));
        }
        if a.refresh_ttl.0 < a.access_ttl.0 {
            return Err(invalid(
                "auth.refresh_ttl",
                "must be at least auth.access_ttl".into(),
            ));
        }
        if !a.key_rotation.0.is_zero() && a.key_rotation.0 < a.access_ttl.0 {
            return Err(invalid(
                "auth.key_rotation",
                "must be 0s (never) or at least auth.access_ttl".into(),
            ));
        }
        if !a.jwks_url.is_empty()
            && !a.jwks_url.starts_with("http://")
            && !a.jwks_url.starts_with("https://")
        {
            return Err(invalid(
                "auth.jwks_url",
                "must be an http(s) URL or empty".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&a.max_body.0) {
            return Err(invalid(
                "auth.max_body",
                "must be between 1KiB and 1MiB".into(),
            ));
        }
        let g = &a.argon2;
        if g.memory_kib < 19 * 1024 || g.memory_kib > 1024 * 1024 {
            return Err(invalid(
                "auth.argon2.memory_kib",
                "must be between 19456 (OWASP minimum) and 1048576".into(),
            ));
        }
        if !(2..=32).contains(&g.iterations) {
            return Err(invalid(
                "auth.argon2.iterations",
                "must be between 2 and 32".into(),
            ));
        }
        if !(1..=16).contains(&g.parallelism) {
            return Err(invalid(
                "auth.argon2.parallelism",
                "must be between 1 and 16".into(),
            ));
        }
        if g.max_concurrent > 1024 {
            return Err(invalid(
                "auth.argon2.max_concurrent",
                "must be at most 1024".into(),
            ));
        }
        let r = &a.rate_limit;
        if r.window.0.as_secs() == 0 {
            return Err(invalid(
                "auth.rate_limit.window",
                "must be at least 1s".into(),
            ));
        }
        for (key, v) in [
            ("auth.rate_limit.per_account_address", r.per_account_address),
            ("auth.rate_limit.per_account", r.per_account),
            ("auth.rate_limit.per_address", r.per_address),
            (
                "auth.rate_limit.register_per_address",
                r.register_per_address,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `fms config print` shows).
    pub fn to_toml(&self) -> String {
        // Secrets are shown as set or not, never printed.
        let mut shown = self.clone();
        for secret in [
            &mut shown.connect.token_key,
            &mut shown.connect.google_drive.client_secret,
            &mut shown.connect.dropbox.client_secret,
        ] {
            if !secret.is_empty() {
                *secret = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// An environment string as a TOML value: integers and booleans as such, the rest as text.
fn env_value(v: &str) -> toml::Value {
    if let Ok(n) = v.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(v.to_string()),
    }
}

fn env_list(s: &str) -> Result<toml::Value, String> {
    let s = s.trim();
    if s.starts_with('[') {
        return format!("v = {s}")
            .parse::<toml::Table>()
            .map_err(|e| format!("not a TOML array: {e}"))?
            .remove("v")
            .ok_or_else(|| "not a TOML array".to_string());
    }
    Ok(toml::Value::Array(
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| toml::Value::String(x.to_string()))
            .collect(),
    ))
}

fn set_path(
    table: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut d = Some(defaults);
    for p in parents {
        d = d.and_then(|t| t.get(p)).and_then(|v| v.as_table());
    }
    if matches!(d.and_then(|t| t.get(last)), Some(toml::Value::Table(_))) {
        return Err(format!(
            "{last} is a section; set one of its keys (with a double underscore)"
        ));
    }
    // Lists from the environment: a TOML array (`["a", "b"]`) or comma-separated (`a,b`).
    let value = match (d.and_then(|t| t.get(last)), value) {
        (Some(toml::Value::Array(_)), toml::Value::String(s)) => env_list(&s)?,
        (_, v) => v,
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("{p} is not a section")),
        };
    }
    if matches!(t.get(last), Some(toml::Value::Table(_))) {
        return Err(format!(
            "{last} is a section; set one of its keys (with a double underscore)"
        ));
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fms.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\n[log]\nformat = \"pretty\"\n[shutdown]\ngrace = \"5s\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("FMS_LISTEN", "127.0.0.1:7001"),
                ("FMS_LOG__LEVEL", "debug"),
                ("FMS_IO", "std"),
                ("HOME", "/x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7001, "environment wins over the file");
        assert_eq!(c.log.format, LogFormat::Pretty);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.shutdown.grace.0.as_secs(), 5);
        assert_eq!(c.grpc_listen.port(), 9090);
        // What `config print` shows loads back to the same configuration.
        let again = dir.path().join("again.toml");
        std::fs::write(&again, c.to_toml()).unwrap();
        assert_eq!(Config::load(Some(&again), Vec::new()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_key_and_where_it_was_set() {
        let err = Config::load(None, env(&[("FMS_LOG__FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.format") && err.contains("FMS_LOG__FORMAT") && err.contains("xml"),
            "{err}"
        );
        let err = Config::load(None, env(&[("FMS_SHUTDOWN__GRACE", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shutdown.grace") && err.contains("FMS_SHUTDOWN__GRACE"),
            "{err}"
        );
        let err = Config::load(None, env(&[("FMS_LISTEN", "not-an-address")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen") && err.contains("FMS_LISTEN"),
            "{err}"
        );
        let err = Config::load(None, env(&[("FMS_LOG", "info")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("section"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fms.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen") && err.contains("fms.toml"), "{err}");
        std::fs::write(&file, "listen = \n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), Vec::new()),
            Err(ConfigError::Parse { .. })
        ));
        let err = Config::load(None, env(&[("FMS_GRPC_LISTEN", "127.0.0.1:8080")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("grpc_listen") && err.contains("differ"),
            "{err}"
        );
        let err = Config::load(None, env(&[("FMS_LOG__LEVEL", "info,[[[")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{err}");
        for (var, value, key) in [
            (
                "FMS_AUTH__ARGON2__MEMORY_KIB",
                "1024",
                "auth.argon2.memory_kib",
            ),
            (
                "FMS_AUTH__ARGON2__ITERATIONS",
                "1",
                "auth.argon2.iterations",
            ),
            ("FMS_AUTH__ACCESS_TTL", "10s", "auth.access_ttl"),
            (
                "FMS_AUTH__RATE_LIMIT__PER_ACCOUNT",
                "0",
                "auth.rate_limit.per_account",
            ),
            ("FMS_DATABASE__URL", "mysql://x", "database.url"),
            ("FMS_REDIS__URL", "http://x", "redis.url"),
            ("FMS_AUTH__JWKS_URL", "ftp://x", "auth.jwks_url"),
            ("FMS_AUTH__MAX_BODY", "lots", "auth.max_body"),
        ] {
            let err = Config::load(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(var), "{var}: {err}");
        }
        let c = Config::load(
            None,
            env(&[
                ("FMS_AUTH__ARGON2__MEMORY_KIB", "65536"),
                ("FMS_DATABASE__URL", "postgres://fms@db/fms"),
                ("FMS_AUTH__KEY_ROTATION", "0s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.argon2.memory_kib, 65536);
        for list in [r#"["10.0.0.0/8", "127.0.0.1"]"#, "10.0.0.0/8, 127.0.0.1"] {
            let c = Config::load(None, env(&[("FMS_DOWNLOADER__ALLOW", list)])).unwrap();
            assert_eq!(c.downloader.allow, ["10.0.0.0/8", "127.0.0.1"]);
        }
        let secret = Config::load(
            None,
            env(&[
                ("FMS_CONNECT__TOKEN_KEY", "c2VjcmV0LWtleS1tYXRlcmlhbA=="),
                ("FMS_CONNECT__DROPBOX__CLIENT_SECRET", "dbx-client-secret"),
            ]),
        )
        .unwrap();
        let shown = secret.to_toml();
        assert!(!shown.contains("c2VjcmV0") && !shown.contains("dbx-client-secret"));
        assert!(shown.contains("<redacted>"));
        let err = Config::load(None, env(&[("FMS_DOWNLOADER__ALLOW", "[1, ")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("downloader.allow"), "{err}");
        assert_eq!(c.database.url, "postgres://fms@db/fms");
        assert!(c.auth.key_rotation.0.is_zero());
    }
}
