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

use crate::units::Duration;

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data_dir: default_data_dir(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
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
        Ok(())
    }

    /// The effective configuration as TOML (what `fms config print` shows).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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
    }
}
