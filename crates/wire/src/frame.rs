//! Frame header, encoder and the incremental decoder.

use bytes::buf::Limit;
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{malformed, WireError};
use crate::message::{decode_payload, encode_payload, ChunkWriter, Message, MessageType};
use crate::{Limits, FRAME_HEADER_BYTES, MAGIC, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};

/// Parsed and validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub msg_type: u16,
    pub flags: u32,
    pub payload_len_bytes: u32,
    pub crc32: u32,
}

impl FrameHeader {
    /// Validate the fixed fields of a header. Checks run in wire order so that the
    /// first wrong field is the one named.
    pub fn parse(h: &[u8; FRAME_HEADER_BYTES], limits: &Limits) -> Result<Self, WireError> {
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic {
                got: magic,
                expected: MAGIC,
            });
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            return Err(WireError::UnsupportedVersion {
                got: version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION,
            });
        }
        let msg_type = u16::from_le_bytes([h[6], h[7]]);
        let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let payload_len_bytes = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let crc32 = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        if payload_len_bytes > limits.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                len_bytes: u64::from(payload_len_bytes),
                max_bytes: limits.max_frame_bytes,
            });
        }
        if flags != 0 {
            // Version 1 defines no flags; a set bit means a feature we cannot honour.
            return Err(malformed("header.flags", "unknown flag bits set"));
        }
        Ok(FrameHeader {
            version,
            msg_type,
            flags,
            payload_len_bytes,
            crc32,
        })
    }

    pub fn frame_len_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_len_bytes as usize
    }
}

/// An encoded frame as a list of chunks: `chunks[0]` is the 20-byte header, the rest
/// is the payload, where large data fields are the caller's `Bytes` (not copied).
/// Write it with one vectored write.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub chunks: Vec<Bytes>,
    pub len_bytes: usize,
}

impl EncodedFrame {
    /// Contiguous copy of the frame (tests, fuzz seeds, small control messages).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len_bytes);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    }
}

/// Encode `msg` as one frame at the current [`PROTOCOL_VERSION`].
pub fn encode_frame(msg: &Message, limits: &Limits) -> Result<EncodedFrame, WireError> {
    encode_frame_version(msg, PROTOCOL_VERSION, limits)
}

/// Encode with an explicit header version (used to answer an older peer).
pub fn encode_frame_version(
    msg: &Message,
    version: u16,
    limits: &Limits,
) -> Result<EncodedFrame, WireError> {
    let mut w = ChunkWriter::new();
    encode_payload(&mut w, msg, limits)?;
    let (payload_chunks, payload_len) = w.finish();
    if payload_len > limits.max_frame_bytes as usize {
        return Err(WireError::FrameTooLarge {
            len_bytes: payload_len as u64,
            max_bytes: limits.max_frame_bytes,
        });
    }
    let mut header = BytesMut::with_capacity(FRAME_HEADER_BYTES);
    header.put_u32_le(MAGIC);
    header.put_u16_le(version);
    header.put_u16_le(msg.message_type() as u16);
    header.put_u32_le(0); // flags
    header.put_u32_le(payload_len as u32);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    for c in &payload_chunks {
        crc.update(c);
    }
    header.put_u32_le(crc.finalize());
    let mut chunks = Vec::with_capacity(payload_chunks.len() + 1);
    chunks.push(header.freeze());
    chunks.extend(payload_chunks);
    Ok(EncodedFrame {
        chunks,
        len_bytes: FRAME_HEADER_BYTES + payload_len,
    })
}

/// Append one encoded frame to `dst` (copies payload data; for small messages).
pub fn encode_into(msg: &Message, limits: &Limits, dst: &mut BytesMut) -> Result<(), WireError> {
    let f = encode_frame(msg, limits)?;
    dst.reserve(f.len_bytes);
    for c in &f.chunks {
        dst.extend_from_slice(c);
    }
    Ok(())
}

/// Check a complete frame (header + payload in `frame`) and decode its message.
fn decode_complete(
    header: &FrameHeader,
    frame: Bytes,
    limits: &Limits,
) -> Result<Message, WireError> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..FRAME_HEADER_BYTES - 4]);
    crc.update(&frame[FRAME_HEADER_BYTES..]);
    let computed = crc.finalize();
    if computed != header.crc32 {
        return Err(WireError::BadChecksum {
            expected: header.crc32,
            computed,
        });
    }
    // Type is checked after the CRC: a corrupted type must read as corruption.
    let msg_type = MessageType::from_u16(header.msg_type).ok_or(WireError::UnknownMessage {
        msg_type: header.msg_type,
    })?;
    decode_payload(msg_type, frame.slice(FRAME_HEADER_BYTES..), limits)
}

