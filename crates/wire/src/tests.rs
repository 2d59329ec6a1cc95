use bytes::Bytes;
use proptest::prelude::*;
use uuid::Uuid;

use crate::*;

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: "node-a".into(),
        volume_uuid: Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788),
        volume_size_bytes: 1 << 30,
        region_bytes: 1 << 20,
        lineage: vec![
            LineageEntry {
                generation_id: 7,
                start_lsn: 0,
                unknown_before: true,
            },
            LineageEntry {
                generation_id: 9,
                start_lsn: 1000,
                unknown_before: false,
            },
        ],
        role: Role::Primary,
        durable_lsn: 1234,
        data_state: DataState::Consistent,
        overwrite: false,
        empty: false,
        discarding: false,
        fenced: false,
    }
}

fn write_record(lsn: u64, data: &'static [u8]) -> WireRecord {
    WireRecord {
        lsn,
        generation: 9,
        kind: RecordKind::Write,
        offset: 4096 * lsn,
        len: data.len() as u64,
        payload: Bytes::from_static(data),
        blake3: [lsn as u8; 32],
    }
}

fn all_messages() -> Vec<Message> {
    let big = Bytes::from(vec![0xabu8; 100_000]);
    vec![
        Message::Hello(hello()),
        Message::HelloAck(Hello {
            role: Role::Secondary,
            lineage: vec![],
            ..hello()
        }),
        Message::Refuse {
            code: RefuseCode::LineageDiverged,
            text: "split brain after generation 9".into(),
        },
        Message::Refuse {
            code: RefuseCode::Other(999),
            text: String::new(),
        },
        Message::Records {
            first_lsn: 10,
            records: vec![
                write_record(10, b"hello"),
                WireRecord {
                    lsn: 11,
                    generation: 9,
                    kind: RecordKind::Trim,
                    offset: 0,
                    len: 1 << 20,
                    payload: Bytes::new(),
                    blake3: [0; 32],
                },
                WireRecord {
                    lsn: 12,
                    generation: 9,
                    kind: RecordKind::WriteZeroes,
                    offset: 8192,
                    len: 4096,
                    payload: Bytes::new(),
                    blake3: [1; 32],
                },
                WireRecord {
                    lsn: 13,
                    generation: 9,
                    kind: RecordKind::Barrier,
                    offset: 0,
                    len: 0,
                    payload: Bytes::new(),
                    blake3: [0; 32],
                },
                WireRecord {
                    lsn: 20,
                    generation: 9,
                    kind: RecordKind::Write,
                    offset: 0,
                    len: big.len() as u64,
                    payload: big.clone(),
                    blake3: [2; 32],
                },
            ],
        },
        Message::Records {
            first_lsn: 0,
            records: vec![],
        },
        Message::Ack {
            durable_lsn: 5,
            journaled_lsn: None,
        },
        Message::Ack {
            durable_lsn: 5,
            journaled_lsn: Some(4),
        },
        Message::Flush { lsn: 77 },
        Message::FlushAck { lsn: 77 },
        Message::Ping { nonce: u64::MAX },
        Message::Pong { nonce: 0 },
        Message::ResyncBegin {
            job: 3,
            stream_from_lsn: 1001,
            ranges: 1 << 24,
            compare: true,
            rollback_from_lsn: Some(990),
            lineage: hello().lineage,
        },
        Message::ResyncBegin {
            job: 4,
            stream_from_lsn: 1,
            ranges: 0,
            compare: false,
            rollback_from_lsn: None,
            lineage: Vec::new(),
        },
        Message::ResyncBeginAck {
            job: 3,
            rollback: Rollback::Listed { ranges: 12 },
        },
        Message::ResyncBeginAck {
            job: 4,
            rollback: Rollback::Unknown,
        },
        Message::ResyncBeginAck {
            job: 5,
            rollback: Rollback::None,
        },
        Message::SyncOps {
            ops: vec![
                SyncOp {
                    seq: 1,
                    kind: SyncOpKind::Data,
                    offset: 1 << 40,
                    len: big.len() as u64,
                    blake3: *blake3::hash(&big).as_bytes(),
                    data: big,
                },
                SyncOp {
                    seq: 2,
                    kind: SyncOpKind::Zero,
                    offset: 0,
                    len: 65536,
                    data: Bytes::new(),
                    blake3: [0; 32],
                },
                SyncOp {
                    seq: 5,
                    kind: SyncOpKind::Check,
                    offset: 65536,
                    len: 65536,
                    data: Bytes::new(),
                    blake3: [7; 32],
                },
                SyncOp {
                    seq: 6,
                    kind: SyncOpKind::Verify,
                    offset: 1 << 20,
                    len: 4096,
                    data: Bytes::new(),
                    blake3: [9; 32],
                },
                SyncOp {
                    seq: 7,
                    kind: SyncOpKind::End,
                    offset: 0,
                    len: 0,
                    data: Bytes::new(),
                    blake3: [0; 32],
                },
            ],
        },
        Message::SyncAck { seq: 7 },
        Message::SyncNeed {
            offset: 65536,
            len: 65536,
        },
        Message::VerifyMismatch {
            seq: 6,
            offset: 1 << 20,
            len: 4096,
        },
        Message::Bye {
            code: ByeCode::Shutdown,
            text: "bye".into(),
        },
        Message::Bye {
            code: ByeCode::Other(77),
            text: "ü".into(),
        },
    ]
}

