//! Sizes with explicit units, as storage people write them.

/// Parses "1GiB", "512 MiB", "4096", "1G" (binary: G = GiB, like truncate(1)
/// and qemu-img).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| {
            format!("invalid size {text:?}: {e} (examples: \"1GiB\", \"512MiB\", \"4096\")")
        })
}

/// Parses "500ms", "10s", "2m" (humantime syntax).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: \"500ms\", \"10s\")"))
}

/// Formats a duration the way [`parse_duration`] reads it back: whole
/// seconds as "10s", else milliseconds, microseconds or nanoseconds.
pub fn format_duration(d: std::time::Duration) -> String {
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
    fn binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(super::parse_duration("0s"), Ok(std::time::Duration::ZERO));
        assert!(super::parse_duration("soon").is_err());
    }

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(10),
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::from_nanos(7),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
