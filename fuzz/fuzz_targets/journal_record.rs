//! Arbitrary bytes through the journal's decoders: records (as recovery reads
//! them from a segment, one after another), segment headers, the superblock
//! and the dirty-bitmap file. No panic; a decoded record lies inside the
//! input; its payload passes the BLAKE3 check or is reported.
#![no_main]

use journal::format::{decode_bitmap_file, SegmentHeader, Superblock};
use journal::record::verify_digest;
use journal::{decode_record, Salt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seed, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let salt = Salt::from_seed(u32::from_le_bytes(*seed));
    // Walk records the way recovery does: decode, advance, stop at the first error.
    let mut pos = 0;
    while pos < rest.len() {
        match decode_record(&rest[pos..], &salt) {
            Ok(rec) => {
                assert!(rec.total_len > 0 && rec.total_len <= rest.len() - pos);
                assert!(rec.payload.end <= rec.total_len);
                let _ = verify_digest(&rec.header, &rest[pos..][rec.payload.clone()]);
                pos += rec.total_len;
            }
            Err(_) => break,
        }
    }
    let _ = SegmentHeader::decode(rest);
    let _ = Superblock::decode(rest);
    let _ = decode_bitmap_file(rest);
});
