//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`), published as a JWKS so every
//! service and the mesh verify them locally.
//!
//! Verification is deliberately narrow (RELIABILITY.md test 19): only `EdDSA`; a `kid` that
//! names one of our keys is required; headers that point elsewhere for keys (`jku`, `x5u`,
//! `jwk`, `x5c`) are refused; `iss`, `aud`, `exp`, `nbf` are checked with an explicit 30 s
//! leeway; only tokens typed `access` are accepted; oversized tokens are refused before parsing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted for verification; real ones are ~300 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp` / `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Claims of an fms access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Token id, the handle for revocation.
    pub jti: String,
    /// `access` (refresh tokens are opaque and never JWTs, but the type is checked anyway).
    pub typ: String,
}

/// Why a token was refused. Callers answer every variant with the same 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("token names a key location or embeds a key")]
    ForeignKey,
    #[error("unknown key id")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("not an access token")]
    WrongType,
}

/// One signing key: its id, private key, public key.
struct KeyPair {
    kid: String,
    encoding: EncodingKey,
    public: [u8; 32],
    created: u64,
}

impl KeyPair {
    fn generate(now: u64) -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
        KeyPair::from_seed(seed, now)
    }

    fn from_seed(seed: [u8; 32], created: u64) -> Result<Self, String> {
        let sk = SigningKey::from_bytes(&seed);
        let der = sk.to_pkcs8_der().map_err(|e| format!("encode key: {e}"))?;
        let public = sk.verifying_key().to_bytes();
        // The key id is derived from the public key: stable, and unique per key.
        let kid = URL_SAFE_NO_PAD.encode(&public[..12]);
        Ok(KeyPair {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public,
            created,
        })
    }
}

/// A public key still accepted for verification, until `retire_after`.
struct Retired {
    kid: String,
    public: [u8; 32],
    retire_after: u64,
}

/// Issues and verifies access tokens; rotates keys without logging anyone out.
pub struct TokenService {
    issuer: String,
    audience: String,
    ttl: Duration,
    current: KeyPair,
    retired: Vec<Retired>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("kid", &self.current.kid)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenService {
    /// A service with a fresh signing key.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, String> {
        Ok(TokenService {
            issuer: issuer.into(),
            audience: audience.into(),
            ttl,
            current: KeyPair::generate(now_secs())?,
            retired: Vec::new(),
        })
    }

    /// The id of the key new tokens are signed with.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// Lifetime of access tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sign a new access token for `sub`. Returns the token and its claims.
    pub fn issue(&self, sub: &str) -> Result<(String, Claims), String> {
        self.issue_at(sub, now_secs())
    }

    fn issue_at(&self, sub: &str, now: u64) -> Result<(String, Claims), String> {
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| format!("no randomness: {e}"))?;
        let claims = Claims {
            sub: sub.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: URL_SAFE_NO_PAD.encode(jti),
            typ: "access".into(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.current.encoding)
            .map_err(|e| format!("sign: {e}"))?;
        Ok((token, claims))
    }

    /// Start signing with a new key. The old key stays valid for verification until every
    /// token it signed has expired, so nobody is logged out.
    pub fn rotate(&mut self) -> Result<(), String> {
        let now = now_secs();
        let next = KeyPair::generate(now)?;
        let old = std::mem::replace(&mut self.current, next);
        self.retired.push(Retired {
            kid: old.kid,
            public: old.public,
            retire_after: now + self.ttl.as_secs() + LEEWAY_SECS,
        });
        self.retired.retain(|r| r.retire_after > now);
        Ok(())
    }

    fn public_key(&self, kid: &str) -> Option<[u8; 32]> {
        if kid == self.current.kid {
            return Some(self.current.public);
        }
        let now = now_secs();
        self.retired
            .iter()
            .find(|r| r.kid == kid && r.retire_after > now)
            .map(|r| r.public)
    }

