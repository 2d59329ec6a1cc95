//! Replica appends at the primary's LSNs, generations taken over, resets
//! of a replica's history, the inconsistent flag, listing what records
//! since an LSN wrote; consumers that read written (not yet durable)
//! records, seeking.

use super::*;
use crate::record::payload_digest;
use crate::{GenerationEntry, JournalError, NewRecord, ReadBatch};

fn generation(id: u64, start_lsn: u64) -> GenerationEntry {
    GenerationEntry {
        id,
        start_lsn,
        unknown_before: false,
    }
}

#[test]
fn replica_appends_keep_the_primary_lsns_and_refuse_gaps() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    {
        let (j, _) = open(&cfg).unwrap();
        let g = j.generation();
        rt.block_on(async {
            // A whole batch is admitted in order, then waited for.
            let mut handles = Vec::new();
            for lsn in 1..=5u64 {
                let rec = NewRecord::write(lsn * 512, payload(512, lsn as u8));
                let digest = payload_digest(&rec.payload);
                handles.push(j.append_replica(lsn, g, rec, digest).await.unwrap());
            }
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.written().await.unwrap(), i as u64 + 1);
            }
            let gap = j
                .append_replica(7, g, NewRecord::trim(0, 512), [0; 32])
                .await;
            assert!(
                matches!(gap, Err(JournalError::InvalidRequest(_))),
                "{gap:?}"
            );
            let old = j
                .append_replica(5, g, NewRecord::trim(0, 512), [0; 32])
                .await;
            assert!(old.is_err());
            let wrong_gen = j
                .append_replica(6, g + 1, NewRecord::trim(0, 512), [0; 32])
                .await;
            assert!(wrong_gen.is_err());
            // A generation is adopted only at exactly the next LSN.
            assert!(j.adopt_generation(generation(99, 7)).await.is_err());
            j.adopt_generation(generation(99, 6)).await.unwrap();
            let h = j
                .append_replica(6, 99, NewRecord::trim(0, 512), [0; 32])
                .await
                .unwrap();
            assert_eq!(h.written().await.unwrap(), 6);
            j.sync(6).await.unwrap();
        });
    }
    let (j, rec) = open(&cfg).unwrap();
    assert_eq!(rec.last_lsn, 6);
    assert_eq!(j.lineage().last(), Some(&generation(99, 6)));
    let recs = collect(rec);
    assert_eq!(recs[4].payload, payload(512, 5));
    assert_eq!(recs[5].header.generation, 99);
}

#[test]
fn written_mode_consumer_sees_records_before_they_are_durable_and_seeks() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = small_cfg(d.path());
    cfg.max_batch_wait = std::time::Duration::ZERO;
    let rt = rt();
    let (j, _) = open(&cfg).unwrap();
    rt.block_on(async {
        let mut c = j.register_consumer("sync1", 1).await.unwrap();
        c.set_read_written(true);
        for i in 0..3u64 {
            j.append(NewRecord::write(i * 512, payload(512, i as u8)))
                .await
                .unwrap();
        }
        let ReadBatch::Records(rs) = c.read_batch(1 << 20).await.unwrap() else {
            panic!("fold")
        };
        assert_eq!(rs.len(), 3);
        assert_eq!(j.durable_lsn(), 0, "read without a sync");
        // Back to LSN 2: records are still held.
        c.seek(2).unwrap();
        let ReadBatch::Records(rs) = c.read_batch(1 << 20).await.unwrap() else {
            panic!("fold")
        };
        assert_eq!(rs[0].header.lsn, 2);
        assert!(c.seek(5).is_err(), "beyond the written LSN");
        j.ack_consumer("sync1", 3);
        assert_eq!(j.oldest_lsn(), 1);
    });
}

