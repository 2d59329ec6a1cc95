//! Message types and their payload encodings (little-endian, hand written).

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::error::{malformed, unencodable, WireError};
use crate::Limits;

/// Message type codes carried in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    Hello = 0x0001,
    HelloAck = 0x0002,
    Refuse = 0x0003,
    SplitBrain = 0x0004,
    Records = 0x0010,
    Ack = 0x0011,
    Flush = 0x0012,
    FlushAck = 0x0013,
    Ping = 0x0020,
    Pong = 0x0021,
    ResyncBegin = 0x0030,
    ResyncBeginAck = 0x0031,
    SyncOps = 0x0032,
    SyncAck = 0x0033,
    SyncNeed = 0x0034,
    VerifyMismatch = 0x0035,
    Bye = 0x0040,
}

impl MessageType {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x0001 => Self::Hello,
            0x0002 => Self::HelloAck,
            0x0003 => Self::Refuse,
            0x0004 => Self::SplitBrain,
            0x0010 => Self::Records,
            0x0011 => Self::Ack,
            0x0012 => Self::Flush,
            0x0013 => Self::FlushAck,
            0x0020 => Self::Ping,
            0x0021 => Self::Pong,
            0x0030 => Self::ResyncBegin,
            0x0031 => Self::ResyncBeginAck,
            0x0032 => Self::SyncOps,
            0x0033 => Self::SyncAck,
            0x0034 => Self::SyncNeed,
            0x0035 => Self::VerifyMismatch,
            0x0040 => Self::Bye,
            _ => return None,
        })
    }
}

/// Role a node announces in its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(Role::Primary),
            2 => Ok(Role::Secondary),
            _ => Err(malformed("hello.role", "not 1 (primary) or 2 (secondary)")),
        }
    }
}

/// One generation of a volume's history: an id and the LSN where it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineageEntry {
    pub generation_id: u64,
    pub start_lsn: u64,
    /// The generation began over data of unknown history (a journal created
    /// on a volume that already held data): a peer whose lineage is
    /// unrelated may still be a copy of that data, so it is compared and
    /// resynced rather than refused.
    pub unknown_before: bool,
}

/// Whether a node's copy is a prefix of its lineage's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataState {
    /// Exactly the volume as of its last applied LSN.
    Consistent,
    /// A resync was interrupted or has not finished: not a prefix.
    Inconsistent,
}

impl DataState {
    fn to_u8(self) -> u8 {
        match self {
            DataState::Consistent => 1,
            DataState::Inconsistent => 2,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(DataState::Consistent),
            2 => Ok(DataState::Inconsistent),
            _ => Err(malformed(
                "hello.data_state",
                "not 1 (consistent) or 2 (inconsistent)",
            )),
        }
    }
}

/// Handshake message; also the body of `HelloAck` (the acceptor's own view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// Node name (often a UUID in text form), 1..=255 bytes of UTF-8.
    pub node_id: String,
    pub volume_uuid: Uuid,
    pub volume_size_bytes: u64,
    pub region_bytes: u64,
    /// Oldest generation first; `start_lsn` never decreases.
    pub lineage: Vec<LineageEntry>,
    pub role: Role,
    /// A secondary: the last LSN its journal holds; a primary: its durable LSN.
    pub durable_lsn: u64,
    pub data_state: DataState,
    /// Sent by a primary whose operator asked to overwrite this peer
    /// (`resync --full`): an unrelated history is replaced, not refused.
    pub overwrite: bool,
    /// The sender's volume holds no data (holes only): a full sync into it
    /// has nothing to compare.
    pub empty: bool,
    /// A secondary whose operator gave up its changes since the fork with
    /// the primary (`resync --discard-local`): a diverged or newer history
    /// is rolled back from the fork instead of refused.
    pub discarding: bool,
    /// A primary that has accepted no write since an unclean stop (it
    /// waits to learn whether a newer primary exists).
    pub fenced: bool,
}

/// Why a handshake was refused. Unknown codes are kept, so newer peers can add codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    UnsupportedVersion,
    VolumeMismatch,
    SizeMismatch,
    RegionSizeMismatch,
    LineageDiverged,
    RoleConflict,
    Busy,
    NotAllowed,
    /// The peer holds another history of this volume (no common
    /// generation): nothing is written until an operator asks to overwrite.
    UnrelatedData,
    /// The Hello names another node than the verified certificate.
    IdentityMismatch,
    Other(u16),
}

