use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use uuid::Uuid;
use wire::{Hello, LineageEntry, RecordKind, RefuseCode, Role, WireRecord};

use super::*;
use crate::config::SyncPeerLossPolicy;
use crate::error::BatchError;

fn hello(role: Role, lsn: u64, lineage: &[(u64, u64)]) -> Hello {
    Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        node_id: "n".into(),
        volume_uuid: Uuid::from_u128(7),
        volume_size_bytes: 1 << 20,
        region_bytes: 65536,
        lineage: lineage
            .iter()
            .map(|&(generation_id, start_lsn)| LineageEntry {
                generation_id,
                start_lsn,
            })
            .collect(),
        role,
        durable_lsn: lsn,
    }
}

#[test]
fn primary_verdicts() {
    let p = hello(Role::Primary, 10, &[(1, 1)]);
    let s = hello(Role::Secondary, 4, &[(1, 1)]);
    assert_eq!(
        primary_verdict(&p, &s, 10),
        PrimaryVerdict::Stream { from_lsn: 5 }
    );
    // The peer holds records this primary lost.
    let ahead = hello(Role::Secondary, 12, &[(1, 1)]);
    assert!(matches!(
        primary_verdict(&p, &ahead, 10),
        PrimaryVerdict::NeedsResync(_)
    ));
    let mut other = s.clone();
    other.volume_size_bytes += 512;
    assert!(matches!(
        primary_verdict(&p, &other, 10),
        PrimaryVerdict::Refuse(RefuseCode::SizeMismatch, _)
    ));
    let mut other = s.clone();
    other.volume_uuid = Uuid::from_u128(8);
    assert!(matches!(
        primary_verdict(&p, &other, 10),
        PrimaryVerdict::Refuse(RefuseCode::VolumeMismatch, _)
    ));
    let both = hello(Role::Primary, 4, &[(1, 1)]);
    assert!(matches!(
        primary_verdict(&p, &both, 10),
        PrimaryVerdict::Refuse(RefuseCode::RoleConflict, _)
    ));
    // Promoted at 8: a peer of the old generation that stopped before 8 streams on.
    let p2 = hello(Role::Primary, 10, &[(1, 1), (2, 8)]);
    assert_eq!(
        primary_verdict(&p2, &hello(Role::Secondary, 7, &[(1, 1)]), 10),
        PrimaryVerdict::Stream { from_lsn: 8 }
    );
    assert!(matches!(
        primary_verdict(&p2, &hello(Role::Secondary, 9, &[(1, 1)]), 10),
        PrimaryVerdict::NeedsResync(_)
    ));
    assert!(matches!(
        primary_verdict(&p2, &hello(Role::Secondary, 9, &[(1, 1), (3, 8)]), 10),
        PrimaryVerdict::Refuse(RefuseCode::LineageDiverged, _)
    ));
}

#[test]
fn secondary_verdicts() {
    let s = hello(Role::Secondary, 5, &[(1, 1)]);
    assert!(secondary_verdict(&s, &hello(Role::Primary, 9, &[(1, 1)])).is_ok());
    assert_eq!(
        secondary_verdict(&s, &hello(Role::Secondary, 9, &[(1, 1)]))
            .unwrap_err()
            .0,
        RefuseCode::RoleConflict
    );
    assert!(secondary_verdict(&s, &hello(Role::Primary, 9, &[(1, 1), (2, 7)])).is_ok());
    assert!(secondary_verdict(&s, &hello(Role::Primary, 9, &[(1, 1), (2, 3)])).is_err());
    assert!(secondary_verdict(
        &hello(Role::Secondary, 5, &[(1, 1), (2, 3)]),
        &hello(Role::Primary, 9, &[(1, 1)])
    )
    .is_err());
}

fn rec(lsn: u64, payload: &[u8]) -> WireRecord {
    WireRecord {
        lsn,
        generation: 1,
        kind: RecordKind::Write,
        offset: 0,
        len: payload.len() as u64,
        payload: Bytes::copy_from_slice(payload),
        blake3: *blake3::hash(payload).as_bytes(),
    }
}

#[test]
fn batches_must_continue_and_match_their_digests() {
    let good = vec![rec(5, b"abc"), rec(6, b"def")];
    assert_eq!(validate_batch(5, 5, &good), Ok(()));
    assert_eq!(
        validate_batch(4, 5, &good),
        Err(BatchError::WrongStart {
            first: 5,
            expected: 4
        })
    );
    let gap = vec![rec(5, b"abc"), rec(7, b"def")];
    assert_eq!(
        validate_batch(5, 5, &gap),
        Err(BatchError::NotConsecutive {
            lsn: 7,
            expected: 6
        })
    );
    let mut bad = good.clone();
    bad[1].payload = Bytes::from_static(b"deF");
    let err = validate_batch(5, 5, &bad).unwrap_err();
    assert_eq!(err, BatchError::Digest { lsn: 6 });
    assert!(err.to_string().contains("BLAKE3"), "{err}");
}

