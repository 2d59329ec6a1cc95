//! The driftless engine. Today: the journaled local data path of a volume
//! ([`store`]); peer sessions, sync/async shipping and resync build on it.

mod error;
pub mod store;

pub use error::StoreError;
pub use store::{Change, RecoveryReport, Store, StoreConfig};
