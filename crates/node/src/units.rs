//! Sizes and durations with exact units, as storage people write them.
//!
//! Every unit means one thing: "MB" is 1000², "MiB" is 1024², and the
//! single-letter forms ("1G", "512M", "4k") that tools disagree on are
//! refused rather than guessed. Durations are `<integer><unit>` only.

use std::time::Duration;

/// Byte units as written, with their multiplier. Case matters: "mb" or
/// "kib" are refused, not guessed.
const SIZE_UNITS: [(&str, u64); 12] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("PB", 1_000_000_000_000_000),
];

/// Single letters that mean 1000ⁿ to some tools and 1024ⁿ to others, with
/// the exact binary and SI prefixes to suggest instead.
const AMBIGUOUS_UNITS: [(&str, &str, &str); 7] = [
    ("k", "Ki", "k"),
    ("K", "Ki", "k"),
    ("M", "Mi", "M"),
    ("G", "Gi", "G"),
    ("T", "Ti", "T"),
    ("P", "Pi", "P"),
    ("E", "Ei", "E"),
];

const SIZE_EXAMPLES: &str = "examples: \"4096\", \"4096B\", \"64KiB\", \"512 MiB\", \"1GiB\", \
                             \"1GB\" (KiB MiB GiB TiB PiB are 1024ⁿ; kB MB GB TB PB are 1000ⁿ)";

