//! Component tests that drive real files in temporary directories.

mod basic;
mod crash;
mod replica;
mod retention;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use crate::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::record::{decode_record, RecordHeader, RecordKind};
use crate::{Journal, JournalConfig, LogRecord, Recovery, VolumeIdentity};

pub(crate) const VOL_BYTES: u64 = 64 << 10;

pub(crate) fn vol() -> VolumeIdentity {
    VolumeIdentity {
        uuid: Uuid::from_u128(0xd51f7),
        size_bytes: VOL_BYTES,
    }
}

/// Small geometry so tests roll and reclaim segments quickly.
pub(crate) fn small_cfg(dir: &Path) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.segment_bytes = 32 << 10;
    c.capacity_bytes = 16 * (32 << 10);
    c.max_record_payload_bytes = 8 << 10;
    c.max_pending_bytes = 1 << 20;
    c.memory_cache_bytes = 64 << 10;
    c.region_bytes = 4096;
    c.full_wait_timeout = Duration::from_millis(300);
    c.pressure_bytes = 8 * (32 << 10);
    c
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn open(cfg: &JournalConfig) -> Result<(Journal, Recovery), crate::JournalError> {
    Journal::open(cfg.clone(), vol())
}

pub(crate) fn collect(rec: Recovery) -> Vec<LogRecord> {
    rec.map(|r| r.unwrap()).collect()
}

/// In-memory volume model.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Model(pub Vec<u8>);

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model(blake3 {})", blake3::hash(&self.0))
    }
}

impl Model {
    pub fn new() -> Self {
        Model(vec![0; VOL_BYTES as usize])
    }
    /// What an append of `r` does to the volume.
    pub fn apply_new(&mut self, r: &crate::NewRecord) {
        self.change(r.kind, r.offset, r.length, &r.payload);
    }
    /// What redoing a recovered record does to the volume.
    pub fn apply(&mut self, h: &RecordHeader, payload: &[u8]) {
        self.change(h.kind, h.offset, h.length, payload);
    }
    fn change(&mut self, kind: RecordKind, offset: u64, length: u64, payload: &[u8]) {
        let r = offset as usize..(offset + length) as usize;
        match kind {
            RecordKind::Write => self.0[r].copy_from_slice(payload),
            RecordKind::Trim | RecordKind::WriteZeroes => self.0[r].fill(0),
            RecordKind::Barrier => {}
        }
    }
}

/// Every record on disk in log order: (segment file, offset, length, header).
pub(crate) fn record_map(dir: &Path) -> Vec<(PathBuf, u64, usize, RecordHeader)> {
    let mut out = Vec::new();
    for n in crate::segment::list_segments(dir).unwrap() {
        let path = crate::segment::segment_path(dir, n);
        let data = std::fs::read(&path).unwrap();
        let Ok(h) = SegmentHeader::decode(&data) else {
            continue;
        };
        let mut off = SEGMENT_HEADER_BYTES as usize;
        while let Ok(d) = decode_record(&data[off..], &h.salt()) {
            out.push((path.clone(), off as u64, d.total_len, d.header));
            off += d.total_len;
        }
    }
    out.sort_by_key(|r| r.3.lsn);
    out
}

pub(crate) fn payload(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<_>>(),
    )
}
