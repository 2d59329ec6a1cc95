//! Server tests: an in-memory target driven by a hand-rolled raw NBD client
//! over a Unix socket (and one over TCP).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nbd_shim::proto::{
    self, cmd, cmd_flags, error as e, opt, rep, reply_flags, reply_type, transmission_flags as tf,
};
use nbd_shim::{
    BlockTarget, Durability, Export, Extent, Listener, Server, ServerLimits, TargetError,
    TargetFeatures, ZeroFlags,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SIZE: u64 = 1 << 20;

struct MemTarget {
    data: Mutex<Vec<u8>>,
    /// Reads at this offset take `slow` before answering.
    slow_offset: Option<u64>,
    slow: Duration,
    /// Notified when a slow read has reached the target.
    slow_started: tokio::sync::Notify,
    flushes: AtomicUsize,
    fua_writes: AtomicUsize,
    last_zero_flags: Mutex<Option<ZeroFlags>>,
}

impl MemTarget {
    fn new() -> Arc<Self> {
        Self::slow_at(None, Duration::ZERO)
    }
    fn slow_at(slow_offset: Option<u64>, slow: Duration) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; SIZE as usize]),
            slow_offset,
            slow,
            slow_started: tokio::sync::Notify::new(),
            flushes: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
            last_zero_flags: Mutex::new(None),
        })
    }
}

impl BlockTarget for MemTarget {
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn features(&self) -> TargetFeatures {
        TargetFeatures {
            read_only: false,
            can_trim: true,
            can_write_zeroes: true,
            can_fast_zero: true,
            can_cache: true,
            preferred_block_bytes: 4096,
        }
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        if Some(offset) == self.slow_offset {
            // notify_one keeps a permit if nobody waits yet.
            self.slow_started.notify_one();
            tokio::time::sleep(self.slow).await;
        }
        let d = self.data.lock().unwrap();
        Ok(Bytes::copy_from_slice(
            &d[offset as usize..offset as usize + len as usize],
        ))
    }
    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<(), TargetError> {
        if durability == Durability::Fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), TargetError> {
        *self.last_zero_flags.lock().unwrap() = Some(flags);
        if flags.fast_only {
            return Err(TargetError::FastZeroUnavailable);
        }
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32, _d: Durability) -> Result<(), TargetError> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
    async fn flush(&self) -> Result<(), TargetError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn cache(&self, _offset: u64, _len: u32) -> Result<(), TargetError> {
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        // First half of the disk is data, second half a hole.
        let half = SIZE / 2;
        let end = offset + u64::from(len);
        let mut v = Vec::new();
        if offset < half {
            v.push(Extent {
                length_bytes: half.min(end) - offset,
                hole: false,
                zero: false,
            });
        }
        if end > half {
            v.push(Extent {
                length_bytes: end - half.max(offset),
                hole: true,
                zero: true,
            });
        }
        Ok(v)
    }
}

struct Running {
    path: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), nbd_shim::NbdError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server result");
    }
}

fn start(exports: Vec<Export<MemTarget>>, limits: ServerLimits) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = Server::new(exports, limits).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(vec![Listener::Unix(listener)], async {
        let _ = rx.await;
    }));
    Running {
        path,
        stop: Some(tx),
        handle,
        _dir: dir,
    }
}

fn export(name: &str, target: Arc<MemTarget>, read_only: bool) -> Export<MemTarget> {
    Export {
        name: name.into(),
        description: Some(format!("{name} export")),
        target,
        read_only,
    }
}

// ---- the raw client ----

struct Client<S> {
    s: S,
    structured: bool,
    size: u64,
    flags: u16,
    pending_reads: HashMap<u64, usize>,
}

#[derive(Debug, Default)]
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
    /// Structured chunk types received, in order.
    chunks: Vec<u16>,
    descriptors: Vec<(u32, u32)>,
}

async fn opt_send<S: AsyncWrite + Unpin>(s: &mut S, option: u32, payload: &[u8]) {
    let mut v = proto::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    s.write_all(&v).await.unwrap();
}

