//! The journal: append path with group commit on a dedicated writer thread,
//! checkpoints and reclaim, consumers with folding into dirty bitmaps.
//!
//! Locks: `meta` (segments, superblock, consumers) may be taken before
//! `state` (queue and watermarks), never the other way round. `cache` and
//! `applied` are leaves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::bitmap::{load_bitmap, persist_bitmap, sync_dir, DirtyBitmap};
use crate::error::JournalError;
use crate::format::{
    ConsumerEntry, GenerationEntry, SegmentHeader, Superblock, MAX_CONSUMERS,
    MAX_CONSUMER_NAME_BYTES, MAX_LINEAGE_ENTRIES, SEGMENT_HEADER_BYTES, SUPERBLOCK_SLOT_BYTES,
};
use crate::record::{
    decode_record, encode_header, payload_crc, payload_digest, RecordError, RecordHeader,
    RecordKind, Salt, MAX_RECORD_PAYLOAD_BYTES, RECORD_HEADER_BYTES,
};
use crate::recovery::{scan, LogRecord, Recovery};
use crate::segment::{create_segment, pwritev_all, read_at_most, segment_path};
use crate::Lsn;

/// Where a sequential disk read stopped: (segment number, offset, LSN there).
type DiskPos = (u64, u64, Lsn);

/// By default a consumer waits this long for a durable record before asking
/// for a sync (see [`Consumer::set_sync_delay`]).
const DEFAULT_CONSUMER_SYNC_DELAY: Duration = Duration::from_millis(2);
/// A writer waiting for space re-signals space pressure this often.
const FULL_WAIT_POKE: Duration = Duration::from_millis(100);
/// Disk reads for consumers and folds use windows of at least this size.
const READ_WINDOW_BYTES: usize = 1 << 20;

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
        }
    }

    fn max_segments(&self) -> u64 {
        self.capacity_bytes / self.segment_bytes
    }

    fn validate(&self) -> Result<(), JournalError> {
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

/// A record to append.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub offset: u64,
    pub length: u64,
    /// Data for [`RecordKind::Write`], empty otherwise.
    pub payload: Bytes,
}

impl NewRecord {
    pub fn write(offset: u64, payload: Bytes) -> Self {
        NewRecord {
            kind: RecordKind::Write,
            offset,
            length: payload.len() as u64,
            payload,
        }
    }
    pub fn trim(offset: u64, length: u64) -> Self {
        NewRecord {
            kind: RecordKind::Trim,
            offset,
            length,
            payload: Bytes::new(),
        }
    }
    pub fn write_zeroes(offset: u64, length: u64) -> Self {
        NewRecord {
            kind: RecordKind::WriteZeroes,
            offset,
            length,
            payload: Bytes::new(),
        }
    }
    pub fn barrier() -> Self {
        NewRecord {
            kind: RecordKind::Barrier,
            offset: 0,
            length: 0,
            payload: Bytes::new(),
        }
    }
}

/// Counters for benchmarks and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub fdatasyncs: u64,
    pub sync_requests: u64,
    pub write_batches: u64,
    pub pwritev_calls: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub folds: u64,
    pub full_waits: u64,
    /// Live segment files (records still needed).
    pub used_bytes: u64,
    /// Live + spare segment files on disk.
    pub disk_bytes: u64,
    pub capacity_bytes: u64,
    pub cache_bytes: u64,
    pub written_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
}

/// What a consumer reads next.
#[derive(Debug)]
pub enum ReadBatch {
    /// Consecutive records starting at the consumer's position.
    Records(Vec<LogRecord>),
    /// The consumer fell too far behind: its pending records were folded
    /// into `bitmap` (a snapshot; regions to resend) and it resumes at
    /// `resume_lsn`.
    Folded {
        bitmap: DirtyBitmap,
        resume_lsn: Lsn,
    },
}

#[derive(Default)]
struct Counters {
    fdatasyncs: AtomicU64,
    sync_requests: AtomicU64,
    write_batches: AtomicU64,
    pwritev_calls: AtomicU64,
    records: AtomicU64,
    bytes_written: AtomicU64,
    folds: AtomicU64,
    full_waits: AtomicU64,
}

struct Pending {
    lsn: Lsn,
    generation: u64,
    kind: RecordKind,
    offset: u64,
    length: u64,
    timestamp_ns: u64,
    payload: Bytes,
    digest: [u8; 32],
    crc: crc32fast::Hasher,
    done: oneshot::Sender<Result<Lsn, JournalError>>,
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
    fn header(&self, synced_lsn: Lsn) -> RecordHeader {
        RecordHeader {
            lsn: self.lsn,
            generation: self.generation,
            kind: self.kind,
            synced_lsn,
            offset: self.offset,
            length: self.length,
            timestamp_ns: self.timestamp_ns,
            payload_len: self.payload.len() as u32,
            payload_blake3: self.digest,
        }
    }
}

type SyncWaiter = (Lsn, oneshot::Sender<Result<(), JournalError>>);

struct State {
    next_lsn: Lsn,
    generation: u64,
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    sync_waiters: Vec<SyncWaiter>,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    failed: Option<String>,
    writer_idle: bool,
    shutdown: bool,
}

impl State {
    fn failed_error(&self) -> Option<JournalError> {
        self.failed.as_ref().map(|r| JournalError::Failed {
            reason: r.clone(),
            durable_lsn: self.durable_lsn,
        })
    }
    fn sync_due(&self) -> bool {
        self.durable_lsn < self.written_lsn
            && self
                .sync_waiters
                .iter()
                .any(|(l, _)| *l <= self.written_lsn)
    }
}

#[derive(Clone)]
struct SegInfo {
    number: u64,
    first_lsn: Lsn,
    file: Arc<File>,
    path: PathBuf,
    salt: Salt,
}

struct ConsumerMeta {
    read_next: Lsn,
    acked_lsn: Lsn,
    folds: u64,
    fold_notice: Option<Lsn>,
    bitmap: DirtyBitmap,
    /// Every record up to here is marked in `bitmap` (in memory; persisted
    /// before the cursor moves past it). Once a consumer has dirty regions
    /// it needs a resync and is not read, so the writer marks new records
    /// as they are written and checkpoints release them without a fold.
    marked_upto: Lsn,
}

impl ConsumerMeta {
    fn tracking(&self) -> bool {
        !self.bitmap.is_empty()
    }
}

struct Meta {
    sb: Superblock,
    sb_file: File,
    sb_path: PathBuf,
    segments: VecDeque<SegInfo>,
    spares: Vec<u64>,
    next_segment: u64,
    consumers: BTreeMap<String, ConsumerMeta>,
}

impl Meta {
    /// Writes the next superblock copy into the other slot and syncs it.
    fn persist(&mut self) -> Result<(), JournalError> {
        self.sb.consumers = self
            .consumers
            .iter()
            .map(|(name, c)| ConsumerEntry {
                name: name.clone(),
                acked_lsn: c.acked_lsn,
                folds: c.folds,
            })
            .collect();
        self.sb.sequence += 1;
        let slot = (self.sb.sequence % 2) * SUPERBLOCK_SLOT_BYTES as u64;
        let bytes = self.sb.encode();
        let io = |e| JournalError::io("write superblock", &self.sb_path, e);
        self.sb_file.write_all_at(&bytes, slot).map_err(io)?;
        self.sb_file.sync_data().map_err(io)
    }

    fn live_bytes(&self, segment_bytes: u64) -> u64 {
        self.segments.len() as u64 * segment_bytes
    }

