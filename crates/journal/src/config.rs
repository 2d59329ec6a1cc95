//! Journal configuration and the identity of the volume it belongs to.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::error::JournalError;
use crate::format::SEGMENT_HEADER_BYTES;
use crate::record::{MAX_RECORD_PAYLOAD_BYTES, RECORD_HEADER_BYTES};

/// What the journal's writer reports as it works, for metrics. Called on
/// the writer thread: an implementation must be quick and never block.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One group-commit batch was written: `records` records of `bytes`
    /// bytes in all (headers included).
    fn batch_written(&self, records: usize, bytes: u64);
    /// One fdatasync of a segment returned after `took` (failed or not).
    fn fdatasync(&self, took: Duration);
}

/// Journal tunables. Every limit carries its unit in its name.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// Size of each preallocated segment file.
    pub segment_bytes: u64,
    /// Disk space cap: live + spare segment files never exceed it.
    pub capacity_bytes: u64,
    /// A write batch (one pwritev) stops growing past this.
    pub max_batch_bytes: usize,
    /// How long the writer waits for a batch to fill; 0 = take what is queued.
    pub max_batch_wait: Duration,
    /// Dirty-bitmap granularity (power of two, ≥ 512). Fixed at creation.
    pub region_bytes: u64,
    /// In-memory cache of recent records for consumers.
    pub memory_cache_bytes: usize,
    /// Largest accepted payload; a segment must hold one such record.
    pub max_record_payload_bytes: usize,
    /// Appended but not yet written bytes; appends wait beyond this.
    pub max_pending_bytes: usize,
    /// How long the writer waits for space (checkpoint) before failing appends.
    pub full_wait_timeout: Duration,
    /// Space pressure is signalled once live segments use this many bytes.
    pub pressure_bytes: u64,
    /// Told of every batch and fdatasync (metrics); none by default.
    pub observer: Option<std::sync::Arc<dyn Observer>>,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let capacity_bytes = 1 << 30;
        JournalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            capacity_bytes,
            max_batch_bytes: 4 << 20,
            max_batch_wait: Duration::ZERO,
            region_bytes: 64 << 10,
            memory_cache_bytes: 64 << 20,
            max_record_payload_bytes: 32 << 20,
            max_pending_bytes: 64 << 20,
            full_wait_timeout: Duration::from_secs(30),
            pressure_bytes: capacity_bytes / 4 * 3,
            observer: None,
        }
    }

    pub(crate) fn max_segments(&self) -> u64 {
        self.capacity_bytes / self.segment_bytes
    }

    pub(crate) fn validate(&self) -> Result<(), JournalError> {
        let bad = |m: String| Err(JournalError::Config(m));
        if self.max_record_payload_bytes == 0
            || self.max_record_payload_bytes > MAX_RECORD_PAYLOAD_BYTES
        {
            return bad(format!(
                "max_record_payload_bytes must be in 1..={MAX_RECORD_PAYLOAD_BYTES}"
            ));
        }
        let min_seg =
            SEGMENT_HEADER_BYTES + (RECORD_HEADER_BYTES + self.max_record_payload_bytes) as u64;
        if self.segment_bytes < min_seg {
            return bad(format!(
                "segment_bytes {} must hold one maximal record (>= {min_seg})",
                self.segment_bytes
            ));
        }
        if self.max_segments() < 3 {
            return bad(format!(
                "capacity_bytes {} must hold at least 3 segments of {} bytes",
                self.capacity_bytes, self.segment_bytes
            ));
        }
        if !self.region_bytes.is_power_of_two() || self.region_bytes < 512 {
            return bad("region_bytes must be a power of two >= 512".into());
        }
        if self.max_pending_bytes < RECORD_HEADER_BYTES + self.max_record_payload_bytes
            || self.max_pending_bytes > u32::MAX as usize
        {
            return bad("max_pending_bytes must hold one maximal record and be < 4 GiB".into());
        }
        if self.max_batch_bytes == 0 {
            return bad("max_batch_bytes must be > 0".into());
        }
        Ok(())
    }
}

/// The volume the journal belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeIdentity {
    pub uuid: Uuid,
    pub size_bytes: u64,
}
