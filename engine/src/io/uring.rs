//! io_uring back end: each thread that does pack I/O owns a small ring; a call submits its
//! operations as one batch and waits for all of them before returning.
// SAFETY (module-wide): io_uring reads and writes caller memory asynchronously. Every entry
// pushed here points into buffers borrowed for the whole call, and the call does not return
// until the kernel has completed every submitted entry, so no buffer is freed or moved while
// the kernel may still touch it. File descriptors are borrowed the same way.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

use super::IoBackend;

const RING_ENTRIES: u32 = 64;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// io_uring with a ring per thread.
#[derive(Debug)]
pub struct UringIo;

impl UringIo {
    /// Check that this kernel lets us create a ring and run an operation.
    pub fn probe() -> io::Result<Self> {
        let io = UringIo;
        io.run(&mut [opcode::Nop::new().build()])?;
        Ok(io)
    }

    /// Submit `entries` (user_data = index) and return each result, waiting for all.
    fn run(&self, entries: &mut [squeue::Entry]) -> io::Result<Vec<i32>> {
        RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(IoUring::new(RING_ENTRIES)?);
            }
            let Some(ring) = slot.as_mut() else {
                return Err(io::Error::other("io_uring ring missing"));
            };
            let mut results = vec![0i32; entries.len()];
            for (batch_no, batch) in entries.chunks_mut(RING_ENTRIES as usize).enumerate() {
                let base = batch_no * RING_ENTRIES as usize;
                for (i, e) in batch.iter_mut().enumerate() {
                    *e = e.clone().user_data((base + i) as u64);
                    // SAFETY: see the module comment; the queue has room for RING_ENTRIES.
                    unsafe { ring.submission().push(e) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
                let mut done = 0;
                while done < batch.len() {
                    match ring.submit_and_wait(batch.len() - done) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                            ) || e.raw_os_error() == Some(16) => {}
                        Err(e) => return Err(e),
                    }
                    for cqe in ring.completion() {
                        if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                            *r = cqe.result();
                        }
                        done += 1;
                    }
                }
            }
            Ok(results)
        })
    }
}

fn check(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

impl IoBackend for UringIo {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn write_all_at(&self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        // Remaining (buffer, offset) pairs; a short write is resubmitted for its rest.
        let mut pending: Vec<(&[u8], u64)> = Vec::with_capacity(bufs.len());
        let mut at = offset;
        for b in bufs {
            if !b.is_empty() {
                pending.push((b, at));
            }
            at += b.len() as u64;
        }
        while !pending.is_empty() {
            let mut entries: Vec<squeue::Entry> = pending
                .iter()
                .map(|(b, off)| {
                    let len = b.len().min(u32::MAX as usize >> 1) as u32;
                    opcode::Write::new(fd, b.as_ptr(), len).offset(*off).build()
                })
                .collect();
            let results = self.run(&mut entries)?;
            let mut next = Vec::new();
            for ((b, off), res) in pending.into_iter().zip(results) {
                let n = check(res)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "io_uring wrote 0 bytes",
                    ));
                }
                if let Some(rest) = b.get(n..).filter(|r| !r.is_empty()) {
                    next.push((rest, off + n as u64));
                }
            }
            pending = next;
        }
        Ok(())
    }

    fn read_exact_at(&self, file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        while !buf.is_empty() {
            let len = buf.len().min(u32::MAX as usize >> 1) as u32;
            let mut e = [opcode::Read::new(fd, buf.as_mut_ptr(), len)
                .offset(offset)
                .build()];
            let res = self.run(&mut e)?;
            let n = check(res.first().copied().unwrap_or(-5))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of pack",
                ));
            }
            buf = std::mem::take(&mut buf).get_mut(n..).unwrap_or_default();
            offset += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let mut e = [opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()];
        let res = self.run(&mut e)?;
        check(res.first().copied().unwrap_or(-5)).map(|_| ())
    }
}
