//! Sans-IO record codec: encode a record header into a buffer, decode and
//! validate a record from a byte slice. No file or clock access here, so the
//! codec can be unit-tested, property-tested and fuzzed deterministically.
//!
//! Layout (little-endian, [`RECORD_HEADER_BYTES`] bytes, then the payload):
//!
//! | off | size | field                                                     |
//! |----:|-----:|-----------------------------------------------------------|
//! |   0 |    4 | magic `b"DLJR"`                                           |
//! |   4 |    4 | CRC32 seeded with the salt over bytes 12..104 ‖ payload   |
//! |   8 |    4 | salt tag (the segment salt's seed, see [`Salt`])          |
//! |  12 |    1 | kind (1 write, 2 trim, 3 write-zeroes, 4 barrier)         |
//! |  13 |    3 | reserved, zero                                            |
//! |  16 |    4 | payload length (bytes stored after the header)            |
//! |  20 |    4 | reserved, zero                                            |
//! |  24 |    8 | LSN                                                       |
//! |  32 |    8 | generation id                                             |
//! |  40 |    8 | synced LSN: journal durable watermark when written        |
//! |  48 |    8 | volume offset (bytes)                                     |
//! |  56 |    8 | length on the volume (bytes)                              |
//! |  64 |    8 | timestamp (nanoseconds since the Unix epoch)              |
//! |  72 |   32 | BLAKE3 of the payload (zero when there is no payload)     |

use std::ops::Range;

use uuid::Uuid;

use crate::Lsn;

/// Size of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 104;
/// Hard ceiling on one record's payload; NBD clients rarely exceed 32 MiB.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 32 << 20;
/// Record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"DLJR";

/// The CRC starts after the tag: a CRC seeded with the salt and then fed
/// the salt's own bytes would cancel the salt out (CRC init is XORed into
/// the first four bytes). The tag is checked by equality instead.
const CRC_START: usize = 12;

/// What a record does to the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Data write; the payload holds `length` bytes.
    Write = 1,
    /// Discard of `length` bytes at `offset` (reads back as zeroes here).
    Trim = 2,
    /// Zero `length` bytes at `offset`.
    WriteZeroes = 3,
    /// Ordering marker with no volume effect.
    Barrier = 4,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Write),
            2 => Some(Self::Trim),
            3 => Some(Self::WriteZeroes),
            4 => Some(Self::Barrier),
            _ => None,
        }
    }
}

/// Segment identity mixed into every record CRC, so bytes left over from an
/// earlier use of a file (or from another volume) never validate as current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Salt {
    seed: u32,
}

impl Salt {
    /// Salt of segment `segment` (incarnation `incarnation`) of volume `volume`.
    pub fn new(volume: Uuid, segment: u64, incarnation: u64) -> Self {
        let mut h = crc32fast::Hasher::new();
        h.update(b"driftless-journal-salt");
        h.update(volume.as_bytes());
        h.update(&segment.to_le_bytes());
        h.update(&incarnation.to_le_bytes());
        Salt { seed: h.finalize() }
    }

    /// Salt from a raw seed (the value stored in each record's tag field).
    pub fn from_seed(seed: u32) -> Self {
        Salt { seed }
    }

    /// The 32-bit seed: initial CRC state and the tag stored in each record.
    pub fn seed(&self) -> u32 {
        self.seed
    }
}

/// Decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub lsn: Lsn,
    pub generation: u64,
    pub kind: RecordKind,
    /// Journal durable watermark when this record was written; recovery uses
    /// it to tell a torn unsynced tail from corruption of synced records.
    pub synced_lsn: Lsn,
    pub offset: u64,
    pub length: u64,
    pub timestamp_ns: u64,
    pub payload_len: u32,
    pub payload_blake3: [u8; 32],
}

impl RecordHeader {
    /// Total encoded size (header + payload).
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len as usize
    }
}

/// Why a byte slice is not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        needed_bytes: usize,
        available_bytes: usize,
    },
    #[error("bad record magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("record belongs to another segment incarnation (tag {found:#010x}, expected {expected:#010x})")]
    ForeignSegment { found: u32, expected: u32 },
    #[error("record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("bad record length: {0}")]
    BadLength(&'static str),
    #[error("reserved record bytes are not zero")]
    BadReserved,
    #[error("payload BLAKE3 digest mismatch")]
    BadDigest,
}

