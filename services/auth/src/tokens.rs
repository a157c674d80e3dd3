//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`), published as a JWKS so every
//! service and the mesh verify them locally.
//!
//! Verification is deliberately narrow (RELIABILITY.md test 19): only `EdDSA`; a `kid` that
//! names one of our keys is required; headers that point elsewhere for keys (`jku`, `x5u`,
//! `jwk`, `x5c`) are refused; `iss`, `aud`, `exp`, `nbf` are checked with an explicit 30 s
//! leeway; only tokens typed `access` are accepted; oversized tokens are refused before parsing.

use std::collections::HashMap;
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
    /// Login session: the refresh-token family this token was issued with. Logout revokes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
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

/// A signing key as it is stored: the Ed25519 seed, when it was made, and when it stops
/// being accepted (`None` while it may still sign).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub seed: [u8; 32],
    pub created: u64,
    pub retire_after: Option<u64>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid())
            .field("created", &self.created)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// A fresh random key.
    pub fn generate(now: u64) -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
        Ok(KeyRecord {
            seed,
            created: now,
            retire_after: None,
        })
    }

    fn public(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.seed)
            .verifying_key()
            .to_bytes()
    }

    /// The key id, derived from the public key: stable, and unique per key.
    pub fn kid(&self) -> String {
        kid_of(&self.public())
    }
}

fn kid_of(public: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(&public[..12])
}

/// A public key accepted for verification.
#[derive(Clone)]
struct PublicKey {
    public: [u8; 32],
    decoding: DecodingKey,
    /// Not accepted after this time (seconds since the epoch); `None`: no end.
    retire_after: Option<u64>,
}

/// The public keys a verifier accepts, by `kid`: built from our own key records or from a
/// fetched JWKS document.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, PublicKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl KeySet {
    fn insert(&mut self, public: [u8; 32], retire_after: Option<u64>) -> Result<(), String> {
        let decoding = DecodingKey::from_ed_der(&public);
        self.keys.insert(
            kid_of(&public),
            PublicKey {
                public,
                decoding,
                retire_after,
            },
        );
        Ok(())
    }

    /// Parse a JWKS document. Only `OKP`/`Ed25519` keys whose `kid` matches their key are
    /// taken; anything else is skipped (a JWKS may carry keys for other verifiers).
    pub fn from_jwks(doc: &serde_json::Value) -> Result<KeySet, String> {
        let keys = doc["keys"]
            .as_array()
            .ok_or_else(|| "JWKS has no keys array".to_string())?;
        let mut set = KeySet::default();
        for k in keys {
            if k["kty"] != "OKP" || k["crv"] != "Ed25519" {
                continue;
            }
            let (Some(x), Some(kid)) = (k["x"].as_str(), k["kid"].as_str()) else {
                continue;
            };
            let Ok(bytes) = URL_SAFE_NO_PAD.decode(x) else {
                continue;
            };
            let Ok(public) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                continue;
            };
            if kid_of(&public) != kid {
                continue;
            }
            set.insert(public, k["exp"].as_u64())?;
        }
        Ok(set)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `kid` names a key that is accepted now.
    pub fn contains(&self, kid: &str) -> bool {
        self.get(kid, now_secs()).is_some()
    }

    fn get(&self, kid: &str, now: u64) -> Option<&PublicKey> {
        self.keys
            .get(kid)
            .filter(|k| k.retire_after.is_none_or(|r| r > now))
    }

    /// The JWKS document for these keys (`exp` on keys being retired).
    pub fn jwks(&self) -> serde_json::Value {
        let now = now_secs();
        let mut keys: Vec<_> = self
            .keys
            .iter()
            .filter(|(_, k)| k.retire_after.is_none_or(|r| r > now))
            .map(|(kid, k)| {
                let mut v = serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": kid, "x": URL_SAFE_NO_PAD.encode(k.public),
                });
                if let Some(r) = k.retire_after {
                    v["exp"] = r.into();
                }
                v
            })
            .collect();
        keys.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        serde_json::json!({ "keys": keys })
    }
}

