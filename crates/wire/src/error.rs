use thiserror::Error;

/// Every way a frame can fail to encode or decode.
///
/// After a decode error the byte stream is out of sync: the connection must be
/// closed (the [`crate::Decoder`] keeps returning the same error).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("bad frame magic 0x{got:08x} (expected 0x{expected:08x}): peer is not speaking the driftless replication protocol")]
    BadMagic { got: u32, expected: u32 },

    #[error("unsupported protocol version {got} (this node speaks {min}..={max})")]
    UnsupportedVersion { got: u16, min: u16, max: u16 },

    #[error("frame payload of {len_bytes} bytes exceeds the limit of {max_bytes} bytes (max_frame_bytes)")]
    FrameTooLarge { len_bytes: u64, max_bytes: u32 },

    #[error("frame checksum mismatch: header says 0x{expected:08x}, computed 0x{computed:08x} (corruption in transit)")]
    BadChecksum { expected: u32, computed: u32 },

    #[error("input ended inside a frame: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        needed_bytes: u64,
        available_bytes: u64,
    },

    #[error("unknown message type 0x{msg_type:04x}")]
    UnknownMessage { msg_type: u16 },

    #[error("malformed field `{field}`: {reason}")]
    Malformed {
        field: &'static str,
        reason: &'static str,
    },

    #[error("cannot encode field `{field}`: {reason}")]
    Unencodable {
        field: &'static str,
        reason: &'static str,
    },
}

pub(crate) fn malformed(field: &'static str, reason: &'static str) -> WireError {
    WireError::Malformed { field, reason }
}

pub(crate) fn unencodable(field: &'static str, reason: &'static str) -> WireError {
    WireError::Unencodable { field, reason }
}
