//! Consumers: reading from memory and disk, acks, folding, persistence.

use super::*;
use crate::{NewRecord, ReadBatch};

fn no_cache_cfg(dir: &Path) -> JournalConfig {
    let mut c = small_cfg(dir);
    c.memory_cache_bytes = 0; // force disk reads
    c
}

#[test]
fn consumer_reads_in_order_from_memory_and_disk_and_persists_cursor() {
    for cfg in [small_cfg, no_cache_cfg] {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg(d.path());
        let rt = rt();
        {
            let (j, _) = open(&cfg).unwrap();
            rt.block_on(async {
                let mut c = j.register_consumer("dr1", 1).await.unwrap();
                for i in 0..40u64 {
                    j.append(NewRecord::write(
                        i * 512,
                        payload(512 * (i as usize % 3 + 1), i as u8),
                    ))
                    .await
                    .unwrap();
                }
                let mut got = Vec::new();
                while got.len() < 40 {
                    match c.read_batch(4096).await.unwrap() {
                        ReadBatch::Records(rs) => got.extend(rs),
                        ReadBatch::Folded { .. } => panic!("unexpected fold"),
                    }
                }
                for (i, r) in got.iter().enumerate() {
                    assert_eq!(r.header.lsn, i as u64 + 1);
                    assert_eq!(r.payload, payload(512 * (i % 3 + 1), i as u8));
                }
                c.ack(25);
                // Persisted with the next superblock write.
                j.mark_applied(0);
                j.checkpoint(0).await.unwrap();
            });
        }
        let (j, _) = open(&cfg).unwrap();
        rt.block_on(async {
            let mut c = j.register_consumer("dr1", 1).await.unwrap();
            assert_eq!(c.next_lsn().unwrap(), 26);
            match c.read_batch(1 << 20).await.unwrap() {
                ReadBatch::Records(rs) => assert_eq!(rs[0].header.lsn, 26),
                ReadBatch::Folded { .. } => panic!("unexpected fold"),
            }
        });
    }
}

#[test]
fn slow_consumer_is_folded_and_never_blocks_writes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    let mut expect = crate::DirtyBitmap::new(VOL_BYTES, cfg.region_bytes);
    let (resume, folds) = {
        let (j, _) = open(&cfg).unwrap();
        rt.block_on(async {
            let mut c = j.register_consumer("slow", 1).await.unwrap();
            c.ack(0);
            let mut pressure = j.space_pressure();
            // Far more than the capacity; the owner checkpoints on pressure,
            // the consumer never reads.
            for i in 0..400u64 {
                let off = (i * 7 * 1024) % (VOL_BYTES - 3000);
                let lsn = j
                    .append(NewRecord::write(off, payload(3000, i as u8)))
                    .await
                    .unwrap();
                expect.mark(off, 3000);
                j.mark_applied(lsn);
                if *pressure.borrow_and_update() {
                    j.checkpoint(lsn).await.unwrap();
                }
                let s = j.stats();
                assert!(s.disk_bytes <= cfg.capacity_bytes);
            }
            assert!(j.stats().folds >= 1);
            match c.read_batch(1 << 20).await.unwrap() {
                ReadBatch::Folded { bitmap, resume_lsn } => {
                    // Folded records are a prefix of what was written; the
                    // bitmap marks exactly their regions.
                    assert!(resume_lsn > 1 && resume_lsn <= j.written_lsn() + 1);
                    let mut exact = crate::DirtyBitmap::new(VOL_BYTES, cfg.region_bytes);
                    for i in 0..resume_lsn - 1 {
                        exact.mark((i * 7 * 1024) % (VOL_BYTES - 3000), 3000);
                    }
                    assert_eq!(bitmap, exact);
                    assert_eq!(j.consumer_bitmap("slow").unwrap(), bitmap);
                }
                ReadBatch::Records(_) => panic!("expected a fold"),
            }
            // Everything written is folded or marked: once a checkpoint
            // persists the marks, the bitmap covers exactly every write.
            j.checkpoint(j.applied_lsn()).await.unwrap();
            assert_eq!(j.consumer_bitmap("slow").unwrap(), expect);
            (c.next_lsn().unwrap(), j.stats().folds)
        })
    };
    assert!(folds >= 1);
    // Restart keeps the bitmap and the cursor.
    let (j, _) = open(&cfg).unwrap();
    rt.block_on(async {
        let c = j.register_consumer("slow", 1).await.unwrap();
        assert!(c.next_lsn().unwrap() >= resume);
        let bm = j.consumer_bitmap("slow").unwrap();
        assert_eq!(bm, expect, "the bitmap survives a restart");
        // Regions are cleared by a resync, which streams it again first.
        j.begin_resync("slow", 1).await.unwrap();
        let dirty: Vec<u64> = bm.dirty_regions().collect();
        j.clear_consumer_regions("slow", dirty).await.unwrap();
        assert_eq!(j.consumer_bitmap("slow").unwrap().count(), 0);
    });
    drop(j);
    let (j, _) = open(&cfg).unwrap();
    assert_eq!(j.consumer_bitmap("slow").unwrap().count(), 0);
}

