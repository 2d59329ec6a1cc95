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
    Records = 0x0010,
    Ack = 0x0011,
    Flush = 0x0012,
    FlushAck = 0x0013,
    Ping = 0x0020,
    Pong = 0x0021,
    ResyncChunk = 0x0030,
    ResyncDone = 0x0031,
    Bye = 0x0040,
}

impl MessageType {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x0001 => Self::Hello,
            0x0002 => Self::HelloAck,
            0x0003 => Self::Refuse,
            0x0010 => Self::Records,
            0x0011 => Self::Ack,
            0x0012 => Self::Flush,
            0x0013 => Self::FlushAck,
            0x0020 => Self::Ping,
            0x0021 => Self::Pong,
            0x0030 => Self::ResyncChunk,
            0x0031 => Self::ResyncDone,
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
    pub durable_lsn: u64,
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
    ResyncChunk {
        offset: u64,
        payload: Bytes,
    },
    ResyncDone,
    Bye {
        code: ByeCode,
        text: String,
    },
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::HelloAck(_) => MessageType::HelloAck,
            Message::Refuse { .. } => MessageType::Refuse,
            Message::Records { .. } => MessageType::Records,
            Message::Ack { .. } => MessageType::Ack,
            Message::Flush { .. } => MessageType::Flush,
            Message::FlushAck { .. } => MessageType::FlushAck,
            Message::Ping { .. } => MessageType::Ping,
            Message::Pong { .. } => MessageType::Pong,
            Message::ResyncChunk { .. } => MessageType::ResyncChunk,
            Message::ResyncDone => MessageType::ResyncDone,
            Message::Bye { .. } => MessageType::Bye,
        }
    }
}

/// Fixed bytes of one record inside `Records`, before its payload.
pub const RECORD_HEADER_BYTES: usize = 8 + 8 + 1 + 8 + 8 + 32;
/// Fixed bytes of one lineage entry.
pub const LINEAGE_ENTRY_BYTES: usize = 16;

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
    if h.lineage.len() > limits.max_lineage_entries as usize {
        return Err(unencodable(
            "hello.lineage",
            "more entries than max_lineage_entries",
        ));
    }
    validate_lineage(&h.lineage).map_err(|_| {
        unencodable(
            "hello.lineage",
            "start_lsn must not decrease and generation ids must be unique",
        )
    })?;
    w.put_u16(h.protocol_version);
    w.put_u8(h.role.to_u8());
    w.put_u8(0); // reserved
    w.put_u8(h.node_id.len() as u8);
    w.put_slice(h.node_id.as_bytes());
    w.put_slice(h.volume_uuid.as_bytes());
    w.put_u64(h.volume_size_bytes);
    w.put_u64(h.region_bytes);
    w.put_u64(h.durable_lsn);
    w.put_u16(h.lineage.len() as u16);
    for e in &h.lineage {
        w.put_u64(e.generation_id);
        w.put_u64(e.start_lsn);
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
        Message::ResyncChunk { offset, payload } => {
            if offset.checked_add(payload.len() as u64).is_none() {
                return Err(unencodable("resync.offset", "offset + len overflows u64"));
            }
            w.put_u64(*offset);
            w.put_u32(
                u32::try_from(payload.len())
                    .map_err(|_| unencodable("resync.payload", "longer than u32"))?,
            );
            w.put_data(payload);
        }
        Message::ResyncDone => {}
        Message::Bye { code, text } => {
            w.put_u16(code.to_u16());
            put_text(w, "bye.text", text, limits.max_text_bytes as usize)?;
        }
    }
    Ok(())
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
    if r.u8("hello.reserved")? != 0 {
        return Err(malformed("hello.reserved", "must be zero"));
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
    let count = r.u16("hello.lineage_count")? as usize;
    if count > limits.max_lineage_entries as usize {
        return Err(malformed(
            "hello.lineage_count",
            "more entries than max_lineage_entries",
        ));
    }
    if r.remaining() < count * LINEAGE_ENTRY_BYTES {
        return Err(malformed(
            "hello.lineage",
            "payload ends inside the lineage",
        ));
    }
    let mut lineage = Vec::with_capacity(count);
    for _ in 0..count {
        lineage.push(LineageEntry {
            generation_id: r.u64("hello.lineage.generation_id")?,
            start_lsn: r.u64("hello.lineage.start_lsn")?,
        });
    }
    validate_lineage(&lineage).map_err(|_| {
        malformed(
            "hello.lineage",
            "start_lsn decreases or a generation id repeats",
        )
    })?;
    Ok(Hello {
        protocol_version,
        node_id,
        volume_uuid,
        volume_size_bytes,
        region_bytes,
        lineage,
        role,
        durable_lsn,
    })
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
            let count = r.u32("records.count")?;
            if count > limits.max_records_per_batch {
                return Err(malformed(
                    "records.count",
                    "more records than max_records_per_batch",
                ));
            }
            // Never trust the count for allocation: each record needs its fixed header.
            if (r.remaining() as u64) < u64::from(count) * RECORD_HEADER_BYTES as u64 {
                return Err(malformed(
                    "records.count",
                    "payload too short for this many records",
                ));
            }
            let mut records = Vec::with_capacity(count as usize);
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
        MessageType::ResyncChunk => {
            let offset = r.u64("resync.offset")?;
            let len = r.u32("resync.len")?;
            if offset.checked_add(u64::from(len)).is_none() {
                return Err(malformed("resync.offset", "offset + len overflows u64"));
            }
            Message::ResyncChunk {
                offset,
                payload: r.data(u64::from(len), "resync.payload")?,
            }
        }
        MessageType::ResyncDone => Message::ResyncDone,
        MessageType::Bye => Message::Bye {
            code: ByeCode::from_u16(r.u16("bye.code")?),
            text: r.text("bye.text", max_text)?,
        },
    };
    r.end()?;
    Ok(msg)
}
