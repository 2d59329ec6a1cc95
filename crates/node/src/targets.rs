//! `BlockTarget` adapters: what the NBD server sees of a volume.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use nbd_shim::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
use replication::{EngineError, Primary};
use store::{Change, Store, StoreError};
use volume::{Volume, VolumeError};

use crate::metrics::{NbdCommand, NbdMeter};

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

pub(crate) fn store_error(err: StoreError) -> TargetError {
    match err {
        StoreError::Volume(err) => target_error(err),
        // Refused before anything was journaled (the NBD server checks
        // ranges first; this is the journal's own check).
        StoreError::Journal(journal::JournalError::InvalidRequest(why)) => {
            TargetError::Invalid(why)
        }
        other => {
            tracing::warn!(error = %other, "request failed");
            TargetError::Io(std::io::Error::other(other.to_string()))
        }
    }
}

pub(crate) fn engine_error(err: EngineError) -> TargetError {
    match err {
        EngineError::Store(err) => store_error(err),
        // A fenced primary (or one stepping down) refuses writes: EPERM.
        EngineError::Fenced(why) => {
            tracing::debug!(reason = %why, "write refused");
            TargetError::ReadOnly
        }
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

/// Any target, with each request timed and counted by command (metrics).
pub struct Metered<T> {
    inner: T,
    meter: NbdMeter,
}

impl<T: BlockTarget> Metered<T> {
    pub(crate) fn new(inner: T, meter: NbdMeter) -> Self {
        Metered { inner, meter }
    }
}

impl<T: BlockTarget> BlockTarget for Metered<T> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn features(&self) -> TargetFeatures {
        self.inner.features()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        let read = self.inner.read(offset, len);
        self.meter.time(NbdCommand::Read, len.into(), read).await
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<(), TargetError> {
        let bytes = data.len() as u64;
        let write = self.inner.write(offset, data, durability);
        self.meter.time(NbdCommand::Write, bytes, write).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), TargetError> {
        let zero = self.inner.write_zeroes(offset, len, flags);
        self.meter
            .time(NbdCommand::WriteZeroes, len.into(), zero)
            .await
    }

    async fn trim(&self, offset: u64, len: u32, durability: Durability) -> Result<(), TargetError> {
        let trim = self.inner.trim(offset, len, durability);
        self.meter.time(NbdCommand::Trim, len.into(), trim).await
    }

    async fn flush(&self) -> Result<(), TargetError> {
        self.meter
            .time(NbdCommand::Flush, 0, self.inner.flush())
            .await
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), TargetError> {
        let cache = self.inner.cache(offset, len);
        self.meter.time(NbdCommand::Cache, len.into(), cache).await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        let status = self.inner.block_status(offset, len);
        self.meter
            .time(NbdCommand::BlockStatus, len.into(), status)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use journal::JournalConfig;
    use store::StoreConfig;
    use volume::{EngineKind, VolumeOptions};

    use super::*;

    const MIB: u64 = 1 << 20;

    fn volume(dir: &std::path::Path, read_only: bool) -> Volume {
        Volume::open(
            &dir.join("vol.img"),
            VolumeOptions {
                size_bytes: Some(4 * MIB),
                engine: EngineKind::Threads,
                read_only,
                create: true,
            },
        )
        .unwrap()
    }

    async fn journaled(dir: &std::path::Path) -> JournaledTarget<Store> {
        let mut journal = JournalConfig::new(dir.join("journal"));
        journal.segment_bytes = 40 * MIB;
        journal.capacity_bytes = 3 * 40 * MIB;
        journal.pressure_bytes = 2 * 40 * MIB;
        let cfg = StoreConfig {
            journal,
            checkpoint_interval: Duration::from_secs(3600),
            volume_uuid: None,
            activity: Default::default(),
        };
        let (store, _) = Store::open(volume(dir, false), cfg).await.unwrap();
        JournaledTarget::new(store)
    }

    fn fua(yes: bool) -> Durability {
        if yes {
            Durability::Fua
        } else {
            Durability::Buffered
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journaled_target_journals_every_change_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = journaled(dir.path()).await;
        assert_eq!(t.size_bytes(), 4 * MIB);
        assert!(!t.features().read_only);
        let j = || t.path.store().journal();

        t.write(0, Bytes::from(vec![0xab; 8192]), fua(false))
            .await
            .unwrap();
        assert_eq!(j().written_lsn(), 1);
        assert_eq!(j().applied_lsn(), 1);
        assert_eq!(&t.read(0, 8192).await.unwrap()[..], &[0xab; 8192][..]);

        // FUA: durable before the reply.
        t.write(MIB, Bytes::from(vec![0xcd; 4096]), fua(true))
            .await
            .unwrap();
        assert_eq!(j().durable_lsn(), 2);

        let zero = ZeroFlags {
            may_trim: false,
            fast_only: false,
            durability: fua(false),
        };
        t.write_zeroes(0, 4096, zero).await.unwrap();
        t.trim(4096, 4096, fua(false)).await.unwrap();
        assert_eq!(&t.read(0, 8192).await.unwrap()[..], &[0u8; 8192][..]);
        assert_eq!(j().written_lsn(), 4);

        // FLUSH covers everything written before it.
        assert!(j().durable_lsn() < 4);
        t.flush().await.unwrap();
        assert_eq!(j().durable_lsn(), 4);

        // Block status sees the data at 1 MiB; CACHE is accepted.
        let extents = t.block_status(MIB, 4096).await.unwrap();
        assert!(!extents[0].hole, "{extents:?}");
        t.cache(0, 4096).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_range_requests_are_invalid_and_journal_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = journaled(dir.path()).await;
        let err = t
            .write(4 * MIB - 512, Bytes::from(vec![1; 4096]), fua(false))
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Invalid(_)), "{err:?}");
        assert_eq!(
            t.path.store().journal().written_lsn(),
            0,
            "nothing journaled"
        );
        let other = tempfile::tempdir().unwrap();
        let err = VolumeTarget::new(volume(other.path(), false), false)
            .read(4 * MIB, 4096)
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Invalid(_)), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_volume_target_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        drop(volume(dir.path(), false)); // create the file
        let t = VolumeTarget::new(volume(dir.path(), true), true);
        assert!(t.features().read_only);
        let err = t
            .write(0, Bytes::from(vec![1; 512]), fua(false))
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::ReadOnly), "{err:?}");
        assert_eq!(&t.read(0, 512).await.unwrap()[..], &[0u8; 512][..]);
    }
}