    /// First LSN anyone still needs.
    fn keep_from(&self) -> Lsn {
        self.consumers
            .values()
            .map(|c| c.acked_lsn + 1)
            .fold(self.sb.checkpoint_lsn + 1, Lsn::min)
    }
}

#[derive(Default)]
struct Cache {
    records: VecDeque<LogRecord>,
    bytes: usize,
}

#[derive(Default)]
struct Applied {
    watermark: Lsn,
    above: BTreeSet<Lsn>,
}

struct Inner {
    cfg: JournalConfig,
    volume: VolumeIdentity,
    state: Mutex<State>,
    writer_cv: Condvar,
    meta: Mutex<Meta>,
    space_cv: Condvar,
    written_tx: watch::Sender<Lsn>,
    durable_tx: watch::Sender<Lsn>,
    pressure_tx: watch::Sender<bool>,
    pending: Arc<Semaphore>,
    cache: Mutex<Cache>,
    applied: Mutex<Applied>,
    counters: Counters,
    fail_next_sync: AtomicBool,
    /// Some consumer needs a resync (see `ConsumerMeta::marked_upto`): the
    /// writer marks what it writes. Saves the metadata lock otherwise.
    tracking: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a journal lock is a bug; propagate it.
    m.lock().expect("journal lock poisoned")
}

/// The first generation of a volume is derived from its UUID, so every node
/// created for the same volume starts with the same lineage.
pub fn initial_generation_id(volume: Uuid) -> u64 {
    let b = volume.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn random_u64() -> u64 {
    Uuid::new_v4().as_u64_pair().0
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The write-ahead journal of one volume. `Send + Sync`; share it via `Arc`.
pub struct Journal {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

/// A registered reader of the journal (a replication peer).
pub struct Consumer {
    inner: Arc<Inner>,
    name: String,
    /// Where the last disk read stopped: (segment, offset, LSN at offset).
    disk_pos: Option<DiskPos>,
    /// Also read records that are written but not yet durable (sync peers).
    read_written: bool,
    /// How long to wait for someone else's sync before asking for one.
    sync_delay: Duration,
}

/// A replica append admitted to the journal's queue; resolves once written.
#[derive(Debug)]
pub struct AppendHandle {
    rx: oneshot::Receiver<Result<Lsn, JournalError>>,
}

impl AppendHandle {
    /// Waits until the record is written (page cache), like [`Journal::append`].
    pub async fn written(self) -> Result<Lsn, JournalError> {
        self.rx.await.map_err(|_| JournalError::Shutdown)?
    }
}

struct CurrentSeg {
    info: SegInfo,
    offset: u64,
    unsynced: bool,
}

fn load_superblock(path: &std::path::Path) -> Result<(Superblock, File), JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("open superblock", path, e))?;
    let mut best: Option<Superblock> = None;
    for slot in 0..2u64 {
        let mut buf = vec![0u8; SUPERBLOCK_SLOT_BYTES];
        let n = read_at_most(&file, path, &mut buf, slot * SUPERBLOCK_SLOT_BYTES as u64)?;
        buf.truncate(n);
        if let Ok(sb) = Superblock::decode(&buf) {
            if best.as_ref().is_none_or(|b| sb.sequence > b.sequence) {
                best = Some(sb);
            }
        }
    }
    let sb = best.ok_or_else(|| JournalError::CorruptMetadata {
        path: path.to_owned(),
        reason: "neither superblock copy is valid".into(),
    })?;
    Ok((sb, file))
}

fn create_superblock(
    cfg: &JournalConfig,
    volume: VolumeIdentity,
    path: &std::path::Path,
) -> Result<(), JournalError> {
    let sb = Superblock {
        sequence: 1,
        volume: volume.uuid,
        volume_size_bytes: volume.size_bytes,
        region_bytes: cfg.region_bytes,
        checkpoint_lsn: 0,
        first_live_segment: 0,
        lineage: vec![GenerationEntry {
            id: initial_generation_id(volume.uuid),
            start_lsn: 1,
        }],
        consumers: Vec::new(),
    };
    let tmp = cfg.dir.join("superblock.tmp");
    let io = |e| JournalError::io("create superblock", &tmp, e);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    let mut bytes = vec![0u8; SUPERBLOCK_SLOT_BYTES];
    bytes.extend_from_slice(&sb.encode());
    f.write_all_at(&bytes, 0).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| JournalError::io("create superblock", path, e))?;
    sync_dir(&cfg.dir)
}

