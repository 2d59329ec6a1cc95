//! The I/O engines behind a [`crate::Volume`].
//!
//! An engine executes four positional operations on one file descriptor:
//! read, write, `fdatasync` and `fallocate`. Submission is fire-and-forget
//! ([`IoEngine::submit`]); the result comes back on the request's
//! `tokio::sync::oneshot`, so the async caller pays one channel hop and no
//! payload copy (write payloads are refcounted [`Bytes`], read buffers are
//! allocated once and frozen into [`Bytes`]).

use std::io;

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

pub mod threads;
pub mod uring;

/// One operation, owning its buffer for as long as the kernel may touch it.
#[derive(Debug)]
pub enum Op {
    /// Read exactly `len` bytes.
    Read { len: usize },
    /// Write all of `data`.
    Write { data: Bytes },
    /// `fdatasync(2)`.
    SyncData,
    /// `fallocate(2)` with `mode` over `len` bytes.
    Fallocate { mode: i32, len: u64 },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::SyncData => "fdatasync",
            Op::Fallocate { .. } => "fallocate",
        }
    }
}

/// What a completed operation hands back.
#[derive(Debug)]
pub enum Output {
    /// Bytes of a read.
    Data(Bytes),
    /// Any other operation.
    Done,
}

/// A submitted operation and where its result goes.
#[derive(Debug)]
pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub reply: Reply,
}

/// Where a result goes. Also holds the caller's in-flight permit, so the
/// bound on queued operations holds even if the caller's future is dropped
/// while the kernel still works on its buffer.
#[derive(Debug)]
pub struct Reply {
    tx: oneshot::Sender<io::Result<Output>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reply {
    pub fn new(
        permit: Option<OwnedSemaphorePermit>,
    ) -> (Reply, oneshot::Receiver<io::Result<Output>>) {
        let (tx, rx) = oneshot::channel();
        (
            Reply {
                tx,
                _permit: permit,
            },
            rx,
        )
    }

    /// Deliver the result; `false` if the caller is gone (cancelled).
    pub fn send(self, result: io::Result<Output>) -> bool {
        self.tx.send(result).is_ok()
    }
}

/// An engine: accepts requests from any thread and completes each exactly once
/// (dropping the reply sender only if the engine itself is shutting down).
pub trait IoEngine: Send + Sync {
    /// `"io_uring"` or `"threads"`.
    fn name(&self) -> &'static str;
    /// Queue `req`. Never blocks on I/O.
    fn submit(&self, req: Request);
}
