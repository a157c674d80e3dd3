//! Byte ranges as HTTP writes them (RFC 9110 §14.1.2), one range: the CLI's `--range` and
//! the `Range: bytes=...` header.

/// Parse `a-b`, `a-` or `-n` against a file of `size` bytes into a half-open `start..end`.
pub fn parse(spec: &str, size: u64) -> Result<(u64, u64), String> {
    let bad = || format!("invalid range {spec:?}: use a-b, a- or -n (inclusive byte offsets)");
    let (a, b) = spec.trim().split_once('-').ok_or_else(bad)?;
    let num = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let unsatisfiable = || format!("range {spec:?} is outside the file ({size} bytes)");
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Err(bad()),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            Ok((size.saturating_sub(n), size))
        }
        (false, _) => {
            let start = num(a)?;
            let last = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                num(b)?
            };
            if last < start {
                return Err(bad());
            }
            if start >= size {
                return Err(unsatisfiable());
            }
            Ok((start, last.min(size - 1) + 1))
        }
    }
}

/// What a `Range` request header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRange {
    /// No usable range: serve everything (200). Unknown units, several ranges and invalid
    /// syntax are ignored, as RFC 9110 §14.2 allows.
    Whole,
    /// Serve `start..end` (206).
    Part(u64, u64),
    /// Well-formed but outside the representation (416).
    Unsatisfiable,
}

/// Interpret a `Range` header value.
pub fn from_header(value: &str, size: u64) -> HeaderRange {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return HeaderRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return HeaderRange::Whole;
    }
    let spec = spec.trim();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let well_formed = match spec.split_once('-') {
        Some(("", b)) => digits(b),
        Some((a, "")) => digits(a),
        Some((a, b)) => digits(a) && digits(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
        None => false,
    };
    if !well_formed {
        return HeaderRange::Whole;
    }
    match parse(spec, size) {
        Ok((start, end)) => HeaderRange::Part(start, end),
        Err(_) => HeaderRange::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderRange, from_header, parse};

    #[test]
    fn headers() {
        assert_eq!(from_header("bytes=0-9", 100), HeaderRange::Part(0, 10));
        assert_eq!(from_header("Bytes=-10", 100), HeaderRange::Part(90, 100));
        assert_eq!(from_header("bytes=90-", 100), HeaderRange::Part(90, 100));
        assert_eq!(from_header("bytes=100-", 100), HeaderRange::Unsatisfiable);
        assert_eq!(from_header("bytes=-0", 100), HeaderRange::Unsatisfiable);
        assert_eq!(from_header("bytes=0-0", 0), HeaderRange::Unsatisfiable);
        for ignored in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-2",
            "bytes=x",
            "0-1",
            "bytes=",
        ] {
            assert_eq!(from_header(ignored, 100), HeaderRange::Whole, "{ignored}");
        }
    }

    #[test]
    fn forms() {
        assert_eq!(parse("0-0", 10), Ok((0, 1)));
        assert_eq!(parse("2-5", 10), Ok((2, 6)));
        assert_eq!(parse("2-100", 10), Ok((2, 10)));
        assert_eq!(parse("7-", 10), Ok((7, 10)));
        assert_eq!(parse("-3", 10), Ok((7, 10)));
        assert_eq!(parse("-30", 10), Ok((0, 10)));
        for bad in [
            "", "-", "5-2", "a-b", "1-2-3", "-0", "10-", "10-12", "+1-2", "0-0", "-1",
        ] {
            let size = if bad == "0-0" || bad == "-1" { 0 } else { 10 };
            assert!(parse(bad, size).is_err(), "{bad} should fail");
        }
    }
}