impl Journal {
    /// Opens (or creates, when the directory has no journal) the journal of
    /// `volume`, scanning and validating it. Redo every record of the
    /// returned [`Recovery`] onto the volume before serving I/O.
    pub fn open(
        cfg: JournalConfig,
        volume: VolumeIdentity,
    ) -> Result<(Journal, Recovery), JournalError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| JournalError::io("create journal dir", &cfg.dir, e))?;
        let sb_path = cfg.dir.join("superblock");
        if !sb_path.exists() {
            if !crate::segment::list_segments(&cfg.dir)?.is_empty() {
                return Err(JournalError::CorruptMetadata {
                    path: sb_path,
                    reason: "segment files exist but the superblock is missing".into(),
                });
            }
            create_superblock(&cfg, volume, &sb_path)?;
        }
        let (sb, sb_file) = load_superblock(&sb_path)?;
        if sb.volume != volume.uuid {
            return Err(JournalError::VolumeMismatch {
                path: cfg.dir.clone(),
                found: sb.volume,
                expected: volume.uuid,
            });
        }
        if sb.volume_size_bytes != volume.size_bytes {
            return Err(JournalError::Config(format!(
                "volume size changed from {} to {} bytes; the journal cannot follow a resize",
                sb.volume_size_bytes, volume.size_bytes
            )));
        }
        let mut cfg = cfg;
        if sb.region_bytes != cfg.region_bytes {
            tracing::warn!(
                configured = cfg.region_bytes,
                on_disk = sb.region_bytes,
                "region_bytes is fixed at journal creation; using the on-disk value"
            );
            cfg.region_bytes = sb.region_bytes;
        }

        let outcome = scan(&cfg.dir, volume.uuid, &sb)?;
        let last_lsn = outcome.last_lsn;
        let checkpoint = sb.checkpoint_lsn;
        let recovery = Recovery::new(&outcome.live, checkpoint, last_lsn, outcome.dropped_bytes);

        let mut consumers = BTreeMap::new();
        let oldest = outcome
            .live
            .first()
            .map(|s| s.header.first_lsn)
            .unwrap_or(last_lsn + 1);
        for c in &sb.consumers {
            let mut bitmap = load_bitmap(
                &cfg.dir,
                &c.name,
                volume.uuid,
                volume.size_bytes,
                cfg.region_bytes,
            )?;
            let mut meta = ConsumerMeta {
                read_next: c.acked_lsn + 1,
                acked_lsn: c.acked_lsn,
                folds: c.folds,
                fold_notice: None,
                bitmap: bitmap.clone(),
                marked_upto: c.acked_lsn,
            };
            if c.acked_lsn + 1 < oldest {
                // Records it needs are gone (should not happen): unknown history.
                tracing::error!(consumer = %c.name, "consumer cursor predates the journal; marking the whole volume dirty");
                bitmap.mark(0, volume.size_bytes);
                persist_bitmap(&cfg.dir, &c.name, volume.uuid, &bitmap)?;
                meta.bitmap = bitmap;
                meta.acked_lsn = last_lsn;
                meta.read_next = last_lsn + 1;
                meta.fold_notice = Some(last_lsn + 1);
                meta.marked_upto = last_lsn;
            }
            consumers.insert(c.name.clone(), meta);
        }

        let max_seen = outcome
            .live
            .iter()
            .map(|s| s.number)
            .chain(outcome.spares.iter().copied())
            .max();
        let mut spares = outcome.spares;
        // Never keep more files than the cap allows (capacity may have shrunk).
        while spares.len() as u64 + outcome.live.len() as u64 > cfg.max_segments() {
            let Some(n) = spares.pop() else { break };
            let p = segment_path(&cfg.dir, n);
            std::fs::remove_file(&p)
                .map_err(|e| JournalError::io("remove spare segment", &p, e))?;
        }
        let segments: VecDeque<SegInfo> = outcome
            .live
            .iter()
            .map(|s| SegInfo {
                number: s.number,
                first_lsn: s.header.first_lsn,
                file: s.file.clone(),
                path: s.path.clone(),
                salt: s.salt,
            })
            .collect();
        let current = outcome.live.last().map(|s| CurrentSeg {
            info: segments.back().expect("live segment").clone(),
            offset: s.end_offset,
            unsynced: false,
        });
        let generation = sb.lineage.last().map(|g| g.id).unwrap_or(0);
        let mut meta = Meta {
            sb,
            sb_file,
            sb_path,
            segments,
            spares,
            next_segment: max_seen.map_or(0, |n| n + 1),
            consumers,
        };
        if meta.consumers.values().any(|c| c.fold_notice.is_some()) {
            meta.persist()?;
        }
        let durable = last_lsn.max(checkpoint);
        let inner = Arc::new(Inner {
            pending: Arc::new(Semaphore::new(cfg.max_pending_bytes)),
            state: Mutex::new(State {
                next_lsn: durable + 1,
                generation,
                queue: VecDeque::new(),
                queued_bytes: 0,
                sync_waiters: Vec::new(),
                written_lsn: durable,
                durable_lsn: durable,
                failed: None,
                writer_idle: false,
                shutdown: false,
            }),
            writer_cv: Condvar::new(),
            space_cv: Condvar::new(),
            written_tx: watch::Sender::new(durable),
            durable_tx: watch::Sender::new(durable),
            pressure_tx: watch::Sender::new(
                meta.live_bytes(cfg.segment_bytes) >= cfg.pressure_bytes,
            ),
            tracking: AtomicBool::new(meta.consumers.values().any(|c| c.tracking())),
            meta: Mutex::new(meta),
            cache: Mutex::new(Cache::default()),
            applied: Mutex::new(Applied {
                watermark: checkpoint,
                above: BTreeSet::new(),
            }),
            counters: Counters::default(),
            fail_next_sync: AtomicBool::new(false),
            cfg,
            volume,
        });
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_main(w, current))
            .map_err(|e| JournalError::io("spawn writer thread", &inner.cfg.dir, e))?;
        tracing::info!(checkpoint_lsn = checkpoint, last_lsn, "journal opened");
        Ok((
            Journal {
                inner,
                writer: Some(writer),
            },
            recovery,
        ))
    }

    /// Appends a record; resolves with its LSN once it is written (page
    /// cache), in LSN order. Call [`Journal::sync`] for durability.
    pub async fn append(&self, rec: NewRecord) -> Result<Lsn, JournalError> {
        self.admit(rec, None).await?.written().await
    }

    /// Appends a record received from the primary at the primary's LSN and
    /// generation. `lsn` must be the next LSN (no gap, no overlap) and
    /// `generation` the current one (see [`Journal::adopt_generation`]).
    /// Resolves once the record is queued, so a receiver can admit a whole
    /// batch in order and then wait for the handles (one write batch).
    /// `payload_blake3` is the digest the primary's journal stored, which the
    /// caller has already checked against the payload: it is not hashed twice.
    pub async fn append_replica(
        &self,
        lsn: Lsn,
        generation: u64,
        rec: NewRecord,
        payload_blake3: [u8; 32],
    ) -> Result<AppendHandle, JournalError> {
        debug_assert_eq!(payload_digest(&rec.payload), payload_blake3);
        self.admit(rec, Some((lsn, generation, payload_blake3)))
            .await
    }

    async fn admit(
        &self,
        rec: NewRecord,
        replica: Option<(Lsn, u64, [u8; 32])>,
    ) -> Result<AppendHandle, JournalError> {
        let inner = &self.inner;
        let payload_len = rec.payload.len();
        let expect_payload = if rec.kind == RecordKind::Write {
            rec.length
        } else {
            0
        };
        if payload_len as u64 != expect_payload {
            return Err(JournalError::InvalidRequest(format!(
                "{:?} record of length {} carries {} payload bytes",
                rec.kind, rec.length, payload_len
            )));
        }
        if payload_len > inner.cfg.max_record_payload_bytes {
            return Err(JournalError::InvalidRequest(format!(
                "payload of {payload_len} bytes exceeds max_record_payload_bytes {}",
                inner.cfg.max_record_payload_bytes
            )));
        }
        if rec
            .offset
            .checked_add(rec.length)
            .is_none_or(|end| end > inner.volume.size_bytes)
        {
            return Err(JournalError::InvalidRequest(format!(
                "extent {}+{} is beyond the volume ({} bytes)",
                rec.offset, rec.length, inner.volume.size_bytes
            )));
        }
        let size = RECORD_HEADER_BYTES + payload_len;
        let permit = inner
            .pending
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| JournalError::Shutdown)?;
        let digest = match replica {
            Some((_, _, digest)) => digest,
            None => payload_digest(&rec.payload),
        };
        let crc = payload_crc(&rec.payload);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&inner.state);
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            if st.shutdown {
                return Err(JournalError::Shutdown);
            }
            let lsn = st.next_lsn;
            if let Some((want_lsn, want_generation, _)) = replica {
                if want_lsn != lsn {
                    return Err(JournalError::InvalidRequest(format!(
                        "replica record LSN {want_lsn} does not continue the journal (next LSN {lsn})"
                    )));
                }
                if want_generation != st.generation {
                    return Err(JournalError::InvalidRequest(format!(
                        "replica record LSN {lsn} has generation {want_generation}, the journal is in generation {}",
                        st.generation
                    )));
                }
            }
            st.next_lsn += 1;
            let generation = st.generation;
            st.queue.push_back(Pending {
                lsn,
                generation,
                kind: rec.kind,
                offset: rec.offset,
                length: rec.length,
                timestamp_ns: now_ns(),
                payload: rec.payload,
                digest,
                crc,
                done: tx,
                _permit: permit,
            });
            st.queued_bytes += size;
            if st.writer_idle {
                inner.writer_cv.notify_one();
            }
        }
        Ok(AppendHandle { rx })
    }

    /// Resolves once every record up to `lsn` is durable. Concurrent calls
    /// share one fdatasync (group commit).
    pub async fn sync(&self, lsn: Lsn) -> Result<(), JournalError> {
        sync_inner(&self.inner, lsn).await
    }

    pub fn written_lsn(&self) -> Lsn {
        *self.inner.written_tx.borrow()
    }

    pub fn durable_lsn(&self) -> Lsn {
        *self.inner.durable_tx.borrow()
    }

    /// Watch of the durable watermark (for replication acks).
    pub fn durable_watch(&self) -> watch::Receiver<Lsn> {
        self.inner.durable_tx.subscribe()
    }

    /// The caller's volume write for `lsn` completed; order does not matter.
    pub fn mark_applied(&self, lsn: Lsn) {
        let written = self.written_lsn();
        debug_assert!(
            lsn <= written,
            "applied LSN {lsn} not written yet ({written})"
        );
        let mut a = lock(&self.inner.applied);
        if lsn <= a.watermark {
            return;
        }
        a.above.insert(lsn);
        loop {
            let next = a.watermark + 1;
            if !a.above.remove(&next) {
                break;
            }
            a.watermark = next;
        }
    }

    /// Highest LSN such that every volume write up to it completed.
    pub fn applied_lsn(&self) -> Lsn {
        lock(&self.inner.applied).watermark
    }

    pub fn checkpoint_lsn(&self) -> Lsn {
        lock(&self.inner.meta).sb.checkpoint_lsn
    }

    /// The volume is durable (fsynced) up to `lsn`: persist that and reclaim
    /// segments nobody needs. `lsn` must not exceed [`Journal::applied_lsn`].
    pub async fn checkpoint(&self, lsn: Lsn) -> Result<(), JournalError> {
        let applied = self.applied_lsn();
        if lsn > applied {
            return Err(JournalError::InvalidRequest(format!(
                "checkpoint LSN {lsn} is beyond the applied LSN {applied}"
            )));
        }
        // The next LSN after a crash must stay above the checkpoint.
        self.sync(lsn).await?;
        let inner = self.inner.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if lsn > meta.sb.checkpoint_lsn {
                meta.sb.checkpoint_lsn = lsn;
            }
            inner.reclaim_locked(&mut meta, true)?;
            // A writer waiting for space may now fold a consumer that holds
            // the oldest segment (see `fold_and_reclaim`).
            inner.space_cv.notify_all();
            Ok(())
        })
        .await
    }

    /// `true` while live segments pass `pressure_bytes` or the writer waits
    /// for space: the owner should checkpoint.
    pub fn space_pressure(&self) -> watch::Receiver<bool> {
        self.inner.pressure_tx.subscribe()
    }

    pub fn stats(&self) -> JournalStats {
        let c = &self.inner.counters;
        let (used, disk, checkpoint) = {
            let m = lock(&self.inner.meta);
            let seg = self.inner.cfg.segment_bytes;
            (
                m.live_bytes(seg),
                (m.segments.len() + m.spares.len()) as u64 * seg,
                m.sb.checkpoint_lsn,
            )
        };
        JournalStats {
            fdatasyncs: c.fdatasyncs.load(Ordering::Relaxed),
            sync_requests: c.sync_requests.load(Ordering::Relaxed),
            write_batches: c.write_batches.load(Ordering::Relaxed),
            pwritev_calls: c.pwritev_calls.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            folds: c.folds.load(Ordering::Relaxed),
            full_waits: c.full_waits.load(Ordering::Relaxed),
            used_bytes: used,
            disk_bytes: disk,
            capacity_bytes: self.inner.cfg.capacity_bytes,
            cache_bytes: lock(&self.inner.cache).bytes as u64,
            written_lsn: self.written_lsn(),
            durable_lsn: self.durable_lsn(),
            applied_lsn: self.applied_lsn(),
            checkpoint_lsn: checkpoint,
        }
    }

    /// Current generation id (the last lineage entry).
    pub fn generation(&self) -> u64 {
        lock(&self.inner.state).generation
    }

    /// The generation lineage: (generation id, first LSN), oldest first.
    pub fn lineage(&self) -> Vec<(u64, Lsn)> {
        lock(&self.inner.meta)
            .sb
            .lineage
            .iter()
            .map(|g| (g.id, g.start_lsn))
            .collect()
    }

    /// Starts generation `id` at the next LSN (on promote); persisted before
    /// any record carries it. Returns its start LSN.
    pub async fn start_generation(&self, id: u64) -> Result<Lsn, JournalError> {
        self.push_generation(id, None).await
    }

    /// A replica takes over generation `id` of its primary, which began at
    /// `start_lsn`: only valid when that is exactly the next LSN.
    pub async fn adopt_generation(&self, id: u64, start_lsn: Lsn) -> Result<(), JournalError> {
        self.push_generation(id, Some(start_lsn)).await.map(|_| ())
    }

    async fn push_generation(&self, id: u64, expect: Option<Lsn>) -> Result<Lsn, JournalError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.sb.lineage.len() >= MAX_LINEAGE_ENTRIES {
                return Err(JournalError::InvalidRequest(format!(
                    "lineage already holds {MAX_LINEAGE_ENTRIES} generations"
                )));
            }
            if meta.sb.lineage.iter().any(|g| g.id == id) {
                return Err(JournalError::InvalidRequest(format!(
                    "generation {id} already in the lineage"
                )));
            }
            // Hold the append lock while persisting so no record slips in
            // between the chosen start LSN and the new generation.
            let mut st = lock(&inner.state);
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            let start = st.next_lsn;
            if expect.is_some_and(|e| e != start) {
                return Err(JournalError::InvalidRequest(format!(
                    "generation {id} starts at LSN {expect:?} but the next LSN is {start}"
                )));
            }
            meta.sb.lineage.push(GenerationEntry {
                id,
                start_lsn: start,
            });
            if let Err(e) = meta.persist() {
                meta.sb.lineage.pop();
                return Err(e);
            }
            st.generation = id;
            Ok(start)
        })
        .await
    }

    /// Registers (or reopens) consumer `name`. A new consumer starts at
    /// `from_lsn`, which must still be in the journal; an existing one
    /// resumes after its persisted ack (or at `from_lsn` if that is later).
    pub async fn register_consumer(
        &self,
        name: &str,
        from_lsn: Lsn,
    ) -> Result<Consumer, JournalError> {
        if !valid_consumer_name(name) {
            return Err(JournalError::InvalidRequest(format!(
                "consumer name {name:?} must be 1..={MAX_CONSUMER_NAME_BYTES} bytes of [A-Za-z0-9._-]"
            )));
        }
        let inner = self.inner.clone();
        let owned = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let written = *inner.written_tx.borrow();
            let oldest = meta.segments.front().map_or(written + 1, |s| s.first_lsn);
            if let Some(c) = meta.consumers.get_mut(&owned) {
                if from_lsn > c.acked_lsn + 1 {
                    c.acked_lsn = from_lsn - 1;
                    c.read_next = from_lsn;
                    meta.persist()?;
                }
            } else {
                if meta.consumers.len() >= MAX_CONSUMERS {
                    return Err(JournalError::InvalidRequest(format!(
                        "at most {MAX_CONSUMERS} consumers"
                    )));
                }
                if from_lsn < oldest.max(1) || from_lsn > written + 1 {
                    return Err(JournalError::InvalidRequest(format!(
                        "from_lsn {from_lsn} is outside the journal ({oldest}..={})",
                        written + 1
                    )));
                }
                let bitmap = load_bitmap(
                    &inner.cfg.dir,
                    &owned,
                    inner.volume.uuid,
                    inner.volume.size_bytes,
                    inner.cfg.region_bytes,
                )?;
                meta.consumers.insert(
                    owned.clone(),
                    ConsumerMeta {
                        read_next: from_lsn,
                        acked_lsn: from_lsn - 1,
                        folds: 0,
                        fold_notice: None,
                        bitmap,
                        marked_upto: from_lsn - 1,
                    },
                );
                meta.persist()?;
            }
            Ok(Consumer {
                inner: inner.clone(),
                name: owned,
                disk_pos: None,
                read_written: false,
                sync_delay: DEFAULT_CONSUMER_SYNC_DELAY,
            })
        })
        .await
    }

    /// The LSN the next append gets (records queued but not yet written
    /// count as taken).
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.inner.state).next_lsn
    }

    /// Dirty-bitmap region size (fixed at creation).
    pub fn region_bytes(&self) -> u64 {
        self.inner.cfg.region_bytes
    }

    /// First LSN the journal still holds (written LSN + 1 when empty).
    pub fn oldest_lsn(&self) -> Lsn {
        let meta = lock(&self.inner.meta);
        let written = *self.inner.written_tx.borrow();
        meta.segments.front().map_or(written + 1, |s| s.first_lsn)
    }

    /// [`Consumer::ack`] by name, for code that does not own the consumer.
    pub fn ack_consumer(&self, name: &str, lsn: Lsn) {
        let mut meta = lock(&self.inner.meta);
        if let Some(c) = meta.consumers.get_mut(name) {
            c.acked_lsn = c.acked_lsn.max(lsn.min(c.read_next.saturating_sub(1)));
        }
    }

    /// Forgets a consumer and its bitmap; its retention no longer counts.
    pub async fn unregister_consumer(&self, name: &str) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.consumers.remove(&name).is_none() {
                return Err(JournalError::UnknownConsumer(name));
            }
            meta.persist()?;
            let p = crate::bitmap::bitmap_path(&inner.cfg.dir, &name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError::io("remove bitmap", &p, e)),
            }
            inner.reclaim_locked(&mut meta, false)?;
            Ok(())
        })
        .await
    }

    /// Snapshot of a consumer's dirty-region bitmap.
    pub fn consumer_bitmap(&self, name: &str) -> Result<DirtyBitmap, JournalError> {
        lock(&self.inner.meta)
            .consumers
            .get(name)
            .map(|c| c.bitmap.clone())
            .ok_or_else(|| JournalError::UnknownConsumer(name.to_owned()))
    }

    /// Clears regions the replication engine has resent, durably.
    pub async fn clear_consumer_regions(
        &self,
        name: &str,
        regions: Vec<u64>,
    ) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            let c = meta
                .consumers
                .get_mut(&name)
                .ok_or_else(|| JournalError::UnknownConsumer(name.clone()))?;
            for r in regions {
                c.bitmap.clear(r);
            }
            persist_bitmap(&inner.cfg.dir, &name, inner.volume.uuid, &c.bitmap)?;
            let tracking = meta.consumers.values().any(|c| c.tracking());
            inner.tracking.store(tracking, Ordering::SeqCst);
            Ok(())
        })
        .await
    }

    #[cfg(test)]
    pub(crate) fn inject_sync_failure(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn segment_files(&self) -> Vec<PathBuf> {
        lock(&self.inner.meta)
            .segments
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.inner.state);
            st.shutdown = true;
            self.inner.writer_cv.notify_all();
        }
        {
            // Under the lock, so a writer waiting for space cannot miss it.
            let _meta = lock(&self.inner.meta);
            self.inner.space_cv.notify_all();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.inner.pending.close();
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JournalError::InvalidRequest(format!("blocking task failed: {e}")))?
}

