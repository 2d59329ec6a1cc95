//! Codec unit tests: every option, command and flag, and malformed input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::error::NbdError;
use crate::proto::{
    self, client_flags, cmd, cmd_flags, error as e, info, opt, rep, reply_flags, reply_type,
    transmission_flags as tf,
};
use crate::target::{Durability, Extent, ZeroFlags};

const BASE_FLAGS: u16 = tf::HAS_FLAGS
    | tf::SEND_FLUSH
    | tf::SEND_FUA
    | tf::CAN_MULTI_CONN
    | tf::SEND_TRIM
    | tf::SEND_WRITE_ZEROES
    | tf::SEND_FAST_ZERO
    | tf::SEND_CACHE;

fn exports() -> Vec<ExportInfo> {
    vec![
        ExportInfo {
            name: "disk".into(),
            description: Some("the main disk".into()),
            size_bytes: 1 << 20,
            flags: BASE_FLAGS,
            min_block_bytes: 1,
            preferred_block_bytes: 4096,
            max_block_bytes: 32 << 20,
        },
        ExportInfo {
            name: "ro".into(),
            description: None,
            size_bytes: 8192,
            flags: tf::HAS_FLAGS | tf::READ_ONLY | tf::SEND_FLUSH | tf::SEND_FUA,
            min_block_bytes: 1,
            preferred_block_bytes: 4096,
            max_block_bytes: 32 << 20,
        },
    ]
}

fn option(option: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

#[derive(Debug, PartialEq, Eq)]
struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

fn parse_replies(mut out: &[u8]) -> Vec<OptReply> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert!(out.len() >= 20, "truncated option reply");
        assert_eq!(&out[0..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
        let option = u32::from_be_bytes(out[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(out[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        v.push(OptReply {
            option,
            kind,
            data: out[20..20 + len].to_vec(),
        });
        out = &out[20 + len..];
    }
    v
}

/// A handshake past the greeting and client flags.
fn started(flags: u32) -> Handshake {
    let mut hs = Handshake::new(exports(), HandshakeLimits::default());
    let greeting = hs.take_output();
    assert_eq!(greeting.len(), 18);
    let mut input = BytesMut::from(&flags.to_be_bytes()[..]);
    assert_eq!(hs.advance(&mut input).unwrap(), HandshakeStatus::NeedMore);
    hs
}

fn run(hs: &mut Handshake, bytes: &[u8]) -> (Result<HandshakeStatus, NbdError>, Vec<u8>) {
    let mut input = BytesMut::from(bytes);
    let status = hs.advance(&mut input);
    (status, hs.take_output().to_vec())
}

fn fixed() -> u32 {
    client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES
}

#[test]
fn greeting_is_fixed_newstyle_with_no_zeroes() {
    let mut hs = Handshake::new(exports(), HandshakeLimits::default());
    let g = hs.take_output();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..18], &[0, 3]);
}

#[test]
fn unknown_client_flags_disconnect() {
    let mut hs = Handshake::new(exports(), HandshakeLimits::default());
    let mut input = BytesMut::from(&4u32.to_be_bytes()[..]);
    assert!(matches!(
        hs.advance(&mut input),
        Err(NbdError::UnknownClientFlags { flags: 4 })
    ));
}

#[test]
fn export_name_honours_no_zeroes() {
    let mut hs = started(fixed());
    let (st, out) = run(&mut hs, &option(opt::EXPORT_NAME, b"disk"));
    let HandshakeStatus::Done(n) = st.unwrap() else {
        panic!("not done")
    };
    assert_eq!(n.export_index, 0);
    assert_eq!(out.len(), 10);
    assert_eq!(&out[0..8], &(1u64 << 20).to_be_bytes());
    assert_eq!(u16::from_be_bytes([out[8], out[9]]), BASE_FLAGS);

    let mut hs = started(client_flags::FIXED_NEWSTYLE);
    let (st, out) = run(&mut hs, &option(opt::EXPORT_NAME, b"ro"));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(_)));
    assert_eq!(out.len(), 10 + 124);
    assert!(out[10..].iter().all(|&b| b == 0));
}

#[test]
fn export_name_empty_is_default_and_unknown_disconnects() {
    let mut hs = started(fixed());
    let (st, _) = run(&mut hs, &option(opt::EXPORT_NAME, b""));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(n) if n.export_index == 0));
    let mut hs = started(fixed());
    let (st, _) = run(&mut hs, &option(opt::EXPORT_NAME, b"nope"));
    assert!(matches!(st, Err(NbdError::UnknownExport { .. })));
}

#[test]
fn abort_is_acked() {
    let mut hs = started(fixed());
    let (st, out) = run(&mut hs, &option(opt::ABORT, b""));
    assert_eq!(st.unwrap(), HandshakeStatus::Aborted);
    let r = parse_replies(&out);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].option, r[0].kind), (opt::ABORT, rep::ACK));
    // Terminal: further input is not consumed.
    assert_eq!(
        hs.advance(&mut BytesMut::from(&b"junk"[..])).unwrap(),
        HandshakeStatus::Aborted
    );
}

