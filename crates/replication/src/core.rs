//! Sans-IO cores of the engine: the per-peer shipping window, the sync gate,
//! handshake verdicts, received-batch validation, lag and throughput
//! bookkeeping. No sockets, no clocks of their own (callers pass `now`), so
//! they are unit- and property-tested deterministically.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use journal::Lsn;
use wire::{
    check_hello, compare_lineage, Hello, LineageOrder, Mismatch, RefuseCode, Role, WireRecord,
};

use crate::config::SyncPeerLossPolicy;
use crate::error::BatchError;

// ---------------------------------------------------------------- shipping

/// One peer session's view of what was shipped and acknowledged.
#[derive(Debug)]
pub(crate) struct ShipState {
    /// Last LSN sent (the peer held everything up to the start LSN − 1).
    pub sent_lsn: Lsn,
    /// Last LSN the peer journaled (its Ack's journaled or durable LSN).
    pub acked_lsn: Lsn,
    pub durable_lsn: Lsn,
    inflight: VecDeque<(Lsn, u64)>,
    pub inflight_bytes: u64,
    max_inflight_bytes: u64,
    flush_requested: Lsn,
    flush_sent: Lsn,
    /// The sender waits for acks to free window space.
    pub sender_blocked: bool,
    /// A Ping to answer (the sender owns the writing half).
    pub pong_due: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShipError {
    #[error("peer acknowledged LSN {acked} but only {sent} was sent")]
    AckBeyondSent { acked: Lsn, sent: Lsn },
    #[error("peer answered a flush of LSN {lsn} that was never requested (last sent {sent})")]
    UnrequestedFlushAck { lsn: Lsn, sent: Lsn },
    #[error("records sent out of order: batch starts at {first}, expected {expected}")]
    OutOfOrder { first: Lsn, expected: Lsn },
}

impl ShipState {
    /// The peer holds every record up to `peer_lsn`.
    pub fn new(peer_lsn: Lsn, max_inflight_bytes: u64) -> Self {
        ShipState {
            sent_lsn: peer_lsn,
            acked_lsn: peer_lsn,
            durable_lsn: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            max_inflight_bytes,
            flush_requested: 0,
            flush_sent: 0,
            sender_blocked: false,
            pong_due: None,
        }
    }

    /// Under the in-flight limit (a lone batch may exceed it, or nothing
    /// could ever be sent).
    pub fn may_send(&self) -> bool {
        self.inflight.is_empty() || self.inflight_bytes < self.max_inflight_bytes
    }

    /// A batch of (LSN, bytes) went out.
    pub fn on_sent(&mut self, records: &[(Lsn, u64)]) -> Result<(), ShipError> {
        if let Some(&(first, _)) = records.first() {
            if first != self.sent_lsn + 1 {
                return Err(ShipError::OutOfOrder {
                    first,
                    expected: self.sent_lsn + 1,
                });
            }
        }
        for &(lsn, bytes) in records {
            self.inflight.push_back((lsn, bytes));
            self.inflight_bytes += bytes;
            self.sent_lsn = lsn;
        }
        Ok(())
    }

