//! Consumers: named, persistent readers of the journal (replication peers)
//! whose cursors hold journal space, and their dirty-region bitmaps.

use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::bitmap::{bitmap_path, load_bitmap, persist_bitmap, DirtyBitmap};
use crate::error::JournalError;
use crate::format::{MAX_CONSUMERS, MAX_CONSUMER_NAME_BYTES};
use crate::read::{read_records, DiskPos};
use crate::recovery::LogRecord;
use crate::shared::{blocking, lock, ConsumerMeta, Inner, SegInfo};
use crate::writer::sync_inner;
use crate::Lsn;

/// By default a consumer waits this long for a durable record before asking
/// for a sync (see [`Consumer::set_sync_delay`]).
pub(crate) const DEFAULT_CONSUMER_SYNC_DELAY: Duration = Duration::from_millis(2);

/// What a consumer reads next.
#[derive(Debug)]
pub enum ReadBatch {
    /// Consecutive records starting at the consumer's position.
    Records(Vec<LogRecord>),
    /// The consumer fell too far behind: its pending records were folded
    /// into `bitmap` (a snapshot; regions to resend) and it resumes at
    /// `resume_lsn`.
    Folded {
        bitmap: DirtyBitmap,
        resume_lsn: Lsn,
    },
}

pub(crate) fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A registered reader of the journal (a replication peer).
pub struct Consumer {
    inner: Arc<Inner>,
    name: String,
    /// Where the last disk read stopped: (segment, offset, LSN at offset).
    disk_pos: Option<DiskPos>,
    /// Also read records that are written but not yet durable (sync peers).
    read_written: bool,
    /// How long to wait for someone else's sync before asking for one.
    sync_delay: Duration,
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `true`: [`Consumer::read_batch`] also returns records that are written
    /// (page cache) but not yet durable, in LSN order. For sync peers, which
    /// must receive a write before it is acknowledged; such a peer can hold a
    /// record the primary loses in a power failure, which the caller must
    /// detect (the peer then reports an LSN beyond the primary's log).
    pub fn set_read_written(&mut self, yes: bool) {
        self.read_written = yes;
    }

    /// A consumer of durable records waits this long for a sync that
    /// somebody else (a FLUSH, a checkpoint) asks for before asking itself.
    /// Longer means fewer fdatasyncs and larger batches, and up to this much
    /// extra lag.
    pub fn set_sync_delay(&mut self, delay: Duration) {
        self.sync_delay = delay;
    }

    /// Moves the read position to `lsn` (the peer holds everything before
    /// it). Forward moves also release the records before `lsn`; a backward
    /// move requires the records to still be in the journal and holds them
    /// again. A pending fold notice is kept.
    pub fn seek(&mut self, lsn: Lsn) -> Result<(), JournalError> {
        let lsn = lsn.max(1);
        let mut meta = lock(&self.inner.meta);
        let written = *self.inner.written_tx.borrow();
        let oldest = meta.segments.front().map_or(written + 1, |s| s.first_lsn);
        let c = meta
            .consumers
            .get_mut(&self.name)
            .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
        if lsn > written + 1 {
            return Err(JournalError::InvalidRequest(format!(
                "consumer {} cannot seek to LSN {lsn}: the journal ends at {written}",
                self.name
            )));
        }
        if lsn <= c.acked_lsn && lsn < oldest {
            return Err(JournalError::InvalidRequest(format!(
                "consumer {} cannot seek back to LSN {lsn}: the journal starts at {oldest}",
                self.name
            )));
        }
        c.read_next = lsn;
        c.acked_lsn = if lsn <= c.acked_lsn {
            lsn - 1
        } else {
            c.acked_lsn
        };
        self.disk_pos = None;
        Ok(())
    }