/// Decode exactly one frame from the start of `input`; returns the message and the
/// number of bytes consumed. An incomplete frame is `Truncated`. This is the
/// one-shot entry point for fuzzing; data fields are copies of `input`.
pub fn decode_message(input: &[u8], limits: &Limits) -> Result<(Message, usize), WireError> {
    if input.len() < FRAME_HEADER_BYTES {
        return Err(WireError::Truncated {
            needed_bytes: FRAME_HEADER_BYTES as u64,
            available_bytes: input.len() as u64,
        });
    }
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h.copy_from_slice(&input[..FRAME_HEADER_BYTES]);
    let header = FrameHeader::parse(&h, limits)?;
    let frame_len = header.frame_len_bytes();
    if input.len() < frame_len {
        return Err(WireError::Truncated {
            needed_bytes: frame_len as u64,
            available_bytes: input.len() as u64,
        });
    }
    let frame = Bytes::copy_from_slice(&input[..frame_len]);
    Ok((decode_complete(&header, frame, limits)?, frame_len))
}

/// How much the decoder asks a reader to fill per read when no frame size is known.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Largest single reservation: buffers grow with data that actually arrived, never
/// up front to a length an attacker announced.
const MAX_RESERVE_BYTES: usize = 1024 * 1024;

/// Incremental decoder: feed bytes in any split, take complete messages out.
///
/// Buffering is bounded by [`Decoder::capacity_bytes`] (one maximal frame plus
/// one read chunk). Decoded data fields are zero-copy slices of the internal buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limits: Limits,
    header: Option<FrameHeader>,
    failed: Option<WireError>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            buf: BytesMut::new(),
            limits,
            header: None,
            failed: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes held, not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Hard cap on buffered bytes.
    pub fn capacity_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.limits.max_frame_bytes as usize + READ_CHUNK_BYTES
    }

    /// Append input. Returns how many bytes of `data` were taken (less than all
    /// when the buffer is at its cap: call [`Decoder::next_message`] and feed the rest).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let room = self.capacity_bytes().saturating_sub(self.buf.len());
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// A bounded buffer for an async reader to fill directly (`read_buf`), sized to
    /// the rest of the current frame (at least one read chunk), within the cap.
    /// Avoids the copy that [`Decoder::feed`] makes.
    pub fn read_buffer(&mut self) -> Limit<&mut BytesMut> {
        let wanted = match &self.header {
            Some(h) => h.frame_len_bytes().saturating_sub(self.buf.len()),
            None => 0,
        }
        .max(READ_CHUNK_BYTES);
        let room = self.capacity_bytes().saturating_sub(self.buf.len());
        let n = wanted.min(room);
        let spare = self.buf.capacity() - self.buf.len();
        if spare < n {
            self.buf.reserve(n.min(MAX_RESERVE_BYTES));
        }
        (&mut self.buf).limit(n)
    }

    /// Next complete message, `Ok(None)` if more input is needed. After an error the
    /// stream is unusable and the same error is returned again.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_inner() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn next_inner(&mut self) -> Result<Option<Message>, WireError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < FRAME_HEADER_BYTES {
                    return Ok(None);
                }
                let mut h = [0u8; FRAME_HEADER_BYTES];
                h.copy_from_slice(&self.buf[..FRAME_HEADER_BYTES]);
                let h = FrameHeader::parse(&h, &self.limits)?;
                self.header = Some(h);
                h
            }
        };
        let frame_len = header.frame_len_bytes();
        if self.buf.len() < frame_len {
            return Ok(None);
        }
        self.header = None;
        let frame = self.buf.split_to(frame_len).freeze();
        decode_complete(&header, frame, &self.limits).map(Some)
    }

    /// Call at end of input: leftover bytes mean the peer stopped mid-frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let needed = match &self.header {
            Some(h) => h.frame_len_bytes(),
            None => FRAME_HEADER_BYTES,
        };
        Err(WireError::Truncated {
            needed_bytes: needed as u64,
            available_bytes: self.buf.len() as u64,
        })
    }
}
