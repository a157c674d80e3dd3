//! Streaming transforms: `compress` and `decompress` (zstd, gzip). Bytes in, bytes out as
//! they come, on one blocking thread per transform: the source is never held, memory is the
//! codec's state plus a few pieces in the channels (zstd's decoder refuses streams whose
//! window needs more than 128 MiB).
//!
//! Decompression is bounded: at most `max_output` bytes in all, and at most `max_ratio`
//! times the compressed bytes read so far (counted from 64 KiB), so a small bomb is stopped
//! after a few tens of MiB rather than after it has filled the disk.

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::ops::{Codec, Op};

/// Output bytes per piece handed on.
pub const PIECE: usize = 256 << 10;
/// Compressed bytes counted at least, for the ratio limit.
const RATIO_FLOOR: u64 = 64 << 10;

/// Why a stream transform stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The input is not what the transform reads, or is damaged.
    Invalid(String),
    /// The output went over a limit.
    TooLarge(String),
    /// The receiving side went away (nothing to report to).
    Gone,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Invalid(m) | StreamError::TooLarge(m) => write!(f, "{m}"),
            StreamError::Gone => write!(f, "the receiver went away"),
        }
    }
}

/// Limits of decompression.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub max_output: u64,
    pub max_ratio: u64,
}

/// Where output goes: pieces of [`PIECE`] bytes, sent with backpressure.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    written: u64,
    /// Stop when more than this is written (decompression); u64::MAX otherwise.
    limit: u64,
    /// Compressed bytes read so far and the ratio allowed (0: none).
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ratio: u64,
}

/// The limit error is carried through the codec as this io error's message.
const OVER: &str = "fms: output over the limit";

impl Sink {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.written += b.len() as u64;
        let allowed = if self.ratio > 0 {
            let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
            self.limit
                .min(read.max(RATIO_FLOOR).saturating_mul(self.ratio))
        } else {
            self.limit
        };
        if self.written > allowed {
            return Err(io::Error::other(OVER));
        }
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.push()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn classify(e: io::Error, what: &str, limits: &StreamLimits) -> StreamError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return StreamError::Gone;
    }
    if e.to_string().contains(OVER) {
        return StreamError::TooLarge(format!(
            "the decompressed data is over the limits ({} bytes, or {}x the compressed size)",
            limits.max_output, limits.max_ratio
        ));
    }
    StreamError::Invalid(format!("damaged or not {what} data: {e}"))
}

/// The codec of compressed bytes, from their first bytes.
pub fn sniff(head: &[u8]) -> Option<Codec> {
    match head {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Codec::Zstd),
        [0x1f, 0x8b, ..] => Some(Codec::Gzip),
        _ => None,
    }
}

