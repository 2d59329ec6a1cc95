//! Backing store of a driftless volume: a regular file (created sparse at the
//! requested size when missing) or a block device.
//!
//! All data I/O is buffered (page cache); durability comes from
//! [`Volume::sync_data`] (`fdatasync`). Two engines execute it behind one
//! interface ([`engine::IoEngine`]) and must give identical results (a
//! property test drives both with the same random operation sequences):
//!
//! | operation                         | `io_uring` engine                  | `threads` engine          |
//! |-----------------------------------|------------------------------------|---------------------------|
//! | read / write                      | `IORING_OP_READ` / `WRITE` SQEs     | `pread` / `pwrite`        |
//! | sync_data                         | `IORING_OP_FSYNC` + `DATASYNC`      | `fdatasync`               |
//! | punch_hole / write_zeroes         | `IORING_OP_FALLOCATE`               | `fallocate`               |
//! | extents (`SEEK_DATA`/`SEEK_HOLE`) | tokio blocking pool                 | tokio blocking pool       |
//! | readahead (`POSIX_FADV_WILLNEED`) | tokio blocking pool                 | tokio blocking pool       |
//!
//! The io_uring engine runs one ring thread that batches everything queued
//! into one `io_uring_enter`; the thread engine runs a fixed pool of workers.
//! Either way a caller pays one queue hop and a `oneshot`; payloads are never
//! copied (writes keep the caller's refcounted [`Bytes`], reads are filled in
//! place and frozen). [`EngineKind::Auto`] probes io_uring (ring set-up,
//! opcode probe, a real NOP round trip) and falls back to threads with a
//! warning; [`EngineKind::Uring`] fails instead.
//!
//! Zeroing prefers the cheapest thing that makes the range read as zeroes:
//! `FALLOC_FL_PUNCH_HOLE` (when trimming is allowed), then
//! `FALLOC_FL_ZERO_RANGE`, then writing zero buffers in
//! [`ZERO_CHUNK_BYTES`] pieces (refused with
//! [`VolumeError::FastZeroUnavailable`] when the caller asked for fast only).
//! A punched range always reads back as zeroes, on files and block devices
//! alike, because replicas must stay byte-identical.
//!
//! Lock poisoning: the engines' locks guard queues of submitted operations
//! (push and pop only), which a panic cannot leave half updated, so a
//! poisoned lock is taken over; the operation that panicked completes with
//! an error to its caller (its oneshot is dropped).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::Semaphore;

pub mod engine;
mod error;
mod sys;

pub use error::{ParseEngineKindError, VolumeError};

use engine::threads::ThreadEngine;
use engine::uring::UringEngine;
use engine::{IoEngine, Op, Output, Reply, Request};

/// Largest single read; a bigger one is almost certainly a caller bug and
/// would allocate that much at once.
pub const MAX_READ_BYTES: usize = 256 << 20;
/// Size of each write when zeroing has to fall back to writing zeroes.
pub const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Most extents one [`Volume::extents`] call returns; the answer then covers
/// less than was asked (allowed by NBD block status).
pub const MAX_EXTENTS: usize = 4096;

/// Which I/O engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring if the kernel allows it, otherwise threads (with a warning).
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// The thread pool.
    Threads,
}

impl FromStr for EngineKind {
    type Err = ParseEngineKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "uring" => Ok(EngineKind::Uring),
            "threads" => Ok(EngineKind::Threads),
            other => Err(ParseEngineKindError(other.to_string())),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Auto => "auto",
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        })
    }
}

/// How to open a volume.
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    /// Required to create a missing file; if given for an existing file or
    /// device, it must match (an existing empty regular file is grown to it
    /// when `create` is set).
    pub size_bytes: Option<u64>,
    pub engine: EngineKind,
    pub read_only: bool,
    /// Create a missing regular file (sparse) of `size_bytes`.
    pub create: bool,
}

/// Engine sizing; [`Volume::open`] uses [`EngineConfig::default`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Submission queue size of the io_uring engine; `ring_entries - 1`
    /// operations are in the kernel at most.
    pub ring_entries: u32,
    /// Worker threads of the thread engine.
    pub threads: usize,
    /// Operations queued or executing per volume; further callers wait.
    pub max_in_flight_ops: usize,
    /// Serve from the caller's thread what needs no engine: reads the page
    /// cache holds (`preadv2(RWF_NOWAIT)`; a miss goes to the engine), and a
    /// write when no other write is in flight. Off: every read and write goes
    /// through the engine (the engine-equivalence tests turn it off).
    pub inline_fast_path: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ring_entries: 256,
            threads: 8,
            max_in_flight_ops: 1024,
            inline_fast_path: true,
        }
    }
}

/// One run of an [`Volume::extents`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length_bytes: u64,
    /// No storage allocated.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

