//! Reply encoding: a small fixed header kept inline (no heap) plus an
//! optional `Bytes` payload, written together with one vectored write.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::{self, error as nbd_err, reply_flags, reply_type, state};
use crate::target::Extent;

/// Largest inline header: a structured chunk header plus the 8-byte offset
/// of `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const MAX_REPLY_HEAD_BYTES: usize = 32;
/// Cap on descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk; the spec
/// lets a server describe less than was asked.
pub const MAX_BLOCK_STATUS_EXTENTS: usize = 64 * 1024;

/// Error messages are strings, which the spec caps at 4096 bytes.
const MAX_ERROR_MESSAGE_BYTES: usize = proto::MAX_STRING_BYTES;

/// One complete reply (simple reply, or one structured chunk with DONE set).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    head: [u8; MAX_REPLY_HEAD_BYTES],
    head_len: u8,
    payload: Bytes,
}

impl std::fmt::Debug for ReplyFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyFrame")
            .field("head", &self.head())
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

impl ReplyFrame {
    fn new() -> Self {
        Self {
            head: [0; MAX_REPLY_HEAD_BYTES],
            head_len: 0,
            payload: Bytes::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        let start = self.head_len as usize;
        self.head[start..start + bytes.len()].copy_from_slice(bytes);
        self.head_len += bytes.len() as u8;
    }

    fn simple(cookie: u64, error: u32) -> Self {
        let mut f = Self::new();
        f.put(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
        f.put(&error.to_be_bytes());
        f.put(&cookie.to_be_bytes());
        f
    }

    fn chunk(cookie: u64, flags: u16, kind: u16, length: u32) -> Self {
        let mut f = Self::new();
        f.put(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        f.put(&flags.to_be_bytes());
        f.put(&kind.to_be_bytes());
        f.put(&cookie.to_be_bytes());
        f.put(&length.to_be_bytes());
        f
    }

    /// The header bytes (and for reads, the chunk's offset field).
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    /// Bytes sent after [`ReplyFrame::head`].
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub fn wire_len(&self) -> usize {
        self.head_len as usize + self.payload.len()
    }

    /// The whole reply as one buffer (tests, fuzzing; servers use head/payload).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        v.extend_from_slice(self.head());
        v.extend_from_slice(&self.payload);
        v
    }

    /// Success without data: a simple reply, or `NBD_REPLY_TYPE_NONE` + DONE.
    pub fn ok(cookie: u64, structured: bool) -> Self {
        if structured {
            Self::chunk(cookie, reply_flags::DONE, reply_type::NONE, 0)
        } else {
            Self::simple(cookie, 0)
        }
    }

    /// An error: a simple reply (no payload, even for READ), or an
    /// `NBD_REPLY_TYPE_ERROR` chunk with DONE carrying `message`.
    pub fn error(cookie: u64, structured: bool, error: u32, message: &str) -> Self {
        // Zero would read as success.
        let error = if error == 0 { nbd_err::EIO } else { error };
        if !structured {
            return Self::simple(cookie, error);
        }
        let msg = truncate_utf8(message, MAX_ERROR_MESSAGE_BYTES);
        let mut payload = BytesMut::with_capacity(6 + msg.len());
        payload.put_u32(error);
        payload.put_u16(msg.len() as u16);
        payload.put_slice(msg.as_bytes());
        let mut f = Self::chunk(
            cookie,
            reply_flags::DONE,
            reply_type::ERROR,
            payload.len() as u32,
        );
        f.payload = payload.freeze();
        f
    }

    /// Successful READ data. With structured replies, one
    /// `NBD_REPLY_TYPE_OFFSET_DATA` chunk with DONE (so DF is always met).
    /// `data` must be at most `u32::MAX - 8` bytes (the payload limit is far
    /// lower); empty data becomes [`ReplyFrame::ok`].
    pub fn read(cookie: u64, structured: bool, offset: u64, data: Bytes) -> Self {
        if !structured {
            let mut f = Self::simple(cookie, 0);
            f.payload = data;
            return f;
        }
        if data.is_empty() {
            return Self::ok(cookie, true);
        }
        let length = (data.len() as u64 + 8).min(u64::from(u32::MAX)) as u32;
        let mut f = Self::chunk(cookie, reply_flags::DONE, reply_type::OFFSET_DATA, length);
        f.put(&offset.to_be_bytes());
        f.payload = data;
        f
    }

    /// A `base:allocation` answer: one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk
    /// with DONE. Extents are clipped to `len_bytes`, zero-length ones
    /// dropped, equal neighbours merged, at most one kept with `req_one`, at
    /// least one sent (status 0 over the whole range if the target gave none).
    pub fn block_status(
        cookie: u64,
        context_id: u32,
        extents: &[Extent],
        len_bytes: u32,
        req_one: bool,
    ) -> Self {
        let mut descriptors: Vec<(u32, u32)> = Vec::with_capacity(extents.len().min(64));
        let mut remaining = len_bytes;
        for e in extents {
            if remaining == 0 {
                break;
            }
            if e.length_bytes == 0 {
                continue;
            }
            let len = e.length_bytes.min(u64::from(remaining)) as u32;
            let mut flags = 0;
            if e.hole {
                flags |= state::HOLE;
            }
            if e.zero {
                flags |= state::ZERO;
            }
            remaining -= len;
            match descriptors.last_mut() {
                Some(last) if last.1 == flags => last.0 += len,
                _ => {
                    if descriptors.len() == MAX_BLOCK_STATUS_EXTENTS {
                        break;
                    }
                    descriptors.push((len, flags));
                }
            }
        }
        if descriptors.is_empty() {
            descriptors.push((len_bytes, 0));
        }
        if req_one {
            descriptors.truncate(1);
        }
        let mut payload = BytesMut::with_capacity(4 + 8 * descriptors.len());
        payload.put_u32(context_id);
        for (len, flags) in descriptors {
            payload.put_u32(len);
            payload.put_u32(flags);
        }
        let mut f = Self::chunk(
            cookie,
            reply_flags::DONE,
            reply_type::BLOCK_STATUS,
            payload.len() as u32,
        );
        f.payload = payload.freeze();
        f
    }
}

fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