/// The daemon's shape: many writers at once, a checkpointer that runs on
/// space pressure, and an async peer's consumer that never catches up. The
/// writer thread fills the journal while the checkpoint needs a sync; that
/// sync must not wait behind the writer, which waits for the checkpoint.
/// Every append succeeds and the consumer is folded.
#[test]
fn concurrent_writers_fill_past_a_stuck_consumer_without_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = small_cfg(d.path());
    // Short enough that a deadlock fails the test fast.
    cfg.full_wait_timeout = Duration::from_secs(5);
    let rt = rt();
    let (j, _) = open(&cfg).unwrap();
    let j = std::sync::Arc::new(j);
    rt.block_on(async {
        let _stuck = j.register_consumer("dr", 1).await.unwrap();
        let mut pressure = j.space_pressure();
        let checkpointer = tokio::spawn({
            let j = j.clone();
            async move {
                while pressure.changed().await.is_ok() {
                    if *pressure.borrow_and_update() {
                        let lsn = j.applied_lsn();
                        j.checkpoint(lsn).await?;
                    }
                }
                Ok::<_, crate::JournalError>(())
            }
        });
        let writers: Vec<_> = (0..16u64)
            .map(|w| {
                let j = j.clone();
                tokio::spawn(async move {
                    // 16 x 40 x 6 KiB: 3.75x the capacity.
                    for i in 0..40u64 {
                        let off = ((w * 40 + i) * 8192) % (VOL_BYTES - 8192);
                        let lsn = j
                            .append(NewRecord::write(off, payload(6 << 10, i as u8)))
                            .await?;
                        j.mark_applied(lsn);
                    }
                    Ok::<_, crate::JournalError>(())
                })
            })
            .collect();
        for w in writers {
            w.await
                .unwrap()
                .expect("no append fails while a consumer is folded");
        }
        assert_eq!(j.written_lsn(), 16 * 40);
        assert!(j.stats().folds >= 1, "the stuck consumer was folded");
        assert!(j.stats().disk_bytes <= cfg.capacity_bytes);
        checkpointer.abort();
    });
}

/// Once a consumer needs a resync it is not read any more: what is written
/// after is marked in its bitmap as it is written, and checkpoints release
/// it, so it never fills the journal again (no second fold, no writer
/// waiting) and its bitmap stays exact across a restart.
#[test]
fn consumer_that_needs_a_resync_is_marked_at_append_and_holds_no_space() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    let off = |i: u64| (i * 5 * 4096) % (VOL_BYTES - 4096);
    let mut exact = crate::DirtyBitmap::new(VOL_BYTES, cfg.region_bytes);
    let total = 600u64;
    {
        let (j, _) = open(&cfg).unwrap();
        rt.block_on(async {
            let _c = j.register_consumer("dr", 1).await.unwrap();
            let mut pressure = j.space_pressure();
            let mut folds_after_first = None;
            for i in 0..total {
                let lsn = j
                    .append(NewRecord::write(off(i), payload(3000, i as u8)))
                    .await
                    .unwrap();
                exact.mark(off(i), 3000);
                j.mark_applied(lsn);
                if *pressure.borrow_and_update() {
                    j.checkpoint(lsn).await.unwrap();
                }
                let s = j.stats();
                assert!(s.disk_bytes <= cfg.capacity_bytes);
                if s.folds == 1 && folds_after_first.is_none() {
                    folds_after_first = Some(i);
                }
            }
            let first = folds_after_first.expect("the consumer was folded once");
            // 600 x 3 KiB is ~3.5x the capacity: without marking at append it
            // would be folded again on every fill.
            assert!(first < total / 2, "first fold at write {first}");
            let s = j.stats();
            assert_eq!(s.folds, 1, "folded again after it needed a resync");
            assert_eq!(s.full_waits, 0, "the writer waited for space");
            j.checkpoint(j.applied_lsn()).await.unwrap();
            assert_eq!(j.consumer_bitmap("dr").unwrap(), exact);
        });
    }
    // The marks were made durable before the cursor moved past them.
    let (j, _) = open(&cfg).unwrap();
    rt.block_on(async {
        let c = j.register_consumer("dr", 1).await.unwrap();
        assert_eq!(j.consumer_bitmap("dr").unwrap(), exact);
        assert!(c.next_lsn().unwrap() > 1);
    });
}

