//! Journal space: reclaiming segments below min(checkpoint, consumer
//! cursors), folding consumers that hold space past the cap into their dirty
//! bitmaps, marking new records for consumers that already need a resync,
//! and acquiring segments (waiting, bounded, for a checkpoint when full).
//! The policy lives here; the writer only asks for a segment.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bitmap::{persist_bitmap, DirtyBitmap};
use crate::error::JournalError;
use crate::format::SegmentHeader;
use crate::read::read_records;
use crate::record::{RecordHeader, RecordKind};
use crate::segment::{create_segment, segment_path};
use crate::shared::{lock, random_u64, Inner, Meta, Pending, SegInfo};
use crate::Lsn;

/// A writer waiting for space re-signals space pressure this often.
pub(crate) const FULL_WAIT_POKE: Duration = Duration::from_millis(100);

impl Inner {
    /// Marks just-written records in the bitmap of every consumer that needs
    /// a resync and has everything before them marked.
    pub(crate) fn mark_for_resync(&self, written: &[Pending]) {
        let (Some(first), Some(last)) = (written.first(), written.last()) else {
            return;
        };
        let mut meta = lock(&self.meta);
        for c in meta.consumers.values_mut() {
            if !c.tracking() || c.marked_upto + 1 < first.lsn || c.marked_upto >= last.lsn {
                continue;
            }
            for p in written.iter().filter(|p| p.lsn > c.marked_upto) {
                if p.kind != RecordKind::Barrier {
                    c.bitmap.mark(p.offset, p.length);
                    c.bitmap.note_write_time(p.timestamp_ns);
                }
            }
            c.marked_upto = last.lsn;
        }
    }

    /// Consumers that need a resync hold no journal space for what is already
    /// marked: their bitmap is made durable, then their cursor moves past it.
    /// Returns whether a cursor moved (the superblock must be persisted).
    pub(crate) fn release_marked(&self, meta: &mut Meta) -> Result<bool, JournalError> {
        let mut moved = false;
        for (name, c) in meta.consumers.iter_mut() {
            if c.tracking() && c.acked_lsn < c.marked_upto {
                persist_bitmap(&self.cfg.dir, name, self.volume.uuid, &c.bitmap)?;
                c.acked_lsn = c.marked_upto;
                c.read_next = c.read_next.max(c.marked_upto + 1);
                moved = true;
            }
        }
        Ok(moved)
    }

    /// Moves segments nobody needs to the spare pool. The superblock (new
    /// first live segment, consumer cursors) is durable before any file is
    /// reused.
    pub(crate) fn reclaim_locked(
        &self,
        meta: &mut Meta,
        always_persist: bool,
    ) -> Result<bool, JournalError> {
        let always_persist = self.release_marked(meta)? || always_persist;
        let keep_from = meta.keep_from();
        let mut n = 0;
        while n + 1 < meta.segments.len() && meta.segments[n + 1].first_lsn <= keep_from {
            n += 1;
        }
        if n > 0 {
            meta.sb.first_live_segment = meta.segments[n].number;
        }
        if n > 0 || always_persist {
            meta.persist()?;
        }
        for _ in 0..n {
            let s = meta.segments.pop_front().expect("counted above");
            meta.spares.push(s.number);
        }
        meta.spares.sort_unstable();
        self.set_pressure(meta, false);
        if n > 0 {
            self.space_cv.notify_all();
        }
        Ok(n > 0)
    }

