//! Server side of the fixed-newstyle handshake and option haggling.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::NbdError;
use crate::proto::{self, client_flags, handshake_flags, info, opt, rep, transmission_flags};

/// Default cap on one option's payload (64 KiB): far above anything a real
/// client sends, small enough that buffering it is harmless.
pub const DEFAULT_MAX_OPTION_BYTES: u32 = 64 * 1024;
/// Default cap on options per handshake (`nbdinfo --list` on many exports
/// sends a few per export).
pub const DEFAULT_MAX_OPTIONS: usize = 4096;

/// What the handshake tells a client about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: Option<String>,
    pub size_bytes: u64,
    /// Transmission flags, without `NBD_FLAG_SEND_DF` (added only when
    /// structured replies are negotiated, as the spec requires).
    pub flags: u16,
    pub min_block_bytes: u32,
    pub preferred_block_bytes: u32,
    pub max_block_bytes: u32,
}

/// Limits on what a client may send during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Larger option payloads are skipped in bounded steps and answered
    /// `NBD_REP_ERR_TOO_BIG` (`NBD_OPT_EXPORT_NAME`: disconnect).
    pub max_option_bytes: u32,
    /// More options than this in one handshake → disconnect.
    pub max_options: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_option_bytes: DEFAULT_MAX_OPTION_BYTES,
            max_options: DEFAULT_MAX_OPTIONS,
        }
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub export_index: usize,
    pub size_bytes: u64,
    /// The transmission flags as sent to the client.
    pub transmission_flags: u16,
    pub structured_replies: bool,
    /// Context id of `base:allocation` if it was selected for this export.
    pub base_allocation_id: Option<u32>,
    /// The client negotiated `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
}

/// What [`Handshake::advance`] reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Feed more bytes (after writing out any pending output).
    NeedMore,
    /// Transmission begins; bytes left in the input belong to it.
    Done(Negotiated),
    /// The client sent `NBD_OPT_ABORT` (acknowledged); close after writing output.
    Aborted,
}

#[derive(Debug, Clone)]
enum State {
    ClientFlags,
    Options,
    /// Draining an oversized option payload before answering it.
    Skipping {
        option: u32,
        remaining_bytes: u64,
    },
    Finished(HandshakeStatus),
}

#[derive(Debug, Clone, Copy)]
struct MetaSelection {
    export_index: usize,
    base_allocation: bool,
}

/// Server-side handshake state machine. Create it, write out
/// [`Handshake::take_output`] (the greeting), then alternate reading into a
/// buffer, [`Handshake::advance`], and writing out output.
#[derive(Debug)]
pub struct Handshake {
    exports: Vec<ExportInfo>,
    limits: HandshakeLimits,
    state: State,
    no_zeroes: bool,
    structured: bool,
    meta: Option<MetaSelection>,
    options_seen: usize,
    out: BytesMut,
}

enum OptOutcome {
    Continue,
    Finish(HandshakeStatus),
}

impl Handshake {
    pub fn new(exports: Vec<ExportInfo>, limits: HandshakeLimits) -> Self {
        let mut out = BytesMut::with_capacity(256);
        out.put_u64(proto::NBD_MAGIC);
        out.put_u64(proto::IHAVEOPT);
        out.put_u16(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES);
        Self {
            exports,
            limits,
            state: State::ClientFlags,
            no_zeroes: false,
            structured: false,
            meta: None,
            options_seen: 0,
            out,
        }
    }

    /// Bytes the server must send now (greeting, option replies).
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// How many bytes the machine wants buffered before it can progress:
    /// never more than `max_option_bytes` + the option header.
    pub fn bytes_wanted(&self, input: &[u8]) -> usize {
        match &self.state {
            State::ClientFlags => 4,
            State::Options => {
                if input.len() < proto::OPTION_HEADER_BYTES {
                    return proto::OPTION_HEADER_BYTES;
                }
                let len = u32::from_be_bytes([input[12], input[13], input[14], input[15]]);
                if len > self.limits.max_option_bytes {
                    proto::OPTION_HEADER_BYTES
                } else {
                    proto::OPTION_HEADER_BYTES + len as usize
                }
            }
            State::Skipping { .. } => 1,
            State::Finished(_) => 0,
        }
    }

