//! Arbitrary bytes through the server handshake / option state machine.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nbd_shim::codec::{ExportInfo, Handshake, HandshakeLimits, HandshakeStatus};
use nbd_shim::proto::{transmission_flags as tf, OPTION_HEADER_BYTES};

const MAX_OPTION_BYTES: u32 = 1024;

fn exports() -> Vec<ExportInfo> {
    ["disk", ""]
        .iter()
        .map(|name| ExportInfo {
            name: (*name).into(),
            description: Some("fuzz".into()),
            size_bytes: 1 << 30,
            flags: tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA | tf::SEND_TRIM,
            min_block_bytes: 1,
            preferred_block_bytes: 4096,
            max_block_bytes: 1 << 25,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks how the stream is cut into socket reads.
    let step = usize::from(split % 64) + 1;
    let limits = HandshakeLimits {
        max_option_bytes: MAX_OPTION_BYTES,
        max_options: 64,
    };
    let mut hs = Handshake::new(exports(), limits);
    let _ = hs.take_output();
    let mut input = BytesMut::new();
    for piece in rest.chunks(step) {
        input.extend_from_slice(piece);
        assert!(hs.bytes_wanted(&input) <= OPTION_HEADER_BYTES + MAX_OPTION_BYTES as usize);
        match hs.advance(&mut input) {
            Ok(HandshakeStatus::NeedMore) => {
                // Never buffers more than one capped option plus one read.
                assert!(input.len() < OPTION_HEADER_BYTES + MAX_OPTION_BYTES as usize + step);
            }
            Ok(HandshakeStatus::Done(n)) => {
                assert!(n.export_index < 2);
                break;
            }
            Ok(HandshakeStatus::Aborted) | Err(_) => break,
        }
        let _ = hs.take_output();
    }
});
