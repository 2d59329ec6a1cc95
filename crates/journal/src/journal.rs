//! The `Journal` facade: open (scan, recovery hand-off, writer thread),
//! appends, syncs and watermarks, checkpoints, statistics. The parts live in
//! their own modules: `shared` (state), `writer` (group commit), `space`
//! (retention and folds), `consumer`, `lineage`, `superblock`, `read`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{watch, Semaphore};

use crate::bitmap::{load_bitmap, persist_bitmap, DirtyBitmap};
use crate::config::{JournalConfig, VolumeIdentity};
use crate::consumer::{Consumer, DirtyInfo, ResyncStart};
use crate::error::JournalError;
use crate::format::GenerationEntry;
use crate::read::RecordSummary;
use crate::record::payload_digest;
use crate::recovery::{scan, Recovery};
use crate::segment::segment_path;
use crate::shared::{
    blocking, lock, Applied, Cache, ConsumerMeta, Counters, Inner, Meta, SegInfo, State,
};
use crate::superblock::{create_superblock, load_superblock};
use crate::writer::{sync_inner, writer_main, AppendHandle, CurrentSeg, NewRecord};
use crate::Lsn;

/// Counters for benchmarks and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub fdatasyncs: u64,
    pub sync_requests: u64,
    pub write_batches: u64,
    pub pwritev_calls: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub folds: u64,
    pub full_waits: u64,
    /// Live segment files (records still needed).
    pub used_bytes: u64,
    /// Live + spare segment files on disk.
    pub disk_bytes: u64,
    pub capacity_bytes: u64,
    pub cache_bytes: u64,
    pub written_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
}

