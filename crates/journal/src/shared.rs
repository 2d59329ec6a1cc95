//! The journal's shared state, owned by one `Inner` behind an `Arc`: the
//! append queue and watermarks (`state`), segments, superblock and consumers
//! (`meta`), the record cache and the applied watermark. Everything above
//! this module (writer, space, consumers, lineage, the facade) works on it.
//!
//! Locks: `meta` may be taken before `state`, never the other way round;
//! `cache` and `applied` are leaves. Poisoning: a panic while holding a
//! journal lock is a bug that may leave the queue or the segment list half
//! updated, so every lock propagates it (see [`lock`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::bitmap::DirtyBitmap;
use crate::config::{JournalConfig, VolumeIdentity};
use crate::error::JournalError;
use crate::format::Superblock;
use crate::record::{RecordHeader, RecordKind, Salt, RECORD_HEADER_BYTES};
use crate::recovery::LogRecord;
use crate::Lsn;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) fdatasyncs: AtomicU64,
    pub(crate) sync_requests: AtomicU64,
    pub(crate) write_batches: AtomicU64,
    pub(crate) pwritev_calls: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) folds: AtomicU64,
    pub(crate) full_waits: AtomicU64,
}

pub(crate) struct Pending {
    pub(crate) lsn: Lsn,
    pub(crate) generation: u64,
    pub(crate) kind: RecordKind,
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) timestamp_ns: u64,
    pub(crate) payload: Bytes,
    pub(crate) digest: [u8; 32],
    pub(crate) crc: crc32fast::Hasher,
    pub(crate) done: oneshot::Sender<Result<Lsn, JournalError>>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Pending {
    pub(crate) fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
    pub(crate) fn header(&self, synced_lsn: Lsn) -> RecordHeader {
        RecordHeader {
            lsn: self.lsn,
            generation: self.generation,
            kind: self.kind,
            synced_lsn,
            offset: self.offset,
            length: self.length,
            timestamp_ns: self.timestamp_ns,
            payload_len: self.payload.len() as u32,
            payload_blake3: self.digest,
        }
    }
}

pub(crate) type SyncWaiter = (Lsn, oneshot::Sender<Result<(), JournalError>>);

pub(crate) struct State {
    pub(crate) next_lsn: Lsn,
    pub(crate) generation: u64,
    pub(crate) queue: VecDeque<Pending>,
    pub(crate) queued_bytes: usize,
    pub(crate) sync_waiters: Vec<SyncWaiter>,
    pub(crate) written_lsn: Lsn,
    pub(crate) durable_lsn: Lsn,
    pub(crate) failed: Option<String>,
    pub(crate) writer_idle: bool,
    pub(crate) shutdown: bool,
}

impl State {
    pub(crate) fn failed_error(&self) -> Option<JournalError> {
        self.failed.as_ref().map(|r| JournalError::Failed {
            reason: r.clone(),
            durable_lsn: self.durable_lsn,
        })
    }
    pub(crate) fn sync_due(&self) -> bool {
        self.durable_lsn < self.written_lsn
            && self
                .sync_waiters
                .iter()
                .any(|(l, _)| *l <= self.written_lsn)
    }
}

#[derive(Clone)]
pub(crate) struct SegInfo {
    pub(crate) number: u64,
    pub(crate) first_lsn: Lsn,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    pub(crate) salt: Salt,
}

pub(crate) struct ConsumerMeta {
    pub(crate) read_next: Lsn,
    pub(crate) acked_lsn: Lsn,
    pub(crate) folds: u64,
    pub(crate) fold_notice: Option<Lsn>,
    pub(crate) bitmap: DirtyBitmap,
    /// Every record up to here is marked in `bitmap` (in memory; persisted
    /// before the cursor moves past it).
    pub(crate) marked_upto: Lsn,
    /// The consumer needs a resync and is not read: the writer marks new
    /// records in its bitmap as they are written and checkpoints release
    /// them without a fold. Cleared when a resync of it starts streaming
    /// (its bitmap then holds the regions still to be resent).
    pub(crate) track: bool,
    /// Compare the bitmap's regions before resending them (persisted).
    pub(crate) compare: bool,
}