#[test]
fn list_sends_every_export_then_ack() {
    let mut hs = started(fixed());
    let (st, out) = run(&mut hs, &option(opt::LIST, b""));
    assert_eq!(st.unwrap(), HandshakeStatus::NeedMore);
    let r = parse_replies(&out);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].kind, rep::SERVER);
    // Name length, name, then the description as the reply's details.
    assert_eq!(&r[0].data[..8], &[0, 0, 0, 4, b'd', b'i', b's', b'k']);
    assert_eq!(&r[0].data[8..], b"the main disk");
    assert_eq!(&r[1].data[4..], b"ro");
    assert_eq!(r[2].kind, rep::ACK);

    let (_, out) = run(&mut hs, &option(opt::LIST, b"x"));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID);
}

#[test]
fn info_reports_requested_items_and_go_matches() {
    let mut hs = started(fixed());
    let req = [
        info::NAME,
        info::DESCRIPTION,
        info::BLOCK_SIZE,
        info::NAME,
        99,
    ];
    let (st, out) = run(&mut hs, &option(opt::INFO, &info_payload("disk", &req)));
    assert_eq!(st.unwrap(), HandshakeStatus::NeedMore);
    let r = parse_replies(&out);
    let kinds: Vec<u16> = r
        .iter()
        .filter(|x| x.kind == rep::INFO)
        .map(|x| u16::from_be_bytes([x.data[0], x.data[1]]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            info::EXPORT,
            info::NAME,
            info::DESCRIPTION,
            info::BLOCK_SIZE
        ]
    );
    let export_info = r[0].data.clone();
    assert_eq!(&export_info[2..10], &(1u64 << 20).to_be_bytes());
    assert_eq!(&r[1].data[2..], b"disk");
    assert_eq!(&r[2].data[2..], b"the main disk");
    assert_eq!(
        &r[3].data[2..],
        &[0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0][..]
    );
    assert_eq!(r.last().unwrap().kind, rep::ACK);

    let (st, out) = run(&mut hs, &option(opt::GO, &info_payload("disk", &[])));
    let HandshakeStatus::Done(n) = st.unwrap() else {
        panic!()
    };
    let r = parse_replies(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].data, export_info, "INFO and GO must agree");
    assert_eq!(n.transmission_flags, BASE_FLAGS);
    assert!(!n.structured_replies);
}

#[test]
fn info_without_description_skips_it() {
    let mut hs = started(fixed());
    let (_, out) = run(
        &mut hs,
        &option(opt::INFO, &info_payload("ro", &[info::DESCRIPTION])),
    );
    let r = parse_replies(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].kind, rep::ACK);
}

#[test]
fn info_unknown_and_malformed_keep_the_session() {
    let mut hs = started(fixed());
    let (st, out) = run(&mut hs, &option(opt::GO, &info_payload("nope", &[])));
    assert_eq!(st.unwrap(), HandshakeStatus::NeedMore);
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_UNKNOWN);
    for bad in [
        vec![],
        vec![0, 0, 0, 9, b'a'],
        {
            let mut p = info_payload("disk", &[1]);
            p.push(0);
            p
        },
        {
            let mut p = info_payload("disk", &[1, 2]);
            p.truncate(p.len() - 2);
            p
        },
    ] {
        let (st, out) = run(&mut hs, &option(opt::INFO, &bad));
        assert_eq!(st.unwrap(), HandshakeStatus::NeedMore);
        assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID, "{bad:?}");
    }
    let (st, _) = run(&mut hs, &option(opt::GO, &info_payload("ro", &[])));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(n) if n.export_index == 1));
}

#[test]
fn structured_reply_enables_df() {
    let mut hs = started(fixed());
    let (_, out) = run(&mut hs, &option(opt::STRUCTURED_REPLY, b"x"));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID);
    let (_, out) = run(&mut hs, &option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(parse_replies(&out)[0].kind, rep::ACK);
    let (st, out) = run(&mut hs, &option(opt::GO, &info_payload("disk", &[])));
    let HandshakeStatus::Done(n) = st.unwrap() else {
        panic!()
    };
    assert!(n.structured_replies);
    assert_eq!(n.transmission_flags, BASE_FLAGS | tf::SEND_DF);
    let r = parse_replies(&out);
    assert_eq!(
        u16::from_be_bytes([r[0].data[10], r[0].data[11]]),
        BASE_FLAGS | tf::SEND_DF
    );
    assert_eq!(n.base_allocation_id, None);
}

#[test]
fn meta_context_needs_structured_replies() {
    let mut hs = started(fixed());
    for o in [opt::LIST_META_CONTEXT, opt::SET_META_CONTEXT] {
        let (_, out) = run(
            &mut hs,
            &option(o, &meta_payload("disk", &["base:allocation"])),
        );
        assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID);
    }
}

