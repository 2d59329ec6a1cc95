//! `wire` frames over any async byte stream (TLS over TCP, a QUIC stream pair).

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use wire::{encode_frame, Decoder, Limits, Message};

use crate::classify::classify_io_error;
use crate::error::{Result, TransportError};

/// iovecs handed to one `write_vectored` call (Linux IOV_MAX is 1024; a frame
/// rarely has more than a few dozen chunks).
const MAX_IOVECS_PER_WRITE: usize = 64;

/// Reads and writes whole `wire` messages. Read buffering is bounded by the wire
/// decoder (one maximal frame plus one read chunk).
///
/// `recv` is cancel-safe (partial input stays buffered); `send` is not.
#[derive(Debug)]
pub struct FramedConn<R, W> {
    reader: R,
    writer: W,
    decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite> FramedConn<ReadHalf<S>, WriteHalf<S>> {
    /// Split a duplex stream (e.g. a TLS stream) into a framed connection.
    pub fn from_stream(stream: S, limits: Limits) -> Self {
        let (r, w) = tokio::io::split(stream);
        FramedConn::new(r, w, limits)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> FramedConn<R, W> {
    pub fn new(reader: R, writer: W, limits: Limits) -> Self {
        FramedConn {
            reader,
            writer,
            decoder: Decoder::new(limits),
        }
    }

    pub fn limits(&self) -> &Limits {
        self.decoder.limits()
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.decoder.buffered_bytes()
    }

    /// Encode and write one message without flushing (batch several, then `flush`).
    /// Payload data is written straight from the message's `Bytes` (vectored write).
    pub async fn write_message(&mut self, msg: &Message) -> Result<()> {
        let frame = encode_frame(msg, self.decoder.limits())?;
        write_all_chunks(&mut self.writer, frame.chunks)
            .await
            .map_err(|e| classify_io_error("write frame", e))
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .await
            .map_err(|e| classify_io_error("flush", e))
    }

    /// Write one message and flush.
    pub async fn send(&mut self, msg: &Message) -> Result<()> {
        self.write_message(msg).await?;
        self.flush().await
    }

    /// Next message. `Err(Closed)` on a clean end of stream between frames,
    /// `Err(Wire(Truncated))` if the stream ended inside a frame.
    pub async fn recv(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            let read = self.reader.read_buf(&mut self.decoder.read_buffer()).await;
            match read {
                Ok(0) => return self.end_of_stream(),
                Ok(_) => {}
                Err(e) => {
                    return match classify_io_error("read frame", e) {
                        TransportError::Closed => self.end_of_stream(),
                        other => Err(other),
                    }
                }
            }
        }
    }

    fn end_of_stream(&self) -> Result<Message> {
        self.decoder.finish()?;
        Err(TransportError::Closed)
    }

    /// Close our sending side (TLS close_notify / QUIC FIN).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.writer
            .shutdown()
            .await
            .map_err(|e| classify_io_error("shutdown", e))
    }

    pub fn get_ref(&self) -> (&R, &W) {
        (&self.reader, &self.writer)
    }

    pub fn get_mut(&mut self) -> (&mut R, &mut W) {
        (&mut self.reader, &mut self.writer)
    }

    pub fn into_parts(self) -> (R, W) {
        (self.reader, self.writer)
    }
}

async fn write_all_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut chunks: Vec<Bytes>,
) -> io::Result<()> {
    let mut idx = 0;
    while idx < chunks.len() {
        if chunks[idx].is_empty() {
            idx += 1;
            continue;
        }
        let written = {
            let slices: Vec<IoSlice<'_>> = chunks[idx..]
                .iter()
                .take(MAX_IOVECS_PER_WRITE)
                .map(|c| IoSlice::new(c))
                .collect();
            w.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 && idx < chunks.len() {
            let c = &mut chunks[idx];
            if left >= c.len() {
                left -= c.len();
                idx += 1;
            } else {
                c.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}