async fn sync_inner(inner: &Arc<Inner>, lsn: Lsn) -> Result<(), JournalError> {
    inner.counters.sync_requests.fetch_add(1, Ordering::Relaxed);
    let rx = {
        let mut st = lock(&inner.state);
        if let Some(e) = st.failed_error() {
            return Err(e);
        }
        if lsn <= st.durable_lsn {
            return Ok(());
        }
        if lsn >= st.next_lsn {
            return Err(JournalError::InvalidRequest(format!(
                "sync of LSN {lsn} beyond the last assigned LSN {}",
                st.next_lsn - 1
            )));
        }
        if st.shutdown {
            return Err(JournalError::Shutdown);
        }
        let (tx, rx) = oneshot::channel();
        st.sync_waiters.push((lsn, tx));
        if st.writer_idle {
            inner.writer_cv.notify_one();
        }
        rx
    };
    rx.await.map_err(|_| JournalError::Shutdown)?
}

impl Inner {
    /// Every record up to `lsn` is on disk: wake the syncs it satisfies.
    fn publish_durable(&self, lsn: Lsn) {
        let mut st = lock(&self.state);
        if lsn <= st.durable_lsn {
            return;
        }
        st.durable_lsn = lsn;
        self.durable_tx.send_replace(lsn);
        let (done, keep): (Vec<_>, Vec<_>) =
            st.sync_waiters.drain(..).partition(|(l, _)| *l <= lsn);
        st.sync_waiters = keep;
        drop(st);
        for (_, w) in done {
            let _ = w.send(Ok(()));
        }
    }