#[test]
fn list_meta_context_queries() {
    let mut hs = started(fixed());
    let _ = run(&mut hs, &option(opt::STRUCTURED_REPLY, b""));
    for (queries, listed) in [
        (&[][..], true),
        (&["base:"][..], true),
        (&["base:allocation"][..], true),
        (&["qemu:dirty-bitmap:x", "base:allocation"][..], true),
        (&["x-foo:bar"][..], false),
    ] {
        let (_, out) = run(
            &mut hs,
            &option(opt::LIST_META_CONTEXT, &meta_payload("disk", queries)),
        );
        let r = parse_replies(&out);
        if listed {
            assert_eq!(r.len(), 2, "{queries:?}");
            assert_eq!(r[0].kind, rep::META_CONTEXT);
            assert_eq!(&r[0].data[0..4], &[0, 0, 0, 0]);
            assert_eq!(&r[0].data[4..], b"base:allocation");
        } else {
            assert_eq!(r.len(), 1);
        }
        assert_eq!(r.last().unwrap().kind, rep::ACK);
    }
    let (_, out) = run(
        &mut hs,
        &option(opt::LIST_META_CONTEXT, &meta_payload("nope", &[])),
    );
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_UNKNOWN);
    let mut bad = meta_payload("disk", &["base:allocation"]);
    bad.push(7);
    let (_, out) = run(&mut hs, &option(opt::LIST_META_CONTEXT, &bad));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID);
    // A query count far larger than the payload.
    let mut bad = meta_payload("disk", &[]);
    let n = bad.len();
    bad[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    let (_, out) = run(&mut hs, &option(opt::LIST_META_CONTEXT, &bad));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_INVALID);
}

#[test]
fn set_meta_context_selects_base_allocation_for_that_export() {
    let mut hs = started(fixed());
    let _ = run(&mut hs, &option(opt::STRUCTURED_REPLY, b""));
    let (_, out) = run(
        &mut hs,
        &option(opt::SET_META_CONTEXT, &meta_payload("disk", &["base:"])),
    );
    assert_eq!(parse_replies(&out).len(), 1, "base: alone selects nothing");
    let (_, out) = run(
        &mut hs,
        &option(
            opt::SET_META_CONTEXT,
            &meta_payload("disk", &["base:allocation"]),
        ),
    );
    let r = parse_replies(&out);
    assert_eq!(r[0].kind, rep::META_CONTEXT);
    assert_eq!(&r[0].data[0..4], &proto::BASE_ALLOCATION_ID.to_be_bytes());
    assert_eq!(r[1].kind, rep::ACK);
    let mut other = Handshake::new(exports(), HandshakeLimits::default());
    std::mem::swap(&mut other, &mut hs);
    let (st, _) = run(&mut other, &option(opt::GO, &info_payload("disk", &[])));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(n) if n.base_allocation_id == Some(1)));

    // Selected for "disk" but GO on "ro": no context.
    let mut hs = started(fixed());
    let _ = run(&mut hs, &option(opt::STRUCTURED_REPLY, b""));
    let _ = run(
        &mut hs,
        &option(
            opt::SET_META_CONTEXT,
            &meta_payload("disk", &["base:allocation"]),
        ),
    );
    let (st, _) = run(&mut hs, &option(opt::GO, &info_payload("ro", &[])));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(n) if n.base_allocation_id.is_none()));
}

#[test]
fn unsupported_options_are_refused_and_the_session_continues() {
    let mut hs = started(fixed());
    for o in [
        opt::EXTENDED_HEADERS,
        opt::STARTTLS,
        opt::PEEK_EXPORT,
        999,
        0x8000_0000,
    ] {
        let (st, out) = run(&mut hs, &option(o, b"some payload"));
        assert_eq!(st.unwrap(), HandshakeStatus::NeedMore);
        let r = parse_replies(&out);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].option, r[0].kind), (o, rep::ERR_UNSUP));
    }
    // qemu 10: EXTENDED_HEADERS first, then structured replies and GO.
    let mut bytes = option(opt::EXTENDED_HEADERS, b"");
    bytes.extend(option(opt::STRUCTURED_REPLY, b""));
    bytes.extend(option(opt::GO, &info_payload("disk", &[info::BLOCK_SIZE])));
    let (st, out) = run(&mut hs, &bytes);
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(n) if n.structured_replies));
    let kinds: Vec<u32> = parse_replies(&out).iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![rep::ERR_UNSUP, rep::ACK, rep::INFO, rep::INFO, rep::ACK]
    );
}

#[test]
fn huge_option_is_drained_in_steps_and_refused() {
    let limits = HandshakeLimits::default();
    let mut hs = started(fixed());
    let len = 10 * 1024 * 1024u32;
    let mut header = Vec::new();
    header.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    header.extend_from_slice(&opt::INFO.to_be_bytes());
    header.extend_from_slice(&len.to_be_bytes());
    let mut input = BytesMut::from(&header[..]);
    assert_eq!(hs.advance(&mut input).unwrap(), HandshakeStatus::NeedMore);
    let chunk = vec![0xAAu8; 64 * 1024];
    let mut sent = 0u32;
    while sent < len {
        assert!(hs.bytes_wanted(&input) <= limits.max_option_bytes as usize + 16);
        input.extend_from_slice(&chunk);
        sent += chunk.len() as u32;
        assert_eq!(hs.advance(&mut input).unwrap(), HandshakeStatus::NeedMore);
        assert!(input.is_empty());
    }
    let r = parse_replies(&hs.take_output());
    assert_eq!((r[0].option, r[0].kind), (opt::INFO, rep::ERR_TOO_BIG));
    let (st, _) = run(&mut hs, &option(opt::GO, &info_payload("disk", &[])));
    assert!(matches!(st.unwrap(), HandshakeStatus::Done(_)));
}

