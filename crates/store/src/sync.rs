//! What a resync or verify needs of a store: a region as of a journal
//! position (the source side), and applying or hashing a range (the
//! target side).
//!
//! A snapshot is taken under the range lock: every change to the range that
//! has an LSN is applied, and none can get one until the lock is released,
//! so the bytes read are the volume as of `lsn` = the last LSN assigned, for
//! that range. Sent in the replication stream right after record `lsn`, the
//! target applies it after every older write and before every newer one.

use bytes::Bytes;
use journal::{DirtyBitmap, Lsn};

use crate::error::StoreError;
use crate::store::Store;

/// A range as the source holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionContent {
    /// Reads as zeroes (a hole, or written zeroes): sent as a trim, so the
    /// target stays sparse.
    Zero,
    /// The bytes.
    Data(Bytes),
    /// Only the BLAKE3 of the bytes (to compare before sending them).
    Digest([u8; 32]),
}

/// A range of the volume as of a journal position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSnapshot {
    /// The volume held this for the range once every record up to `lsn`
    /// was applied, and no later one touching the range.
    pub lsn: Lsn,
    pub offset: u64,
    pub len: u64,
    pub content: RegionContent,
}

/// A resync write on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncWrite {
    Data(Bytes),
    Zero,
}

impl Store {
    /// The range `[offset, offset + len)` as of the last LSN assigned; with
    /// `digest_only`, its BLAKE3 instead of its bytes (zero ranges are
    /// reported as such either way).
    pub async fn region_snapshot(
        &self,
        offset: u64,
        len: u64,
        digest_only: bool,
    ) -> Result<RegionSnapshot, StoreError> {
        self.check_failed()?;
        let _guard = self.ranges.acquire(offset, len).await;
        let lsn = self.journal.next_lsn() - 1;
        let extents = self.volume.extents(offset, len).await?;
        let all_hole = extents.iter().all(|e| e.zero)
            && extents.iter().map(|e| e.length_bytes).sum::<u64>() == len;
        let content = if all_hole {
            RegionContent::Zero
        } else {
            let data = self.volume.read(offset, len as usize).await?;
            if data.iter().all(|&b| b == 0) {
                RegionContent::Zero
            } else if digest_only {
                RegionContent::Digest(*blake3::hash(&data).as_bytes())
            } else {
                RegionContent::Data(data)
            }
        };
        Ok(RegionSnapshot {
            lsn,
            offset,
            len,
            content,
        })
    }

    /// BLAKE3 of a range as this volume holds it now (a target compares).
    pub async fn digest(&self, offset: u64, len: u64) -> Result<[u8; 32], StoreError> {
        self.check_failed()?;
        let _guard = self.ranges.acquire(offset, len).await;
        let data = self.volume.read(offset, len as usize).await?;
        Ok(*blake3::hash(&data).as_bytes())
    }

    /// Applies a resync write to the volume (a target; not journaled: the
    /// caller checkpoints before acknowledging it as durable).
    pub async fn apply_sync(
        &self,
        offset: u64,
        len: u64,
        write: SyncWrite,
    ) -> Result<(), StoreError> {
        self.check_failed()?;
        let _guard = self.ranges.acquire(offset, len).await;
        let applied = match write {
            SyncWrite::Data(data) => {
                debug_assert_eq!(data.len() as u64, len);
                self.volume.write(offset, data).await
            }
            SyncWrite::Zero => self.volume.punch_hole(offset, len).await,
        };
        applied.map_err(|err| {
            self.fail(format!(
                "applying a resync write at {offset}+{len} to the volume failed: {err}"
            ))
        })
    }

    /// The regions the journal's records from `lsn` on wrote, trimmed or
    /// zeroed; `None` when the journal no longer holds them all. What a
    /// copy rolls back, and what a split brain counts.
    pub async fn regions_written_since(&self, lsn: Lsn) -> Result<Option<DirtyBitmap>, StoreError> {
        let j = self.journal();
        let Some(records) = j.records_since(lsn).await? else {
            return Ok(None);
        };
        let mut touched = DirtyBitmap::new(self.volume.size_bytes(), j.region_bytes());
        for r in records.iter().filter(|r| r.length > 0) {
            touched.mark(r.offset, r.length);
        }
        Ok(Some(touched))
    }

    /// Whether the volume holds any data (a block device always may).
    pub async fn holds_data(&self) -> Result<bool, StoreError> {
        let size = self.volume.size_bytes();
        if size == 0 {
            return Ok(false);
        }
        let extents = self.volume.extents(0, size).await?;
        Ok(extents.iter().any(|e| !e.hole)
            || extents.iter().map(|e| e.length_bytes).sum::<u64>() < size)
    }
}
