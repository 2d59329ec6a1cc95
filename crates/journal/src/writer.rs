//! The append path and group commit: appends are queued under the state
//! lock with their LSN; one writer thread takes the whole queue, writes it
//! with one pwritev per segment touched and wakes the appenders; syncs
//! waiting on a written LSN share one fdatasync.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::Observer;
use crate::error::JournalError;
use crate::format::SEGMENT_HEADER_BYTES;
use crate::record::{encode_header, payload_crc, payload_digest, RecordKind, RECORD_HEADER_BYTES};
use crate::recovery::LogRecord;
use crate::segment::pwritev_all;
use crate::shared::{lock, now_ns, Inner, Pending, SegInfo};
use crate::Lsn;

/// A record to append.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub offset: u64,
    pub length: u64,
    /// Data for [`RecordKind::Write`], empty otherwise.
    pub payload: Bytes,
}

impl NewRecord {
    pub fn write(offset: u64, payload: Bytes) -> Self {
        NewRecord {
            kind: RecordKind::Write,
            offset,
            length: payload.len() as u64,
            payload,
        }
    }
    pub fn trim(offset: u64, length: u64) -> Self {
        NewRecord {
            kind: RecordKind::Trim,
            offset,
            length,
            payload: Bytes::new(),
        }
    }
    pub fn write_zeroes(offset: u64, length: u64) -> Self {
        NewRecord {
            kind: RecordKind::WriteZeroes,
            offset,
            length,
            payload: Bytes::new(),
        }
    }
    pub fn barrier() -> Self {
        NewRecord {
            kind: RecordKind::Barrier,
            offset: 0,
            length: 0,
            payload: Bytes::new(),
        }
    }
}

/// A replica append admitted to the journal's queue; resolves once written.
#[derive(Debug)]
pub struct AppendHandle {
    rx: oneshot::Receiver<Result<Lsn, JournalError>>,
}

impl AppendHandle {
    /// Waits until the record is written (page cache), like [`Journal::append`].
    pub async fn written(self) -> Result<Lsn, JournalError> {
        self.rx.await.map_err(|_| JournalError::Shutdown)?
    }
}

pub(crate) struct CurrentSeg {
    pub(crate) info: SegInfo,
    pub(crate) offset: u64,
    pub(crate) unsynced: bool,
    /// The LSN the next record in this segment must have: a segment holds
    /// consecutive LSNs only.
    pub(crate) next_lsn: Lsn,
    /// `Inner::resets` when it was opened: after a reset the writer starts
    /// a new segment even when the LSNs would continue.
    pub(crate) resets: u64,
}

pub(crate) async fn sync_inner(inner: &Arc<Inner>, lsn: Lsn) -> Result<(), JournalError> {
    inner.counters.sync_requests.fetch_add(1, Ordering::Relaxed);
    let rx = {
        let mut st = lock(&inner.state);
        if let Some(e) = st.failed_error() {
            return Err(e);
        }
        if lsn <= st.durable_lsn {
            return Ok(());
        }
        if lsn >= st.next_lsn {
            return Err(JournalError::InvalidRequest(format!(
                "sync of LSN {lsn} beyond the last assigned LSN {}",
                st.next_lsn - 1
            )));
        }
        if st.shutdown {
            return Err(JournalError::Shutdown);
        }
        let (tx, rx) = oneshot::channel();
        st.sync_waiters.push((lsn, tx));
        if st.writer_idle {
            inner.writer_cv.notify_one();
        }
        rx
    };
    rx.await.map_err(|_| JournalError::Shutdown)?
}