async fn opt_reply<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(&h[0..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut data = vec![0; len];
    s.read_exact(&mut data).await.unwrap();
    (
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        data,
    )
}

fn name_payload(name: &str, trailer: &[u8]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(trailer);
    v
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn handshake(mut s: S, export: &str, structured: bool, meta: bool) -> Self {
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting[0..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).await.unwrap();
        // What qemu 10 does first.
        opt_send(&mut s, opt::EXTENDED_HEADERS, b"").await;
        assert_eq!(opt_reply(&mut s).await.1, rep::ERR_UNSUP);
        if structured {
            opt_send(&mut s, opt::STRUCTURED_REPLY, b"").await;
            assert_eq!(opt_reply(&mut s).await.1, rep::ACK);
        }
        if meta {
            let q = b"base:allocation";
            let mut t = 1u32.to_be_bytes().to_vec();
            t.extend_from_slice(&(q.len() as u32).to_be_bytes());
            t.extend_from_slice(q);
            opt_send(&mut s, opt::SET_META_CONTEXT, &name_payload(export, &t)).await;
            let (_, kind, data) = opt_reply(&mut s).await;
            assert_eq!(kind, rep::META_CONTEXT);
            assert_eq!(&data[4..], q);
            assert_eq!(opt_reply(&mut s).await.1, rep::ACK);
        }
        opt_send(&mut s, opt::GO, &name_payload(export, &[0, 0])).await;
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, kind, data) = opt_reply(&mut s).await;
            match kind {
                rep::INFO if data[0..2] == [0, 0] => {
                    size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                rep::INFO => {}
                rep::ACK => break,
                other => panic!("GO failed: {other:#x} {}", String::from_utf8_lossy(&data)),
            }
        }
        Self {
            s,
            structured,
            size,
            flags,
            pending_reads: HashMap::new(),
        }
    }

    async fn send(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut v = Vec::with_capacity(28 + payload.len());
        v.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&command.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(payload);
        if command == cmd::READ {
            self.pending_reads.insert(cookie, len as usize);
        }
        self.s.write_all(&v).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        let mut r = Reply::default();
        loop {
            let mut magic = [0u8; 4];
            self.s.read_exact(&mut magic).await.unwrap();
            let magic = u32::from_be_bytes(magic);
            if magic == proto::SIMPLE_REPLY_MAGIC {
                assert!(!self.structured || r.chunks.is_empty());
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).await.unwrap();
                r.error = u32::from_be_bytes(h[0..4].try_into().unwrap());
                r.cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                let len = self.pending_reads.remove(&r.cookie).unwrap_or(0);
                if r.error == 0 && len > 0 {
                    r.data = vec![0; len];
                    self.s.read_exact(&mut r.data).await.unwrap();
                }
                return r;
            }
            assert_eq!(magic, proto::STRUCTURED_REPLY_MAGIC, "reply magic");
            assert!(self.structured, "structured reply without negotiation");
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h).await.unwrap();
            let flags = u16::from_be_bytes([h[0], h[1]]);
            let kind = u16::from_be_bytes([h[2], h[3]]);
            r.cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
            let mut p = vec![0; len];
            self.s.read_exact(&mut p).await.unwrap();
            r.chunks.push(kind);
            match kind {
                reply_type::OFFSET_DATA => r.data.extend_from_slice(&p[8..]),
                reply_type::ERROR => r.error = u32::from_be_bytes(p[0..4].try_into().unwrap()),
                reply_type::BLOCK_STATUS => {
                    for c in p[4..].chunks_exact(8) {
                        r.descriptors.push((
                            u32::from_be_bytes(c[0..4].try_into().unwrap()),
                            u32::from_be_bytes(c[4..8].try_into().unwrap()),
                        ));
                    }
                }
                _ => {}
            }
            if flags & reply_flags::DONE != 0 {
                self.pending_reads.remove(&r.cookie);
                return r;
            }
        }
    }

    async fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b))
            .await
            .expect("server closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected EOF");
    }
}