    /// Next LSN this consumer will read.
    pub fn next_lsn(&self) -> Result<Lsn, JournalError> {
        lock(&self.inner.meta)
            .consumers
            .get(&self.name)
            .map(|c| c.read_next)
            .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))
    }

    /// Records `lsn` and everything before it are no longer needed. Persisted
    /// with the next superblock write (checkpoint, fold); after a crash the
    /// consumer may see some records again.
    pub fn ack(&self, lsn: Lsn) {
        let mut meta = lock(&self.inner.meta);
        if let Some(c) = meta.consumers.get_mut(&self.name) {
            c.acked_lsn = c.acked_lsn.max(lsn.min(c.read_next.saturating_sub(1)));
        }
    }

    /// Next batch of durable records (waits for one), or a fold notice.
    pub async fn read_batch(&mut self, max_bytes: usize) -> Result<ReadBatch, JournalError> {
        let mut durable_rx = if self.read_written {
            self.inner.written_tx.subscribe()
        } else {
            self.inner.durable_tx.subscribe()
        };
        loop {
            let (next, folds) = {
                let mut meta = lock(&self.inner.meta);
                let c = meta
                    .consumers
                    .get_mut(&self.name)
                    .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
                if let Some(resume_lsn) = c.fold_notice.take() {
                    self.disk_pos = None;
                    return Ok(ReadBatch::Folded {
                        bitmap: c.bitmap.clone(),
                        resume_lsn,
                    });
                }
                (c.read_next, c.folds)
            };
            let durable = *durable_rx.borrow_and_update();
            if next > durable {
                if let Some(e) = lock(&self.inner.state).failed_error() {
                    return Err(e);
                }
                if self.read_written {
                    // The bound is the written watermark: just wait for it.
                    if durable_rx.changed().await.is_err() {
                        return Err(JournalError::Shutdown);
                    }
                    continue;
                }
                let waited = tokio::time::timeout(self.sync_delay, durable_rx.changed()).await;
                match waited {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(JournalError::Shutdown),
                    Err(_) => {
                        // Nobody synced recently; ask for it ourselves.
                        if *self.inner.written_tx.borrow() >= next {
                            sync_inner(&self.inner, next).await?;
                        } else {
                            let mut written_rx = self.inner.written_tx.subscribe();
                            if *written_rx.borrow_and_update() < next {
                                let _ = written_rx.changed().await;
                            }
                        }
                    }
                }
                continue;
            }
            let from_cache: Option<Vec<LogRecord>> = {
                let cache = lock(&self.inner.cache);
                match cache.records.front() {
                    Some(f) if f.header.lsn <= next => {
                        let start = (next - f.header.lsn) as usize;
                        let mut v = Vec::new();
                        let mut bytes = 0;
                        for r in cache.records.iter().skip(start) {
                            if r.header.lsn > durable || (!v.is_empty() && bytes >= max_bytes) {
                                break;
                            }
                            bytes += r.header.encoded_len();
                            v.push(r.clone());
                        }
                        Some(v)
                    }
                    _ => None,
                }
            };
            let result = match from_cache {
                Some(v) => Ok((v, self.disk_pos)),
                None => {
                    let segs: Vec<SegInfo> =
                        lock(&self.inner.meta).segments.iter().cloned().collect();
                    let pos = self.disk_pos;
                    tokio::task::spawn_blocking(move || {
                        read_records(&segs, pos, next, durable, max_bytes, false)
                    })
                    .await
                    .map_err(|e| JournalError::InvalidRequest(format!("read task failed: {e}")))?
                }
            };
            let mut meta = lock(&self.inner.meta);
            let c = meta
                .consumers
                .get_mut(&self.name)
                .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
            if c.folds != folds {
                continue; // folded while reading: report the fold instead
            }
            let (recs, pos) = result?;
            self.disk_pos = pos;
            if let Some(last) = recs.last() {
                assert_eq!(recs[0].header.lsn, next, "consumer reads are consecutive");
                c.read_next = last.header.lsn + 1;
            }
            return Ok(ReadBatch::Records(recs));
        }
    }
}