impl RefuseCode {
    pub fn to_u16(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 1,
            Self::VolumeMismatch => 2,
            Self::SizeMismatch => 3,
            Self::RegionSizeMismatch => 4,
            Self::LineageDiverged => 5,
            Self::RoleConflict => 6,
            Self::Busy => 7,
            Self::NotAllowed => 8,
            Self::UnrelatedData => 9,
            Self::IdentityMismatch => 10,
            Self::Other(v) => v,
        }
    }
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::UnsupportedVersion,
            2 => Self::VolumeMismatch,
            3 => Self::SizeMismatch,
            4 => Self::RegionSizeMismatch,
            5 => Self::LineageDiverged,
            6 => Self::RoleConflict,
            7 => Self::Busy,
            8 => Self::NotAllowed,
            9 => Self::UnrelatedData,
            10 => Self::IdentityMismatch,
            other => Self::Other(other),
        }
    }
}

/// Why a session is being closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByeCode {
    Shutdown,
    Demoted,
    Promoted,
    ProtocolError,
    /// The primary will not stream to this secondary until it is resynced
    /// (its history cannot continue from the journal).
    NeedsResync,
    Other(u16),
}

impl ByeCode {
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Shutdown => 1,
            Self::Demoted => 2,
            Self::Promoted => 3,
            Self::ProtocolError => 4,
            Self::NeedsResync => 100,
            Self::Other(v) => v,
        }
    }
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::Shutdown,
            2 => Self::Demoted,
            3 => Self::Promoted,
            4 => Self::ProtocolError,
            100 => Self::NeedsResync,
            other => Self::Other(other),
        }
    }
}

/// What a journal record does to the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `len` bytes of payload written at `offset`.
    Write,
    Trim,
    WriteZeroes,
    /// Ordering point; `offset` and `len` are zero, no payload.
    Barrier,
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            Self::Write => 1,
            Self::Trim => 2,
            Self::WriteZeroes => 3,
            Self::Barrier => 4,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(Self::Write),
            2 => Ok(Self::Trim),
            3 => Ok(Self::WriteZeroes),
            4 => Ok(Self::Barrier),
            _ => Err(malformed("record.kind", "unknown record kind")),
        }
    }
}

/// One journal record as shipped to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub lsn: u64,
    pub generation: u64,
    pub kind: RecordKind,
    pub offset: u64,
    pub len: u64,
    /// Exactly `len` bytes for `Write`, empty otherwise. A slice of the received frame.
    pub payload: Bytes,
    /// BLAKE3 of the payload as computed by the journal; carried end to end, the
    /// receiver verifies it against the data it applies.
    pub blake3: [u8; 32],
}

/// What a resync or verify operation does on the target. Operations travel
/// in the same ordered stream as records: the target applies each one after
/// every record sent before it, so an operation never overtakes a newer
/// write to its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncOpKind {
    /// Write `data` (`len` bytes, BLAKE3 `blake3`) at `offset`.
    Data,
    /// Make the range read as zeroes (a hole on the source: punched).
    Zero,
    /// `blake3` is the source's digest of the range: equal, nothing to do;
    /// different, the target asks for it with `SyncNeed`.
    Check,
    /// As `Check`, but a difference is reported (`VerifyMismatch`), not fixed.
    Verify,
    /// The last operation of a resync: once it is durable, the target's copy
    /// is consistent.
    End,
}

impl SyncOpKind {
    fn to_u8(self) -> u8 {
        match self {
            Self::Data => 1,
            Self::Zero => 2,
            Self::Check => 3,
            Self::Verify => 4,
            Self::End => 5,
        }
    }
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Self::Data,
            2 => Self::Zero,
            3 => Self::Check,
            4 => Self::Verify,
            5 => Self::End,
            _ => return Err(malformed("sync_op.kind", "unknown operation kind")),
        })
    }
}

/// One resync or verify operation. `seq` increases by one per operation of
/// a session; `SyncAck{seq}` acknowledges every operation up to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOp {
    pub seq: u64,
    pub kind: SyncOpKind,
    pub offset: u64,
    pub len: u64,
    /// `len` bytes for `Data`, empty otherwise. A slice of the received frame.
    pub data: Bytes,
    /// `Data`: BLAKE3 of `data`; `Check`/`Verify`: the source's digest of the
    /// range; zero otherwise.
    pub blake3: [u8; 32],
}

/// What the target of a resync could tell about its own diverged records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rollback {
    /// No rollback was asked for.
    None,
    /// It sent a `SyncNeed` for each range its records since the fork
    /// touched (this many), before this message.
    Listed { ranges: u64 },
    /// Its journal no longer holds those records: every range must be
    /// compared.
    Unknown,
}

