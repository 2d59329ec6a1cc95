use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with a volume. I/O failures keep the
/// original [`io::Error`] (see [`VolumeError::raw_os_error`]) so callers can
/// map e.g. `ENOSPC` to the matching protocol error.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{op} on {}{} failed: {source}", path.display(), at(*offset))]
    Io {
        /// The operation: "open", "read", "write", "fdatasync", "fallocate", ...
        op: &'static str,
        path: PathBuf,
        /// Byte offset of the operation, where one applies.
        offset: Option<u64>,
        #[source]
        source: io::Error,
    },
    #[error("{} is {existing} bytes, but {requested} bytes were requested", path.display())]
    SizeMismatch {
        path: PathBuf,
        existing: u64,
        requested: u64,
    },
    #[error("the volume does not exist and no size was given to create it")]
    SizeRequired,
    #[error("{len} bytes at offset {offset} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("a single read of {len} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len: u64, max_bytes: u64 },
    #[error("the volume is open read-only")]
    ReadOnly,
    #[error("io_uring is unavailable: {0}")]
    UringUnavailable(String),
    #[error("no fast way to zero this range (fallocate is not supported here)")]
    FastZeroUnavailable,
    #[error("{} is neither a regular file nor a block device", path.display())]
    NotAVolume { path: PathBuf },
    #[error("{} is locked for writing by another open (another daemon?)", path.display())]
    Locked { path: PathBuf },
    #[error("the {engine} I/O engine stopped before completing {op}")]
    EngineStopped {
        engine: &'static str,
        op: &'static str,
    },
}

fn at(offset: Option<u64>) -> String {
    match offset {
        Some(offset) => format!(" at offset {offset}"),
        None => String::new(),
    }
}

impl VolumeError {
    /// The underlying OS error, if this is an I/O failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            VolumeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The raw `errno` of an I/O failure (e.g. `libc::ENOSPC`).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().and_then(io::Error::raw_os_error)
    }
}

/// Returned by `"...".parse::<EngineKind>()` for an unknown engine name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O engine {0:?} (expected \"auto\", \"uring\" or \"threads\")")]
pub struct ParseEngineKindError(pub String);
