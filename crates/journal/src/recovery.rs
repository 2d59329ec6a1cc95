//! Opening scan of the segments and the redo iterator handed to the caller.
//!
//! Rules (see docs/journal.md): the log is the longest chain of valid
//! records with consecutive LSNs starting at the first live segment. At the
//! first break (expected LSN `L`), every byte after it is examined; a valid
//! record found there whose `synced_lsn >= L` proves `L` had been made
//! durable, so the break is corruption and opening fails. Otherwise the break
//! is a torn, never-synced tail and the log is cut there.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::JournalError;
use crate::format::{SegmentHeader, Superblock, SEGMENT_HEADER_BYTES};
use crate::record::{
    decode_record, RecordError, RecordHeader, Salt, RECORD_HEADER_BYTES, RECORD_MAGIC,
};
use crate::segment::{list_segments, open_segment, read_at_most, segment_path, zero_tail};
use crate::Lsn;

/// A segment kept after the opening scan.
#[derive(Debug)]
pub(crate) struct LiveSegment {
    pub number: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub header: SegmentHeader,
    pub salt: Salt,
    /// Offset just past the last valid record.
    pub end_offset: u64,
    /// Last LSN held (`first_lsn - 1` when empty).
    pub last_lsn: Lsn,
}

pub(crate) struct ScanOutcome {
    pub live: Vec<LiveSegment>,
    pub spares: Vec<u64>,
    pub last_lsn: Lsn,
    pub dropped_bytes: u64,
}

struct Summary {
    number: u64,
    path: PathBuf,
    file: File,
    header: Option<SegmentHeader>,
    end_offset: u64,
    last_lsn: Lsn,
    stop: String,
}

