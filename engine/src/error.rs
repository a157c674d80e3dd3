//! The engine's one error type.

use std::io;
use std::path::PathBuf;

use crate::id::{ChunkId, FileId, SessionId};

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
///
/// Variants say whether retrying can help ([`Error::is_retryable`]) so callers (HTTP, gRPC,
/// the CLI) can map them without string matching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed; `context` says which one.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The index (RocksDB) reported an error.
    #[error("index: {0}")]
    Index(String),
    /// No file with this id.
    #[error("file {0} not found")]
    NotFound(FileId),
    /// No open upload session with this id (never created, finished, aborted or expired).
    #[error("upload session {0} not found")]
    SessionNotFound(SessionId),
    /// Another writer holds the session right now.
    #[error("upload session {0} is busy (another append is in progress)")]
    SessionBusy(SessionId),
    /// An append did not start at the session's current offset.
    #[error("upload session {session}: append at offset {given}, but the session is at {current}")]
    OffsetMismatch {
        session: SessionId,
        given: u64,
        current: u64,
    },
    /// A chunk a client cut and named does not have that name.
    #[error("chunk bytes hash to {actual}, not to the announced {claimed}")]
    ChunkMismatch { claimed: ChunkId, actual: ChunkId },
    /// Chunks announced for a dedup-aware append break the store's rules.
    #[error("invalid chunk announcement: {0}")]
    BadChunks(String),
    /// Stored bytes do not match their hash or record framing.
    #[error("corrupt data in file {file}: chunk {chunk} (pack {pack}, offset {offset}): {reason}")]
    Corrupt {
        file: FileId,
        chunk: ChunkId,
        pack: u32,
        offset: u64,
        reason: String,
    },
    /// The index itself holds a value that cannot be decoded.
    #[error("corrupt index entry {key}: {reason}")]
    CorruptIndex { key: String, reason: String },
    /// A chunk named by a manifest is missing from the index.
    #[error("file {file}: chunk {chunk} is missing from the store")]
    MissingChunk { file: FileId, chunk: ChunkId },
    /// A requested byte range does not fit the file.
    #[error("range {start}..{end} is outside file of {size} bytes")]
    InvalidRange { start: u64, end: u64, size: u64 },
    /// The store was created with other chunking parameters.
    #[error("store at {path} was created with chunking {stored}, not {requested}")]
    ParamsMismatch {
        path: PathBuf,
        stored: String,
        requested: String,
    },
    /// Invalid configuration or argument.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The directory is not an fms store, or its format is unknown.
    #[error("not an fms store (or unsupported format) at {path}: {reason}")]
    BadStore { path: PathBuf, reason: String },
    /// Another process (or another open `Store`) is using this store.
    #[error("store at {0} is in use by another process")]
    InUse(PathBuf),
    /// A durability step failed earlier; the store refuses further writes until reopened.
    #[error("store is poisoned after a failed sync; reopen it (writes are refused): {0}")]
    Poisoned(String),
    /// The store is out of space.
    #[error("no space left on the store's device")]
    NoSpace,
    /// A broken internal invariant (a worker thread gone, a lock poisoned by a panic).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        if source.raw_os_error() == Some(28) {
            return Error::NoSpace;
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the same call may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Index(_)
                | Error::SessionBusy(_)
                | Error::NoSpace
                | Error::InUse(_)
        )
    }

    /// Whether this error means stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::CorruptIndex { .. } | Error::MissingChunk { .. }
        )
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        let s = e.into_string();
        if s.contains("No space left") {
            Error::NoSpace
        } else {
            Error::Index(s)
        }
    }
}

/// Attach context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
