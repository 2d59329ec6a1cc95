//! The primary's side of one peer session, sans-IO: records and resync or
//! verify operations in one ordered stream, the shipping window, acks,
//! keepalives and timeouts, and the bookkeeping of a running job. The
//! driver (`peer.rs`) feeds it journal records, region snapshots and
//! received messages, and carries out what it asks (`poll_transmit`,
//! `poll_event`); it owns nothing else of the session.
//!
//! Ordering: a region snapshot taken as of LSN `L` must land on the peer
//! after every record up to `L` and before every later one. It is queued
//! (in LSN order) until record `L` is sent, and a batch of records is cut
//! at each queued snapshot's LSN. A snapshot that arrives after later
//! records were already sent is stale if one of them touched its range:
//! the region is read again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use journal::Lsn;
use wire::{LineageEntry, Message, RefuseCode, Rollback, SyncOp, SyncOpKind, WireRecord};

use super::lag::Throughput;
use super::ship::ShipState;

pub use crate::config::ResyncLimits;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_inflight_bytes: u64,
    pub max_batch_bytes: usize,
    pub keepalive: Duration,
    pub timeout: Duration,
    pub volume_bytes: u64,
    pub region_bytes: u64,
    pub resync: ResyncLimits,
}

/// Why the session must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Failed(String),
    Refused(RefuseCode, String),
    /// The peer said Bye (`Failed` with its words, but not an error here).
    PeerLeft(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer holds everything up to this LSN durably: release it.
    AckConsumer(Lsn),
    /// These regions are durable and identical on the peer: clear them
    /// from its bitmap.
    RegionsSynced(Vec<u64>),
    /// The peer could not list its diverged records: every region must be
    /// compared (the driver marks them and restarts the session).
    CompareAll,
    /// The job finished.
    JobDone(JobOutcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The peer's copy is consistent and identical as of the stream.
    Resynced {
        id: u64,
        full: bool,
        compare: bool,
        regions: u64,
        bytes_sent: u64,
        elapsed: Duration,
    },
    /// Every region was compared; these ranges differ.
    Verified { mismatches: Vec<(u64, u64)> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Resync { compare: bool },
    Verify,
}

/// A job to start on the session.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub kind: JobKind,
    /// Every region (informational: the driver chose the regions).
    pub full: bool,
    /// Regions the driver will read (its bitmap, or every region).
    pub regions: u64,
    pub rollback_from: Option<Lsn>,
    /// The primary's lineage, which a resync target takes over.
    pub lineage: Vec<LineageEntry>,
}

/// Where a region snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The driver's walk over the job's regions.
    Walk(u64),
    /// A range the peer asked for.
    Need,
}

/// A region read the driver should start (before its own walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub origin: Origin,
    pub offset: u64,
    pub len: u64,
    /// Only its digest (a compare or verify).
    pub digest: bool,
}

/// A region as the primary's volume holds it as of `lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub lsn: Lsn,
    pub offset: u64,
    pub len: u64,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Zero,
    Data(Bytes),
    Digest([u8; 32]),
}

/// Progress of the running job, for status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobProgress {
    pub kind: JobKind,
    pub full: bool,
    /// Regions read again because writes overtook their snapshot.
    pub stale_reads: u64,
    pub id: u64,
    pub regions_total: u64,
    pub regions_done: u64,
    pub bytes_sent: u64,
    pub mismatches: u64,
    pub rate_bytes_per_sec: f64,
    pub rate_limit_bytes_per_sec: u64,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug)]
struct Pending {
    lsn: Lsn,
    /// Its `seq` is given when it is released: snapshots complete out of
    /// order, and seqs must increase in stream order.
    op: SyncOp,
    regions: Vec<u64>,
    cost: u64,
}

#[derive(Debug)]
struct Inflight {
    kind: SyncOpKind,
    regions: Vec<u64>,
    offset: u64,
    len: u64,
    cost: u64,
}

