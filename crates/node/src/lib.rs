//! The driftless node as a library: the configuration (`config`), the
//! daemon that runs a node's volumes (`daemon`, `driftless run`), one volume
//! served alone (`serve`), the control socket and its client (`control`),
//! the status table (`render`), and the `BlockTarget` adapters the NBD server
//! writes through (`targets`). The `driftless` binary is a thin CLI over it.

pub mod config;
pub mod control;
pub mod daemon;
mod error;
pub mod events;
mod metrics;
pub mod nbd;
pub mod notify;
pub mod open;
pub mod render;
mod role;
pub mod serve;
pub mod slot;
pub mod targets;
pub mod units;

pub use error::NodeError;

/// Node state under these locks is replaced whole, never left half
/// written: a poisoned lock is taken over.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
