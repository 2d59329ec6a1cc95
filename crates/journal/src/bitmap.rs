//! Per-consumer dirty-region bitmap and its crash-safe file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::JournalError;
use crate::format::{decode_bitmap_file, encode_bitmap_file};

/// One bit per `region_bytes` of the volume; a set bit means the region may
/// differ on the consumer's side and must be resent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    region_bytes: u64,
    regions: u64,
    words: Vec<u64>,
}

impl DirtyBitmap {
    pub fn new(volume_size_bytes: u64, region_bytes: u64) -> Self {
        assert!(region_bytes.is_power_of_two() && region_bytes >= 512);
        let regions = volume_size_bytes.div_ceil(region_bytes);
        DirtyBitmap {
            region_bytes,
            regions,
            words: vec![0; regions.div_ceil(64) as usize],
        }
    }

    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    /// Number of regions covering the volume.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Marks every region touched by `[offset, offset + len)`.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / self.region_bytes;
        let last = (offset.saturating_add(len) - 1) / self.region_bytes;
        // Out-of-volume extents are rejected at append; clamp defensively.
        let last = last.min(self.regions.saturating_sub(1));
        for r in first..=last {
            self.words[(r / 64) as usize] |= 1 << (r % 64);
        }
    }

    pub fn is_dirty(&self, region: u64) -> bool {
        region < self.regions && self.words[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    /// Clears one region (after the replication engine resent it).
    pub fn clear(&mut self, region: u64) {
        if region < self.regions {
            self.words[(region / 64) as usize] &= !(1 << (region % 64));
        }
    }

    /// Number of dirty regions.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// No region is dirty (stops at the first dirty word).
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Dirty region indices in increasing order.
    pub fn dirty_regions(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.regions).filter(move |&r| self.is_dirty(r))
    }

    /// Merges another bitmap of the same geometry.
    pub fn union(&mut self, other: &DirtyBitmap) {
        assert_eq!(self.region_bytes, other.region_bytes);
        assert_eq!(self.regions, other.regions);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
}

pub(crate) fn bitmap_path(dir: &Path, consumer: &str) -> PathBuf {
    dir.join(format!("bitmap-{consumer}.bin"))
}

/// Writes the bitmap durably: temp file, fdatasync, rename, fsync directory.
/// A crash leaves either the old or the new file, never a mix.
pub(crate) fn persist_bitmap(
    dir: &Path,
    consumer: &str,
    volume: Uuid,
    bm: &DirtyBitmap,
) -> Result<(), JournalError> {
    let path = bitmap_path(dir, consumer);
    let tmp = dir.join(format!("bitmap-{consumer}.tmp"));
    let bytes = encode_bitmap_file(volume, bm.region_bytes, bm.regions, &bm.words);
    let io = |e| JournalError::io("write bitmap", &tmp, e);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_data().map_err(io)?;
    fs::rename(&tmp, &path).map_err(|e| JournalError::io("rename bitmap", &path, e))?;
    sync_dir(dir)
}

/// Loads a consumer's bitmap; a missing file means "clean".
pub(crate) fn load_bitmap(
    dir: &Path,
    consumer: &str,
    volume: Uuid,
    volume_size_bytes: u64,
    region_bytes: u64,
) -> Result<DirtyBitmap, JournalError> {
    let path = bitmap_path(dir, consumer);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DirtyBitmap::new(volume_size_bytes, region_bytes))
        }
        Err(e) => return Err(JournalError::io("read bitmap", &path, e)),
    };
    let f = decode_bitmap_file(&bytes).map_err(|e| JournalError::CorruptMetadata {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let expect = DirtyBitmap::new(volume_size_bytes, region_bytes);
    if f.volume != volume || f.region_bytes != region_bytes || f.regions != expect.regions {
        return Err(JournalError::CorruptMetadata {
            path,
            reason: "bitmap geometry or volume id does not match the journal".into(),
        });
    }
    Ok(DirtyBitmap {
        region_bytes,
        regions: f.regions,
        words: f.words,
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_covers_touched_regions() {
        let mut b = DirtyBitmap::new(1 << 20, 65536);
        assert_eq!(b.regions(), 16);
        b.mark(65535, 2);
        assert_eq!(b.dirty_regions().collect::<Vec<_>>(), vec![0, 1]);
        b.mark(10 * 65536, 65536);
        assert_eq!(b.count(), 3);
        b.clear(0);
        assert_eq!(b.dirty_regions().collect::<Vec<_>>(), vec![1, 10]);
        b.mark(0, 0);
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn persist_and_load() {
        let d = tempfile::tempdir().unwrap();
        let v = Uuid::from_u128(2);
        let mut b = DirtyBitmap::new(1 << 24, 65536);
        b.mark(123_456, 1_000_000);
        persist_bitmap(d.path(), "peer", v, &b).unwrap();
        assert_eq!(load_bitmap(d.path(), "peer", v, 1 << 24, 65536).unwrap(), b);
        assert_eq!(
            load_bitmap(d.path(), "other", v, 1 << 24, 65536)
                .unwrap()
                .count(),
            0
        );
        assert!(load_bitmap(d.path(), "peer", Uuid::from_u128(3), 1 << 24, 65536).is_err());
    }
}