/// A record decoded in place: its header, where its payload sits in the
/// input slice, and how many bytes it occupies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub header: RecordHeader,
    pub payload: Range<usize>,
    pub total_len: usize,
}

/// Payload CRC state computed by the appender (off the writer thread) and
/// combined into the record CRC once the header is known.
pub fn payload_crc(payload: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(payload);
    h
}

/// Encodes `header` into `out` (exactly [`RECORD_HEADER_BYTES`]), computing
/// the CRC from `salt`, the header and `payload_crc` (see [`payload_crc`]).
///
/// Panics if the header is inconsistent; callers validate before.
pub fn encode_header(
    header: &RecordHeader,
    salt: &Salt,
    payload_crc: &crc32fast::Hasher,
    out: &mut [u8; RECORD_HEADER_BYTES],
) {
    assert!(header.payload_len as usize <= MAX_RECORD_PAYLOAD_BYTES);
    assert_eq!(payload_crc.total_len(), u64::from(header.payload_len));
    assert_eq!(
        header.payload_len != 0,
        header.kind == RecordKind::Write && header.length != 0
    );
    out.fill(0);
    out[0..4].copy_from_slice(&RECORD_MAGIC);
    out[8..12].copy_from_slice(&salt.seed.to_le_bytes());
    out[12] = header.kind as u8;
    out[16..20].copy_from_slice(&header.payload_len.to_le_bytes());
    out[24..32].copy_from_slice(&header.lsn.to_le_bytes());
    out[32..40].copy_from_slice(&header.generation.to_le_bytes());
    out[40..48].copy_from_slice(&header.synced_lsn.to_le_bytes());
    out[48..56].copy_from_slice(&header.offset.to_le_bytes());
    out[56..64].copy_from_slice(&header.length.to_le_bytes());
    out[64..72].copy_from_slice(&header.timestamp_ns.to_le_bytes());
    out[72..104].copy_from_slice(&header.payload_blake3);
    let mut h = crc32fast::Hasher::new_with_initial(salt.seed);
    h.update(&out[CRC_START..]);
    h.combine(payload_crc);
    out[4..8].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Encodes a whole record (header + payload) into a new vector. Convenience
/// for tests and tools; the writer uses [`encode_header`] and vectored I/O.
pub fn encode_record(header: &RecordHeader, salt: &Salt, payload: &[u8]) -> Vec<u8> {
    assert_eq!(payload.len(), header.payload_len as usize);
    let mut hdr = [0u8; RECORD_HEADER_BYTES];
    encode_header(header, salt, &payload_crc(payload), &mut hdr);
    let mut v = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    v.extend_from_slice(&hdr);
    v.extend_from_slice(payload);
    v
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes and validates the record at the start of `buf`.
///
/// Checks, in order: length of the header, magic, salt tag, kind, reserved
/// bytes, lengths, CRC over salt ‖ header ‖ payload. The BLAKE3 digest is not
/// recomputed here (the CRC already covers it); use [`verify_digest`].
pub fn decode_record(buf: &[u8], salt: &Salt) -> Result<DecodedRecord, RecordError> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::Truncated {
            needed_bytes: RECORD_HEADER_BYTES,
            available_bytes: buf.len(),
        });
    }
    let found: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if found != RECORD_MAGIC {
        return Err(RecordError::BadMagic { found });
    }
    let tag = u32_at(buf, 8);
    if tag != salt.seed {
        return Err(RecordError::ForeignSegment {
            found: tag,
            expected: salt.seed,
        });
    }
    let kind_byte = buf[12];
    if buf[13..16].iter().any(|&b| b != 0) || buf[20..24].iter().any(|&b| b != 0) {
        return Err(RecordError::BadReserved);
    }
    let payload_len = u32_at(buf, 16);
    if payload_len as usize > MAX_RECORD_PAYLOAD_BYTES {
        return Err(RecordError::BadLength(
            "payload exceeds MAX_RECORD_PAYLOAD_BYTES",
        ));
    }
    let total_len = RECORD_HEADER_BYTES + payload_len as usize;
    if buf.len() < total_len {
        return Err(RecordError::Truncated {
            needed_bytes: total_len,
            available_bytes: buf.len(),
        });
    }
    let stored = u32_at(buf, 4);
    let mut h = crc32fast::Hasher::new_with_initial(salt.seed);
    h.update(&buf[CRC_START..total_len]);
    let computed = h.finalize();
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    // Semantic checks come after the CRC: a CRC-valid record with bad fields
    // was written by a buggy encoder, not torn by a crash.
    let kind = RecordKind::from_u8(kind_byte).ok_or(RecordError::BadKind(kind_byte))?;
    let header = RecordHeader {
        lsn: u64_at(buf, 24),
        generation: u64_at(buf, 32),
        kind,
        synced_lsn: u64_at(buf, 40),
        offset: u64_at(buf, 48),
        length: u64_at(buf, 56),
        timestamp_ns: u64_at(buf, 64),
        payload_len,
        payload_blake3: buf[72..104].try_into().expect("32 bytes"),
    };
    if header.lsn == 0 {
        return Err(RecordError::BadLength("LSN 0 is reserved"));
    }
    if header.synced_lsn >= header.lsn {
        return Err(RecordError::BadLength(
            "synced LSN must be below the record LSN",
        ));
    }
    let expect_payload = if kind == RecordKind::Write {
        header.length
    } else {
        0
    };
    if u64::from(payload_len) != expect_payload {
        return Err(RecordError::BadLength(
            "payload length does not match kind/length",
        ));
    }
    if header.offset.checked_add(header.length).is_none() {
        return Err(RecordError::BadLength("offset + length overflows"));
    }
    Ok(DecodedRecord {
        header,
        payload: RECORD_HEADER_BYTES..total_len,
        total_len,
    })
}

