//! The activity log: the coarse extents of the volume that may hold writes
//! whose journal records are not yet durable.
//!
//! A change reaches the volume's page cache right after its record reaches
//! the journal's, and the kernel may write the volume back first: after a
//! power loss the volume can hold writes whose records the journal lost, so
//! it is no longer the volume as of the recovered LSN, and no replica would
//! ever receive those writes. Before a change is applied, its extents are
//! made durable here (one write and fdatasync per batch of new extents,
//! group-committed); an extent leaves only once every write to it is
//! durable in the journal, when the log must make room. After an unclean
//! stop the extents it held are reported ("pinned" until the caller has
//! arranged for them to be compared with every replica) — DRBD's activity
//! log, for the same reason.
//!
//! File: two slots of [`SLOT_BYTES`], the valid one with the higher
//! sequence wins; each holds magic, version, flags (bit 0: closed cleanly),
//! sequence, extent size, the hot and pinned extent numbers, CRC32.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use journal::{Journal, Lsn};

use crate::error::StoreError;
use crate::lock;

const MAGIC: [u8; 8] = *b"DRIFTAL1";
const VERSION: u32 = 1;
const FLAG_CLEAN: u32 = 1;
const HEADER_BYTES: usize = 40;
/// Each copy of the log lives in its own slot of this size.
pub const SLOT_BYTES: usize = 64 << 10;
/// Extents one slot holds (hot and pinned together).
const SLOT_EXTENTS_MAX: usize = (SLOT_BYTES - HEADER_BYTES - 4) / 8;

/// Sizing of the activity log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityConfig {
    /// Extent size (a power of two, a multiple of the region size).
    pub extent_bytes: u64,
    /// Hot extents kept before the least recently written durable one is
    /// dropped (DRBD's `al-extents`).
    pub max_extents: usize,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            extent_bytes: 4 << 20,
            max_extents: 1024,
        }
    }
}

impl ActivityConfig {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if !self.extent_bytes.is_power_of_two() || self.extent_bytes < 4096 {
            return Err(StoreError::Config(
                "activity log extent must be a power of two >= 4KiB".into(),
            ));
        }
        if self.max_extents == 0 || self.max_extents > SLOT_EXTENTS_MAX / 2 {
            return Err(StoreError::Config(format!(
                "activity log extents must be 1..={}",
                SLOT_EXTENTS_MAX / 2
            )));
        }
        Ok(())
    }
}

/// What the log said when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivityReport {
    /// The last run did not close the log cleanly (crash, kill, power loss).
    pub unclean: bool,
    /// Byte ranges that may differ from the volume as of the recovered LSN
    /// (and from every replica): compare them before calling a replica
    /// up to date.
    pub pinned: Vec<(u64, u64)>,
}

#[derive(Default)]
struct State {
    /// Extent → highest LSN written to it while hot.
    hot: HashMap<u64, Lsn>,
    /// What the durable copy of the log holds (hot part).
    persisted: BTreeSet<u64>,
    /// From an unclean stop, until `settle`.
    pinned: BTreeSet<u64>,
    /// Extents waiting for the next transaction.
    wanted: BTreeSet<u64>,
    sequence: u64,
}

pub(crate) struct ActivityLog {
    path: PathBuf,
    file: Arc<File>,
    cfg: ActivityConfig,
    volume_size_bytes: u64,
    state: Mutex<State>,
    /// One transaction at a time; appenders queued on it are served by the
    /// transaction of whoever holds it (group commit).
    commit: tokio::sync::Mutex<()>,
}