    /// Marks just-written records in the bitmap of every consumer that needs
    /// a resync and has everything before them marked.
    fn mark_for_resync(&self, written: &[Pending]) {
        let (Some(first), Some(last)) = (written.first(), written.last()) else {
            return;
        };
        let mut meta = lock(&self.meta);
        for c in meta.consumers.values_mut() {
            if !c.tracking() || c.marked_upto + 1 < first.lsn || c.marked_upto >= last.lsn {
                continue;
            }
            for p in written.iter().filter(|p| p.lsn > c.marked_upto) {
                if p.kind != RecordKind::Barrier {
                    c.bitmap.mark(p.offset, p.length);
                }
            }
            c.marked_upto = last.lsn;
        }
    }

    /// Consumers that need a resync hold no journal space for what is already
    /// marked: their bitmap is made durable, then their cursor moves past it.
    /// Returns whether a cursor moved (the superblock must be persisted).
    fn release_marked(&self, meta: &mut Meta) -> Result<bool, JournalError> {
        let mut moved = false;
        for (name, c) in meta.consumers.iter_mut() {
            if c.tracking() && c.acked_lsn < c.marked_upto {
                persist_bitmap(&self.cfg.dir, name, self.volume.uuid, &c.bitmap)?;
                c.acked_lsn = c.marked_upto;
                c.read_next = c.read_next.max(c.marked_upto + 1);
                moved = true;
            }
        }
        Ok(moved)
    }

    fn set_pressure(&self, meta: &Meta, waiting: bool) {
        let p = waiting || meta.live_bytes(self.cfg.segment_bytes) >= self.cfg.pressure_bytes;
        self.pressure_tx
            .send_if_modified(|v| std::mem::replace(v, p) != p);
    }

    /// Moves segments nobody needs to the spare pool. The superblock (new
    /// first live segment, consumer cursors) is durable before any file is
    /// reused.
    fn reclaim_locked(&self, meta: &mut Meta, always_persist: bool) -> Result<bool, JournalError> {
        let always_persist = self.release_marked(meta)? || always_persist;
        let keep_from = meta.keep_from();
        let mut n = 0;
        while n + 1 < meta.segments.len() && meta.segments[n + 1].first_lsn <= keep_from {
            n += 1;
        }
        if n > 0 {
            meta.sb.first_live_segment = meta.segments[n].number;
        }
        if n > 0 || always_persist {
            meta.persist()?;
        }
        for _ in 0..n {
            let s = meta.segments.pop_front().expect("counted above");
            meta.spares.push(s.number);
        }
        meta.spares.sort_unstable();
        self.set_pressure(meta, false);
        if n > 0 {
            self.space_cv.notify_all();
        }
        Ok(n > 0)
    }

