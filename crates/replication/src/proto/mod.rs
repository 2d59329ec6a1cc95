//! The engine's sans-IO core: no sockets, files or clocks of its own
//! (callers pass `now`), so it is tested deterministically (`tests/pair.rs`
//! runs a primary and a secondary session against each other) and fuzzed.
//!
//! - [`primary`]: the primary's side of a peer session (records, resync and
//!   verify operations in one ordered stream, windows, acks, progress).
//! - [`secondary`]: the secondary's checks of everything it receives, turned
//!   into ordered steps.
//! - [`verdict`]: what a handshake decides from the two histories.
//! - `ship`, `gate`, `lag`, `batch`: the shipping window, the sync gate,
//!   lag and throughput, received-batch checks.

pub(crate) mod batch;
pub(crate) mod gate;
pub(crate) mod lag;
pub mod primary;
pub mod secondary;
pub(crate) mod ship;
pub mod verdict;

#[cfg(test)]
mod tests;
