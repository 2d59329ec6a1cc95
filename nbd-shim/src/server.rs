//! Tokio NBD server over [`BlockTarget`]s.
//!
//! Per connection: the handshake runs inline (bounded by
//! `handshake_timeout`); then a reader loop decodes requests from large
//! socket reads and spawns one task per request (bounded by a semaphore on
//! in-flight requests and one on in-flight bytes), and a writer task sends
//! replies as they complete, out of order, batching whatever is ready into
//! one vectored write (header + `Bytes` payload, no payload copy).

use std::future::Future;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn, Instrument};

use crate::codec::{
    Command, Decoded, ExportInfo, Handshake, HandshakeLimits, HandshakeStatus, ReplyFrame, Request,
    RequestDecoder, TransmissionConfig, DEFAULT_COPY_WRITE_PAYLOAD_BELOW_BYTES,
    DEFAULT_MAX_OPTIONS, DEFAULT_MAX_OPTION_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
};
use crate::error::NbdError;
use crate::proto::{self, error as nbd_err, transmission_flags as tf};
use crate::target::{BlockTarget, TargetError};

/// One export: a name clients ask for and the target behind it.
pub struct Export<T> {
    pub name: String,
    pub description: Option<String>,
    pub target: Arc<T>,
    /// Advertise `NBD_FLAG_READ_ONLY` and answer writes with EPERM (also
    /// implied by `TargetFeatures::read_only`).
    pub read_only: bool,
}

/// Explicit bounds on everything a client can make the server hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest READ/WRITE length accepted (advertised as the maximum block
    /// size). Larger READs get EINVAL; larger WRITEs have their payload
    /// drained in bounded steps and get EINVAL.
    pub max_payload_bytes: u32,
    /// Requests of one connection being served or waiting for their reply
    /// to be written. The reader stops reading at the limit.
    pub max_inflight_requests_per_conn: usize,
    /// READ/WRITE bytes of one connection in flight (a single request larger
    /// than this still runs, alone).
    pub max_inflight_bytes_per_conn: usize,
    /// Further connections are accepted and closed at once.
    pub max_connections: usize,
    /// A client that has not finished negotiating by then is disconnected.
    pub handshake_timeout: Duration,
    /// Larger option payloads are drained and answered `NBD_REP_ERR_TOO_BIG`.
    pub max_option_bytes: u32,
    /// More options than this in one handshake → disconnect.
    pub max_options_per_handshake: usize,
    /// After shutdown, how long in-flight requests get to finish and be
    /// answered before connections are dropped.
    pub shutdown_grace_period: Duration,
    /// Minimum size of each socket read (reads are larger when a WRITE
    /// payload needs more).
    pub read_chunk_bytes: usize,
    /// WRITE payloads shorter than this are copied into their own buffer
    /// instead of pinning the socket read buffer (see `TransmissionConfig`).
    pub copy_write_payload_below_bytes: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_inflight_requests_per_conn: 128,
            max_inflight_bytes_per_conn: 64 * 1024 * 1024,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            max_option_bytes: DEFAULT_MAX_OPTION_BYTES,
            max_options_per_handshake: DEFAULT_MAX_OPTIONS,
            shutdown_grace_period: Duration::from_secs(30),
            read_chunk_bytes: 256 * 1024,
            copy_write_payload_below_bytes: DEFAULT_COPY_WRITE_PAYLOAD_BELOW_BYTES,
        }
    }
}

/// Where the server accepts connections.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Replies the writer batches into one vectored write.
const MAX_REPLY_BATCH: usize = 64;
/// Below this much free room the read buffer is grown before the next read.
const MIN_READ_SPARE_BYTES: usize = 64 * 1024;

/// An NBD server over one or more exports.
pub struct Server<T: BlockTarget> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    exports: Vec<Export<T>>,
    limits: ServerLimits,
}

