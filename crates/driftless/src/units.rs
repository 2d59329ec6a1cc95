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

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1GiB").is_err());
    }
}
