//! Transmission-phase request parsing and validation.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::NbdError;
use crate::proto::{self, cmd, cmd_flags, error as nbd_err, transmission_flags as tf};
use crate::target::{Durability, ZeroFlags};

/// Default cap on READ/WRITE payloads (32 MiB, what the Linux client uses).
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;

/// Default for [`TransmissionConfig::copy_write_payload_below_bytes`].
pub const DEFAULT_COPY_WRITE_PAYLOAD_BELOW_BYTES: u32 = 64 * 1024;

/// How far a rejected WRITE payload is drained per step; only a hint, the
/// drain never needs more than what is already buffered.
const DISCARD_HINT_BYTES: usize = 256 * 1024;

/// What the decoder must know about the negotiated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionConfig {
    pub size_bytes: u64,
    /// Transmission flags as sent to the client.
    pub transmission_flags: u16,
    pub structured_replies: bool,
    pub base_allocation_id: Option<u32>,
    /// READ and WRITE lengths above this are refused (EINVAL).
    pub max_payload_bytes: u32,
    /// WRITE payloads shorter than this are copied out of the socket buffer
    /// into their own allocation; longer ones are split off without a copy.
    /// A small payload split off would pin the whole (large) read buffer for
    /// as long as the journal and peers hold it, and defeat buffer reuse.
    pub copy_write_payload_below_bytes: u32,
}

/// A valid request, ready to run against a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cookie: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        durability: Durability,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        durability: Durability,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
        context_id: u32,
    },
    /// A zero-length READ/WRITE/TRIM/WRITE_ZEROES/CACHE: succeed without
    /// touching the target (the spec leaves these as no-ops).
    Noop {
        command: u16,
    },
}

/// A request answered with an error without reaching the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub cookie: u64,
    pub command: u16,
    /// NBD error code (`proto::error`).
    pub error: u32,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Request(Request),
    Rejected(Rejection),
    /// `NBD_CMD_DISC`: finish in-flight requests, then close. The decoder
    /// yields nothing more.
    Disconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug, Clone)]
enum State {
    Header,
    /// A valid WRITE waits for its payload.
    Payload(Header),
    /// A rejected WRITE's payload is drained in bounded steps, never buffered
    /// whole; the rejection is reported once it is gone.
    Discard {
        remaining_bytes: u64,
        rejection: Rejection,
    },
    Closed,
}

/// Incremental request decoder: feed it the socket buffer, take out
/// [`Decoded`] events. WRITE payloads are split off the buffer as `Bytes`
/// (no copy).
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    cfg: TransmissionConfig,
    state: State,
}

impl RequestDecoder {
    pub fn new(cfg: TransmissionConfig) -> Self {
        Self {
            cfg,
            state: State::Header,
        }
    }

    pub fn config(&self) -> &TransmissionConfig {
        &self.cfg
    }

    /// Total bytes the decoder wants buffered to make progress; never more
    /// than the request header plus `max_payload_bytes`.
    pub fn bytes_wanted(&self) -> usize {
        match &self.state {
            State::Header => proto::REQUEST_HEADER_BYTES,
            State::Payload(h) => h.len as usize,
            State::Discard {
                remaining_bytes, ..
            } => (*remaining_bytes)
                .min(DISCARD_HINT_BYTES.min(self.cfg.max_payload_bytes as usize) as u64)
                as usize,
            State::Closed => 0,
        }
    }

