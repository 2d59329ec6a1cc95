//! NBD protocol for driftless: a sans-IO codec ([`codec`]) and a tokio server
//! ([`server`]) in front of any [`BlockTarget`], and a small blocking
//! [`client`] for workloads and checkers.

pub mod client;
pub mod codec;
pub mod error;
pub mod proto;
pub mod server;
pub mod target;

pub use error::NbdError;
pub use server::{Export, Listener, Server, ServerLimits};
pub use target::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