    /// See [`crate::Journal::reset_to`].
    pub(crate) fn reset_to(&self, lsn: Lsn) -> Result<(), JournalError> {
        let bad = |m: String| Err(JournalError::InvalidRequest(m));
        if lsn == 0 {
            return bad("LSNs start at 1".into());
        }
        let mut meta = lock(&self.meta);
        let mut st = lock(&self.state);
        if let Some(e) = st.failed_error() {
            return Err(e);
        }
        let written = st.written_lsn;
        if st.next_lsn != written + 1 || !st.queue.is_empty() {
            return bad(format!(
                "cannot reset the journal to LSN {lsn}: LSNs up to {} are still being written",
                st.next_lsn - 1
            ));
        }
        if meta.sb.checkpoint_lsn < written {
            return bad(format!(
                "cannot reset the journal to LSN {lsn}: records {}..={written} are not checkpointed",
                meta.sb.checkpoint_lsn + 1
            ));
        }
        if let Some((name, _)) = meta.consumers.iter().find(|(_, c)| c.acked_lsn < written) {
            return bad(format!(
                "cannot reset the journal to LSN {lsn}: consumer {name} still needs records"
            ));
        }
        meta.sb.checkpoint_lsn = lsn - 1;
        meta.sb.first_live_segment = meta.next_segment;
        for c in meta.consumers.values_mut() {
            c.acked_lsn = lsn - 1;
            c.read_next = lsn;
            c.marked_upto = lsn - 1;
        }
        meta.persist()?;
        while let Some(s) = meta.segments.pop_front() {
            meta.spares.push(s.number);
        }
        meta.spares.sort_unstable();
        // Under the state lock: the writer sees the count before any
        // record appended after the reset.
        self.resets.fetch_add(1, Ordering::SeqCst);
        st.next_lsn = lsn;
        st.written_lsn = lsn - 1;
        st.durable_lsn = lsn - 1;
        drop(st);
        self.written_tx.send_replace(lsn - 1);
        self.durable_tx.send_replace(lsn - 1);
        {
            let mut a = lock(&self.applied);
            a.watermark = lsn - 1;
            a.above.clear();
        }
        let mut cache = lock(&self.cache);
        cache.records.clear();
        cache.bytes = 0;
        drop(cache);
        self.set_pressure(&meta, false);
        self.space_cv.notify_all();
        tracing::info!(
            next_lsn = lsn,
            "journal reset (history replaced by a resync)"
        );
        Ok(())
    }

    /// Frees space when the checkpoint allows it but consumers hold the
    /// oldest segment: those consumers are folded so the writer never waits
    /// for them.
    pub(crate) fn fold_and_reclaim(
        &self,
        meta: &mut Meta,
        written: Lsn,
    ) -> Result<bool, JournalError> {
        if meta.segments.len() < 2 || meta.segments[1].first_lsn > meta.sb.checkpoint_lsn + 1 {
            return Ok(false);
        }
        let oldest_end = meta.segments[1].first_lsn;
        let holders: Vec<String> = meta
            .consumers
            .iter()
            .filter(|(_, c)| c.acked_lsn + 1 < oldest_end)
            .map(|(n, _)| n.clone())
            .collect();
        for name in holders {
            self.fold_consumer(meta, &name, written)?;
        }
        self.reclaim_locked(meta, false)
    }