pub(crate) fn writer_main(inner: Arc<Inner>, mut cur: Option<CurrentSeg>) {
    let cfg = &inner.cfg;
    loop {
        let (batch, synced) = {
            let mut st = lock(&inner.state);
            loop {
                if !st.queue.is_empty() || st.sync_due() {
                    break;
                }
                if st.shutdown {
                    let err = JournalError::Shutdown;
                    for (_, w) in st.sync_waiters.drain(..) {
                        let _ = w.send(Err(err.share()));
                    }
                    return;
                }
                st.writer_idle = true;
                st = inner.writer_cv.wait(st).expect("journal lock poisoned");
                st.writer_idle = false;
            }
            if !cfg.max_batch_wait.is_zero() && st.queued_bytes < cfg.max_batch_bytes {
                let deadline = Instant::now() + cfg.max_batch_wait;
                while st.queued_bytes < cfg.max_batch_bytes && !st.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st.writer_idle = true;
                    st = inner
                        .writer_cv
                        .wait_timeout(st, deadline - now)
                        .expect("journal lock poisoned")
                        .0;
                    st.writer_idle = false;
                }
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(p) = st.queue.front() {
                if !batch.is_empty() && bytes + p.encoded_len() > cfg.max_batch_bytes {
                    break;
                }
                bytes += p.encoded_len();
                batch.push(st.queue.pop_front().expect("front exists"));
            }
            st.queued_bytes -= bytes;
            (batch, st.durable_lsn)
        };

        if !batch.is_empty() {
            let written_before = *inner.written_tx.borrow();
            assert_eq!(
                batch[0].lsn,
                written_before + 1,
                "LSNs are written in order"
            );
            let (n_ok, err) = write_batch(&inner, &mut cur, &batch, synced, written_before);
            if let (Some(o), true) = (&cfg.observer, n_ok > 0) {
                let bytes = batch[..n_ok].iter().map(|p| p.encoded_len() as u64).sum();
                o.batch_written(n_ok, bytes);
            }
            if n_ok > 0 {
                let last = batch[n_ok - 1].lsn;
                {
                    let mut cache = lock(&inner.cache);
                    for p in &batch[..n_ok] {
                        cache.bytes += p.encoded_len();
                        cache.records.push_back(LogRecord {
                            header: p.header(synced),
                            payload: p.payload.clone(),
                        });
                    }
                    while cache.bytes > cfg.memory_cache_bytes {
                        let r = cache.records.pop_front().expect("non-empty when over");
                        cache.bytes -= r.header.encoded_len();
                    }
                }
                lock(&inner.state).written_lsn = last;
                inner.written_tx.send_replace(last);
                if inner.tracking.load(Ordering::SeqCst) {
                    inner.mark_for_resync(&batch[..n_ok]);
                }
            }
            let mut rest = batch.into_iter();
            for p in rest.by_ref().take(n_ok) {
                let _ = p.done.send(Ok(p.lsn));
            }
            if let Some(e) = err {
                let mut st = lock(&inner.state);
                if matches!(e, JournalError::Full { .. }) {
                    // Not fatal: nothing of these appends was written. Drop
                    // them and everything queued after, so LSNs stay dense.
                    for p in rest.chain(st.queue.drain(..)) {
                        let _ = p.done.send(Err(e.share()));
                    }
                    st.queued_bytes = 0;
                    st.next_lsn = st.written_lsn + 1;
                    let written = st.written_lsn;
                    let (keep, drop): (Vec<_>, Vec<_>) =
                        st.sync_waiters.drain(..).partition(|(l, _)| *l <= written);
                    st.sync_waiters = keep;
                    for (_, w) in drop {
                        let _ = w.send(Err(e.share()));
                    }
                } else {
                    for p in rest {
                        let _ = p.done.send(Err(JournalError::Failed {
                            reason: e.to_string(),
                            durable_lsn: st.durable_lsn,
                        }));
                    }
                    inner.fail(&mut st, e.to_string());
                }
            }
        }

        let (target, due) = {
            let st = lock(&inner.state);
            (st.written_lsn, st.sync_due() && st.failed.is_none())
        };
        if !due {
            continue;
        }
        let c = cur.as_mut().expect("written records imply a segment");
        let res = if inner.fail_next_sync.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        } else {
            timed_sync(inner.cfg.observer.as_deref(), &c.info.file)
        };
        inner.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(()) => {
                c.unsynced = false;
                inner.publish_durable(target);
            }
            Err(e) => {
                // Never retried: after a failed fdatasync the kernel may have
                // dropped the dirty pages, so a later success proves nothing.
                let reason = format!("fdatasync of {} failed: {e}", c.info.path.display());
                inner.fail(&mut lock(&inner.state), reason);
            }
        }
    }
}

/// fdatasync of a segment, timed for the observer.
fn timed_sync(observer: Option<&dyn Observer>, file: &std::fs::File) -> std::io::Result<()> {
    let start = Instant::now();
    let res = file.sync_data();
    if let Some(o) = observer {
        o.fdatasync(start.elapsed());
    }
    res
}

