//! Opening a volume and its store, the one way `serve` and `run` do it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use journal::JournalConfig;
use store::{RecoveryReport, Store, StoreConfig};
use uuid::Uuid;
use volume::{EngineKind, Volume, VolumeOptions};

use crate::error::NodeError;

/// The journal signals space pressure (an early checkpoint) once its live
/// segments fill this share of its cap.
const PRESSURE_PERCENT: u64 = 75;

/// Room a segment keeps beyond its largest record (segment and record
/// headers, with margin).
const SEGMENT_SPARE_BYTES: u64 = 1 << 20;
/// The journal holds at least this many segments.
const MIN_SEGMENTS: u64 = 3;

/// What is wrong with a journal's size, segment size and largest write,
/// checked before anything is opened; callers name their own keys.
#[derive(Debug, PartialEq, Eq)]
pub enum JournalSizing {
    /// A segment must hold the largest record: at least this many bytes.
    SegmentTooSmall { min_segment_bytes: u64 },
    /// The journal must hold [`MIN_SEGMENTS`] segments: at least this many
    /// bytes.
    TooFewSegments { min_journal_bytes: u64 },
}

impl JournalSizing {
    pub fn check(
        journal_bytes: u64,
        segment_bytes: u64,
        max_write_bytes: u32,
    ) -> Result<(), JournalSizing> {
        let min_segment_bytes = u64::from(max_write_bytes) + SEGMENT_SPARE_BYTES;
        if segment_bytes < min_segment_bytes {
            return Err(JournalSizing::SegmentTooSmall { min_segment_bytes });
        }
        let min_journal_bytes = segment_bytes.saturating_mul(MIN_SEGMENTS);
        if journal_bytes < min_journal_bytes {
            return Err(JournalSizing::TooFewSegments { min_journal_bytes });
        }
        Ok(())
    }

    /// The problem in words, with the keys as the caller names them.
    pub fn describe(&self, journal_key: &str, segment_key: &str, max_write_key: &str) -> String {
        use crate::units::format_bytes;
        match self {
            JournalSizing::SegmentTooSmall { min_segment_bytes } => format!(
                "{segment_key} must be at least {} ({max_write_key} + 1MiB: a segment holds one maximal record)",
                format_bytes(*min_segment_bytes)
            ),
            JournalSizing::TooFewSegments { min_journal_bytes } => format!(
                "{journal_key} must be at least {} ({MIN_SEGMENTS} segments of {segment_key})",
                format_bytes(*min_journal_bytes)
            ),
        }
    }
}

/// One volume behind its journal, from `serve` arguments or a config's
/// `[[volume]]`.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    /// The volume's name in logs and errors.
    pub name: String,
    pub path: PathBuf,
    /// Required to create a file; must match an existing one.
    pub size_bytes: Option<u64>,
    pub engine: EngineKind,
    pub journal_dir: PathBuf,
    pub journal_size_bytes: u64,
    pub journal_segment_bytes: u64,
    pub max_batch_bytes: u64,
    pub max_batch_wait: Duration,
    pub checkpoint_interval: Duration,
    pub region_bytes: u64,
    /// The largest NBD WRITE accepted, and so the largest journal record.
    pub max_write_bytes: u32,
    /// The identity every node of the volume shares; `None` makes a new one
    /// when the journal is created (`serve`).
    pub volume_uuid: Option<Uuid>,
    /// Told of the journal's batches and fdatasyncs (metrics).
    pub journal_observer: Option<Arc<dyn journal::Observer>>,
}

impl StoreSpec {
    fn journal_config(&self) -> Result<JournalConfig, NodeError> {
        let mut j = JournalConfig::new(&self.journal_dir);
        j.capacity_bytes = self.journal_size_bytes;
        j.segment_bytes = self.journal_segment_bytes;
        j.max_batch_bytes = usize::try_from(self.max_batch_bytes)
            .map_err(|_| NodeError::Config("max batch bytes too large".into()))?;
        j.max_batch_wait = self.max_batch_wait;
        j.region_bytes = self.region_bytes;
        j.max_record_payload_bytes = self.max_write_bytes as usize;
        j.pressure_bytes = self.journal_size_bytes / 100 * PRESSURE_PERCENT;
        j.observer = self.journal_observer.clone();
        Ok(j)
    }
}

/// Opens (or creates, sparse) the backing file or device.
pub fn open_volume(spec: &StoreSpec, read_only: bool) -> Result<Volume, NodeError> {
    let opts = VolumeOptions {
        size_bytes: spec.size_bytes,
        engine: spec.engine,
        read_only,
        create: true,
    };
    let volume = Volume::open(&spec.path, opts).map_err(|cause| NodeError::Volume {
        volume: format!("{} ({})", spec.name, spec.path.display()),
        cause,
    })?;
    tracing::info!(
        volume = %spec.name,
        path = %spec.path.display(),
        size_bytes = volume.size_bytes(),
        engine = volume.engine_name(),
        read_only,
        "volume open"
    );
    Ok(volume)
}

/// Opens the journal beside `volume`, redoes it after its checkpoint and
/// starts the checkpointer; returns what recovery found too (a primary
/// acts on an unclean stop).
pub async fn open_store(
    spec: &StoreSpec,
    volume: Volume,
) -> Result<(Arc<Store>, RecoveryReport), NodeError> {
    let config = StoreConfig {
        journal: spec.journal_config()?,
        checkpoint_interval: spec.checkpoint_interval,
        volume_uuid: spec.volume_uuid,
        activity: Default::default(),
    };
    let (store, report) = Store::open(volume, config)
        .await
        .map_err(|cause| NodeError::Store {
            volume: format!("{} (journal {})", spec.name, spec.journal_dir.display()),
            cause,
        })?;
    tracing::info!(
        volume = %spec.name,
        journal = %spec.journal_dir.display(),
        volume_id = %store.volume_uuid(),
        checkpoint_lsn = report.checkpoint_lsn,
        redone_records = report.redone_records,
        dropped_tail_bytes = report.dropped_tail_bytes,
        created = report.created,
        unclean = report.activity.unclean,
        "journal recovered"
    );
    Ok((store, report))
}
