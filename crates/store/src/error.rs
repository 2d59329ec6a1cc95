//! The crate's one error type.

use std::path::{Path, PathBuf};

use journal::JournalError;
use volume::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Journal(#[from] JournalError),
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
    /// A configuration value is out of range; nothing was opened.
    #[error("store configuration: {0}")]
    Config(String),
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
