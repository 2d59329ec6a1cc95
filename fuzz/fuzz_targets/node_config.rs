//! A node configuration from anywhere: arbitrary text through
//! `NodeConfig::parse` (TOML, units, validation). No panic; a config it
//! accepts serializes back to TOML that parses to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = NodeConfig::parse(text) {
        let again = NodeConfig::parse(&config.to_toml()).expect("its own TOML parses");
        assert_eq!(again, config, "the TOML round trip changes nothing");
    }
});