/// Run the stream transform `op` from `input` to `output`, on the calling (blocking) thread.
/// `input` yields `Err` when the sender's source broke: nothing is finished then.
pub fn run(
    op: &Op,
    mut input: mpsc::Receiver<Result<Bytes, String>>,
    output: mpsc::Sender<Bytes>,
    limits: StreamLimits,
) -> Result<(), StreamError> {
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let decompressing = matches!(op, Op::Decompress { .. });
    let sink = Sink {
        tx: output,
        buf: Vec::with_capacity(PIECE),
        written: 0,
        limit: if decompressing {
            limits.max_output
        } else {
            u64::MAX
        },
        read: read.clone(),
        ratio: if decompressing { limits.max_ratio } else { 0 },
    };
    let mut next = || -> Result<Option<Bytes>, StreamError> {
        match input.blocking_recv() {
            None => Ok(None),
            Some(Ok(b)) => {
                read.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(b))
            }
            Some(Err(e)) => Err(StreamError::Invalid(format!("the source broke off: {e}"))),
        }
    };
    // Feed every input piece to `w`, then finish it and push what is left.
    fn pump<W: Write>(
        mut w: W,
        first: Option<Bytes>,
        next: &mut dyn FnMut() -> Result<Option<Bytes>, StreamError>,
        finish: impl FnOnce(W) -> io::Result<Sink>,
        what: &str,
        limits: &StreamLimits,
    ) -> Result<(), StreamError> {
        if let Some(b) = first {
            w.write_all(&b).map_err(|e| classify(e, what, limits))?;
        }
        while let Some(b) = next()? {
            w.write_all(&b).map_err(|e| classify(e, what, limits))?;
        }
        let mut sink = finish(w).map_err(|e| classify(e, what, limits))?;
        sink.push().map_err(|e| classify(e, what, limits))
    }
    match op {
        Op::Compress { codec, level } => match codec {
            Codec::Zstd => {
                let level = i32::try_from(*level).unwrap_or(3);
                let w = zstd::stream::write::Encoder::new(sink, level)
                    .map_err(|e| StreamError::Invalid(e.to_string()))?;
                pump(w, None, &mut next, |w| w.finish(), "zstd", &limits)
            }
            Codec::Gzip => {
                let w = flate2::write::GzEncoder::new(sink, flate2::Compression::new(*level));
                pump(w, None, &mut next, |w| w.finish(), "gzip", &limits)
            }
        },
        Op::Decompress { codec } => {
            // The codec is told from the first bytes unless given; they must agree.
            let mut first = next()?;
            while first.as_ref().is_some_and(|b| b.len() < 4) {
                match next()? {
                    Some(more) => {
                        let mut joined = first.take().unwrap_or_default().to_vec();
                        joined.extend_from_slice(&more);
                        first = Some(Bytes::from(joined));
                    }
                    None => break,
                }
            }
            let head = first.as_deref().unwrap_or(&[]);
            let found = sniff(head);
            let codec = match (codec, found) {
                (Some(c), Some(f)) if *c == f => f,
                (None, Some(f)) => f,
                (Some(c), _) => {
                    return Err(StreamError::Invalid(format!(
                        "the source is not {} data",
                        c.name()
                    )));
                }
                (None, None) => {
                    return Err(StreamError::Invalid(
                        "the source is not zstd or gzip data".into(),
                    ));
                }
            };
            match codec {
                Codec::Zstd => {
                    let w = zstd::stream::write::Decoder::new(sink)
                        .map_err(|e| StreamError::Invalid(e.to_string()))?;
                    pump(w, first, &mut next, |w| w.finish(), "zstd", &limits)
                }
                Codec::Gzip => {
                    let w = flate2::write::MultiGzDecoder::new(sink);
                    pump(w, first, &mut next, |w| w.finish(), "gzip", &limits)
                }
            }
        }
        _ => Err(StreamError::Invalid("not a stream transform".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Transform;

    /// Run a stream transform over `input` pieces; the output or the error.
    fn transform(t: &str, input: Vec<Vec<u8>>, limits: StreamLimits) -> Result<Vec<u8>, String> {
        let t = Transform::from_compact(t).unwrap();
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(4);
        let feeder = std::thread::spawn(move || {
            for b in input {
                if in_tx.blocking_send(Ok(Bytes::from(b))).is_err() {
                    return;
                }
            }
        });
        let collector = std::thread::spawn(move || {
            let mut out = Vec::new();
            while let Some(b) = out_rx.blocking_recv() {
                out.extend_from_slice(&b);
            }
            out
        });
        let r = run(&t.ops[0], in_rx, out_tx, limits);
        let out = collector.join().unwrap();
        feeder.join().unwrap();
        r.map(|()| out).map_err(|e| e.to_string())
    }

    const WIDE: StreamLimits = StreamLimits {
        max_output: u64::MAX,
        max_ratio: 1_000_000,
    };

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn compress_then_decompress_is_exact_for_both_codecs_and_any_piece_sizes() {
        let original = data(3 << 20);
        for codec in ["zstd", "gzip"] {
            let pieces: Vec<Vec<u8>> = original.chunks(100_003).map(<[u8]>::to_vec).collect();
            let packed = transform(&format!("compress:f={codec}"), pieces, WIDE).unwrap();
            assert_eq!(sniff(&packed).unwrap().name(), codec);
            assert!(packed.len() < original.len());
            // Fed back in tiny pieces (the 4-byte sniff must gather them), auto-detected.
            let pieces: Vec<Vec<u8>> = packed.chunks(3).map(<[u8]>::to_vec).collect();
            let back = transform("decompress", pieces, WIDE).unwrap();
            assert!(back == original, "{codec} round trip");
            let named =
                transform(&format!("decompress:f={codec}"), vec![packed.clone()], WIDE).unwrap();
            assert!(named == original);
        }
        // Empty in, valid empty stream out, and back.
        let packed = transform("compress", vec![], WIDE).unwrap();
        assert_eq!(transform("decompress", vec![packed], WIDE).unwrap(), b"");
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        // 256 MiB of zeros packs into a few KiB: stopped at 1000x (64 KiB floor).
        let zeros = vec![0u8; 1 << 20];
        let bomb = transform("compress:level=19", vec![zeros; 256], WIDE).unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let limits = StreamLimits {
            max_output: 10 << 30,
            max_ratio: 1000,
        };
        let t = std::time::Instant::now();
        let e = transform("decompress", vec![bomb.clone()], limits).unwrap_err();
        assert!(e.contains("over the limits"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let e = transform(
            "decompress",
            vec![bomb],
            StreamLimits {
                max_output: 1 << 20,
                max_ratio: 1_000_000,
            },
        )
        .unwrap_err();
        assert!(e.contains("over the limits"), "{e}");
        for (t, input, says) in [
            (
                "decompress",
                vec![b"hello world".to_vec()],
                "not zstd or gzip",
            ),
            ("decompress", vec![], "not zstd or gzip"),
            (
                "decompress:f=gzip",
                vec![vec![0x28, 0xb5, 0x2f, 0xfd, 0]],
                "not gzip",
            ),
            (
                "decompress",
                vec![vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6]],
                "damaged",
            ),
            (
                "decompress",
                vec![vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff]],
                "damaged",
            ),
        ] {
            let e = transform(t, input, WIDE).unwrap_err();
            assert!(e.contains(says), "{t}: {e}");
        }
        // A stream cut short is damaged, not a shorter file.
        let packed = transform("compress", vec![data(1 << 20)], WIDE).unwrap();
        let cut = packed[..packed.len() / 2].to_vec();
        let e = transform("decompress", vec![cut], WIDE).unwrap_err();
        assert!(e.contains("damaged") || e.contains("incomplete"), "{e}");
    }
}