    /// Frees space when the checkpoint allows it but consumers hold the
    /// oldest segment: those consumers are folded so the writer never waits
    /// for them.
    fn fold_and_reclaim(&self, meta: &mut Meta, written: Lsn) -> Result<bool, JournalError> {
        if meta.segments.len() < 2 || meta.segments[1].first_lsn > meta.sb.checkpoint_lsn + 1 {
            return Ok(false);
        }
        let oldest_end = meta.segments[1].first_lsn;
        let holders: Vec<String> = meta
            .consumers
            .iter()
            .filter(|(_, c)| c.acked_lsn + 1 < oldest_end)
            .map(|(n, _)| n.clone())
            .collect();
        for name in holders {
            self.fold_consumer(meta, &name, written)?;
        }
        self.reclaim_locked(meta, false)
    }

    /// Marks every pending record of `name` (acked+1..=upto) in its bitmap,
    /// makes the bitmap durable, then jumps its cursor to `upto + 1`.
    fn fold_consumer(&self, meta: &mut Meta, name: &str, upto: Lsn) -> Result<(), JournalError> {
        let from = meta.consumers[name].acked_lsn + 1;
        // Records already marked at append time need no reading back.
        let scan_from = from.max(meta.consumers[name].marked_upto + 1);
        let segs: Vec<SegInfo> = meta.segments.iter().cloned().collect();
        let mut bitmap = meta.consumers[name].bitmap.clone();
        let mut marked = 0u64;
        if scan_from <= upto {
            let mut lsn = scan_from;
            // Recent records come from the cache, older ones from disk.
            let cache_front = lock(&self.cache).records.front().map(|r| r.header.lsn);
            if cache_front.is_none_or(|f| f > scan_from) {
                let disk_upto = cache_front.map_or(upto, |f| (f - 1).min(upto));
                let mut pos = None;
                while lsn <= disk_upto {
                    let (recs, p) = read_records(&segs, pos, lsn, disk_upto, usize::MAX / 2, true)?;
                    pos = p;
                    for r in &recs {
                        mark_record(&mut bitmap, &r.header);
                        marked += 1;
                    }
                    lsn = recs.last().map_or(disk_upto + 1, |r| r.header.lsn + 1);
                }
            }
            let cache = lock(&self.cache);
            for r in cache
                .records
                .iter()
                .filter(|r| r.header.lsn >= lsn && r.header.lsn <= upto)
            {
                mark_record(&mut bitmap, &r.header);
                marked += 1;
            }
        }
        persist_bitmap(&self.cfg.dir, name, self.volume.uuid, &bitmap)?;
        let c = meta.consumers.get_mut(name).expect("consumer exists");
        c.bitmap = bitmap;
        c.marked_upto = c.marked_upto.max(upto);
        c.acked_lsn = c.acked_lsn.max(upto);
        c.read_next = upto + 1;
        c.folds += 1;
        c.fold_notice = Some(upto + 1);
        if c.tracking() {
            self.tracking.store(true, Ordering::SeqCst);
        }
        self.counters.folds.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            consumer = name,
            from_lsn = from,
            to_lsn = upto,
            records = marked,
            dirty_regions = c.bitmap.count(),
            "consumer held journal space past the cap; folded into its dirty bitmap"
        );
        Ok(())
    }

    /// Gets a segment for records starting at `first_lsn`, waiting (bounded)
    /// for a checkpoint when the journal is full.
    fn acquire_segment(&self, first_lsn: Lsn, written: Lsn) -> Result<SegInfo, JournalError> {
        let started = Instant::now();
        let deadline = started + self.cfg.full_wait_timeout;
        let mut meta = lock(&self.meta);
        let mut counted_wait = false;
        loop {
            let total = (meta.segments.len() + meta.spares.len()) as u64;
            let spare = if !meta.spares.is_empty() {
                Some(meta.spares.remove(0))
            } else if total < self.cfg.max_segments() {
                None
            } else {
                if self.fold_and_reclaim(&mut meta, written)? {
                    continue;
                }
                // Forced, not only on a change: pressure may already be set
                // (a consumer holding space keeps it set), and the owner's
                // checkpointer must run again for this wait.
                self.pressure_tx.send_replace(true);
                if !counted_wait {
                    counted_wait = true;
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("journal full: waiting for a checkpoint");
                }
                let now = Instant::now();
                if now >= deadline || lock(&self.state).shutdown {
                    return Err(JournalError::Full {
                        waited: now - started,
                        capacity_bytes: self.cfg.capacity_bytes,
                        checkpoint_lsn: meta.sb.checkpoint_lsn,
                    });
                }
                // Poke the checkpointer again now and then: a checkpoint that
                // found nothing new applied frees nothing and wakes no one.
                meta = self
                    .space_cv
                    .wait_timeout(meta, (deadline - now).min(FULL_WAIT_POKE))
                    .expect("journal lock poisoned")
                    .0;
                continue;
            };
            let number = meta.next_segment;
            meta.next_segment += 1;
            let header = SegmentHeader {
                volume: self.volume.uuid,
                segment: number,
                first_lsn,
                incarnation: random_u64(),
                segment_bytes: self.cfg.segment_bytes,
            };
            let file = create_segment(&self.cfg.dir, &header, spare)?;
            self.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
            let info = SegInfo {
                number,
                first_lsn,
                file: Arc::new(file),
                path: segment_path(&self.cfg.dir, number),
                salt: header.salt(),
            };
            meta.segments.push_back(info.clone());
            self.set_pressure(&meta, false);
            return Ok(info);
        }
    }

    fn fail(&self, st: &mut State, reason: String) {
        tracing::error!(%reason, durable_lsn = st.durable_lsn, "journal entered the failed state");
        st.failed.get_or_insert(reason);
        let err = st.failed_error().expect("just set");
        for p in st.queue.drain(..) {
            let _ = p.done.send(Err(err.share()));
        }
        st.queued_bytes = 0;
        for (_, w) in st.sync_waiters.drain(..) {
            let _ = w.send(Err(err.share()));
        }
    }
}

fn mark_record(bitmap: &mut DirtyBitmap, h: &RecordHeader) {
    if h.kind != RecordKind::Barrier {
        bitmap.mark(h.offset, h.length);
    }
}

