//! A hostile secondary: the primary's sans-IO session streams records and
//! runs resyncs and verifies while the input scripts what comes back (acks
//! of LSNs sent and not sent, flush acks, resync acks for jobs that exist
//! or not, ranges asked for in and out of the volume, mismatches, sync acks
//! of operations never sent) and when time passes. No panic; whatever it
//! accepts keeps the session sound: nothing is acknowledged or made
//! durable past what was sent, and every region reported synced belongs to
//! the volume.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use replication::proto::primary::{
    Content, Event, JobKind, JobSpec, Origin, PrimarySession, SessionConfig, Snapshot,
};
use replication::ResyncLimits;
use wire::{Message, RecordKind, Rollback, WireRecord};

#[path = "script.rs"]
mod script;
use script::{Input, VOLUME_BYTES};

const REGION_BYTES: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let cfg = SessionConfig {
        max_inflight_bytes: 64 << 10,
        max_batch_bytes: 32 << 10,
        keepalive: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        volume_bytes: VOLUME_BYTES,
        region_bytes: REGION_BYTES,
        resync: ResyncLimits {
            max_rate_bytes_per_sec: 0,
            min_rate_bytes_per_sec: 1 << 20,
            max_inflight_bytes: 256 << 10,
        },
    };
    let mut now = Instant::now();
    let mut s = PrimarySession::new(cfg, 0, now);
    let mut next_lsn = 1u64;
    let mut seq_seen = 0u64;
    while let Some(op) = i.u8() {
        let result = match op % 10 {
            // Records from the journal, in order.
            0 | 1 if s.wants_records() => {
                let mut records = Vec::new();
                for _ in 0..=(op / 10) % 3 {
                    let payload = Bytes::from(vec![7u8; 512]);
                    records.push(WireRecord {
                        lsn: next_lsn,
                        generation: 1,
                        kind: RecordKind::Write,
                        offset: (next_lsn * 512) % VOLUME_BYTES,
                        len: 512,
                        blake3: *blake3::hash(&payload).as_bytes(),
                        payload,
                    });
                    next_lsn += 1;
                }
                s.push_records(records, now)
            }
            2 => {
                let durable = i.near(s.sent_lsn()).unwrap_or(0);
                let journaled = if i.u8().unwrap_or(0) % 2 == 0 {
                    None
                } else {
                    Some(i.near(s.sent_lsn()).unwrap_or(0))
                };
                s.handle(
                    Message::Ack {
                        durable_lsn: durable,
                        journaled_lsn: journaled,
                    },
                    now,
                )
            }
            3 => {
                let lsn = i.near(s.sent_lsn()).unwrap_or(0);
                s.request_flush(lsn.min(s.sent_lsn()));
                let ack = i.near(s.sent_lsn()).unwrap_or(0);
                s.handle(Message::FlushAck { lsn: ack }, now)
            }
            4 if s.job_kind().is_none() => {
                let kind = match i.u8().unwrap_or(0) % 3 {
                    0 => JobKind::Verify,
                    1 => JobKind::Resync { compare: true },
                    _ => JobKind::Resync { compare: false },
                };
                let spec = JobSpec {
                    kind,
                    full: true,
                    regions: VOLUME_BYTES / REGION_BYTES,
                    rollback_from: None,
                    lineage: Vec::new(),
                };
                let _ = s.start_job(spec, now);
                Ok(())
            }
            5 => {
                let job = u64::from(i.u8().unwrap_or(0) % 4);
                let rollback = if i.u8().unwrap_or(0) % 2 == 0 {
                    Rollback::None
                } else {
                    Rollback::Unknown
                };
                s.handle(Message::ResyncBeginAck { job, rollback }, now)
            }
            6 => {
                let (offset, len) = (i.extent().unwrap_or(0), i.extent().unwrap_or(0));
                if i.u8().unwrap_or(0) % 2 == 0 {
                    s.handle(Message::SyncNeed { offset, len }, now)
                } else {
                    let seq = i.near(seq_seen).unwrap_or(0);
                    s.handle(Message::VerifyMismatch { seq, offset, len }, now)
                }
            }
            7 => {
                let seq = i.near(seq_seen).unwrap_or(0);
                s.handle(Message::SyncAck { seq }, now)
            }
            8 => {
                // The driver's region reads, for the walk or what was asked.
                let _ = s.wants_regions(now);
                let (origin, offset, len) = match s.next_read() {
                    Some(r) => (r.origin, r.offset, r.len),
                    None => {
                        let r = u64::from(i.u8().unwrap_or(0)) % (VOLUME_BYTES / REGION_BYTES);
                        (Origin::Walk(r), r * REGION_BYTES, REGION_BYTES)
                    }
                };
                let content = match i.u8().unwrap_or(0) % 3 {
                    0 => Content::Zero,
                    1 => Content::Digest([i.u8().unwrap_or(0); 32]),
                    _ => Content::Data(Bytes::from(vec![1u8; len as usize])),
                };
                let snap = Snapshot {
                    lsn: s.sent_lsn(),
                    offset,
                    len,
                    content,
                };
                s.push_region(snap, origin, now);
                if i.u8().unwrap_or(0) % 4 == 0 {
                    s.walk_done(now);
                }
                Ok(())
            }
            _ => {
                now += Duration::from_millis(u64::from(i.u8().unwrap_or(0)) * 10);
                s.handle_timeout(now)
            }
        };
        while let Some(m) = s.poll_transmit(now) {
            if let Message::SyncOps { ops } = &m {
                for op in ops {
                    assert!(op.seq > seq_seen, "operation sequence numbers increase");
                    seq_seen = op.seq;
                    assert!(
                        op.offset.checked_add(op.len).is_some_and(|e| e <= VOLUME_BYTES)
                            || op.kind == wire::SyncOpKind::End,
                        "an operation outside the volume: {op:?}"
                    );
                }
            }
        }
        while let Some(e) = s.poll_event() {
            if let Event::RegionsSynced(regions) = e {
                assert!(regions.iter().all(|r| *r < VOLUME_BYTES / REGION_BYTES));
            }
        }
        assert!(s.acked_lsn() <= s.sent_lsn(), "acked past what was sent");
        assert!(s.durable_lsn() <= s.sent_lsn(), "durable past what was sent");
        if result.is_err() {
            return;
        }
    }
});