fn roundtrip(msg: &Message) -> Message {
    let limits = Limits::default();
    let frame = encode_frame(msg, &limits).expect("encode");
    let bytes = frame.to_bytes();
    assert_eq!(bytes.len(), frame.len_bytes);
    let (decoded, used) = decode_message(&bytes, &limits).expect("decode");
    assert_eq!(used, bytes.len());
    decoded
}

#[test]
fn every_message_roundtrips() {
    for m in all_messages() {
        assert_eq!(roundtrip(&m), m, "{:?}", m.message_type());
    }
}

#[test]
fn large_payloads_are_not_copied_on_encode_or_decode() {
    let data = Bytes::from(vec![7u8; 64 * 1024]);
    let msg = Message::SyncOps {
        ops: vec![SyncOp {
            seq: 1,
            kind: SyncOpKind::Data,
            offset: 0,
            len: data.len() as u64,
            data: data.clone(),
            blake3: [0; 32],
        }],
    };
    let frame = encode_frame(&msg, &Limits::default()).unwrap();
    assert!(frame
        .chunks
        .iter()
        .any(|c| c.as_ptr() == data.as_ptr() && c.len() == data.len()));

    let mut dec = Decoder::new(Limits::default());
    assert_eq!(dec.feed(&frame.to_bytes()), frame.len_bytes);
    let before = dec.buffered_bytes();
    let Some(Message::SyncOps { ops }) = dec.next_message().unwrap() else {
        panic!("expected sync ops")
    };
    assert_eq!(ops[0].data, data);
    assert_eq!(dec.buffered_bytes(), before - frame.len_bytes);
}

#[test]
fn decoder_handles_byte_by_byte_and_concatenated_input() {
    let limits = Limits::default();
    let msgs = all_messages();
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend_from_slice(&encode_frame(m, &limits).unwrap().to_bytes());
    }
    // Byte by byte.
    let mut dec = Decoder::new(limits);
    let mut out = Vec::new();
    for b in &stream {
        assert_eq!(dec.feed(std::slice::from_ref(b)), 1);
        while let Some(m) = dec.next_message().unwrap() {
            out.push(m);
        }
    }
    dec.finish().unwrap();
    assert_eq!(out, msgs);
    // All at once.
    let mut dec = Decoder::new(limits);
    assert_eq!(dec.feed(&stream), stream.len());
    let mut out = Vec::new();
    while let Some(m) = dec.next_message().unwrap() {
        out.push(m);
    }
    assert_eq!(out, msgs);
}