/// Reads consecutive records `next..=upto` (at least one, then up to
/// `max_bytes`) from the segment files. `pos` resumes a previous read.
fn read_records(
    segs: &[SegInfo],
    pos: Option<DiskPos>,
    next: Lsn,
    upto: Lsn,
    max_bytes: usize,
    headers_only: bool,
) -> Result<(Vec<LogRecord>, Option<DiskPos>), JournalError> {
    let Some(mut idx) = segs.iter().rposition(|s| s.first_lsn <= next) else {
        return Err(JournalError::InvalidRequest(format!(
            "LSN {next} is no longer in the journal"
        )));
    };
    let (mut offset, mut lsn) = match pos {
        Some((seg, off, l)) if seg == segs[idx].number && l <= next => (off, l),
        _ => (SEGMENT_HEADER_BYTES, segs[idx].first_lsn),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut window = READ_WINDOW_BYTES;
    while lsn <= upto && (out.is_empty() || bytes < max_bytes) {
        if idx + 1 < segs.len() && lsn >= segs[idx + 1].first_lsn {
            idx += 1;
            offset = SEGMENT_HEADER_BYTES;
            lsn = segs[idx].first_lsn;
            continue;
        }
        let s = &segs[idx];
        let mut buf = vec![0u8; window];
        let n = read_at_most(&s.file, &s.path, &mut buf, offset)?;
        buf.truncate(n);
        let buf = Bytes::from(buf);
        let mut p = 0;
        let mut progressed = false;
        let seg_end_lsn = segs.get(idx + 1).map_or(Lsn::MAX, |n| n.first_lsn);
        while lsn <= upto && lsn < seg_end_lsn && (out.is_empty() || bytes < max_bytes) {
            match decode_record(&buf[p..], &s.salt) {
                Ok(d) => {
                    if d.header.lsn != lsn {
                        return Err(JournalError::CorruptRecord {
                            path: s.path.clone(),
                            offset: offset + p as u64,
                            lsn,
                            later_lsn: d.header.lsn,
                            detail: "unexpected LSN while reading".into(),
                        });
                    }
                    if lsn >= next {
                        let payload = if headers_only {
                            Bytes::new()
                        } else {
                            buf.slice(p + d.payload.start..p + d.payload.end)
                        };
                        bytes += d.total_len;
                        out.push(LogRecord {
                            header: d.header,
                            payload,
                        });
                    }
                    p += d.total_len;
                    lsn += 1;
                    progressed = true;
                }
                Err(RecordError::Truncated { needed_bytes, .. })
                    if n == window || needed_bytes > window =>
                {
                    if !progressed {
                        window = window.max(needed_bytes);
                    }
                    break;
                }
                Err(e) => {
                    return Err(JournalError::CorruptRecord {
                        path: s.path.clone(),
                        offset: offset + p as u64,
                        lsn,
                        later_lsn: lsn,
                        detail: format!("while reading: {e}"),
                    })
                }
            }
        }
        offset += p as u64;
    }
    Ok((out, Some((segs[idx].number, offset, lsn))))
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `true`: [`Consumer::read_batch`] also returns records that are written
    /// (page cache) but not yet durable, in LSN order. For sync peers, which
    /// must receive a write before it is acknowledged; such a peer can hold a
    /// record the primary loses in a power failure, which the caller must
    /// detect (the peer then reports an LSN beyond the primary's log).
    pub fn set_read_written(&mut self, yes: bool) {
        self.read_written = yes;
    }

    /// A consumer of durable records waits this long for a sync that
    /// somebody else (a FLUSH, a checkpoint) asks for before asking itself.
    /// Longer means fewer fdatasyncs and larger batches, and up to this much
    /// extra lag.
    pub fn set_sync_delay(&mut self, delay: Duration) {
        self.sync_delay = delay;
    }

    /// Moves the read position to `lsn` (the peer holds everything before
    /// it). Forward moves also release the records before `lsn`; a backward
    /// move requires the records to still be in the journal and holds them
    /// again. A pending fold notice is kept.
    pub fn seek(&mut self, lsn: Lsn) -> Result<(), JournalError> {
        let lsn = lsn.max(1);
        let mut meta = lock(&self.inner.meta);
        let written = *self.inner.written_tx.borrow();
        let oldest = meta.segments.front().map_or(written + 1, |s| s.first_lsn);
        let c = meta
            .consumers
            .get_mut(&self.name)
            .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
        if lsn > written + 1 {
            return Err(JournalError::InvalidRequest(format!(
                "consumer {} cannot seek to LSN {lsn}: the journal ends at {written}",
                self.name
            )));
        }
        if lsn <= c.acked_lsn && lsn < oldest {
            return Err(JournalError::InvalidRequest(format!(
                "consumer {} cannot seek back to LSN {lsn}: the journal starts at {oldest}",
                self.name
            )));
        }
        c.read_next = lsn;
        c.acked_lsn = if lsn <= c.acked_lsn {
            lsn - 1
        } else {
            c.acked_lsn
        };
        self.disk_pos = None;
        Ok(())
    }

    /// Next LSN this consumer will read.
    pub fn next_lsn(&self) -> Result<Lsn, JournalError> {
        lock(&self.inner.meta)
            .consumers
            .get(&self.name)
            .map(|c| c.read_next)
            .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))
    }

    /// Records `lsn` and everything before it are no longer needed. Persisted
    /// with the next superblock write (checkpoint, fold); after a crash the
    /// consumer may see some records again.
    pub fn ack(&self, lsn: Lsn) {
        let mut meta = lock(&self.inner.meta);
        if let Some(c) = meta.consumers.get_mut(&self.name) {
            c.acked_lsn = c.acked_lsn.max(lsn.min(c.read_next.saturating_sub(1)));
        }
    }

    /// Next batch of durable records (waits for one), or a fold notice.
    pub async fn read_batch(&mut self, max_bytes: usize) -> Result<ReadBatch, JournalError> {
        let mut durable_rx = if self.read_written {
            self.inner.written_tx.subscribe()
        } else {
            self.inner.durable_tx.subscribe()
        };
        loop {
            let (next, folds) = {
                let mut meta = lock(&self.inner.meta);
                let c = meta
                    .consumers
                    .get_mut(&self.name)
                    .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
                if let Some(resume_lsn) = c.fold_notice.take() {
                    self.disk_pos = None;
                    return Ok(ReadBatch::Folded {
                        bitmap: c.bitmap.clone(),
                        resume_lsn,
                    });
                }
                (c.read_next, c.folds)
            };
            let durable = *durable_rx.borrow_and_update();
            if next > durable {
                if let Some(e) = lock(&self.inner.state).failed_error() {
                    return Err(e);
                }
                if self.read_written {
                    // The bound is the written watermark: just wait for it.
                    if durable_rx.changed().await.is_err() {
                        return Err(JournalError::Shutdown);
                    }
                    continue;
                }
                let waited = tokio::time::timeout(self.sync_delay, durable_rx.changed()).await;
                match waited {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(JournalError::Shutdown),
                    Err(_) => {
                        // Nobody synced recently; ask for it ourselves.
                        if *self.inner.written_tx.borrow() >= next {
                            sync_inner(&self.inner, next).await?;
                        } else {
                            let mut written_rx = self.inner.written_tx.subscribe();
                            if *written_rx.borrow_and_update() < next {
                                let _ = written_rx.changed().await;
                            }
                        }
                    }
                }
                continue;
            }
            let from_cache: Option<Vec<LogRecord>> = {
                let cache = lock(&self.inner.cache);
                match cache.records.front() {
                    Some(f) if f.header.lsn <= next => {
                        let start = (next - f.header.lsn) as usize;
                        let mut v = Vec::new();
                        let mut bytes = 0;
                        for r in cache.records.iter().skip(start) {
                            if r.header.lsn > durable || (!v.is_empty() && bytes >= max_bytes) {
                                break;
                            }
                            bytes += r.header.encoded_len();
                            v.push(r.clone());
                        }
                        Some(v)
                    }
                    _ => None,
                }
            };
            let result = match from_cache {
                Some(v) => Ok((v, self.disk_pos)),
                None => {
                    let segs: Vec<SegInfo> =
                        lock(&self.inner.meta).segments.iter().cloned().collect();
                    let pos = self.disk_pos;
                    tokio::task::spawn_blocking(move || {
                        read_records(&segs, pos, next, durable, max_bytes, false)
                    })
                    .await
                    .map_err(|e| JournalError::InvalidRequest(format!("read task failed: {e}")))?
                }
            };
            let mut meta = lock(&self.inner.meta);
            let c = meta
                .consumers
                .get_mut(&self.name)
                .ok_or_else(|| JournalError::UnknownConsumer(self.name.clone()))?;
            if c.folds != folds {
                continue; // folded while reading: report the fold instead
            }
            let (recs, pos) = result?;
            self.disk_pos = pos;
            if let Some(last) = recs.last() {
                assert_eq!(recs[0].header.lsn, next, "consumer reads are consecutive");
                c.read_next = last.header.lsn + 1;
            }
            return Ok(ReadBatch::Records(recs));
        }
    }
}

