//! Push-based FastCDC (2020) chunking.
//!
//! Bytes arrive in pieces of any size; chunks come out exactly as if the whole stream had been
//! cut at once (a cut depends only on the bytes from the chunk start up to `max`), so the same
//! content always yields the same chunks whatever the read sizes — the property dedup rests on.

use bytes::Bytes;
use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::error::{Error, Result};

/// FastCDC parameters, fixed when a store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Smallest chunk (except the last of a file), bytes.
    pub min: u32,
    /// Target average chunk, bytes.
    pub avg: u32,
    /// Largest chunk, bytes.
    pub max: u32,
}

impl Default for ChunkParams {
    /// 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        ChunkParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

impl std::fmt::Display for ChunkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fastcdc2020 min={} avg={} max={}",
            self.min, self.avg, self.max
        )
    }
}

impl ChunkParams {
    /// Check the parameters against FastCDC's limits.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "chunk sizes must satisfy {MINIMUM_MIN}<=min<={MINIMUM_MAX}, \
                 {AVERAGE_MIN}<=avg<={AVERAGE_MAX}, {MAXIMUM_MIN}<=max<={MAXIMUM_MAX}, \
                 min<=avg<=max, max even; got {self}"
            )))
        }
    }
}

/// Cuts a stream of bytes into content-defined chunks.
///
/// Every chunk is emitted as its own allocation of its own size: a chunk in flight never
/// keeps the caller's buffers or the chunker's window alive, so what a writer holds is what
/// its pipeline counts. Input at least `max` long is cut in place (one copy, out); shorter
/// input goes through a window of `1.5 x max` bytes that is compacted lazily.
#[derive(Debug)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
    /// The window: pending bytes are `buf[start..]`, always fewer than `max` between calls.
    buf: Vec<u8>,
    start: usize,
}