#[derive(Debug)]
struct Job {
    id: u64,
    kind: JobKind,
    full: bool,
    started: Instant,
    regions_total: u64,
    regions_done: u64,
    bytes_sent: u64,
    walk_done: bool,
    begin_acked: bool,
    queued: VecDeque<Pending>,
    inflight: BTreeMap<u64, Inflight>,
    /// Op bytes queued or in flight (against `max_inflight_bytes`).
    budget_used: u64,
    needs: VecDeque<(u64, u64)>,
    /// Walked regions whose snapshot went stale: read again.
    rereads: VecDeque<u64>,
    /// Regions read again because writes overtook their snapshot.
    stale_reads: u64,
    /// Regions the peer asked for, not yet sent back as data.
    need_pending: BTreeSet<u64>,
    mismatches: Vec<(u64, u64)>,
    end_seq: Option<u64>,
    done: Throughput,
    bytes: Throughput,
    /// Token bucket for the rate limit (bytes).
    tokens: f64,
    refilled_at: Instant,
}

pub struct PrimarySession {
    cfg: SessionConfig,
    ship: ShipState,
    job: Option<Job>,
    next_job_id: u64,
    next_seq: u64,
    out: VecDeque<Message>,
    events: VecDeque<Event>,
    last_sent: Instant,
    last_recv: Instant,
    nonce: u64,
    /// Record bytes shipped recently: the application's write rate.
    app_rate: Throughput,
    acked_bytes: u64,
    /// Record and resync region bytes sent since the driver last took them.
    sent_record_bytes: u64,
    sent_region_bytes: u64,
    zero_digest: [u8; 32],
    /// Ranges of the records sent lately (while a job runs), to tell a
    /// stale snapshot: (lsn, offset, len), oldest first, bounded.
    recent: VecDeque<(Lsn, u64, u64)>,
}

/// Records' ranges remembered for the staleness check; a snapshot older
/// than the memory is treated as stale.
const RECENT_RANGES_MAX: usize = 1 << 16;

const RATE_WINDOW: Duration = Duration::from_secs(2);
/// Cost charged for an operation that reads nothing (a zero range, End).
const SMALL_OP_COST: u64 = 64;

impl PrimarySession {
    /// A session streaming to a peer that holds every record up to `peer_lsn`.
    pub fn new(cfg: SessionConfig, peer_lsn: Lsn, now: Instant) -> Self {
        let zero_digest = *blake3::hash(&vec![0u8; cfg.region_bytes as usize]).as_bytes();
        PrimarySession {
            ship: ShipState::new(peer_lsn, cfg.max_inflight_bytes),
            cfg,
            job: None,
            next_job_id: 1,
            next_seq: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            last_sent: now,
            last_recv: now,
            nonce: 0,
            app_rate: Throughput::new(RATE_WINDOW),
            acked_bytes: 0,
            sent_record_bytes: 0,
            sent_region_bytes: 0,
            zero_digest,
            recent: VecDeque::new(),
        }
    }

    pub fn sent_lsn(&self) -> Lsn {
        self.ship.sent_lsn
    }

    /// Highest LSN the peer journaled.
    pub fn acked_lsn(&self) -> Lsn {
        self.ship.acked_lsn
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.ship.durable_lsn
    }

    /// Record bytes the peer acknowledged in this session.
    pub fn acked_bytes_total(&self) -> u64 {
        self.acked_bytes
    }

