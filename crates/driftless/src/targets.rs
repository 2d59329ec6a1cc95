//! `BlockTarget` adapters: what the NBD server sees of a volume.

use std::sync::Arc;

use bytes::Bytes;
use nbd_shim::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
use replication::{Change, Store, StoreError};
use volume::{Volume, VolumeError};

/// A plain volume as an NBD target: FUA and FLUSH are fdatasync of the volume.
pub struct VolumeTarget {
    volume: Volume,
    read_only: bool,
}

fn target_error(err: VolumeError) -> TargetError {
    match &err {
        VolumeError::ReadOnly => TargetError::ReadOnly,
        VolumeError::FastZeroUnavailable => TargetError::FastZeroUnavailable,
        VolumeError::OutOfRange { .. } | VolumeError::TooLarge { .. } => {
            TargetError::Invalid(err.to_string())
        }
        _ => match err.raw_os_error() {
            // Keep the errno so ENOSPC/EPERM reach the client as such; the
            // context (op, path, offset) goes to the log.
            Some(code) => {
                tracing::warn!(error = %err, "volume I/O failed");
                TargetError::Io(std::io::Error::from_raw_os_error(code))
            }
            None => TargetError::Io(std::io::Error::other(err.to_string())),
        },
    }
}

impl VolumeTarget {
    pub fn new(volume: Volume, read_only: bool) -> Self {
        VolumeTarget { volume, read_only }
    }

    async fn durable(&self, durability: Durability) -> Result<(), TargetError> {
        match durability {
            Durability::Buffered => Ok(()),
            Durability::Fua => self.volume.sync_data().await.map_err(target_error),
        }
    }
}

impl BlockTarget for VolumeTarget {
    fn size_bytes(&self) -> u64 {
        self.volume.size_bytes()
    }

    fn features(&self) -> TargetFeatures {
        features(self.read_only)
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        self.volume
            .read(offset, len as usize)
            .await
            .map_err(target_error)
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<(), TargetError> {
        self.volume
            .write(offset, data)
            .await
            .map_err(target_error)?;
        self.durable(durability).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), TargetError> {
        self.volume
            .write_zeroes(offset, u64::from(len), flags.may_trim, flags.fast_only)
            .await
            .map_err(target_error)?;
        self.durable(flags.durability).await
    }

    async fn trim(&self, offset: u64, len: u32, durability: Durability) -> Result<(), TargetError> {
        self.volume
            .punch_hole(offset, u64::from(len))
            .await
            .map_err(target_error)?;
        self.durable(durability).await
    }

    async fn flush(&self) -> Result<(), TargetError> {
        self.volume.sync_data().await.map_err(target_error)
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), TargetError> {
        self.volume
            .readahead(offset, u64::from(len))
            .await
            .map_err(target_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        block_status(&self.volume, offset, len).await
    }
}

fn features(read_only: bool) -> TargetFeatures {
    TargetFeatures {
        read_only,
        can_trim: true,
        can_write_zeroes: true,
        can_fast_zero: true,
        can_cache: true,
        preferred_block_bytes: 4096,
    }
}

async fn block_status(volume: &Volume, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
    let extents = volume
        .extents(offset, u64::from(len))
        .await
        .map_err(target_error)?;
    Ok(extents
        .into_iter()
        .map(|e| Extent {
            length_bytes: e.length_bytes,
            hole: e.hole,
            zero: e.zero,
        })
        .collect())
}

/// A volume behind its journal: changes are journaled before they reach the
/// volume; FLUSH and FUA wait for the journal's group commit.
pub struct StoreTarget {
    store: Arc<Store>,
}

impl StoreTarget {
    pub fn new(store: Arc<Store>) -> Self {
        StoreTarget { store }
    }
}

fn store_error(err: StoreError) -> TargetError {
    match err {
        StoreError::Volume(err) => target_error(err),
        other => {
            tracing::warn!(error = %other, "request failed");
            TargetError::Io(std::io::Error::other(other.to_string()))
        }
    }
}

impl BlockTarget for StoreTarget {
    fn size_bytes(&self) -> u64 {
        self.store.volume().size_bytes()
    }

    fn features(&self) -> TargetFeatures {
        features(false)
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        self.store
            .read(offset, len as usize)
            .await
            .map_err(store_error)
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<(), TargetError> {
        let change = Change::Write { offset, data };
        self.store
            .change(change, durability == Durability::Fua)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), TargetError> {
        let change = Change::Zeroes {
            offset,
            length: u64::from(len),
            may_trim: flags.may_trim,
            fast_only: flags.fast_only,
        };
        self.store
            .change(change, flags.durability == Durability::Fua)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32, durability: Durability) -> Result<(), TargetError> {
        let change = Change::Trim {
            offset,
            length: u64::from(len),
        };
        self.store
            .change(change, durability == Durability::Fua)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), TargetError> {
        self.store.flush().await.map_err(store_error)
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), TargetError> {
        self.store
            .volume()
            .readahead(offset, u64::from(len))
            .await
            .map_err(target_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        block_status(self.store.volume(), offset, len).await
    }
}
