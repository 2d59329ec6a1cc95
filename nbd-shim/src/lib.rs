//! NBD protocol for driftless: a sans-IO codec ([`codec`]) and a tokio server
//! ([`server`]) in front of any [`BlockTarget`].

pub mod proto;
pub mod target;

pub use target::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
