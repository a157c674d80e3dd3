//! # fms-platform
//!
//! What every fms service shares, so all of them behave and look the same to operators:
//! [`config`] (TOML file + `FMS_*` environment, validated), [`logging`] (Elastic Common
//! Schema JSON or pretty), [`metrics`] (Prometheus), [`http`] (request ids, per-endpoint
//! metrics, `/healthz`, `/readyz`, `/metrics`, graceful shutdown) and [`error`] (the one
//! mapping of failures to `{"error": {"code", "message"}}`).
//!
//! It holds no service logic: services build their routes and hand them to [`http::app`].

pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod range;
pub mod units;

pub use config::Config;
pub use error::{ApiError, ApiJson};