#[test]
fn huge_export_name_disconnects() {
    let mut hs = started(fixed());
    let mut header = Vec::new();
    header.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    header.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    let (st, _) = run(&mut hs, &header);
    assert!(matches!(st, Err(NbdError::OptionTooLarge { .. })));
}

#[test]
fn bad_option_magic_and_too_many_options_disconnect() {
    let mut hs = started(fixed());
    let (st, _) = run(&mut hs, &[0u8; 16]);
    assert!(matches!(st, Err(NbdError::BadOptionMagic { .. })));

    let mut hs = Handshake::new(
        exports(),
        HandshakeLimits {
            max_option_bytes: 1024,
            max_options: 3,
        },
    );
    let mut bytes = fixed().to_be_bytes().to_vec();
    for _ in 0..4 {
        bytes.extend(option(opt::LIST, b""));
    }
    let (st, _) = run(&mut hs, &bytes);
    assert!(matches!(st, Err(NbdError::TooManyOptions { limit: 3 })));
}

#[test]
fn byte_by_byte_equals_all_at_once_and_leftovers_stay() {
    let mut bytes = fixed().to_be_bytes().to_vec();
    bytes.extend(option(opt::STRUCTURED_REPLY, b""));
    bytes.extend(option(opt::LIST, b""));
    bytes.extend(option(
        opt::SET_META_CONTEXT,
        &meta_payload("disk", &["base:allocation"]),
    ));
    bytes.extend(option(opt::GO, &info_payload("disk", &[info::NAME])));
    bytes.extend_from_slice(b"REQUEST BYTES");

    let mut whole = Handshake::new(exports(), HandshakeLimits::default());
    let mut input = BytesMut::from(&bytes[..]);
    let st_whole = whole.advance(&mut input).unwrap();
    assert_eq!(&input[..], b"REQUEST BYTES");
    let out_whole = whole.take_output();

    let mut piecewise = Handshake::new(exports(), HandshakeLimits::default());
    let mut input = BytesMut::new();
    let mut st = HandshakeStatus::NeedMore;
    for &b in &bytes {
        input.put_u8(b);
        st = piecewise.advance(&mut input).unwrap();
    }
    assert_eq!(st, st_whole);
    assert_eq!(piecewise.take_output(), out_whole);
}

#[test]
fn options_after_go_are_a_transmission_protocol_error() {
    let mut bytes = fixed().to_be_bytes().to_vec();
    bytes.extend(option(opt::GO, &info_payload("disk", &[])));
    bytes.extend(option(opt::LIST, b"xxxxxxxxxxxx"));
    let mut hs = Handshake::new(exports(), HandshakeLimits::default());
    let mut input = BytesMut::from(&bytes[..]);
    let HandshakeStatus::Done(n) = hs.advance(&mut input).unwrap() else {
        panic!()
    };
    let mut d = RequestDecoder::new(TransmissionConfig {
        size_bytes: n.size_bytes,
        transmission_flags: n.transmission_flags,
        structured_replies: n.structured_replies,
        base_allocation_id: n.base_allocation_id,
        max_payload_bytes: 1 << 20,
        copy_write_payload_below_bytes: 0,
    });
    assert!(matches!(
        d.decode(&mut input),
        Err(NbdError::BadRequestMagic { .. })
    ));
}

// ---- transmission ----

fn cfg() -> TransmissionConfig {
    TransmissionConfig {
        size_bytes: 1 << 20,
        transmission_flags: BASE_FLAGS | tf::SEND_DF,
        structured_replies: true,
        base_allocation_id: Some(1),
        max_payload_bytes: 64 * 1024,
        copy_write_payload_below_bytes: 512,
    }
}

