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
}

/// A volume behind its journal.
pub struct Store {
    volume: Arc<Volume>,
    journal: Journal,
    uuid: Uuid,
    ranges: InflightRanges,
    /// Set once `FALLOC_FL_ZERO_RANGE` failed: later FAST_ZERO requests are
    /// refused before anything is journaled.
    fast_zero_unavailable: AtomicBool,
    /// A volume write or fsync failed: the volume no longer matches the
    /// journal, so every later request fails until a restart redoes it.
    failed: Mutex<Option<String>>,
    checkpoint_now: Notify,
}

/// What `Store::open` found and redid.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryReport {
    pub checkpoint_lsn: Lsn,
    pub redone_records: u64,
    pub dropped_tail_bytes: u64,
}

impl Store {
    /// Opens (or creates) the journal in `cfg.journal.dir` for `volume`,
    /// redoes every record after the checkpoint onto the volume, fsyncs it and
    /// checkpoints.
    pub async fn open(
        volume: Volume,
        cfg: StoreConfig,
    ) -> Result<(Arc<Store>, RecoveryReport), StoreError> {
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
        let report = RecoveryReport {
            checkpoint_lsn: recovery.checkpoint_lsn,
            redone_records: recovery.remaining(),
            dropped_tail_bytes: recovery.dropped_bytes,
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
            fast_zero_unavailable: AtomicBool::new(false),
            failed: Mutex::new(None),
            checkpoint_now: Notify::new(),
        });
        tokio::spawn(checkpointer(
            Arc::downgrade(&store),
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

    fn check_failed(&self) -> Result<(), StoreError> {
        match &*lock(&self.failed) {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, what: String) -> StoreError {
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
    pub async fn checkpoint(&self) -> Result<Lsn, StoreError> {
        self.check_failed()?;
        let lsn = self.journal.applied_lsn();
        if lsn <= self.journal.checkpoint_lsn() {
            return Ok(lsn);
        }
        if let Err(err) = self.volume.sync_data().await {
            // Never retried: after a failed fsync the kernel may have dropped
            // the dirty pages, so a retry could "succeed" over lost data.
            return Err(self.fail(format!("fsync of the volume failed: {err}")));
        }
        self.journal.checkpoint(lsn).await?;
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
async fn checkpointer(store: std::sync::Weak<Store>, interval: Duration) {
    let Some(mut pressure) = store.upgrade().map(|s| s.journal.space_pressure()) else {
        return;
    };
    // The first checkpoint comes one interval after start (open already
    // checkpointed whatever recovery redid).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notified = {
            let Some(s) = store.upgrade() else { return };
            let s2 = s.clone();
            tokio::select! {
                _ = tick.tick() => {}
                changed = pressure.changed() => {
                    if changed.is_err() { return; }
                    if !*pressure.borrow() { continue; }
                }
                _ = async move { s2.checkpoint_now.notified().await } => {}
            }
            s
        };
        match notified.checkpoint().await {
            Ok(lsn) => tracing::debug!(lsn, "checkpoint"),
            Err(StoreError::Failed(_)) => return,
            Err(err) => {
                tracing::warn!(error = %err, "checkpoint failed; retrying at the next interval")
            }
        }
    }
}
