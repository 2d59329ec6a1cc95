//! The crate's one error type, [`EngineError`]; it wraps the local data
//! path's [`StoreError`].

use journal::JournalError;
use store::StoreError;

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
