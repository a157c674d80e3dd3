//! The `--range` argument: HTTP's inclusive byte ranges (RFC 9110 §14.1.2), one range.

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

#[cfg(test)]
mod tests {
    use super::parse;

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
