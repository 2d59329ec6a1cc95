//! Sequential reads of records back from the segment files (consumers
//! that fell out of the cache, and folds).

use bytes::Bytes;

use crate::error::JournalError;
use crate::format::SEGMENT_HEADER_BYTES;
use crate::record::{decode_record, RecordError, RecordKind};
use crate::recovery::LogRecord;
use crate::segment::read_at_most;
use crate::shared::{lock, Inner, SegInfo};
use crate::Lsn;

/// Where a sequential disk read stopped: (segment number, offset, LSN there).
pub(crate) type DiskPos = (u64, u64, Lsn);

/// Disk reads for consumers and folds use windows of at least this size.
pub(crate) const READ_WINDOW_BYTES: usize = 1 << 20;

/// Reads consecutive records `next..=upto` (at least one, then up to
/// `max_bytes`) from the segment files. `pos` resumes a previous read.
pub(crate) fn read_records(
    segs: &[SegInfo],
    pos: Option<DiskPos>,
    next: Lsn,
    upto: Lsn,
    max_bytes: usize,
    headers_only: bool,
) -> Result<(Vec<LogRecord>, Option<DiskPos>), JournalError> {
    let Some(mut idx) = segs.iter().rposition(|s| s.first_lsn <= next) else {
        return Err(JournalError::InvalidRequest(format!(
            "LSN {next} is no longer in the journal"
        )));
    };
    let (mut offset, mut lsn) = match pos {
        Some((seg, off, l)) if seg == segs[idx].number && l <= next => (off, l),
        _ => (SEGMENT_HEADER_BYTES, segs[idx].first_lsn),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut window = READ_WINDOW_BYTES;
    while lsn <= upto && (out.is_empty() || bytes < max_bytes) {
        if idx + 1 < segs.len() && lsn >= segs[idx + 1].first_lsn {
            idx += 1;
            offset = SEGMENT_HEADER_BYTES;
            lsn = segs[idx].first_lsn;
            continue;
        }
        let s = &segs[idx];
        let mut buf = vec![0u8; window];
        let n = read_at_most(&s.file, &s.path, &mut buf, offset)?;
        buf.truncate(n);
        let buf = Bytes::from(buf);
        let mut p = 0;
        let mut progressed = false;
        let seg_end_lsn = segs.get(idx + 1).map_or(Lsn::MAX, |n| n.first_lsn);
        while lsn <= upto && lsn < seg_end_lsn && (out.is_empty() || bytes < max_bytes) {
            match decode_record(&buf[p..], &s.salt) {
                Ok(d) => {
                    if d.header.lsn != lsn {
                        return Err(JournalError::CorruptRecord {
                            path: s.path.clone(),
                            offset: offset + p as u64,
                            lsn,
                            later_lsn: d.header.lsn,
                            detail: "unexpected LSN while reading".into(),
                        });
                    }
                    if lsn >= next {
                        let payload = if headers_only {
                            Bytes::new()
                        } else {
                            buf.slice(p + d.payload.start..p + d.payload.end)
                        };
                        bytes += d.total_len;
                        out.push(LogRecord {
                            header: d.header,
                            payload,
                        });
                    }
                    p += d.total_len;
                    lsn += 1;
                    progressed = true;
                }
                Err(RecordError::Truncated { needed_bytes, .. })
                    if n == window || needed_bytes > window =>
                {
                    if !progressed {
                        window = window.max(needed_bytes);
                    }
                    break;
                }
                Err(e) => {
                    return Err(JournalError::CorruptRecord {
                        path: s.path.clone(),
                        offset: offset + p as u64,
                        lsn,
                        later_lsn: lsn,
                        detail: format!("while reading: {e}"),
                    })
                }
            }
        }
        offset += p as u64;
    }
    Ok((out, Some((segs[idx].number, offset, lsn))))
}

/// One record as far as lag and rollback care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    pub lsn: Lsn,
    pub kind: RecordKind,
    pub offset: u64,
    pub length: u64,
    /// Bytes the record takes in the journal (header and payload).
    pub bytes: u64,
    pub timestamp_ns: u64,
}

impl Inner {
    /// See [`crate::Journal::records_since`].
    pub(crate) fn records_since(
        &self,
        from: Lsn,
    ) -> Result<Option<Vec<RecordSummary>>, JournalError> {
        let (segs, written) = {
            let meta = lock(&self.meta);
            let written = *self.written_tx.borrow();
            (
                meta.segments.iter().cloned().collect::<Vec<SegInfo>>(),
                written,
            )
        };
        let from = from.max(1);
        if from > written {
            return Ok(Some(Vec::new()));
        }
        if segs.first().is_none_or(|s| s.first_lsn > from) {
            return Ok(None);
        }
        let mut out = Vec::new();
        let (mut lsn, mut pos) = (from, None);
        while lsn <= written {
            let (recs, p) = read_records(&segs, pos, lsn, written, READ_WINDOW_BYTES, true)?;
            pos = p;
            for r in &recs {
                out.push(RecordSummary {
                    lsn: r.header.lsn,
                    kind: r.header.kind,
                    offset: r.header.offset,
                    length: r.header.length,
                    bytes: r.header.encoded_len() as u64,
                    timestamp_ns: r.header.timestamp_ns,
                });
            }
            lsn = match recs.last() {
                Some(r) => r.header.lsn + 1,
                None => break,
            };
        }
        Ok(Some(out))
    }
}