/// Parses a size in bytes: a plain integer ("4096"), or an integer with one
/// unit, optionally after a single space: "4096B", "64KiB", "512 MiB",
/// "1GiB" (binary, 1024ⁿ) or "1kB", "1KB", "1MB", "1GB", "1TB", "1PB" (SI,
/// 1000ⁿ). "1G", "512M", "4k" are refused as ambiguous; so is a value that
/// does not fit in 64 bits.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, rest) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a whole number of bytes, optionally with a unit ({SIZE_EXAMPLES})"
        ));
    }
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    if unit.is_empty() && !rest.is_empty() {
        return Err(format!(
            "invalid size {text:?}: a space must be followed by a unit ({SIZE_EXAMPLES})"
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else if let Some(&(_, m)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
        m
    } else if let Some((letter, binary, si)) = AMBIGUOUS_UNITS.iter().find(|(l, ..)| *l == unit) {
        return Err(format!(
            "ambiguous size {text:?}: \"{letter}\" means 1000 or 1024 depending on the tool; \
             write \"{number}{binary}B\" (×1024) or \"{number}{si}B\" (×1000), \
             e.g. \"1GiB\" or \"1GB\""
        ));
    } else {
        return Err(format!(
            "invalid size {text:?}: unknown unit {unit:?} ({SIZE_EXAMPLES})"
        ));
    };
    let n: u64 = number.parse().map_err(|_| {
        format!("invalid size {text:?}: {number} does not fit in 64 bits ({SIZE_EXAMPLES})")
    })?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: more than 2⁶⁴-1 bytes ({SIZE_EXAMPLES})"))
}

/// Duration units, largest first, in nanoseconds.
const DURATION_UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const DURATION_HELP: &str = "write <integer><unit> with no space, unit one of ns, us, ms, s, m, h \
                             (examples: \"500ms\", \"10s\", \"2m\", \"1m30s\")";

/// Parses a duration written `<integer><unit>` with unit one of ns, us, ms,
/// s, m (minutes), h: "500ms", "10s", "2m". Parts may follow each other
/// largest unit first, each unit once: "1m30s", "1h30m". Spaces, long names
/// ("2 sec", "2min", "2secs") and fractions are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("invalid duration {text:?}: {DURATION_HELP}"));
    }
    let mut total_ns: u128 = 0;
    let mut rest = text;
    // Index into DURATION_UNITS the next part's unit must come after.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let Some(index) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "invalid duration {text:?}: {}; {DURATION_HELP}",
                if number.is_empty() {
                    "expected a whole number first".to_string()
                } else if unit.is_empty() {
                    format!("{number} has no unit")
                } else {
                    format!("unknown unit {unit:?}")
                }
            ));
        };
        if number.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: expected a whole number before {unit:?}; {DURATION_HELP}"
            ));
        }
        if index < next_unit {
            return Err(format!(
                "invalid duration {text:?}: parts must go from the largest unit to the smallest, \
                 each unit once; {DURATION_HELP}"
            ));
        }
        next_unit = index + 1;
        let n: u128 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: {number} is too large"))?;
        total_ns = n
            .checked_mul(DURATION_UNITS[index].1)
            .and_then(|ns| total_ns.checked_add(ns))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000)
        .map_err(|_| format!("invalid duration {text:?}: too large"))?;
    let nanos = (total_ns % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a size the way [`parse_bytes`] reads it back: the largest
/// binary unit that divides it ("33MiB"), else bytes ("4097").
pub fn format_bytes(n: u64) -> String {
    for (unit, m) in [
        ("PiB", 1u64 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

/// Formats a duration the way [`parse_duration`] reads it back: whole
/// seconds as "10s", else milliseconds, microseconds or nanoseconds.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::{format_duration, parse_bytes, parse_duration};
    use std::time::Duration;

    #[test]
    fn sizes_round_trip() {
        use super::format_bytes;
        for (n, text) in [
            (0, "0"),
            (4097, "4097"),
            (4096, "4KiB"),
            (33 << 20, "33MiB"),
            (3 << 30, "3GiB"),
            ((1 << 30) + (1 << 20), "1025MiB"),
            (5 << 50, "5PiB"),
        ] {
            assert_eq!(format_bytes(n), text);
            assert_eq!(parse_bytes(text), Ok(n));
        }
    }

    #[test]
    fn plain_integers_and_bytes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("4096 B"), Ok(4096));
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn binary_units() {
        assert_eq!(parse_bytes("1KiB"), Ok(1 << 10));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
        assert_eq!(parse_bytes("1PiB"), Ok(1 << 50));
    }

    #[test]
    fn si_units() {
        assert_eq!(parse_bytes("1kB"), Ok(1_000));
        assert_eq!(parse_bytes("1KB"), Ok(1_000));
        assert_eq!(parse_bytes("256MB"), Ok(256_000_000));
        assert_eq!(parse_bytes("256 MB"), Ok(256_000_000));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("3TB"), Ok(3_000_000_000_000));
        assert_eq!(parse_bytes("1PB"), Ok(1_000_000_000_000_000));
    }

    #[test]
    fn single_letters_are_refused_as_ambiguous() {
        for text in ["1G", "512M", "4k", "4K", "2T", "1P", "1 G"] {
            let err = parse_bytes(text).unwrap_err();
            assert!(err.contains("ambiguous"), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
            assert!(err.contains("\"1GiB\" or \"1GB\""), "{text}: {err}");
        }
        let err = parse_bytes("512M").unwrap_err();
        assert!(
            err.contains("\"512MiB\"") && err.contains("\"512MB\""),
            "{err}"
        );
        let err = parse_bytes("4k").unwrap_err();
        assert!(err.contains("\"4KiB\"") && err.contains("\"4kB\""), "{err}");
    }

    #[test]
    fn other_forms_are_refused_naming_the_text_with_examples() {
        for text in [
            "", "lots", "-1GiB", "+1GiB", "1.5GiB", "1  GiB", "1GiB ", " 1GiB", "4096 ", "1gib",
            "1mb", "1Mb", "1kiB", "1Gi", "1 bytes", "GiB", "1EiB", "0x10",
        ] {
            let err = parse_bytes(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
            assert!(err.contains("1GiB"), "{text}: {err}");
        }
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(parse_bytes("18446744073709551616").is_err());
        assert!(parse_bytes("16384PiB").is_err());
        assert_eq!(parse_bytes("16383PiB"), Ok(16383 << 50));
        assert!(parse_bytes("20000PB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn loose_durations_are_refused_listing_the_units() {
        for text in [
            "", "soon", "2", "2 sec", "2min", "2secs", "2 s", "2sec", "1.5s", "-1s", "s", "10S",
            "1d", "1m 30s", "30s1m", "1s1s", "1ms1s", "2µs", " 2s", "2s ",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
            assert!(err.contains("ns, us, ms, s, m, h"), "{text}: {err}");
        }
    }

    #[test]
    fn duration_overflow_is_an_error() {
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551616s").is_err());
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(10),
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::from_nanos(7),
            Duration::from_secs(u64::MAX),
            Duration::new(3, 1),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
