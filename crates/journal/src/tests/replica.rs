//! Replica appends at the primary's LSNs, deterministic first generation,
//! consumers that read written (not yet durable) records, seeking.

use super::*;
use crate::record::payload_digest;
use crate::{initial_generation_id, JournalError, NewRecord, ReadBatch};

#[test]
fn fresh_journals_of_one_volume_share_their_lineage() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ja, _) = open(&small_cfg(a.path())).unwrap();
    let (jb, _) = open(&small_cfg(b.path())).unwrap();
    assert_eq!(ja.lineage(), jb.lineage());
    assert_eq!(ja.lineage(), vec![(initial_generation_id(vol().uuid), 1)]);
    assert_eq!(ja.generation(), jb.generation());
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
            assert!(j.adopt_generation(99, 7).await.is_err());
            j.adopt_generation(99, 6).await.unwrap();
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
    assert_eq!(j.lineage().last(), Some(&(99, 6)));
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
