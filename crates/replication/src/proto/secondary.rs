//! The secondary's side of a primary session, sans-IO: every received
//! message is checked (LSN continuity, generations, operation sequence,
//! checksums, ranges) before the driver (`secondary.rs`) touches the
//! journal or the volume, and turned into the steps it must carry out, in
//! stream order. Nothing is applied out of order: records, resync and
//! verify operations go through one queue.

use journal::Lsn;
use wire::{LineageEntry, Message, SyncOp, SyncOpKind, WireRecord};

use super::batch::validate_batch;
use crate::error::SessionError;

/// What the driver does for one received message, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Take over a generation of the primary's before journaling its first
    /// record.
    Adopt(LineageEntry),
    /// Journal (then apply, in order) these records.
    Records(Vec<WireRecord>),
    /// Make everything up to `lsn` durable, then answer `FlushAck`.
    Flush(Lsn),
    /// Become a resync target: mark the copy inconsistent, list the ranges
    /// of its own records from `rollback_from` (each a `SyncNeed`), apply
    /// and checkpoint what was received, restart the journal at
    /// `stream_from`, take `lineage` over, then answer with
    /// [`SecondarySession::begun`]'s message.
    BeginResync {
        job: u64,
        stream_from: Lsn,
        rollback_from: Option<Lsn>,
        lineage: Vec<LineageEntry>,
    },
    /// Apply (after everything before them) these checked operations.
    Ops(Vec<SyncOp>),
    /// Send this reply now.
    Reply(Message),
    /// The primary ends the session cleanly.
    Close(String),
}

pub struct SecondarySession {
    volume_bytes: u64,
    /// The next LSN the stream must carry.
    next_lsn: Lsn,
    /// The current generation of the journal, and the primary's lineage as
    /// announced (Hello, then ResyncBegin).
    generation: u64,
    lineage: Vec<LineageEntry>,
    /// The resync job running into this node, if any.
    job: Option<u64>,
    last_seq: u64,
}

impl SecondarySession {
    /// After the handshake: the journal's next LSN and generation, the
    /// primary's lineage from its Hello.
    pub fn new(
        volume_bytes: u64,
        next_lsn: Lsn,
        generation: u64,
        lineage: Vec<LineageEntry>,
    ) -> Self {
        SecondarySession {
            volume_bytes,
            next_lsn,
            generation,
            lineage,
            job: None,
            last_seq: 0,
        }
    }

    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    pub fn resync_job(&self) -> Option<u64> {
        self.job
    }

    /// One message from the primary: the steps to carry out, or why the
    /// session must end (nothing of the message is carried out then).
    pub fn handle(&mut self, msg: Message) -> Result<Vec<Step>, SessionError> {
        match msg {
            Message::Records { first_lsn, records } => self.on_records(first_lsn, records),
            Message::Flush { lsn } => {
                if lsn >= self.next_lsn {
                    return Err(SessionError::Protocol(format!(
                        "Flush of LSN {lsn} beyond the records received (next {})",
                        self.next_lsn
                    )));
                }
                Ok(vec![Step::Flush(lsn)])
            }
            Message::Ping { nonce } => Ok(vec![Step::Reply(Message::Pong { nonce })]),
            Message::Pong { .. } => Ok(Vec::new()),
            Message::ResyncBegin {
                job,
                stream_from_lsn,
                rollback_from_lsn,
                lineage,
                ..
            } => {
                if self.job.is_some() {
                    return Err(SessionError::Protocol(format!(
                        "ResyncBegin {job} while resync {} is running",
                        self.job.unwrap_or_default()
                    )));
                }
                self.job = Some(job);
                self.next_lsn = stream_from_lsn;
                self.lineage = lineage.clone();
                self.generation = lineage
                    .iter()
                    .take_while(|g| g.start_lsn <= stream_from_lsn)
                    .last()
                    .map_or(0, |g| g.generation_id);
                Ok(vec![Step::BeginResync {
                    job,
                    stream_from: stream_from_lsn,
                    rollback_from: rollback_from_lsn,
                    lineage,
                }])
            }
            Message::SyncOps { ops } => self.on_ops(ops),
            Message::Bye { code, text } => Ok(vec![Step::Close(format!(
                "primary said bye ({code:?}): {text}"
            ))]),
            other => Err(SessionError::Protocol(format!(
                "unexpected {:?} from a primary",
                other.message_type()
            ))),
        }
    }