#[test]
fn consumer_names_and_ranges_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let (j, _) = open(&small_cfg(d.path())).unwrap();
    rt().block_on(async {
        assert!(j.register_consumer("../evil", 1).await.is_err());
        assert!(j.register_consumer("far", 10).await.is_err());
        assert!(j.consumer_bitmap("nobody").is_err());
        j.register_consumer("ok", 1).await.unwrap();
        j.unregister_consumer("ok").await.unwrap();
        assert!(j.unregister_consumer("ok").await.is_err());
    });
    assert_eq!(j.segment_files().len(), 0);
}

#[test]
fn a_resync_streams_a_folded_consumer_again_and_keeps_what_it_still_owes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_cfg(d.path());
    let rt = rt();
    let (j, _) = open(&cfg).unwrap();
    rt.block_on(async {
        let mut c = j.register_consumer("dr", 1).await.unwrap();
        let mut pressure = j.space_pressure();
        // Past the capacity with a consumer that never reads: folded, then
        // marked at append.
        let mut written = crate::DirtyBitmap::new(VOL_BYTES, cfg.region_bytes);
        for i in 0..300u64 {
            let off = (i * 5 * 1024) % (VOL_BYTES - 3000);
            let lsn = j
                .append(NewRecord::write(off, payload(3000, i as u8)))
                .await
                .unwrap();
            written.mark(off, 3000);
            j.mark_applied(lsn);
            if *pressure.borrow_and_update() {
                j.checkpoint(lsn).await.unwrap();
            }
        }
        let info = j.consumer_dirty("dr").unwrap();
        assert!(
            info.needs_resync && info.regions > 0 && !info.compare,
            "{info:?}"
        );
        assert!(info.dirty_since_ns.is_some());
        // Folded: a clear from a session that sent older snapshots must
        // not drop the marks of later records.
        j.clear_consumer_regions("dr", written.dirty_regions().collect())
            .await
            .unwrap();
        assert_eq!(j.consumer_dirty("dr").unwrap().regions, info.regions);
        let start = j.begin_resync("dr", 1).await.unwrap();
        // Every record before `from_lsn` is in the bitmap, every later one
        // is streamed: together they are every write.
        assert!(start.from_lsn > 1 && start.from_lsn <= j.written_lsn() + 1);
        let mut covered = start.bitmap.clone();
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(200), c.read_batch(1 << 20))
                .await
            {
                Ok(Ok(ReadBatch::Records(rs))) if !rs.is_empty() => {
                    assert!(rs[0].header.lsn >= start.from_lsn);
                    for r in rs {
                        covered.mark(r.header.offset, r.header.length);
                    }
                }
                Ok(Ok(ReadBatch::Folded { .. })) => {
                    panic!("folded again right after the resync began")
                }
                _ => break,
            }
        }
        assert_eq!(covered, written);
        assert!(
            !j.consumer_dirty("dr").unwrap().needs_resync,
            "streamed, not tracked"
        );
        // Regions resent are cleared; a verify's mismatches are added back
        // with compare set.
        let first: Vec<u64> = start.bitmap.dirty_regions().take(2).collect();
        j.clear_consumer_regions("dr", start.bitmap.dirty_regions().collect())
            .await
            .unwrap();
        assert_eq!(j.consumer_dirty("dr").unwrap().regions, 0);
        let mut mismatches = crate::DirtyBitmap::new(VOL_BYTES, cfg.region_bytes);
        for r in &first {
            mismatches.mark(r * cfg.region_bytes, 1);
        }
        j.mark_consumer_regions("dr", mismatches.clone(), true)
            .await
            .unwrap();
        let info = j.consumer_dirty("dr").unwrap();
        assert_eq!((info.regions, info.compare), (first.len() as u64, true));
        assert_eq!(j.consumer_bitmap("dr").unwrap(), mismatches);
        // A streaming consumer resumes where its peer stands, if held.
        let next = c.next_lsn().unwrap();
        let again = j.begin_resync("dr", next).await.unwrap();
        assert_eq!(again.from_lsn, next);
        assert!(again.compare);
        assert!(
            j.begin_resync("dr", 1).await.is_err(),
            "LSN 1 is no longer held"
        );
    });
    // The compare flag and the regions survive a restart.
    drop(j);
    let (j, _) = open(&cfg).unwrap();
    rt.block_on(async {
        j.register_consumer("dr", 1).await.unwrap();
        let info = j.consumer_dirty("dr").unwrap();
        assert!(info.compare && info.regions > 0, "{info:?}");
    });
}