/// A decoded (or to-be-encoded) replication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloAck(Hello),
    Refuse {
        code: RefuseCode,
        text: String,
    },
    Records {
        first_lsn: u64,
        records: Vec<WireRecord>,
    },
    Ack {
        durable_lsn: u64,
        journaled_lsn: Option<u64>,
    },
    Flush {
        lsn: u64,
    },
    FlushAck {
        lsn: u64,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// Primary → secondary, before any record of a session that resyncs:
    /// the target becomes inconsistent, takes `lineage`, restarts its
    /// journal at `stream_from_lsn` and, with `rollback_from_lsn`, lists the
    /// ranges its own records from that LSN touched (they are not the
    /// primary's history).
    ResyncBegin {
        job: u64,
        stream_from_lsn: u64,
        /// Ranges the primary will send or compare (for progress).
        ranges: u64,
        compare: bool,
        rollback_from_lsn: Option<u64>,
        lineage: Vec<LineageEntry>,
    },
    /// Secondary → primary: ready; the stream may continue.
    ResyncBeginAck {
        job: u64,
        rollback: Rollback,
    },
    SyncOps {
        ops: Vec<SyncOp>,
    },
    /// Every operation up to `seq` is applied and durable on the target.
    SyncAck {
        seq: u64,
    },
    /// The target wants this range's data.
    SyncNeed {
        offset: u64,
        len: u64,
    },
    /// A `Verify` operation found the range different.
    VerifyMismatch {
        seq: u64,
        offset: u64,
        len: u64,
    },
    /// Two primaries whose histories forked at `fork_lsn`, both written
    /// since: each side's facts for the split-brain policy (the acceptor's
    /// first, then the connector's, which names the `victim` when its policy
    /// picks one; empty: nothing moves).
    SplitBrain(SplitBrainFacts),
    Bye {
        code: ByeCode,
        text: String,
    },
}

/// One side of a split brain (see [`Message::SplitBrain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBrainFacts {
    pub fork_lsn: u64,
    /// Regions the sender changed since the fork; `u64::MAX`: unknown (its
    /// journal no longer holds them all).
    pub changed_regions: u64,
    /// When the sender last became primary (ns since the Unix epoch).
    pub primary_since_ns: u64,
    /// The sender's configured policy (the engine's numbering).
    pub policy: u8,
    /// The node whose changes since the fork are given up, or empty.
    pub victim: String,
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::HelloAck(_) => MessageType::HelloAck,
            Message::Refuse { .. } => MessageType::Refuse,
            Message::SplitBrain(_) => MessageType::SplitBrain,
            Message::Records { .. } => MessageType::Records,
            Message::Ack { .. } => MessageType::Ack,
            Message::Flush { .. } => MessageType::Flush,
            Message::FlushAck { .. } => MessageType::FlushAck,
            Message::Ping { .. } => MessageType::Ping,
            Message::Pong { .. } => MessageType::Pong,
            Message::ResyncBegin { .. } => MessageType::ResyncBegin,
            Message::ResyncBeginAck { .. } => MessageType::ResyncBeginAck,
            Message::SyncOps { .. } => MessageType::SyncOps,
            Message::SyncAck { .. } => MessageType::SyncAck,
            Message::SyncNeed { .. } => MessageType::SyncNeed,
            Message::VerifyMismatch { .. } => MessageType::VerifyMismatch,
            Message::Bye { .. } => MessageType::Bye,
        }
    }
}

/// Fixed bytes of one record inside `Records`, before its payload.
pub const RECORD_HEADER_BYTES: usize = 8 + 8 + 1 + 8 + 8 + 32;
/// Fixed bytes of one lineage entry.
pub const LINEAGE_ENTRY_BYTES: usize = 17;
/// Fixed bytes of one operation inside `SyncOps`, before its data.
pub const SYNC_OP_HEADER_BYTES: usize = 8 + 1 + 8 + 8 + 32;

/// Payloads at or below this size are copied into the metadata chunk rather than
/// sent as their own iovec: a syscall slot costs more than a small memcpy.
const INLINE_PAYLOAD_MAX_BYTES: usize = 512;

/// Collects a frame payload as a list of chunks so that data `Bytes` are not copied.
pub(crate) struct ChunkWriter {
    pub chunks: Vec<Bytes>,
    cur: BytesMut,
    pub len_bytes: usize,
}