#[test]
fn header_errors_are_distinct() {
    let limits = Limits::default();
    let good = encode_frame(&Message::Ping { nonce: 1 }, &limits)
        .unwrap()
        .to_bytes()
        .to_vec();

    let mut b = good.clone();
    b[0] ^= 0xff;
    assert!(matches!(
        decode_message(&b, &limits),
        Err(WireError::BadMagic { .. })
    ));

    let mut b = good.clone();
    b[4..6].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(
        decode_message(&b, &limits).unwrap_err(),
        WireError::UnsupportedVersion {
            got: 1,
            min: 2,
            max: 2
        }
    );

    let mut b = good.clone();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_message(&b, &limits),
        Err(WireError::FrameTooLarge { .. })
    ));

    let mut b = good.clone();
    b[8] = 1;
    assert!(matches!(
        decode_message(&b, &limits),
        Err(WireError::Malformed {
            field: "header.flags",
            ..
        })
    ));

    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(
        decode_message(&b, &limits),
        Err(WireError::BadChecksum { .. })
    ));

    assert!(matches!(
        decode_message(&good[..good.len() - 1], &limits),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        decode_message(&good[..5], &limits),
        Err(WireError::Truncated { .. })
    ));
}

/// Build a frame with a correct CRC around arbitrary payload bytes.
fn raw_frame(msg_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h.extend_from_slice(&msg_type.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(payload);
    h.extend_from_slice(&crc.finalize().to_le_bytes());
    h.extend_from_slice(payload);
    h
}

#[test]
fn payload_errors_name_the_field() {
    let limits = Limits::default();
    assert_eq!(
        decode_message(&raw_frame(0x7777, &[]), &limits).unwrap_err(),
        WireError::UnknownMessage { msg_type: 0x7777 }
    );
    // Ping with a short nonce.
    assert!(matches!(
        decode_message(&raw_frame(MessageType::Ping as u16, &[1, 2, 3]), &limits),
        Err(WireError::Malformed {
            field: "ping.nonce",
            ..
        })
    ));
    // Trailing garbage.
    assert!(matches!(
        decode_message(&raw_frame(MessageType::SyncAck as u16, &[0; 9]), &limits),
        Err(WireError::Malformed {
            field: "payload",
            ..
        })
    ));
    // A Records batch claiming 4 billion records in a 12-byte payload: refused
    // without allocating for the claimed count.
    let mut p = Vec::new();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_message(&raw_frame(MessageType::Records as u16, &p), &limits),
        Err(WireError::Malformed {
            field: "records.count",
            ..
        })
    ));
    let small = Limits {
        max_records_per_batch: 1_000_000_000,
        ..limits
    };
    assert!(matches!(
        decode_message(&raw_frame(MessageType::Records as u16, &p), &small),
        Err(WireError::Malformed {
            field: "records.count",
            ..
        })
    ));
    // Write record whose len runs past the payload.
    let mut p = Vec::new();
    p.extend_from_slice(&5u64.to_le_bytes()); // first_lsn
    p.extend_from_slice(&1u32.to_le_bytes()); // count
    p.extend_from_slice(&5u64.to_le_bytes()); // lsn
    p.extend_from_slice(&1u64.to_le_bytes()); // generation
    p.push(1); // write
    p.extend_from_slice(&0u64.to_le_bytes()); // offset
    p.extend_from_slice(&(1u64 << 40).to_le_bytes()); // len
    p.extend_from_slice(&[0u8; 32]);
    assert!(matches!(
        decode_message(&raw_frame(MessageType::Records as u16, &p), &limits),
        Err(WireError::Malformed {
            field: "record.payload",
            ..
        })
    ));
    // Unknown record kind.
    p[8 + 4 + 16] = 9;
    assert!(matches!(
        decode_message(&raw_frame(MessageType::Records as u16, &p), &limits),
        Err(WireError::Malformed {
            field: "record.kind",
            ..
        })
    ));
}