    /// An `Ack`: returns the bytes it newly acknowledged.
    pub fn on_ack(&mut self, durable: Lsn, journaled: Option<Lsn>) -> Result<u64, ShipError> {
        // Durable implies journaled on the peer.
        let journaled = durable.max(journaled.unwrap_or(0));
        if journaled > self.sent_lsn {
            return Err(ShipError::AckBeyondSent {
                acked: journaled,
                sent: self.sent_lsn,
            });
        }
        self.durable_lsn = self.durable_lsn.max(durable);
        self.acked_lsn = self.acked_lsn.max(journaled);
        let mut freed = 0;
        while let Some(&(lsn, bytes)) = self.inflight.front() {
            if lsn > self.acked_lsn {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
            freed += bytes;
        }
        Ok(freed)
    }

    pub fn request_flush(&mut self, lsn: Lsn) {
        self.flush_requested = self.flush_requested.max(lsn);
    }

    /// A `Flush{lsn}` to send now: requested, not sent yet, and every record
    /// up to it already shipped (the peer must have them to sync them).
    pub fn flush_to_send(&mut self) -> Option<Lsn> {
        if self.flush_requested > self.flush_sent && self.sent_lsn >= self.flush_requested {
            self.flush_sent = self.flush_requested;
            Some(self.flush_sent)
        } else {
            None
        }
    }

    pub fn on_flush_ack(&mut self, lsn: Lsn) -> Result<(), ShipError> {
        if lsn > self.flush_sent {
            return Err(ShipError::UnrequestedFlushAck {
                lsn,
                sent: self.flush_sent,
            });
        }
        self.durable_lsn = self.durable_lsn.max(lsn);
        self.acked_lsn = self.acked_lsn.max(lsn);
        Ok(())
    }
}

// ---------------------------------------------------------------- sync gate

/// Where a sync peer stands for the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncState {
    /// Streaming and caught up: writes wait for its acks.
    InSync,
    /// Not streaming since `since` and not degraded yet.
    Lost { since: Instant },
    /// Writes do not wait for it (lost past the policy, or catching up).
    Degraded,
}

/// What a write (or flush) needs from a sync peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// The peer journaled the LSN (write acknowledgement).
    Journaled,
    /// The LSN is durable on the peer (FLUSH / FUA).
    Durable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Done,
    /// Wait for an ack or a state change; with a deadline, re-decide then.
    Wait {
        deadline: Option<Instant>,
    },
    /// Switch the peer to degraded, then it no longer holds the write.
    Degrade,
}

/// Does a write at `lsn` have to wait for this sync peer?
pub(crate) fn decide(
    state: SyncState,
    acked_lsn: Lsn,
    durable_lsn: Lsn,
    lsn: Lsn,
    need: Need,
    policy: SyncPeerLossPolicy,
    now: Instant,
) -> Decision {
    let have = match need {
        Need::Journaled => acked_lsn.max(durable_lsn),
        Need::Durable => durable_lsn,
    };
    match state {
        SyncState::Degraded => Decision::Done,
        _ if have >= lsn => Decision::Done,
        SyncState::InSync => Decision::Wait { deadline: None },
        SyncState::Lost { since } => match policy {
            SyncPeerLossPolicy::Degrade => Decision::Degrade,
            SyncPeerLossPolicy::Suspend { timeout } => {
                let deadline = since + timeout;
                if now >= deadline {
                    Decision::Degrade
                } else {
                    Decision::Wait {
                        deadline: Some(deadline),
                    }
                }
            }
        },
    }
}

/// The session of a sync peer ended.
pub(crate) fn on_sync_disconnect(state: SyncState, now: Instant) -> SyncState {
    match state {
        SyncState::InSync => SyncState::Lost { since: now },
        other => other,
    }
}

/// A sync peer's session started streaming at `peer_lsn`; `written` is the
/// primary's written LSN. A lost peer (writes waited or nothing was written)
/// is in sync again at once; a degraded one once it caught up.
pub(crate) fn on_sync_connect(state: SyncState, peer_lsn: Lsn, written: Lsn) -> SyncState {
    match state {
        SyncState::Lost { .. } | SyncState::InSync => SyncState::InSync,
        SyncState::Degraded if peer_lsn >= written => SyncState::InSync,
        SyncState::Degraded => SyncState::Degraded,
    }
}

/// An ack arrived while streaming.
pub(crate) fn on_sync_ack(state: SyncState, acked_lsn: Lsn, written: Lsn) -> SyncState {
    match state {
        SyncState::Degraded if acked_lsn >= written => SyncState::InSync,
        other => other,
    }
}

// ---------------------------------------------------------------- handshake

/// What the primary does with a peer after its `HelloAck`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrimaryVerdict {
    /// Stream from `from_lsn` (the peer holds everything before).
    Stream {
        from_lsn: Lsn,
    },
    /// Compatible but its history cannot continue by streaming.
    NeedsResync(String),
    Refuse(RefuseCode, String),
}

