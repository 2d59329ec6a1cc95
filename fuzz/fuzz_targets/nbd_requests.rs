//! Arbitrary bytes through the transmission-phase request parser, with every
//! decoded request answered through the reply encoder.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use nbd_shim::codec::{Command, Decoded, ReplyFrame, RequestDecoder, TransmissionConfig};
use nbd_shim::proto::{transmission_flags as tf, REQUEST_HEADER_BYTES};
use nbd_shim::Extent;

const MAX_PAYLOAD_BYTES: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks the session shape and how reads are cut.
    let structured = mode & 1 != 0;
    let read_only = mode & 2 != 0;
    let context = mode & 4 != 0 && structured;
    let step = usize::from(mode >> 3) * 7 + 1;
    let mut flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA | tf::SEND_CACHE;
    if read_only {
        flags |= tf::READ_ONLY;
    } else {
        flags |= tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
    }
    if structured {
        flags |= tf::SEND_DF;
    }
    let cfg = TransmissionConfig {
        size_bytes: 1 << 24,
        transmission_flags: flags,
        structured_replies: structured,
        base_allocation_id: context.then_some(1),
        max_payload_bytes: MAX_PAYLOAD_BYTES,
        copy_write_payload_below_bytes: u32::from(mode) * 64,
    };
    let mut decoder = RequestDecoder::new(cfg);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            assert!(decoder.bytes_wanted() <= REQUEST_HEADER_BYTES + MAX_PAYLOAD_BYTES as usize);
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Request(req))) => answer(req.cookie, req.command, structured),
                Ok(Some(Decoded::Rejected(r))) => {
                    let f = ReplyFrame::error(r.cookie, structured, r.error, r.reason);
                    assert!(f.wire_len() >= 16);
                }
                Ok(Some(Decoded::Disconnect)) | Err(_) => return,
                Ok(None) => break,
            }
        }
        assert!(buf.len() < REQUEST_HEADER_BYTES + MAX_PAYLOAD_BYTES as usize + step);
    }
});

fn answer(cookie: u64, command: Command, structured: bool) {
    match command {
        Command::Read { offset, len } => {
            assert!(len > 0 && len <= MAX_PAYLOAD_BYTES);
            assert!(offset + u64::from(len) <= 1 << 24);
            let f = ReplyFrame::read(
                cookie,
                structured,
                offset,
                Bytes::from(vec![0u8; len as usize]),
            );
            assert_eq!(f.payload().len(), len as usize);
        }
        Command::Write { data, offset, .. } => {
            assert!(!data.is_empty() && data.len() <= MAX_PAYLOAD_BYTES as usize);
            assert!(offset + data.len() as u64 <= 1 << 24);
        }
        Command::BlockStatus {
            offset,
            len,
            req_one,
            context_id,
        } => {
            assert!(structured);
            // Extents derived from the request itself, some overlong.
            let extents: Vec<Extent> = (0..(offset % 5))
                .map(|i| Extent {
                    length_bytes: (offset >> (i * 8)) & 0xffff,
                    hole: i % 2 == 0,
                    zero: i % 3 == 0,
                })
                .collect();
            let f = ReplyFrame::block_status(cookie, context_id, &extents, len, req_one);
            let v = f.to_vec();
            let total: u64 = v[24..]
                .chunks_exact(8)
                .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .sum();
            assert!(total > 0 && total <= u64::from(len));
            if req_one {
                assert_eq!(v.len(), 32);
            }
        }
        _ => {
            let _ = ReplyFrame::ok(cookie, structured);
        }
    }
}