const FALLOC_PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const FALLOC_ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// An open volume. `Send + Sync`; share it with `Arc`.
pub struct Volume {
    path: PathBuf,
    file: Arc<File>,
    size_bytes: u64,
    block_device: bool,
    read_only: bool,
    /// fallocate on a block device must be aligned to this; 1 for files.
    fallocate_align_bytes: u64,
    engine: Box<dyn IoEngine>,
    in_flight: Arc<Semaphore>,
    /// Cleared the first time the kernel says EOPNOTSUPP, to skip the probe.
    punch_supported: AtomicBool,
    zero_range_supported: AtomicBool,
    /// RWF_NOWAIT fast path for reads, enabled and not yet refused.
    nowait_reads: AtomicBool,
    /// Lone writes run inline (see [`Volume::write`]).
    inline_writes: bool,
    writes_in_flight: AtomicUsize,
}

/// Counts a write in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume")
            .field("path", &self.path)
            .field("size_bytes", &self.size_bytes)
            .field("block_device", &self.block_device)
            .field("read_only", &self.read_only)
            .field("engine", &self.engine.name())
            .finish()
    }
}

fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENOTTY)
    )
}

fn zero_chunk() -> Bytes {
    static ZEROES: OnceLock<Bytes> = OnceLock::new();
    ZEROES
        .get_or_init(|| Bytes::from(vec![0u8; ZERO_CHUNK_BYTES]))
        .clone()
}

impl Volume {
    /// Open (or create) a volume with the default [`EngineConfig`].
    pub fn open(path: &Path, opts: VolumeOptions) -> Result<Volume, VolumeError> {
        Volume::open_with(path, opts, &EngineConfig::default())
    }