pub(crate) fn refuse_code(m: &Mismatch) -> RefuseCode {
    match m {
        Mismatch::Version { .. } => RefuseCode::UnsupportedVersion,
        Mismatch::VolumeUuid { .. } => RefuseCode::VolumeMismatch,
        Mismatch::VolumeSize { .. } => RefuseCode::SizeMismatch,
        Mismatch::RegionSize { .. } => RefuseCode::RegionSizeMismatch,
        Mismatch::BothPrimary => RefuseCode::RoleConflict,
        Mismatch::LineageDiverged { .. } => RefuseCode::LineageDiverged,
    }
}

/// `legit_max_lsn`: the highest LSN the peer can hold of our history — our
/// log's end at start-up until this process has streamed to it, our written
/// LSN after. More means it received records we lost (power failure after a
/// sync peer got them): streaming on would mix two histories.
pub(crate) fn primary_verdict(local: &Hello, remote: &Hello, legit_max_lsn: Lsn) -> PrimaryVerdict {
    if let Err(m) = check_hello(local, remote) {
        return PrimaryVerdict::Refuse(refuse_code(&m), m.to_string());
    }
    if remote.role != Role::Secondary {
        return PrimaryVerdict::Refuse(
            RefuseCode::RoleConflict,
            format!("peer {} is not a secondary", remote.node_id),
        );
    }
    let peer = remote.durable_lsn;
    match compare_lineage(&local.lineage, &remote.lineage) {
        LineageOrder::Same | LineageOrder::BIsAncestor { .. } if peer > legit_max_lsn => {
            PrimaryVerdict::NeedsResync(format!(
                "peer holds LSN {peer} but this primary's log ends at {legit_max_lsn} \
                 (records lost in a primary crash)"
            ))
        }
        LineageOrder::Same => PrimaryVerdict::Stream { from_lsn: peer + 1 },
        LineageOrder::BIsAncestor { common_lsn, .. } if peer < common_lsn => {
            PrimaryVerdict::Stream { from_lsn: peer + 1 }
        }
        LineageOrder::BIsAncestor { common_lsn, .. } => PrimaryVerdict::NeedsResync(format!(
            "peer holds LSN {peer} of an older generation, past our generation start {common_lsn}"
        )),
        LineageOrder::AIsAncestor { common_lsn, .. } => PrimaryVerdict::NeedsResync(format!(
            "peer has a newer generation (from LSN {common_lsn}) than this primary"
        )),
        LineageOrder::Diverged { .. } => PrimaryVerdict::Refuse(
            RefuseCode::LineageDiverged,
            "lineages diverged: split brain".into(),
        ),
    }
}

/// The secondary's check of a primary's `Hello`; `local.durable_lsn` is the
/// last LSN its journal holds.
pub(crate) fn secondary_verdict(local: &Hello, remote: &Hello) -> Result<(), (RefuseCode, String)> {
    if remote.role != Role::Primary {
        return Err((
            RefuseCode::RoleConflict,
            format!(
                "{} connected as a secondary; only a primary ships",
                remote.node_id
            ),
        ));
    }
    check_hello(local, remote).map_err(|m| (refuse_code(&m), m.to_string()))?;
    match compare_lineage(&local.lineage, &remote.lineage) {
        LineageOrder::Same => Ok(()),
        LineageOrder::AIsAncestor { common_lsn, .. } if local.durable_lsn < common_lsn => Ok(()),
        LineageOrder::AIsAncestor { common_lsn, .. } => Err((
            RefuseCode::LineageDiverged,
            format!(
                "this node holds LSN {} of an older generation, past the primary's generation \
                 start {common_lsn}: needs resync",
                local.durable_lsn
            ),
        )),
        LineageOrder::BIsAncestor { common_lsn, .. } => Err((
            RefuseCode::LineageDiverged,
            format!("this node has a newer generation (from LSN {common_lsn}) than the primary"),
        )),
        LineageOrder::Diverged { .. } => Err((
            RefuseCode::LineageDiverged,
            "lineages diverged: split brain".into(),
        )),
    }
}

// ---------------------------------------------------------------- receive