fn writer_main(inner: Arc<Inner>, mut cur: Option<CurrentSeg>) {
    let cfg = &inner.cfg;
    loop {
        let (batch, synced) = {
            let mut st = lock(&inner.state);
            loop {
                if !st.queue.is_empty() || st.sync_due() {
                    break;
                }
                if st.shutdown {
                    let err = JournalError::Shutdown;
                    for (_, w) in st.sync_waiters.drain(..) {
                        let _ = w.send(Err(err.share()));
                    }
                    return;
                }
                st.writer_idle = true;
                st = inner.writer_cv.wait(st).expect("journal lock poisoned");
                st.writer_idle = false;
            }
            if !cfg.max_batch_wait.is_zero() && st.queued_bytes < cfg.max_batch_bytes {
                let deadline = Instant::now() + cfg.max_batch_wait;
                while st.queued_bytes < cfg.max_batch_bytes && !st.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st.writer_idle = true;
                    st = inner
                        .writer_cv
                        .wait_timeout(st, deadline - now)
                        .expect("journal lock poisoned")
                        .0;
                    st.writer_idle = false;
                }
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(p) = st.queue.front() {
                if !batch.is_empty() && bytes + p.encoded_len() > cfg.max_batch_bytes {
                    break;
                }
                bytes += p.encoded_len();
                batch.push(st.queue.pop_front().expect("front exists"));
            }
            st.queued_bytes -= bytes;
            (batch, st.durable_lsn)
        };

        if !batch.is_empty() {
            let written_before = *inner.written_tx.borrow();
            assert_eq!(
                batch[0].lsn,
                written_before + 1,
                "LSNs are written in order"
            );
            let (n_ok, err) = write_batch(&inner, &mut cur, &batch, synced, written_before);
            if n_ok > 0 {
                let last = batch[n_ok - 1].lsn;
                {
                    let mut cache = lock(&inner.cache);
                    for p in &batch[..n_ok] {
                        cache.bytes += p.encoded_len();
                        cache.records.push_back(LogRecord {
                            header: p.header(synced),
                            payload: p.payload.clone(),
                        });
                    }
                    while cache.bytes > cfg.memory_cache_bytes {
                        let r = cache.records.pop_front().expect("non-empty when over");
                        cache.bytes -= r.header.encoded_len();
                    }
                }
                lock(&inner.state).written_lsn = last;
                inner.written_tx.send_replace(last);
                if inner.tracking.load(Ordering::SeqCst) {
                    inner.mark_for_resync(&batch[..n_ok]);
                }
            }
            let mut rest = batch.into_iter();
            for p in rest.by_ref().take(n_ok) {
                let _ = p.done.send(Ok(p.lsn));
            }
            if let Some(e) = err {
                let mut st = lock(&inner.state);
                if matches!(e, JournalError::Full { .. }) {
                    // Not fatal: nothing of these appends was written. Drop
                    // them and everything queued after, so LSNs stay dense.
                    for p in rest.chain(st.queue.drain(..)) {
                        let _ = p.done.send(Err(e.share()));
                    }
                    st.queued_bytes = 0;
                    st.next_lsn = st.written_lsn + 1;
                    let written = st.written_lsn;
                    let (keep, drop): (Vec<_>, Vec<_>) =
                        st.sync_waiters.drain(..).partition(|(l, _)| *l <= written);
                    st.sync_waiters = keep;
                    for (_, w) in drop {
                        let _ = w.send(Err(e.share()));
                    }
                } else {
                    for p in rest {
                        let _ = p.done.send(Err(JournalError::Failed {
                            reason: e.to_string(),
                            durable_lsn: st.durable_lsn,
                        }));
                    }
                    inner.fail(&mut st, e.to_string());
                }
            }
        }

        let (target, due) = {
            let st = lock(&inner.state);
            (st.written_lsn, st.sync_due() && st.failed.is_none())
        };
        if !due {
            continue;
        }
        let c = cur.as_mut().expect("written records imply a segment");
        let res = if inner.fail_next_sync.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        } else {
            c.info.file.sync_data()
        };
        inner.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(()) => {
                c.unsynced = false;
                inner.publish_durable(target);
            }
            Err(e) => {
                // Never retried: after a failed fdatasync the kernel may have
                // dropped the dirty pages, so a later success proves nothing.
                let reason = format!("fdatasync of {} failed: {e}", c.info.path.display());
                inner.fail(&mut lock(&inner.state), reason);
            }
        }
    }
}

/// Writes `batch` (one pwritev per segment touched). Returns how many
/// records were written and the error that stopped the rest, if any.
fn write_batch(
    inner: &Inner,
    cur: &mut Option<CurrentSeg>,
    batch: &[Pending],
    synced: Lsn,
    written_before: Lsn,
) -> (usize, Option<JournalError>) {
    let seg_bytes = inner.cfg.segment_bytes;
    let mut headers = vec![[0u8; RECORD_HEADER_BYTES]; batch.len()];
    let mut i = 0;
    while i < batch.len() {
        let need = batch[i].encoded_len() as u64;
        if cur.as_ref().is_none_or(|c| c.offset + need > seg_bytes) {
            if let Some(c) = cur.as_mut() {
                // The finished segment is synced once, so syncs only ever
                // need the current file.
                if c.unsynced {
                    if let Err(e) = c.info.file.sync_data() {
                        let path = c.info.path.clone();
                        return (
                            i,
                            Some(JournalError::io("fdatasync finished segment", &path, e)),
                        );
                    }
                    inner.counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
                    c.unsynced = false;
                }
                // Everything written before this batch is now durable. Say so
                // before waiting for space below: the checkpoint that frees
                // the space syncs its LSN first, and only this thread could
                // otherwise serve that sync.
                inner.publish_durable(written_before);
            }
            let written = if i == 0 {
                written_before
            } else {
                batch[i - 1].lsn
            };
            match inner.acquire_segment(batch[i].lsn, written) {
                Ok(info) => {
                    *cur = Some(CurrentSeg {
                        info,
                        offset: SEGMENT_HEADER_BYTES,
                        unsynced: false,
                    })
                }
                Err(e) => return (i, Some(e)),
            }
        }
        let c = cur.as_mut().expect("segment acquired");
        let start = i;
        let mut end_off = c.offset;
        while i < batch.len() && end_off + batch[i].encoded_len() as u64 <= seg_bytes {
            let p = &batch[i];
            encode_header(&p.header(synced), &c.info.salt, &p.crc, &mut headers[i]);
            end_off += p.encoded_len() as u64;
            i += 1;
        }
        assert!(i > start, "a maximal record fits an empty segment");
        let mut iov = Vec::with_capacity((i - start) * 2);
        for (h, p) in headers[start..i].iter().zip(&batch[start..i]) {
            iov.push(IoSlice::new(h));
            iov.push(IoSlice::new(&p.payload));
        }
        match pwritev_all(&c.info.file, &c.info.path, &iov, c.offset) {
            Ok(calls) => {
                inner
                    .counters
                    .pwritev_calls
                    .fetch_add(calls, Ordering::Relaxed);
                inner.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                inner
                    .counters
                    .records
                    .fetch_add((i - start) as u64, Ordering::Relaxed);
                inner
                    .counters
                    .bytes_written
                    .fetch_add(end_off - c.offset, Ordering::Relaxed);
                c.offset = end_off;
                c.unsynced = true;
            }
            Err(e) => return (start, Some(e)),
        }
    }
    (batch.len(), None)
}