    /// Open (or create) a volume with explicit engine sizing.
    pub fn open_with(
        path: &Path,
        opts: VolumeOptions,
        config: &EngineConfig,
    ) -> Result<Volume, VolumeError> {
        let io_err = |op: &'static str, source: io::Error| VolumeError::Io {
            op,
            path: path.to_path_buf(),
            offset: None,
            source,
        };
        let existing = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("stat", e)),
        };
        let (file, size_bytes, block_device) = match existing {
            Some(meta) => {
                let ft = meta.file_type();
                let block_device = ft.is_block_device();
                if !block_device && !ft.is_file() {
                    return Err(VolumeError::NotAVolume {
                        path: path.to_path_buf(),
                    });
                }
                let mut oo = OpenOptions::new();
                oo.read(true).write(!opts.read_only);
                if block_device && !opts.read_only {
                    // Exclusive open: fails if mounted or claimed elsewhere.
                    oo.custom_flags(libc::O_EXCL);
                }
                let file = oo.open(path).map_err(|e| io_err("open", e))?;
                let existing_bytes = if block_device {
                    sys::block_device_size(file.as_raw_fd())
                        .map_err(|e| io_err("BLKGETSIZE64", e))?
                } else {
                    meta.len()
                };
                let size = match opts.size_bytes {
                    None => existing_bytes,
                    Some(requested) if requested == existing_bytes => requested,
                    // An empty file (e.g. made by mktemp) holds no data to lose.
                    Some(requested)
                        if existing_bytes == 0
                            && !block_device
                            && opts.create
                            && !opts.read_only =>
                    {
                        file.set_len(requested)
                            .map_err(|e| io_err("ftruncate", e))?;
                        requested
                    }
                    Some(requested) => {
                        return Err(VolumeError::SizeMismatch {
                            path: path.to_path_buf(),
                            existing: existing_bytes,
                            requested,
                        })
                    }
                };
                (file, size, block_device)
            }
            None => {
                if !opts.create || opts.read_only {
                    return Err(io_err("open", io::Error::from(io::ErrorKind::NotFound)));
                }
                let size = opts.size_bytes.ok_or(VolumeError::SizeRequired)?;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| io_err("create", e))?;
                // ftruncate only sets the size: the file stays fully sparse.
                file.set_len(size).map_err(|e| io_err("ftruncate", e))?;
                (file, size, false)
            }
        };
        if !opts.read_only {
            lock_exclusive(&file, path)?;
        }
        let fallocate_align_bytes = if block_device {
            u64::from(
                sys::block_device_logical_block(file.as_raw_fd())
                    .map_err(|e| io_err("BLKSSZGET", e))?,
            )
        } else {
            1
        };
        let file = Arc::new(file);
        let engine = start_engine(path, &file, opts.engine, config)?;
        Ok(Volume {
            path: path.to_path_buf(),
            file,
            size_bytes,
            block_device,
            read_only: opts.read_only,
            fallocate_align_bytes,
            engine,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_ops.max(1))),
            punch_supported: AtomicBool::new(true),
            zero_range_supported: AtomicBool::new(true),
            nowait_reads: AtomicBool::new(config.inline_fast_path),
            inline_writes: config.inline_fast_path,
            writes_in_flight: AtomicUsize::new(0),
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// `"io_uring"` or `"threads"`.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, op: &'static str, offset: Option<u64>, source: io::Error) -> VolumeError {
        VolumeError::Io {
            op,
            path: self.path.clone(),
            offset,
            source,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: self.size_bytes,
            }),
        }
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Run one operation on the engine.
    async fn run(&self, op: Op, offset: u64) -> Result<Output, VolumeError> {
        let name = op.name();
        let stopped = VolumeError::EngineStopped {
            engine: self.engine.name(),
            op: name,
        };
        // Never closed, so an error here cannot happen; map it anyway.
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return Err(stopped);
        };
        let (reply, rx) = Reply::new(Some(permit));
        self.engine.submit(Request { op, offset, reply });
        match rx.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(self.io_error(name, Some(offset), source)),
            Err(_) => Err(stopped),
        }
    }

    /// Run a syscall without a ring opcode on the tokio blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, offset: u64, f: F) -> Result<T, VolumeError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(self.io_error(op, Some(offset), source)),
            Err(join) => Err(self.io_error(op, Some(offset), io::Error::other(join))),
        }
    }

    /// Read `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
        self.check_range(offset, len as u64)?;
        if len > MAX_READ_BYTES {
            return Err(VolumeError::TooLarge {
                len: len as u64,
                max_bytes: MAX_READ_BYTES as u64,
            });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        if self.nowait_reads.load(Ordering::Relaxed) {
            let mut buf = bytes::BytesMut::zeroed(len);
            match sys::pread_nowait(self.file.as_raw_fd(), &mut buf, offset) {
                Ok(n) if n == len => return Ok(buf.freeze()),
                // Partly cached or not cached: the engine reads it all.
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.nowait_reads.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.io_error("read", Some(offset), e)),
            }
        }
        match self.run(Op::Read { len }, offset).await? {
            Output::Data(data) => Ok(data),
            Output::Done => Err(self.io_error(
                "read",
                Some(offset),
                io::Error::other("engine returned no data"),
            )),
        }
    }

    /// Buffered write of all of `data` at `offset` (durable after
    /// [`Volume::sync_data`]).
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        // A write with no other write in flight goes inline: a buffered
        // write is a page-cache copy, and the hop to the engine and back
        // would be most of its latency. With writes already in flight, the
        // engine overlaps them and keeps the caller's thread free.
        let alone = self.writes_in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let _in_flight = InFlight(&self.writes_in_flight);
        if alone && self.inline_writes {
            return sys::pwrite_full(self.file.as_raw_fd(), &data, offset)
                .map_err(|e| self.io_error("write", Some(offset), e));
        }
        self.run(Op::Write { data }, offset).await.map(drop)
    }

    /// `fdatasync`: every write completed before the call is durable after it.
    pub async fn sync_data(&self) -> Result<(), VolumeError> {
        self.run(Op::SyncData, 0).await.map(drop)
    }

    /// TRIM: deallocate the range. It reads back as zeroes afterwards; where
    /// deallocation is unsupported the range is zeroed instead.
    pub async fn punch_hole(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.zero_range(offset, len, true, false).await
    }

    /// Make the range read as zeroes: punch a hole if `may_trim`, else
    /// `FALLOC_FL_ZERO_RANGE`; otherwise write zero buffers, unless
    /// `fast_only`, which yields [`VolumeError::FastZeroUnavailable`].
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> Result<(), VolumeError> {
        self.zero_range(offset, len, may_trim, fast_only).await
    }

    async fn zero_range(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // Block devices take fallocate only on whole logical blocks; the
        // ragged edges (less than a block each) are written.
        let align = self.fallocate_align_bytes;
        let start = offset.div_ceil(align) * align;
        let end = (offset + len) / align * align;
        if start >= end {
            return self.write_zero_buffers(offset, len).await;
        }
        if start > offset {
            self.write_zero_buffers(offset, start - offset).await?;
        }
        self.zero_aligned(start, end - start, may_trim, fast_only)
            .await?;
        if offset + len > end {
            self.write_zero_buffers(end, offset + len - end).await?;
        }
        Ok(())
    }

    async fn zero_aligned(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> Result<(), VolumeError> {
        for (wanted, supported, mode) in [
            (may_trim, &self.punch_supported, FALLOC_PUNCH),
            (true, &self.zero_range_supported, FALLOC_ZERO),
        ] {
            if !wanted || !supported.load(Ordering::Relaxed) {
                continue;
            }
            match self.run(Op::Fallocate { mode, len }, offset).await {
                Ok(_) => return Ok(()),
                Err(e) if e.io_error().is_some_and(is_unsupported) => {
                    tracing::debug!(path = %self.path.display(), mode, "fallocate mode unsupported");
                    supported.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        if fast_only {
            return Err(VolumeError::FastZeroUnavailable);
        }
        self.write_zero_buffers(offset, len).await
    }

    /// The slow path: write zeroes in bounded chunks from one shared buffer.
    async fn write_zero_buffers(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let zeroes = zero_chunk();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK_BYTES as u64) as usize;
            self.run(
                Op::Write {
                    data: zeroes.slice(..n),
                },
                offset + done,
            )
            .await?;
            done += n as u64;
        }
        Ok(())
    }

    /// Allocation map of `[offset, offset + len)` from `SEEK_DATA`/`SEEK_HOLE`
    /// (blocking pool): holes are `hole + zero`, data is neither. A block
    /// device is one data extent. The extents are contiguous from `offset`,
    /// never cover more than `len`, and cover at least one byte when
    /// `len > 0` (fewer than `len` only past [`MAX_EXTENTS`] runs).
    pub async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.block_device {
            return Ok(vec![Extent {
                length_bytes: len,
                hole: false,
                zero: false,
            }]);
        }
        let size = self.size_bytes;
        self.blocking("lseek(SEEK_DATA/SEEK_HOLE)", offset, move |file| {
            map_extents(file.as_raw_fd(), offset, len, size)
        })
        .await
    }

    /// Start reading the range into the page cache (`POSIX_FADV_WILLNEED`,
    /// blocking pool), for `NBD_CMD_CACHE`.
    pub async fn readahead(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.blocking("posix_fadvise(WILLNEED)", offset, move |file| {
            sys::fadvise_willneed(file.as_raw_fd(), offset, len)
        })
        .await
    }
}

