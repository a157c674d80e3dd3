//! What the fuzz targets (`services/transformer/fuzz`, run with `cargo fuzz`) exercise, as
//! plain functions: the property tests run them on generated inputs in every test run, and
//! libFuzzer runs them for as long as one likes. Each panics only on a broken invariant.

use crate::image_ops::{self, Limits};
use crate::ops::Transform;

/// The operation language: whatever parses has a canonical form that parses back to the
/// same transform and spells itself the same; JSON input likewise never panics.
pub fn ops(input: &[u8]) {
    let Ok(s) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(t) = Transform::from_compact(s) {
        let c = t.canonical();
        let again = Transform::from_compact(&c)
            .unwrap_or_else(|e| panic!("canonical {c:?} of {s:?} does not parse: {e}"));
        assert_eq!(again, t, "{s:?} -> {c:?}");
        assert_eq!(again.canonical(), c);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s)
        && let Ok(t) = Transform::from_json(&v)
    {
        assert_eq!(Transform::from_compact(&t.canonical()).as_ref(), Ok(&t));
    }
}

/// Small limits, so a fuzzer's inputs cannot make a run slow by being legitimately large.
pub const LIMITS: Limits = Limits {
    max_input_bytes: 1 << 20,
    max_pixels: 1 << 20,
    max_side: 4096,
};

/// The decode path under limits: any bytes end in an image or an error, never a panic, and
/// an image that decodes stays within the limits.
pub fn decode(input: &[u8]) {
    for t in ["resize:w=16/output:f=png", "crop:w=1,h=1/output:f=jpeg"] {
        let Ok(t) = Transform::from_compact(t) else {
            unreachable!("fixed transforms parse")
        };
        if let Ok(out) = image_ops::transform(input, &t, &LIMITS) {
            assert!(out.width <= 16 && out.height <= LIMITS.max_side);
        }
    }
    if let Ok((img, _)) = image_ops::decode(input, &LIMITS) {
        assert!(u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels);
    }
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The PNG `png` with its header claiming `w` x `h` (the IHDR CRC made right again): a
/// pixel bomb whose header is all a decoder gets to read. For tests and seeds.
pub fn png_claiming(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    if out.len() >= 33 {
        out[16..20].copy_from_slice(&w.to_be_bytes());
        out[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
    }
    out
}