fn req(flags: u16, command: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    v.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&command.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn decode_one(cfg: TransmissionConfig, bytes: &[u8]) -> Decoded {
    let mut d = RequestDecoder::new(cfg);
    let mut buf = BytesMut::from(bytes);
    let out = d.decode(&mut buf).unwrap().expect("one event");
    assert!(buf.is_empty(), "all input consumed");
    out
}

fn rejected(d: Decoded) -> u32 {
    match d {
        Decoded::Rejected(r) => r.error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn command(d: Decoded) -> Command {
    match d {
        Decoded::Request(r) => r.command,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn read_and_cache_and_flush() {
    assert_eq!(
        command(decode_one(cfg(), &req(0, cmd::READ, 7, 4096, 512))),
        Command::Read {
            offset: 4096,
            len: 512
        }
    );
    assert_eq!(
        command(decode_one(cfg(), &req(cmd_flags::DF, cmd::READ, 7, 0, 512))),
        Command::Read {
            offset: 0,
            len: 512
        }
    );
    assert_eq!(
        command(decode_one(cfg(), &req(0, cmd::CACHE, 7, 0, 65536 * 4))),
        Command::Cache {
            offset: 0,
            len: 65536 * 4
        }
    );
    assert_eq!(
        command(decode_one(cfg(), &req(cmd_flags::FUA, cmd::FLUSH, 7, 0, 0))),
        Command::Flush
    );
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::FLUSH, 7, 1, 0))),
        e::EINVAL
    );
}

#[test]
fn write_payload_is_split_off_and_waits_for_all_bytes() {
    let mut d = RequestDecoder::new(cfg());
    let mut bytes = req(cmd_flags::FUA, cmd::WRITE, 9, 512, 1000);
    bytes.extend(std::iter::repeat_n(0x5a, 1000));
    bytes.extend(req(0, cmd::READ, 10, 0, 1));
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.put_u8(b);
        let ev = d.decode(&mut buf).unwrap();
        if i == 28 + 1000 - 1 {
            let Some(Decoded::Request(r)) = ev else {
                panic!("write expected")
            };
            assert_eq!(r.cookie, 9);
            assert_eq!(
                r.command,
                Command::Write {
                    offset: 512,
                    data: Bytes::from(vec![0x5a; 1000]),
                    durability: Durability::Fua
                }
            );
        } else if i == bytes.len() - 1 {
            assert!(matches!(ev, Some(Decoded::Request(r)) if r.cookie == 10));
        } else {
            assert!(ev.is_none(), "event at byte {i}");
            assert!(d.bytes_wanted() <= 28 + 64 * 1024);
        }
    }
}

#[test]
fn truncated_header_needs_more() {
    let mut d = RequestDecoder::new(cfg());
    let bytes = req(0, cmd::READ, 1, 0, 512);
    let mut buf = BytesMut::from(&bytes[..27]);
    assert!(d.decode(&mut buf).unwrap().is_none());
    assert_eq!(buf.len(), 27);
    assert_eq!(d.bytes_wanted(), 28);
}

#[test]
fn bad_magic_is_a_named_error() {
    let mut d = RequestDecoder::new(cfg());
    let mut bytes = req(0, cmd::READ, 1, 0, 512);
    bytes[0] = 0x26;
    let err = d.decode(&mut BytesMut::from(&bytes[..])).unwrap_err();
    assert!(matches!(
        err,
        NbdError::BadRequestMagic {
            magic: 0x26609513,
            ..
        }
    ));
    assert!(err.to_string().contains("0x26609513"));
    // Closed afterwards: nothing more is decoded.
    let mut more = BytesMut::from(&req(0, cmd::READ, 1, 0, 512)[..]);
    assert!(d.decode(&mut more).unwrap().is_none());
}

#[test]
fn unknown_command_and_flags_are_einval() {
    for c in [cmd::RESIZE, 9, 0xffff] {
        assert_eq!(rejected(decode_one(cfg(), &req(0, c, 1, 0, 0))), e::EINVAL);
    }
    for (flags, c) in [
        (cmd_flags::NO_HOLE, cmd::READ),
        (cmd_flags::REQ_ONE, cmd::READ),
        (cmd_flags::PAYLOAD_LEN, cmd::READ),
        (1 << 9, cmd::READ),
        (cmd_flags::DF, cmd::BLOCK_STATUS),
        (cmd_flags::FAST_ZERO, cmd::TRIM),
        (cmd_flags::NO_HOLE, cmd::CACHE),
    ] {
        assert_eq!(
            rejected(decode_one(cfg(), &req(flags, c, 1, 0, 512))),
            e::EINVAL,
            "flags {flags:#x} on {}",
            cmd::name(c)
        );
    }
    // DF is only valid with structured replies.
    let mut c = cfg();
    c.structured_replies = false;
    c.transmission_flags &= !tf::SEND_DF;
    assert_eq!(
        rejected(decode_one(c, &req(cmd_flags::DF, cmd::READ, 1, 0, 512))),
        e::EINVAL
    );
}