impl<T: BlockTarget> Server<T> {
    pub fn new(exports: Vec<Export<T>>, limits: ServerLimits) -> Result<Self, NbdError> {
        validate(&exports, &limits)?;
        Ok(Self {
            shared: Arc::new(Shared { exports, limits }),
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, stops reading
    /// new requests, lets every in-flight request finish and its reply be
    /// sent (within `shutdown_grace_period`), closes connections, and returns.
    pub async fn run(
        self,
        listeners: Vec<Listener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NbdError> {
        if listeners.is_empty() {
            return Err(NbdError::Config("no listeners to serve on".into()));
        }
        let limits = &self.shared.limits;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (accepted_tx, mut accepted_rx) = mpsc::channel::<Stream>(16);
        let mut acceptors = JoinSet::new();
        for listener in listeners {
            acceptors.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let next_id = AtomicU64::new(1);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = accepted_rx.recv() => {
                    let Some(stream) = accepted else {
                        warn!("every listener failed; shutting down");
                        break;
                    };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        warn!(conn = id, limit = limits.max_connections,
                              "connection limit reached; closing the new connection");
                        continue;
                    };
                    let span = tracing::info_span!("nbd_conn", conn = id);
                    conns.spawn(
                        serve_stream(self.shared.clone(), stream, stop_rx.clone(), slot)
                            .instrument(span),
                    );
                }
                Some(joined) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = joined {
                        warn!("connection task failed: {e}");
                    }
                }
            }
        }

        info!(
            connections = conns.len(),
            "shutting down: no new connections, finishing in-flight requests"
        );
        acceptors.abort_all();
        drop(accepted_rx);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(limits.shutdown_grace_period, async {
            while let Some(joined) = conns.join_next().await {
                if let Err(e) = joined {
                    warn!("connection task failed: {e}");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = conns.len(),
                grace = ?limits.shutdown_grace_period,
                "shutdown grace period over; dropping remaining connections"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        while acceptors.join_next().await.is_some() {}
        Ok(())
    }
}

fn validate<T: BlockTarget>(exports: &[Export<T>], limits: &ServerLimits) -> Result<(), NbdError> {
    let bad = |m: String| Err(NbdError::Config(m));
    if exports.is_empty() {
        return bad("at least one export is needed".into());
    }
    for (i, e) in exports.iter().enumerate() {
        if e.name.len() > proto::MAX_STRING_BYTES || e.name.contains('\0') {
            return bad(format!(
                "export name {:?} must be at most {} bytes without NUL",
                e.name,
                proto::MAX_STRING_BYTES
            ));
        }
        if let Some(d) = &e.description {
            if d.len() > proto::MAX_STRING_BYTES || d.contains('\0') {
                return bad(format!(
                    "description of export {:?} must be at most {} bytes without NUL",
                    e.name,
                    proto::MAX_STRING_BYTES
                ));
            }
        }
        if exports[..i].iter().any(|o| o.name == e.name) {
            return bad(format!("export name {:?} is used twice", e.name));
        }
    }
    if limits.max_payload_bytes < 512 || limits.max_payload_bytes > u32::MAX - 8 {
        return bad(format!(
            "max_payload_bytes = {} must be between 512 and {}",
            limits.max_payload_bytes,
            u32::MAX - 8
        ));
    }
    if limits.max_inflight_requests_per_conn == 0
        || limits.max_inflight_requests_per_conn > Semaphore::MAX_PERMITS / 2
    {
        return bad("max_inflight_requests_per_conn must be at least 1 (and sane)".into());
    }
    if limits.max_inflight_bytes_per_conn == 0
        || limits.max_inflight_bytes_per_conn > Semaphore::MAX_PERMITS
    {
        return bad("max_inflight_bytes_per_conn must be at least 1 (and sane)".into());
    }
    if limits.max_connections == 0 || limits.max_connections > Semaphore::MAX_PERMITS {
        return bad("max_connections must be at least 1".into());
    }
    if limits.handshake_timeout.is_zero() {
        return bad("handshake_timeout must be positive".into());
    }
    if limits.max_option_bytes < 1024 {
        return bad("max_option_bytes must be at least 1024".into());
    }
    if limits.max_options_per_handshake == 0 {
        return bad("max_options_per_handshake must be at least 1".into());
    }
    if limits.read_chunk_bytes < 4096 {
        return bad("read_chunk_bytes must be at least 4096".into());
    }
    Ok(())
}

async fn accept_loop(listener: Listener, accepted: mpsc::Sender<Stream>) {
    loop {
        let res = match &listener {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().await.and_then(|(s, _)| {
                // Replies are written whole; never let Nagle hold them back.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }),
        };
        match res {
            Ok(stream) => {
                if accepted.send(stream).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE and friends are transient: back off, don't spin.
                warn!("accept failed: {e}; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_stream<T: BlockTarget>(
    shared: Arc<Shared<T>>,
    stream: Stream,
    stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let res = match stream {
        Stream::Unix(s) => {
            let (r, w) = s.into_split();
            serve_connection(&shared, r, w, stop).await
        }
        Stream::Tcp(s) => {
            let (r, w) = s.into_split();
            serve_connection(&shared, r, w, stop).await
        }
    };
    match res {
        Ok(()) => debug!("connection closed"),
        Err(NbdError::HandshakeEof) => debug!("client left during the handshake"),
        Err(e) => warn!("connection ended: {e}"),
    }
}

fn export_info<T: BlockTarget>(e: &Export<T>, limits: &ServerLimits) -> ExportInfo {
    let f = e.target.features();
    let read_only = e.read_only || f.read_only;
    // FLUSH covers every connection (BlockTarget::flush), hence MULTI_CONN.
    let mut flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA | tf::CAN_MULTI_CONN;
    if read_only {
        flags |= tf::READ_ONLY;
    } else {
        if f.can_trim {
            flags |= tf::SEND_TRIM;
        }
        if f.can_write_zeroes {
            flags |= tf::SEND_WRITE_ZEROES;
            if f.can_fast_zero {
                flags |= tf::SEND_FAST_ZERO;
            }
        }
    }
    if f.can_cache {
        flags |= tf::SEND_CACHE;
    }
    let preferred = if f.preferred_block_bytes.is_power_of_two() && f.preferred_block_bytes >= 512 {
        f.preferred_block_bytes
    } else {
        4096
    };
    ExportInfo {
        name: e.name.clone(),
        description: e.description.clone(),
        size_bytes: e.target.size_bytes(),
        flags,
        min_block_bytes: 1,
        // The preferred size must stay a power of two no larger than the maximum.
        preferred_block_bytes: preferred
            .min(1u32 << (31 - limits.max_payload_bytes.leading_zeros())),
        max_block_bytes: limits.max_payload_bytes,
    }
}

async fn serve_connection<T, R, W>(
    shared: &Shared<T>,
    mut r: R,
    mut w: W,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    T: BlockTarget,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    if *stop.borrow_and_update() {
        return Ok(());
    }
    let infos: Vec<ExportInfo> = shared
        .exports
        .iter()
        .map(|e| export_info(e, limits))
        .collect();
    let mut hs = Handshake::new(
        infos,
        HandshakeLimits {
            max_option_bytes: limits.max_option_bytes,
            max_options: limits.max_options_per_handshake,
        },
    );
    let mut buf = BytesMut::with_capacity(4096);
    let status = tokio::select! {
        res = tokio::time::timeout(limits.handshake_timeout, handshake(&mut r, &mut w, &mut hs, &mut buf)) => {
            match res {
                Ok(status) => status?,
                Err(_) => return Err(NbdError::HandshakeTimeout { timeout: limits.handshake_timeout }),
            }
        }
        _ = stop.changed() => {
            debug!("shutdown during the handshake; closing");
            return Ok(());
        }
    };
    let negotiated = match status {
        HandshakeStatus::Done(n) => n,
        HandshakeStatus::Aborted => {
            debug!("client aborted the handshake");
            let _ = w.shutdown().await;
            return Ok(());
        }
        HandshakeStatus::NeedMore => return Err(NbdError::HandshakeEof),
    };
    let export = &shared.exports[negotiated.export_index];
    info!(
        export = %export.name,
        size_bytes = negotiated.size_bytes,
        structured = negotiated.structured_replies,
        base_allocation = negotiated.base_allocation_id.is_some(),
        "transmission started"
    );
    let cfg = TransmissionConfig {
        size_bytes: negotiated.size_bytes,
        transmission_flags: negotiated.transmission_flags,
        structured_replies: negotiated.structured_replies,
        base_allocation_id: negotiated.base_allocation_id,
        max_payload_bytes: limits.max_payload_bytes,
        copy_write_payload_below_bytes: limits.copy_write_payload_below_bytes,
    };
    transmission(export.target.clone(), cfg, limits, r, w, buf, stop).await
}

async fn handshake<R, W>(
    r: &mut R,
    w: &mut W,
    hs: &mut Handshake,
    buf: &mut BytesMut,
) -> Result<HandshakeStatus, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&hs.take_output()).await?;
    loop {
        let status = hs.advance(buf);
        if hs.has_output() {
            // Flush replies even when the next step is a disconnect.
            w.write_all(&hs.take_output()).await?;
        }
        match status? {
            HandshakeStatus::NeedMore => {}
            other => return Ok(other),
        }
        let wanted = hs.bytes_wanted(buf);
        buf.reserve(wanted.saturating_sub(buf.len()).max(4096));
        if r.read_buf(buf).await? == 0 {
            return Err(NbdError::HandshakeEof);
        }
    }
}

/// Permits a request holds until its reply is written.
struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

struct Outgoing {
    frame: ReplyFrame,
    _permits: Option<Permits>,
}

/// Aborts the writer if the connection task itself is dropped (grace over).
struct AbortOnDrop(JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
enum End {
    Disconnect,
    Eof,
    Shutdown,
    WriterGone,
    Protocol(NbdError),
}

async fn transmission<T, R, W>(
    target: Arc<T>,
    cfg: TransmissionConfig,
    limits: &ServerLimits,
    mut r: R,
    w: W,
    mut buf: BytesMut,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    T: BlockTarget,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let structured = cfg.structured_replies;
    let mut decoder = RequestDecoder::new(cfg);
    // Every queued reply holds a request permit, except rejections, which the
    // reader sends itself (and so waits on when the queue is full).
    let (tx, rx) = mpsc::channel::<Outgoing>(limits.max_inflight_requests_per_conn + 64);
    let mut writer = AbortOnDrop(tokio::spawn(write_replies(w, rx)));
    let requests = Arc::new(Semaphore::new(limits.max_inflight_requests_per_conn));
    let bytes = Arc::new(Semaphore::new(limits.max_inflight_bytes_per_conn));
    let max_cost = limits.max_inflight_bytes_per_conn.min(u32::MAX as usize) as u32;

    let end = 'read: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Request(req))) => {
                    let cost = request_cost(&req).min(max_cost);
                    let permits = tokio::select! {
                        p = acquire(&requests, &bytes, cost) => p,
                        _ = stop.changed() => break 'read End::Shutdown,
                    };
                    let Some(permits) = permits else {
                        break 'read End::Shutdown;
                    };
                    let mut request = Box::pin(execute(
                        target.clone(),
                        req,
                        structured,
                        permits,
                        tx.clone(),
                    ));
                    // One poll here first: a request that completes without
                    // waiting (a page-cache read, a lone buffered write)
                    // needs no task of its own and no hop to another worker.
                    // Anything that has to wait goes on in its own task, so
                    // the reader keeps reading.
                    let done = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(request.as_mut().poll(cx).is_ready())
                    })
                    .await;
                    if !done {
                        tokio::spawn(request);
                    }
                }
                Ok(Some(Decoded::Rejected(rej))) => {
                    debug!(
                        command = proto::cmd::name(rej.command),
                        cookie = rej.cookie,
                        error = rej.error,
                        "rejected: {}",
                        rej.reason
                    );
                    let frame = ReplyFrame::error(rej.cookie, structured, rej.error, rej.reason);
                    let out = Outgoing {
                        frame,
                        _permits: None,
                    };
                    if tx.send(out).await.is_err() {
                        break 'read End::WriterGone;
                    }
                }
                Ok(Some(Decoded::Disconnect)) => break 'read End::Disconnect,
                Ok(None) => break,
                Err(e) => break 'read End::Protocol(e),
            }
        }
        // Grow only when little room is left: split-off WRITE payloads keep
        // the old allocation alive, so growing means a fresh buffer.
        let need = decoder.bytes_wanted().saturating_sub(buf.len());
        let spare = buf.capacity() - buf.len();
        if spare < need.max(limits.read_chunk_bytes.min(MIN_READ_SPARE_BYTES)) {
            buf.reserve(need.max(limits.read_chunk_bytes));
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break End::Shutdown,
            _ = tx.closed() => break End::WriterGone,
            res = r.read_buf(&mut buf) => match res {
                Ok(0) => break End::Eof,
                Ok(_) => {}
                Err(e) => break End::Protocol(NbdError::Io(e)),
            },
        }
    };
    // Stop reading; in-flight tasks hold the remaining senders, so the writer
    // finishes once every one of them has replied.
    drop(tx);
    drop(r);
    let written = (&mut writer.0).await;
    match &end {
        End::Disconnect => debug!("client sent NBD_CMD_DISC"),
        End::Eof => debug!("client closed the connection"),
        End::Shutdown => debug!("server shutdown: in-flight requests answered"),
        End::WriterGone => debug!("reply writer stopped"),
        End::Protocol(e) => warn!("closing after a protocol error: {e}"),
    }
    match written {
        Ok(Err(e)) if !matches!(end, End::Protocol(_)) => return Err(NbdError::Io(e)),
        _ => {}
    }
    match end {
        End::Protocol(e) => Err(e),
        _ => Ok(()),
    }
}

fn request_cost(req: &Request) -> u32 {
    match &req.command {
        Command::Read { len, .. } => *len,
        Command::Write { data, .. } => data.len() as u32,
        _ => 0,
    }
}

async fn acquire(requests: &Arc<Semaphore>, bytes: &Arc<Semaphore>, cost: u32) -> Option<Permits> {
    let request = requests.clone().acquire_owned().await.ok()?;
    let bytes = if cost > 0 {
        Some(bytes.clone().acquire_many_owned(cost).await.ok()?)
    } else {
        None
    };
    Some(Permits {
        _request: request,
        _bytes: bytes,
    })
}

fn target_error_frame(cookie: u64, structured: bool, what: &str, e: &TargetError) -> ReplyFrame {
    match e {
        TargetError::FastZeroUnavailable | TargetError::NotSupported(_) => {
            debug!(cookie, "{what}: {e}")
        }
        _ => warn!(cookie, "{what} failed: {e}"),
    }
    let message = if structured {
        format!("{what}: {e}")
    } else {
        String::new()
    };
    ReplyFrame::error(cookie, structured, e.nbd_error(), &message)
}

async fn execute<T: BlockTarget>(
    target: Arc<T>,
    req: Request,
    structured: bool,
    permits: Permits,
    tx: mpsc::Sender<Outgoing>,
) {
    let cookie = req.cookie;
    let done = |res: Result<(), TargetError>, what: &str| match res {
        Ok(()) => ReplyFrame::ok(cookie, structured),
        Err(e) => target_error_frame(cookie, structured, what, &e),
    };
    let frame = match req.command {
        Command::Read { offset, len } => match target.read(offset, len).await {
            Ok(data) if data.len() == len as usize => {
                ReplyFrame::read(cookie, structured, offset, data)
            }
            Ok(data) => {
                warn!(
                    cookie,
                    offset,
                    len,
                    got = data.len(),
                    "target returned the wrong amount of data; answering EIO"
                );
                ReplyFrame::error(
                    cookie,
                    structured,
                    nbd_err::EIO,
                    "backing store returned a short read",
                )
            }
            Err(e) => target_error_frame(cookie, structured, "read", &e),
        },
        Command::Write {
            offset,
            data,
            durability,
        } => done(target.write(offset, data, durability).await, "write"),
        Command::Flush => done(target.flush().await, "flush"),
        Command::Trim {
            offset,
            len,
            durability,
        } => done(target.trim(offset, len, durability).await, "trim"),
        Command::WriteZeroes { offset, len, flags } => done(
            target.write_zeroes(offset, len, flags).await,
            "write zeroes",
        ),
        Command::Cache { offset, len } => done(target.cache(offset, len).await, "cache"),
        Command::BlockStatus {
            offset,
            len,
            req_one,
            context_id,
        } => match target.block_status(offset, len).await {
            Ok(extents) => ReplyFrame::block_status(cookie, context_id, &extents, len, req_one),
            Err(e) => target_error_frame(cookie, structured, "block status", &e),
        },
        Command::Noop { .. } => ReplyFrame::ok(cookie, structured),
    };
    // A closed queue means the connection is gone; nothing to answer.
    let _ = tx
        .send(Outgoing {
            frame,
            _permits: Some(permits),
        })
        .await;
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> std::io::Result<()> {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_REPLY_BATCH);
    while rx.recv_many(&mut batch, MAX_REPLY_BATCH).await > 0 {
        write_batch(&mut w, &batch).await?;
        // Dropping the batch releases its permits: the reader may go on.
        batch.clear();
    }
    w.flush().await?;
    w.shutdown().await
}

async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, batch: &[Outgoing]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for o in batch {
        slices.push(IoSlice::new(o.frame.head()));
        if !o.frame.payload().is_empty() {
            slices.push(IoSlice::new(o.frame.payload()));
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