/// Writes `batch` (one pwritev per segment touched). Returns how many
/// records were written and the error that stopped the rest, if any.
pub(crate) fn write_batch(
    inner: &Inner,
    cur: &mut Option<CurrentSeg>,
    batch: &[Pending],
    synced: Lsn,
    written_before: Lsn,
) -> (usize, Option<JournalError>) {
    let seg_bytes = inner.cfg.segment_bytes;
    let resets = inner.resets.load(Ordering::SeqCst);
    let mut headers = vec![[0u8; RECORD_HEADER_BYTES]; batch.len()];
    let mut i = 0;
    while i < batch.len() {
        let need = batch[i].encoded_len() as u64;
        if cur.as_ref().is_none_or(|c| {
            c.offset + need > seg_bytes || c.next_lsn != batch[i].lsn || c.resets != resets
        }) {
            if let Some(c) = cur.as_mut() {
                // The finished segment is synced once, so syncs only ever
                // need the current file.
                if c.unsynced {
                    if let Err(e) = timed_sync(inner.cfg.observer.as_deref(), &c.info.file) {
                        let path = c.info.path.clone();
                        return (
                            i,
                            Some(JournalError::io("fdatasync finished segment", &path, e)),
                        );
                    }
                    inner.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
                    c.unsynced = false;
                }
                // Everything written before this batch is now durable. Say so
                // before waiting for space below: the checkpoint that frees
                // the space syncs its LSN first, and only this thread could
                // otherwise serve that sync.
                inner.publish_durable(written_before);
            }
            let written = if i == 0 {
                written_before
            } else {
                batch[i - 1].lsn
            };
            match inner.acquire_segment(batch[i].lsn, written) {
                Ok(info) => {
                    *cur = Some(CurrentSeg {
                        info,
                        offset: SEGMENT_HEADER_BYTES,
                        unsynced: false,
                        next_lsn: batch[i].lsn,
                        resets,
                    })
                }
                Err(e) => return (i, Some(e)),
            }
        }
        let c = cur.as_mut().expect("segment acquired");
        let start = i;
        let mut end_off = c.offset;
        while i < batch.len()
            && end_off + batch[i].encoded_len() as u64 <= seg_bytes
            && batch[i].lsn == c.next_lsn + (i - start) as u64
        {
            let p = &batch[i];
            encode_header(&p.header(synced), &c.info.salt, &p.crc, &mut headers[i]);
            end_off += p.encoded_len() as u64;
            i += 1;
        }
        assert!(i > start, "a maximal record fits an empty segment");
        let mut iov = Vec::with_capacity((i - start) * 2);
        for (h, p) in headers[start..i].iter().zip(&batch[start..i]) {
            iov.push(IoSlice::new(h));
            iov.push(IoSlice::new(&p.payload));
        }
        match pwritev_all(&c.info.file, &c.info.path, &iov, c.offset) {
            Ok(calls) => {
                inner
                    .counters
                    .pwritev_calls
                    .fetch_add(calls, Ordering::Relaxed);
                inner.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                inner
                    .counters
                    .records
                    .fetch_add((i - start) as u64, Ordering::Relaxed);
                inner
                    .counters
                    .bytes_written
                    .fetch_add(end_off - c.offset, Ordering::Relaxed);
                c.offset = end_off;
                c.unsynced = true;
                c.next_lsn = batch[i - 1].lsn + 1;
            }
            Err(e) => return (start, Some(e)),
        }
    }
    (batch.len(), None)
}

impl Inner {
    pub(crate) async fn admit(
        &self,
        rec: NewRecord,
        replica: Option<(Lsn, u64, [u8; 32])>,
    ) -> Result<AppendHandle, JournalError> {
        let inner = self;
        let payload_len = rec.payload.len();
        let expect_payload = if rec.kind == RecordKind::Write {
            rec.length
        } else {
            0
        };
        if payload_len as u64 != expect_payload {
            return Err(JournalError::InvalidRequest(format!(
                "{:?} record of length {} carries {} payload bytes",
                rec.kind, rec.length, payload_len
            )));
        }
        if payload_len > inner.cfg.max_record_payload_bytes {
            return Err(JournalError::InvalidRequest(format!(
                "payload of {payload_len} bytes exceeds max_record_payload_bytes {}",
                inner.cfg.max_record_payload_bytes
            )));
        }
        if rec
            .offset
            .checked_add(rec.length)
            .is_none_or(|end| end > inner.volume.size_bytes)
        {
            return Err(JournalError::InvalidRequest(format!(
                "extent {}+{} is beyond the volume ({} bytes)",
                rec.offset, rec.length, inner.volume.size_bytes
            )));
        }
        let size = RECORD_HEADER_BYTES + payload_len;
        let permit = inner
            .pending
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| JournalError::Shutdown)?;
        let digest = match replica {
            Some((_, _, digest)) => digest,
            None => payload_digest(&rec.payload),
        };
        let crc = payload_crc(&rec.payload);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&inner.state);
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            if st.shutdown {
                return Err(JournalError::Shutdown);
            }
            let lsn = st.next_lsn;
            if let Some((want_lsn, want_generation, _)) = replica {
                if want_lsn != lsn {
                    return Err(JournalError::InvalidRequest(format!(
                        "replica record LSN {want_lsn} does not continue the journal (next LSN {lsn})"
                    )));
                }
                if want_generation != st.generation {
                    return Err(JournalError::InvalidRequest(format!(
                        "replica record LSN {lsn} has generation {want_generation}, the journal is in generation {}",
                        st.generation
                    )));
                }
            }
            st.next_lsn += 1;
            let generation = st.generation;
            st.queue.push_back(Pending {
                lsn,
                generation,
                kind: rec.kind,
                offset: rec.offset,
                length: rec.length,
                timestamp_ns: now_ns(),
                payload: rec.payload,
                digest,
                crc,
                done: tx,
                _permit: permit,
            });
            st.queued_bytes += size;
            if st.writer_idle {
                inner.writer_cv.notify_one();
            }
        }
        Ok(AppendHandle { rx })
    }
}