#[test]
fn suspend_waits_until_the_timeout_then_degrades() {
    let t0 = Instant::now();
    let policy = SyncPeerLossPolicy::Suspend {
        timeout: Duration::from_secs(2),
    };
    let lost = SyncState::Lost { since: t0 };
    assert_eq!(
        decide(
            lost,
            0,
            0,
            1,
            Need::Journaled,
            policy,
            t0 + Duration::from_secs(1)
        ),
        Decision::Wait {
            deadline: Some(t0 + Duration::from_secs(2))
        }
    );
    assert_eq!(
        decide(
            lost,
            0,
            0,
            1,
            Need::Journaled,
            policy,
            t0 + Duration::from_secs(2)
        ),
        Decision::Degrade
    );
    assert_eq!(
        decide(
            lost,
            0,
            0,
            1,
            Need::Journaled,
            SyncPeerLossPolicy::Degrade,
            t0
        ),
        Decision::Degrade
    );
    // Already held: nothing to wait for even while lost.
    assert_eq!(
        decide(lost, 3, 0, 2, Need::Journaled, policy, t0),
        Decision::Done
    );
    assert_eq!(
        decide(SyncState::InSync, 3, 1, 2, Need::Durable, policy, t0),
        Decision::Wait { deadline: None }
    );
    assert_eq!(
        decide(SyncState::Degraded, 0, 0, 9, Need::Durable, policy, t0),
        Decision::Done
    );
    assert_eq!(on_sync_disconnect(SyncState::InSync, t0), lost);
    assert_eq!(
        on_sync_connect(SyncState::Degraded, 3, 5),
        SyncState::Degraded
    );
    assert_eq!(on_sync_ack(SyncState::Degraded, 5, 5), SyncState::InSync);
    assert_eq!(on_sync_connect(lost, 3, 5), SyncState::InSync);
}

#[test]
fn lag_tracker_sums_unacknowledged_writes_and_stays_bounded() {
    let t0 = Instant::now();
    let mut l = LagTracker::new(4);
    for lsn in 1..=3 {
        l.insert(lsn, 100, t0 + Duration::from_secs(lsn));
    }
    let now = t0 + Duration::from_secs(10);
    assert_eq!(l.lag(3, 3, now), (0, 0.0));
    let (b, s) = l.lag(1, 3, now);
    assert_eq!(b, 200);
    assert!((s - 8.0).abs() < 1e-6);
    for lsn in 4..=10 {
        l.insert(lsn, 100, t0 + Duration::from_secs(lsn));
    }
    assert!(l.entries.len() <= 4);
    let (b, s) = l.lag(0, 10, now);
    assert_eq!(
        b, 1000,
        "dropped entries are estimated at their average size"
    );
    assert!((s - 9.0).abs() < 1e-6, "{s}");
    l.prune(10);
    assert_eq!(l.lag(10, 10, now), (0, 0.0));
}

#[derive(Debug, Clone)]
enum Op {
    Send(u8),
    Ack {
        durable_back: u8,
        journaled_back: u8,
    },
    Flush,
    FlushAck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..5).prop_map(Op::Send),
        (0u8..6, 0u8..6).prop_map(|(d, a)| Op::Ack {
            durable_back: d,
            journaled_back: a
        }),
        Just(Op::Flush),
        Just(Op::FlushAck),
    ]
}

proptest! {
    /// The window accounting never drifts: in-flight bytes equal the sum of
    /// unacknowledged records, acks never pass what was sent, the window is
    /// respected, and flushes are only sent for shipped records.
    #[test]
    fn ship_state_invariants(start in 0u64..100, ops in proptest::collection::vec(op(), 1..200)) {
        let max = 1000u64;
        let mut s = ShipState::new(start, max);
        let mut model: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Send(n) => {
                    if !s.may_send() {
                        prop_assert!(s.inflight_bytes >= max);
                        continue;
                    }
                    let recs: Vec<_> = (1..=n as u64).map(|i| (s.sent_lsn + i, 100 + i)).collect();
                    s.on_sent(&recs).unwrap();
                    model.extend(recs);
                }
                Op::Ack { durable_back, journaled_back } => {
                    let d = s.sent_lsn.saturating_sub(durable_back as u64);
                    let a = s.sent_lsn.saturating_sub(journaled_back as u64);
                    s.on_ack(d, Some(a)).unwrap();
                    prop_assert!(s.on_ack(s.sent_lsn + 1, None).is_err());
                    model.retain(|&(l, _)| l > s.acked_lsn);
                }
                Op::Flush => {
                    s.request_flush(s.sent_lsn);
                    if let Some(l) = s.flush_to_send() {
                        prop_assert!(l <= s.sent_lsn);
                    }
                }
                Op::FlushAck => {
                    let l = s.flush_sent;
                    s.on_flush_ack(l).unwrap();
                    prop_assert!(s.on_flush_ack(l + 1).is_err());
                }
            }
            prop_assert!(s.acked_lsn <= s.sent_lsn);
            prop_assert_eq!(s.inflight_bytes, model.iter().map(|(_, b)| b).sum::<u64>());
        }
    }

    /// A waiting write is only released by the ack it needs, by degrading
    /// (never while the peer is in sync), or because the peer is degraded.
    #[test]
    fn gate_never_releases_an_unacknowledged_write_of_an_in_sync_peer(
        acked in 0u64..50, durable in 0u64..50, lsn in 1u64..50, durable_need in any::<bool>(),
        elapsed_ms in 0u64..5000, suspend in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(elapsed_ms);
        let policy = if suspend {
            SyncPeerLossPolicy::Suspend { timeout: Duration::from_secs(2) }
        } else {
            SyncPeerLossPolicy::Degrade
        };
        let need = if durable_need { Need::Durable } else { Need::Journaled };
        let have = if durable_need { durable } else { acked.max(durable) };
        let d = decide(SyncState::InSync, acked, durable, lsn, need, policy, now);
        prop_assert_eq!(d == Decision::Done, have >= lsn);
        prop_assert!(d != Decision::Degrade);
        let d = decide(SyncState::Lost { since: t0 }, acked, durable, lsn, need, policy, now);
        if d == Decision::Degrade {
            prop_assert!(have < lsn);
            prop_assert!(!suspend || elapsed_ms >= 2000);
        }
    }
}
