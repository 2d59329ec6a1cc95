//! driftless replication protocol: versioned, framed, checksummed messages.
//!
//! Sans-IO: this crate turns [`Message`]s into bytes ([`encode_frame`]) and bytes
//! into messages ([`Decoder`], [`decode_message`]); it never touches a socket.
//! The byte layout is specified in `docs/wire.md`.

mod error;
mod frame;
mod lineage;
mod message;

pub use error::WireError;
pub use frame::{
    decode_message, encode_frame, encode_frame_version, encode_into, Decoder, EncodedFrame,
    FrameHeader,
};
pub use lineage::{check_hello, compare_lineage, LineageOrder, Mismatch};
pub use message::{
    ByeCode, DataState, Hello, LineageEntry, Message, MessageType, RecordKind, RefuseCode, Role,
    Rollback, SplitBrainFacts, SyncOp, SyncOpKind, WireRecord, LINEAGE_ENTRY_BYTES,
    RECORD_HEADER_BYTES, SYNC_OP_HEADER_BYTES,
};

/// Frame magic: the bytes `DRLS` on the wire.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DRLS");
/// Highest protocol version this build speaks (and sends). Version 2: data
/// states, lineage flags and resync operations.
pub const PROTOCOL_VERSION: u16 = 2;
/// Lowest protocol version this build accepts.
pub const PROTOCOL_VERSION_MIN: u16 = 2;
/// magic(4) version(2) type(2) flags(4) payload_len(4) crc32(4).
pub const FRAME_HEADER_BYTES: usize = 20;
/// Node ids are length-prefixed by one byte.
pub const MAX_NODE_ID_BYTES: usize = 255;

/// Size limits enforced on both encode and decode. Both peers should use the same
/// values; a frame above the receiver's limit is refused with `FrameTooLarge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted or produced.
    pub max_frame_bytes: u32,
    /// Largest lineage in a Hello.
    pub max_lineage_entries: u16,
    /// Largest record count in one `Records` batch.
    pub max_records_per_batch: u32,
    /// Longest `Refuse`/`Bye` text.
    pub max_text_bytes: u16,
}

pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_LINEAGE_ENTRIES: u16 = 1024;
pub const DEFAULT_MAX_RECORDS_PER_BATCH: u32 = 65_536;
pub const DEFAULT_MAX_TEXT_BYTES: u16 = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_lineage_entries: DEFAULT_MAX_LINEAGE_ENTRIES,
            max_records_per_batch: DEFAULT_MAX_RECORDS_PER_BATCH,
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
        }
    }
}

#[cfg(test)]
mod tests;
