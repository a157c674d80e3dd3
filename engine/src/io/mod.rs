//! Disk I/O back ends for pack files: io_uring where the kernel allows it, `std` positional
//! I/O otherwise. Chosen once at open ([`IoMode`]) and reported by [`Store::io_backend`].
//!
//! [`Store::io_backend`]: crate::Store::io_backend

use std::fs::File;
use std::io;
use std::sync::Arc;

mod std_io;
#[cfg(target_os = "linux")]
mod uring;

pub use std_io::StdIo;
mod writeback;
pub use writeback::start_writeback;

/// Which I/O back end to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring if the kernel allows it, else std (the default).
    #[default]
    Auto,
    /// io_uring or fail to open.
    Uring,
    /// Portable positional I/O (`pread`/`pwrite`/`fdatasync`).
    Std,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoMode::Uring),
            "std" | "fallback" => Ok(IoMode::Std),
            other => Err(format!("unknown I/O mode {other:?} (auto, uring, std)")),
        }
    }
}

/// Positional, whole-buffer I/O on pack files.
///
/// Contract: `write_all_at` writes every byte or fails; `read_exact_at` fills the buffer or
/// fails (`UnexpectedEof` past the end); `sync_data` returns only once the file's data written
/// so far is durable. Implementations are shared by all threads.
pub trait IoBackend: Send + Sync + 'static {
    /// Short name for logs and stats (`io_uring`, `std`).
    fn name(&self) -> &'static str;
    /// Write `bufs` back to back starting at `offset`.
    fn write_all_at(&self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()>;
    /// Fill `buf` from `offset`.
    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// Open the back end `mode` asks for.
pub fn open_backend(mode: IoMode) -> io::Result<Arc<dyn IoBackend>> {
    match mode {
        IoMode::Std => Ok(Arc::new(StdIo)),
        IoMode::Uring => uring_backend(),
        IoMode::Auto => match uring_backend() {
            Ok(b) => Ok(b),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable, using std I/O");
                Ok(Arc::new(StdIo))
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn uring_backend() -> io::Result<Arc<dyn IoBackend>> {
    Ok(Arc::new(uring::UringIo::probe()?))
}

#[cfg(not(target_os = "linux"))]
fn uring_backend() -> io::Result<Arc<dyn IoBackend>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(io: &dyn IoBackend) {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let big = vec![7u8; 3 << 20];
        io.write_all_at(&f, 0, &[b"hello ", b"world", &big])
            .unwrap();
        io.write_all_at(&f, 11 + (3 << 20), &[b"!"]).unwrap();
        io.sync_data(&f).unwrap();
        let mut buf = [0u8; 11];
        io.read_exact_at(&f, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello world");
        let mut big_back = vec![0u8; 3 << 20];
        io.read_exact_at(&f, 11, &mut big_back).unwrap();
        assert_eq!(big_back, big);
        let mut past = [0u8; 4];
        let err = io.read_exact_at(&f, 10 + (3 << 20), &mut past).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn std_backend_contract() {
        exercise(&StdIo);
    }

    #[test]
    fn uring_backend_contract() {
        match open_backend(IoMode::Uring) {
            Ok(io) => exercise(&*io),
            // The kernel may forbid io_uring (seccomp, sysctl); the fallback test covers std.
            Err(e) if std::env::var_os("FMS_REQUIRE_URING").is_none() => eprintln!("skipped: {e}"),
            Err(e) => panic!("io_uring required but unavailable: {e}"),
        }
    }
}
