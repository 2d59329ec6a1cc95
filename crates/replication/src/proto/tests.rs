use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use uuid::Uuid;
use wire::{DataState, Hello, LineageEntry, RecordKind, RefuseCode, Role, WireRecord};

use super::batch::validate_batch;
use super::gate::*;
use super::lag::LagTracker;
use super::ship::ShipState;
use super::verdict::*;
use crate::config::{InitialSync, SyncPeerLossPolicy};
use crate::error::BatchError;
use crate::status::DiskState;

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
                unknown_before: false,
            })
            .collect(),
        role,
        durable_lsn: lsn,
        data_state: DataState::Consistent,
        overwrite: false,
        empty: false,
        discarding: false,
        fenced: false,
    }
}

fn facts(local: &Hello) -> PrimaryFacts<'_> {
    PrimaryFacts {
        local,
        peer_name: "n",
        cert_name: "n",
        written_lsn: 10,
        owed_regions: 0,
        owed_since_fall: false,
        initial_sync: InitialSync::Auto,
        overwrite: false,
        force_resync: false,
    }
}

fn plan(v: PrimaryVerdict) -> ResyncPlan {
    match v {
        PrimaryVerdict::Resync(p) => p,
        other => panic!("expected a resync, got {other:?}"),
    }
}

fn refused(v: PrimaryVerdict) -> (RefuseCode, DiskState) {
    match v {
        PrimaryVerdict::Refuse { code, disk, .. } => (code, disk),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn primary_verdicts_follow_the_lineages() {
    let p = hello(Role::Primary, 10, &[(1, 1)]);
    let f = facts(&p);
    let s = hello(Role::Secondary, 4, &[(1, 1)]);
    assert_eq!(
        primary_verdict(&f, &s),
        PrimaryVerdict::Stream { from_lsn: 5 }
    );
    // The same history, but the copy is inconsistent or owed regions.
    let mut inc = s.clone();
    inc.data_state = DataState::Inconsistent;
    let r = plan(primary_verdict(&f, &inc));
    assert!(!r.full && !r.compare && r.rollback_from.is_none());
    let owed = PrimaryFacts {
        owed_regions: 3,
        ..facts(&p)
    };
    assert!(!plan(primary_verdict(&owed, &s)).full);
    let forced = PrimaryFacts {
        force_resync: true,
        ..facts(&p)
    };
    assert!(matches!(
        primary_verdict(&forced, &s),
        PrimaryVerdict::Resync(_)
    ));
    // The peer holds records this primary lost: they are rolled back.
    let ahead = hello(Role::Secondary, 12, &[(1, 1)]);
    let r = plan(primary_verdict(&f, &ahead));
    assert_eq!(r.rollback_from, Some(11));
    assert!(r.compare);
    // No history of its own: a full compare, or a refusal when manual.
    let new = hello(Role::Secondary, 0, &[]);
    let r = plan(primary_verdict(&f, &new));
    assert!(r.full && r.compare);
    // ... nothing to compare when its volume holds no data.
    let empty = Hello {
        empty: true,
        discarding: false,
        fenced: false,
        ..new.clone()
    };
    let r = plan(primary_verdict(&f, &empty));
    assert!(r.full && !r.compare);
    let manual = PrimaryFacts {
        initial_sync: InitialSync::Manual,
        ..facts(&p)
    };
    assert_eq!(
        refused(primary_verdict(&manual, &new)).0,
        RefuseCode::NotAllowed
    );
    // Volume mismatches, roles and identity.
    let mut other = s.clone();
    other.volume_size_bytes += 512;
    assert_eq!(
        refused(primary_verdict(&f, &other)).0,
        RefuseCode::SizeMismatch
    );
    let mut other = s.clone();
    other.volume_uuid = Uuid::from_u128(8);
    assert_eq!(
        refused(primary_verdict(&f, &other)).0,
        RefuseCode::VolumeMismatch
    );
    let both = hello(Role::Primary, 4, &[(1, 1)]);
    assert_eq!(
        refused(primary_verdict(&f, &both)).0,
        RefuseCode::RoleConflict
    );
    let impostor = PrimaryFacts {
        cert_name: "m",
        ..facts(&p)
    };
    assert_eq!(
        refused(primary_verdict(&impostor, &s)).0,
        RefuseCode::IdentityMismatch
    );
    // A new generation at 8: a peer of the old one that stopped before 8
    // streams on; one that went past 8 is rolled back from 8.
    let p2 = hello(Role::Primary, 10, &[(1, 1), (2, 8)]);
    let f2 = facts(&p2);
    assert_eq!(
        primary_verdict(&f2, &hello(Role::Secondary, 7, &[(1, 1)])),
        PrimaryVerdict::Stream { from_lsn: 8 }
    );
    assert_eq!(
        plan(primary_verdict(&f2, &hello(Role::Secondary, 9, &[(1, 1)]))).rollback_from,
        Some(8)
    );
    // Split brain, a newer peer, unrelated data.
    let (code, disk) = refused(primary_verdict(
        &f2,
        &hello(Role::Secondary, 9, &[(1, 1), (3, 8)]),
    ));
    assert_eq!(
        (code, disk),
        (RefuseCode::LineageDiverged, DiskState::SplitBrain)
    );
    let newer = hello(Role::Secondary, 12, &[(1, 1), (2, 8), (4, 11)]);
    assert_eq!(
        refused(primary_verdict(&f2, &newer)).0,
        RefuseCode::LineageDiverged
    );
    let unrelated = hello(Role::Secondary, 9, &[(5, 1)]);
    assert_eq!(
        refused(primary_verdict(&f, &unrelated)).0,
        RefuseCode::UnrelatedData
    );
    // ... unless the operator overwrites it, or this history began over
    // data of unknown history (a journal created on a full volume).
    let over = PrimaryFacts {
        overwrite: true,
        ..facts(&p)
    };
    assert!(plan(primary_verdict(&over, &unrelated)).full);
    let mut p3 = p.clone();
    p3.lineage[0].unknown_before = true;
    let r = plan(primary_verdict(&facts(&p3), &unrelated));
    assert!(r.full && r.compare);
}

#[test]
fn secondary_verdicts() {
    let s = hello(Role::Secondary, 5, &[(1, 1)]);
    let ok = |local: &Hello, remote: &Hello| secondary_verdict(local, remote, "n");
    assert!(ok(&s, &hello(Role::Primary, 9, &[(1, 1)])).is_ok());
    assert_eq!(
        ok(&s, &hello(Role::Secondary, 9, &[(1, 1)])).unwrap_err().0,
        RefuseCode::RoleConflict
    );
    assert_eq!(
        secondary_verdict(&s, &hello(Role::Primary, 9, &[(1, 1)]), "m")
            .unwrap_err()
            .0,
        RefuseCode::IdentityMismatch
    );
    assert!(ok(&s, &hello(Role::Primary, 9, &[(1, 1), (2, 7)])).is_ok());
    // Its generation forked before what this node holds: the primary
    // rolls it back.
    assert!(ok(&s, &hello(Role::Primary, 9, &[(1, 1), (2, 3)])).is_ok());
    assert_eq!(
        ok(
            &hello(Role::Secondary, 5, &[(1, 1), (2, 3)]),
            &hello(Role::Primary, 9, &[(1, 1)])
        )
        .unwrap_err()
        .0,
        RefuseCode::LineageDiverged
    );
    // Unrelated data is refused unless overwritten; no history takes any.
    let unrelated = hello(Role::Primary, 9, &[(5, 1)]);
    assert_eq!(ok(&s, &unrelated).unwrap_err().0, RefuseCode::UnrelatedData);
    let mut over = unrelated.clone();
    over.overwrite = true;
    assert!(ok(&s, &over).is_ok());
    assert!(ok(&hello(Role::Secondary, 0, &[]), &unrelated).is_ok());
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
fn resync_operations_only_inside_a_resync_and_nothing_after_end() {
    use super::secondary::SecondarySession;
    use wire::{Message, SyncOp, SyncOpKind};
    let op = |seq, kind| SyncOp {
        seq,
        kind,
        offset: 0,
        len: 0,
        data: Bytes::new(),
        blake3: [0; 32],
    };
    let begin = Message::ResyncBegin {
        job: 1,
        stream_from_lsn: 1,
        ranges: 0,
        compare: false,
        rollback_from_lsn: None,
        lineage: vec![LineageEntry {
            generation_id: 7,
            start_lsn: 1,
            unknown_before: false,
        }],
    };
    let session = || SecondarySession::new(1 << 20, 1, 7, Vec::new());
    let ops = |v: Vec<SyncOp>| Message::SyncOps { ops: v };
    // Outside a resync.
    assert!(session()
        .handle(ops(vec![op(1, SyncOpKind::Zero)]))
        .is_err());
    assert!(session().handle(ops(vec![op(1, SyncOpKind::End)])).is_err());
    // Anything after End, in the same batch or the next.
    for batch in [
        vec![op(1, SyncOpKind::End), op(2, SyncOpKind::End)],
        vec![
            op(1, SyncOpKind::End),
            op(2, SyncOpKind::Zero),
            op(3, SyncOpKind::End),
        ],
    ] {
        let mut s = session();
        s.handle(begin.clone()).unwrap();
        assert!(s.handle(ops(batch)).is_err());
    }
    let mut s = session();
    s.handle(begin).unwrap();
    s.handle(ops(vec![op(1, SyncOpKind::Zero), op(2, SyncOpKind::End)]))
        .unwrap();
    assert!(s.handle(ops(vec![op(3, SyncOpKind::Zero)])).is_err());
    // Sequence numbers only go up.
    let mut s = session();
    s.handle(Message::ResyncBegin {
        job: 2,
        stream_from_lsn: 1,
        ranges: 0,
        compare: false,
        rollback_from_lsn: None,
        lineage: Vec::new(),
    })
    .unwrap();
    s.handle(ops(vec![op(5, SyncOpKind::Zero)])).unwrap();
    assert!(s.handle(ops(vec![op(5, SyncOpKind::Zero)])).is_err());
}

/// A secondary's answers that name ranges or operations the primary never
/// asked about end the session with a named reason.
#[test]
fn hostile_resync_answers_end_the_primary_session() {
    use super::primary::{End, JobKind, JobSpec, PrimarySession, ResyncLimits, SessionConfig};
    use wire::{Message, Rollback};
    let now = Instant::now();
    let cfg = SessionConfig {
        max_inflight_bytes: 1 << 20,
        max_batch_bytes: 1 << 20,
        keepalive: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        volume_bytes: 1 << 20,
        region_bytes: 65536,
        resync: ResyncLimits {
            max_rate_bytes_per_sec: 0,
            min_rate_bytes_per_sec: 0,
            max_inflight_bytes: 1 << 20,
        },
    };
    let job = |kind| JobSpec {
        kind,
        full: true,
        regions: 16,
        rollback_from: None,
        lineage: Vec::new(),
    };
    let failed = |r: Result<(), End>| match r {
        Err(End::Failed(why)) => why,
        other => panic!("expected the session to fail, got {other:?}"),
    };
    // No job: nothing of a resync or verify is expected.
    let mut idle = PrimarySession::new(cfg.clone(), 0, now);
    let need = Message::SyncNeed {
        offset: 0,
        len: 4096,
    };
    assert!(failed(idle.handle(need, now)).contains("outside a resync"));
    assert!(failed(idle.handle(Message::SyncAck { seq: 1 }, now)).contains("no resync"));
    // A resync: ranges outside the volume, acks of operations never sent.
    let mut s = PrimarySession::new(cfg.clone(), 0, now);
    let id = s
        .start_job(job(JobKind::Resync { compare: true }), now)
        .unwrap();
    s.handle(
        Message::ResyncBeginAck {
            job: id,
            rollback: Rollback::None,
        },
        now,
    )
    .unwrap();
    for (offset, len) in [(1 << 20, 1), (0, 0), (u64::MAX, 2), ((1 << 20) - 10, 11)] {
        let mut t = PrimarySession::new(cfg.clone(), 0, now);
        t.start_job(job(JobKind::Resync { compare: true }), now)
            .unwrap();
        let why = failed(t.handle(Message::SyncNeed { offset, len }, now));
        assert!(why.contains("outside the volume"), "{why}");
    }
    assert!(failed(s.handle(Message::SyncAck { seq: 99 }, now)).contains("never sent"));
    // A verify: a mismatch for an operation that was no such check.
    let mut v = PrimarySession::new(cfg, 0, now);
    v.start_job(job(JobKind::Verify), now).unwrap();
    let why = failed(v.handle(
        Message::VerifyMismatch {
            seq: 3,
            offset: 0,
            len: 65536,
        },
        now,
    ));
    assert!(why.contains("not such a check"), "{why}");
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

#[test]
fn a_discarding_peer_of_a_diverged_or_newer_history_is_rolled_back_from_the_fork() {
    // Primary: generations 1 then 2 from LSN 8; the peer forked with its
    // own generation 3 from LSN 6 and wrote up to 12.
    let p = hello(Role::Primary, 10, &[(1, 1), (2, 8)]);
    let mut victim = hello(Role::Secondary, 12, &[(1, 1), (3, 6)]);
    assert!(matches!(
        primary_verdict(&facts(&p), &victim),
        PrimaryVerdict::Refuse {
            code: RefuseCode::LineageDiverged,
            disk: DiskState::SplitBrain,
            ..
        }
    ));
    assert!(secondary_verdict(&victim, &p, "n").is_err());
    victim.discarding = true;
    assert!(secondary_verdict(&victim, &p, "n").is_ok());
    let r = plan(primary_verdict(&facts(&p), &victim));
    // From the earlier of the two forks: the peer's records from 6 differ.
    assert_eq!(r.rollback_from, Some(6));
    assert!(!r.full);

    // A newer peer history (it was promoted, then gave its changes up).
    let mut newer = hello(Role::Secondary, 15, &[(1, 1), (2, 8), (4, 11)]);
    assert!(matches!(
        primary_verdict(&facts(&p), &newer),
        PrimaryVerdict::Refuse {
            code: RefuseCode::LineageDiverged,
            ..
        }
    ));
    newer.discarding = true;
    assert!(secondary_verdict(&newer, &p, "n").is_ok());
    assert_eq!(
        plan(primary_verdict(&facts(&p), &newer)).rollback_from,
        Some(11)
    );
}

#[test]
fn a_primary_meeting_another_steps_down_refuses_or_calls_split_brain() {
    let lineage = |l: &[(u64, u64)]| hello(Role::Primary, 0, l).lineage;
    let mine = lineage(&[(1, 1)]);
    let mut newer = hello(Role::Primary, 30, &[(1, 1), (2, 21)]);
    newer.node_id = "b".into();
    // Nothing written since the other's fork at 21: step down.
    assert!(matches!(
        primary_meeting(&mine, 20, false, &newer),
        Meeting::StepDown { .. }
    ));
    // Written past it while running: both wrote, a split brain.
    assert_eq!(
        primary_meeting(&mine, 25, false, &newer),
        Meeting::SplitBrain { fork_lsn: 21 }
    );
    // The same, but fenced after an unclean stop (nothing accepted since):
    // an unplanned failover; what it holds past the fork is rolled back.
    assert!(matches!(
        primary_meeting(&mine, 25, true, &newer),
        Meeting::StepDown { .. }
    ));
    // Both started generations after 1: split brain from the earlier fork.
    assert_eq!(
        primary_meeting(&lineage(&[(1, 1), (3, 18)]), 19, false, &newer),
        Meeting::SplitBrain { fork_lsn: 18 }
    );
    // The caller is the older one: refused, it steps down on its side;
    // unless it made writes durable past our fork.
    assert_eq!(
        primary_meeting(
            &lineage(&[(1, 1), (2, 21)]),
            40,
            false,
            &hello(Role::Primary, 22, &[(1, 1)])
        ),
        Meeting::SplitBrain { fork_lsn: 21 }
    );
    let mut fenced = hello(Role::Primary, 22, &[(1, 1)]);
    fenced.fenced = true;
    assert!(matches!(
        primary_meeting(&lineage(&[(1, 1), (2, 21)]), 40, false, &fenced),
        Meeting::Refuse {
            code: RefuseCode::RoleConflict,
            ..
        }
    ));
    let older = hello(Role::Primary, 5, &[(1, 1)]);
    assert!(matches!(
        primary_meeting(&lineage(&[(1, 1), (2, 21)]), 40, false, &older),
        Meeting::Refuse {
            code: RefuseCode::RoleConflict,
            ..
        }
    ));
    assert!(matches!(
        primary_meeting(&lineage(&[(9, 1)]), 40, false, &older),
        Meeting::Refuse {
            code: RefuseCode::UnrelatedData,
            ..
        }
    ));
}

#[test]
fn a_peer_older_than_a_forced_promotion_of_an_inconsistent_copy_is_compared_in_full() {
    let mut p = hello(Role::Primary, 10, &[(1, 1), (2, 8)]);
    let older = hello(Role::Secondary, 7, &[(1, 1)]);
    assert_eq!(
        primary_verdict(&facts(&p), &older),
        PrimaryVerdict::Stream { from_lsn: 8 }
    );
    p.lineage[1].unknown_before = true;
    let r = plan(primary_verdict(&facts(&p), &older));
    assert!(r.full && r.compare && r.rollback_from.is_none());
}

#[test]
fn split_brain_policies_pick_one_victim_the_same_from_both_sides() {
    use crate::config::SplitBrainPolicy as P;
    let facts = |changed: u64, since: u64, policy: P| wire::SplitBrainFacts {
        fork_lsn: 9,
        changed_regions: changed,
        primary_since_ns: since,
        policy: policy.to_u8(),
        victim: String::new(),
    };
    let cases = [
        (P::Disconnect, (3, 10), (0, 20), None),
        (P::DiscardZeroChanges, (3, 10), (0, 20), Some("b")),
        (P::DiscardZeroChanges, (3, 10), (2, 20), None),
        (P::DiscardZeroChanges, (0, 10), (0, 20), None),
        (P::DiscardLeastChanges, (3, 10), (2, 20), Some("b")),
        (P::DiscardLeastChanges, (3, 10), (3, 20), None),
        // Unknown (the journal lost the records) is never the fewest.
        (P::DiscardLeastChanges, (u64::MAX, 10), (7, 20), Some("b")),
        (P::DiscardYoungerPrimary, (2, 10), (3, 20), Some("b")),
        (P::DiscardOlderPrimary, (2, 10), (3, 20), Some("a")),
        (P::DiscardOlderPrimary, (2, 10), (3, 10), None),
    ];
    for (policy, (ac, asince), (bc, bsince), want) in cases {
        let (a, b) = (facts(ac, asince, policy), facts(bc, bsince, policy));
        assert_eq!(
            split_brain_victim(policy, &a, "a", &b, "b"),
            want,
            "{policy} a"
        );
        assert_eq!(
            split_brain_victim(policy, &b, "b", &a, "a"),
            want,
            "{policy} b"
        );
    }
    // Different policies on the two sides: nothing moves.
    let a = facts(3, 10, P::DiscardLeastChanges);
    let b = facts(2, 20, P::DiscardOlderPrimary);
    assert_eq!(
        split_brain_victim(P::DiscardLeastChanges, &a, "a", &b, "b"),
        None
    );
}
