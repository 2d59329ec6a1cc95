//! The crate's one public error type, [`EngineError`] (it wraps the local
//! data path's [`StoreError`]), and the internal reason a session ended,
//! [`SessionError`], which reaches operators through status and the log.

use std::time::Duration;

use journal::{JournalError, Lsn};
use store::StoreError;
use transport::TransportError;

/// Errors of the replication engine ([`crate::Primary`], [`crate::Secondary`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The local data path failed (journal, volume, metadata).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Invalid configuration; nothing was started.
    #[error("replication configuration: {0}")]
    Config(String),
    /// Binding a listener or endpoint failed.
    #[error("transport: {0}")]
    Transport(#[from] transport::TransportError),
    /// No peer of that name is configured.
    #[error("no peer named {0:?} is configured")]
    UnknownPeer(String),
    /// The peer's task could not do what was asked (why).
    #[error("{0}")]
    Refused(String),
    /// Writes are refused: this primary is fenced (why, and what it waits for).
    #[error("writes refused: {0}")]
    Fenced(String),
    /// The engine is shutting down or shut down; the request was not run.
    #[error("replication engine is shut down")]
    Shutdown,
    /// An internal task failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JournalError> for EngineError {
    fn from(err: JournalError) -> Self {
        EngineError::Store(StoreError::Journal(err))
    }
}

/// Why a secondary's session with its primary ended (shown in status and
/// logged). Every variant ends the session; the primary reconnects.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer timeout: nothing received for {0:?}")]
    Timeout(Duration),
    #[error("connection closed by primary")]
    Closed,
    #[error(transparent)]
    Transport(TransportError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("protocol: {0}")]
    Batch(#[from] BatchError),
    #[error(
        "record LSN {lsn} has generation {generation:#x} that does not start there in the \
         primary's lineage"
    )]
    UnknownGeneration { lsn: Lsn, generation: u64 },
    #[error("adopting generation {generation}: {source}")]
    AdoptGeneration {
        generation: u64,
        #[source]
        source: JournalError,
    },
    #[error("journaling LSN {lsn}: {source}")]
    Journal {
        lsn: Lsn,
        #[source]
        source: StoreError,
    },
    #[error("applying LSN {lsn}: {source}")]
    Apply {
        lsn: Lsn,
        #[source]
        source: StoreError,
    },
    /// A resync or verify operation could not be carried out; the copy
    /// stays inconsistent.
    #[error("resync: {0}")]
    Resync(String),
    /// The applier ended before taking a batch (it failed first).
    #[error("applier stopped")]
    ApplierStopped,
    #[error("internal: applier task: {0}")]
    ApplierTask(String),
    /// A bug: the applied watermark would stall checkpoints at the hole.
    #[error("internal: session ended with LSNs {from}..={to} journaled but not applied")]
    Unapplied { from: Lsn, to: Lsn },
}

/// What is wrong with a received `Records` batch (nothing of it is
/// journaled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("records batch starts at LSN {first}, expected {expected}")]
    WrongStart { first: Lsn, expected: Lsn },
    #[error("record LSN {lsn} in a batch, expected {expected}")]
    NotConsecutive { lsn: Lsn, expected: Lsn },
    #[error("record LSN {lsn}: payload BLAKE3 mismatch (corrupted in transit or at the source)")]
    Digest { lsn: Lsn },
}
