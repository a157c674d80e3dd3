//! # fms-engine
//!
//! The content-addressed chunk store under every fms service. It cuts byte streams with
//! FastCDC (2020), names chunks by BLAKE3-256, stores each distinct chunk once in append-only
//! pack files, and keeps a RocksDB index of chunk locations, refcounts and file manifests.
//!
//! It is synchronous and knows nothing of HTTP, gRPC or async runtimes: async callers run it
//! on blocking threads. Bytes flow through it in bounded pieces; no file is ever held whole.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let store = fms_engine::Store::open(dir.path())?;
//! let mut w = store.writer()?;
//! w.write(b"hello, ")?;
//! w.write(b"world")?;
//! let info = w.finish()?;
//! let mut out = Vec::new();
//! store.read_to(info.id, 0, info.meta.size, &mut out)?;
//! assert_eq!(out, b"hello, world");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Guarantees (tested in `engine/tests/` and `tests/torture`):
//! - a file is visible only once its chunks and manifest are durable and its index batch is
//!   committed with sync; a crash at any moment loses no committed file and shows no partial one;
//! - every read verifies each chunk against its BLAKE3; corruption is an error naming the file
//!   and chunk, never wrong bytes;
//! - after a failed fsync the store refuses writes ([`Error::Poisoned`]) until reopened.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

mod chunker;
mod durable;
mod error;
mod failpoint;
mod gc;
mod id;
mod index;
pub mod io;
pub mod pack;
mod read;
mod reindex;
mod scope;
mod session;
mod store;
mod verify;
mod write;

pub use chunker::{ChunkParams, Chunker};
pub use error::{Error, Result};
pub use failpoint::KILL_POINTS;
pub use gc::GcReport;
pub use id::{ChunkId, ContentHash, FileId, ParseIdError, SessionId};
pub use index::{ChunkEntry, FileMeta, ManifestEntry};
pub use io::IoMode;
pub use read::FileReader;
pub use reindex::ReindexReport;
pub use scope::Scope;
pub use session::{MAX_ANNOUNCED, SessionInfo, SessionWriter};
pub use store::{FileInfo, Stats, Store, StoreBuilder};
pub use verify::VerifyReport;
pub use write::{FileWriter, read_piece};
