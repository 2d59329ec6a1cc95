//! The one error type of this crate.

use std::time::Duration;

/// Everything that can end an NBD connection or stop a server from starting.
///
/// Per-request failures (bad range, target I/O error, ...) are not errors of
/// this type: they are answered on the wire and the connection goes on.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("socket I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error(
        "bad request magic {magic:#010x} (expected {expected:#010x}): the client is not \
         speaking the compact NBD request format or the stream lost sync; disconnecting"
    )]
    BadRequestMagic { magic: u32, expected: u32 },

    #[error(
        "bad option magic {magic:#018x} (expected IHAVEOPT {expected:#018x}) during the \
         handshake; disconnecting"
    )]
    BadOptionMagic { magic: u64, expected: u64 },

    #[error("client sent unknown client flags {flags:#010x}; the spec requires a disconnect")]
    UnknownClientFlags { flags: u32 },

    #[error(
        "{option_name} ({option}) carries {length_bytes} bytes, more than the \
         {limit_bytes}-byte limit, and cannot be answered with an error; disconnecting"
    )]
    OptionTooLarge {
        option: u32,
        option_name: &'static str,
        length_bytes: u32,
        limit_bytes: u32,
    },

    #[error("client sent more than {limit} options during the handshake; disconnecting")]
    TooManyOptions { limit: usize },

    #[error("NBD_OPT_EXPORT_NAME asked for unknown export {name:?}; disconnecting (the option cannot carry an error)")]
    UnknownExport { name: String },

    #[error("handshake not finished within {timeout:?}; disconnecting")]
    HandshakeTimeout { timeout: Duration },

    #[error("client closed the connection during the handshake")]
    HandshakeEof,

    #[error("invalid server configuration: {0}")]
    Config(String),
}