#[test]
fn a_replica_resets_to_its_primarys_position_and_lineage() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    {
        let (j, _) = open(&cfg).unwrap();
        rt.block_on(async {
            j.set_lineage(vec![generation(3, 1)]).await.unwrap();
            for lsn in 1..=40u64 {
                let rec = NewRecord::write((lsn % 8) * 4096, payload(4096, lsn as u8));
                let digest = payload_digest(&rec.payload);
                j.append_replica(lsn, 3, rec, digest)
                    .await
                    .unwrap()
                    .written()
                    .await
                    .unwrap();
                j.mark_applied(lsn);
            }
            // What the records since LSN 37 wrote (a diverged tail).
            let recs = j.records_since(37).await.unwrap().unwrap();
            assert_eq!(recs.len(), 4);
            assert_eq!(
                (recs[0].lsn, recs[0].offset, recs[0].length),
                (37, (37 % 8) * 4096, 4096)
            );
            assert_eq!(
                recs[0].bytes,
                4096 + crate::record::RECORD_HEADER_BYTES as u64
            );
            assert_eq!(j.records_since(41).await.unwrap(), Some(Vec::new()));
            // Not checkpointed yet: refused.
            assert!(j.reset_to(1000).await.is_err());
            j.checkpoint(40).await.unwrap();
            j.set_inconsistent(true).await.unwrap();
            // The primary's history replaces ours from LSN 1000 on.
            j.reset_to(1000).await.unwrap();
            j.set_lineage(vec![
                generation(3, 1),
                generation(8, 900),
                generation(9, 2000),
            ])
            .await
            .unwrap();
            assert_eq!(
                j.generation(),
                8,
                "a generation starting later is adopted later"
            );
            assert_eq!(j.next_lsn(), 1000);
            assert_eq!((j.written_lsn(), j.durable_lsn()), (999, 999));
            assert_eq!(
                j.records_since(1).await.unwrap(),
                None,
                "the old records are gone"
            );
            for lsn in 1000..=1002u64 {
                let rec = NewRecord::trim(lsn * 512 % VOL_BYTES, 512);
                j.append_replica(lsn, 8, rec, [0; 32])
                    .await
                    .unwrap()
                    .written()
                    .await
                    .unwrap();
            }
            assert!(j
                .append_replica(1, 8, NewRecord::trim(0, 512), [0; 32])
                .await
                .is_err());
            j.sync(1002).await.unwrap();
        });
    }
    let (j, rec) = open(&cfg).unwrap();
    assert!(j.is_inconsistent(), "the flag survives a restart");
    assert_eq!((rec.checkpoint_lsn, rec.last_lsn), (999, 1002));
    let recs = collect(rec);
    assert_eq!(
        recs.iter().map(|r| r.header.lsn).collect::<Vec<_>>(),
        vec![1000, 1001, 1002]
    );
    assert_eq!(j.lineage().len(), 2);
    rt.block_on(j.set_inconsistent(false)).unwrap();
    drop(j);
    let (j, _) = open(&cfg).unwrap();
    assert!(!j.is_inconsistent());
}

/// A reset at the very next LSN (a resync that streams on from where the
/// replica stood) must not append to the segment of the replaced history:
/// recovery would skip it and lose the records.
#[test]
fn records_after_a_reset_at_the_next_lsn_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    {
        let (j, _) = open(&cfg).unwrap();
        rt.block_on(async {
            j.set_lineage(vec![generation(3, 1)]).await.unwrap();
            let append = |lsn: u64| {
                let rec = NewRecord::write((lsn % 8) * 4096, payload(4096, lsn as u8));
                let digest = payload_digest(&rec.payload);
                j.append_replica(lsn, 3, rec, digest)
            };
            for lsn in 1..=9u64 {
                append(lsn).await.unwrap().written().await.unwrap();
                j.mark_applied(lsn);
            }
            j.checkpoint(9).await.unwrap();
            j.reset_to(10).await.unwrap();
            for lsn in 10..=30u64 {
                append(lsn).await.unwrap().written().await.unwrap();
            }
            j.sync(30).await.unwrap();
        });
    }
    let (_, rec) = open(&cfg).unwrap();
    assert_eq!((rec.checkpoint_lsn, rec.last_lsn), (9, 30));
    let lsns: Vec<u64> = collect(rec).iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, (10..=30).collect::<Vec<_>>());
}