impl ChunkWriter {
    pub fn new() -> Self {
        ChunkWriter {
            chunks: Vec::new(),
            cur: BytesMut::with_capacity(256),
            len_bytes: 0,
        }
    }
    fn put_u8(&mut self, v: u8) {
        self.cur.put_u8(v);
        self.len_bytes += 1;
    }
    fn put_u16(&mut self, v: u16) {
        self.cur.put_u16_le(v);
        self.len_bytes += 2;
    }
    fn put_u32(&mut self, v: u32) {
        self.cur.put_u32_le(v);
        self.len_bytes += 4;
    }
    fn put_u64(&mut self, v: u64) {
        self.cur.put_u64_le(v);
        self.len_bytes += 8;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.cur.put_slice(v);
        self.len_bytes += v.len();
    }
    fn put_data(&mut self, data: &Bytes) {
        if data.len() <= INLINE_PAYLOAD_MAX_BYTES {
            self.put_slice(data);
            return;
        }
        if !self.cur.is_empty() {
            self.chunks.push(self.cur.split().freeze());
        }
        self.chunks.push(data.clone());
        self.len_bytes += data.len();
    }
    pub fn finish(mut self) -> (Vec<Bytes>, usize) {
        if !self.cur.is_empty() {
            self.chunks.push(self.cur.split().freeze());
        }
        (self.chunks, self.len_bytes)
    }
}

fn put_text(
    w: &mut ChunkWriter,
    field: &'static str,
    text: &str,
    max_bytes: usize,
) -> Result<(), WireError> {
    if text.len() > max_bytes || text.len() > u16::MAX as usize {
        return Err(unencodable(field, "text longer than max_text_bytes"));
    }
    w.put_u16(text.len() as u16);
    w.put_slice(text.as_bytes());
    Ok(())
}

fn encode_hello(w: &mut ChunkWriter, h: &Hello, limits: &Limits) -> Result<(), WireError> {
    if h.node_id.is_empty() || h.node_id.len() > crate::MAX_NODE_ID_BYTES {
        return Err(unencodable("hello.node_id", "must be 1..=255 bytes"));
    }
    w.put_u16(h.protocol_version);
    w.put_u8(h.role.to_u8());
    let mut flags = 0;
    if h.overwrite {
        flags |= HELLO_FLAG_OVERWRITE;
    }
    if h.empty {
        flags |= HELLO_FLAG_EMPTY;
    }
    if h.discarding {
        flags |= HELLO_FLAG_DISCARDING;
    }
    if h.fenced {
        flags |= HELLO_FLAG_FENCED;
    }
    w.put_u8(flags);
    w.put_u8(h.node_id.len() as u8);
    w.put_slice(h.node_id.as_bytes());
    w.put_slice(h.volume_uuid.as_bytes());
    w.put_u64(h.volume_size_bytes);
    w.put_u64(h.region_bytes);
    w.put_u64(h.durable_lsn);
    w.put_u8(h.data_state.to_u8());
    encode_lineage(w, &h.lineage, limits, "hello.lineage")
}

/// Hello flag: the primary's operator asked to overwrite this peer.
const HELLO_FLAG_OVERWRITE: u8 = 1;
const HELLO_FLAG_EMPTY: u8 = 2;
const HELLO_FLAG_DISCARDING: u8 = 4;
const HELLO_FLAG_FENCED: u8 = 8;
/// Lineage entry flag: see [`LineageEntry::unknown_before`].
const LINEAGE_FLAG_UNKNOWN_BEFORE: u8 = 1;

fn encode_lineage(
    w: &mut ChunkWriter,
    lineage: &[LineageEntry],
    limits: &Limits,
    field: &'static str,
) -> Result<(), WireError> {
    if lineage.len() > limits.max_lineage_entries as usize {
        return Err(unencodable(field, "more entries than max_lineage_entries"));
    }
    validate_lineage(lineage).map_err(|_| {
        unencodable(
            field,
            "start_lsn must not decrease and generation ids must be unique",
        )
    })?;
    w.put_u16(lineage.len() as u16);
    for e in lineage {
        w.put_u64(e.generation_id);
        w.put_u64(e.start_lsn);
        w.put_u8(if e.unknown_before {
            LINEAGE_FLAG_UNKNOWN_BEFORE
        } else {
            0
        });
    }
    Ok(())
}

/// Lineage must be a history: non-decreasing start LSNs, no repeated generation id.
pub(crate) fn validate_lineage(lineage: &[LineageEntry]) -> Result<(), ()> {
    for (i, pair) in lineage.windows(2).enumerate() {
        if pair[1].start_lsn < pair[0].start_lsn {
            return Err(());
        }
        // Lineages are short (bounded by max_lineage_entries), quadratic is fine.
        if lineage[..=i]
            .iter()
            .any(|e| e.generation_id == pair[1].generation_id)
        {
            return Err(());
        }
    }
    Ok(())
}

