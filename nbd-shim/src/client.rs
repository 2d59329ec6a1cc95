//! A minimal blocking NBD client: fixed newstyle, NBD_OPT_GO, simple
//! replies, pipelined requests. For workloads that must know exactly which
//! request was acknowledged when (crash checkers, `driftless demo`), where
//! fio or qemu-io cannot tell.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

type Result<T> = std::result::Result<T, io::Error>;

fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(protocol(format!($($fmt)+)));
        }
    };
}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const FLAG_FIXED_NEWSTYLE: u32 = 1;
const FLAG_NO_ZEROES: u32 = 2;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

pub struct Client {
    sock: UnixStream,
    pub size_bytes: u64,
}

/// One reply: the cookie it answers, the NBD error (0 = ok) and read data.
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
}

impl Client {
    pub fn connect(socket: &Path, export: &str) -> Result<Client> {
        let mut sock = UnixStream::connect(socket)?;
        ensure!(read_u64(&mut sock)? == NBDMAGIC, "bad NBDMAGIC");
        ensure!(
            read_u64(&mut sock)? == IHAVEOPT,
            "server is not fixed newstyle"
        );
        let _server_flags = read_u16(&mut sock)?;
        sock.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
        // NBD_OPT_GO: name length, name, zero information requests.
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        sock.write_all(&opt)?;
        let mut size_bytes = None;
        loop {
            ensure!(
                read_u64(&mut sock)? == REPLY_MAGIC_OPT,
                "bad option reply magic"
            );
            let _opt = read_u32(&mut sock)?;
            let kind = read_u32(&mut sock)?;
            let len = read_u32(&mut sock)? as usize;
            ensure!(len <= 1 << 16, "option reply of {len} bytes");
            let mut body = vec![0u8; len];
            sock.read_exact(&mut body)?;
            match kind {
                REP_ACK => break,
                // NBD_INFO_EXPORT: u16 type 0, u64 size, u16 flags.
                REP_INFO if body.len() >= 12 && body[..2] == [0, 0] => {
                    size_bytes = Some(u64::from_be_bytes(body[2..10].try_into().expect("8 bytes")));
                }
                REP_INFO => {}
                other if other & 0x8000_0000 != 0 => {
                    return Err(protocol(format!(
                        "NBD_OPT_GO refused with reply {other:#x}"
                    )));
                }
                other => return Err(protocol(format!("unexpected option reply {other}"))),
            }
        }
        let size_bytes =
            size_bytes.ok_or_else(|| protocol("server sent no NBD_INFO_EXPORT".into()))?;
        Ok(Client { sock, size_bytes })
    }

    pub fn try_clone(&self) -> Result<Client> {
        Ok(Client {
            sock: self.sock.try_clone()?,
            size_bytes: self.size_bytes,
        })
    }

    /// Sends one request (and its payload for writes) without waiting.
    pub fn send(
        &mut self,
        cmd: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<()> {
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.sock.write_all(&req)?;
        Ok(())
    }

    /// Reads one simple reply; `read_len` bytes of data follow a successful
    /// read reply (the caller knows which cookie is a read).
    pub fn recv(&mut self, read_len_for: impl Fn(u64) -> usize) -> Result<(Reply, Vec<u8>)> {
        ensure!(
            read_u32(&mut self.sock)? == SIMPLE_REPLY_MAGIC,
            "bad simple reply magic"
        );
        let error = read_u32(&mut self.sock)?;
        let cookie = read_u64(&mut self.sock)?;
        let mut data = Vec::new();
        if error == 0 {
            data.resize(read_len_for(cookie), 0);
            self.sock.read_exact(&mut data)?;
        }
        Ok((Reply { cookie, error }, data))
    }

    /// Synchronous read of `[offset, offset + len)`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.send(CMD_READ, u64::MAX, offset, len, &[])?;
        let (reply, data) = self.recv(|_| len as usize)?;
        ensure!(
            reply.error == 0,
            "read at {offset} failed with NBD error {}",
            reply.error
        );
        Ok(data)
    }

    pub fn disconnect(mut self) -> Result<()> {
        self.send(CMD_DISC, 0, 0, 0, &[])
    }
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u16(r: &mut impl Read) -> Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