fn read_all(file: &File, path: &std::path::Path) -> Result<Vec<u8>, JournalError> {
    let len = file
        .metadata()
        .map_err(|e| JournalError::io("stat segment", path, e))?
        .len();
    let mut buf = vec![0u8; len as usize];
    let n = read_at_most(file, path, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Bytes a torn record at `off` claimed, when it is recognisably ours.
fn torn_len(data: &[u8], off: usize, salt: &Salt) -> u64 {
    if data.len() < off + 20 || data[off..off + 4] != RECORD_MAGIC {
        return 0;
    }
    let tag = u32::from_le_bytes(data[off + 8..off + 12].try_into().expect("4 bytes"));
    if tag != salt.seed() {
        return 0;
    }
    let claimed = u32::from_le_bytes(data[off + 16..off + 20].try_into().expect("4 bytes"));
    (RECORD_HEADER_BYTES as u64 + u64::from(claimed)).min((data.len() - off) as u64)
}

pub(crate) fn scan(
    dir: &std::path::Path,
    volume: Uuid,
    sb: &Superblock,
) -> Result<ScanOutcome, JournalError> {
    let mut spares = Vec::new();
    let mut summaries = Vec::new();
    for n in list_segments(dir)? {
        if n < sb.first_live_segment {
            spares.push(n);
            continue;
        }
        let path = segment_path(dir, n);
        let file = open_segment(&path)?;
        let data = read_all(&file, &path)?;
        let header = SegmentHeader::decode(&data)
            .ok()
            .filter(|h| h.volume == volume && h.segment == n);
        let (mut end_offset, mut last_lsn, mut stop) = (0, 0, "bad segment header".to_string());
        if let Some(h) = &header {
            let salt = h.salt();
            let mut off = SEGMENT_HEADER_BYTES as usize;
            let mut lsn = h.first_lsn;
            stop = loop {
                match decode_record(&data[off.min(data.len())..], &salt) {
                    Ok(d) if d.header.lsn == lsn => {
                        off += d.total_len;
                        lsn += 1;
                    }
                    Ok(d) => break format!("unexpected LSN {}", d.header.lsn),
                    Err(e) => break e.to_string(),
                }
            };
            end_offset = off as u64;
            last_lsn = lsn - 1;
        }
        summaries.push(Summary {
            number: n,
            path,
            file,
            header,
            end_offset,
            last_lsn,
            stop,
        });
    }

    // The chain: consecutive segments whose LSNs continue exactly.
    let mut chain_len = 0;
    let mut expected: Option<Lsn> = None;
    for s in &summaries {
        let Some(h) = &s.header else { break };
        if expected.is_some_and(|e| e != h.first_lsn) {
            break;
        }
        chain_len += 1;
        expected = Some(s.last_lsn + 1);
    }
    let cut_lsn = expected.unwrap_or(sb.checkpoint_lsn + 1);

    // Evidence scan of every byte past the break.
    let mut dropped_bytes = 0u64;
    let mut zero_cut_segment = false;
    let (cut_path, cut_offset) = match chain_len {
        0 => (
            summaries
                .first()
                .map(|s| s.path.clone())
                .unwrap_or_else(|| dir.to_owned()),
            0,
        ),
        n => (summaries[n - 1].path.clone(), summaries[n - 1].end_offset),
    };
    let cut_detail = match chain_len {
        0 => summaries
            .first()
            .map(|s| s.stop.clone())
            .unwrap_or_default(),
        n => summaries[n - 1].stop.clone(),
    };
    let first_scanned = chain_len.saturating_sub(1);
    for (i, s) in summaries.iter().enumerate().skip(first_scanned) {
        let Some(h) = &s.header else { continue };
        let salt = h.salt();
        let data = read_all(&s.file, &s.path)?;
        let mut from = SEGMENT_HEADER_BYTES as usize;
        if i + 1 == chain_len {
            let off = s.end_offset as usize;
            dropped_bytes += torn_len(&data, off, &salt);
            if dropped_bytes > 0 {
                zero_cut_segment = true;
            }
            from = off + 1;
        }
        let mut pos = from;
        while pos + 4 <= data.len() {
            let Some(rel) = data[pos..].windows(4).position(|w| w == RECORD_MAGIC) else {
                break;
            };
            let at = pos + rel;
            match decode_record(&data[at..], &salt) {
                Ok(d) if d.header.lsn >= cut_lsn => {
                    if d.header.synced_lsn >= cut_lsn {
                        return Err(JournalError::CorruptRecord {
                            path: cut_path,
                            offset: cut_offset,
                            lsn: cut_lsn,
                            later_lsn: d.header.lsn,
                            detail: cut_detail,
                        });
                    }
                    dropped_bytes += d.total_len as u64;
                    if i + 1 == chain_len {
                        zero_cut_segment = true;
                    }
                    pos = at + d.total_len;
                }
                Ok(_) | Err(_) => pos = at + 1,
            }
        }
    }

    let checkpoint = sb.checkpoint_lsn;
    let last_lsn = if chain_len == 0 {
        checkpoint
    } else {
        summaries[chain_len - 1].last_lsn
    };
    if last_lsn < checkpoint {
        return Err(JournalError::MissingRecords {
            last_lsn,
            checkpoint_lsn: checkpoint,
        });
    }
    if let Some(first) = summaries.first().filter(|_| chain_len > 0) {
        let first_lsn = first.header.as_ref().expect("chain header").first_lsn;
        if first_lsn > checkpoint + 1 {
            return Err(JournalError::MissingRecords {
                last_lsn: first_lsn - 1,
                checkpoint_lsn: checkpoint,
            });
        }
    }

    if dropped_bytes > 0 {
        tracing::warn!(
            segment = %cut_path.display(),
            offset = cut_offset,
            lsn = cut_lsn,
            dropped_bytes,
            reason = %cut_detail,
            "journal tail was torn (never synced); cut at the last valid record"
        );
    }

    let mut live = Vec::with_capacity(chain_len);
    let mut removed = false;
    for (i, s) in summaries.into_iter().enumerate() {
        if i >= chain_len {
            // Past the cut: removed, not kept as spares, so a later chain can
            // never continue into stale records (they would validate).
            std::fs::remove_file(&s.path)
                .map_err(|e| JournalError::io("remove segment past the cut", &s.path, e))?;
            removed = true;
            continue;
        }
        let header = s.header.expect("chain segments have headers");
        if i + 1 == chain_len && zero_cut_segment {
            zero_tail(&s.file, &s.path, s.end_offset, header.segment_bytes)?;
        } else {
            // Everything recovered counts as durable from now on.
            s.file
                .sync_data()
                .map_err(|e| JournalError::io("fdatasync segment", &s.path, e))?;
        }
        live.push(LiveSegment {
            number: s.number,
            path: s.path,
            file: Arc::new(s.file),
            salt: header.salt(),
            header,
            end_offset: s.end_offset,
            last_lsn: s.last_lsn,
        });
    }
    if removed {
        crate::bitmap::sync_dir(dir)?;
    }
    spares.sort_unstable();
    Ok(ScanOutcome {
        live,
        spares,
        last_lsn,
        dropped_bytes,
    })
}

/// One record to redo onto the volume.
#[derive(Clone, Debug)]
pub struct LogRecord {
    pub header: RecordHeader,
    pub payload: Bytes,
}

/// Every record after the checkpoint, in LSN order, read lazily one segment
/// at a time. Redo them onto the volume (idempotent), fsync the volume, then
/// call `Journal::checkpoint(last_lsn)`.
pub struct Recovery {
    pub checkpoint_lsn: Lsn,
    /// Last valid LSN in the journal (equals `checkpoint_lsn` when nothing to redo).
    pub last_lsn: Lsn,
    /// Bytes of torn, never-synced records dropped at the tail.
    pub dropped_bytes: u64,
    segments: Vec<(Arc<File>, PathBuf, Salt, u64)>,
    seg_idx: usize,
    buf: Bytes,
    pos: usize,
    next_lsn: Lsn,
}

impl Recovery {
    pub(crate) fn new(
        live: &[LiveSegment],
        checkpoint_lsn: Lsn,
        last_lsn: Lsn,
        dropped: u64,
    ) -> Self {
        let segments = live
            .iter()
            .filter(|s| s.last_lsn > checkpoint_lsn)
            .map(|s| (s.file.clone(), s.path.clone(), s.salt, s.end_offset))
            .collect();
        Recovery {
            checkpoint_lsn,
            last_lsn,
            dropped_bytes: dropped,
            segments,
            seg_idx: 0,
            buf: Bytes::new(),
            pos: 0,
            next_lsn: checkpoint_lsn + 1,
        }
    }

    /// Number of records still to redo.
    pub fn remaining(&self) -> u64 {
        self.last_lsn + 1 - self.next_lsn
    }

    fn next_inner(&mut self) -> Result<Option<LogRecord>, JournalError> {
        loop {
            if self.next_lsn > self.last_lsn {
                return Ok(None);
            }
            if self.pos >= self.buf.len() {
                let Some((file, path, _, end)) = self.segments.get(self.seg_idx) else {
                    return Ok(None);
                };
                let mut v = vec![0u8; *end as usize];
                let n = read_at_most(file, path, &mut v, 0)?;
                v.truncate(n);
                self.buf = Bytes::from(v);
                self.pos = SEGMENT_HEADER_BYTES as usize;
                self.seg_idx += 1;
                continue;
            }
            let (_, path, salt, _) = &self.segments[self.seg_idx - 1];
            let d = decode_record(&self.buf[self.pos..], salt).map_err(|e: RecordError| {
                // Validated by the scan; a failure now means the file changed under us.
                JournalError::CorruptRecord {
                    path: path.clone(),
                    offset: self.pos as u64,
                    lsn: self.next_lsn,
                    later_lsn: self.next_lsn,
                    detail: format!("changed since the opening scan: {e}"),
                }
            })?;
            let start = self.pos;
            self.pos += d.total_len;
            if d.header.lsn < self.next_lsn {
                continue;
            }
            assert_eq!(d.header.lsn, self.next_lsn, "recovery LSNs are consecutive");
            self.next_lsn += 1;
            let payload = self
                .buf
                .slice(start + d.payload.start..start + d.payload.end);
            return Ok(Some(LogRecord {
                header: d.header,
                payload,
            }));
        }
    }
}

impl Iterator for Recovery {
    type Item = Result<LogRecord, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_inner().transpose()
    }
}