/// The write-ahead journal of one volume. `Send + Sync`; share it via `Arc`.
pub struct Journal {
    pub(crate) inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens (or creates, when the directory has no journal) the journal of
    /// `volume`, scanning and validating it. Redo every record of the
    /// returned [`Recovery`] onto the volume before serving I/O.
    pub fn open(
        cfg: JournalConfig,
        volume: VolumeIdentity,
    ) -> Result<(Journal, Recovery), JournalError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| JournalError::io("create journal dir", &cfg.dir, e))?;
        let sb_path = cfg.dir.join("superblock");
        if !sb_path.exists() {
            if !crate::segment::list_segments(&cfg.dir)?.is_empty() {
                return Err(JournalError::CorruptMetadata {
                    path: sb_path,
                    reason: "segment files exist but the superblock is missing".into(),
                });
            }
            create_superblock(&cfg, volume, &sb_path)?;
        }
        let (sb, sb_file) = load_superblock(&sb_path)?;
        if sb.volume != volume.uuid {
            return Err(JournalError::VolumeMismatch {
                path: cfg.dir.clone(),
                found: sb.volume,
                expected: volume.uuid,
            });
        }
        if sb.volume_size_bytes != volume.size_bytes {
            return Err(JournalError::Config(format!(
                "volume size changed from {} to {} bytes; the journal cannot follow a resize",
                sb.volume_size_bytes, volume.size_bytes
            )));
        }
        let mut cfg = cfg;
        if sb.region_bytes != cfg.region_bytes {
            tracing::warn!(
                configured = cfg.region_bytes,
                on_disk = sb.region_bytes,
                "region_bytes is fixed at journal creation; using the on-disk value"
            );
            cfg.region_bytes = sb.region_bytes;
        }

        let outcome = scan(&cfg.dir, volume.uuid, &sb)?;
        let last_lsn = outcome.last_lsn;
        let checkpoint = sb.checkpoint_lsn;
        let recovery = Recovery::new(&outcome.live, checkpoint, last_lsn, outcome.dropped_bytes);

        let mut consumers = BTreeMap::new();
        let oldest = outcome
            .live
            .first()
            .map(|s| s.header.first_lsn)
            .unwrap_or(last_lsn + 1);
        for c in &sb.consumers {
            // A sync peer may have acknowledged records this journal lost
            // in a crash: it cannot owe less than what the log holds.
            let mut c = c.clone();
            c.acked_lsn = c.acked_lsn.min(last_lsn.max(checkpoint));
            let c = &c;
            let mut bitmap = load_bitmap(
                &cfg.dir,
                &c.name,
                volume.uuid,
                volume.size_bytes,
                cfg.region_bytes,
            )?;
            let mut meta = ConsumerMeta {
                read_next: c.acked_lsn + 1,
                acked_lsn: c.acked_lsn,
                folds: c.folds,
                fold_notice: None,
                track: !bitmap.is_empty(),
                compare: c.compare,
                bitmap: bitmap.clone(),
                marked_upto: c.acked_lsn,
            };
            if c.acked_lsn + 1 < oldest {
                // Records it needs are gone (should not happen): unknown history.
                tracing::error!(consumer = %c.name, "consumer cursor predates the journal; marking the whole volume dirty");
                bitmap.mark(0, volume.size_bytes);
                persist_bitmap(&cfg.dir, &c.name, volume.uuid, &bitmap)?;
                meta.bitmap = bitmap;
                meta.acked_lsn = last_lsn;
                meta.read_next = last_lsn + 1;
                meta.fold_notice = Some(last_lsn + 1);
                meta.marked_upto = last_lsn;
                meta.track = true;
                meta.compare = true;
            }
            consumers.insert(c.name.clone(), meta);
        }

        let max_seen = outcome
            .live
            .iter()
            .map(|s| s.number)
            .chain(outcome.spares.iter().copied())
            .max();
        let mut spares = outcome.spares;
        // Never keep more files than the cap allows (capacity may have shrunk).
        while spares.len() as u64 + outcome.live.len() as u64 > cfg.max_segments() {
            let Some(n) = spares.pop() else { break };
            let p = segment_path(&cfg.dir, n);
            std::fs::remove_file(&p)
                .map_err(|e| JournalError::io("remove spare segment", &p, e))?;
        }
        let segments: VecDeque<SegInfo> = outcome
            .live
            .iter()
            .map(|s| SegInfo {
                number: s.number,
                first_lsn: s.header.first_lsn,
                file: s.file.clone(),
                path: s.path.clone(),
                salt: s.salt,
            })
            .collect();
        let current = outcome.live.last().map(|s| CurrentSeg {
            info: segments.back().expect("live segment").clone(),
            offset: s.end_offset,
            unsynced: false,
            next_lsn: s.last_lsn + 1,
            resets: 0,
        });
        let generation = sb.lineage.last().map(|g| g.id).unwrap_or(0);
        let mut meta = Meta {
            sb,
            sb_file,
            sb_path,
            segments,
            spares,
            next_segment: max_seen.map_or(0, |n| n + 1),
            consumers,
        };
        if meta.consumers.values().any(|c| c.fold_notice.is_some()) {
            meta.persist()?;
        }
        let durable = last_lsn.max(checkpoint);
        let inner = Arc::new(Inner {
            pending: Arc::new(Semaphore::new(cfg.max_pending_bytes)),
            state: Mutex::new(State {
                next_lsn: durable + 1,
                generation,
                queue: VecDeque::new(),
                queued_bytes: 0,
                sync_waiters: Vec::new(),
                written_lsn: durable,
                durable_lsn: durable,
                failed: None,
                writer_idle: false,
                shutdown: false,
            }),
            writer_cv: Condvar::new(),
            space_cv: Condvar::new(),
            written_tx: watch::Sender::new(durable),
            durable_tx: watch::Sender::new(durable),
            pressure_tx: watch::Sender::new(
                meta.live_bytes(cfg.segment_bytes) >= cfg.pressure_bytes,
            ),
            tracking: AtomicBool::new(meta.consumers.values().any(|c| c.tracking())),
            resets: AtomicU64::new(0),
            meta: Mutex::new(meta),
            cache: Mutex::new(Cache::default()),
            applied: Mutex::new(Applied {
                watermark: checkpoint,
                above: BTreeSet::new(),
            }),
            counters: Counters::default(),
            fail_next_sync: AtomicBool::new(false),
            cfg,
            volume,
        });
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_main(w, current))
            .map_err(|e| JournalError::io("spawn writer thread", &inner.cfg.dir, e))?;
        tracing::info!(checkpoint_lsn = checkpoint, last_lsn, "journal opened");
        Ok((
            Journal {
                inner,
                writer: Some(writer),
            },
            recovery,
        ))
    }

    /// Appends a record; resolves with its LSN once it is written (page
    /// cache), in LSN order. Call [`Journal::sync`] for durability.
    pub async fn append(&self, rec: NewRecord) -> Result<Lsn, JournalError> {
        self.inner.admit(rec, None).await?.written().await
    }

    /// Appends a record received from the primary at the primary's LSN and
    /// generation. `lsn` must be the next LSN (no gap, no overlap) and
    /// `generation` the current one (see [`Journal::adopt_generation`]).
    /// Resolves once the record is queued, so a receiver can admit a whole
    /// batch in order and then wait for the handles (one write batch).
    /// `payload_blake3` is the digest the primary's journal stored, which the
    /// caller has already checked against the payload: it is not hashed twice.
    pub async fn append_replica(
        &self,
        lsn: Lsn,
        generation: u64,
        rec: NewRecord,
        payload_blake3: [u8; 32],
    ) -> Result<AppendHandle, JournalError> {
        debug_assert_eq!(payload_digest(&rec.payload), payload_blake3);
        self.inner
            .admit(rec, Some((lsn, generation, payload_blake3)))
            .await
    }

    /// Resolves once every record up to `lsn` is durable. Concurrent calls
    /// share one fdatasync (group commit).
    pub async fn sync(&self, lsn: Lsn) -> Result<(), JournalError> {
        sync_inner(&self.inner, lsn).await
    }

    pub fn written_lsn(&self) -> Lsn {
        *self.inner.written_tx.borrow()
    }

    pub fn durable_lsn(&self) -> Lsn {
        *self.inner.durable_tx.borrow()
    }

    /// Watch of the durable watermark (for replication acks).
    pub fn durable_watch(&self) -> watch::Receiver<Lsn> {
        self.inner.durable_tx.subscribe()
    }

    /// The caller's volume write for `lsn` completed; order does not matter.
    pub fn mark_applied(&self, lsn: Lsn) {
        let written = self.written_lsn();
        debug_assert!(
            lsn <= written,
            "applied LSN {lsn} not written yet ({written})"
        );
        let mut a = lock(&self.inner.applied);
        if lsn <= a.watermark {
            return;
        }
        a.above.insert(lsn);
        loop {
            let next = a.watermark + 1;
            if !a.above.remove(&next) {
                break;
            }
            a.watermark = next;
        }
    }

    /// Highest LSN such that every volume write up to it completed.
    /// Why the journal refuses appends and syncs (an fdatasync or write
    /// failed), until it is opened again; `None` while it works.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.state).failed.clone()
    }

    pub fn applied_lsn(&self) -> Lsn {
        lock(&self.inner.applied).watermark
    }

    pub fn checkpoint_lsn(&self) -> Lsn {
        lock(&self.inner.meta).sb.checkpoint_lsn
    }

    /// The volume is durable (fsynced) up to `lsn`: persist that and reclaim
    /// segments nobody needs. `lsn` must not exceed [`Journal::applied_lsn`].
    pub async fn checkpoint(&self, lsn: Lsn) -> Result<(), JournalError> {
        let applied = self.applied_lsn();
        if lsn > applied {
            return Err(JournalError::InvalidRequest(format!(
                "checkpoint LSN {lsn} is beyond the applied LSN {applied}"
            )));
        }
        // The next LSN after a crash must stay above the checkpoint.
        self.sync(lsn).await?;
        let inner = self.inner.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if lsn > meta.sb.checkpoint_lsn {
                meta.sb.checkpoint_lsn = lsn;
            }
            inner.reclaim_locked(&mut meta, true)?;
            // A writer waiting for space may now fold a consumer that holds
            // the oldest segment (see `fold_and_reclaim`).
            inner.space_cv.notify_all();
            Ok(())
        })
        .await
    }

    /// `true` while live segments pass `pressure_bytes` or the writer waits
    /// for space: the owner should checkpoint.
    pub fn space_pressure(&self) -> watch::Receiver<bool> {
        self.inner.pressure_tx.subscribe()
    }

    pub fn stats(&self) -> JournalStats {
        let c = &self.inner.counters;
        let (used, disk, checkpoint) = {
            let m = lock(&self.inner.meta);
            let seg = self.inner.cfg.segment_bytes;
            (
                m.live_bytes(seg),
                (m.segments.len() + m.spares.len()) as u64 * seg,
                m.sb.checkpoint_lsn,
            )
        };
        JournalStats {
            fdatasyncs: c.fdatasyncs.load(Ordering::Relaxed),
            sync_requests: c.sync_requests.load(Ordering::Relaxed),
            write_batches: c.write_batches.load(Ordering::Relaxed),
            pwritev_calls: c.pwritev_calls.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            folds: c.folds.load(Ordering::Relaxed),
            full_waits: c.full_waits.load(Ordering::Relaxed),
            used_bytes: used,
            disk_bytes: disk,
            capacity_bytes: self.inner.cfg.capacity_bytes,
            cache_bytes: lock(&self.inner.cache).bytes as u64,
            written_lsn: self.written_lsn(),
            durable_lsn: self.durable_lsn(),
            applied_lsn: self.applied_lsn(),
            checkpoint_lsn: checkpoint,
        }
    }

    /// The LSN the next append gets (records queued but not yet written
    /// count as taken).
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.inner.state).next_lsn
    }

    /// Dirty-bitmap region size (fixed at creation).
    pub fn region_bytes(&self) -> u64 {
        self.inner.cfg.region_bytes
    }

    /// First LSN the journal still holds (written LSN + 1 when empty).
    pub fn oldest_lsn(&self) -> Lsn {
        let meta = lock(&self.inner.meta);
        let written = *self.inner.written_tx.borrow();
        meta.segments.front().map_or(written + 1, |s| s.first_lsn)
    }

    /// Current generation id (the last lineage entry).
    pub fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// The generation lineage, oldest first (empty: no history yet).
    pub fn lineage(&self) -> Vec<GenerationEntry> {
        self.inner.lineage()
    }

    /// Starts generation `id` at the next LSN (a new history: the first one,
    /// after an unclean restart, on promote); persisted before any record
    /// carries it. `unknown_before`: it begins over data of unknown history.
    /// Returns its start LSN.
    pub async fn start_generation(
        &self,
        id: u64,
        unknown_before: bool,
    ) -> Result<Lsn, JournalError> {
        self.inner.push_generation(id, None, unknown_before).await
    }

    /// A replica takes over a generation of its primary: only valid when it
    /// begins exactly at the next LSN.
    pub async fn adopt_generation(&self, g: GenerationEntry) -> Result<(), JournalError> {
        self.inner
            .push_generation(g.id, Some(g.start_lsn), g.unknown_before)
            .await
            .map(|_| ())
    }

    /// Replaces the lineage with a primary's (a replica at the start of a
    /// resync; see [`Journal::reset_to`]).
    pub async fn set_lineage(&self, lineage: Vec<GenerationEntry>) -> Result<(), JournalError> {
        self.inner.set_lineage(lineage).await
    }

    /// Whether the volume is marked inconsistent (a resync into it is running
    /// or was interrupted).
    pub fn is_inconsistent(&self) -> bool {
        lock(&self.inner.meta).sb.inconsistent
    }

    /// Marks the volume inconsistent or consistent, durably, before the
    /// caller relies on it.
    pub async fn set_inconsistent(&self, inconsistent: bool) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.sb.inconsistent == inconsistent {
                return Ok(());
            }
            meta.sb.inconsistent = inconsistent;
            meta.persist()
        })
        .await
    }

    /// Empties the journal and makes `lsn` the next LSN: for a replica whose
    /// history is replaced by a resync. Every record must be written and
    /// checkpointed (the volume holds it durably) and no consumer may hold
    /// one. Older records are never read again.
    pub async fn reset_to(&self, lsn: Lsn) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        blocking(move || inner.reset_to(lsn)).await
    }

    /// Every record from `from_lsn` to the written LSN (headers only), or
    /// `None` when the journal no longer holds them all: what a diverged
    /// replica must roll back, and the lag of a peer after a restart.
    pub async fn records_since(
        &self,
        from_lsn: Lsn,
    ) -> Result<Option<Vec<RecordSummary>>, JournalError> {
        let inner = self.inner.clone();
        blocking(move || inner.records_since(from_lsn)).await
    }

    /// Registers (or reopens) consumer `name`. A new consumer starts at
    /// `from_lsn`, which must still be in the journal; an existing one
    /// resumes after its persisted ack (or at `from_lsn` if that is later).
    pub async fn register_consumer(
        &self,
        name: &str,
        from_lsn: Lsn,
    ) -> Result<Consumer, JournalError> {
        self.inner.register_consumer(name, from_lsn).await
    }

    /// [`Consumer::ack`] by name, for code that does not own the consumer.
    pub fn ack_consumer(&self, name: &str, lsn: Lsn) {
        self.inner.ack_consumer(name, lsn)
    }

    /// Forgets a consumer and its bitmap; its retention no longer counts.
    pub async fn unregister_consumer(&self, name: &str) -> Result<(), JournalError> {
        self.inner.unregister_consumer(name).await
    }

    /// See [`ResyncStart`]: from now on consumer `name` is read from the
    /// returned LSN and the returned regions are to be resent.
    pub async fn begin_resync(
        &self,
        name: &str,
        peer_next: Lsn,
    ) -> Result<ResyncStart, JournalError> {
        self.inner.begin_resync(name, peer_next).await
    }

    /// Adds regions to a consumer's bitmap, durably (`compare`: they may be
    /// identical on the peer).
    pub async fn mark_consumer_regions(
        &self,
        name: &str,
        regions: DirtyBitmap,
        compare: bool,
    ) -> Result<(), JournalError> {
        self.inner
            .mark_consumer_regions(name, regions, compare)
            .await
    }

    /// A consumer's pending regions (without copying its bitmap).
    pub fn consumer_dirty(&self, name: &str) -> Result<DirtyInfo, JournalError> {
        self.inner.consumer_dirty(name)
    }

    /// Snapshot of a consumer's dirty-region bitmap.
    pub fn consumer_bitmap(&self, name: &str) -> Result<DirtyBitmap, JournalError> {
        self.inner.consumer_bitmap(name)
    }

    /// Clears regions the replication engine has resent, durably; nothing
    /// when the consumer was folded since its resync began (a later record
    /// may have marked them again).
    pub async fn clear_consumer_regions(
        &self,
        name: &str,
        regions: Vec<u64>,
    ) -> Result<(), JournalError> {
        self.inner.clear_consumer_regions(name, regions).await
    }

    #[cfg(test)]
    pub(crate) fn inject_sync_failure(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn segment_files(&self) -> Vec<std::path::PathBuf> {
        lock(&self.inner.meta)
            .segments
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.inner.state);
            st.shutdown = true;
            self.inner.writer_cv.notify_all();
        }
        {
            // Under the lock, so a writer waiting for space cannot miss it.
            let _meta = lock(&self.inner.meta);
            self.inner.space_cv.notify_all();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.inner.pending.close();
    }
}