    /// Check a token completely; the claims if it is a valid access token of ours.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
        {
            return Err(TokenError::ForeignKey);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let public = self.public_key(&kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(&public), &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.typ != "access" {
            return Err(TokenError::WrongType);
        }
        Ok(data.claims)
    }

    /// The JWKS document (`/.well-known/jwks.json`): every key a valid token may be signed by.
    pub fn jwks(&self) -> serde_json::Value {
        let now = now_secs();
        let key = |kid: &str, public: &[u8; 32]| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "kid": kid, "x": URL_SAFE_NO_PAD.encode(public),
            })
        };
        let mut keys = vec![key(&self.current.kid, &self.current.public)];
        keys.extend(
            self.retired
                .iter()
                .filter(|r| r.retire_after > now)
                .map(|r| key(&r.kid, &r.public)),
        );
        serde_json::json!({ "keys": keys })
    }

    /// When the current key was made (seconds since the epoch), for rotation schedules.
    pub fn current_created(&self) -> u64 {
        self.current.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new("https://fms.test", "fms", Duration::from_secs(900)).unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// A token with arbitrary header and claims, signed by `sign` over "header.claims".
    fn forge(
        header: serde_json::Value,
        claims: &serde_json::Value,
        sign: impl Fn(&[u8]) -> Vec<u8>,
    ) -> String {
        let input = format!("{}.{}", b64(&header), b64(claims));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn claims_json(s: &TokenService, sub: &str) -> serde_json::Value {
        let (_, c) = s.issue(sub).unwrap();
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_claims() {
        let s = service();
        let (token, claims) = s.issue("user-1").unwrap();
        let back = s.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.exp - back.iat, 900);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(s.current_kid()));
        assert_ne!(
            s.issue("user-1").unwrap().1.jti,
            claims.jti,
            "every token has its own jti"
        );
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let s = service();
        let kid = s.current_kid().to_string();
        let good = claims_json(&s, "u");
        let sign_ours = |input: &[u8]| {
            let (t, _) = s.issue("u").unwrap();
            // Reuse a real signature on other content: must not verify.
            let _ = input;
            URL_SAFE_NO_PAD
                .decode(t.rsplit('.').next().unwrap())
                .unwrap()
        };
        // alg: none, with and without a signature.
        let none = forge(
            serde_json::json!({"alg": "none", "kid": kid}),
            &good,
            |_| Vec::new(),
        );
        assert_eq!(
            s.verify(&none),
            Err(TokenError::Malformed).or(s.verify(&none))
        );
        assert!(s.verify(&none).is_err());
        // HS256 keyed with our public key (the classic algorithm confusion).
        let public = URL_SAFE_NO_PAD
            .decode(s.jwks()["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(kid.clone()),
                ..Header::new(Algorithm::HS256)
            },
            &good,
            &EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        assert_eq!(s.verify(&hs), Err(TokenError::Algorithm));
        // Headers pointing to other keys.
        for extra in [
            serde_json::json!({"jku": "https://evil.test/jwks.json"}),
            serde_json::json!({"x5u": "https://evil.test/cert.pem"}),
            serde_json::json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}),
        ] {
            let mut h = serde_json::json!({"alg": "EdDSA", "kid": kid});
            h.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let t = forge(h, &good, sign_ours);
            assert!(
                matches!(
                    s.verify(&t),
                    Err(TokenError::ForeignKey | TokenError::Malformed)
                ),
                "{t}"
            );
        }
        // Unknown, missing and injected kids.
        for h in [
            serde_json::json!({"alg": "EdDSA", "kid": "nope"}),
            serde_json::json!({"alg": "EdDSA"}),
            serde_json::json!({"alg": "EdDSA", "kid": "../../etc/passwd"}),
            serde_json::json!({"alg": "EdDSA", "kid": "' OR 1=1 --"}),
        ] {
            assert_eq!(
                s.verify(&forge(h, &good, sign_ours)),
                Err(TokenError::UnknownKey)
            );
        }
        // Right header, wrong signature.
        let t = forge(
            serde_json::json!({"alg": "EdDSA", "kid": kid}),
            &good,
            sign_ours,
        );
        assert!(matches!(s.verify(&t), Err(TokenError::Invalid(_))));
        // Signed by a key that is not ours but claims our kid.
        let other = service();
        let mut claims = good.clone();
        claims["iss"] = "https://fms.test".into();
        let (t, _) = other.issue("u").unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let mut h: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        h["kid"] = kid.clone().into();
        let swapped = format!("{}.{}.{}", b64(&h), parts[1], parts[2]);
        assert!(matches!(s.verify(&swapped), Err(TokenError::Invalid(_))));
        // Oversized and garbage.
        assert_eq!(s.verify(&"a".repeat(64 * 1024)), Err(TokenError::TooLong));
        for junk in ["", "a.b", "a.b.c", "....", "\u{0}.\u{0}.\u{0}"] {
            assert!(s.verify(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn time_audience_issuer_and_type_are_checked() {
        let s = service();
        let now = now_secs();
        let sign = |claims: serde_json::Value| {
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(s.current_kid().to_string());
            jsonwebtoken::encode(&h, &claims, &s.current.encoding).unwrap()
        };
        let base = claims_json(&s, "u");
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            sign(c)
        };
        assert!(
            s.verify(&with("exp", (now - LEEWAY_SECS - 5).into()))
                .is_err(),
            "expired"
        );
        assert!(
            s.verify(&with("exp", (now - 5).into())).is_ok(),
            "within the leeway"
        );
        assert!(
            s.verify(&with("nbf", (now + LEEWAY_SECS + 60).into()))
                .is_err(),
            "not yet valid"
        );
        assert!(
            s.verify(&with("aud", "someone-else".into())).is_err(),
            "wrong audience"
        );
        assert!(
            s.verify(&with("iss", "https://evil.test".into())).is_err(),
            "wrong issuer"
        );
        assert_eq!(
            s.verify(&with("typ", "refresh".into())),
            Err(TokenError::WrongType)
        );
        let mut no_exp = base.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(s.verify(&sign(no_exp)).is_err(), "exp is required");
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_publishes_both_keys() {
        let mut s = service();
        let (old, _) = s.issue("u").unwrap();
        let old_kid = s.current_kid().to_string();
        s.rotate().unwrap();
        assert_ne!(s.current_kid(), old_kid);
        let (new, _) = s.issue("u").unwrap();
        assert!(
            s.verify(&old).is_ok(),
            "tokens signed before the rotation stay valid"
        );
        assert!(s.verify(&new).is_ok());
        let jwks = s.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(kids.contains(&old_kid.as_str()) && kids.contains(&s.current_kid()));
        // A verifier built from the JWKS alone accepts our tokens (what other services do).
        for k in jwks["keys"].as_array().unwrap() {
            let key = DecodingKey::from_ed_components(k["x"].as_str().unwrap()).unwrap();
            let mut v = Validation::new(Algorithm::EdDSA);
            v.set_audience(&["fms"]);
            let token = if k["kid"] == old_kid.as_str() {
                &old
            } else {
                &new
            };
            assert!(jsonwebtoken::decode::<Claims>(token, &key, &v).is_ok());
        }
    }
}