#[test]
fn rejected_write_payload_is_consumed() {
    let mut d = RequestDecoder::new(cfg());
    let mut bytes = req(1 << 9, cmd::WRITE, 3, 0, 100);
    bytes.extend([1u8; 100]);
    bytes.extend(req(0, cmd::READ, 4, 0, 1));
    let mut buf = BytesMut::from(&bytes[..]);
    let Some(Decoded::Rejected(r)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!((r.cookie, r.error), (3, e::EINVAL));
    assert!(matches!(d.decode(&mut buf).unwrap(), Some(Decoded::Request(r)) if r.cookie == 4));
}

#[test]
fn ranges_past_the_end_and_overflow() {
    let size = 1u64 << 20;
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::READ, 1, size - 511, 512))),
        e::EINVAL
    );
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::READ, 1, size + 1, 0))),
        e::EINVAL
    );
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::BLOCK_STATUS, 1, size, 1))),
        e::EINVAL
    );
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::CACHE, 1, size, 1))),
        e::EINVAL
    );
    for c in [cmd::TRIM, cmd::WRITE_ZEROES] {
        assert_eq!(
            rejected(decode_one(cfg(), &req(0, c, 1, size - 1, 2))),
            e::ENOSPC
        );
    }
    let mut w = req(0, cmd::WRITE, 1, size - 1, 2);
    w.extend([0, 0]);
    assert_eq!(rejected(decode_one(cfg(), &w)), e::ENOSPC);
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::READ, 1, u64::MAX, 2))),
        e::EINVAL
    );
    // Exactly up to the end is fine.
    assert!(matches!(
        decode_one(cfg(), &req(0, cmd::READ, 1, size - 512, 512)),
        Decoded::Request(_)
    ));
}

#[test]
fn zero_length_requests() {
    for c in [
        cmd::READ,
        cmd::WRITE,
        cmd::TRIM,
        cmd::WRITE_ZEROES,
        cmd::CACHE,
    ] {
        assert_eq!(
            command(decode_one(cfg(), &req(0, c, 1, 4096, 0))),
            Command::Noop { command: c }
        );
    }
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::BLOCK_STATUS, 1, 0, 0))),
        e::EINVAL
    );
}

#[test]
fn oversize_payloads() {
    let max = cfg().max_payload_bytes;
    assert_eq!(
        rejected(decode_one(cfg(), &req(0, cmd::READ, 1, 0, max + 1))),
        e::EINVAL
    );
    assert!(matches!(
        decode_one(cfg(), &req(0, cmd::READ, 1, 0, max)),
        Decoded::Request(_)
    ));
    // Oversize WRITE (even past the end and with u32::MAX length): drained in
    // bounded steps, never buffered, then EINVAL, and the stream stays in sync.
    let mut d = RequestDecoder::new(cfg());
    let mut buf = BytesMut::from(&req(0, cmd::WRITE, 5, 0, 1 << 22)[..]);
    assert!(d.decode(&mut buf).unwrap().is_none());
    let chunk = vec![7u8; 1 << 16];
    for _ in 0..(1 << 6) - 1 {
        buf.extend_from_slice(&chunk);
        assert!(d.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(d.bytes_wanted() <= 256 * 1024);
    }
    buf.extend_from_slice(&chunk);
    buf.extend_from_slice(&req(0, cmd::FLUSH, 6, 0, 0));
    let Some(Decoded::Rejected(r)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!((r.cookie, r.error), (5, e::EINVAL));
    assert!(matches!(
        d.decode(&mut buf).unwrap(),
        Some(Decoded::Request(Request {
            cookie: 6,
            command: Command::Flush
        }))
    ));
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mut c = cfg();
    c.transmission_flags = tf::HAS_FLAGS | tf::READ_ONLY | tf::SEND_FLUSH | tf::SEND_FUA;
    let mut d = RequestDecoder::new(c);
    let mut bytes = req(0, cmd::WRITE, 1, 0, 4);
    bytes.extend([1, 2, 3, 4]);
    bytes.extend(req(0, cmd::TRIM, 2, 0, 4));
    bytes.extend(req(0, cmd::WRITE_ZEROES, 3, 0, 4));
    bytes.extend(req(0, cmd::READ, 4, 0, 4));
    let mut buf = BytesMut::from(&bytes[..]);
    for cookie in 1..=3 {
        let Some(Decoded::Rejected(r)) = d.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!((r.cookie, r.error), (cookie, e::EPERM));
    }
    assert!(matches!(
        d.decode(&mut buf).unwrap(),
        Some(Decoded::Request(_))
    ));
    assert!(buf.is_empty());
}

#[test]
fn trim_and_write_zeroes_flags() {
    assert_eq!(
        command(decode_one(
            cfg(),
            &req(cmd_flags::FUA, cmd::TRIM, 1, 0, 4096)
        )),
        Command::Trim {
            offset: 0,
            len: 4096,
            durability: Durability::Fua
        }
    );
    assert_eq!(
        command(decode_one(cfg(), &req(0, cmd::WRITE_ZEROES, 1, 0, 4096))),
        Command::WriteZeroes {
            offset: 0,
            len: 4096,
            flags: ZeroFlags {
                durability: Durability::Buffered,
                may_trim: true,
                fast_only: false
            }
        }
    );
    let all = cmd_flags::FUA | cmd_flags::NO_HOLE | cmd_flags::FAST_ZERO;
    assert_eq!(
        command(decode_one(cfg(), &req(all, cmd::WRITE_ZEROES, 1, 0, 4096))),
        Command::WriteZeroes {
            offset: 0,
            len: 4096,
            flags: ZeroFlags {
                durability: Durability::Fua,
                may_trim: false,
                fast_only: true
            }
        }
    );
    let mut c = cfg();
    c.transmission_flags &= !tf::SEND_FAST_ZERO;
    assert_eq!(
        rejected(decode_one(
            c,
            &req(cmd_flags::FAST_ZERO, cmd::WRITE_ZEROES, 1, 0, 4096)
        )),
        e::EINVAL
    );
    // Commands the export did not advertise.
    let mut c = cfg();
    c.transmission_flags &= !(tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_CACHE);
    for command in [cmd::TRIM, cmd::WRITE_ZEROES, cmd::CACHE] {
        assert_eq!(
            rejected(decode_one(c, &req(0, command, 1, 0, 4096))),
            e::EINVAL
        );
    }
}

#[test]
fn block_status_needs_the_context() {
    assert_eq!(
        command(decode_one(
            cfg(),
            &req(cmd_flags::REQ_ONE, cmd::BLOCK_STATUS, 1, 0, 1 << 20)
        )),
        Command::BlockStatus {
            offset: 0,
            len: 1 << 20,
            req_one: true,
            context_id: 1
        }
    );
    let mut c = cfg();
    c.base_allocation_id = None;
    assert_eq!(
        rejected(decode_one(c, &req(0, cmd::BLOCK_STATUS, 1, 0, 512))),
        e::EINVAL
    );
}

#[test]
fn disc_ends_decoding() {
    let mut d = RequestDecoder::new(cfg());
    let mut bytes = req(0, cmd::DISC, 1, 0, 0);
    bytes.extend(req(0, cmd::READ, 2, 0, 1));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Disconnect));
    assert!(d.decode(&mut buf).unwrap().is_none());
    assert_eq!(d.bytes_wanted(), 0);
}

