//! The sync gate: whether a write (or flush) waits for a sync peer, given
//! where that peer stands and the sync-peer loss policy.

use std::time::Instant;

use journal::Lsn;

use crate::config::SyncPeerLossPolicy;

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
