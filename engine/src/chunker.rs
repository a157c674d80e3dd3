//! Push-based FastCDC (2020) chunking.
//!
//! Bytes arrive in pieces of any size; chunks come out exactly as if the whole stream had been
//! cut at once (a cut depends only on the bytes from the chunk start up to `max`), so the same
//! content always yields the same chunks whatever the read sizes — the property dedup rests on.

use bytes::{Bytes, BytesMut};
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
#[derive(Debug)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
    buf: BytesMut,
}

impl Chunker {
    /// A chunker with (already validated) parameters.
    pub fn new(params: ChunkParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Chunker {
            params,
            mask_s,
            mask_l,
            buf: BytesMut::with_capacity(params.max as usize * 2),
        }
    }

    /// A chunker resuming with `tail`, the uncut bytes a session persisted.
    pub fn with_tail(params: ChunkParams, tail: &[u8]) -> Self {
        let mut c = Chunker::new(params);
        c.buf.extend_from_slice(tail);
        c
    }

    /// The bytes received but not yet cut (always shorter than `max` between calls).
    pub fn tail(&self) -> &[u8] {
        &self.buf
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
        while !data.is_empty() {
            let room = (2 * max).saturating_sub(self.buf.len()).max(max);
            let take = room.min(data.len());
            let (now, rest) = data.split_at(take);
            self.buf.extend_from_slice(now);
            data = rest;
            while self.buf.len() >= max {
                let n = self
                    .cut_len(self.buf.get(..max).unwrap_or_default())
                    .clamp(1, max);
                emit(self.buf.split_to(n).freeze())?;
            }
        }
        Ok(())
    }

    /// Feed owned bytes. Chunks that lie wholly inside `data` are emitted as slices of it
    /// (no copy); only a chunk that straddles two pieces, and the uncut tail, are copied.
    pub fn push_bytes<E>(
        &mut self,
        mut data: Bytes,
        emit: &mut impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), E> {
        let max = self.params.max as usize;
        loop {
            if !self.buf.is_empty() {
                // Complete the window of `max` bytes that starts at the pending chunk.
                let before = self.buf.len();
                let take = max.saturating_sub(before).min(data.len());
                self.buf
                    .extend_from_slice(data.get(..take).unwrap_or_default());
                if self.buf.len() < max {
                    return Ok(()); // everything went into the window; wait for more
                }
                let n = self
                    .cut_len(self.buf.get(..max).unwrap_or_default())
                    .clamp(1, max);
                if n >= before {
                    // The chunk ends inside `data`: emit it, then go on from `data` itself.
                    self.buf.truncate(n);
                    emit(self.buf.split().freeze())?;
                    let _ = data.split_to(n - before);
                } else {
                    // The chunk ends inside the old pending bytes: un-take what we copied.
                    emit(self.buf.split_to(n).freeze())?;
                    self.buf.truncate(before - n);
                    continue;
                }
            }
            while data.len() >= max {
                let n = self
                    .cut_len(data.get(..max).unwrap_or_default())
                    .clamp(1, max);
                emit(data.split_to(n))?;
            }
            self.buf.extend_from_slice(&data);
            return Ok(());
        }
    }

    /// End of stream: cut what is left (possibly several chunks, possibly none).
    pub fn finish<E>(&mut self, emit: &mut impl FnMut(Bytes) -> Result<(), E>) -> Result<(), E> {
        while !self.buf.is_empty() {
            let n = self.cut_len(&self.buf).clamp(1, self.buf.len());
            emit(self.buf.split_to(n).freeze())?;
        }
        Ok(())
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
