//! A change to the volume as the NBD server hands it over, and the one
//! function that applies a journaled record to the volume (redo, replicas).

use bytes::Bytes;
use journal::{NewRecord, RecordKind};
use volume::Volume;

use crate::error::StoreError;

/// One change to the volume.
#[derive(Debug, Clone)]
pub enum Change {
    Write {
        offset: u64,
        data: Bytes,
    },
    Trim {
        offset: u64,
        length: u64,
    },
    Zeroes {
        offset: u64,
        length: u64,
        may_trim: bool,
        fast_only: bool,
    },
}

impl Change {
    pub(crate) fn extent(&self) -> (u64, u64) {
        match self {
            Change::Write { offset, data } => (*offset, data.len() as u64),
            Change::Trim { offset, length } | Change::Zeroes { offset, length, .. } => {
                (*offset, *length)
            }
        }
    }

    pub(crate) fn record(&self) -> NewRecord {
        match self {
            Change::Write { offset, data } => NewRecord::write(*offset, data.clone()),
            Change::Trim { offset, length } => NewRecord::trim(*offset, *length),
            Change::Zeroes { offset, length, .. } => NewRecord::write_zeroes(*offset, *length),
        }
    }
}

/// Applies one journaled record to the volume (redo and, later, replicas).
pub async fn apply(
    volume: &Volume,
    kind: RecordKind,
    offset: u64,
    length: u64,
    payload: Bytes,
) -> Result<(), StoreError> {
    match kind {
        RecordKind::Write => volume.write(offset, payload).await?,
        RecordKind::Trim => volume.punch_hole(offset, length).await?,
        // Zeroes read back the same whether punched or written; trimming is
        // the cheap, always-available way on files.
        RecordKind::WriteZeroes => volume.write_zeroes(offset, length, true, false).await?,
        RecordKind::Barrier => {}
    }
    Ok(())
}
