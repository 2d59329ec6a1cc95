//! Per-consumer dirty-region bitmap and its crash-safe file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::JournalError;
use crate::format::{decode_bitmap_file, encode_bitmap_file, BitmapFile};

/// One bit per `region_bytes` of the volume; a set bit means the region may
/// differ on the consumer's side and must be resent. Two bitmaps are equal
/// when they mark the same regions (the dirty-since time is metadata).
#[derive(Clone, Debug)]
pub struct DirtyBitmap {
    region_bytes: u64,
    regions: u64,
    words: Vec<u64>,
    /// Wall-clock ns of the oldest write marked (0: none noted).
    dirty_since_ns: u64,
}

impl PartialEq for DirtyBitmap {
    fn eq(&self, other: &Self) -> bool {
        (self.region_bytes, self.regions, &self.words)
            == (other.region_bytes, other.regions, &other.words)
    }
}

impl Eq for DirtyBitmap {}

impl DirtyBitmap {
    pub fn new(volume_size_bytes: u64, region_bytes: u64) -> Self {
        assert!(region_bytes.is_power_of_two() && region_bytes >= 512);
        let regions = volume_size_bytes.div_ceil(region_bytes);
        DirtyBitmap {
            region_bytes,
            regions,
            words: vec![0; regions.div_ceil(64) as usize],
            dirty_since_ns: 0,
        }
    }

    /// A bitmap with every region dirty.
    pub fn full(volume_size_bytes: u64, region_bytes: u64) -> Self {
        let mut b = DirtyBitmap::new(volume_size_bytes, region_bytes);
        b.mark(0, volume_size_bytes);
        b
    }

    /// Notes the time of a write marked in the bitmap: the oldest is kept.
    pub fn note_write_time(&mut self, ns: u64) {
        if ns != 0 && (self.dirty_since_ns == 0 || ns < self.dirty_since_ns) {
            self.dirty_since_ns = ns;
        }
    }

    /// Wall-clock ns of the oldest write marked, if one was noted.
    pub fn dirty_since_ns(&self) -> Option<u64> {
        (self.dirty_since_ns != 0).then_some(self.dirty_since_ns)
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

    /// Clears regions; an emptied bitmap forgets its dirty-since time.
    pub fn clear_regions(&mut self, regions: impl IntoIterator<Item = u64>) {
        for r in regions {
            self.clear(r);
        }
        if self.is_empty() {
            self.dirty_since_ns = 0;
        }
    }

    /// The byte range of `region` (the last one may be short).
    pub fn region_range(&self, region: u64, volume_size_bytes: u64) -> (u64, u64) {
        let start = region * self.region_bytes;
        (start, self.region_bytes.min(volume_size_bytes - start))
    }

    /// Number of dirty regions.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// No region is dirty (stops at the first dirty word).
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The first dirty region at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let mut word = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while word < self.words.len() {
            let w = self.words[word] & mask;
            if w != 0 {
                let r = word as u64 * 64 + u64::from(w.trailing_zeros());
                return (r < self.regions).then_some(r);
            }
            word += 1;
            mask = !0;
        }
        None
    }

    /// Dirty region indices in increasing order (skips clean words).
    pub fn dirty_regions(&self) -> impl Iterator<Item = u64> + '_ {
        self.words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .flat_map(|(i, &w)| {
                (0..64u64)
                    .filter(move |b| w & (1 << b) != 0)
                    .map(move |b| i as u64 * 64 + b)
            })
            .filter(move |&r| r < self.regions)
    }

    /// Merges another bitmap of the same geometry.
    pub fn union(&mut self, other: &DirtyBitmap) {
        assert_eq!(self.region_bytes, other.region_bytes);
        assert_eq!(self.regions, other.regions);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.note_write_time(other.dirty_since_ns);
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
    let bytes = encode_bitmap_file(&BitmapFile {
        volume,
        region_bytes: bm.region_bytes,
        regions: bm.regions,
        dirty_since_ns: bm.dirty_since_ns,
        words: bm.words.clone(),
    });
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
        dirty_since_ns: f.dirty_since_ns,
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
        b.note_write_time(50);
        b.note_write_time(70);
        assert_eq!(b.dirty_since_ns(), Some(50));
        b.clear_regions([1]);
        assert_eq!(b.dirty_since_ns(), Some(50), "still dirty");
        b.clear_regions([10]);
        assert!(b.is_empty());
        assert_eq!(b.dirty_since_ns(), None, "an empty bitmap has no age");
        let mut sparse = DirtyBitmap::new(1 << 30, 65536);
        sparse.mark(5 * 65536, 1);
        sparse.mark(200 * 65536, 1);
        assert_eq!(sparse.next_dirty(0), Some(5));
        assert_eq!(sparse.next_dirty(6), Some(200));
        assert_eq!(sparse.next_dirty(201), None);
        let full = DirtyBitmap::full((1 << 20) + 1, 65536);
        assert_eq!(full.count(), 17);
        assert_eq!(full.dirty_regions().last(), Some(16));
        assert_eq!(full.region_range(16, (1 << 20) + 1), (1 << 20, 1));
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
