//! NBD protocol for driftless: a sans-IO codec ([`codec`]) and a tokio server
//! ([`server`]) in front of any [`BlockTarget`].

pub mod codec;
pub mod error;
pub mod proto;
pub mod server;
pub mod target;

pub use error::NbdError;
pub use server::{Export, Listener, Server, ServerLimits};
pub use target::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