#[test]
fn encoder_refuses_invalid_messages() {
    let limits = Limits::default();
    let bad = [
        Message::Hello(Hello {
            node_id: String::new(),
            ..hello()
        }),
        Message::Hello(Hello {
            node_id: "x".repeat(256),
            ..hello()
        }),
        Message::Hello(Hello {
            lineage: vec![
                LineageEntry {
                    generation_id: 1,
                    start_lsn: 10,
                    unknown_before: false,
                },
                LineageEntry {
                    generation_id: 2,
                    start_lsn: 5,
                    unknown_before: false,
                },
            ],
            ..hello()
        }),
        Message::Records {
            first_lsn: 1,
            records: vec![write_record(2, b"x")],
        },
        Message::Records {
            first_lsn: 2,
            records: vec![write_record(2, b"x"), write_record(2, b"y")],
        },
        Message::Records {
            first_lsn: 2,
            records: vec![WireRecord {
                len: 10,
                ..write_record(2, b"x")
            }],
        },
        Message::Bye {
            code: ByeCode::Shutdown,
            text: "x".repeat(2000),
        },
    ];
    for m in bad {
        assert!(
            matches!(
                encode_frame(&m, &limits),
                Err(WireError::Unencodable { .. })
            ),
            "{m:?}"
        );
    }
    let tiny = Limits {
        max_frame_bytes: 16,
        ..limits
    };
    assert!(matches!(
        encode_frame(&Message::Hello(hello()), &tiny),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn decoder_refuses_oversized_frame_from_header_alone() {
    let limits = Limits {
        max_frame_bytes: 1024,
        ..Limits::default()
    };
    let mut dec = Decoder::new(limits);
    let frame = raw_frame(MessageType::SyncAck as u16, &[0u8; 2048]);
    dec.feed(&frame[..FRAME_HEADER_BYTES]);
    assert!(matches!(
        dec.next_message(),
        Err(WireError::FrameTooLarge { .. })
    ));
    // Poisoned: the same error again.
    assert!(matches!(
        dec.next_message(),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn decoder_buffer_is_bounded() {
    let limits = Limits {
        max_frame_bytes: 1024,
        ..Limits::default()
    };
    let mut dec = Decoder::new(limits);
    let junk = vec![0u8; 10 * 1024 * 1024];
    let taken = dec.feed(&junk);
    assert_eq!(taken, dec.capacity_bytes());
    assert!(dec.buffered_bytes() <= dec.capacity_bytes());
    assert!(dec.next_message().is_err());
}

#[test]
fn finish_reports_truncation() {
    let limits = Limits::default();
    let f = encode_frame(&Message::Flush { lsn: 3 }, &limits)
        .unwrap()
        .to_bytes();
    let mut dec = Decoder::new(limits);
    dec.feed(&f[..f.len() - 2]);
    assert_eq!(dec.next_message().unwrap(), None);
    assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
}

// ---- lineage ----

fn lin(v: &[(u64, u64)]) -> Vec<LineageEntry> {
    v.iter()
        .map(|&(generation_id, start_lsn)| LineageEntry {
            generation_id,
            start_lsn,
            unknown_before: false,
        })
        .collect()
}

#[test]
fn lineage_comparison() {
    let a = lin(&[(1, 0), (2, 100)]);
    assert_eq!(compare_lineage(&a, &a), LineageOrder::Same);
    let b = lin(&[(1, 0), (2, 100), (3, 250)]);
    assert_eq!(
        compare_lineage(&a, &b),
        LineageOrder::AIsAncestor {
            common_generation: Some(2),
            common_lsn: 250
        }
    );
    assert_eq!(
        compare_lineage(&b, &a),
        LineageOrder::BIsAncestor {
            common_generation: Some(2),
            common_lsn: 250
        }
    );
    let c = lin(&[(1, 0), (2, 100), (4, 300)]);
    assert_eq!(
        compare_lineage(&b, &c),
        LineageOrder::Diverged {
            common_generation: 2,
            common_lsn: 250
        }
    );
    assert_eq!(
        compare_lineage(&lin(&[(5, 0)]), &lin(&[(6, 0)])),
        LineageOrder::Unrelated
    );
    assert_eq!(
        compare_lineage(&[], &b),
        LineageOrder::AIsAncestor {
            common_generation: None,
            common_lsn: 0
        }
    );
    // Same generation id started at a different LSN is a different history.
    assert!(matches!(
        compare_lineage(&lin(&[(1, 0), (2, 100)]), &lin(&[(1, 0), (2, 101)])),
        LineageOrder::Diverged {
            common_generation: 1,
            common_lsn: 100
        }
    ));
}

#[test]
fn check_hello_names_each_mismatch() {
    let local = hello();
    let secondary = Hello {
        role: Role::Secondary,
        node_id: "node-b".into(),
        ..hello()
    };
    assert_eq!(check_hello(&local, &secondary), Ok(()));
    assert_eq!(
        check_hello(
            &local,
            &Hello {
                protocol_version: 3,
                ..secondary.clone()
            }
        ),
        Err(Mismatch::Version {
            local: 2,
            remote: 3
        })
    );
    assert!(matches!(
        check_hello(
            &local,
            &Hello {
                volume_uuid: Uuid::nil(),
                ..secondary.clone()
            }
        ),
        Err(Mismatch::VolumeUuid { .. })
    ));
    assert!(matches!(
        check_hello(
            &local,
            &Hello {
                volume_size_bytes: 1,
                ..secondary.clone()
            }
        ),
        Err(Mismatch::VolumeSize { .. })
    ));
    assert!(matches!(
        check_hello(
            &local,
            &Hello {
                region_bytes: 1,
                ..secondary.clone()
            }
        ),
        Err(Mismatch::RegionSize { .. })
    ));
    // How histories relate is the caller's decision, not a mismatch.
    assert_eq!(
        check_hello(
            &local,
            &Hello {
                lineage: lin(&[(8, 0)]),
                ..secondary.clone()
            }
        ),
        Ok(())
    );
}

// ---- property tests ----

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,40}".prop_filter("fits", |s| s.len() <= DEFAULT_MAX_TEXT_BYTES as usize)
}

fn arb_lineage() -> impl Strategy<Value = Vec<LineageEntry>> {
    prop::collection::vec((any::<u64>(), 0u64..1000), 0..8).prop_map(|v| {
        let mut lsn = 0u64;
        v.into_iter()
            .enumerate()
            .map(|(i, (g, step))| {
                lsn += step;
                // Unique ids: low bits carry the index.
                LineageEntry {
                    generation_id: (g << 8) | i as u64,
                    start_lsn: lsn,
                    unknown_before: g % 2 == 0,
                }
            })
            .collect()
    })
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        "[a-z0-9-]{1,64}",
        any::<u128>(),
        any::<u64>(),
        any::<u64>(),
        arb_lineage(),
        any::<bool>(),
        any::<u64>(),
        any::<(bool, bool, bool, bool, bool)>(),
    )
        .prop_map(
            |(
                v,
                id,
                u,
                size,
                region,
                lineage,
                primary,
                durable,
                (inconsistent, overwrite, empty, discarding, fenced),
            )| {
                Hello {
                    protocol_version: v,
                    node_id: id,
                    volume_uuid: Uuid::from_u128(u),
                    volume_size_bytes: size,
                    region_bytes: region,
                    lineage,
                    role: if primary {
                        Role::Primary
                    } else {
                        Role::Secondary
                    },
                    durable_lsn: durable,
                    data_state: if inconsistent {
                        DataState::Inconsistent
                    } else {
                        DataState::Consistent
                    },
                    overwrite,
                    empty,
                    discarding,
                    fenced,
                }
            },
        )
}

fn arb_sync_ops() -> impl Strategy<Value = Message> {
    prop::collection::vec(
        (
            1u64..50,
            0u8..5,
            0u64..(1 << 50),
            1u64..(1 << 20),
            arb_bytes(2048),
            any::<[u8; 32]>(),
        ),
        0..10,
    )
    .prop_map(|ops| {
        let mut seq = 0;
        let ops = ops
            .into_iter()
            .map(|(step, k, offset, len, data, blake3)| {
                seq += step;
                let (kind, offset, len, data) = match k {
                    0 if !data.is_empty() => (SyncOpKind::Data, offset, data.len() as u64, data),
                    0 | 1 => (SyncOpKind::Zero, offset, len, Bytes::new()),
                    2 => (SyncOpKind::Check, offset, len, Bytes::new()),
                    3 => (SyncOpKind::Verify, offset, len, Bytes::new()),
                    _ => (SyncOpKind::End, 0, 0, Bytes::new()),
                };
                SyncOp {
                    seq,
                    kind,
                    offset,
                    len,
                    data,
                    blake3,
                }
            })
            .collect();
        Message::SyncOps { ops }
    })
}

fn arb_record() -> impl Strategy<Value = (u8, u64, u64, u64, Bytes, [u8; 32])> {
    (
        0u8..4,
        any::<u64>(),
        0u64..(1 << 50),
        0u64..(1 << 30),
        arb_bytes(2048),
        any::<[u8; 32]>(),
    )
}

fn arb_records() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        prop::collection::vec((1u64..100, arb_record()), 0..12),
    )
        .prop_map(|(first, recs)| {
            let mut lsn = first >> 1;
            let first_lsn = lsn;
            let records = recs
                .into_iter()
                .enumerate()
                .map(
                    |(i, (step, (k, generation, offset, len, payload, blake3)))| {
                        if i > 0 {
                            lsn += step;
                        }
                        let (kind, offset, len, payload) = match k {
                            0 => (RecordKind::Write, offset, payload.len() as u64, payload),
                            1 => (RecordKind::Trim, offset, len, Bytes::new()),
                            2 => (RecordKind::WriteZeroes, offset, len, Bytes::new()),
                            _ => (RecordKind::Barrier, 0, 0, Bytes::new()),
                        };
                        WireRecord {
                            lsn,
                            generation,
                            kind,
                            offset,
                            len,
                            payload,
                            blake3,
                        }
                    },
                )
                .collect();
            Message::Records { first_lsn, records }
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_hello().prop_map(Message::Hello),
        arb_hello().prop_map(Message::HelloAck),
        (any::<u16>(), arb_text()).prop_map(|(c, text)| Message::Refuse {
            code: RefuseCode::from_u16(c),
            text
        }),
        arb_records(),
        (any::<u64>(), any::<Option<u64>>()).prop_map(|(d, a)| Message::Ack {
            durable_lsn: d,
            journaled_lsn: a
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            "[a-z0-9.-]{0,20}"
        )
            .prop_map(
                |(fork_lsn, changed_regions, primary_since_ns, policy, victim)| {
                    Message::SplitBrain(crate::SplitBrainFacts {
                        fork_lsn,
                        changed_regions,
                        primary_since_ns,
                        policy,
                        victim,
                    })
                }
            ),
        any::<u64>().prop_map(|lsn| Message::Flush { lsn }),
        any::<u64>().prop_map(|lsn| Message::FlushAck { lsn }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        (
            any::<u64>(),
            1u64..u64::MAX,
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            arb_lineage()
        )
            .prop_map(
                |(job, stream_from_lsn, ranges, compare, rollback, lineage)| Message::ResyncBegin {
                    job,
                    stream_from_lsn,
                    ranges,
                    compare,
                    rollback_from_lsn: (rollback != 0).then_some(rollback),
                    lineage,
                }
            ),
        (any::<u64>(), 0u8..3, any::<u64>()).prop_map(|(job, k, ranges)| Message::ResyncBeginAck {
            job,
            rollback: match k {
                0 => Rollback::None,
                1 => Rollback::Listed { ranges },
                _ => Rollback::Unknown,
            },
        }),
        arb_sync_ops(),
        any::<u64>().prop_map(|seq| Message::SyncAck { seq }),
        (0u64..(1 << 60), 1u64..(1 << 30))
            .prop_map(|(offset, len)| Message::SyncNeed { offset, len }),
        (any::<u64>(), 0u64..(1 << 60), 1u64..(1 << 30))
            .prop_map(|(seq, offset, len)| Message::VerifyMismatch { seq, offset, len }),
        (any::<u16>(), arb_text()).prop_map(|(c, text)| Message::Bye {
            code: ByeCode::from_u16(c),
            text
        }),
    ]
}

proptest! {
    #[test]
    fn prop_roundtrip(msg in arb_message()) {
        prop_assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn prop_stream_roundtrip_any_split(msgs in prop::collection::vec(arb_message(), 1..6), split in 1usize..300) {
        let limits = Limits::default();
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend_from_slice(&encode_frame(m, &limits).unwrap().to_bytes());
        }
        let mut dec = Decoder::new(limits);
        let mut out = Vec::new();
        for chunk in stream.chunks(split) {
            prop_assert_eq!(dec.feed(chunk), chunk.len());
            while let Some(m) = dec.next_message().unwrap() {
                out.push(m);
            }
        }
        prop_assert!(dec.finish().is_ok());
        prop_assert_eq!(out, msgs);
    }

    #[test]
    fn prop_random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let limits = Limits::default();
        let _ = decode_message(&data, &limits);
        let mut dec = Decoder::new(limits);
        dec.feed(&data);
        while let Ok(Some(_)) = dec.next_message() {}
    }

    #[test]
    fn prop_random_payload_with_valid_crc_never_panics(ty in any::<u16>(), payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        // Valid header + CRC so that the payload parsers see the hostile bytes.
        let _ = decode_message(&raw_frame(ty, &payload), &Limits::default());
        for known in [1u16, 2, 3, 0x10, 0x11, 0x30, 0x40] {
            let _ = decode_message(&raw_frame(known, &payload), &Limits::default());
        }
    }

    #[test]
    fn prop_mutated_frames_never_panic(msg in arb_message(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let limits = Limits::default();
        let mut bytes = encode_frame(&msg, &limits).unwrap().to_bytes().to_vec();
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        let _ = decode_message(&bytes, &limits);
        // And with a recomputed CRC, so mutations reach the payload decoder.
        if bytes.len() >= FRAME_HEADER_BYTES {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[..16]);
            crc.update(&bytes[FRAME_HEADER_BYTES..]);
            let c = crc.finalize().to_le_bytes();
            bytes[16..20].copy_from_slice(&c);
            let _ = decode_message(&bytes, &limits);
        }
    }

    #[test]
    fn prop_single_bit_flip_is_detected(msg in arb_message(), bit in any::<prop::sample::Index>()) {
        let limits = Limits::default();
        let mut bytes = encode_frame(&msg, &limits).unwrap().to_bytes().to_vec();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let res = decode_message(&bytes, &limits);
        prop_assert!(res.is_err(), "flip of bit {} went undetected", bit);
        // Past magic/version/flags/length, a flip can only show up as a checksum error.
        let byte = bit / 8;
        if (6..8).contains(&byte) || byte >= 16 {
            prop_assert!(matches!(res, Err(WireError::BadChecksum { .. })), "{:?}", res);
        }
    }
}
