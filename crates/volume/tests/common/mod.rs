//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use volume::{EngineConfig, EngineKind, Volume, VolumeError, VolumeOptions};

/// The engines to exercise: threads always, io_uring unless the kernel
/// refuses it (then that part of the test is reported as skipped).
pub fn engines() -> Vec<EngineKind> {
    let mut kinds = vec![EngineKind::Threads];
    match uring_unavailable_reason() {
        None => kinds.push(EngineKind::Uring),
        Some(reason) => skip::part(&format!("io_uring engine not exercised: {reason}")),
    }
    kinds
}

pub fn uring_unavailable_reason() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    match Volume::open(&dir.path().join("probe"), opts(EngineKind::Uring, 4096)) {
        Ok(_) => None,
        Err(VolumeError::UringUnavailable(reason)) => Some(reason),
        Err(other) => Some(other.to_string()),
    }
}

pub fn opts(engine: EngineKind, size_bytes: u64) -> VolumeOptions {
    VolumeOptions {
        size_bytes: Some(size_bytes),
        engine,
        read_only: false,
        create: true,
    }
}

pub fn create(path: &Path, engine: EngineKind, size_bytes: u64) -> Volume {
    Volume::open(path, opts(engine, size_bytes)).expect("create volume")
}

/// Small ring and queue so batching, slot exhaustion and back-pressure are
/// exercised even by modest tests.
/// Small limits, every read and write through the engine.
pub fn tight_config() -> EngineConfig {
    EngineConfig {
        ring_entries: 4,
        threads: 2,
        max_in_flight_ops: 8,
        inline_fast_path: false,
    }
}

/// Deterministic, position-dependent bytes.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed | 1)
        .collect()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