fn encode_record(w: &mut ChunkWriter, r: &WireRecord) -> Result<(), WireError> {
    match r.kind {
        RecordKind::Write => {
            if r.payload.len() as u64 != r.len {
                return Err(unencodable(
                    "record.payload",
                    "write payload length differs from len",
                ));
            }
        }
        RecordKind::Trim | RecordKind::WriteZeroes => {
            if !r.payload.is_empty() {
                return Err(unencodable(
                    "record.payload",
                    "trim/write_zeroes carry no payload",
                ));
            }
        }
        RecordKind::Barrier => {
            if r.offset != 0 || r.len != 0 || !r.payload.is_empty() {
                return Err(unencodable(
                    "record",
                    "barrier has zero offset, len and payload",
                ));
            }
        }
    }
    if r.offset.checked_add(r.len).is_none() {
        return Err(unencodable("record.len", "offset + len overflows u64"));
    }
    w.put_u64(r.lsn);
    w.put_u64(r.generation);
    w.put_u8(r.kind.to_u8());
    w.put_u64(r.offset);
    w.put_u64(r.len);
    w.put_slice(&r.blake3);
    if r.kind == RecordKind::Write {
        w.put_data(&r.payload);
    }
    Ok(())
}

pub(crate) fn encode_payload(
    w: &mut ChunkWriter,
    msg: &Message,
    limits: &Limits,
) -> Result<(), WireError> {
    match msg {
        Message::Hello(h) | Message::HelloAck(h) => encode_hello(w, h, limits)?,
        Message::Refuse { code, text } => {
            w.put_u16(code.to_u16());
            put_text(w, "refuse.text", text, limits.max_text_bytes as usize)?;
        }
        Message::Records { first_lsn, records } => {
            if records.len() > limits.max_records_per_batch as usize {
                return Err(unencodable(
                    "records",
                    "more records than max_records_per_batch",
                ));
            }
            check_record_order(*first_lsn, records)
                .map_err(|reason| unencodable("records", reason))?;
            w.put_u64(*first_lsn);
            w.put_u32(records.len() as u32);
            for r in records {
                encode_record(w, r)?;
            }
        }
        Message::Ack {
            durable_lsn,
            journaled_lsn,
        } => {
            w.put_u64(*durable_lsn);
            match journaled_lsn {
                Some(a) => {
                    w.put_u8(1);
                    w.put_u64(*a);
                }
                None => w.put_u8(0),
            }
        }
        Message::Flush { lsn } | Message::FlushAck { lsn } => w.put_u64(*lsn),
        Message::Ping { nonce } | Message::Pong { nonce } => w.put_u64(*nonce),
        Message::ResyncBegin {
            job,
            stream_from_lsn,
            ranges,
            compare,
            rollback_from_lsn,
            lineage,
        } => {
            if *stream_from_lsn == 0 {
                return Err(unencodable(
                    "resync_begin.stream_from_lsn",
                    "LSNs start at 1",
                ));
            }
            w.put_u64(*job);
            w.put_u64(*stream_from_lsn);
            w.put_u64(*ranges);
            w.put_u8(u8::from(*compare));
            w.put_u64(rollback_from_lsn.unwrap_or(0));
            encode_lineage(w, lineage, limits, "resync_begin.lineage")?;
        }
        Message::ResyncBeginAck { job, rollback } => {
            w.put_u64(*job);
            let (tag, ranges) = match rollback {
                Rollback::None => (0, 0),
                Rollback::Listed { ranges } => (1, *ranges),
                Rollback::Unknown => (2, 0),
            };
            w.put_u8(tag);
            w.put_u64(ranges);
        }
        Message::SyncOps { ops } => {
            if ops.len() > limits.max_records_per_batch as usize {
                return Err(unencodable(
                    "sync_ops",
                    "more operations than max_records_per_batch",
                ));
            }
            if ops.windows(2).any(|p| p[1].seq <= p[0].seq) {
                return Err(unencodable(
                    "sync_ops",
                    "operation seqs must strictly increase",
                ));
            }
            w.put_u32(ops.len() as u32);
            for op in ops {
                encode_sync_op(w, op)?;
            }
        }
        Message::SyncAck { seq } => w.put_u64(*seq),
        Message::SyncNeed { offset, len } => {
            check_range(*offset, *len).map_err(|r| unencodable("sync_need", r))?;
            w.put_u64(*offset);
            w.put_u64(*len);
        }
        Message::VerifyMismatch { seq, offset, len } => {
            check_range(*offset, *len).map_err(|r| unencodable("verify_mismatch", r))?;
            w.put_u64(*seq);
            w.put_u64(*offset);
            w.put_u64(*len);
        }
        Message::SplitBrain(f) => {
            w.put_u64(f.fork_lsn);
            w.put_u64(f.changed_regions);
            w.put_u64(f.primary_since_ns);
            w.put_u8(f.policy);
            put_text(w, "split_brain.victim", &f.victim, crate::MAX_NODE_ID_BYTES)?;
        }
        Message::Bye { code, text } => {
            w.put_u16(code.to_u16());
            put_text(w, "bye.text", text, limits.max_text_bytes as usize)?;
        }
    }
    Ok(())
}

