//! One peer session's shipping window: what was sent, acknowledged and
//! made durable by the peer, and the flushes asked of it.

use std::collections::VecDeque;

use journal::Lsn;

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
    pub(super) flush_sent: Lsn,
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
