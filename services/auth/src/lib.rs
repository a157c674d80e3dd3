//! # fms-auth
//!
//! The auth service's core. Today: access tokens ([`tokens`]) — EdDSA-signed JWTs, strict
//! verification, key rotation, JWKS. Accounts, passwords (argon2id), refresh tokens, the REST
//! endpoints and their storage back ends build on it (see the platform/auth issue).

pub mod tokens;

pub use tokens::{Claims, TokenError, TokenService};
