//! The crate's one error type.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error during {op} on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A write or fdatasync failed earlier. The kernel may have dropped the
    /// dirty pages, so nothing after the last durable LSN can be trusted.
    #[error(
        "journal failed ({reason}); writes after LSN {durable_lsn} may not be durable. \
         Stop serving I/O and restart the daemon: recovery redoes the journal from its \
         checkpoint and cuts it at the last valid record"
    )]
    Failed { reason: String, durable_lsn: Lsn },

    /// An invalid record is followed by records written after it was made
    /// durable: this is not a torn tail, so replaying past it would lose data.
    #[error(
        "journal corrupted in the middle: segment {} offset {offset}, expected LSN {lsn}: {detail}; \
         a later record (LSN {later_lsn}) proves LSN {lsn} had been synced. Refusing to start: \
         restore the journal, or discard it and run a full resync of this volume",
        path.display()
    )]
    CorruptRecord {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
        later_lsn: Lsn,
        detail: String,
    },

    #[error("journal metadata {} is corrupt: {reason}", path.display())]
    CorruptMetadata { path: PathBuf, reason: String },

    #[error(
        "journal holds records only up to LSN {last_lsn} but its checkpoint is {checkpoint_lsn}: \
         durable records are missing; refusing to start"
    )]
    MissingRecords { last_lsn: Lsn, checkpoint_lsn: Lsn },

    #[error("journal in {} belongs to volume {found}, not {expected}", path.display())]
    VolumeMismatch {
        path: PathBuf,
        found: uuid::Uuid,
        expected: uuid::Uuid,
    },

    #[error("invalid journal configuration: {0}")]
    Config(String),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The journal stayed full for the configured wait; nothing of this
    /// append was written. Checkpoint the volume to free space.
    #[error(
        "journal full for {waited:?} (capacity {capacity_bytes} bytes, checkpoint LSN {checkpoint_lsn}); \
         the append was not written: checkpoint the volume more often or raise capacity_bytes"
    )]
    Full {
        waited: Duration,
        capacity_bytes: u64,
        checkpoint_lsn: Lsn,
    },

    #[error("unknown consumer {0:?}")]
    UnknownConsumer(String),

    #[error("journal is shut down")]
    Shutdown,
}

impl JournalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Clones enough of the error to hand to several waiters.
    pub(crate) fn share(&self) -> Self {
        match self {
            JournalError::Failed {
                reason,
                durable_lsn,
            } => JournalError::Failed {
                reason: reason.clone(),
                durable_lsn: *durable_lsn,
            },
            JournalError::Full {
                waited,
                capacity_bytes,
                checkpoint_lsn,
            } => JournalError::Full {
                waited: *waited,
                capacity_bytes: *capacity_bytes,
                checkpoint_lsn: *checkpoint_lsn,
            },
            JournalError::Shutdown => JournalError::Shutdown,
            other => JournalError::Failed {
                reason: other.to_string(),
                durable_lsn: 0,
            },
        }
    }
}
