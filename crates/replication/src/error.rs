//! Errors: [`StoreError`] for the local data path, [`EngineError`] for the
//! replication engine around it (which wraps [`StoreError`]).

use std::path::{Path, PathBuf};

use journal::JournalError;
use volume::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Journal(JournalError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A volume write or fsync failed after the change was journaled.
    #[error(
        "volume failed: {0}; I/O is refused until a restart, where recovery redoes the journal \
         onto the volume"
    )]
    Failed(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume metadata {} is corrupt: {reason}", path.display())]
    Metadata { path: PathBuf, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

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