    /// Consume as much of `input` as possible. Errors mean: disconnect (after
    /// writing any pending output).
    pub fn advance(&mut self, input: &mut BytesMut) -> Result<HandshakeStatus, NbdError> {
        loop {
            match &mut self.state {
                State::Finished(status) => return Ok(status.clone()),
                State::ClientFlags => {
                    if input.len() < 4 {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    let flags = input.get_u32();
                    let known = client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES;
                    if flags & !known != 0 {
                        return Err(NbdError::UnknownClientFlags { flags });
                    }
                    // Clients without FIXED_NEWSTYLE are served the same way
                    // (the spec lets servers honour fixed newstyle anyway).
                    self.no_zeroes = flags & client_flags::NO_ZEROES != 0;
                    self.state = State::Options;
                }
                State::Skipping {
                    option,
                    remaining_bytes,
                } => {
                    let n = (*remaining_bytes).min(input.len() as u64) as usize;
                    input.advance(n);
                    *remaining_bytes -= n as u64;
                    if *remaining_bytes > 0 {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    let option = *option;
                    self.state = State::Options;
                    let msg = format!(
                        "{} payload exceeds the {}-byte option limit",
                        opt::name(option),
                        self.limits.max_option_bytes
                    );
                    self.reply(option, rep::ERR_TOO_BIG, msg.as_bytes());
                }
                State::Options => {
                    if input.len() < proto::OPTION_HEADER_BYTES {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    let magic = u64::from_be_bytes(read_array(&input[0..8]));
                    if magic != proto::IHAVEOPT {
                        return Err(NbdError::BadOptionMagic {
                            magic,
                            expected: proto::IHAVEOPT,
                        });
                    }
                    let option = u32::from_be_bytes(read_array(&input[8..12]));
                    let len = u32::from_be_bytes(read_array(&input[12..16]));
                    if len > self.limits.max_option_bytes {
                        self.count_option()?;
                        if option == opt::EXPORT_NAME {
                            return Err(NbdError::OptionTooLarge {
                                option,
                                option_name: opt::name(option),
                                length_bytes: len,
                                limit_bytes: self.limits.max_option_bytes,
                            });
                        }
                        input.advance(proto::OPTION_HEADER_BYTES);
                        self.state = State::Skipping {
                            option,
                            remaining_bytes: u64::from(len),
                        };
                        continue;
                    }
                    let total = proto::OPTION_HEADER_BYTES + len as usize;
                    if input.len() < total {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    self.count_option()?;
                    input.advance(proto::OPTION_HEADER_BYTES);
                    let payload = input.split_to(len as usize);
                    match self.handle_option(option, &payload)? {
                        OptOutcome::Continue => {}
                        OptOutcome::Finish(status) => {
                            self.state = State::Finished(status.clone());
                            return Ok(status);
                        }
                    }
                }
            }
        }
    }

    fn count_option(&mut self) -> Result<(), NbdError> {
        self.options_seen += 1;
        if self.options_seen > self.limits.max_options {
            return Err(NbdError::TooManyOptions {
                limit: self.limits.max_options,
            });
        }
        Ok(())
    }

    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.out.reserve(20 + data.len());
        self.out.put_u64(proto::OPTION_REPLY_MAGIC);
        self.out.put_u32(option);
        self.out.put_u32(reply_type);
        // Every reply we build is far below 4 GiB (option payloads are capped).
        self.out.put_u32(data.len() as u32);
        self.out.put_slice(data);
    }

    fn find_export(&self, name: &[u8]) -> Option<usize> {
        if let Some(i) = self.exports.iter().position(|e| e.name.as_bytes() == name) {
            return Some(i);
        }
        // The empty name means "the default export": the first one.
        if name.is_empty() && !self.exports.is_empty() {
            return Some(0);
        }
        None
    }

    fn flags_for(&self, index: usize) -> u16 {
        let mut flags = self.exports[index].flags | transmission_flags::HAS_FLAGS;
        if self.structured {
            flags |= transmission_flags::SEND_DF;
        } else {
            flags &= !transmission_flags::SEND_DF;
        }
        flags
    }

    fn negotiated(&self, index: usize) -> Negotiated {
        let base_allocation_id = match self.meta {
            Some(m) if m.export_index == index && m.base_allocation && self.structured => {
                Some(proto::BASE_ALLOCATION_ID)
            }
            _ => None,
        };
        Negotiated {
            export_index: index,
            size_bytes: self.exports[index].size_bytes,
            transmission_flags: self.flags_for(index),
            structured_replies: self.structured,
            base_allocation_id,
            no_zeroes: self.no_zeroes,
        }
    }

    fn handle_option(&mut self, option: u32, payload: &[u8]) -> Result<OptOutcome, NbdError> {
        match option {
            opt::EXPORT_NAME => {
                let Some(index) = self.find_export(payload) else {
                    return Err(NbdError::UnknownExport {
                        name: String::from_utf8_lossy(payload).into_owned(),
                    });
                };
                let n = self.negotiated(index);
                self.out.put_u64(n.size_bytes);
                self.out.put_u16(n.transmission_flags);
                if !self.no_zeroes {
                    self.out.put_bytes(0, proto::EXPORT_NAME_ZERO_PAD_BYTES);
                }
                Ok(OptOutcome::Finish(HandshakeStatus::Done(n)))
            }
            opt::ABORT => {
                self.reply(option, rep::ACK, &[]);
                Ok(OptOutcome::Finish(HandshakeStatus::Aborted))
            }
            opt::LIST => {
                if !payload.is_empty() {
                    self.reply(option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data");
                    return Ok(OptOutcome::Continue);
                }
                for i in 0..self.exports.len() {
                    let export = &self.exports[i];
                    let name = export.name.as_bytes();
                    // The rest of the reply is the export's free-form details
                    // (nbdinfo --list shows it as the description).
                    let details = export.description.as_deref().unwrap_or("").as_bytes();
                    let mut data = Vec::with_capacity(4 + name.len() + details.len());
                    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    data.extend_from_slice(name);
                    data.extend_from_slice(details);
                    self.reply(option, rep::SERVER, &data);
                }
                self.reply(option, rep::ACK, &[]);
                Ok(OptOutcome::Continue)
            }
            opt::INFO | opt::GO => self.handle_info(option, payload),
            opt::STRUCTURED_REPLY => {
                if !payload.is_empty() {
                    self.reply(
                        option,
                        rep::ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                } else {
                    self.structured = true;
                    self.reply(option, rep::ACK, &[]);
                }
                Ok(OptOutcome::Continue)
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.handle_meta(option, payload);
                Ok(OptOutcome::Continue)
            }
            opt::STARTTLS => {
                self.reply(
                    option,
                    rep::ERR_UNSUP,
                    b"TLS is not offered on this listener",
                );
                Ok(OptOutcome::Continue)
            }
            _ => {
                // EXTENDED_HEADERS, PEEK_EXPORT and unknown options: the
                // payload is already consumed, the session goes on.
                let msg = format!("{} ({option}) is not supported", opt::name(option));
                self.reply(option, rep::ERR_UNSUP, msg.as_bytes());
                Ok(OptOutcome::Continue)
            }
        }
    }

    fn handle_info(&mut self, option: u32, payload: &[u8]) -> Result<OptOutcome, NbdError> {
        let Some((name, requests)) = parse_info_payload(payload) else {
            self.reply(
                option,
                rep::ERR_INVALID,
                b"malformed NBD_OPT_INFO/NBD_OPT_GO payload",
            );
            return Ok(OptOutcome::Continue);
        };
        let Some(index) = self.find_export(name) else {
            let msg = format!("unknown export {:?}", String::from_utf8_lossy(name));
            self.reply(option, rep::ERR_UNKNOWN, msg.as_bytes());
            return Ok(OptOutcome::Continue);
        };
        let n = self.negotiated(index);
        let export = self.exports[index].clone();

        // NBD_INFO_EXPORT is always sent; others only when asked, once each.
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&info::EXPORT.to_be_bytes());
        data.extend_from_slice(&n.size_bytes.to_be_bytes());
        data.extend_from_slice(&n.transmission_flags.to_be_bytes());
        self.reply(option, rep::INFO, &data);

        let mut sent = [false; 4];
        for chunk in requests.chunks_exact(2) {
            let kind = u16::from_be_bytes([chunk[0], chunk[1]]);
            let Some(slot) = sent.get_mut(kind as usize) else {
                continue; // unknown info types are ignored
            };
            if *slot {
                continue;
            }
            *slot = true;
            data.clear();
            data.extend_from_slice(&kind.to_be_bytes());
            match kind {
                info::NAME => data.extend_from_slice(export.name.as_bytes()),
                info::DESCRIPTION => match &export.description {
                    Some(d) => data.extend_from_slice(d.as_bytes()),
                    None => continue,
                },
                info::BLOCK_SIZE => {
                    data.extend_from_slice(&export.min_block_bytes.to_be_bytes());
                    data.extend_from_slice(&export.preferred_block_bytes.to_be_bytes());
                    data.extend_from_slice(&export.max_block_bytes.to_be_bytes());
                }
                _ => continue, // EXPORT already sent
            }
            self.reply(option, rep::INFO, &data);
        }
        self.reply(option, rep::ACK, &[]);
        if option == opt::GO {
            Ok(OptOutcome::Finish(HandshakeStatus::Done(n)))
        } else {
            Ok(OptOutcome::Continue)
        }
    }

    fn handle_meta(&mut self, option: u32, payload: &[u8]) {
        let set = option == opt::SET_META_CONTEXT;
        if set {
            // Any SET replaces the previous selection, failed ones included.
            self.meta = None;
        }
        if !self.structured {
            self.reply(
                option,
                rep::ERR_INVALID,
                b"metadata contexts need NBD_OPT_STRUCTURED_REPLY first",
            );
            return;
        }
        let Some((name, queries)) = parse_meta_payload(payload) else {
            self.reply(option, rep::ERR_INVALID, b"malformed meta context payload");
            return;
        };
        let Some(index) = self.find_export(name) else {
            let msg = format!("unknown export {:?}", String::from_utf8_lossy(name));
            self.reply(option, rep::ERR_UNKNOWN, msg.as_bytes());
            return;
        };
        let mut matched = queries.count == 0 && !set;
        for query in queries {
            // "base:" (namespace only) lists every base context, but only an
            // exact name selects one.
            if query == proto::BASE_ALLOCATION.as_bytes() || (!set && query == b"base:") {
                matched = true;
            }
        }
        if matched {
            let id = if set { proto::BASE_ALLOCATION_ID } else { 0 };
            let mut data = Vec::with_capacity(4 + proto::BASE_ALLOCATION.len());
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
            self.reply(option, rep::META_CONTEXT, &data);
        }
        if set {
            self.meta = Some(MetaSelection {
                export_index: index,
                base_allocation: matched,
            });
        }
        self.reply(option, rep::ACK, &[]);
    }
}

fn read_array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

/// `NBD_OPT_INFO`/`GO` payload: u32 name length, name, u16 count, count × u16.
fn parse_info_payload(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let name_len = u32::from_be_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    if name_len > proto::MAX_STRING_BYTES {
        return None;
    }
    let name = p.get(4..4usize.checked_add(name_len)?)?;
    let rest = &p[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let requests = &rest[2..];
    if requests.len() != count * 2 {
        return None;
    }
    Some((name, requests))
}

/// Iterator over the queries of a meta-context option (already validated).
struct Queries<'a> {
    rest: &'a [u8],
    count: u32,
}

impl<'a> Iterator for Queries<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(read_array(&self.rest[0..4])) as usize;
        let q = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some(q)
    }
}

/// Meta-context payload: u32 name length, name, u32 count, count × (u32 length, query).
fn parse_meta_payload(p: &[u8]) -> Option<(&[u8], Queries<'_>)> {
    let name_len = u32::from_be_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    if name_len > proto::MAX_STRING_BYTES {
        return None;
    }
    let name = p.get(4..4usize.checked_add(name_len)?)?;
    let rest = &p[4 + name_len..];
    let count = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
    let queries = &rest[4..];
    // Validate the whole list up front so the iterator never sees garbage.
    let mut cursor = queries;
    for _ in 0..count {
        let len = u32::from_be_bytes(cursor.get(0..4)?.try_into().ok()?) as usize;
        if len > proto::MAX_STRING_BYTES {
            return None;
        }
        cursor = cursor.get(4 + len..)?;
    }
    if !cursor.is_empty() {
        return None;
    }
    Some((
        name,
        Queries {
            rest: queries,
            count,
        },
    ))
}
