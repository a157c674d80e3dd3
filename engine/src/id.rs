//! Names: chunks by content (BLAKE3-256), files and upload sessions by random 128-bit ids.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A chunk's name: the BLAKE3-256 of its bytes. A `ChunkId` always names the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hash `data` into its chunk id.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", hex::encode(&self.0[..8]))
    }
}

/// The BLAKE3-256 of a whole file's bytes (usable as a strong ETag).
pub type ContentHash = [u8; 32];

macro_rules! random_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, " id: 128 random bits, shown as 32 lowercase hex digits.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh, unpredictable id.
            pub fn generate() -> Self {
                $name(random_16())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 32 {
                    return Err(ParseIdError);
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError)?;
                Ok($name(out))
            }
        }
    };
}

random_id!(FileId, "file");
random_id!(SessionId, "upload session");

/// The text is not a 32-digit hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id (expected 32 hex digits)")]
pub struct ParseIdError;

/// 16 bytes from a keyed BLAKE3 stream: the key comes from the OS once per process, the input
/// is a counter, so ids are unique and unpredictable without a syscall per id.
fn random_16() -> [u8; 16] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key));
        if from_os.is_err() {
            // No /dev/urandom: derive from time, pid and an address. Still unique per
            // process start; documented as weaker in docs/design/ids.md.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut h = blake3::Hasher::new();
            h.update(&now.to_le_bytes());
            h.update(&std::process::id().to_le_bytes());
            h.update(&(&key as *const _ as usize).to_le_bytes());
            key = *h.finalize().as_bytes();
        }
        key
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let out = blake3::keyed_hash(key, &n.to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&out.as_bytes()[..16]);
    id
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_differ() {
        let a = FileId::generate();
        let b = FileId::generate();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<FileId>(), Ok(a));
        assert!("xyz".parse::<FileId>().is_err());
        assert!("zz".repeat(16).parse::<FileId>().is_err());
    }
}