impl Inner {
    pub(crate) async fn register_consumer(
        self: &Arc<Self>,
        name: &str,
        from_lsn: Lsn,
    ) -> Result<Consumer, JournalError> {
        if !valid_consumer_name(name) {
            return Err(JournalError::InvalidRequest(format!(
                "consumer name {name:?} must be 1..={MAX_CONSUMER_NAME_BYTES} bytes of [A-Za-z0-9._-]"
            )));
        }
        let inner = self.clone();
        let owned = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let written = *inner.written_tx.borrow();
            let oldest = meta.segments.front().map_or(written + 1, |s| s.first_lsn);
            if let Some(c) = meta.consumers.get_mut(&owned) {
                if from_lsn > c.acked_lsn + 1 {
                    c.acked_lsn = from_lsn - 1;
                    c.read_next = from_lsn;
                    meta.persist()?;
                }
            } else {
                if meta.consumers.len() >= MAX_CONSUMERS {
                    return Err(JournalError::InvalidRequest(format!(
                        "at most {MAX_CONSUMERS} consumers"
                    )));
                }
                if from_lsn < oldest.max(1) || from_lsn > written + 1 {
                    return Err(JournalError::InvalidRequest(format!(
                        "from_lsn {from_lsn} is outside the journal ({oldest}..={})",
                        written + 1
                    )));
                }
                let bitmap = load_bitmap(
                    &inner.cfg.dir,
                    &owned,
                    inner.volume.uuid,
                    inner.volume.size_bytes,
                    inner.cfg.region_bytes,
                )?;
                meta.consumers.insert(
                    owned.clone(),
                    ConsumerMeta {
                        read_next: from_lsn,
                        acked_lsn: from_lsn - 1,
                        folds: 0,
                        fold_notice: None,
                        track: !bitmap.is_empty(),
                        compare: false,
                        bitmap,
                        marked_upto: from_lsn - 1,
                    },
                );
                meta.persist()?;
            }
            Ok(Consumer {
                inner: inner.clone(),
                name: owned,
                disk_pos: None,
                read_written: false,
                sync_delay: DEFAULT_CONSUMER_SYNC_DELAY,
            })
        })
        .await
    }

    pub(crate) fn ack_consumer(&self, name: &str, lsn: Lsn) {
        let mut meta = lock(&self.meta);
        if let Some(c) = meta.consumers.get_mut(name) {
            c.acked_lsn = c.acked_lsn.max(lsn.min(c.read_next.saturating_sub(1)));
        }
    }

    pub(crate) async fn unregister_consumer(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(), JournalError> {
        let inner = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.consumers.remove(&name).is_none() {
                return Err(JournalError::UnknownConsumer(name));
            }
            meta.persist()?;
            let p = bitmap_path(&inner.cfg.dir, &name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError::io("remove bitmap", &p, e)),
            }
            inner.reclaim_locked(&mut meta, false)?;
            Ok(())
        })
        .await
    }

    pub(crate) fn consumer_bitmap(&self, name: &str) -> Result<DirtyBitmap, JournalError> {
        lock(&self.meta)
            .consumers
            .get(name)
            .map(|c| c.bitmap.clone())
            .ok_or_else(|| JournalError::UnknownConsumer(name.to_owned()))
    }

    pub(crate) async fn clear_consumer_regions(
        self: &Arc<Self>,
        name: &str,
        regions: Vec<u64>,
    ) -> Result<(), JournalError> {
        let inner = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let c = meta
                .consumers
                .get_mut(&name)
                .ok_or_else(|| JournalError::UnknownConsumer(name.clone()))?;
            if c.track {
                // Folded since the resync began: a region resent from an
                // older snapshot may have been marked again by a later
                // record. Keep every bit; the next resync sends them.
                return Ok(());
            }
            c.bitmap.clear_regions(regions);
            if c.bitmap.is_empty() {
                c.compare = false;
            }
            persist_bitmap(&inner.cfg.dir, &name, inner.volume.uuid, &c.bitmap)?;
            let tracking = meta.consumers.values().any(|c| c.tracking());
            inner.tracking.store(tracking, Ordering::SeqCst);
            meta.persist()
        })
        .await
    }

    /// Adds regions to a consumer's bitmap (a verify's mismatches, an
    /// unclean restart's hot regions, a full resync), durably. `compare`:
    /// they may be identical on the peer. The consumer keeps its mode: a
    /// streaming one goes on streaming and resyncs them next.
    pub(crate) async fn mark_consumer_regions(
        self: &Arc<Self>,
        name: &str,
        regions: DirtyBitmap,
        compare: bool,
    ) -> Result<(), JournalError> {
        let inner = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let c = meta
                .consumers
                .get_mut(&name)
                .ok_or_else(|| JournalError::UnknownConsumer(name.clone()))?;
            if regions.is_empty() {
                return Ok(());
            }
            c.bitmap.union(&regions);
            c.bitmap.note_write_time(crate::shared::now_ns());
            c.compare |= compare;
            persist_bitmap(&inner.cfg.dir, &name, inner.volume.uuid, &c.bitmap)?;
            meta.persist()
        })
        .await
    }

    /// Starts a resync of consumer `name`: from now on it is read from the
    /// returned LSN on, and the returned bitmap snapshot holds the regions to
    /// resend besides. A tracking consumer (one that fell behind) resumes
    /// after the last record marked in its bitmap; a streaming one at
    /// `peer_next`, the first LSN the peer lacks, which the journal must
    /// still hold.
    pub(crate) async fn begin_resync(
        self: &Arc<Self>,
        name: &str,
        peer_next: Lsn,
    ) -> Result<ResyncStart, JournalError> {
        let inner = self.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let written = *inner.written_tx.borrow();
            let oldest = meta.segments.front().map_or(written + 1, |s| s.first_lsn);
            let c = meta
                .consumers
                .get_mut(&name)
                .ok_or_else(|| JournalError::UnknownConsumer(name.clone()))?;
            let from = if c.track {
                c.marked_upto + 1
            } else {
                if peer_next < oldest.max(c.acked_lsn + 1) || peer_next > written + 1 {
                    return Err(JournalError::InvalidRequest(format!(
                        "consumer {name} cannot resume at LSN {peer_next}: the journal holds {}..={written} for it",
                        oldest.max(c.acked_lsn + 1)
                    )));
                }
                peer_next
            };
            // Everything before `from` is in the bitmap: durable first, then
            // the cursor may release it.
            persist_bitmap(&inner.cfg.dir, &name, inner.volume.uuid, &c.bitmap)?;
            c.track = false;
            c.fold_notice = None;
            c.read_next = from;
            c.acked_lsn = c.acked_lsn.max(from - 1);
            c.marked_upto = c.marked_upto.max(from - 1);
            let start = ResyncStart {
                bitmap: c.bitmap.clone(),
                from_lsn: from,
                compare: c.compare,
            };
            let tracking = meta.consumers.values().any(|c| c.tracking());
            inner.tracking.store(tracking, Ordering::SeqCst);
            meta.persist()?;
            Ok(start)
        })
        .await
    }

    /// A consumer's pending regions, without copying its bitmap.
    pub(crate) fn consumer_dirty(&self, name: &str) -> Result<DirtyInfo, JournalError> {
        lock(&self.meta)
            .consumers
            .get(name)
            .map(|c| DirtyInfo {
                regions: c.bitmap.count(),
                compare: c.compare,
                needs_resync: c.track,
                dirty_since_ns: c.bitmap.dirty_since_ns(),
            })
            .ok_or_else(|| JournalError::UnknownConsumer(name.to_owned()))
    }
}

/// Where a consumer's resync starts (see [`crate::Journal::begin_resync`]).
#[derive(Debug, Clone)]
pub struct ResyncStart {
    /// Regions to resend, besides the records streamed from `from_lsn`.
    pub bitmap: DirtyBitmap,
    pub from_lsn: Lsn,
    /// Compare the regions before sending them.
    pub compare: bool,
}

/// A consumer's pending regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyInfo {
    pub regions: u64,
    pub compare: bool,
    /// It fell behind (or was marked) and is not streamed until a resync.
    pub needs_resync: bool,
    /// Wall-clock ns of the oldest write its bitmap holds.
    pub dirty_since_ns: Option<u64>,
}
