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
//! The decisions (shipping window, sync gate, handshake verdicts, batch
//! validation, lag) are sans-IO code in `core`, tested without sockets.

mod config;
mod conn;
mod core;
mod error;
mod primary;
mod secondary;

pub use config::{
    PeerConfig, PeerMode, PeerStatus, PrimaryConfig, SecondaryConfig, SyncPeerLossPolicy,
    TransportKind, VolumeStatus,
};
pub use error::EngineError;
pub use journal::Lsn;
pub use primary::Primary;
pub use secondary::Secondary;