impl ActivityLog {
    /// Opens (or creates) the log in `dir`, reports what the last run left,
    /// and marks it in use (not clean) before returning.
    pub(crate) fn open(
        dir: &Path,
        cfg: ActivityConfig,
        volume_size_bytes: u64,
    ) -> Result<(ActivityLog, ActivityReport), StoreError> {
        cfg.validate()?;
        let path = dir.join("activity-log");
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("opening the activity log", &path, e))?;
        let mut st = State::default();
        let mut report = ActivityReport::default();
        if existed {
            match load(&file, &path)? {
                Some(slot) => {
                    st.sequence = slot.sequence;
                    st.pinned = slot.pinned;
                    // Extents of another size from an older configuration:
                    // convert through byte ranges.
                    let convert = |e: u64| {
                        let start = e * slot.extent_bytes;
                        let end = (start + slot.extent_bytes).min(volume_size_bytes);
                        (start / cfg.extent_bytes)..=((end.max(start + 1) - 1) / cfg.extent_bytes)
                    };
                    if slot.extent_bytes != cfg.extent_bytes {
                        st.pinned = st.pinned.iter().flat_map(|&e| convert(e)).collect();
                    }
                    if !slot.clean {
                        report.unclean = true;
                        for e in slot.hot {
                            if slot.extent_bytes == cfg.extent_bytes {
                                st.pinned.insert(e);
                            } else {
                                st.pinned.extend(convert(e));
                            }
                        }
                    }
                }
                None => {
                    // Neither copy is readable: nothing is known about what
                    // was hot, so everything is.
                    tracing::error!(path = %path.display(), "activity log unreadable; treating the whole volume as possibly changed");
                    report.unclean = true;
                    let extents = volume_size_bytes.div_ceil(cfg.extent_bytes);
                    st.pinned = (0..extents).collect();
                }
            }
        }
        let max_extent = volume_size_bytes.div_ceil(cfg.extent_bytes);
        st.pinned.retain(|&e| e < max_extent);
        let log = ActivityLog {
            path,
            file: Arc::new(file),
            cfg,
            volume_size_bytes,
            state: Mutex::new(st),
            commit: tokio::sync::Mutex::new(()),
        };
        report.pinned = log.pinned_ranges();
        let (bytes, slot) = log.encode(&BTreeSet::new(), false);
        write_slot(&log.file, &log.path, &bytes, slot)?;
        Ok((log, report))
    }

    fn pinned_ranges(&self) -> Vec<(u64, u64)> {
        let st = lock(&self.state);
        st.pinned.iter().map(|&e| self.extent_range(e)).collect()
    }

    fn extent_range(&self, e: u64) -> (u64, u64) {
        let start = e * self.cfg.extent_bytes;
        (
            start,
            self.cfg.extent_bytes.min(self.volume_size_bytes - start),
        )
    }

    fn extents(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let eb = self.cfg.extent_bytes;
        (offset / eb)..=((offset + len.max(1) - 1) / eb)
    }

    /// Makes sure `[offset, offset + len)` is in the durable log before the
    /// change with `lsn` is applied to the volume.
    pub(crate) async fn ensure(
        &self,
        offset: u64,
        len: u64,
        lsn: Lsn,
        journal: &Journal,
    ) -> Result<(), StoreError> {
        {
            let mut st = lock(&self.state);
            let mut missing = false;
            for e in self.extents(offset, len) {
                let last = st.hot.entry(e).or_insert(lsn);
                *last = (*last).max(lsn);
                if !st.persisted.contains(&e) {
                    st.wanted.insert(e);
                    missing = true;
                }
            }
            if !missing {
                return Ok(());
            }
        }
        let _commit = self.commit.lock().await;
        let done = {
            let st = lock(&self.state);
            self.extents(offset, len).all(|e| st.persisted.contains(&e))
        };
        if done {
            // A transaction that ran while we queued took our extents.
            return Ok(());
        }
        let mut next = self.make_room(journal.durable_lsn());
        if next.is_none() {
            // Every hot extent has a write the journal has not made durable:
            // make it so, then extents can leave.
            journal.sync(journal.written_lsn()).await?;
            next = self.make_room(journal.durable_lsn());
        }
        let Some((hot, wanted)) = next else {
            return Err(StoreError::Config(format!(
                "activity log full: more than {SLOT_EXTENTS_MAX} extents in use at once"
            )));
        };
        self.write(&hot, false).await?;
        // `persisted` only ever holds what the durable log holds: the wanted
        // extents count once written (queued appenders re-check it).
        let mut st = lock(&self.state);
        for e in wanted {
            st.wanted.remove(&e);
            st.persisted.insert(e);
        }
        Ok(())
    }

    /// The hot set the next transaction writes: what is persisted plus what
    /// is wanted, less the least recently written extents whose writes are
    /// all durable in the journal while the log is over its size. Evicted
    /// extents leave `persisted` at once (so a write to one now waits for a
    /// later transaction). Returns the set and the wanted extents it
    /// includes; `None` when it cannot fit a slot.
    fn make_room(&self, durable_lsn: Lsn) -> Option<(BTreeSet<u64>, Vec<u64>)> {
        let mut st = lock(&self.state);
        let wanted: Vec<u64> = st.wanted.iter().copied().collect();
        let total = st.persisted.len() + wanted.len() + st.pinned.len();
        let mut over = total.saturating_sub(self.cfg.max_extents);
        let mut candidates: Vec<(Lsn, u64)> = st
            .persisted
            .iter()
            .filter_map(|e| st.hot.get(e).map(|&l| (l, *e)))
            .filter(|&(l, _)| l <= durable_lsn)
            .collect();
        candidates.sort_unstable();
        for (_, e) in candidates {
            if over == 0 {
                break;
            }
            st.persisted.remove(&e);
            st.hot.remove(&e);
            over -= 1;
        }
        let hot: BTreeSet<u64> = st.persisted.union(&st.wanted).copied().collect();
        (hot.len() + st.pinned.len() <= SLOT_EXTENTS_MAX).then_some((hot, wanted))
    }

    async fn write(&self, hot: &BTreeSet<u64>, clean: bool) -> Result<(), StoreError> {
        let (bytes, slot) = self.encode(hot, clean);
        let (file, path) = (self.file.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || write_slot(&file, &path, &bytes, slot))
            .await
            .map_err(|e| StoreError::Internal(format!("activity log task: {e}")))?
    }

    fn encode(&self, hot: &BTreeSet<u64>, clean: bool) -> (Vec<u8>, u64) {
        let mut st = lock(&self.state);
        st.sequence += 1;
        let hot: Vec<u64> = if clean {
            Vec::new()
        } else {
            hot.iter().copied().collect()
        };
        let pinned: Vec<u64> = st.pinned.iter().copied().collect();
        let mut b = Vec::with_capacity(HEADER_BYTES + 8 * (hot.len() + pinned.len()) + 4);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(if clean { FLAG_CLEAN } else { 0 }).to_le_bytes());
        b.extend_from_slice(&st.sequence.to_le_bytes());
        b.extend_from_slice(&self.cfg.extent_bytes.to_le_bytes());
        b.extend_from_slice(&(hot.len() as u32).to_le_bytes());
        b.extend_from_slice(&(pinned.len() as u32).to_le_bytes());
        for e in hot.iter().chain(&pinned) {
            b.extend_from_slice(&e.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        assert!(
            b.len() <= SLOT_BYTES,
            "make_room keeps the log within a slot"
        );
        (b, st.sequence % 2)
    }

    /// The pinned extents were handed over (to every replica's bitmap):
    /// they no longer need the log.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        let _commit = self.commit.lock().await;
        let (had, hot) = {
            let mut st = lock(&self.state);
            (std::mem::take(&mut st.pinned), st.persisted.clone())
        };
        if had.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write(&hot, false).await {
            lock(&self.state).pinned = had;
            return Err(e);
        }
        Ok(())
    }

    /// Every change is applied and the volume fsynced (a final checkpoint):
    /// nothing is hot any more.
    pub(crate) async fn close_clean(&self) -> Result<(), StoreError> {
        let _commit = self.commit.lock().await;
        self.write(&BTreeSet::new(), true).await?;
        let mut st = lock(&self.state);
        st.hot.clear();
        st.persisted.clear();
        Ok(())
    }
}

