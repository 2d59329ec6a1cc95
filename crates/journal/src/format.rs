//! Sans-IO codecs for the segment header, the superblock and the bitmap file.
//! Byte layouts are documented in `docs/journal.md`.

use uuid::Uuid;

use crate::Lsn;

/// Bytes reserved at the start of each segment; records start here.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
const SEGMENT_HEADER_ENCODED_BYTES: usize = 68;
pub const SEGMENT_MAGIC: [u8; 8] = *b"DRIFTSEG";
/// Version 2: generation and consumer flags, the superblock's data state,
/// the bitmap's dirty-since time.
pub const FORMAT_VERSION: u32 = 2;

/// Each superblock copy lives in its own slot of this size.
pub const SUPERBLOCK_SLOT_BYTES: usize = 16384;
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"DRIFTSB1";
/// Limits that keep a superblock within its slot.
pub const MAX_LINEAGE_ENTRIES: usize = 256;
pub const MAX_CONSUMERS: usize = 32;
pub const MAX_CONSUMER_NAME_BYTES: usize = 64;

pub const BITMAP_MAGIC: [u8; 8] = *b"DRIFTBM1";
const BITMAP_HEADER_BYTES: usize = 56;

/// Why a metadata block does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        needed_bytes: usize,
        available_bytes: usize,
    },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    BadVersion(u32),
    #[error("CRC mismatch")]
    BadCrc,
    #[error("invalid field: {0}")]
    BadField(&'static str),
}