/// What a verifier expects of every token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub issuer: String,
    pub audience: String,
}

/// The `kid` a token claims, if its header parses (used to decide whether to refetch keys).
pub fn token_kid(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// Check a token completely against `keys`; the claims if it is a valid access token.
pub fn verify(token: &str, keys: &KeySet, expect: &Expect) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some()
    {
        return Err(TokenError::ForeignKey);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKey)?;
    let key = keys.get(&kid, now_secs()).ok_or(TokenError::UnknownKey)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_issuer(&[&expect.issuer]);
    v.set_audience(&[&expect.audience]);
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    if data.claims.typ != "access" || data.claims.jti.is_empty() {
        return Err(TokenError::WrongType);
    }
    Ok(data.claims)
}

/// Issues and verifies access tokens; rotates keys without logging anyone out.
pub struct TokenService {
    expect: Expect,
    ttl: Duration,
    records: Vec<KeyRecord>,
    current: usize,
    encoding: EncodingKey,
    keys: KeySet,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.expect.issuer)
            .field("kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
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
        let record = KeyRecord::generate(now_secs())?;
        Self::from_records(issuer, audience, ttl, vec![record])
    }

    /// A service over stored keys: the newest key without an end signs; keys being retired
    /// still verify until their end.
    pub fn from_records(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        ttl: Duration,
        records: Vec<KeyRecord>,
    ) -> Result<Self, String> {
        let now = now_secs();
        let records: Vec<KeyRecord> = records
            .into_iter()
            .filter(|r| r.retire_after.is_none_or(|t| t > now))
            .collect();
        // The newest key that has started signing; a key created in the future is published
        // (so verifiers learn it first) but signs only from its creation time.
        let current = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.created <= now)
            // Within one second, the key that is not being retired is the newer one.
            .max_by_key(|(_, r)| (r.created, r.retire_after.is_none(), r.kid()))
            .or_else(|| records.iter().enumerate().min_by_key(|(_, r)| r.created))
            .map(|(i, _)| i)
            .ok_or_else(|| "no signing key".to_string())?;
        let mut keys = KeySet::default();
        for r in &records {
            keys.insert(r.public(), r.retire_after)?;
        }
        let der = SigningKey::from_bytes(&records[current].seed)
            .to_pkcs8_der()
            .map_err(|e| format!("encode key: {e}"))?;
        Ok(TokenService {
            expect: Expect {
                issuer: issuer.into(),
                audience: audience.into(),
            },
            ttl,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            records,
            current,
            keys,
        })
    }

    /// The key records (what is persisted).
    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    /// The id of the key new tokens are signed with.
    pub fn current_kid(&self) -> String {
        self.records[self.current].kid()
    }

    /// When the current key was made (seconds since the epoch), for rotation schedules.
    pub fn current_created(&self) -> u64 {
        self.records[self.current].created
    }

    /// Lifetime of access tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// What tokens must carry.
    pub fn expect(&self) -> &Expect {
        &self.expect
    }

    /// The public keys tokens are verified with.
    pub fn key_set(&self) -> &KeySet {
        &self.keys
    }

    /// Sign a new access token for `sub` without a session.
    pub fn issue(&self, sub: &str) -> Result<(String, Claims), String> {
        self.issue_at(sub, "", now_secs())
    }

    /// Sign a new access token for `sub` in login session `sid`.
    pub fn issue_in_session(&self, sub: &str, sid: &str) -> Result<(String, Claims), String> {
        self.issue_at(sub, sid, now_secs())
    }

    fn issue_at(&self, sub: &str, sid: &str, now: u64) -> Result<(String, Claims), String> {
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| format!("no randomness: {e}"))?;
        let claims = Claims {
            sub: sub.to_string(),
            iss: self.expect.issuer.clone(),
            aud: self.expect.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: URL_SAFE_NO_PAD.encode(jti),
            typ: "access".into(),
            sid: sid.to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current_kid());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| format!("sign: {e}"))?;
        Ok((token, claims))
    }

    /// The key records after a rotation: a new key, published now, signs from
    /// `publish_ahead` on (so verifiers that cache the JWKS know it before they see it);
    /// the keys signing until then stay valid until every token they signed has expired,
    /// so nobody is logged out. The caller persists them and rebuilds the service.
    pub fn rotated_records(&self, publish_ahead: Duration) -> Result<Vec<KeyRecord>, String> {
        let next = KeyRecord::generate(now_secs() + publish_ahead.as_secs())?;
        let mut records = self.records.clone();
        for r in &mut records {
            if r.retire_after.is_none() {
                r.retire_after = Some(next.created + self.ttl.as_secs() + LEEWAY_SECS);
            }
        }
        records.push(next);
        Ok(records)
    }

    /// Whether a rotated-in key is published but not signing yet.
    pub fn has_pending(&self) -> bool {
        let now = now_secs();
        self.records.iter().any(|r| r.created > now)
    }

    /// Rotate in place, the new key signing at once (a process that keeps its keys to
    /// itself; services that publish keys use `rotated_records` with a lead time).
    pub fn rotate(&mut self) -> Result<(), String> {
        let records = self.rotated_records(Duration::ZERO)?;
        *self = TokenService::from_records(
            self.expect.issuer.clone(),
            self.expect.audience.clone(),
            self.ttl,
            records,
        )?;
        Ok(())
    }

    /// Check a token completely; the claims if it is a valid access token of ours.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        verify(token, &self.keys, &self.expect)
    }

    /// The JWKS document (`/.well-known/jwks.json`): every key a valid token may be signed by.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
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
        assert_eq!(header.kid, Some(s.current_kid()));
        assert_ne!(
            s.issue("user-1").unwrap().1.jti,
            claims.jti,
            "every token has its own jti"
        );
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let s = service();
        let kid = s.current_kid();
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
            h.kid = Some(s.current_kid());
            jsonwebtoken::encode(&h, &claims, &s.encoding).unwrap()
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
    fn a_rotated_in_key_is_published_before_it_signs() {
        let s = service();
        let old_kid = s.current_kid();
        let records = s.rotated_records(Duration::from_secs(60)).unwrap();
        let s2 = TokenService::from_records(
            "https://fms.test",
            "fms",
            Duration::from_secs(900),
            records,
        )
        .unwrap();
        assert_eq!(s2.current_kid(), old_kid, "the new key does not sign yet");
        assert!(s2.has_pending());
        assert_eq!(
            s2.jwks()["keys"].as_array().unwrap().len(),
            2,
            "but it is published"
        );
        let (t, _) = s2.issue("u").unwrap();
        assert!(
            s.verify(&t).is_ok(),
            "verifiers that know only the old key still accept"
        );
        // Once its time comes it signs, and the old key stays valid for the old tokens.
        let mut records = s2.records().to_vec();
        for r in &mut records {
            if r.retire_after.is_none() {
                r.created = now_secs();
            }
        }
        let s3 = TokenService::from_records(
            "https://fms.test",
            "fms",
            Duration::from_secs(900),
            records,
        )
        .unwrap();
        assert_ne!(s3.current_kid(), old_kid);
        assert!(s3.verify(&t).is_ok());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_publishes_both_keys() {
        let mut s = service();
        let (old, _) = s.issue("u").unwrap();
        let old_kid = s.current_kid();
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
        assert!(kids.contains(&old_kid.as_str()) && kids.contains(&s.current_kid().as_str()));
        // A verifier that knows only the published JWKS accepts both.
        let set = KeySet::from_jwks(&jwks).unwrap();
        assert_eq!(set.len(), 2);
        assert!(verify(&old, &set, s.expect()).is_ok() && verify(&new, &set, s.expect()).is_ok());
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