fn write_slot(file: &File, path: &Path, bytes: &[u8], slot: u64) -> Result<(), StoreError> {
    let io = |e| StoreError::io("writing the activity log", path, e);
    let mut padded = bytes.to_vec();
    padded.resize(SLOT_BYTES, 0);
    file.write_all_at(&padded, slot * SLOT_BYTES as u64)
        .map_err(io)?;
    file.sync_data().map_err(io)
}

struct Slot {
    sequence: u64,
    clean: bool,
    extent_bytes: u64,
    hot: Vec<u64>,
    pinned: BTreeSet<u64>,
}

/// The valid slot with the higher sequence; `None` if neither is valid.
fn load(file: &File, path: &Path) -> Result<Option<Slot>, StoreError> {
    let mut best: Option<Slot> = None;
    for slot in 0..2u64 {
        let mut buf = vec![0u8; SLOT_BYTES];
        let mut read = 0;
        while read < buf.len() {
            match file.read_at(&mut buf[read..], slot * SLOT_BYTES as u64 + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("reading the activity log", path, e)),
            }
        }
        if let Some(s) = decode(&buf[..read]) {
            if best.as_ref().is_none_or(|b| s.sequence > b.sequence) {
                best = Some(s);
            }
        }
    }
    Ok(best)
}

fn decode(b: &[u8]) -> Option<Slot> {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().expect("4 bytes"));
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"));
    if b.len() < HEADER_BYTES + 4 || b[..8] != MAGIC || u32_at(8) != VERSION {
        return None;
    }
    let (hot, pinned) = (u32_at(32) as usize, u32_at(36) as usize);
    if hot + pinned > SLOT_EXTENTS_MAX {
        return None;
    }
    let body = HEADER_BYTES + 8 * (hot + pinned);
    if b.len() < body + 4 || crc32fast::hash(&b[..body]) != u32_at(body) {
        return None;
    }
    let extents: Vec<u64> = (0..hot + pinned)
        .map(|i| u64_at(HEADER_BYTES + 8 * i))
        .collect();
    let extent_bytes = u64_at(24);
    if !extent_bytes.is_power_of_two() {
        return None;
    }
    Some(Slot {
        sequence: u64_at(16),
        clean: u32_at(12) & FLAG_CLEAN != 0,
        extent_bytes,
        hot: extents[..hot].to_vec(),
        pinned: extents[hot..].iter().copied().collect(),
    })
}
