//! The driftless replication engine around a volume's local data path
//! (the `store` crate).
//!
//! - [`Primary`] serves writes through its `Store` and ships every journal
//!   record, in LSN order, to each configured peer: sync peers (protocol C:
//!   a write returns once every sync peer in sync journaled it, a FLUSH/FUA
//!   once it is durable there) and async peers (the primary never waits).
//! - [`Secondary`] accepts one primary session at a time, journals each
//!   record at the primary's LSN, applies in LSN order and acknowledges.
//!
//! The decisions (handshake verdicts, the per-peer session of each side
//! with its resync and verify jobs, shipping window, sync gate, lag) are
//! sans-IO code in [`proto`], tested without sockets; `peer` and
//! `secondary` drive them with real I/O.
//!
//! Lock poisoning: the engine's locks guard per-peer bookkeeping (positions,
//! states, lag) updated in short sections that cannot leave it half written,
//! so a poisoned lock is taken over (see [`lock`]); the panic that poisoned
//! it has already ended its task, and that task's session with it.

mod config;
mod conn;
mod error;
mod peer;
mod primary;
pub mod proto;
mod secondary;
mod status;

pub use config::{
    InitialSync, PeerConfig, PeerMode, PrimaryConfig, ResyncCompare, ResyncLimits, SecondaryConfig,
    SplitBrainPolicy, SyncPeerLossPolicy, TransportKind,
};
pub use error::{BatchError, EngineError, SessionError};
pub use journal::Lsn;
pub use primary::{Primary, StartMode};
pub use secondary::{Admission, Arbiter, Refusal, Secondary};
pub use status::{
    ConnectionState, DiskState, GenerationStatus, JobKindStatus, JobStatus, PeerStatus,
    RefusalReason, ResyncReport, SplitBrainStatus, SyncGate, UpstreamStatus, VerifyReport,
    VolumeRole, VolumeStatus,
};
pub use wire::{Hello, LineageEntry, RefuseCode, SplitBrainFacts};

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