// ---- replies ----

#[test]
fn simple_replies() {
    let ok = ReplyFrame::ok(0x1122, false).to_vec();
    assert_eq!(ok.len(), 16);
    assert_eq!(&ok[0..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&ok[4..8], &[0; 4]);
    assert_eq!(&ok[8..16], &0x1122u64.to_be_bytes());
    let err = ReplyFrame::error(5, false, e::EIO, "ignored").to_vec();
    assert_eq!(err.len(), 16);
    assert_eq!(&err[4..8], &e::EIO.to_be_bytes());
    let zero = ReplyFrame::error(5, false, 0, "").to_vec();
    assert_eq!(&zero[4..8], &e::EIO.to_be_bytes(), "an error is never 0");
    let data = Bytes::from_static(b"abcd");
    let r = ReplyFrame::read(5, false, 0, data.clone());
    assert_eq!(r.head().len(), 16);
    assert_eq!(r.payload(), &data);
}

fn chunk_header(v: &[u8]) -> (u16, u16, u64, u32) {
    assert_eq!(&v[0..4], &proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    (
        u16::from_be_bytes([v[4], v[5]]),
        u16::from_be_bytes([v[6], v[7]]),
        u64::from_be_bytes(v[8..16].try_into().unwrap()),
        u32::from_be_bytes(v[16..20].try_into().unwrap()),
    )
}

#[test]
fn structured_replies() {
    let ok = ReplyFrame::ok(9, true).to_vec();
    assert_eq!(ok.len(), 20);
    assert_eq!(
        chunk_header(&ok),
        (reply_flags::DONE, reply_type::NONE, 9, 0)
    );

    let err = ReplyFrame::error(9, true, e::ENOSPC, "full").to_vec();
    assert_eq!(
        chunk_header(&err),
        (reply_flags::DONE, reply_type::ERROR, 9, 10)
    );
    assert_eq!(&err[20..24], &e::ENOSPC.to_be_bytes());
    assert_eq!(&err[24..26], &[0, 4]);
    assert_eq!(&err[26..], b"full");
    let long = "é".repeat(5000);
    let err = ReplyFrame::error(9, true, e::EIO, &long).to_vec();
    let msg_len = u16::from_be_bytes([err[24], err[25]]) as usize;
    assert!(msg_len <= 4096);
    assert!(std::str::from_utf8(&err[26..]).is_ok());

    let data = Bytes::from_static(b"hello");
    let r = ReplyFrame::read(9, true, 4096, data.clone());
    assert_eq!(r.head().len(), 28);
    assert_eq!(
        chunk_header(r.head()),
        (reply_flags::DONE, reply_type::OFFSET_DATA, 9, 13)
    );
    assert_eq!(&r.head()[20..28], &4096u64.to_be_bytes());
    assert_eq!(r.payload(), &data);
    assert_eq!(
        ReplyFrame::read(9, true, 0, Bytes::new()),
        ReplyFrame::ok(9, true)
    );
}

fn descriptors(frame: &ReplyFrame) -> (u32, Vec<(u32, u32)>) {
    let v = frame.to_vec();
    let (flags, kind, _, len) = chunk_header(&v);
    assert_eq!((flags, kind), (reply_flags::DONE, reply_type::BLOCK_STATUS));
    assert_eq!(len as usize, v.len() - 20);
    let id = u32::from_be_bytes(v[20..24].try_into().unwrap());
    let d = v[24..]
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[0..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..8].try_into().unwrap()),
            )
        })
        .collect();
    (id, d)
}

