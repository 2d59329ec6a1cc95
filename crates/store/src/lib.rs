//! The local data path of a volume: a [`Store`] is the volume behind its
//! journal. Every change is appended to the journal (the durability point),
//! then written to the volume (its buffered materialization), overlapping
//! changes in LSN order. FLUSH and FUA wait for the journal's group commit;
//! a checkpointer fsyncs the volume and lets the journal reclaim; opening
//! redoes the journal after its checkpoint. `driftless serve` uses it alone;
//! the replication engine builds on it.
//!
//! Lock poisoning: the store's locks guard short critical sections that
//! cannot leave their data half-updated, so a poisoned lock is taken over
//! (see [`lock`]) rather than propagated.

mod activity;
mod change;
mod error;
mod ranges;
mod store;
mod sync;
mod volume_id;

pub use activity::{ActivityConfig, ActivityReport};
pub use change::{apply, Change};
pub use error::StoreError;
pub use store::{RecoveryReport, Store, StoreConfig};
pub use sync::{RegionContent, RegionSnapshot, SyncWrite};

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