/// Recomputes the BLAKE3 digest of a decoded record's payload.
pub fn verify_digest(header: &RecordHeader, payload: &[u8]) -> Result<(), RecordError> {
    let digest = if payload.is_empty() {
        [0u8; 32]
    } else {
        *blake3::hash(payload).as_bytes()
    };
    if digest == header.payload_blake3 {
        Ok(())
    } else {
        Err(RecordError::BadDigest)
    }
}

/// BLAKE3 digest as stored in the header (zero for an empty payload).
pub fn payload_digest(payload: &[u8]) -> [u8; 32] {
    if payload.is_empty() {
        [0u8; 32]
    } else {
        *blake3::hash(payload).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn salt() -> Salt {
        Salt::new(Uuid::from_u128(7), 3, 99)
    }

    fn hdr(kind: RecordKind, payload: &[u8], length: u64) -> RecordHeader {
        RecordHeader {
            lsn: 42,
            generation: 5,
            kind,
            synced_lsn: 40,
            offset: 4096,
            length,
            timestamp_ns: 123,
            payload_len: payload.len() as u32,
            payload_blake3: payload_digest(payload),
        }
    }

    #[test]
    fn roundtrip_write() {
        let p = b"hello world, journal".to_vec();
        let h = hdr(RecordKind::Write, &p, p.len() as u64);
        let buf = encode_record(&h, &salt(), &p);
        let d = decode_record(&buf, &salt()).unwrap();
        assert_eq!(d.header, h);
        assert_eq!(&buf[d.payload.clone()], &p[..]);
        assert_eq!(d.total_len, buf.len());
        verify_digest(&d.header, &buf[d.payload]).unwrap();
    }

    #[test]
    fn roundtrip_trim_without_payload() {
        let h = hdr(RecordKind::Trim, &[], 1 << 20);
        let buf = encode_record(&h, &salt(), &[]);
        assert_eq!(buf.len(), RECORD_HEADER_BYTES);
        assert_eq!(decode_record(&buf, &salt()).unwrap().header, h);
    }

    #[test]
    fn error_variants() {
        let p = vec![9u8; 100];
        let h = hdr(RecordKind::Write, &p, 100);
        let buf = encode_record(&h, &salt(), &p);
        assert!(matches!(
            decode_record(&buf[..50], &salt()),
            Err(RecordError::Truncated {
                needed_bytes: 104,
                ..
            })
        ));
        assert!(matches!(
            decode_record(&buf[..150], &salt()),
            Err(RecordError::Truncated {
                needed_bytes: 204,
                ..
            })
        ));
        let mut b = buf.clone();
        b[0] = b'X';
        assert!(matches!(
            decode_record(&b, &salt()),
            Err(RecordError::BadMagic { .. })
        ));
        let other = Salt::new(Uuid::from_u128(7), 3, 100);
        assert!(matches!(
            decode_record(&buf, &other),
            Err(RecordError::ForeignSegment { .. })
        ));
        let mut b = buf.clone();
        b[150] ^= 1;
        assert!(matches!(
            decode_record(&b, &salt()),
            Err(RecordError::BadCrc { .. })
        ));
        let mut b = buf.clone();
        b[16..20].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(
            decode_record(&b, &salt()),
            Err(RecordError::BadLength(_))
        ));
        let mut b = buf;
        b[14] = 1;
        assert!(matches!(
            decode_record(&b, &salt()),
            Err(RecordError::BadReserved)
        ));
    }

    #[test]
    fn salt_tag_collision_still_fails_crc() {
        // Same tag forced onto a different seed's record: CRC must catch it.
        let p = vec![1u8; 10];
        let h = hdr(RecordKind::Write, &p, 10);
        let mut buf = encode_record(&h, &salt(), &p);
        let other = Salt::from_seed(salt().seed() ^ 1);
        buf[8..12].copy_from_slice(&other.seed().to_le_bytes());
        assert!(matches!(
            decode_record(&buf, &other),
            Err(RecordError::BadCrc { .. })
        ));
    }

    fn arb_header() -> impl Strategy<Value = (RecordHeader, Vec<u8>)> {
        (
            1u64..u64::MAX,
            any::<u64>(),
            0u8..4,
            any::<u64>(),
            0u64..(1 << 40),
            proptest::collection::vec(any::<u8>(), 0..600),
            0u64..(1 << 30),
        )
            .prop_map(|(lsn, generation, k, ts, offset, payload, len)| {
                let kind = [
                    RecordKind::Write,
                    RecordKind::Trim,
                    RecordKind::WriteZeroes,
                    RecordKind::Barrier,
                ][k as usize];
                let payload = if kind == RecordKind::Write {
                    payload
                } else {
                    Vec::new()
                };
                let length = if kind == RecordKind::Write {
                    payload.len() as u64
                } else {
                    len
                };
                let h = RecordHeader {
                    lsn,
                    generation,
                    kind,
                    synced_lsn: lsn / 2,
                    offset,
                    length,
                    timestamp_ns: ts,
                    payload_len: payload.len() as u32,
                    payload_blake3: payload_digest(&payload),
                };
                (h, payload)
            })
    }

    proptest! {
        #[test]
        fn prop_roundtrip((h, p) in arb_header(), vol in any::<u128>(), seg in any::<u64>(), inc in any::<u64>()) {
            let s = Salt::new(Uuid::from_u128(vol), seg, inc);
            let buf = encode_record(&h, &s, &p);
            let d = decode_record(&buf, &s).unwrap();
            prop_assert_eq!(d.header, h);
            prop_assert_eq!(&buf[d.payload], &p[..]);
        }

        #[test]
        fn prop_any_bit_flip_is_detected((h, p) in arb_header(), bit in any::<usize>()) {
            let s = salt();
            let mut buf = encode_record(&h, &s, &p);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record(&buf, &s).is_err());
        }

        #[test]
        fn prop_any_truncation_is_detected((h, p) in arb_header(), cut in any::<usize>()) {
            let s = salt();
            let buf = encode_record(&h, &s, &p);
            let cut = cut % buf.len();
            let is_truncated = matches!(decode_record(&buf[..cut], &s), Err(RecordError::Truncated { .. }));
            prop_assert!(is_truncated);
        }

        #[test]
        fn prop_decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400), seed in any::<u32>()) {
            let _ = decode_record(&buf, &Salt::from_seed(seed));
        }
    }
}