/// A range is non-empty and does not overflow.
fn check_range(offset: u64, len: u64) -> Result<(), &'static str> {
    if len == 0 {
        return Err("empty range");
    }
    if offset.checked_add(len).is_none() {
        return Err("offset + len overflows u64");
    }
    Ok(())
}

fn encode_sync_op(w: &mut ChunkWriter, op: &SyncOp) -> Result<(), WireError> {
    match op.kind {
        SyncOpKind::Data => {
            if op.data.len() as u64 != op.len {
                return Err(unencodable("sync_op.data", "data length differs from len"));
            }
            check_range(op.offset, op.len).map_err(|r| unencodable("sync_op", r))?;
        }
        SyncOpKind::Zero | SyncOpKind::Check | SyncOpKind::Verify => {
            if !op.data.is_empty() {
                return Err(unencodable("sync_op.data", "only Data carries data"));
            }
            check_range(op.offset, op.len).map_err(|r| unencodable("sync_op", r))?;
        }
        SyncOpKind::End => {
            if op.offset != 0 || op.len != 0 || !op.data.is_empty() {
                return Err(unencodable("sync_op", "End has zero offset, len and data"));
            }
        }
    }
    w.put_u64(op.seq);
    w.put_u8(op.kind.to_u8());
    w.put_u64(op.offset);
    w.put_u64(op.len);
    w.put_slice(&op.blake3);
    if op.kind == SyncOpKind::Data {
        w.put_data(&op.data);
    }
    Ok(())
}

fn decode_sync_op(r: &mut Reader) -> Result<SyncOp, WireError> {
    let seq = r.u64("sync_op.seq")?;
    let kind = SyncOpKind::from_u8(r.u8("sync_op.kind")?)?;
    let offset = r.u64("sync_op.offset")?;
    let len = r.u64("sync_op.len")?;
    let blake3 = r.array::<32>("sync_op.blake3")?;
    let data = match kind {
        SyncOpKind::End => {
            if offset != 0 || len != 0 {
                return Err(malformed("sync_op", "End with a non-zero range"));
            }
            Bytes::new()
        }
        other => {
            check_range(offset, len).map_err(|reason| malformed("sync_op", reason))?;
            if other == SyncOpKind::Data {
                r.data(len, "sync_op.data")?
            } else {
                Bytes::new()
            }
        }
    };
    Ok(SyncOp {
        seq,
        kind,
        offset,
        len,
        data,
        blake3,
    })
}

fn check_record_order(first_lsn: u64, records: &[WireRecord]) -> Result<(), &'static str> {
    if let Some(first) = records.first() {
        if first.lsn != first_lsn {
            return Err("first record's lsn differs from first_lsn");
        }
    }
    if records.windows(2).any(|p| p[1].lsn <= p[0].lsn) {
        return Err("record lsns must strictly increase");
    }
    Ok(())
}