async fn connect(
    path: &std::path::Path,
    export: &str,
    structured: bool,
    meta: bool,
) -> Client<UnixStream> {
    Client::handshake(
        UnixStream::connect(path).await.unwrap(),
        export,
        structured,
        meta,
    )
    .await
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_replies_roundtrip_and_disc() {
    let target = MemTarget::new();
    let srv = start(
        vec![export("disk", target.clone(), false)],
        ServerLimits::default(),
    );
    let mut c = connect(&srv.path, "disk", false, false).await;
    assert_eq!(c.size, SIZE);
    for f in [
        tf::HAS_FLAGS,
        tf::SEND_FLUSH,
        tf::SEND_FUA,
        tf::SEND_TRIM,
        tf::SEND_WRITE_ZEROES,
        tf::SEND_FAST_ZERO,
        tf::CAN_MULTI_CONN,
        tf::SEND_CACHE,
    ] {
        assert_ne!(c.flags & f, 0, "flag {f:#x}");
    }
    assert_eq!(c.flags & (tf::SEND_DF | tf::READ_ONLY), 0);

    let data = pattern(1, 4096);
    c.send(cmd_flags::FUA, cmd::WRITE, 1, 8192, 4096, &data)
        .await;
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error), (1, 0));
    assert_eq!(target.fua_writes.load(Ordering::SeqCst), 1);
    c.send(0, cmd::READ, 2, 8192, 4096, &[]).await;
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error), (2, 0));
    assert_eq!(r.data, data);
    c.send(0, cmd::FLUSH, 3, 0, 0, &[]).await;
    assert_eq!(c.reply().await.error, 0);
    assert_eq!(target.flushes.load(Ordering::SeqCst), 1);
    c.send(0, cmd::CACHE, 4, 0, 4096, &[]).await;
    assert_eq!(c.reply().await.error, 0);
    c.send(cmd_flags::NO_HOLE, cmd::WRITE_ZEROES, 5, 8192, 100, &[])
        .await;
    assert_eq!(c.reply().await.error, 0);
    let flags = target.last_zero_flags.lock().unwrap().unwrap();
    assert!(!flags.may_trim && !flags.fast_only);
    c.send(cmd_flags::FAST_ZERO, cmd::WRITE_ZEROES, 6, 8192, 100, &[])
        .await;
    assert_eq!(c.reply().await.error, e::ENOTSUP);
    c.send(0, cmd::TRIM, 7, 8192, 4096, &[]).await;
    assert_eq!(c.reply().await.error, 0);
    // Errors: the simple reply carries no payload, even for READ.
    c.send(0, cmd::READ, 8, SIZE - 1, 2, &[]).await;
    assert_eq!(c.reply().await.error, e::EINVAL);
    c.send(0, cmd::WRITE, 9, SIZE - 1, 2, &[1, 2]).await;
    assert_eq!(c.reply().await.error, e::ENOSPC);
    c.send(0, 42, 10, 0, 0, &[]).await;
    assert_eq!(c.reply().await.error, e::EINVAL);
    c.send(0, cmd::READ, 11, 8192, 4, &[]).await;
    assert_eq!(c.reply().await.data, vec![0; 4]);
    c.send(0, cmd::DISC, 12, 0, 0, &[]).await;
    c.expect_eof().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_reads_block_status_and_errors() {
    let target = MemTarget::new();
    let srv = start(
        vec![export("disk", target.clone(), false)],
        ServerLimits::default(),
    );
    let mut c = connect(&srv.path, "disk", true, true).await;
    assert_ne!(c.flags & tf::SEND_DF, 0);
    let data = pattern(7, 65536);
    c.send(0, cmd::WRITE, 1, 0, 65536, &data).await;
    assert_eq!(c.reply().await.error, 0);
    c.send(cmd_flags::DF, cmd::READ, 2, 0, 65536, &[]).await;
    let r = c.reply().await;
    assert_eq!(r.chunks, vec![reply_type::OFFSET_DATA]);
    assert_eq!(r.data, data);
    c.send(0, cmd::READ, 3, SIZE, 1, &[]).await;
    let r = c.reply().await;
    assert_eq!(
        (r.error, r.chunks.clone()),
        (e::EINVAL, vec![reply_type::ERROR])
    );
    c.send(0, cmd::FLUSH, 4, 0, 0, &[]).await;
    assert_eq!(c.reply().await.chunks, vec![reply_type::NONE]);

    let half = (SIZE / 2) as u32;
    c.send(0, cmd::BLOCK_STATUS, 5, u64::from(half) - 4096, 8192, &[])
        .await;
    let r = c.reply().await;
    assert_eq!(
        r.descriptors,
        vec![(4096, 0), (4096, proto::state::HOLE | proto::state::ZERO)]
    );
    c.send(
        cmd_flags::REQ_ONE,
        cmd::BLOCK_STATUS,
        6,
        0,
        SIZE as u32,
        &[],
    )
    .await;
    assert_eq!(c.reply().await.descriptors, vec![(half, 0)]);
    c.send(0, cmd::BLOCK_STATUS, 7, SIZE - 1, 2, &[]).await;
    assert_eq!(c.reply().await.error, e::EINVAL);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_back_out_of_order() {
    let target = MemTarget::slow_at(Some(0), Duration::from_millis(300));
    let srv = start(vec![export("disk", target, false)], ServerLimits::default());
    let mut c = connect(&srv.path, "disk", false, false).await;
    c.send(0, cmd::READ, 1, 0, 512, &[]).await;
    c.send(0, cmd::READ, 2, 4096, 512, &[]).await;
    c.send(0, cmd::FLUSH, 3, 0, 0, &[]).await;
    let first = c.reply().await;
    let second = c.reply().await;
    let third = c.reply().await;
    assert_ne!(first.cookie, 1, "the slow read must not block the others");
    assert_ne!(second.cookie, 1);
    assert_eq!(third.cookie, 1);
    assert_eq!(third.data.len(), 512);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_and_many_exports() {
    let a = MemTarget::new();
    let b = MemTarget::new();
    let srv = start(
        vec![export("a", a.clone(), false), export("b", b.clone(), false)],
        ServerLimits {
            max_inflight_requests_per_conn: 4,
            ..ServerLimits::default()
        },
    );
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let path = srv.path.clone();
        tasks.push(tokio::spawn(async move {
            let name = if i % 2 == 0 { "a" } else { "b" };
            let mut c = connect(&path, name, i % 3 == 0, false).await;
            // Pipeline well past the in-flight limit.
            for j in 0..32u64 {
                let off = u64::from(i) * 65536 + j * 2048;
                c.send(
                    0,
                    cmd::WRITE,
                    j,
                    off,
                    2048,
                    &pattern(i.wrapping_add(j as u8), 2048),
                )
                .await;
            }
            for _ in 0..32 {
                assert_eq!(c.reply().await.error, 0);
            }
            for j in 0..32u64 {
                let off = u64::from(i) * 65536 + j * 2048;
                c.send(0, cmd::READ, 100 + j, off, 2048, &[]).await;
            }
            for _ in 0..32 {
                let r = c.reply().await;
                let j = r.cookie - 100;
                assert_eq!(r.data, pattern(i.wrapping_add(j as u8), 2048));
            }
            c.send(0, cmd::DISC, 0, 0, 0, &[]).await;
            c.expect_eof().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_in_flight_requests() {
    let target = MemTarget::slow_at(Some(0), Duration::from_millis(500));
    let mut srv = start(
        vec![export("disk", target.clone(), false)],
        ServerLimits::default(),
    );
    let mut c = connect(&srv.path, "disk", true, false).await;
    c.send(0, cmd::READ, 1, 0, 4096, &[]).await;
    // Shut down once the read is in the target, not before it arrived.
    tokio::time::timeout(Duration::from_secs(5), target.slow_started.notified())
        .await
        .expect("the read reached the target");
    let _ = srv.stop.take().unwrap().send(());
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error, r.data.len()), (1, 0, 4096));
    c.expect_eof().await;
    tokio::time::timeout(Duration::from_secs(5), &mut srv.handle)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    // No longer accepting.
    assert!(UnixStream::connect(&srv.path).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_disconnect_one_connection_only() {
    let target = MemTarget::new();
    let srv = start(vec![export("disk", target, false)], ServerLimits::default());
    let mut good = connect(&srv.path, "disk", false, false).await;

    // Garbage after the handshake: bad request magic → disconnect.
    let mut bad = connect(&srv.path, "disk", false, false).await;
    bad.s.write_all(&[0xde; 64]).await.unwrap();
    bad.expect_eof().await;

    // Garbage instead of client flags / options.
    for junk in [
        &[0xffu8; 4][..],
        &[
            0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ][..],
    ] {
        let mut s = UnixStream::connect(&srv.path).await.unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed")
            .ok();
    }

    // Huge WRITE length: payload is drained, EINVAL, connection lives on.
    let big = ServerLimits::default().max_payload_bytes + 1;
    good.send(0, cmd::WRITE, 1, 0, big, &vec![0u8; big as usize])
        .await;
    assert_eq!(good.reply().await.error, e::EINVAL);
    good.send(0, cmd::READ, 2, 0, 16, &[]).await;
    let r = good.reply().await;
    assert_eq!((r.cookie, r.error), (2, 0));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_writes() {
    let target = MemTarget::new();
    let srv = start(
        vec![
            export("rw", target.clone(), false),
            export("ro", target, true),
        ],
        ServerLimits::default(),
    );
    let mut c = connect(&srv.path, "ro", false, false).await;
    assert_ne!(c.flags & tf::READ_ONLY, 0);
    assert_eq!(c.flags & (tf::SEND_TRIM | tf::SEND_WRITE_ZEROES), 0);
    c.send(0, cmd::WRITE, 1, 0, 8, &[1; 8]).await;
    assert_eq!(c.reply().await.error, e::EPERM);
    c.send(0, cmd::TRIM, 2, 0, 8, &[]).await;
    assert_eq!(c.reply().await.error, e::EPERM);
    c.send(0, cmd::READ, 3, 0, 8, &[]).await;
    assert_eq!(c.reply().await.data, vec![0; 8]);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_and_connection_limit() {
    let srv = start(
        vec![export("disk", MemTarget::new(), false)],
        ServerLimits {
            handshake_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..ServerLimits::default()
        },
    );
    let mut idle = UnixStream::connect(&srv.path).await.unwrap();
    let mut g = [0u8; 18];
    idle.read_exact(&mut g).await.unwrap();
    // The only slot is taken: a second client is closed at once.
    let mut second = UnixStream::connect(&srv.path).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut buf))
        .await
        .expect("second connection closed")
        .ok();
    assert!(buf.is_empty());
    // The idle one is dropped after the handshake timeout.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("idle handshake times out")
        .ok();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_export_and_abort() {
    let srv = start(
        vec![export("disk", MemTarget::new(), false)],
        ServerLimits::default(),
    );
    let mut s = UnixStream::connect(&srv.path).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    opt_send(&mut s, opt::GO, &name_payload("nope", &[0, 0])).await;
    assert_eq!(opt_reply(&mut s).await.1, rep::ERR_UNKNOWN);
    opt_send(&mut s, opt::LIST, b"").await;
    let (_, kind, data) = opt_reply(&mut s).await;
    // Name "disk", then its description as the details.
    assert_eq!((kind, &data[4..8]), (rep::SERVER, &b"disk"[..]));
    assert_eq!(&data[8..], b"disk export");
    assert_eq!(opt_reply(&mut s).await.1, rep::ACK);
    opt_send(&mut s, opt::ABORT, b"").await;
    assert_eq!(opt_reply(&mut s).await.1, rep::ACK);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_serves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(
        vec![export("disk", MemTarget::new(), false)],
        ServerLimits::default(),
    )
    .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(vec![Listener::Tcp(listener)], async {
        let _ = rx.await;
    }));
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client::handshake(s, "disk", true, false).await;
    let data = pattern(3, 1 << 20);
    c.send(0, cmd::WRITE, 1, 0, 1 << 20, &data).await;
    assert_eq!(c.reply().await.error, 0);
    c.send(0, cmd::READ, 2, 0, 1 << 20, &[]).await;
    assert_eq!(c.reply().await.data, data);
    let _ = tx.send(());
    c.expect_eof().await;
    handle.await.unwrap().unwrap();
}

#[test]
fn config_is_validated() {
    let t = MemTarget::new();
    assert!(Server::<MemTarget>::new(vec![], ServerLimits::default()).is_err());
    assert!(Server::new(
        vec![export("x", t.clone(), false), export("x", t.clone(), false)],
        ServerLimits::default()
    )
    .is_err());
    assert!(Server::new(
        vec![export("x", t.clone(), false)],
        ServerLimits {
            max_payload_bytes: 0,
            ..ServerLimits::default()
        }
    )
    .is_err());
    assert!(Server::new(
        vec![export("x", t, false)],
        ServerLimits {
            max_inflight_requests_per_conn: 0,
            ..ServerLimits::default()
        }
    )
    .is_err());
}