    /// Marks every pending record of `name` (acked+1..=upto) in its bitmap,
    /// makes the bitmap durable, then jumps its cursor to `upto + 1`.
    pub(crate) fn fold_consumer(
        &self,
        meta: &mut Meta,
        name: &str,
        upto: Lsn,
    ) -> Result<(), JournalError> {
        let from = meta.consumers[name].acked_lsn + 1;
        // Records already marked at append time need no reading back.
        let scan_from = from.max(meta.consumers[name].marked_upto + 1);
        let segs: Vec<SegInfo> = meta.segments.iter().cloned().collect();
        let mut bitmap = meta.consumers[name].bitmap.clone();
        let mut marked = 0u64;
        if scan_from <= upto {
            let mut lsn = scan_from;
            // Recent records come from the cache, older ones from disk.
            let cache_front = lock(&self.cache).records.front().map(|r| r.header.lsn);
            if cache_front.is_none_or(|f| f > scan_from) {
                let disk_upto = cache_front.map_or(upto, |f| (f - 1).min(upto));
                let mut pos = None;
                while lsn <= disk_upto {
                    let (recs, p) = read_records(&segs, pos, lsn, disk_upto, usize::MAX / 2, true)?;
                    pos = p;
                    for r in &recs {
                        mark_record(&mut bitmap, &r.header);
                        marked += 1;
                    }
                    lsn = recs.last().map_or(disk_upto + 1, |r| r.header.lsn + 1);
                }
            }
            let cache = lock(&self.cache);
            for r in cache
                .records
                .iter()
                .filter(|r| r.header.lsn >= lsn && r.header.lsn <= upto)
            {
                mark_record(&mut bitmap, &r.header);
                marked += 1;
            }
        }
        persist_bitmap(&self.cfg.dir, name, self.volume.uuid, &bitmap)?;
        let c = meta.consumers.get_mut(name).expect("consumer exists");
        c.bitmap = bitmap;
        c.marked_upto = c.marked_upto.max(upto);
        c.acked_lsn = c.acked_lsn.max(upto);
        c.read_next = upto + 1;
        c.folds += 1;
        c.fold_notice = Some(upto + 1);
        c.track = true;
        self.tracking.store(true, Ordering::SeqCst);
        self.counters.folds.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            consumer = name,
            from_lsn = from,
            to_lsn = upto,
            records = marked,
            dirty_regions = c.bitmap.count(),
            "consumer held journal space past the cap; folded into its dirty bitmap"
        );
        Ok(())
    }

    /// Gets a segment for records starting at `first_lsn`, waiting (bounded)
    /// for a checkpoint when the journal is full.
    pub(crate) fn acquire_segment(
        &self,
        first_lsn: Lsn,
        written: Lsn,
    ) -> Result<SegInfo, JournalError> {
        let started = Instant::now();
        let deadline = started + self.cfg.full_wait_timeout;
        let mut meta = lock(&self.meta);
        let mut counted_wait = false;
        loop {
            let total = (meta.segments.len() + meta.spares.len()) as u64;
            let spare = if !meta.spares.is_empty() {
                Some(meta.spares.remove(0))
            } else if total < self.cfg.max_segments() {
                None
            } else {
                if self.fold_and_reclaim(&mut meta, written)? {
                    continue;
                }
                // Forced, not only on a change: pressure may already be set
                // (a consumer holding space keeps it set), and the owner's
                // checkpointer must run again for this wait.
                self.pressure_tx.send_replace(true);
                if !counted_wait {
                    counted_wait = true;
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("journal full: waiting for a checkpoint");
                }
                let now = Instant::now();
                if now >= deadline || lock(&self.state).shutdown {
                    return Err(JournalError::Full {
                        waited: now - started,
                        capacity_bytes: self.cfg.capacity_bytes,
                        checkpoint_lsn: meta.sb.checkpoint_lsn,
                    });
                }
                // Poke the checkpointer again now and then: a checkpoint that
                // found nothing new applied frees nothing and wakes no one.
                meta = self
                    .space_cv
                    .wait_timeout(meta, (deadline - now).min(FULL_WAIT_POKE))
                    .expect("journal lock poisoned")
                    .0;
                continue;
            };
            let number = meta.next_segment;
            meta.next_segment += 1;
            let header = SegmentHeader {
                volume: self.volume.uuid,
                segment: number,
                first_lsn,
                incarnation: random_u64(),
                segment_bytes: self.cfg.segment_bytes,
            };
            let file = create_segment(&self.cfg.dir, &header, spare)?;
            self.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
            let info = SegInfo {
                number,
                first_lsn,
                file: Arc::new(file),
                path: segment_path(&self.cfg.dir, number),
                salt: header.salt(),
            };
            meta.segments.push_back(info.clone());
            self.set_pressure(&meta, false);
            return Ok(info);
        }
    }
}

pub(crate) fn mark_record(bitmap: &mut DirtyBitmap, h: &RecordHeader) {
    if h.kind != RecordKind::Barrier {
        bitmap.mark(h.offset, h.length);
        bitmap.note_write_time(h.timestamp_ns);
    }
}
