//! Arbitrary bytes from a hostile peer through the replication protocol's
//! streaming decoder, fed in chunks whose size the first byte picks, and
//! through the one-frame decoder. No panic; the decoder's buffer stays
//! bounded; after an error it stays in the error state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{decode_message, Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame_bytes: 1 << 20,
        ..Limits::default()
    };
    let _ = decode_message(rest, &limits);
    let mut decoder = Decoder::new(limits);
    let step = usize::from(step) + 1;
    let mut failed = false;
    for chunk in rest.chunks(step) {
        let mut fed = 0;
        while fed < chunk.len() {
            let n = decoder.feed(&chunk[fed..]);
            fed += n;
            loop {
                match decoder.next_message() {
                    Ok(Some(_)) => assert!(!failed, "a frame after an error"),
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(decoder.buffered_bytes() <= decoder.capacity_bytes());
            if n == 0 {
                // Buffer full without a complete frame, or in the error state.
                break;
            }
        }
        if failed {
            break;
        }
    }
});
