use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::IoBackend;

/// `pwrite`/`pread`/`fdatasync` through the standard library.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdIo;

impl IoBackend for StdIo {
    fn name(&self) -> &'static str {
        "std"
    }

    fn write_all_at(&self, file: &File, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        for buf in bufs {
            file.write_all_at(buf, offset)?;
            offset += buf.len() as u64;
        }
        Ok(())
    }

    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}