/// Bounds-checked cursor over a frame payload; data fields are zero-copy slices.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], WireError> {
        if self.remaining() < n {
            return Err(malformed(field, "payload ends inside this field"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let s = self.take(2, field)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let s = self.take(4, field)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let s = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn data(&mut self, n: u64, field: &'static str) -> Result<Bytes, WireError> {
        if (self.remaining() as u64) < n {
            return Err(malformed(field, "payload ends inside this field"));
        }
        let n = n as usize;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn text(&mut self, field: &'static str, max_bytes: usize) -> Result<String, WireError> {
        let n = self.u16(field)? as usize;
        if n > max_bytes {
            return Err(malformed(field, "text longer than max_text_bytes"));
        }
        let s = self.take(n, field)?;
        String::from_utf8(s.to_vec()).map_err(|_| malformed(field, "not UTF-8"))
    }
    /// A batch's `u32` count, checked against `max_records_per_batch` and
    /// against the bytes present (each item needs `item_bytes`) before it
    /// sizes any allocation.
    fn list_count(
        &mut self,
        field: &'static str,
        limits: &Limits,
        item_bytes: usize,
    ) -> Result<usize, WireError> {
        let count = self.u32(field)?;
        if count > limits.max_records_per_batch {
            return Err(malformed(field, "more items than max_records_per_batch"));
        }
        if (self.remaining() as u64) < u64::from(count) * item_bytes as u64 {
            return Err(malformed(field, "payload too short for this many items"));
        }
        Ok(count as usize)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.remaining() != 0 {
            return Err(malformed("payload", "trailing bytes after message"));
        }
        Ok(())
    }
}

fn decode_hello(r: &mut Reader, limits: &Limits) -> Result<Hello, WireError> {
    let protocol_version = r.u16("hello.protocol_version")?;
    let role = Role::from_u8(r.u8("hello.role")?)?;
    let flags = r.u8("hello.flags")?;
    if flags
        & !(HELLO_FLAG_OVERWRITE | HELLO_FLAG_EMPTY | HELLO_FLAG_DISCARDING | HELLO_FLAG_FENCED)
        != 0
    {
        return Err(malformed("hello.flags", "unknown flag bits set"));
    }
    let id_len = r.u8("hello.node_id")? as usize;
    if id_len == 0 {
        return Err(malformed("hello.node_id", "empty"));
    }
    let node_id = String::from_utf8(r.take(id_len, "hello.node_id")?.to_vec())
        .map_err(|_| malformed("hello.node_id", "not UTF-8"))?;
    let volume_uuid = Uuid::from_bytes(r.array::<16>("hello.volume_uuid")?);
    let volume_size_bytes = r.u64("hello.volume_size_bytes")?;
    let region_bytes = r.u64("hello.region_bytes")?;
    let durable_lsn = r.u64("hello.durable_lsn")?;
    let data_state = DataState::from_u8(r.u8("hello.data_state")?)?;
    let lineage = decode_lineage(r, limits, "hello.lineage")?;
    Ok(Hello {
        protocol_version,
        node_id,
        volume_uuid,
        volume_size_bytes,
        region_bytes,
        lineage,
        role,
        durable_lsn,
        data_state,
        overwrite: flags & HELLO_FLAG_OVERWRITE != 0,
        empty: flags & HELLO_FLAG_EMPTY != 0,
        discarding: flags & HELLO_FLAG_DISCARDING != 0,
        fenced: flags & HELLO_FLAG_FENCED != 0,
    })
}

fn decode_lineage(
    r: &mut Reader,
    limits: &Limits,
    field: &'static str,
) -> Result<Vec<LineageEntry>, WireError> {
    let count = r.u16(field)? as usize;
    if count > limits.max_lineage_entries as usize {
        return Err(malformed(field, "more entries than max_lineage_entries"));
    }
    if r.remaining() < count * LINEAGE_ENTRY_BYTES {
        return Err(malformed(field, "payload ends inside the lineage"));
    }
    let mut lineage = Vec::with_capacity(count);
    for _ in 0..count {
        let generation_id = r.u64(field)?;
        let start_lsn = r.u64(field)?;
        let flags = r.u8(field)?;
        if flags & !LINEAGE_FLAG_UNKNOWN_BEFORE != 0 {
            return Err(malformed(field, "unknown lineage flag bits set"));
        }
        lineage.push(LineageEntry {
            generation_id,
            start_lsn,
            unknown_before: flags & LINEAGE_FLAG_UNKNOWN_BEFORE != 0,
        });
    }
    validate_lineage(&lineage)
        .map_err(|_| malformed(field, "start_lsn decreases or a generation id repeats"))?;
    Ok(lineage)
}

fn decode_record(r: &mut Reader) -> Result<WireRecord, WireError> {
    let lsn = r.u64("record.lsn")?;
    let generation = r.u64("record.generation")?;
    let kind = RecordKind::from_u8(r.u8("record.kind")?)?;
    let offset = r.u64("record.offset")?;
    let len = r.u64("record.len")?;
    let blake3 = r.array::<32>("record.blake3")?;
    if offset.checked_add(len).is_none() {
        return Err(malformed("record.len", "offset + len overflows u64"));
    }
    let payload = match kind {
        RecordKind::Write => r.data(len, "record.payload")?,
        RecordKind::Trim | RecordKind::WriteZeroes => Bytes::new(),
        RecordKind::Barrier => {
            if offset != 0 || len != 0 {
                return Err(malformed("record", "barrier with non-zero offset or len"));
            }
            Bytes::new()
        }
    };
    Ok(WireRecord {
        lsn,
        generation,
        kind,
        offset,
        len,
        payload,
        blake3,
    })
}

/// Decode a checked frame payload. `payload` is a slice of the received buffer, so
/// data fields share its memory.
pub(crate) fn decode_payload(
    msg_type: MessageType,
    payload: Bytes,
    limits: &Limits,
) -> Result<Message, WireError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let max_text = limits.max_text_bytes as usize;
    let msg = match msg_type {
        MessageType::Hello => Message::Hello(decode_hello(&mut r, limits)?),
        MessageType::HelloAck => Message::HelloAck(decode_hello(&mut r, limits)?),
        MessageType::Refuse => Message::Refuse {
            code: RefuseCode::from_u16(r.u16("refuse.code")?),
            text: r.text("refuse.text", max_text)?,
        },
        MessageType::Records => {
            let first_lsn = r.u64("records.first_lsn")?;
            let count = r.list_count("records.count", limits, RECORD_HEADER_BYTES)?;
            let mut records = Vec::with_capacity(count);
            for _ in 0..count {
                records.push(decode_record(&mut r)?);
            }
            check_record_order(first_lsn, &records)
                .map_err(|reason| malformed("records", reason))?;
            Message::Records { first_lsn, records }
        }
        MessageType::Ack => {
            let durable_lsn = r.u64("ack.durable_lsn")?;
            let journaled_lsn = match r.u8("ack.has_journaled")? {
                0 => None,
                1 => Some(r.u64("ack.journaled_lsn")?),
                _ => return Err(malformed("ack.has_journaled", "must be 0 or 1")),
            };
            Message::Ack {
                durable_lsn,
                journaled_lsn,
            }
        }
        MessageType::Flush => Message::Flush {
            lsn: r.u64("flush.lsn")?,
        },
        MessageType::FlushAck => Message::FlushAck {
            lsn: r.u64("flush_ack.lsn")?,
        },
        MessageType::Ping => Message::Ping {
            nonce: r.u64("ping.nonce")?,
        },
        MessageType::Pong => Message::Pong {
            nonce: r.u64("pong.nonce")?,
        },
        MessageType::ResyncBegin => {
            let job = r.u64("resync_begin.job")?;
            let stream_from_lsn = r.u64("resync_begin.stream_from_lsn")?;
            if stream_from_lsn == 0 {
                return Err(malformed("resync_begin.stream_from_lsn", "LSNs start at 1"));
            }
            let ranges = r.u64("resync_begin.ranges")?;
            let compare = match r.u8("resync_begin.compare")? {
                0 => false,
                1 => true,
                _ => return Err(malformed("resync_begin.compare", "must be 0 or 1")),
            };
            let rollback_from_lsn = match r.u64("resync_begin.rollback_from_lsn")? {
                0 => None,
                lsn => Some(lsn),
            };
            let lineage = decode_lineage(&mut r, limits, "resync_begin.lineage")?;
            Message::ResyncBegin {
                job,
                stream_from_lsn,
                ranges,
                compare,
                rollback_from_lsn,
                lineage,
            }
        }
        MessageType::ResyncBeginAck => {
            let job = r.u64("resync_begin_ack.job")?;
            let tag = r.u8("resync_begin_ack.rollback")?;
            let ranges = r.u64("resync_begin_ack.ranges")?;
            let rollback = match (tag, ranges) {
                (0, 0) => Rollback::None,
                (1, ranges) => Rollback::Listed { ranges },
                (2, 0) => Rollback::Unknown,
                _ => {
                    return Err(malformed(
                        "resync_begin_ack.rollback",
                        "unknown rollback kind or ranges with none/unknown",
                    ))
                }
            };
            Message::ResyncBeginAck { job, rollback }
        }
        MessageType::SyncOps => {
            let count = r.list_count("sync_ops.count", limits, SYNC_OP_HEADER_BYTES)?;
            let mut ops = Vec::with_capacity(count);
            for _ in 0..count {
                ops.push(decode_sync_op(&mut r)?);
            }
            if ops.windows(2).any(|p| p[1].seq <= p[0].seq) {
                return Err(malformed(
                    "sync_ops",
                    "operation seqs must strictly increase",
                ));
            }
            Message::SyncOps { ops }
        }
        MessageType::SyncAck => Message::SyncAck {
            seq: r.u64("sync_ack.seq")?,
        },
        MessageType::SyncNeed => {
            let offset = r.u64("sync_need.offset")?;
            let len = r.u64("sync_need.len")?;
            check_range(offset, len).map_err(|reason| malformed("sync_need", reason))?;
            Message::SyncNeed { offset, len }
        }
        MessageType::VerifyMismatch => {
            let seq = r.u64("verify_mismatch.seq")?;
            let offset = r.u64("verify_mismatch.offset")?;
            let len = r.u64("verify_mismatch.len")?;
            check_range(offset, len).map_err(|reason| malformed("verify_mismatch", reason))?;
            Message::VerifyMismatch { seq, offset, len }
        }
        MessageType::SplitBrain => Message::SplitBrain(SplitBrainFacts {
            fork_lsn: r.u64("split_brain.fork_lsn")?,
            changed_regions: r.u64("split_brain.changed_regions")?,
            primary_since_ns: r.u64("split_brain.primary_since_ns")?,
            policy: r.u8("split_brain.policy")?,
            victim: r.text("split_brain.victim", crate::MAX_NODE_ID_BYTES)?,
        }),
        MessageType::Bye => Message::Bye {
            code: ByeCode::from_u16(r.u16("bye.code")?),
            text: r.text("bye.text", max_text)?,
        },
    };
    r.end()?;
    Ok(msg)
}