#[test]
fn block_status_replies() {
    let ext = |len, hole, zero| Extent {
        length_bytes: len,
        hole,
        zero,
    };
    let extents = [
        ext(4096, false, false),
        ext(0, true, true),
        ext(4096, false, false),
        ext(8192, true, true),
        ext(1 << 40, false, true),
    ];
    let f = ReplyFrame::block_status(1, 7, &extents, 20000, false);
    assert_eq!(
        descriptors(&f),
        (7, vec![(8192, 0), (8192, 3), (20000 - 16384, 2)])
    );
    let f = ReplyFrame::block_status(1, 7, &extents, 20000, true);
    assert_eq!(descriptors(&f), (7, vec![(8192, 0)]));
    let f = ReplyFrame::block_status(1, 7, &[], 512, false);
    assert_eq!(descriptors(&f), (7, vec![(512, 0)]));
    let f = ReplyFrame::block_status(1, 7, &[ext(100, true, false)], 512, false);
    assert_eq!(descriptors(&f), (7, vec![(100, 1)]));
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random request streams (mostly valid headers with random fields, plus
    /// raw noise) never panic the decoder and never make it want more than
    /// the header plus the payload limit.
    #[test]
    fn request_streams_never_panic(
        reqs in proptest::collection::vec(
            (any::<u16>(), 0u16..10, any::<u64>(), prop_oneof![Just(0u64), any::<u64>(), 0u64..(1 << 21)],
             prop_oneof![Just(0u32), any::<u32>(), 0u32..70000], proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()),
            0..24),
        split in 1usize..200,
        structured in any::<bool>(),
        context in any::<bool>(),
    ) {
        let mut c = cfg();
        c.structured_replies = structured;
        c.base_allocation_id = context.then_some(1);
        let max = c.max_payload_bytes as usize;
        let mut bytes = Vec::new();
        for (flags, command, cookie, offset, len, tail, good_magic) in reqs {
            let mut r = req(flags, command, cookie, offset, len);
            if !good_magic { r[3] ^= 1; }
            bytes.extend(r);
            bytes.extend(tail);
        }
        let mut d = RequestDecoder::new(c);
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                prop_assert!(d.bytes_wanted() <= 28 + max);
                match d.decode(&mut buf) {
                    Ok(Some(Decoded::Request(r))) => {
                        if let Command::Write { data, .. } = &r.command {
                            prop_assert!(data.len() <= max);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            prop_assert!(buf.len() < 28 + max + split);
        }
    }

    /// Random option sequences never panic the handshake, output stays
    /// parseable, and it never wants more than one capped option.
    #[test]
    fn option_streams_never_panic(
        opts in proptest::collection::vec(
            (0u32..14, prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                Just(info_payload("disk", &[1, 2, 3])),
                Just(meta_payload("disk", &["base:allocation"])),
            ], any::<bool>()),
            0..12),
        split in 1usize..64,
    ) {
        let limits = HandshakeLimits { max_option_bytes: 1024, max_options: 8 };
        let mut hs = Handshake::new(exports(), limits);
        let mut out = hs.take_output().to_vec();
        let mut bytes = fixed().to_be_bytes().to_vec();
        let sent: Vec<u32> = opts.iter().map(|(o, _, _)| *o).collect();
        for (o, payload, huge) in opts {
            if huge {
                let mut h = option(o, b"");
                h[12..16].copy_from_slice(&5000u32.to_be_bytes());
                bytes.extend(h);
                bytes.extend(vec![0u8; 5000]);
            } else {
                bytes.extend(option(o, &payload));
            }
        }
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(split) {
            buf.extend_from_slice(piece);
            prop_assert!(hs.bytes_wanted(&buf) <= 1024 + 16);
            match hs.advance(&mut buf) {
                Ok(HandshakeStatus::NeedMore) => {}
                Ok(_) | Err(_) => break,
            }
            out.extend_from_slice(&hs.take_output());
        }
        prop_assert!(buf.len() < 1024 + 16 + split);
        // The output parses: the 18-byte greeting, then whole option
        // replies to options that were sent, then at most one
        // NBD_OPT_EXPORT_NAME answer (size + flags, no zeroes) at the end.
        prop_assert!(out.len() >= 18);
        let mut rest = &out[18..];
        while !rest.is_empty() {
            if rest.len() >= 8 && rest[..8] == proto::OPTION_REPLY_MAGIC.to_be_bytes() {
                prop_assert!(rest.len() >= 20, "truncated option reply header");
                let option = u32::from_be_bytes(rest[8..12].try_into().unwrap());
                let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
                prop_assert!(rest.len() >= 20 + len, "option reply payload cut short");
                prop_assert!(sent.contains(&option), "reply to option {} never sent", option);
                rest = &rest[20 + len..];
            } else {
                prop_assert_eq!(rest.len(), 10, "not an option reply nor an EXPORT_NAME answer");
                prop_assert!(sent.contains(&opt::EXPORT_NAME));
                rest = &[];
            }
        }
    }
}
