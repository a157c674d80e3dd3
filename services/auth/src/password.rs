//! Passwords: the registration policy (NIST SP 800-63B 5.1.1.2) and argon2id hashing behind
//! a semaphore, off the async threads.
//!
//! Policy: at least 8 and at most 256 characters, any characters (spaces and non-ASCII
//! included), no composition rules, not one of the most common passwords (bundled list,
//! compared case-insensitively), not the username. Hashing: argon2id with the configured
//! parameters (OWASP's m = 19 MiB, t = 2, p = 1 by default). At most `max_concurrent`
//! hashes run at once, so 200 parallel logins cost 200 x 19 MiB never, only
//! `max_concurrent` x 19 MiB.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

/// Shortest password accepted.
pub const MIN_CHARS: usize = 8;
/// Longest password accepted (NIST: at least 64 must be allowed).
pub const MAX_CHARS: usize = 256;
/// How long a login may wait for a hashing slot before it is told to retry.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(20);

static COMMON: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    })
}

/// Why a password was refused at registration.
pub fn check_policy(password: &str, username: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(format!("password must be at least {MIN_CHARS} characters"));
    }
    if chars > MAX_CHARS {
        return Err(format!("password must be at most {MAX_CHARS} characters"));
    }
    if password.chars().any(|c| c == '\0') {
        return Err("password must not contain NUL".into());
    }
    let lower = password.to_lowercase();
    if common().contains(lower.as_str()) {
        return Err("password is too common; choose a less guessable one".into());
    }
    if lower == username.to_lowercase() {
        return Err("password must not be the username".into());
    }
    Ok(())
}

/// Hashing failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many logins in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// argon2id hashing with bounded concurrency, on a fixed set of threads that each reuse
/// one memory area for every hash (allocating 19 MiB per hash leaves the allocator's
/// per-thread arenas holding several times that), so memory is `max_concurrent` x m.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// New hashes (registrations, rehashes) may hold at most half the slots, so a flood of
    /// registrations cannot starve logins.
    new_hash_permits: Arc<Semaphore>,
    jobs: Arc<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>,
    /// A hash of a random password, verified against for unknown users so that a login
    /// for a name that does not exist costs the same as one that does.
    dummy: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// `max_concurrent` 0 means one per CPU.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        max_concurrent: u32,
    ) -> Result<Hasher, String> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let n = match max_concurrent {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // Ends when every Hasher clone (every sender) is gone.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| format!("cannot start hashing thread: {e}"))?;
        }
        Ok(Hasher {
            params,
            permits: Arc::new(Semaphore::new(n)),
            new_hash_permits: Arc::new(Semaphore::new((n / 2).max(1))),
            jobs: Arc::new(std::sync::Mutex::new(tx)),
            dummy: Arc::new(OnceLock::new()),
        })
    }

    /// Hashes that may run at once.
    pub fn max_concurrent(&self) -> usize {
        self.permits.available_permits()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
            drop(permit);
        });
        self.jobs
            .lock()
            .map_err(|_| HashError::Failed("hashing threads gone".into()))?
            .send(job)
            .map_err(|_| HashError::Failed("hashing threads gone".into()))?;
        rx.await
            .map_err(|_| HashError::Failed("hashing thread failed".into()))
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let _slot =
            tokio::time::timeout(QUEUE_TIMEOUT, self.new_hash_permits.clone().acquire_owned())
                .await
                .map_err(|_| HashError::Busy)?
                .map_err(|_| HashError::Busy)?;
        let params = self.params.clone();
        self.blocking(move || {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| HashError::Failed(e.to_string()))?;
            let mut out = [0u8; 32];
            compute(
                Algorithm::Argon2id,
                Version::V0x13,
                &params,
                password.as_bytes(),
                &salt,
                &mut out,
            )?;
            let failed = |e: argon2::password_hash::phc::Error| HashError::Failed(e.to_string());
            let phc = PasswordHash {
                algorithm: argon2::ARGON2ID_IDENT,
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params)
                    .map_err(|e| HashError::Failed(e.to_string()))?,
                salt: Some(Salt::new(&salt).map_err(failed)?),
                hash: Some(Output::new(&out).map_err(failed)?),
            };
            Ok(phc.to_string())
        })
        .await?
    }

    /// Whether `password` matches `phc`. A malformed stored hash is an error, not a match.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HashError> {
        self.blocking(move || {
            let bad = |e: String| HashError::Failed(format!("stored hash: {e}"));
            let parsed = PasswordHash::new(&phc).map_err(|e| bad(e.to_string()))?;
            let algorithm =
                Algorithm::try_from(parsed.algorithm.as_str()).map_err(|e| bad(e.to_string()))?;
            let version = match parsed.version {
                Some(v) => Version::try_from(v).map_err(|e| bad(e.to_string()))?,
                None => Version::V0x10,
            };
            let params = Params::try_from(&parsed).map_err(|e| bad(e.to_string()))?;
            let salt = parsed.salt.ok_or_else(|| bad("no salt".into()))?;
            let expected = parsed.hash.ok_or_else(|| bad("no hash".into()))?;
            let mut out = vec![0u8; expected.len()];
            compute(
                algorithm,
                version,
                &params,
                password.as_bytes(),
                &salt,
                &mut out,
            )?;
            Ok(Output::new(&out).is_ok_and(|o| o == expected))
        })
        .await?
    }

    /// Spend the time of one verification without a user (unknown usernames).
    pub async fn verify_dummy(&self, password: String) -> Result<(), HashError> {
        let phc = match self.dummy.get() {
            Some(p) => p.clone(),
            None => {
                let mut random = [0u8; 24];
                getrandom::fill(&mut random).map_err(|e| HashError::Failed(e.to_string()))?;
                let p = self.hash(format!("{random:?}")).await?;
                self.dummy.get_or_init(|| p).clone()
            }
        };
        self.verify(password, phc).await.map(|_| ())
    }

    /// Whether a stored hash was made with weaker parameters than today's (rehash on login).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return true;
        };
        let Ok(p) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != "argon2id"
            || p.m_cost() < self.params.m_cost()
            || p.t_cost() < self.params.t_cost()
            || p.p_cost() < self.params.p_cost()
    }
}