/// Checks a received `Records` batch before anything of it is journaled:
/// it continues the journal at `next_lsn`, LSNs are consecutive, and every
/// payload matches its BLAKE3.
pub(crate) fn validate_batch(
    next_lsn: Lsn,
    first_lsn: Lsn,
    records: &[WireRecord],
) -> Result<(), BatchError> {
    if records.is_empty() {
        return Ok(());
    }
    if first_lsn != next_lsn {
        return Err(BatchError::WrongStart {
            first: first_lsn,
            expected: next_lsn,
        });
    }
    for (i, r) in records.iter().enumerate() {
        let want = next_lsn + i as u64;
        if r.lsn != want {
            return Err(BatchError::NotConsecutive {
                lsn: r.lsn,
                expected: want,
            });
        }
        let digest = if r.payload.is_empty() {
            [0u8; 32]
        } else {
            *blake3::hash(&r.payload).as_bytes()
        };
        if digest != r.blake3 {
            return Err(BatchError::Digest { lsn: r.lsn });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- lag

/// Unacknowledged writes of the primary: (LSN → bytes, time written), for
/// lag in bytes and seconds. Bounded: past `max_entries` the oldest are
/// dropped and counted, so lag stays an estimate, never unbounded memory.
#[derive(Debug)]
pub(crate) struct LagTracker {
    entries: BTreeMap<Lsn, (u64, Instant)>,
    max_entries: usize,
    /// Highest LSN dropped for the cap, and the time of the oldest dropped
    /// entry not yet acknowledged by everyone.
    dropped_upto: Lsn,
    dropped_oldest: Option<Instant>,
    dropped_bytes_avg: u64,
}

impl LagTracker {
    pub fn new(max_entries: usize) -> Self {
        LagTracker {
            entries: BTreeMap::new(),
            max_entries: max_entries.max(1),
            dropped_upto: 0,
            dropped_oldest: None,
            dropped_bytes_avg: 0,
        }
    }

    pub fn insert(&mut self, lsn: Lsn, bytes: u64, at: Instant) {
        self.entries.insert(lsn, (bytes, at));
        while self.entries.len() > self.max_entries {
            if let Some((l, (b, t))) = self.entries.pop_first() {
                self.dropped_upto = self.dropped_upto.max(l);
                self.dropped_oldest.get_or_insert(t);
                // A moving average: the estimate for dropped entries.
                self.dropped_bytes_avg = if self.dropped_bytes_avg == 0 {
                    b
                } else {
                    (self.dropped_bytes_avg + b) / 2
                };
            }
        }
    }

    /// Everyone holds up to `lsn`: forget it.
    pub fn prune(&mut self, lsn: Lsn) {
        while let Some((&l, _)) = self.entries.first_key_value() {
            if l > lsn {
                break;
            }
            self.entries.pop_first();
        }
        if lsn >= self.dropped_upto {
            self.dropped_oldest = None;
        }
    }

    /// (bytes, seconds) a peer that acknowledged `acked` is behind
    /// `written`.
    pub fn lag(&self, acked: Lsn, written: Lsn, now: Instant) -> (u64, f64) {
        if acked >= written {
            return (0, 0.0);
        }
        let mut bytes: u64 = self.entries.range(acked + 1..).map(|(_, (b, _))| *b).sum();
        let mut oldest = self.entries.range(acked + 1..).next().map(|(_, (_, t))| *t);
        if acked < self.dropped_upto {
            bytes += (self.dropped_upto - acked) * self.dropped_bytes_avg;
            oldest = self.dropped_oldest.or(oldest);
        }
        let secs = oldest.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        (bytes, secs)
    }
}

/// Acknowledged bytes per second over a sliding window.
#[derive(Debug)]
pub(crate) struct Throughput {
    samples: VecDeque<(Instant, u64)>,
    window: Duration,
}

impl Throughput {
    pub fn new(window: Duration) -> Self {
        Throughput {
            samples: VecDeque::new(),
            window,
        }
    }

    pub fn record(&mut self, now: Instant, bytes: u64) {
        if bytes > 0 {
            self.samples.push_back((now, bytes));
        }
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.samples.front() {
            if now.saturating_duration_since(t) <= self.window {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window ending at `now` (read only: old
    /// samples are dropped by `record`).
    pub fn rate(&self, now: Instant) -> f64 {
        let total: u64 = self
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.window)
            .map(|(_, b)| *b)
            .sum();
        total as f64 / self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests;
