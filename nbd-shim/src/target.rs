//! The seam between the NBD front end and whatever stores the blocks.
//!
//! Everything behind an export (a plain volume today, the journal and the
//! replication engine later) implements [`BlockTarget`]. Durability is explicit
//! in the signatures: a write with [`Durability::Fua`] must be durable when its
//! future resolves; [`BlockTarget::flush`] makes every write that completed
//! before it was called durable, whichever connection sent it (this is what
//! lets the server advertise `NBD_FLAG_CAN_MULTI_CONN`).

use std::future::Future;

use bytes::Bytes;

/// How durable a completed write must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Visible to later reads; durable after the next flush.
    Buffered,
    /// Durable (on stable storage) when the call returns (`NBD_CMD_FLAG_FUA`).
    Fua,
}

/// Options of `NBD_CMD_WRITE_ZEROES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFlags {
    pub durability: Durability,
    /// The target may deallocate (punch a hole) instead of writing zeroes
    /// (the client did not send `NBD_CMD_FLAG_NO_HOLE`).
    pub may_trim: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with [`TargetError::FastZeroUnavailable`]
    /// rather than fall back to writing zero bytes.
    pub fast_only: bool,
}

/// One run of a `base:allocation` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length_bytes: u64,
    /// No storage allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// What a target can do, reported in the export flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetFeatures {
    pub read_only: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
    pub can_fast_zero: bool,
    pub can_cache: bool,
    /// Preferred I/O size in bytes (NBD_INFO_BLOCK_SIZE); a power of two.
    pub preferred_block_bytes: u32,
}

/// Errors a target returns; each maps to one NBD error code.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no space left on the backing store")]
    NoSpace,
    #[error("the export is read-only")]
    ReadOnly,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("fast zeroing is not available for this range")]
    FastZeroUnavailable,
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl TargetError {
    /// The NBD error code (protocol values, not host errno) for this error.
    pub fn nbd_error(&self) -> u32 {
        use crate::proto::error as e;
        match self {
            TargetError::Io(err) => match err.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => e::ENOSPC,
                Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => e::EPERM,
                Some(libc::EINVAL) => e::EINVAL,
                Some(libc::EOPNOTSUPP) => e::ENOTSUP,
                _ => e::EIO,
            },
            TargetError::NoSpace => e::ENOSPC,
            TargetError::ReadOnly => e::EPERM,
            TargetError::NotSupported(_) | TargetError::FastZeroUnavailable => e::ENOTSUP,
            TargetError::Invalid(_) => e::EINVAL,
        }
    }

    /// The name of [`TargetError::nbd_error`]'s code, lowercase ("eio").
    pub fn nbd_error_name(&self) -> &'static str {
        use crate::proto::error as e;
        match self.nbd_error() {
            e::EPERM => "eperm",
            e::ENOSPC => "enospc",
            e::EINVAL => "einval",
            e::ENOTSUP => "enotsup",
            _ => "eio",
        }
    }
}

/// A block store behind an NBD export. The server has already checked that
/// every range is inside `[0, size_bytes())` and within the payload limit.
pub trait BlockTarget: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;
    fn features(&self) -> TargetFeatures;
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, TargetError>> + Send;
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    fn trim(
        &self,
        offset: u64,
        len: u32,
        durability: Durability,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Make every write completed before this call durable (all connections).
    fn flush(&self) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Prefetch hint (`NBD_CMD_CACHE`).
    fn cache(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Allocation map of `[offset, offset + len)`; may describe less than `len`
    /// but at least one byte, and never more than asked.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<Extent>, TargetError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::TargetError;

    #[test]
    fn error_names_follow_the_codes_sent() {
        let io = |errno| TargetError::Io(std::io::Error::from_raw_os_error(errno));
        for (err, name) in [
            (io(libc::EIO), "eio"),
            (io(libc::ENOSPC), "enospc"),
            (io(libc::EROFS), "eperm"),
            (TargetError::ReadOnly, "eperm"),
            (TargetError::NoSpace, "enospc"),
            (TargetError::Invalid("x".into()), "einval"),
            (TargetError::FastZeroUnavailable, "enotsup"),
        ] {
            assert_eq!(err.nbd_error_name(), name, "{err}");
        }
    }
}