/// Largest memory a stored hash may ask for (1 GiB, the configuration's maximum).
const MAX_BLOCKS: u32 = 1024 * 1024;

thread_local! {
    /// This hashing thread's argon2 memory, reused by every hash it computes.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), HashError> {
    if params.m_cost() > MAX_BLOCKS {
        return Err(HashError::Failed(
            "stored hash asks for too much memory".into(),
        ));
    }
    let params = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(out.len()),
    )
    .map_err(|e| HashError::Failed(e.to_string()))?;
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < blocks {
            m.resize(blocks, Block::new());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut m[..blocks])
            .map_err(|e| HashError::Failed(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_follows_nist() {
        assert!(check_policy("short", "u").is_err());
        assert!(
            check_policy("password", "u")
                .unwrap_err()
                .contains("common")
        );
        assert!(
            check_policy("PassWord1", "u").is_err(),
            "case-insensitive list"
        );
        assert!(check_policy("qwertyuiop", "u").is_err());
        assert!(check_policy("correct horse battery staple", "u").is_ok());
        assert!(check_policy("jose-luis-x1", "jose-luis-x1").is_err());
        // No composition rules: lower-case letters alone are fine if uncommon.
        assert!(check_policy("zebrafountainmoss", "u").is_ok());
        // Non-ASCII counts characters, not bytes.
        assert!(check_policy("пароль!", "u").is_err(), "7 characters");
        assert!(check_policy("пароль!!", "u").is_ok());
        assert!(check_policy(&"é".repeat(MAX_CHARS), "u").is_ok());
        assert!(check_policy(&"é".repeat(MAX_CHARS + 1), "u").is_err());
        assert!(check_policy("abc\0defghij", "u").is_err());
        assert!(common().len() > 8000);
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let h = Hasher::new(19 * 1024, 2, 1, 2).unwrap();
        let phc = h.hash("ünïcödé pässwörd 🔑".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // Interoperable: the argon2 crate's own verifier agrees, both ways.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password("ünïcödé pässwörd 🔑".as_bytes(), &parsed)
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(b"their hash")
            .unwrap()
            .to_string();
        assert!(h.verify("their hash".into(), theirs.clone()).await.unwrap());
        assert!(!h.verify("not their hash".into(), theirs).await.unwrap());
        assert!(
            h.verify("ünïcödé pässwörd 🔑".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !h.verify("ünïcödé pässwörd".into(), phc.clone())
                .await
                .unwrap()
        );
        let long = "x".repeat(MAX_CHARS * 4);
        let phc2 = h.hash(long.clone()).await.unwrap();
        assert!(h.verify(long, phc2).await.unwrap());
        assert!(h.verify("a".into(), "not a hash".into()).await.is_err());
        assert!(!h.needs_rehash(&phc));
        let stronger = Hasher::new(32 * 1024, 3, 1, 1).unwrap();
        assert!(stronger.needs_rehash(&phc));
        h.verify_dummy("whatever".into()).await.unwrap();
    }
}