fn push_extent(out: &mut Vec<Extent>, length_bytes: u64, hole: bool) {
    if let Some(last) = out.last_mut() {
        if last.hole == hole {
            last.length_bytes += length_bytes;
            return;
        }
    }
    out.push(Extent {
        length_bytes,
        hole,
        zero: hole,
    });
}

fn map_extents(
    fd: std::os::fd::RawFd,
    offset: u64,
    len: u64,
    size_bytes: u64,
) -> io::Result<Vec<Extent>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < MAX_EXTENTS {
        match sys::seek(fd, pos, libc::SEEK_DATA)? {
            None => {
                push_extent(&mut out, end - pos, true);
                pos = end;
            }
            Some(data) if data > pos => {
                let next = data.min(end);
                push_extent(&mut out, next - pos, true);
                pos = next;
            }
            Some(_) => {
                let hole = sys::seek(fd, pos, libc::SEEK_HOLE)?.unwrap_or(size_bytes);
                // A racing punch could report a hole at `pos` itself; claim
                // one data byte rather than loop (data is the safe answer).
                let next = hole.max(pos + 1).min(end);
                push_extent(&mut out, next - pos, false);
                pos = next;
            }
        }
    }
    Ok(out)
}

/// How long a writable open waits for another holder's lock to go away. A
/// process that just exited can still hold it for a moment: its io_uring
/// instance (which holds the file registered) is torn down asynchronously by
/// the kernel after exit, so a restart right after a stop or a kill -9 would
/// otherwise be refused.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn lock_exclusive(file: &File, path: &Path) -> Result<(), VolumeError> {
    let io_err = |e| VolumeError::Io {
        op: "flock",
        path: path.to_path_buf(),
        offset: None,
        source: e,
    };
    let start = std::time::Instant::now();
    while !sys::try_lock_exclusive(file.as_raw_fd()).map_err(io_err)? {
        if start.elapsed() >= LOCK_WAIT {
            return Err(VolumeError::Locked {
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

fn start_engine(
    path: &Path,
    file: &Arc<File>,
    kind: EngineKind,
    config: &EngineConfig,
) -> Result<Box<dyn IoEngine>, VolumeError> {
    let threads = || -> Result<Box<dyn IoEngine>, VolumeError> {
        ThreadEngine::new(Arc::clone(file), config.threads)
            .map(|e| Box::new(e) as Box<dyn IoEngine>)
            .map_err(|source| VolumeError::Io {
                op: "spawn I/O threads",
                path: path.to_path_buf(),
                offset: None,
                source,
            })
    };
    match kind {
        EngineKind::Threads => threads(),
        EngineKind::Uring => UringEngine::new(Arc::clone(file), config.ring_entries)
            .map(|e| Box::new(e) as Box<dyn IoEngine>)
            .map_err(VolumeError::UringUnavailable),
        EngineKind::Auto => match UringEngine::new(Arc::clone(file), config.ring_entries) {
            Ok(engine) => Ok(Box::new(engine)),
            Err(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "io_uring unavailable, falling back to the thread engine"
                );
                threads()
            }
        },
    }
}