    /// Decode the next event, or `Ok(None)` if more bytes are needed. An
    /// error means the stream is unusable: disconnect.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, NbdError> {
        loop {
            match &mut self.state {
                State::Closed => return Ok(None),
                State::Discard {
                    remaining_bytes,
                    rejection,
                } => {
                    let n = (*remaining_bytes).min(buf.len() as u64) as usize;
                    buf.advance(n);
                    *remaining_bytes -= n as u64;
                    if *remaining_bytes > 0 {
                        return Ok(None);
                    }
                    let rejection = rejection.clone();
                    self.state = State::Header;
                    return Ok(Some(Decoded::Rejected(rejection)));
                }
                State::Payload(h) => {
                    let len = h.len as usize;
                    if buf.len() < len {
                        return Ok(None);
                    }
                    let h = *h;
                    let data = if h.len < self.cfg.copy_write_payload_below_bytes {
                        let data = Bytes::copy_from_slice(&buf[..len]);
                        buf.advance(len);
                        data
                    } else {
                        buf.split_to(len).freeze()
                    };
                    self.state = State::Header;
                    return Ok(Some(Decoded::Request(Request {
                        cookie: h.cookie,
                        command: Command::Write {
                            offset: h.offset,
                            data,
                            durability: durability(h.flags),
                        },
                    })));
                }
                State::Header => {
                    if buf.len() < proto::REQUEST_HEADER_BYTES {
                        return Ok(None);
                    }
                    let magic = buf.get_u32();
                    if magic != proto::REQUEST_MAGIC {
                        self.state = State::Closed;
                        return Err(NbdError::BadRequestMagic {
                            magic,
                            expected: proto::REQUEST_MAGIC,
                        });
                    }
                    let h = Header {
                        flags: buf.get_u16(),
                        command: buf.get_u16(),
                        cookie: buf.get_u64(),
                        offset: buf.get_u64(),
                        len: buf.get_u32(),
                    };
                    match self.validate(&h) {
                        Ok(Some(command)) => {
                            return Ok(Some(Decoded::Request(Request {
                                cookie: h.cookie,
                                command,
                            })))
                        }
                        Ok(None) if h.command == cmd::DISC => {
                            self.state = State::Closed;
                            return Ok(Some(Decoded::Disconnect));
                        }
                        Ok(None) => {
                            // A valid WRITE with a payload to come.
                            self.state = State::Payload(h);
                        }
                        Err((error, reason)) => {
                            let rejection = Rejection {
                                cookie: h.cookie,
                                command: h.command,
                                error,
                                reason,
                            };
                            if h.command == cmd::WRITE && h.len > 0 {
                                self.state = State::Discard {
                                    remaining_bytes: u64::from(h.len),
                                    rejection,
                                };
                            } else {
                                return Ok(Some(Decoded::Rejected(rejection)));
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Ok(Some)`: a complete command; `Ok(None)`: DISC, or a valid WRITE
    /// whose payload follows; `Err`: reject with this NBD error.
    fn validate(&self, h: &Header) -> Result<Option<Command>, (u32, &'static str)> {
        let cfg = &self.cfg;
        let advertised = cfg.transmission_flags;
        let read_only = advertised & tf::READ_ONLY != 0;
        if h.command == cmd::DISC {
            return Ok(None);
        }

        // Flags valid for this command (FUA is valid on every command once
        // SEND_FUA is advertised; it is a no-op where nothing is written).
        let mut allowed = 0u16;
        if advertised & tf::SEND_FUA != 0 {
            allowed |= cmd_flags::FUA;
        }
        match h.command {
            cmd::READ if advertised & tf::SEND_DF != 0 && cfg.structured_replies => {
                allowed |= cmd_flags::DF
            }
            cmd::WRITE_ZEROES => {
                allowed |= cmd_flags::NO_HOLE;
                if advertised & tf::SEND_FAST_ZERO != 0 {
                    allowed |= cmd_flags::FAST_ZERO;
                }
            }
            cmd::BLOCK_STATUS => allowed |= cmd_flags::REQ_ONE,
            cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE => {}
            _ => return Err((nbd_err::EINVAL, "unknown command")),
        }
        if h.flags & !allowed != 0 {
            return Err((nbd_err::EINVAL, "unknown or inapplicable command flag"));
        }

        let writes = matches!(h.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && read_only {
            return Err((nbd_err::EPERM, "the export is read-only"));
        }
        let supported = match h.command {
            cmd::TRIM => advertised & tf::SEND_TRIM != 0,
            cmd::WRITE_ZEROES => advertised & tf::SEND_WRITE_ZEROES != 0,
            cmd::CACHE => advertised & tf::SEND_CACHE != 0,
            cmd::FLUSH => advertised & tf::SEND_FLUSH != 0,
            cmd::BLOCK_STATUS => cfg.base_allocation_id.is_some(),
            _ => true,
        };
        if !supported {
            return Err((
                nbd_err::EINVAL,
                if h.command == cmd::BLOCK_STATUS {
                    "NBD_CMD_BLOCK_STATUS without a negotiated base:allocation context"
                } else {
                    "command not advertised for this export"
                },
            ));
        }
        if h.command == cmd::FLUSH {
            if h.offset != 0 || h.len != 0 {
                return Err((nbd_err::EINVAL, "NBD_CMD_FLUSH needs offset and length 0"));
            }
            return Ok(Some(Command::Flush));
        }

        if matches!(h.command, cmd::READ | cmd::WRITE) && h.len > cfg.max_payload_bytes {
            return Err((nbd_err::EINVAL, "request length exceeds the payload limit"));
        }
        let Some(end) = h.offset.checked_add(u64::from(h.len)) else {
            return Err((nbd_err::EINVAL, "offset + length overflows"));
        };
        if end > cfg.size_bytes || h.offset > cfg.size_bytes {
            // Writes past the end get ENOSPC (spec SHOULD), everything else EINVAL.
            let error = if writes {
                nbd_err::ENOSPC
            } else {
                nbd_err::EINVAL
            };
            return Err((error, "request extends past the end of the export"));
        }
        if h.len == 0 {
            if h.command == cmd::BLOCK_STATUS {
                return Err((nbd_err::EINVAL, "zero-length NBD_CMD_BLOCK_STATUS"));
            }
            // A zero-length WRITE has no payload; nothing to wait for.
            return Ok(Some(Command::Noop { command: h.command }));
        }

        let (offset, len) = (h.offset, h.len);
        let command = match h.command {
            cmd::READ => Command::Read { offset, len },
            cmd::WRITE => return Ok(None),
            cmd::TRIM => Command::Trim {
                offset,
                len,
                durability: durability(h.flags),
            },
            cmd::WRITE_ZEROES => Command::WriteZeroes {
                offset,
                len,
                flags: ZeroFlags {
                    durability: durability(h.flags),
                    may_trim: h.flags & cmd_flags::NO_HOLE == 0,
                    fast_only: h.flags & cmd_flags::FAST_ZERO != 0,
                },
            },
            cmd::CACHE => Command::Cache { offset, len },
            cmd::BLOCK_STATUS => Command::BlockStatus {
                offset,
                len,
                req_one: h.flags & cmd_flags::REQ_ONE != 0,
                context_id: cfg.base_allocation_id.unwrap_or(proto::BASE_ALLOCATION_ID),
            },
            _ => return Err((nbd_err::EINVAL, "unknown command")),
        };
        Ok(Some(command))
    }
}

fn durability(flags: u16) -> Durability {
    if flags & cmd_flags::FUA != 0 {
        Durability::Fua
    } else {
        Durability::Buffered
    }
}