impl Chunker {
    /// A chunker with (already validated) parameters.
    pub fn new(params: ChunkParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Chunker {
            params,
            mask_s,
            mask_l,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// A chunker resuming with `tail`, the uncut bytes a session persisted.
    pub fn with_tail(params: ChunkParams, tail: &[u8]) -> Self {
        let mut c = Chunker::new(params);
        c.append(tail);
        c
    }

    /// The bytes received but not yet cut (always shorter than `max` between calls).
    pub fn tail(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Add bytes to the window, moving the pending bytes to the front first if the end has
    /// no room (fewer than `max` bytes moved per `max / 2` bytes cut).
    fn append(&mut self, data: &[u8]) {
        let max = self.params.max as usize;
        let cap = max + max / 2;
        if self.buf.capacity() < cap {
            self.buf.reserve_exact(cap - self.buf.len());
        }
        if self.buf.len() + data.len() > cap && self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Drop the first `n` pending bytes.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    fn cut_len(&self, data: &[u8]) -> usize {
        let (_, n) = cut(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }

    /// Feed bytes; every chunk that is now final is passed to `emit`.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), E> {
        let max = self.params.max as usize;
        loop {
            let before = self.tail().len();
            if before > 0 {
                // Complete the window of `max` bytes that starts at the pending chunk.
                let take = (max - before).min(data.len());
                self.append(data.get(..take).unwrap_or_default());
                if self.tail().len() < max {
                    return Ok(()); // everything went into the window; wait for more
                }
                let window = self.tail().get(..max).unwrap_or_default();
                let n = self.cut_len(window).clamp(1, max);
                let chunk = Bytes::copy_from_slice(window.get(..n).unwrap_or_default());
                if n >= before {
                    // The chunk ends inside `data`: go on from `data` itself.
                    self.buf.clear();
                    self.start = 0;
                    data = data.get(n - before..).unwrap_or_default();
                } else {
                    // The chunk ends inside the old pending bytes: un-take what was added.
                    self.buf.truncate(self.start + before);
                    self.consume(n);
                }
                emit(chunk)?;
                continue;
            }
            while data.len() >= max {
                let n = self
                    .cut_len(data.get(..max).unwrap_or_default())
                    .clamp(1, max);
                let (chunk, rest) = data.split_at(n);
                emit(Bytes::copy_from_slice(chunk))?;
                data = rest;
            }
            self.append(data);
            return Ok(());
        }
    }

    /// Feed owned bytes (the form HTTP bodies and gRPC messages arrive in); the same as
    /// [`Chunker::push`]: chunks are copies, so `data` is free once this returns.
    pub fn push_bytes<E>(
        &mut self,
        data: Bytes,
        emit: &mut impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), E> {
        self.push(&data, emit)
    }

    /// End of stream: cut what is left (possibly several chunks, possibly none).
    pub fn finish<E>(&mut self, emit: &mut impl FnMut(Bytes) -> Result<(), E>) -> Result<(), E> {
        loop {
            let pending = self.tail();
            if pending.is_empty() {
                return Ok(());
            }
            let n = self.cut_len(pending).clamp(1, pending.len());
            let chunk = Bytes::copy_from_slice(pending.get(..n).unwrap_or_default());
            self.consume(n);
            emit(chunk)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn cuts(params: ChunkParams, data: &[u8], piece: usize) -> Vec<usize> {
        let mut c = Chunker::new(params);
        let mut out = Vec::new();
        let mut emit = |b: Bytes| -> Result<(), ()> {
            out.push(b.len());
            Ok(())
        };
        for p in data.chunks(piece.max(1)) {
            c.push(p, &mut emit).unwrap();
        }
        c.finish(&mut emit).unwrap();
        out
    }

    /// Cuts through `push_bytes`, with piece sizes varying around `piece` and, for some
    /// seeds, the slice path mixed in, checking that emitted bytes are the input's.
    fn cuts_bytes(params: ChunkParams, data: &[u8], piece: usize, seed: u64) -> Vec<usize> {
        let mut c = Chunker::new(params);
        let mut out = Vec::new();
        let mut joined = Vec::new();
        let mut emit = |b: Bytes| -> Result<(), ()> {
            out.push(b.len());
            joined.extend_from_slice(&b);
            Ok(())
        };
        let mut at = 0;
        let mut k = seed;
        while at < data.len() {
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (piece / 2 + (k >> 40) as usize % (piece + 1))
                .max(1)
                .min(data.len() - at);
            if k.is_multiple_of(5) {
                c.push(&data[at..at + n], &mut emit).unwrap();
            } else {
                c.push_bytes(Bytes::copy_from_slice(&data[at..at + n]), &mut emit)
                    .unwrap();
            }
            at += n;
        }
        c.finish(&mut emit).unwrap();
        assert_eq!(joined, data);
        out
    }

    fn reference(params: ChunkParams, data: &[u8]) -> Vec<usize> {
        fastcdc::v2020::FastCDC::new(
            data,
            params.min as usize,
            params.avg as usize,
            params.max as usize,
        )
        .map(|c| c.length)
        .collect()
    }

    #[test]
    fn defaults_are_valid_and_bad_ones_are_refused() {
        ChunkParams::default().validate().unwrap();
        assert!(
            ChunkParams {
                min: 10,
                avg: 20,
                max: 30
            }
            .validate()
            .is_err()
        );
        assert!(
            ChunkParams {
                min: 8192,
                avg: 4096,
                max: 16384
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(cuts(small(), &[], 7).is_empty());
    }

    proptest! {
        #[test]
        fn cuts_do_not_depend_on_read_sizes(seed in any::<u64>(), len in 0usize..60_000, piece in 1usize..9000) {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
            let whole = reference(small(), &data);
            prop_assert_eq!(&cuts(small(), &data, piece), &whole);
            prop_assert_eq!(&cuts_bytes(small(), &data, piece, seed), &whole);
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            prop_assert!(whole.iter().all(|&n| n <= 4096));
        }
    }
}
