//! A hostile primary: messages built from the input (LSNs near and far
//! from the expected one, ranges in and out of the volume, digests right
//! and wrong, operations in and out of a resync, sequence numbers up and
//! down) fed to the secondary's sans-IO session, as `crates/replication`
//! does after a handshake. Built as values, not frames, so the fuzzer gets
//! past the frame CRC to the session's checks. No panic; what it lets
//! through is sound: record batches continue the LSNs exactly and stay in
//! the volume, resync operations stay in the volume and carry data that
//! matches its BLAKE3, nothing of a resync arrives outside one.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use replication::proto::secondary::{SecondarySession, Step};
use wire::{LineageEntry, Message, RecordKind, SyncOp, SyncOpKind, WireRecord};

#[path = "script.rs"]
mod script;
use script::{Input, VOLUME_BYTES};

fn message(i: &mut Input<'_>, next_lsn: u64, seq: &mut u64) -> Option<Message> {
    Some(match i.u8()? % 6 {
        0 | 1 => {
            let first_lsn = match i.u8()? {
                0 => 0,
                1 => next_lsn.saturating_sub(1),
                2 => next_lsn + 1,
                _ => next_lsn,
            };
            let mut records = Vec::new();
            for k in 0..i.u8()? % 4 {
                let (offset, len) = (i.extent()?, (i.u8()? as u64 % 9) * 512);
                let payload = Bytes::from(vec![k; len as usize]);
                records.push(WireRecord {
                    lsn: first_lsn + u64::from(k) + u64::from(i.u8()? == 0),
                    generation: if i.u8()? == 0 { 9 } else { 7 },
                    kind: RecordKind::Write,
                    offset,
                    len,
                    blake3: i.digest(&payload)?,
                    payload,
                });
            }
            Message::Records { first_lsn, records }
        }
        2 => Message::Flush { lsn: i.u16()? },
        3 => Message::ResyncBegin {
            job: u64::from(i.u8()?),
            stream_from_lsn: i.u16()? + 1,
            ranges: 0,
            compare: false,
            rollback_from_lsn: None,
            lineage: vec![LineageEntry {
                generation_id: 7,
                start_lsn: 1,
                unknown_before: false,
            }],
        },
        4 => {
            let mut ops = Vec::new();
            for _ in 0..i.u8()? % 4 {
                let kind = match i.u8()? % 5 {
                    0 => SyncOpKind::Data,
                    1 => SyncOpKind::Zero,
                    2 => SyncOpKind::Check,
                    3 => SyncOpKind::Verify,
                    _ => SyncOpKind::End,
                };
                let (offset, len) = (i.extent()?, i.extent()? % 8192);
                let data = if kind == SyncOpKind::Data {
                    Bytes::from(vec![3; len as usize])
                } else {
                    Bytes::new()
                };
                *seq = if i.u8()? == 0 {
                    seq.saturating_sub(1)
                } else {
                    *seq + 1
                };
                ops.push(SyncOp {
                    seq: *seq,
                    kind,
                    offset,
                    len,
                    blake3: i.digest(&data)?,
                    data,
                });
            }
            Message::SyncOps { ops }
        }
        _ => Message::Ping { nonce: i.u16()? },
    })
}

fuzz_target!(|data: &[u8]| {
    let lineage = vec![LineageEntry {
        generation_id: 7,
        start_lsn: 1,
        unknown_before: false,
    }];
    let mut session = SecondarySession::new(VOLUME_BYTES, 1, 7, lineage);
    let mut input = Input(data);
    let (mut next_lsn, mut seq, mut resync) = (1u64, 0u64, false);
    while let Some(msg) = message(&mut input, next_lsn, &mut seq) {
        let Ok(steps) = session.handle(msg) else {
            return;
        };
        for step in steps {
            match step {
                Step::Records(records) => {
                    for r in records {
                        assert_eq!(r.lsn, next_lsn, "a gap or an overlap let through");
                        assert!(r.offset + r.len <= VOLUME_BYTES);
                        assert_eq!(*blake3::hash(&r.payload).as_bytes(), r.blake3);
                        next_lsn += 1;
                    }
                }
                Step::BeginResync { stream_from, .. } => {
                    next_lsn = stream_from;
                    resync = true;
                }
                Step::Ops(ops) => {
                    for op in ops {
                        match op.kind {
                            SyncOpKind::End => {
                                assert!(resync, "End outside a resync");
                                resync = false;
                            }
                            SyncOpKind::Verify => assert!(op.offset + op.len <= VOLUME_BYTES),
                            _ => {
                                assert!(resync, "{:?} outside a resync", op.kind);
                                assert!(op.offset + op.len <= VOLUME_BYTES);
                            }
                        }
                        if op.kind == SyncOpKind::Data {
                            assert_eq!(*blake3::hash(&op.data).as_bytes(), op.blake3);
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(session.next_lsn(), next_lsn);
    }
});
