//! Byte sizes in flags: `1048576`, `64KiB`, `256MiB`, `1GiB`, `10MB`.
//!
//! Parsed here rather than with a crate: the size crates parse through `f64` and saturate
//! on overflow (`99999999999GiB` would quietly become `u64::MAX`), and a limit that is not
//! what the operator wrote must be refused, not clamped.

/// Units, longest first so that `KiB` is not read as `K` + `iB`. Decimal units are powers
/// of 1000 and binary ones powers of 1024, as IEC 80000-13 has them.
const UNITS: &[(&str, u64)] = &[
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("b", 1),
];

/// A whole number of bytes, with an optional unit (case-insensitive, a space allowed
/// before it). Overflow is an error.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number = number.replace('_', "");
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a size: expected a whole number of bytes, with an optional unit \
             (64KiB, 256MiB, 1GiB, 10MB)"
        ));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let scale = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| {
                format!(
                    "{s:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
                )
            })?
    };
    let too_large = || format!("{s:?} is too large (at most {} bytes)", u64::MAX);
    number
        .parse::<u64>()
        .map_err(|_| too_large())?
        .checked_mul(scale)
        .ok_or_else(too_large)
}

/// A size within `min..=max`, as `u64`: a clap value parser.
pub fn u64_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n = parse_bytes(s)?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} bytes is outside {min}..={max}"))
        }
    }
}

/// A size within `min..=max`, as `usize` (a size that does not fit this machine's
/// `usize` is refused): a clap value parser.
pub fn usize_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    let inner = u64_between(min, max);
    move |s| {
        let n = inner(s)?;
        usize::try_from(n).map_err(|_| format!("{n} bytes does not fit in this machine's memory"))
    }
}

/// Any size as `u64`.
pub fn any_u64() -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    u64_between(0, u64::MAX)
}

/// Any size as `usize`.
pub fn any_usize() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    usize_between(0, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_and_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("256mib"), Ok(256 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("1kb"), Ok(1000));
        assert_eq!(parse_bytes("512B"), Ok(512));
        assert_eq!(parse_bytes("1_000_000"), Ok(1_000_000));
        assert_eq!(parse_bytes(&u64::MAX.to_string()), Ok(u64::MAX));
    }

    #[test]
    fn overflow_and_garbage_are_errors() {
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5GiB",
            "12 apples",
            "1K",
            "18446744073709551616",
            "16EiB",
            "17179869184GiB",
            "99999999999999999999MiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_bytes("17179869184GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn ranges_hold() {
        let p = u64_between(4096, u64::MAX);
        assert!(p("4KiB").is_ok());
        assert!(p("4095").is_err());
        let p = usize_between(1, 1 << 30);
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert!(p("1GB").is_ok());
        assert!(p("2GiB").is_err());
        assert!(p("0").is_err());
    }
}
