//! [`Store`]: open with recovery, changes (journal append, ordered volume
//! apply), flush, checkpoint, and the replica path (append at the
//! primary's LSN, apply in LSN order), and the checkpointer task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use journal::{AppendHandle, Journal, JournalConfig, Lsn, NewRecord, RecordKind, VolumeIdentity};
use tokio::sync::Notify;
use uuid::Uuid;
use volume::{Volume, VolumeError};

use crate::activity::{ActivityConfig, ActivityLog, ActivityReport};
use crate::change::{apply, Change};
use crate::error::StoreError;
use crate::lock;
use crate::ranges::InflightRanges;
use crate::volume_id::load_or_create_volume_id;

/// How the store runs beside its journal.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub journal: JournalConfig,
    /// The volume is fsynced and the journal checkpointed at least this often
    /// (and sooner when the journal reports space pressure).
    pub checkpoint_interval: Duration,
    /// The volume's configured identity, shared by all its nodes. When set it
    /// must match the `volume-id` file beside the journal, or is written there
    /// when the journal is created; `None` makes a new random one.
    pub volume_uuid: Option<Uuid>,
    pub activity: ActivityConfig,
}

/// A volume behind its journal.
pub struct Store {
    pub(crate) volume: Arc<Volume>,
    pub(crate) journal: Journal,
    uuid: Uuid,
    pub(crate) ranges: InflightRanges,
    activity: ActivityLog,
    /// Set once `FALLOC_FL_ZERO_RANGE` failed: later FAST_ZERO requests are
    /// refused before anything is journaled.
    fast_zero_unavailable: AtomicBool,
    /// A volume write or fsync failed: the volume no longer matches the
    /// journal, so every later request fails until a restart redoes it.
    failed: Mutex<Option<String>>,
    /// When a checkpoint last found or left the journal checkpointed up to
    /// every applied record (for metrics: a growing age means checkpoints
    /// fail or stall, and recovery would redo more).
    checkpointed_at: Mutex<std::time::Instant>,
    checkpoint_now: Arc<Notify>,
    /// The journal was created by this open (no history yet).
    created: bool,
}

/// What `Store::open` found and redid.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub checkpoint_lsn: Lsn,
    pub redone_records: u64,
    pub dropped_tail_bytes: u64,
    /// The journal did not exist and was created.
    pub created: bool,
    /// The last run did not stop cleanly, and the ranges that may differ
    /// from the volume as of the recovered LSN (see the activity log).
    pub activity: ActivityReport,
}

impl Store {
    /// Opens (or creates) the journal in `cfg.journal.dir` for `volume`,
    /// redoes every record after the checkpoint onto the volume, fsyncs it and
    /// checkpoints.
    pub async fn open(
        volume: Volume,
        cfg: StoreConfig,
    ) -> Result<(Arc<Store>, RecoveryReport), StoreError> {
        let created = !cfg.journal.dir.join("superblock").exists();
        let uuid = load_or_create_volume_id(&cfg.journal.dir, cfg.volume_uuid)?;
        let identity = VolumeIdentity {
            uuid,
            size_bytes: volume.size_bytes(),
        };
        let journal_cfg = cfg.journal.clone();
        let (journal, mut recovery) =
            tokio::task::spawn_blocking(move || Journal::open(journal_cfg, identity))
                .await
                .map_err(|e| StoreError::Internal(format!("journal open task: {e}")))??;
        let volume = Arc::new(volume);
        let (dir, size, activity_cfg) =
            (cfg.journal.dir.clone(), volume.size_bytes(), cfg.activity);
        let (activity, activity_report) =
            tokio::task::spawn_blocking(move || ActivityLog::open(&dir, activity_cfg, size))
                .await
                .map_err(|e| StoreError::Internal(format!("activity log open task: {e}")))??;
        if activity_report.unclean {
            tracing::warn!(
                ranges = activity_report.pinned.len(),
                "the last run did not stop cleanly: the volume's recently written ranges may hold writes the journal lost"
            );
        }
        let report = RecoveryReport {
            checkpoint_lsn: recovery.checkpoint_lsn,
            redone_records: recovery.remaining(),
            dropped_tail_bytes: recovery.dropped_bytes,
            created,
            activity: activity_report,
        };
        let last_lsn = recovery.last_lsn;
        // Redo is idempotent: each record overwrites its extent with the same
        // contents whatever the volume held.
        for record in &mut recovery {
            let record = record?;
            let h = record.header;
            apply(&volume, h.kind, h.offset, h.length, record.payload).await?;
            journal.mark_applied(h.lsn);
        }
        if last_lsn > report.checkpoint_lsn {
            volume.sync_data().await?;
            journal.checkpoint(last_lsn).await?;
        }
        let store = Arc::new(Store {
            volume,
            journal,
            uuid,
            ranges: InflightRanges::default(),
            activity,
            fast_zero_unavailable: AtomicBool::new(false),
            failed: Mutex::new(None),
            checkpointed_at: Mutex::new(std::time::Instant::now()),
            checkpoint_now: Arc::new(Notify::new()),
            created,
        });
        tokio::spawn(checkpointer(
            Arc::downgrade(&store),
            store.checkpoint_now.clone(),
            store.journal.space_pressure(),
            cfg.checkpoint_interval,
        ));
        Ok((store, report))
    }

    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn volume_uuid(&self) -> Uuid {
        self.uuid
    }

