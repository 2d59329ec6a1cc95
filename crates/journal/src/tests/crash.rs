//! Crash simulation: random histories through the journal, then a torn or
//! bit-flipped tail (or corruption of synced records), then recovery + redo
//! checked against an in-memory volume model.

use std::os::unix::fs::FileExt;

use proptest::prelude::*;

use super::*;
use crate::{JournalError, NewRecord};

const BLOCK: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write { block: u64, blocks: u64, seed: u8 },
    Trim { block: u64, blocks: u64 },
    Zero { block: u64, blocks: u64 },
    Flush,
    Checkpoint,
}

#[derive(Clone, Debug)]
enum Damage {
    /// Torn write: everything from a byte inside the record on is lost.
    Cut { byte: usize },
    /// One flipped bit inside the record.
    Flip { bit: usize },
    /// The record's pages never reached the disk, later ones did.
    Hole,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let extent = (0u64..16).prop_flat_map(|b| (Just(b), 1u64..=(16 - b).min(2)));
    prop_oneof![
        6 => (extent.clone(), any::<u8>()).prop_map(|((block, blocks), seed)| Op::Write { block, blocks, seed }),
        1 => extent.clone().prop_map(|(block, blocks)| Op::Trim { block, blocks }),
        1 => extent.prop_map(|(block, blocks)| Op::Zero { block, blocks }),
        2 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
    ]
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(|byte| Damage::Cut { byte }),
        any::<usize>().prop_map(|bit| Damage::Flip { bit }),
        Just(Damage::Hole),
    ]
}

struct Run {
    /// Every acknowledged record in LSN order (index = LSN - 1).
    history: Vec<(RecordHeader, Bytes)>,
    last_flushed: Lsn,
    checkpoint: Lsn,
    durable_at_crash: Lsn,
}

use crate::Lsn;

fn crash_cfg(dir: &Path) -> JournalConfig {
    let mut c = small_cfg(dir);
    c.capacity_bytes = 64 * c.segment_bytes;
    c
}

fn run_ops(dir: &Path, ops: &[Op]) -> Run {
    let cfg = crash_cfg(dir);
    let (j, _) = open(&cfg).unwrap();
    let mut run = Run {
        history: Vec::new(),
        last_flushed: 0,
        checkpoint: 0,
        durable_at_crash: 0,
    };
    rt().block_on(async {
        for op in ops {
            let rec = match *op {
                Op::Write {
                    block,
                    blocks,
                    seed,
                } => NewRecord::write(block * BLOCK, payload((blocks * BLOCK) as usize, seed)),
                Op::Trim { block, blocks } => NewRecord::trim(block * BLOCK, blocks * BLOCK),
                Op::Zero { block, blocks } => {
                    NewRecord::write_zeroes(block * BLOCK, blocks * BLOCK)
                }
                Op::Flush => {
                    let w = j.written_lsn();
                    if w > 0 {
                        j.sync(w).await.unwrap();
                    }
                    run.last_flushed = w;
                    continue;
                }
                Op::Checkpoint => {
                    let a = j.applied_lsn();
                    j.checkpoint(a).await.unwrap();
                    run.checkpoint = a;
                    continue;
                }
            };
            let lsn = j.append(rec.clone()).await.unwrap();
            assert_eq!(lsn, run.history.len() as u64 + 1);
            j.mark_applied(lsn); // the caller's buffered volume write
            let h = RecordHeader {
                lsn,
                generation: 0,
                kind: rec.kind,
                synced_lsn: 0,
                offset: rec.offset,
                length: rec.length,
                timestamp_ns: 0,
                payload_len: rec.payload.len() as u32,
                payload_blake3: [0; 32],
            };
            run.history.push((h, rec.payload));
        }
    });
    run.durable_at_crash = j.durable_lsn();
    drop(j);
    run
}

fn model_upto(history: &[(RecordHeader, Bytes)], lsn: Lsn) -> Model {
    let mut m = Model::new();
    for (h, p) in &history[..lsn as usize] {
        m.apply(h, p);
    }
    m
}

fn zero_range(path: &Path, from: u64, to: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}

/// Damages a record picked among the never-synced ones; returns the LSN the
/// recovered log must end at.
fn damage_tail(dir: &Path, run: &Run, pick: usize, damage: &Damage) -> Option<Lsn> {
    let map = record_map(dir);
    let unsynced: Vec<_> = map
        .iter()
        .filter(|r| r.3.lsn > run.durable_at_crash)
        .collect();
    if unsynced.is_empty() {
        return None;
    }
    let (path, off, len, h) = unsynced[pick % unsynced.len()].clone();
    match *damage {
        Damage::Cut { byte } => {
            let cut = off + (byte % len) as u64;
            let seg_len = std::fs::metadata(&path).unwrap().len();
            zero_range(&path, cut, seg_len);
            for (p, o, l, r) in &map {
                if r.lsn > h.lsn && *p != path {
                    zero_range(p, *o, *o + *l as u64);
                }
            }
        }
        Damage::Flip { bit } => {
            let bit = bit % (len * 8);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off + (bit / 8) as u64).unwrap();
            b[0] ^= 1 << (bit % 8);
            f.write_all_at(&b, off + (bit / 8) as u64).unwrap();
        }
        Damage::Hole => zero_range(&path, off, off + len as u64),
    }
    // Zeroing bytes that were already zero changes nothing: the expected
    // end of the log is the end of the intact run after the durable point.
    let after: std::collections::BTreeSet<Lsn> = record_map(dir).iter().map(|r| r.3.lsn).collect();
    let mut last = run.durable_at_crash;
    while after.contains(&(last + 1)) && last < run.history.len() as u64 {
        last += 1;
    }
    assert!(last < h.lsn || after.contains(&h.lsn));
    Some(last)
}