fn need(buf: &[u8], n: usize) -> Result<(), FormatError> {
    if buf.len() < n {
        Err(FormatError::Truncated {
            needed_bytes: n,
            available_bytes: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Header at offset 0 of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub volume: Uuid,
    pub segment: u64,
    pub first_lsn: Lsn,
    /// Random per (re)use of the file; part of the record CRC salt.
    pub incarnation: u64,
    pub segment_bytes: u64,
}

impl SegmentHeader {
    pub fn salt(&self) -> crate::record::Salt {
        crate::record::Salt::new(self.volume, self.segment, self.incarnation)
    }

    /// Encodes into a [`SEGMENT_HEADER_BYTES`] block (zero padded).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        b[16..32].copy_from_slice(self.volume.as_bytes());
        b[32..40].copy_from_slice(&self.segment.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[48..56].copy_from_slice(&self.incarnation.to_le_bytes());
        b[56..64].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32fast::hash(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need(b, SEGMENT_HEADER_ENCODED_BYTES)?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&b[0..64]) != u32_at(b, 64) {
            return Err(FormatError::BadCrc);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        if u64::from(u32_at(b, 12)) != SEGMENT_HEADER_BYTES {
            return Err(FormatError::BadField("segment header size"));
        }
        let h = SegmentHeader {
            volume: Uuid::from_bytes(b[16..32].try_into().expect("16 bytes")),
            segment: u64_at(b, 32),
            first_lsn: u64_at(b, 40),
            incarnation: u64_at(b, 48),
            segment_bytes: u64_at(b, 56),
        };
        if h.first_lsn == 0 {
            return Err(FormatError::BadField("first LSN 0"));
        }
        Ok(h)
    }
}

/// One generation of the volume's lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationEntry {
    pub id: u64,
    /// First LSN written in this generation.
    pub start_lsn: Lsn,
    /// The generation began over data of unknown history (a journal created
    /// on a volume that already held data).
    pub unknown_before: bool,
}

/// Persisted state of a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerEntry {
    pub name: String,
    /// Everything up to and including this LSN is no longer needed.
    pub acked_lsn: Lsn,
    /// How many times the consumer was folded into its bitmap.
    pub folds: u64,
    /// Its bitmap's regions may be identical on the peer (they came from an
    /// unclean restart or a verify, not from writes it missed): compare
    /// before sending.
    pub compare: bool,
}

/// The journal's root of trust: written as two alternating copies, each with
/// a sequence number and CRC; the valid copy with the highest sequence wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub sequence: u64,
    pub volume: Uuid,
    pub volume_size_bytes: u64,
    pub region_bytes: u64,
    /// The volume holds (durably) every record up to this LSN.
    pub checkpoint_lsn: Lsn,
    /// Segments numbered below this are reclaimed (spare files).
    pub first_live_segment: u64,
    pub lineage: Vec<GenerationEntry>,
    pub consumers: Vec<ConsumerEntry>,
    /// The volume is not a prefix of its lineage's history (a resync into it
    /// is running or was interrupted).
    pub inconsistent: bool,
}

const SB_FLAG_INCONSISTENT: u32 = 1;
const GEN_FLAG_UNKNOWN_BEFORE: u8 = 1;
const CONSUMER_FLAG_COMPARE: u8 = 1;

impl Superblock {
    /// Encodes into one slot (zero padded to [`SUPERBLOCK_SLOT_BYTES`]).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.lineage.len() <= MAX_LINEAGE_ENTRIES);
        assert!(self.consumers.len() <= MAX_CONSUMERS);
        let mut b = Vec::with_capacity(SUPERBLOCK_SLOT_BYTES);
        b.extend_from_slice(&SUPERBLOCK_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // body length, patched below
        b.extend_from_slice(&self.sequence.to_le_bytes());
        b.extend_from_slice(self.volume.as_bytes());
        b.extend_from_slice(&self.volume_size_bytes.to_le_bytes());
        b.extend_from_slice(&self.region_bytes.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_lsn.to_le_bytes());
        b.extend_from_slice(&self.first_live_segment.to_le_bytes());
        let flags = if self.inconsistent {
            SB_FLAG_INCONSISTENT
        } else {
            0
        };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(self.lineage.len() as u32).to_le_bytes());
        for g in &self.lineage {
            b.extend_from_slice(&g.id.to_le_bytes());
            b.extend_from_slice(&g.start_lsn.to_le_bytes());
            b.push(if g.unknown_before {
                GEN_FLAG_UNKNOWN_BEFORE
            } else {
                0
            });
        }
        b.extend_from_slice(&(self.consumers.len() as u32).to_le_bytes());
        for c in &self.consumers {
            assert!(!c.name.is_empty() && c.name.len() <= MAX_CONSUMER_NAME_BYTES);
            b.push(c.name.len() as u8);
            b.extend_from_slice(c.name.as_bytes());
            b.extend_from_slice(&c.acked_lsn.to_le_bytes());
            b.extend_from_slice(&c.folds.to_le_bytes());
            b.push(if c.compare { CONSUMER_FLAG_COMPARE } else { 0 });
        }
        let len = b.len() as u32;
        b[12..16].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        assert!(b.len() <= SUPERBLOCK_SLOT_BYTES);
        b.resize(SUPERBLOCK_SLOT_BYTES, 0);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need(b, 16)?;
        if b[0..8] != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let body = u32_at(b, 12) as usize;
        if !(80..=SUPERBLOCK_SLOT_BYTES - 4).contains(&body) {
            return Err(FormatError::BadField("superblock body length"));
        }
        need(b, body + 4)?;
        if crc32fast::hash(&b[..body]) != u32_at(b, body) {
            return Err(FormatError::BadCrc);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let b = &b[..body];
        let mut sb = Superblock {
            sequence: u64_at(b, 16),
            volume: Uuid::from_bytes(b[24..40].try_into().expect("16 bytes")),
            volume_size_bytes: u64_at(b, 40),
            region_bytes: u64_at(b, 48),
            checkpoint_lsn: u64_at(b, 56),
            first_live_segment: u64_at(b, 64),
            lineage: Vec::new(),
            consumers: Vec::new(),
            inconsistent: false,
        };
        let flags = u32_at(b, 72);
        if flags & !SB_FLAG_INCONSISTENT != 0 {
            return Err(FormatError::BadField("superblock flags"));
        }
        sb.inconsistent = flags & SB_FLAG_INCONSISTENT != 0;
        let mut p = 76;
        need(b, p + 4)?;
        let n = u32_at(b, p) as usize;
        p += 4;
        if n > MAX_LINEAGE_ENTRIES {
            return Err(FormatError::BadField("lineage length"));
        }
        for _ in 0..n {
            need(b, p + 17)?;
            let flags = b[p + 16];
            if flags & !GEN_FLAG_UNKNOWN_BEFORE != 0 {
                return Err(FormatError::BadField("generation flags"));
            }
            sb.lineage.push(GenerationEntry {
                id: u64_at(b, p),
                start_lsn: u64_at(b, p + 8),
                unknown_before: flags & GEN_FLAG_UNKNOWN_BEFORE != 0,
            });
            p += 17;
        }
        need(b, p + 4)?;
        let n = u32_at(b, p) as usize;
        p += 4;
        if n > MAX_CONSUMERS {
            return Err(FormatError::BadField("consumer count"));
        }
        for _ in 0..n {
            need(b, p + 1)?;
            let l = b[p] as usize;
            p += 1;
            need(b, p + l + 17)?;
            let name = std::str::from_utf8(&b[p..p + l])
                .map_err(|_| FormatError::BadField("consumer name"))?
                .to_owned();
            p += l;
            let flags = b[p + 16];
            if flags & !CONSUMER_FLAG_COMPARE != 0 {
                return Err(FormatError::BadField("consumer flags"));
            }
            sb.consumers.push(ConsumerEntry {
                name,
                acked_lsn: u64_at(b, p),
                folds: u64_at(b, p + 8),
                compare: flags & CONSUMER_FLAG_COMPARE != 0,
            });
            p += 17;
        }
        if p != body {
            return Err(FormatError::BadField("superblock trailing bytes"));
        }
        Ok(sb)
    }
}

/// Encodes a bitmap file: header, the bit words, CRC32 over everything before.
pub fn encode_bitmap_file(f: &BitmapFile) -> Vec<u8> {
    assert_eq!(f.words.len() as u64, f.regions.div_ceil(64));
    let (volume, region_bytes, regions, words) = (f.volume, f.region_bytes, f.regions, &f.words);
    let mut b = Vec::with_capacity(BITMAP_HEADER_BYTES + words.len() * 8 + 4);
    b.extend_from_slice(&BITMAP_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(volume.as_bytes());
    b.extend_from_slice(&region_bytes.to_le_bytes());
    b.extend_from_slice(&regions.to_le_bytes());
    b.extend_from_slice(&f.dirty_since_ns.to_le_bytes());
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decoded bitmap file contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapFile {
    pub volume: Uuid,
    pub region_bytes: u64,
    pub regions: u64,
    /// Wall-clock time (ns since the epoch) of the oldest write marked in
    /// the bitmap; 0 when it is empty.
    pub dirty_since_ns: u64,
    pub words: Vec<u64>,
}

pub fn decode_bitmap_file(b: &[u8]) -> Result<BitmapFile, FormatError> {
    need(b, BITMAP_HEADER_BYTES + 4)?;
    if b[0..8] != BITMAP_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let body = b.len() - 4;
    if crc32fast::hash(&b[..body]) != u32_at(b, body) {
        return Err(FormatError::BadCrc);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::BadVersion(version));
    }
    let regions = u64_at(b, 40);
    let nwords = regions.div_ceil(64) as usize;
    if body != BITMAP_HEADER_BYTES + nwords * 8 {
        return Err(FormatError::BadField("bitmap length"));
    }
    let words = (0..nwords)
        .map(|i| u64_at(b, BITMAP_HEADER_BYTES + i * 8))
        .collect();
    Ok(BitmapFile {
        volume: Uuid::from_bytes(b[16..32].try_into().expect("16 bytes")),
        region_bytes: u64_at(b, 32),
        regions,
        dirty_since_ns: u64_at(b, 48),
        words,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            sequence: 9,
            volume: Uuid::from_u128(1),
            volume_size_bytes: 1 << 30,
            region_bytes: 65536,
            checkpoint_lsn: 77,
            first_live_segment: 3,
            lineage: vec![
                GenerationEntry {
                    id: 1,
                    start_lsn: 1,
                    unknown_before: true,
                },
                GenerationEntry {
                    id: 2,
                    start_lsn: 50,
                    unknown_before: false,
                },
            ],
            consumers: vec![ConsumerEntry {
                name: "dr-site".into(),
                acked_lsn: 60,
                folds: 1,
                compare: true,
            }],
            inconsistent: true,
        }
    }

    #[test]
    fn superblock_roundtrip_and_crc() {
        let s = sb();
        let b = s.encode();
        assert_eq!(b.len(), SUPERBLOCK_SLOT_BYTES);
        assert_eq!(Superblock::decode(&b).unwrap(), s);
        for i in [0usize, 20, 80, 100] {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn segment_header_roundtrip() {
        let h = SegmentHeader {
            volume: Uuid::from_u128(5),
            segment: 12,
            first_lsn: 1000,
            incarnation: 0xdead,
            segment_bytes: 1 << 26,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut c = b.clone();
        c[33] ^= 1;
        assert_eq!(SegmentHeader::decode(&c), Err(FormatError::BadCrc));
        assert!(SegmentHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn bitmap_file_roundtrip() {
        let f = BitmapFile {
            volume: Uuid::from_u128(3),
            region_bytes: 65536,
            regions: 150,
            dirty_since_ns: 1_700_000_000_000_000_000,
            words: vec![1u64, 0, u64::MAX],
        };
        let b = encode_bitmap_file(&f);
        assert_eq!(decode_bitmap_file(&b).unwrap(), f);
        let mut c = b.clone();
        c[50] ^= 4;
        assert_eq!(decode_bitmap_file(&c), Err(FormatError::BadCrc));
    }
}