    /// The journal was created when this store was opened.
    pub fn journal_created(&self) -> bool {
        self.created
    }

    /// The ranges an unclean stop left in the activity log have been handed
    /// over (marked for comparison with every replica, or nobody needs
    /// them): the log forgets them.
    pub async fn settle_activity(&self) -> Result<(), StoreError> {
        self.activity.settle().await
    }

    /// A clean stop: the last checkpoint (every change applied, the volume
    /// fsynced), then the activity log is marked clean, so the next open
    /// knows nothing can differ from the journal.
    pub async fn close(&self) -> Result<Lsn, StoreError> {
        let lsn = self.checkpoint().await?;
        if self.journal.applied_lsn() == self.journal.written_lsn() {
            self.activity.close_clean().await?;
        }
        Ok(lsn)
    }

    /// Why every request fails (a volume write or fsync failed, or the
    /// journal failed), until a restart redoes the journal; `None` while
    /// the store works.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failed)
            .clone()
            .or_else(|| self.journal.failure())
    }

    /// How long since a checkpoint last covered every applied record.
    pub fn checkpoint_age(&self) -> Duration {
        lock(&self.checkpointed_at).elapsed()
    }

    pub(crate) fn check_failed(&self) -> Result<(), StoreError> {
        match &*lock(&self.failed) {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn fail(&self, what: String) -> StoreError {
        tracing::error!(
            "{what}: the volume no longer matches the journal; refusing further I/O. \
             Restart driftless: recovery redoes the journal onto the volume"
        );
        let mut failed = lock(&self.failed);
        failed.get_or_insert(what.clone());
        StoreError::Failed(what)
    }

    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        self.check_failed()?;
        Ok(self.volume.read(offset, len).await?)
    }

    /// Journals and applies one change. Returns its LSN once it is in the
    /// journal (page cache) and on the volume; with `fua`, once the journal is
    /// durable up to it.
    ///
    /// Not cancel-safe by design: callers run it to completion (the NBD server
    /// runs every request on its own task), otherwise the applied watermark
    /// would stall.
    pub async fn change(&self, change: Change, fua: bool) -> Result<Lsn, StoreError> {
        self.check_failed()?;
        let (offset, length) = change.extent();
        if let Change::Zeroes {
            fast_only: true,
            may_trim: false,
            ..
        } = change
        {
            if self.fast_zero_unavailable.load(Ordering::Relaxed) {
                return Err(StoreError::Volume(VolumeError::FastZeroUnavailable));
            }
        }
        let _guard = self.ranges.acquire(offset, length).await;
        let lsn = self.journal.append(change.record()).await?;
        // The extent is in the durable activity log before the volume can
        // hold this write (its record may not be durable yet).
        if let Err(err) = self
            .activity
            .ensure(offset, length, lsn, &self.journal)
            .await
        {
            return Err(self.fail(format!(
                "recording LSN {lsn} in the activity log failed: {err}"
            )));
        }
        let applied = match change {
            Change::Write { data, .. } => self.volume.write(offset, data).await,
            Change::Trim { .. } => self.volume.punch_hole(offset, length).await,
            Change::Zeroes {
                may_trim,
                fast_only,
                ..
            } => {
                match self
                    .volume
                    .write_zeroes(offset, length, may_trim, fast_only)
                    .await
                {
                    // The record is already journaled: the volume must match
                    // it, so zero the slow way, then report that fast zeroing
                    // is unavailable (contents after a failed command are
                    // unspecified to the client; it will zero again).
                    Err(VolumeError::FastZeroUnavailable) => {
                        self.fast_zero_unavailable.store(true, Ordering::Relaxed);
                        self.volume
                            .write_zeroes(offset, length, may_trim, false)
                            .await?;
                        self.journal.mark_applied(lsn);
                        return Err(StoreError::Volume(VolumeError::FastZeroUnavailable));
                    }
                    other => other,
                }
            }
        };
        if let Err(err) = applied {
            return Err(self.fail(format!("applying LSN {lsn} to the volume failed: {err}")));
        }
        self.journal.mark_applied(lsn);
        if fua {
            self.journal.sync(lsn).await?;
        }
        Ok(lsn)
    }

    /// Makes every change completed before this call durable (all
    /// connections): one group-committed fdatasync of the journal.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        let lsn = self.journal.written_lsn();
        Ok(self.journal.sync(lsn).await?)
    }

    /// Fsyncs the volume and advances the journal's checkpoint to what was
    /// applied before the fsync, so the journal can reclaim that space.
    /// Nothing new applied: nothing to do.
    pub async fn checkpoint(&self) -> Result<Lsn, StoreError> {
        self.check_failed()?;
        if self.journal.applied_lsn() <= self.journal.checkpoint_lsn() {
            *lock(&self.checkpointed_at) = std::time::Instant::now();
            return Ok(self.journal.applied_lsn());
        }
        self.sync_checkpoint().await
    }

    /// [`Store::checkpoint`] that fsyncs the volume even when no record was
    /// applied since the last one: resync writes are not journaled, and this
    /// is what makes them durable.
    pub async fn sync_checkpoint(&self) -> Result<Lsn, StoreError> {
        self.check_failed()?;
        let lsn = self.journal.applied_lsn();
        if let Err(err) = self.volume.sync_data().await {
            // Never retried: after a failed fsync the kernel may have dropped
            // the dirty pages, so a retry could "succeed" over lost data.
            return Err(self.fail(format!("fsync of the volume failed: {err}")));
        }
        if lsn > self.journal.checkpoint_lsn() {
            self.journal.checkpoint(lsn).await?;
        }
        *lock(&self.checkpointed_at) = std::time::Instant::now();
        Ok(lsn)
    }

    /// Queues a record received from the primary at its LSN (see
    /// [`Journal::append_replica`]); the handle resolves once it is written.
    /// Call [`Store::apply_replica`] for it afterwards, in LSN order.
    pub async fn append_replica(
        &self,
        lsn: Lsn,
        generation: u64,
        record: NewRecord,
        payload_blake3: [u8; 32],
    ) -> Result<AppendHandle, StoreError> {
        self.check_failed()?;
        Ok(self
            .journal
            .append_replica(lsn, generation, record, payload_blake3)
            .await?)
    }

    /// Applies a journaled replica record to the volume. Callers apply in
    /// LSN order; overlapping changes are also serialized by the range
    /// lock, like local changes.
    pub async fn apply_replica(
        &self,
        lsn: Lsn,
        kind: RecordKind,
        offset: u64,
        length: u64,
        payload: Bytes,
    ) -> Result<(), StoreError> {
        self.check_failed()?;
        let _guard = self.ranges.acquire(offset, length).await;
        if let Err(err) = apply(&self.volume, kind, offset, length, payload).await {
            return Err(self.fail(format!(
                "applying replica LSN {lsn} to the volume failed: {err}"
            )));
        }
        self.journal.mark_applied(lsn);
        Ok(())
    }

    /// Asks the checkpointer to run now.
    pub fn request_checkpoint(&self) {
        self.checkpoint_now.notify_one();
    }
}

/// Periodic checkpoints, and early ones under journal space pressure. Holds
/// only a weak reference so dropping the store stops it.
async fn checkpointer(
    store: std::sync::Weak<Store>,
    now: Arc<Notify>,
    mut pressure: tokio::sync::watch::Receiver<bool>,
    interval: Duration,
) {
    // The first checkpoint comes one interval after start (open already
    // checkpointed whatever recovery redid).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // No strong reference while waiting: dropping the store ends this.
        tokio::select! {
            _ = tick.tick() => {}
            changed = pressure.changed() => {
                if changed.is_err() { return; }
                if !*pressure.borrow() { continue; }
            }
            _ = now.notified() => {}
        }
        let Some(s) = store.upgrade() else { return };
        match s.checkpoint().await {
            Ok(lsn) => tracing::debug!(lsn, "checkpoint"),
            Err(StoreError::Failed(_)) => return,
            Err(err) => {
                tracing::warn!(error = %err, "checkpoint failed; retrying at the next interval")
            }
        }
    }
}
