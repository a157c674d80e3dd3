//! Early writeback: start writing appended bytes to disk while more arrive.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Ask the kernel to start writing `len` bytes at `offset` of `file` back to disk, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint (errors are ignored):
/// durability still comes from the fdatasync that follows, which then finds most of the
/// bytes written already.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the call's duration; no
    // memory is handed to the kernel.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
