//! Checks of a received `Records` batch before anything of it is journaled.

use journal::Lsn;
use wire::WireRecord;

use crate::error::BatchError;

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