    /// (record bytes, resync region bytes) sent since the last call: the
    /// driver adds them to its totals across sessions.
    pub fn take_sent_bytes(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.sent_record_bytes),
            std::mem::take(&mut self.sent_region_bytes),
        )
    }

    pub fn job_kind(&self) -> Option<JobKind> {
        self.job.as_ref().map(|j| j.kind)
    }

    /// Starts a resync or verify. The stream continues meanwhile; a resync
    /// target restarts its journal at the next LSN sent.
    pub fn start_job(&mut self, spec: JobSpec, now: Instant) -> Result<u64, String> {
        if self.job.is_some() {
            return Err("a resync or verify is already running on this peer".into());
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.recent.clear();
        if let JobKind::Resync { compare } = spec.kind {
            self.push_out(Message::ResyncBegin {
                job: id,
                stream_from_lsn: self.ship.sent_lsn + 1,
                ranges: spec.regions,
                compare,
                rollback_from_lsn: spec.rollback_from,
                lineage: spec.lineage,
            });
        }
        self.job = Some(Job {
            id,
            kind: spec.kind,
            full: spec.full,
            started: now,
            regions_total: spec.regions,
            regions_done: 0,
            bytes_sent: 0,
            walk_done: false,
            // A verify needs no preparation on the peer.
            begin_acked: spec.kind == JobKind::Verify,
            queued: VecDeque::new(),
            inflight: BTreeMap::new(),
            budget_used: 0,
            needs: VecDeque::new(),
            rereads: VecDeque::new(),
            stale_reads: 0,
            need_pending: BTreeSet::new(),
            mismatches: Vec::new(),
            end_seq: None,
            done: Throughput::new(Duration::from_secs(5)),
            bytes: Throughput::new(Duration::from_secs(5)),
            tokens: 0.0,
            refilled_at: now,
        });
        self.maybe_finish(now);
        Ok(id)
    }

    // ------------------------------------------------------------ records

    /// The window has room for more records.
    pub fn wants_records(&self) -> bool {
        self.ship.may_send()
    }

    /// Records read from the journal, in LSN order, continuing the stream.
    pub fn push_records(&mut self, records: Vec<WireRecord>, now: Instant) -> Result<(), End> {
        if records.is_empty() {
            return Ok(());
        }
        let sizes: Vec<(Lsn, u64)> = records.iter().map(|r| (r.lsn, wire_bytes(r))).collect();
        self.ship
            .on_sent(&sizes)
            .map_err(|e| End::Failed(format!("internal: {e}")))?;
        let bytes: u64 = sizes.iter().map(|s| s.1).sum();
        self.app_rate.record(now, bytes);
        self.sent_record_bytes += bytes;
        if self.job.is_some() {
            self.recent
                .extend(records.iter().map(|r| (r.lsn, r.offset, r.len)));
            let excess = self.recent.len().saturating_sub(RECENT_RANGES_MAX);
            self.recent.drain(..excess);
        }
        // Cut the batch after each LSN a queued operation waits for.
        let mut rest = records;
        while !rest.is_empty() {
            let cut = self
                .job
                .as_ref()
                .and_then(|j| j.queued.front())
                .map_or(Lsn::MAX, |p| p.lsn);
            let n = rest.partition_point(|r| r.lsn <= cut);
            // Every operation as of an LSN already sent is out already.
            assert!(n > 0, "an operation as of LSN {cut} is still queued");
            let tail = rest.split_off(n);
            let sent = rest.last().expect("non-empty").lsn;
            let first_lsn = rest[0].lsn;
            self.push_out(Message::Records {
                first_lsn,
                records: rest,
            });
            self.release_ops(sent);
            rest = tail;
        }
        self.send_flush();
        Ok(())
    }

    /// A FLUSH (or FUA) needs `lsn` durable on the peer.
    pub fn request_flush(&mut self, lsn: Lsn) {
        self.ship.request_flush(lsn);
        self.send_flush();
    }

    fn send_flush(&mut self) {
        if let Some(lsn) = self.ship.flush_to_send() {
            self.push_out(Message::Flush { lsn });
        }
    }

    // ---------------------------------------------------------- regions

    /// How many more region snapshots the job can take now (window and
    /// rate); the driver reads that many, needs first.
    pub fn wants_regions(&mut self, now: Instant) -> usize {
        let Some(job) = self.job.as_mut() else {
            return 0;
        };
        if job.walk_done && job.needs.is_empty() && job.rereads.is_empty() {
            return 0;
        }
        let limits = self.cfg.resync;
        let room = limits.max_inflight_bytes.saturating_sub(job.budget_used);
        if room < self.cfg.region_bytes.min(limits.max_inflight_bytes) {
            return 0;
        }
        let mut n = (room / self.cfg.region_bytes).max(1) as usize;
        let limit = effective_limit(limits, self.app_rate.rate(now));
        if limit > 0 {
            refill(job, limit, self.cfg.region_bytes, now);
            if job.tokens < self.cfg.region_bytes as f64 {
                return 0;
            }
            n = n
                .min((job.tokens / self.cfg.region_bytes as f64) as usize)
                .max(1);
        }
        n
    }

    /// The next read the job needs before the driver's walk goes on:
    /// regions to read again, then ranges the peer asked for.
    pub fn next_read(&mut self) -> Option<Read> {
        let region_bytes = self.cfg.region_bytes;
        let volume = self.cfg.volume_bytes;
        let digest = self.walk_digests();
        let job = self.job.as_mut()?;
        if let Some(region) = job.rereads.pop_front() {
            let offset = region * region_bytes;
            return Some(Read {
                origin: Origin::Walk(region),
                offset,
                len: region_bytes.min(volume - offset),
                digest,
            });
        }
        let (offset, len) = job.needs.pop_front()?;
        Some(Read {
            origin: Origin::Need,
            offset,
            len,
            digest: false,
        })
    }

    /// Whether the job reads digests (compare or verify) for walked regions.
    pub fn walk_digests(&self) -> bool {
        matches!(
            self.job.as_ref().map(|j| j.kind),
            Some(JobKind::Verify) | Some(JobKind::Resync { compare: true })
        )
    }

    /// The driver's walk over the job's regions is over.
    pub fn walk_done(&mut self, now: Instant) {
        if let Some(job) = self.job.as_mut() {
            job.walk_done = true;
        }
        self.maybe_finish(now);
    }

    /// Whether a walked region is already being served by a need (the
    /// driver skips it).
    pub fn skip_walked(&self, region: u64) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| j.need_pending.contains(&region))
    }

    /// A region snapshot for the job.
    pub fn push_region(&mut self, snap: Snapshot, origin: Origin, now: Instant) {
        let region_bytes = self.cfg.region_bytes;
        let zero_digest = self.zero_digest;
        let stale = self.is_stale(&snap);
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let first = snap.offset / region_bytes;
        let last = (snap.offset + snap.len.max(1) - 1) / region_bytes;
        let regions: Vec<u64> = (first..=last).collect();
        if stale {
            job.stale_reads += 1;
            match origin {
                Origin::Walk(region) => job.rereads.push_back(region),
                Origin::Need => job.needs.push_back((snap.offset, snap.len)),
            }
            return;
        }
        let (kind, data, blake3, cost) = match (job.kind, snap.content) {
            (JobKind::Verify, Content::Zero) => {
                let digest = if snap.len == region_bytes {
                    zero_digest
                } else {
                    *blake3::hash(&vec![0u8; snap.len as usize]).as_bytes()
                };
                (SyncOpKind::Verify, Bytes::new(), digest, snap.len)
            }
            (JobKind::Verify, Content::Digest(d)) => {
                (SyncOpKind::Verify, Bytes::new(), d, snap.len)
            }
            (JobKind::Verify, Content::Data(d)) => (
                SyncOpKind::Verify,
                Bytes::new(),
                *blake3::hash(&d).as_bytes(),
                snap.len,
            ),
            (JobKind::Resync { .. }, Content::Zero) => {
                (SyncOpKind::Zero, Bytes::new(), [0; 32], SMALL_OP_COST)
            }
            (JobKind::Resync { .. }, Content::Digest(d)) => {
                (SyncOpKind::Check, Bytes::new(), d, snap.len)
            }
            (JobKind::Resync { .. }, Content::Data(d)) => {
                let digest = *blake3::hash(&d).as_bytes();
                (SyncOpKind::Data, d, digest, snap.len)
            }
        };
        if origin == Origin::Need {
            // Counted once it is served; it may not be among the walked
            // regions (a rollback range).
            for r in &regions {
                if job.need_pending.contains(r) {
                    continue;
                }
                job.regions_total += 1;
            }
        }
        job.tokens -= cost as f64;
        job.budget_used += cost;
        // In LSN order: a batch of records is cut at the front's LSN.
        let at = job.queued.partition_point(|p| p.lsn <= snap.lsn);
        job.queued.insert(
            at,
            Pending {
                lsn: snap.lsn,
                op: SyncOp {
                    seq: 0,
                    kind,
                    offset: snap.offset,
                    len: snap.len,
                    data,
                    blake3,
                },
                regions,
                cost,
            },
        );
        self.release_ops(self.ship.sent_lsn);
        let _ = now;
    }

    /// Whether records sent after the snapshot's LSN touched its range (or
    /// may have: older than what is remembered).
    fn is_stale(&self, snap: &Snapshot) -> bool {
        if snap.lsn >= self.ship.sent_lsn {
            return false;
        }
        match self.recent.front() {
            Some(&(oldest, _, _)) if oldest <= snap.lsn + 1 => {}
            _ => return true,
        }
        let end = snap.offset + snap.len;
        self.recent
            .iter()
            .rev()
            .take_while(|&&(lsn, _, _)| lsn > snap.lsn)
            .any(|&(_, o, l)| o < end && snap.offset < o + l.max(1))
    }

    /// Moves every queued operation whose LSN has been sent into outgoing
    /// batches (after the records that cover them, before any later one).
    fn release_ops(&mut self, sent: Lsn) {
        let max_batch = self.cfg.max_batch_bytes;
        let next_seq = &mut self.next_seq;
        let sent_region_bytes = &mut self.sent_region_bytes;
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let mut ops = Vec::new();
        let mut bytes = 0usize;
        while let Some(p) = job.queued.front() {
            if p.lsn > sent {
                break;
            }
            if !ops.is_empty() && bytes + p.op.data.len() > max_batch {
                self.out.push_back(Message::SyncOps {
                    ops: std::mem::take(&mut ops),
                });
                bytes = 0;
            }
            let mut p = job.queued.pop_front().expect("front exists");
            p.op.seq = *next_seq;
            *next_seq += 1;
            bytes += p.op.data.len() + wire::SYNC_OP_HEADER_BYTES;
            if p.op.kind == SyncOpKind::Data {
                job.bytes_sent += p.op.len;
                *sent_region_bytes += p.op.len;
            }
            job.inflight.insert(
                p.op.seq,
                Inflight {
                    kind: p.op.kind,
                    regions: p.regions,
                    offset: p.op.offset,
                    len: p.op.len,
                    cost: p.cost,
                },
            );
            ops.push(p.op);
        }
        if !ops.is_empty() {
            self.push_out(Message::SyncOps { ops });
        }
    }

    /// Sends `End` once the walk, the needs and every operation are done.
    fn maybe_finish(&mut self, now: Instant) {
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let idle = job.walk_done
            && job.needs.is_empty()
            && job.rereads.is_empty()
            && job.queued.is_empty()
            && job.inflight.is_empty()
            && job.need_pending.is_empty()
            && job.begin_acked;
        if !idle {
            return;
        }
        match job.kind {
            JobKind::Verify => {
                let job = self.job.take().expect("checked");
                self.events.push_back(Event::JobDone(JobOutcome::Verified {
                    mismatches: job.mismatches,
                }));
            }
            JobKind::Resync { .. } => {
                if job.end_seq.is_some() {
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                job.end_seq = Some(seq);
                job.budget_used += SMALL_OP_COST;
                job.inflight.insert(
                    seq,
                    Inflight {
                        kind: SyncOpKind::End,
                        regions: Vec::new(),
                        offset: 0,
                        len: 0,
                        cost: SMALL_OP_COST,
                    },
                );
                self.push_out(Message::SyncOps {
                    ops: vec![SyncOp {
                        seq,
                        kind: SyncOpKind::End,
                        offset: 0,
                        len: 0,
                        data: Bytes::new(),
                        blake3: [0; 32],
                    }],
                });
            }
        }
        let _ = now;
    }

    // ------------------------------------------------------------ input

    pub fn handle(&mut self, msg: Message, now: Instant) -> Result<(), End> {
        self.last_recv = now;
        match msg {
            Message::Ack {
                durable_lsn,
                journaled_lsn,
            } => {
                self.acked_bytes += self
                    .ship
                    .on_ack(durable_lsn, journaled_lsn)
                    .map_err(|e| End::Failed(format!("protocol: {e}")))?;
                self.events
                    .push_back(Event::AckConsumer(self.ship.durable_lsn));
            }
            Message::FlushAck { lsn } => {
                self.ship
                    .on_flush_ack(lsn)
                    .map_err(|e| End::Failed(format!("protocol: {e}")))?;
                self.events
                    .push_back(Event::AckConsumer(self.ship.durable_lsn));
            }
            Message::Ping { nonce } => self.push_out(Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::ResyncBeginAck { job, rollback } => self.on_begin_ack(job, rollback, now)?,
            Message::SyncNeed { offset, len } => self.on_need(offset, len)?,
            Message::VerifyMismatch { seq, offset, len } => self.on_mismatch(seq, offset, len)?,
            Message::SyncAck { seq } => self.on_sync_ack(seq, now)?,
            Message::Bye { code, text } => {
                return Err(End::PeerLeft(format!("peer said bye ({code:?}): {text}")))
            }
            Message::Refuse { code, text } => {
                return Err(End::Refused(code, format!("by peer ({code:?}): {text}")))
            }
            other => {
                return Err(End::Failed(format!(
                    "protocol: unexpected {:?} from a secondary",
                    other.message_type()
                )))
            }
        }
        Ok(())
    }

    fn on_begin_ack(&mut self, id: u64, rollback: Rollback, now: Instant) -> Result<(), End> {
        let Some(job) = self.job.as_mut().filter(|j| j.id == id && !j.begin_acked) else {
            return Err(End::Failed(format!(
                "protocol: ResyncBeginAck for job {id}, which is not waiting for one"
            )));
        };
        job.begin_acked = true;
        if rollback == Rollback::Unknown {
            self.events.push_back(Event::CompareAll);
        }
        self.maybe_finish(now);
        Ok(())
    }

    fn on_need(&mut self, offset: u64, len: u64) -> Result<(), End> {
        let (region_bytes, volume) = (self.cfg.region_bytes, self.cfg.volume_bytes);
        let Some(job) = self
            .job
            .as_mut()
            .filter(|j| matches!(j.kind, JobKind::Resync { .. }))
        else {
            return Err(End::Failed("protocol: SyncNeed outside a resync".into()));
        };
        if offset.checked_add(len).is_none_or(|end| end > volume) || len == 0 {
            return Err(End::Failed(format!(
                "protocol: SyncNeed for {offset}+{len}, outside the volume ({volume} bytes)"
            )));
        }
        // Region-aligned pieces: what a snapshot covers.
        let first = offset / region_bytes;
        let last = (offset + len - 1) / region_bytes;
        for r in first..=last {
            if job.need_pending.insert(r) {
                let start = r * region_bytes;
                job.needs
                    .push_back((start, region_bytes.min(volume - start)));
            }
        }
        Ok(())
    }

    fn on_mismatch(&mut self, seq: u64, offset: u64, len: u64) -> Result<(), End> {
        let Some(job) = self.job.as_mut().filter(|j| j.kind == JobKind::Verify) else {
            return Err(End::Failed(
                "protocol: VerifyMismatch outside a verify".into(),
            ));
        };
        match job.inflight.get(&seq) {
            Some(op) if op.kind == SyncOpKind::Verify && op.offset == offset && op.len == len => {
                job.mismatches.push((offset, len));
                Ok(())
            }
            _ => Err(End::Failed(format!(
                "protocol: VerifyMismatch for operation {seq} ({offset}+{len}), which was not such a check"
            ))),
        }
    }

    fn on_sync_ack(&mut self, seq: u64, now: Instant) -> Result<(), End> {
        let Some(job) = self.job.as_mut() else {
            return Err(End::Failed(format!(
                "protocol: SyncAck {seq} with no resync or verify running"
            )));
        };
        if seq >= self.next_seq {
            return Err(End::Failed(format!(
                "protocol: SyncAck {seq} for an operation never sent"
            )));
        }
        let mut synced = Vec::new();
        let mut ended = false;
        while let Some((&s, _)) = job.inflight.first_key_value() {
            if s > seq {
                break;
            }
            let op = job.inflight.remove(&s).expect("first key");
            job.budget_used -= op.cost;
            match op.kind {
                SyncOpKind::End => ended = true,
                SyncOpKind::Verify => {
                    job.regions_done += op.regions.len() as u64;
                    job.done.record(now, op.regions.len() as u64);
                }
                SyncOpKind::Check => {
                    // A differing range was asked for before this ack (the
                    // peer's messages are ordered): it stays owed.
                    for r in op.regions {
                        if !job.need_pending.contains(&r) {
                            synced.push(r);
                        }
                    }
                }
                SyncOpKind::Data | SyncOpKind::Zero => {
                    for r in op.regions {
                        job.need_pending.remove(&r);
                        synced.push(r);
                    }
                }
            }
        }
        if !synced.is_empty() {
            job.regions_done += synced.len() as u64;
            job.done.record(now, synced.len() as u64);
            job.bytes.record(now, 0);
            self.events.push_back(Event::RegionsSynced(synced));
        }
        if ended {
            let job = self.job.take().expect("a job is running");
            self.events.push_back(Event::JobDone(JobOutcome::Resynced {
                id: job.id,
                full: job.full,
                compare: job.kind == JobKind::Resync { compare: true },
                regions: job.regions_done,
                bytes_sent: job.bytes_sent,
                elapsed: now.saturating_duration_since(job.started),
            }));
            return Ok(());
        }
        self.maybe_finish(now);
        Ok(())
    }

    // ------------------------------------------------------------ timers

    /// When `handle_timeout` should run next.
    pub fn poll_timeout(&self) -> Instant {
        (self.last_sent + self.cfg.keepalive).min(self.last_recv + self.cfg.timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), End> {
        if now.saturating_duration_since(self.last_recv) >= self.cfg.timeout {
            return Err(End::Failed(format!(
                "peer timeout: nothing received for {:?}",
                self.cfg.timeout
            )));
        }
        if now.saturating_duration_since(self.last_sent) >= self.cfg.keepalive {
            self.nonce += 1;
            self.push_out(Message::Ping { nonce: self.nonce });
            self.last_sent = now;
        }
        Ok(())
    }

    fn push_out(&mut self, msg: Message) {
        self.out.push_back(msg);
    }

    /// The next message to send (the driver stamps the send time).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        let m = self.out.pop_front()?;
        self.last_sent = now;
        Some(m)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn progress(&self, now: Instant) -> Option<JobProgress> {
        let job = self.job.as_ref()?;
        let regions_per_sec = job.done.rate(now);
        let remaining = job.regions_total.saturating_sub(job.regions_done);
        Some(JobProgress {
            kind: job.kind,
            full: job.full,
            stale_reads: job.stale_reads,
            id: job.id,
            regions_total: job.regions_total,
            regions_done: job.regions_done,
            bytes_sent: job.bytes_sent,
            mismatches: job.mismatches.len() as u64,
            rate_bytes_per_sec: regions_per_sec * self.cfg.region_bytes as f64,
            rate_limit_bytes_per_sec: effective_limit(self.cfg.resync, self.app_rate.rate(now)),
            eta_seconds: (regions_per_sec > 0.0).then(|| remaining as f64 / regions_per_sec),
        })
    }
}

/// The rate a resync may use: its cap less what the application writes,
/// never below its floor (0: no cap).
fn effective_limit(limits: ResyncLimits, app_bytes_per_sec: f64) -> u64 {
    if limits.max_rate_bytes_per_sec == 0 {
        return 0;
    }
    let left = limits
        .max_rate_bytes_per_sec
        .saturating_sub(app_bytes_per_sec as u64);
    left.max(
        limits
            .min_rate_bytes_per_sec
            .min(limits.max_rate_bytes_per_sec),
    )
}

fn refill(job: &mut Job, limit: u64, region_bytes: u64, now: Instant) {
    let elapsed = now.saturating_duration_since(job.refilled_at).as_secs_f64();
    job.refilled_at = now;
    // At most a tenth of a second's worth banked (no bursts after a pause),
    // and at least one region, or a low limit would never send one.
    let burst = (limit as f64 / 10.0).max(region_bytes as f64);
    job.tokens = (job.tokens + elapsed * limit as f64).min(burst);
}

/// Bytes a record costs on the wire (for windows and lag).
pub fn wire_bytes(r: &WireRecord) -> u64 {
    (wire::RECORD_HEADER_BYTES + r.payload.len()) as u64
}
