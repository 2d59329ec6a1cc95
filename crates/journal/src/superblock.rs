//! The superblock file: two alternating copies, the valid one with the
//! highest sequence wins. Created once with the volume's first generation;
//! rewritten (other slot, then fdatasync) whenever metadata changes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::bitmap::sync_dir;
use crate::config::{JournalConfig, VolumeIdentity};
use crate::error::JournalError;
use crate::format::{ConsumerEntry, Superblock, SUPERBLOCK_SLOT_BYTES};
use crate::segment::read_at_most;
use crate::shared::Meta;

pub(crate) fn load_superblock(path: &Path) -> Result<(Superblock, File), JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("open superblock", path, e))?;
    let mut best: Option<Superblock> = None;
    for slot in 0..2u64 {
        let mut buf = vec![0u8; SUPERBLOCK_SLOT_BYTES];
        let n = read_at_most(&file, path, &mut buf, slot * SUPERBLOCK_SLOT_BYTES as u64)?;
        buf.truncate(n);
        if let Ok(sb) = Superblock::decode(&buf) {
            if best.as_ref().is_none_or(|b| sb.sequence > b.sequence) {
                best = Some(sb);
            }
        }
    }
    let sb = best.ok_or_else(|| JournalError::CorruptMetadata {
        path: path.to_owned(),
        reason: "neither superblock copy is valid".into(),
    })?;
    Ok((sb, file))
}

pub(crate) fn create_superblock(
    cfg: &JournalConfig,
    volume: VolumeIdentity,
    path: &Path,
) -> Result<(), JournalError> {
    let sb = Superblock {
        sequence: 1,
        volume: volume.uuid,
        volume_size_bytes: volume.size_bytes,
        region_bytes: cfg.region_bytes,
        checkpoint_lsn: 0,
        first_live_segment: 0,
        // No history yet: the owner starts the first generation (a primary)
        // or takes one over (a replica being synced).
        lineage: Vec::new(),
        consumers: Vec::new(),
        inconsistent: false,
    };
    let tmp = cfg.dir.join("superblock.tmp");
    let io = |e| JournalError::io("create superblock", &tmp, e);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    let mut bytes = vec![0u8; SUPERBLOCK_SLOT_BYTES];
    bytes.extend_from_slice(&sb.encode());
    f.write_all_at(&bytes, 0).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| JournalError::io("create superblock", path, e))?;
    sync_dir(&cfg.dir)
}

impl Meta {
    /// Writes the next superblock copy into the other slot and syncs it.
    pub(crate) fn persist(&mut self) -> Result<(), JournalError> {
        self.sb.consumers = self
            .consumers
            .iter()
            .map(|(name, c)| ConsumerEntry {
                name: name.clone(),
                acked_lsn: c.acked_lsn,
                folds: c.folds,
                compare: c.compare,
            })
            .collect();
        self.sb.sequence += 1;
        let slot = (self.sb.sequence % 2) * SUPERBLOCK_SLOT_BYTES as u64;
        let bytes = self.sb.encode();
        let io = |e| JournalError::io("write superblock", &self.sb_path, e);
        self.sb_file.write_all_at(&bytes, slot).map_err(io)?;
        self.sb_file.sync_data().map_err(io)
    }
}
