//! `BlockTarget` adapters: what the NBD server sees of a volume.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use nbd_shim::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
use replication::{EngineError, Primary};
use store::{Change, Store, StoreError};
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

/// What a journaled export writes through: the store alone (`serve`) or a
/// primary that also waits for its sync peers (`run`).
pub trait DataPath: Send + Sync + 'static {
    fn store(&self) -> &Store;
    fn change(
        &self,
        change: Change,
        fua: bool,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    fn flush(&self) -> impl Future<Output = Result<(), TargetError>> + Send;
}

impl DataPath for Store {
    fn store(&self) -> &Store {
        self
    }

    async fn change(&self, change: Change, fua: bool) -> Result<(), TargetError> {
        Store::change(self, change, fua)
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn flush(&self) -> Result<(), TargetError> {
        Store::flush(self).await.map_err(store_error)
    }
}

impl DataPath for Primary {
    fn store(&self) -> &Store {
        Primary::store(self)
    }

    async fn change(&self, change: Change, fua: bool) -> Result<(), TargetError> {
        Primary::change(self, change, fua)
            .await
            .map(drop)
            .map_err(engine_error)
    }

    async fn flush(&self) -> Result<(), TargetError> {
        Primary::flush(self).await.map_err(engine_error)
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

fn engine_error(err: EngineError) -> TargetError {
    match err {
        EngineError::Store(err) => store_error(err),
        other => {
            tracing::warn!(error = %other, "request failed");
            TargetError::Io(std::io::Error::other(other.to_string()))
        }
    }
}

/// A volume behind its journal (and, on a primary, its sync peers): changes
/// are journaled before they reach the volume; FLUSH and FUA wait for the
/// journal's group commit.
pub struct JournaledTarget<P> {
    path: Arc<P>,
}

impl<P: DataPath> JournaledTarget<P> {
    pub fn new(path: Arc<P>) -> Self {
        JournaledTarget { path }
    }
}

impl<P: DataPath> BlockTarget for JournaledTarget<P> {
    fn size_bytes(&self) -> u64 {
        self.path.store().volume().size_bytes()
    }

    fn features(&self) -> TargetFeatures {
        features(false)
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        self.path
            .store()
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
        self.path
            .change(change, durability == Durability::Fua)
            .await
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
        self.path
            .change(change, flags.durability == Durability::Fua)
            .await
    }

    async fn trim(&self, offset: u64, len: u32, durability: Durability) -> Result<(), TargetError> {
        let change = Change::Trim {
            offset,
            length: u64::from(len),
        };
        self.path
            .change(change, durability == Durability::Fua)
            .await
    }

    async fn flush(&self) -> Result<(), TargetError> {
        self.path.flush().await
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), TargetError> {
        self.path
            .store()
            .volume()
            .readahead(offset, u64::from(len))
            .await
            .map_err(target_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        block_status(self.path.store().volume(), offset, len).await
    }
}