impl ConsumerMeta {
    pub(crate) fn tracking(&self) -> bool {
        self.track
    }
}

pub(crate) struct Meta {
    pub(crate) sb: Superblock,
    pub(crate) sb_file: File,
    pub(crate) sb_path: PathBuf,
    pub(crate) segments: VecDeque<SegInfo>,
    pub(crate) spares: Vec<u64>,
    pub(crate) next_segment: u64,
    pub(crate) consumers: BTreeMap<String, ConsumerMeta>,
}

impl Meta {
    pub(crate) fn live_bytes(&self, segment_bytes: u64) -> u64 {
        self.segments.len() as u64 * segment_bytes
    }

    /// First LSN anyone still needs.
    pub(crate) fn keep_from(&self) -> Lsn {
        self.consumers
            .values()
            .map(|c| c.acked_lsn + 1)
            .fold(self.sb.checkpoint_lsn + 1, Lsn::min)
    }
}

#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) records: VecDeque<LogRecord>,
    pub(crate) bytes: usize,
}

#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) watermark: Lsn,
    pub(crate) above: BTreeSet<Lsn>,
}

pub(crate) struct Inner {
    pub(crate) cfg: JournalConfig,
    pub(crate) volume: VolumeIdentity,
    pub(crate) state: Mutex<State>,
    pub(crate) writer_cv: Condvar,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) space_cv: Condvar,
    pub(crate) written_tx: watch::Sender<Lsn>,
    pub(crate) durable_tx: watch::Sender<Lsn>,
    pub(crate) pressure_tx: watch::Sender<bool>,
    pub(crate) pending: Arc<Semaphore>,
    pub(crate) cache: Mutex<Cache>,
    pub(crate) applied: Mutex<Applied>,
    pub(crate) counters: Counters,
    pub(crate) fail_next_sync: AtomicBool,
    /// Some consumer needs a resync (see `ConsumerMeta::marked_upto`): the
    /// writer marks what it writes. Saves the metadata lock otherwise.
    pub(crate) tracking: AtomicBool,
    /// Resets so far (`reset_to`): a current segment opened before the
    /// last one belongs to the replaced history and is never appended to.
    pub(crate) resets: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a journal lock is a bug; propagate it.
    m.lock().expect("journal lock poisoned")
}

pub(crate) fn random_u64() -> u64 {
    Uuid::new_v4().as_u64_pair().0
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JournalError::InvalidRequest(format!("blocking task failed: {e}")))?
}

impl Inner {
    /// Every record up to `lsn` is on disk: wake the syncs it satisfies.
    pub(crate) fn publish_durable(&self, lsn: Lsn) {
        let mut st = lock(&self.state);
        if lsn <= st.durable_lsn {
            return;
        }
        st.durable_lsn = lsn;
        self.durable_tx.send_replace(lsn);
        let (done, keep): (Vec<_>, Vec<_>) =
            st.sync_waiters.drain(..).partition(|(l, _)| *l <= lsn);
        st.sync_waiters = keep;
        drop(st);
        for (_, w) in done {
            let _ = w.send(Ok(()));
        }
    }

    pub(crate) fn set_pressure(&self, meta: &Meta, waiting: bool) {
        let p = waiting || meta.live_bytes(self.cfg.segment_bytes) >= self.cfg.pressure_bytes;
        self.pressure_tx
            .send_if_modified(|v| std::mem::replace(v, p) != p);
    }

    pub(crate) fn fail(&self, st: &mut State, reason: String) {
        tracing::error!(%reason, durable_lsn = st.durable_lsn, "journal entered the failed state");
        st.failed.get_or_insert(reason);
        let err = st.failed_error().expect("just set");
        for p in st.queue.drain(..) {
            let _ = p.done.send(Err(err.share()));
        }
        st.queued_bytes = 0;
        for (_, w) in st.sync_waiters.drain(..) {
            let _ = w.send(Err(err.share()));
        }
    }
}
