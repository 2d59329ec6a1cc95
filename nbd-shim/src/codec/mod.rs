//! Sans-IO NBD codec: bytes in, events and bytes out. No sockets, no tokio, so
//! every path is unit-tested, property-tested and fuzzed deterministically.
//!
//! * [`Handshake`]: the server side of fixed-newstyle negotiation.
//! * [`RequestDecoder`]: the transmission-phase request parser and validator.
//! * [`ReplyFrame`]: simple and structured replies, header and payload kept
//!   apart so a server can write them with one vectored write and no copy.

mod handshake;
mod reply;
mod transmission;

pub use handshake::{
    ExportInfo, Handshake, HandshakeLimits, HandshakeStatus, Negotiated, DEFAULT_MAX_OPTIONS,
    DEFAULT_MAX_OPTION_BYTES,
};
pub use reply::{ReplyFrame, MAX_BLOCK_STATUS_EXTENTS, MAX_REPLY_HEAD_BYTES};
pub use transmission::{
    Command, Decoded, Rejection, Request, RequestDecoder, TransmissionConfig,
    DEFAULT_COPY_WRITE_PAYLOAD_BELOW_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
};

#[cfg(test)]
mod tests;