fn recover_and_check(dir: &Path, run: &Run, damaged: Option<Lsn>) -> Result<(), TestCaseError> {
    let cfg = crash_cfg(dir);
    let (j, rec) = open(&cfg).map_err(|e| TestCaseError::fail(format!("open failed: {e}")))?;
    let last = rec.last_lsn;
    let written = run.history.len() as u64;
    prop_assert!(
        last >= run.last_flushed,
        "lost flushed writes: last {} < flushed {}",
        last,
        run.last_flushed
    );
    match damaged {
        Some(l) => prop_assert_eq!(last, l, "cut exactly before the damaged record"),
        None => prop_assert_eq!(last, written),
    }
    prop_assert_eq!(rec.checkpoint_lsn, run.checkpoint);
    // The volume as of the checkpoint (fsynced), then redo.
    let mut vol = model_upto(&run.history, run.checkpoint);
    let mut expect_lsn = run.checkpoint + 1;
    for r in rec {
        let r = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(r.header.lsn, expect_lsn);
        expect_lsn += 1;
        vol.apply(&r.header, &r.payload);
    }
    prop_assert_eq!(expect_lsn, last + 1);
    prop_assert_eq!(
        &vol,
        &model_upto(&run.history, last),
        "volume is not the prefix up to {}",
        last
    );
    // The cut is stable: appends continue densely and a reopen agrees.
    let next = rt().block_on(j.append(NewRecord::trim(0, BLOCK))).unwrap();
    prop_assert_eq!(next, last + 1);
    rt().block_on(j.sync(next)).unwrap();
    drop(j);
    let (_j, rec2) = open(&cfg).unwrap();
    prop_assert_eq!(rec2.last_lsn, last + 1);
    prop_assert_eq!(rec2.dropped_bytes, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_crash_recovers_a_prefix_with_every_flushed_write(
        ops in proptest::collection::vec(arb_op(), 1..60),
        pick in any::<usize>(),
        damage in proptest::option::of(arb_damage()),
    ) {
        let d = tempfile::tempdir().unwrap();
        let run = run_ops(d.path(), &ops);
        let damaged = damage.as_ref().and_then(|dm| damage_tail(d.path(), &run, pick, dm));
        recover_and_check(d.path(), &run, damaged)?;
    }

    #[test]
    fn prop_corruption_of_synced_records_is_refused(
        ops in proptest::collection::vec(arb_op(), 1..40),
        pick in any::<usize>(),
        bit in any::<usize>(),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::Checkpoint)).collect();
        let d = tempfile::tempdir().unwrap();
        let run = run_ops(d.path(), &ops);
        let map = record_map(d.path());
        // Records that a later record proves were synced.
        let proven: Vec<_> = map
            .iter()
            .filter(|r| map.iter().any(|l| l.3.lsn > r.3.lsn && l.3.synced_lsn >= r.3.lsn))
            .collect();
        prop_assume!(!proven.is_empty());
        let (path, off, len, h) = proven[pick % proven.len()].clone();
        // The record on disk is the one the run appended, and a record that
        // a later one proves synced was durable when the run ended.
        let (appended, _) = &run.history[h.lsn as usize - 1];
        prop_assert_eq!((appended.kind, appended.offset, appended.length), (h.kind, h.offset, h.length));
        prop_assert!(h.lsn <= run.durable_at_crash, "LSN {} proven synced but durable only to {}", h.lsn, run.durable_at_crash);
        let bit = bit % (len * 8);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off + (bit / 8) as u64).unwrap();
        b[0] ^= 1 << (bit % 8);
        f.write_all_at(&b, off + (bit / 8) as u64).unwrap();
        match open(&crash_cfg(d.path())) {
            Err(JournalError::CorruptRecord { path: p, offset, lsn, .. }) => {
                prop_assert_eq!(p, path);
                prop_assert_eq!(offset, off);
                prop_assert_eq!(lsn, h.lsn);
            }
            Err(e) => prop_assert!(false, "wrong error: {}", e),
            Ok((_, rec)) => prop_assert!(false, "replayed past corruption: last {}", rec.last_lsn),
        }
    }
}