    /// The reply once [`Step::BeginResync`] is carried out (`rollback`: what
    /// its listing found).
    pub fn begun(&self, job: u64, rollback: wire::Rollback) -> Message {
        Message::ResyncBeginAck { job, rollback }
    }

    fn on_records(
        &mut self,
        first_lsn: Lsn,
        records: Vec<WireRecord>,
    ) -> Result<Vec<Step>, SessionError> {
        validate_batch(self.next_lsn, first_lsn, &records)?;
        for r in &records {
            if r.offset
                .checked_add(r.len)
                .is_none_or(|end| end > self.volume_bytes)
            {
                return Err(SessionError::Protocol(format!(
                    "record LSN {} writes {}+{}, outside the volume ({} bytes)",
                    r.lsn, r.offset, r.len, self.volume_bytes
                )));
            }
        }
        let mut steps = Vec::new();
        let mut run = Vec::new();
        for r in records {
            if r.generation != self.generation {
                let Some(g) = self
                    .lineage
                    .iter()
                    .find(|g| g.generation_id == r.generation && g.start_lsn == r.lsn)
                else {
                    return Err(SessionError::UnknownGeneration {
                        lsn: r.lsn,
                        generation: r.generation,
                    });
                };
                if !run.is_empty() {
                    steps.push(Step::Records(std::mem::take(&mut run)));
                }
                steps.push(Step::Adopt(*g));
                self.generation = r.generation;
            }
            self.next_lsn = r.lsn + 1;
            run.push(r);
        }
        if !run.is_empty() {
            steps.push(Step::Records(run));
        }
        Ok(steps)
    }

    fn on_ops(&mut self, ops: Vec<SyncOp>) -> Result<Vec<Step>, SessionError> {
        if let Some(end) = ops.iter().position(|o| o.kind == SyncOpKind::End) {
            if end + 1 != ops.len() {
                return Err(SessionError::Protocol("operations after End".into()));
            }
        }
        for op in &ops {
            if op.seq <= self.last_seq {
                return Err(SessionError::Protocol(format!(
                    "operation {} after {}: sequence numbers must increase",
                    op.seq, self.last_seq
                )));
            }
            self.last_seq = op.seq;
            let resync_op = matches!(
                op.kind,
                SyncOpKind::Data | SyncOpKind::Zero | SyncOpKind::Check | SyncOpKind::End
            );
            if resync_op && self.job.is_none() {
                return Err(SessionError::Protocol(format!(
                    "{:?} operation {} outside a resync",
                    op.kind, op.seq
                )));
            }
            if op.kind != SyncOpKind::End
                && op
                    .offset
                    .checked_add(op.len)
                    .is_none_or(|end| end > self.volume_bytes)
            {
                return Err(SessionError::Protocol(format!(
                    "operation {} for {}+{}, outside the volume ({} bytes)",
                    op.seq, op.offset, op.len, self.volume_bytes
                )));
            }
            if op.kind == SyncOpKind::Data && *blake3::hash(&op.data).as_bytes() != op.blake3 {
                return Err(SessionError::Protocol(format!(
                    "resync data for {}+{}: BLAKE3 mismatch (corrupted in transit or at the source)",
                    op.offset, op.len
                )));
            }
        }
        if ops.last().is_some_and(|o| o.kind == SyncOpKind::End) {
            self.job = None;
        }
        Ok(vec![Step::Ops(ops)])
    }
}

/// Per-session acknowledgement of operations: the highest applied, and
/// the highest acknowledged as durable (after a checkpoint).
#[derive(Debug, Default)]
pub struct OpAcks {
    applied: Option<u64>,
    acked: u64,
}

impl OpAcks {
    pub fn applied(&mut self, seq: u64) {
        self.applied = Some(seq);
    }

    /// A checkpoint made everything applied so far durable: the `SyncAck`
    /// to send, if any is new.
    pub fn made_durable(&mut self) -> Option<Message> {
        let last = self.applied.take()?;
        (last > self.acked).then(|| {
            self.acked = last;
            Message::SyncAck { seq: last }
        })
    }

    pub fn pending(&self) -> bool {
        self.applied.is_some()
    }
}
