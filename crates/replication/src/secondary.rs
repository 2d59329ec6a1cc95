//! The secondary: listens for its primary over TCP+TLS and/or QUIC,
//! journals every received record at the primary's LSN, applies records,
//! resync and verify operations to the volume in stream order, and
//! acknowledges what it journaled and what is durable.
//!
//! A session runs three stages, each owning its part: the reader checks
//! every message ([`SecondarySession`]) and queues records in the journal;
//! the journaler waits until they are written and acknowledges them (what a
//! sync write waits for); the applier makes them durable, then applies
//! them and every operation in order. Records reach the volume only once
//! durable in the journal, so a crash at any moment leaves the volume a
//! state the primary's history passed through, up to the journal's
//! replay. A record whose journaling fails stops the stream there: what
//! came before it is applied, nothing after it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use journal::{AppendHandle, Lsn};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use transport::{QuicEndpoint, TcpTlsListener, TransportError};
use wire::{
    ByeCode, Hello, LineageEntry, LineageOrder, Message, RefuseCode, Role, Rollback,
    SplitBrainFacts, SyncOp, SyncOpKind, WireRecord,
};

use crate::config::{SecondaryConfig, TransportKind};
use crate::conn::{self, Conn, MsgReader, MsgWriter};
use crate::error::{EngineError, SessionError};
use crate::lock;
use crate::proto::secondary::{OpAcks, SecondarySession, Step};
use crate::proto::verdict::secondary_verdict;
use crate::status::{volume_status, DiskState, UpstreamStatus, VolumeRole, VolumeStatus};
use store::{Store, SyncWrite};

/// Received messages queued per stage; bounds memory to this many frames
/// (each ≤ the wire frame limit) per stage and session.
const APPLY_QUEUE_BATCHES: usize = 8;
/// Outgoing messages queued for the writer.
const OUT_QUEUE_MESSAGES: usize = 64;
/// A replaced session of the same primary must end within this.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

struct Active {
    node_id: String,
    /// Its primary's lineage at the handshake: a primary of a newer history
    /// takes the session over (the old one was demoted or died).
    lineage: Vec<LineageEntry>,
    address: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    finished: watch::Receiver<bool>,
}

/// What status shows of the primary side: the last primary seen, whether
/// its session runs, and the last refused or failed connection.
#[derive(Default)]
struct Seen {
    upstream: Option<UpstreamStatus>,
    last_error: Option<String>,
    /// The running session's primary sent a record stream that continues
    /// this copy (not a resync).
    streaming: bool,
}

/// Why an [`Arbiter`] turns a primary away.
#[derive(Debug, Clone)]
pub enum Refusal {
    Refuse(RefuseCode, String),
    /// Both primaries wrote since their histories forked: the two sides'
    /// facts are exchanged (`Message::SplitBrain`), then the arbiter is told
    /// the caller's with [`Arbiter::settle`].
    SplitBrain(SplitBrainFacts),
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
/// The future an [`Arbiter`] answers with.
pub type Admission<'a> = Boxed<'a, Result<(), Refusal>>;

/// Decides whether this node may serve a primary that connects, by role:
/// the node that owns the volume's role (a primary refuses, or first steps
/// down when the caller's history is newer). Called after the identity
/// check and before the history verdict.
pub trait Arbiter: Send + Sync + 'static {
    fn admit<'a>(&'a self, hello: &'a Hello) -> Admission<'a>;
    /// The caller's side of a split brain this node's `admit` found (it
    /// may name this node as the one to give its changes up).
    fn settle<'a>(&'a self, caller: &'a str, theirs: SplitBrainFacts) -> Boxed<'a, ()>;
}

struct Inner {
    store: Arc<Store>,
    cfg: SecondaryConfig,
    arbiter: Option<Arc<dyn Arbiter>>,
    /// The operator gave this copy's changes since the fork up (`resync
    /// --discard-local`); cleared once a resync took the primary's history
    /// over. In memory only: after a restart the operator asks again.
    discard_local: std::sync::atomic::AtomicBool,
    active: tokio::sync::Mutex<Option<Active>>,
    /// Shown in status: the last primary seen and the last error.
    seen: Mutex<Seen>,
    /// Record and resync bytes received since start (all sessions).
    received_bytes: std::sync::atomic::AtomicU64,
    closing: watch::Sender<bool>,
}

pub struct Secondary {
    inner: Arc<Inner>,
    tcp_addr: Option<SocketAddr>,
    quic_addr: Option<SocketAddr>,
    quic: Option<QuicEndpoint>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Secondary {
    pub async fn start(
        store: Arc<Store>,
        cfg: SecondaryConfig,
    ) -> Result<Arc<Secondary>, EngineError> {
        Self::start_arbitrated(store, cfg, None).await
    }

    /// [`Secondary::start`] with an [`Arbiter`] asked before any primary is
    /// served: the listener of a node whose role can change.
    pub async fn start_arbitrated(
        store: Arc<Store>,
        cfg: SecondaryConfig,
        arbiter: Option<Arc<dyn Arbiter>>,
    ) -> Result<Arc<Secondary>, EngineError> {
        if cfg.listen_tcp.is_none() && cfg.listen_quic.is_none() {
            return Err(EngineError::Config(
                "a secondary needs listen_tcp and/or listen_quic".into(),
            ));
        }
        if cfg.keepalive_interval.is_zero() || cfg.peer_timeout <= cfg.keepalive_interval {
            return Err(EngineError::Config(
                "keepalive_interval must be > 0 and < peer_timeout".into(),
            ));
        }
        let tcp = match cfg.listen_tcp {
            Some(a) => Some(TcpTlsListener::bind(a, &cfg.tls).await?),
            None => None,
        };
        let quic = match cfg.listen_quic {
            Some(a) => Some(bind_quic(a, &cfg).await?),
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let quic_addr = quic.as_ref().map(|q| q.local_addr()).transpose()?;
        let inner = Arc::new(Inner {
            store,
            cfg,
            arbiter,
            discard_local: Default::default(),
            active: tokio::sync::Mutex::new(None),
            seen: Mutex::new(Seen::default()),
            received_bytes: Default::default(),
            closing: watch::Sender::new(false),
        });
        let mut tasks = Vec::new();
        if let Some(l) = tcp {
            tasks.push(tokio::spawn(accept_tcp(inner.clone(), l)));
        }
        if let Some(q) = quic.clone() {
            tasks.push(tokio::spawn(accept_quic(inner.clone(), q)));
        }
        tracing::info!(?tcp_addr, ?quic_addr, "secondary listening");
        Ok(Arc::new(Secondary {
            inner,
            tcp_addr,
            quic_addr,
            quic,
            tasks: Mutex::new(tasks),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Bound TCP and QUIC addresses (resolves port 0).
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.tcp_addr, self.quic_addr)
    }

    pub fn status(&self) -> VolumeStatus {
        let seen = lock(&self.inner.seen);
        let j = self.inner.store.journal();
        let connected = seen.upstream.as_ref().is_some_and(|u| u.connected);
        // Only what this node can know of its own copy: inconsistent
        // (persisted) while a resync into it is unfinished; no history yet;
        // a prefix being continued by its primary; or a prefix of unknown
        // age.
        let disk = if j.is_inconsistent() {
            DiskState::Inconsistent
        } else if j.lineage().is_empty() {
            DiskState::Unknown
        } else if connected && seen.streaming {
            DiskState::UpToDate
        } else {
            DiskState::Outdated
        };
        let mut st = volume_status(&self.inner.store, VolumeRole::Secondary, disk);
        st.upstream = seen.upstream.clone();
        if let Some(u) = st.upstream.as_mut() {
            u.received_bytes_total = self
                .inner
                .received_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        st.last_error = seen.last_error.clone();
        st
    }

    /// The primary whose session runs now, if any.
    pub fn connected_primary(&self) -> Option<String> {
        lock(&self.inner.seen)
            .upstream
            .as_ref()
            .filter(|u| u.connected)
            .map(|u| u.name.clone())
    }

    /// Gives this copy's changes since its fork with the next primary up:
    /// a diverged or newer history is rolled back instead of refused.
    pub fn discard_local_changes(&self) {
        self.inner
            .discard_local
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a `discard_local_changes` still waits for a primary.
    pub fn discarding(&self) -> bool {
        self.inner
            .discard_local
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends the running primary session, if any, once everything it
    /// delivered is applied (the listener stays; the arbiter decides whether
    /// the next one is served).
    pub async fn end_session(&self) {
        let finished = {
            let active = self.inner.active.lock().await;
            active.as_ref().map(|a| {
                a.stop.notify_one();
                a.finished.clone()
            })
        };
        if let Some(mut f) = finished {
            let _ = tokio::time::timeout(TAKEOVER_WAIT, f.wait_for(|d| *d)).await;
        }
    }

    /// Stops listening, ends the session (everything received is applied
    /// first) and closes the endpoints.
    pub async fn shutdown(&self) {
        self.inner.closing.send_replace(true);
        if let Some(a) = self.inner.active.lock().await.as_ref() {
            a.stop.notify_one();
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(self.inner.cfg.peer_timeout, t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // Wait for the session to finish applying.
        let finished = self
            .inner
            .active
            .lock()
            .await
            .as_ref()
            .map(|a| a.finished.clone());
        if let Some(mut f) = finished {
            let _ = tokio::time::timeout(self.inner.cfg.peer_timeout, f.wait_for(|d| *d)).await;
        }
        if let Some(q) = &self.quic {
            q.close();
        }
        tracing::info!("secondary shut down");
    }
}

/// How long a secondary waits for its QUIC port to be released by an endpoint
/// that is still shutting down (a restart right after a stop).
const QUIC_BIND_WAIT: Duration = Duration::from_secs(5);

async fn bind_quic(addr: SocketAddr, cfg: &SecondaryConfig) -> Result<QuicEndpoint, EngineError> {
    let start = Instant::now();
    loop {
        match QuicEndpoint::bind(addr, &cfg.tls, &cfg.quic) {
            Err(TransportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && start.elapsed() < QUIC_BIND_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
    }
}

fn note_error(inner: &Inner, e: String) {
    tracing::warn!(error = %e, "replication connection refused or failed");
    lock(&inner.seen).last_error = Some(e);
}

/// TLS handshakes of incoming TCP connections running at once; past this,
/// new connections are closed at once (and counted in the log).
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Failed incoming handshakes (port scans, garbage, wrong certificates) are
/// logged at most once per this interval, with how many were not.
const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per interval; the lines held back are counted.
struct LogLimit {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may be
    /// logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

async fn accept_tcp(inner: Arc<Inner>, l: TcpTlsListener) {
    let mut closing = inner.closing.subscribe();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let limit = Arc::new(Mutex::new(LogLimit::new(HANDSHAKE_LOG_INTERVAL)));
    loop {
        let accepted = tokio::select! {
            _ = closing.wait_for(|c| *c) => return,
            r = l.accept_tcp() => r,
        };
        let incoming = match accepted {
            Ok(i) => i,
            Err(e) => {
                // EMFILE and the like: do not spin.
                note_error(&inner, format!("incoming TCP connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = incoming.peer_addr;
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            if let Some(held) = lock(&limit).allow(Instant::now()) {
                tracing::warn!(%from, held_back = held, "{MAX_PENDING_HANDSHAKES} TLS handshakes already running: incoming TCP connection closed");
            }
            continue;
        };
        // Each handshake on its own task, bounded in time: a silent or slow
        // client never holds the listener.
        let (inner, limit) = (inner.clone(), limit.clone());
        tokio::spawn(async move {
            let t = inner.cfg.peer_timeout;
            let result = tokio::time::timeout(t, incoming.handshake()).await;
            drop(permit);
            let why = match result {
                Ok(Ok(c)) => {
                    serve(inner, conn::from_tls(c), TransportKind::Tcp).await;
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no TLS handshake within {t:?}"),
            };
            let held = lock(&limit).allow(Instant::now());
            let what = format!("incoming TCP connection from {from}: {why}");
            match held {
                Some(held_back) => {
                    tracing::warn!(held_back, "replication connection refused: {what} (not a driftless primary with a certificate of this CA?)");
                    lock(&inner.seen).last_error = Some(what);
                }
                None => tracing::debug!("replication connection refused: {what}"),
            }
        });
    }
}

async fn accept_quic(inner: Arc<Inner>, q: QuicEndpoint) {
    let mut closing = inner.closing.subscribe();
    loop {
        // On its own task: a transport panic must not end the listener.
        let accept = tokio::spawn({
            let (q, t) = (q.clone(), inner.cfg.peer_timeout);
            async move { tokio::time::timeout(t, q.accept()).await }
        });
        let abort = accept.abort_handle();
        let accepted = tokio::select! {
            _ = closing.wait_for(|c| *c) => {
                abort.abort();
                return;
            }
            r = accept => match r {
                Ok(r) => r,
                Err(e) => {
                    note_error(&inner, format!("incoming QUIC connection: accept task failed: {e}"));
                    continue;
                }
            },
        };
        match accepted {
            Err(_) => continue,
            Ok(Err(TransportError::EndpointClosed)) => return,
            Ok(Err(e)) => note_error(&inner, format!("incoming QUIC connection: {e}")),
            Ok(Ok(s)) => {
                tokio::spawn(serve(
                    inner.clone(),
                    conn::from_quic(s, None),
                    TransportKind::Quic,
                ));
            }
        }
    }
}

fn local_hello(store: &Store, node_id: &str) -> Hello {
    // The last LSN the journal holds (no session is running, so nothing is
    // queued): the stream continues after it.
    let last = store.journal().next_lsn() - 1;
    conn::hello(store, node_id, Role::Secondary, last)
}

/// This node's HelloAck for `hello`, or why `hello`'s primary is refused.
async fn verdict(
    inner: &Inner,
    hello: &Hello,
    cert_name: &str,
) -> Result<Hello, (RefuseCode, String)> {
    let mut local = local_hello(&inner.store, &inner.cfg.node_id);
    // A new peer's volume with no data needs no compare in its first sync.
    local.empty = local.lineage.is_empty() && !inner.store.holds_data().await.unwrap_or(true);
    local.discarding = inner
        .discard_local
        .load(std::sync::atomic::Ordering::SeqCst);
    secondary_verdict(&local, hello, cert_name).map(|()| local)
}

/// Last message before closing: how long the peer gets to read it.
const LINGER: Duration = Duration::from_secs(1);

async fn refuse(c: &mut Conn, code: RefuseCode, text: &str) {
    let _ = c
        .writer
        .send(&Message::Refuse {
            code,
            text: text.to_owned(),
        })
        .await;
    c.writer.shutdown().await;
    c.guard.linger(LINGER).await;
}

/// One incoming connection: handshake, then the session.
async fn serve(inner: Arc<Inner>, mut c: Conn, transport: TransportKind) {
    let t = inner.cfg.peer_timeout;
    let from = format!("{} ({}, {transport})", c.peer_name, c.peer_addr);
    let hello = match tokio::time::timeout(t, c.reader.recv()).await {
        Err(_) => return note_error(&inner, format!("{from}: no Hello within {t:?}")),
        Ok(Err(e)) => return note_error(&inner, format!("{from}: handshake: {e}")),
        Ok(Ok(Message::Hello(h))) => h,
        Ok(Ok(other)) => {
            let _ = c
                .writer
                .send(&Message::Bye {
                    code: ByeCode::ProtocolError,
                    text: "expected Hello".into(),
                })
                .await;
            return note_error(
                &inner,
                format!(
                    "{from}: protocol: expected Hello, got {:?}",
                    other.message_type()
                ),
            );
        }
    };
    // The session's identity is the verified certificate name: a Hello
    // naming another node is refused before it can replace a session.
    if hello.node_id != c.peer_name {
        let why = format!(
            "the Hello names {:?} but the certificate is {:?}",
            hello.node_id, c.peer_name
        );
        refuse(&mut c, RefuseCode::IdentityMismatch, &why).await;
        tracing::error!(primary = %c.peer_name, reason = %why, "refused primary");
        return note_error(&inner, format!("{from}: refused: {why}"));
    }
    if let Some(arbiter) = &inner.arbiter {
        match arbiter.admit(&hello).await {
            Ok(()) => {}
            Err(Refusal::Refuse(code, why)) => {
                refuse(&mut c, code, &why).await;
                tracing::warn!(primary = %hello.node_id, reason = %why, "refused primary");
                return note_error(&inner, format!("{from}: refused: {why}"));
            }
            Err(Refusal::SplitBrain(ours)) => {
                let fork = ours.fork_lsn;
                let _ = c.writer.send(&Message::SplitBrain(ours)).await;
                match tokio::time::timeout(t, c.reader.recv()).await {
                    Ok(Ok(Message::SplitBrain(theirs))) if theirs.fork_lsn == fork => {
                        arbiter.settle(&hello.node_id, theirs).await;
                    }
                    other => tracing::warn!(
                        primary = %hello.node_id,
                        answer = ?other.map(|r| r.map(|m| m.message_type())),
                        "no split-brain facts in return"
                    ),
                }
                c.writer.shutdown().await;
                c.guard.linger(LINGER).await;
                return note_error(
                    &inner,
                    format!(
                        "{from}: split brain: both primaries wrote after the fork at LSN {fork}"
                    ),
                );
            }
        }
    }
    // The history verdict before the one-session check: a primary of an
    // older history learns so even while another primary's session runs.
    if let Err((code, why)) = verdict(&inner, &hello, &c.peer_name).await {
        refuse(&mut c, code, &why).await;
        tracing::error!(primary = %hello.node_id, reason = %why, "refused primary");
        return note_error(&inner, format!("{from}: refused: {why}"));
    }
    // One primary session at a time; the same primary reconnecting replaces
    // its stale session.
    let mut active = inner.active.lock().await;
    if let Some(a) = active.as_ref() {
        let newer = matches!(
            wire::compare_lineage(&a.lineage, &hello.lineage),
            LineageOrder::AIsAncestor { .. }
        );
        if newer {
            tracing::warn!(old = %a.node_id, new = %hello.node_id, "a primary of a newer history takes the session over");
        }
        if a.node_id != hello.node_id && !newer {
            let why = format!(
                "another primary session is active ({} from {}); refusing {}",
                a.node_id, a.address, hello.node_id
            );
            drop(active);
            refuse(&mut c, RefuseCode::Busy, &why).await;
            return note_error(&inner, format!("{from}: {why}"));
        }
        a.stop.notify_one();
        let mut f = a.finished.clone();
        if tokio::time::timeout(TAKEOVER_WAIT, f.wait_for(|d| *d))
            .await
            .is_err()
        {
            drop(active);
            refuse(&mut c, RefuseCode::Busy, "previous session still ending").await;
            return note_error(&inner, format!("{from}: previous session did not end"));
        }
    }
    if *inner.closing.borrow() {
        drop(active);
        refuse(&mut c, RefuseCode::NotAllowed, "secondary shutting down").await;
        return;
    }
    // Again: the previous session may have moved the journal on.
    let local = match verdict(&inner, &hello, &c.peer_name).await {
        Ok(local) => local,
        Err((code, why)) => {
            drop(active);
            refuse(&mut c, code, &why).await;
            return note_error(&inner, format!("{from}: refused: {why}"));
        }
    };
    if let Err(e) = c.writer.send(&Message::HelloAck(local.clone())).await {
        return note_error(&inner, format!("{from}: sending HelloAck: {e}"));
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let (fin_tx, fin_rx) = watch::channel(false);
    *active = Some(Active {
        node_id: hello.node_id.clone(),
        lineage: hello.lineage.clone(),
        address: c.peer_addr,
        stop: stop.clone(),
        finished: fin_rx,
    });
    drop(active);
    *lock(&inner.seen) = Seen {
        upstream: Some(UpstreamStatus {
            name: hello.node_id.clone(),
            transport,
            address: c.peer_addr.to_string(),
            connected: true,
            resyncing: false,
            // Filled in by status from the node's total.
            received_bytes_total: 0,
        }),
        last_error: None,
        streaming: false,
    };
    tracing::info!(primary = %hello.node_id, %transport, next_lsn = local.durable_lsn + 1, "primary session started");
    // A prefix of a newer history is streamed: the newer generations are
    // this copy's history from now on, even before any of their records
    // arrive (a primary promoted and demoted without writing must not look
    // like a fork later).
    if let LineageOrder::AIsAncestor { common_lsn, .. } =
        wire::compare_lineage(&local.lineage, &hello.lineage)
    {
        if local.durable_lsn < common_lsn {
            let lineage = hello
                .lineage
                .iter()
                .copied()
                .map(conn::from_wire_generation)
                .collect();
            if let Err(e) = inner.store.journal().set_lineage(lineage).await {
                tracing::error!(error = %e, "taking the primary's newer lineage over failed");
            }
        }
    }
    let result = session(&inner, c, &hello, stop).await;
    match &result {
        Ok(()) => tracing::info!(primary = %hello.node_id, "primary session ended"),
        Err(e) => note_error(&inner, format!("{from}: session closed: {e}")),
    }
    let mut active = inner.active.lock().await;
    if active
        .as_ref()
        .is_some_and(|a| a.finished.same_channel(&fin_tx.subscribe()))
    {
        *active = None;
        let mut seen = lock(&inner.seen);
        seen.streaming = false;
        if let Some(u) = seen.upstream.as_mut() {
            u.connected = false;
            u.resyncing = false;
        }
    }
    let _ = fin_tx.send(true);
}

/// How often a secondary makes what it received durable on its own.
const SECONDARY_SYNC_INTERVAL: Duration = Duration::from_millis(20);

/// At most one unsolicited durable-LSN Ack per this interval.
const ACK_COALESCE: Duration = Duration::from_millis(10);

/// Resync data applied since the last checkpoint that forces one before
/// more is applied (its `SyncAck` lets the primary send more).
const SYNC_CHECKPOINT_BYTES: u64 = 8 << 20;

/// The reader's queue to the journaler, in stream order.
enum Journaling {
    Records(Vec<(WireRecord, AppendHandle)>),
    Ops(Vec<SyncOp>),
    /// Answered once everything before it is applied.
    Barrier(oneshot::Sender<()>),
}

/// The journaler's queue to the applier: the same, records written.
enum Applying {
    Records(Vec<WireRecord>),
    Ops(Vec<SyncOp>),
    Barrier(oneshot::Sender<()>),
}

/// Marks in status whether the primary continues this copy or resyncs it.
fn note_phase(inner: &Inner, resyncing: bool) {
    let consistent = !inner.store.journal().is_inconsistent();
    let mut seen = lock(&inner.seen);
    seen.streaming = !resyncing && consistent;
    if let Some(u) = seen.upstream.as_mut() {
        u.resyncing = resyncing;
    }
}

async fn session(
    inner: &Arc<Inner>,
    c: Conn,
    hello: &Hello,
    stop: Arc<tokio::sync::Notify>,
) -> Result<(), SessionError> {
    let Conn {
        mut reader,
        writer,
        guard,
        ..
    } = c;
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUT_QUEUE_MESSAGES);
    let (journal_tx, journal_rx) = mpsc::channel::<Journaling>(APPLY_QUEUE_BATCHES);
    let (apply_tx, apply_rx) = mpsc::channel::<Applying>(APPLY_QUEUE_BATCHES);
    let writer_task = tokio::spawn(write_loop(inner.store.clone(), writer, out_rx));
    let journaler = tokio::spawn(journal_loop(
        inner.store.clone(),
        journal_rx,
        apply_tx,
        out_tx.clone(),
    ));
    let applier = tokio::spawn(apply_loop(inner.clone(), apply_rx, out_tx.clone()));
    let syncer = tokio::spawn(sync_pump(inner.store.clone()));
    let j = inner.store.journal();
    let mut proto = SecondarySession::new(
        inner.store.volume().size_bytes(),
        j.next_lsn(),
        j.generation(),
        hello.lineage.clone(),
    );
    // Not cancelled from outside: read_loop stops only between messages, so
    // a batch is never admitted to the journal without reaching the applier.
    let result = read_loop(inner, &mut reader, &mut proto, &journal_tx, &out_tx, &stop).await;
    // Everything admitted to the journal is applied before the session
    // ends, so the volume never misses a journaled record.
    drop(journal_tx);
    let journaled = journaler
        .await
        .map_err(|e| SessionError::ApplierTask(e.to_string()))
        .and_then(|r| r);
    let applied = applier
        .await
        .map_err(|e| SessionError::ApplierTask(e.to_string()))
        .and_then(|r| r)
        .and_then(|()| {
            // The applied watermark must reach everything journaled, or
            // checkpoints stall at the hole until a restart redoes it.
            let j = inner.store.journal();
            let (applied, written) = (j.applied_lsn(), j.written_lsn());
            if applied < written {
                return Err(SessionError::Unapplied {
                    from: applied + 1,
                    to: written,
                });
            }
            Ok(())
        });
    syncer.abort();
    let _ = out_tx
        .send(Message::Bye {
            code: ByeCode::Shutdown,
            text: "session ends".into(),
        })
        .await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    guard.linger(LINGER).await;
    drop(guard);
    result.and(journaled).and(applied)
}

async fn read_loop(
    inner: &Inner,
    reader: &mut MsgReader,
    proto: &mut SecondarySession,
    journal_tx: &mpsc::Sender<Journaling>,
    out_tx: &mpsc::Sender<Message>,
    stop: &tokio::sync::Notify,
) -> Result<(), SessionError> {
    let store = &inner.store;
    let t = inner.cfg.peer_timeout;
    let mut closing = inner.closing.subscribe();
    let mut first = true;
    loop {
        // Stop requests are taken only here, between messages (recv is
        // cancel-safe: a partial frame stays in the decoder).
        let received = tokio::select! {
            r = tokio::time::timeout(t, reader.recv()) => r,
            _ = stop.notified() => return Ok(()),
            _ = closing.wait_for(|c| *c) => return Ok(()),
        };
        let msg = match received {
            Err(_) => return Err(SessionError::Timeout(t)),
            Ok(Err(TransportError::Closed)) => return Err(SessionError::Closed),
            Ok(Err(e)) => return Err(SessionError::Transport(e)),
            Ok(Ok(m)) => m,
        };
        for step in proto.handle(msg)? {
            match step {
                Step::Adopt(g) => {
                    let generation = g.generation_id;
                    store
                        .journal()
                        .adopt_generation(conn::from_wire_generation(g))
                        .await
                        .map_err(|source| SessionError::AdoptGeneration { generation, source })?;
                }
                Step::Records(records) => {
                    let bytes: u64 = records.iter().map(crate::proto::primary::wire_bytes).sum();
                    inner
                        .received_bytes
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    admit(store, records, journal_tx).await?
                }
                Step::Flush(lsn) => {
                    let store = store.clone();
                    let out = out_tx.clone();
                    tokio::spawn(async move {
                        match store.journal().sync(lsn).await {
                            Ok(()) => {
                                let _ = out.send(Message::FlushAck { lsn }).await;
                            }
                            Err(e) => {
                                tracing::error!(lsn, error = %e, "flush for the primary failed")
                            }
                        }
                    });
                }
                Step::BeginResync {
                    job,
                    stream_from,
                    rollback_from,
                    lineage,
                } => {
                    let rollback = begin_resync(
                        inner,
                        journal_tx,
                        out_tx,
                        stream_from,
                        rollback_from,
                        lineage,
                    )
                    .await?;
                    // The primary's history is this copy's now.
                    inner
                        .discard_local
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(
                        job,
                        stream_from,
                        ?rollback,
                        "resync into this node begins: the copy is inconsistent until it ends"
                    );
                    let _ = out_tx.send(proto.begun(job, rollback)).await;
                }
                Step::Ops(ops) => {
                    let bytes: u64 = ops.iter().map(|o| o.data.len() as u64).sum();
                    inner
                        .received_bytes
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    if journal_tx.send(Journaling::Ops(ops)).await.is_err() {
                        return Err(SessionError::ApplierStopped);
                    }
                }
                Step::Reply(m) => {
                    let _ = out_tx.send(m).await;
                }
                Step::Close(text) => {
                    tracing::info!(%text, "primary ends the session");
                    return Ok(());
                }
            }
        }
        if first || proto.resync_job().is_none() {
            note_phase(inner, proto.resync_job().is_some());
            first = false;
        }
    }
}

/// Queues records in the journal at the primary's LSNs and hands them to
/// the journaler. A record that cannot be queued ends the session: the
/// ones before it are still handed over (they are in the journal), none
/// after it is taken.
async fn admit(
    store: &Store,
    records: Vec<WireRecord>,
    journal_tx: &mpsc::Sender<Journaling>,
) -> Result<(), SessionError> {
    let mut batch = Vec::with_capacity(records.len());
    let mut failed = None;
    for r in records {
        match store
            .append_replica(r.lsn, r.generation, conn::to_new_record(&r), r.blake3)
            .await
        {
            Ok(h) => batch.push((r, h)),
            Err(source) => {
                failed = Some(SessionError::Journal { lsn: r.lsn, source });
                break;
            }
        }
    }
    if !batch.is_empty() && journal_tx.send(Journaling::Records(batch)).await.is_err() {
        return Err(SessionError::ApplierStopped);
    }
    failed.map_or(Ok(()), Err)
}

/// Becomes a resync target: everything received so far applied and
/// durable, the copy marked inconsistent (persisted before anything of the
/// resync touches it), the ranges of its own records since `rollback_from`
/// asked for, the journal restarted at `stream_from` under the primary's
/// lineage.
async fn begin_resync(
    inner: &Inner,
    journal_tx: &mpsc::Sender<Journaling>,
    out_tx: &mpsc::Sender<Message>,
    stream_from: Lsn,
    rollback_from: Option<Lsn>,
    lineage: Vec<LineageEntry>,
) -> Result<Rollback, SessionError> {
    let store = &inner.store;
    let j = store.journal();
    let (tx, rx) = oneshot::channel();
    if journal_tx.send(Journaling::Barrier(tx)).await.is_err() || rx.await.is_err() {
        return Err(SessionError::ApplierStopped);
    }
    let resync_err = |what: &str, e: String| SessionError::Resync(format!("{what}: {e}"));
    j.set_inconsistent(true)
        .await
        .map_err(|e| resync_err("marking the copy inconsistent", e.to_string()))?;
    note_phase(inner, true);
    let rollback = match rollback_from {
        None => Rollback::None,
        Some(from) if from > j.written_lsn() => Rollback::Listed { ranges: 0 },
        Some(from) => match store.regions_written_since(from).await {
            Ok(Some(touched)) => {
                let mut ranges = 0;
                let mut next = 0;
                while let Some(first) = touched.next_dirty(next) {
                    let mut last = first;
                    while touched.next_dirty(last + 1) == Some(last + 1) {
                        last += 1;
                    }
                    next = last + 1;
                    let (offset, _) = touched.region_range(first, store.volume().size_bytes());
                    let (end_off, end_len) =
                        touched.region_range(last, store.volume().size_bytes());
                    let _ = out_tx
                        .send(Message::SyncNeed {
                            offset,
                            len: end_off + end_len - offset,
                        })
                        .await;
                    ranges += 1;
                }
                Rollback::Listed { ranges }
            }
            Ok(None) => Rollback::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "listing the records to roll back failed: every region is compared");
                Rollback::Unknown
            }
        },
    };
    store
        .sync_checkpoint()
        .await
        .map_err(|e| resync_err("checkpointing before the resync", e.to_string()))?;
    j.reset_to(stream_from)
        .await
        .map_err(|e| resync_err("restarting the journal", e.to_string()))?;
    j.set_lineage(
        lineage
            .into_iter()
            .map(conn::from_wire_generation)
            .collect(),
    )
    .await
    .map_err(|e| resync_err("taking the primary's lineage over", e.to_string()))?;
    Ok(rollback)
}

/// Per batch: waits until its records are written to the journal and
/// acknowledges them as journaled (what a sync write waits for), then hands
/// them to the applier. A record that failed stops the stream after the
/// ones before it.
async fn journal_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Journaling>,
    tx: mpsc::Sender<Applying>,
    out: mpsc::Sender<Message>,
) -> Result<(), SessionError> {
    while let Some(item) = rx.recv().await {
        let next = match item {
            Journaling::Records(batch) => {
                let mut records = Vec::with_capacity(batch.len());
                let mut failed = None;
                for (r, h) in batch {
                    if let Err(e) = h.written().await {
                        failed = Some(SessionError::Journal {
                            lsn: r.lsn,
                            source: e.into(),
                        });
                        break;
                    }
                    records.push(r);
                }
                if !records.is_empty() {
                    let j = store.journal();
                    let _ = out
                        .send(Message::Ack {
                            durable_lsn: j.durable_lsn(),
                            journaled_lsn: Some(j.written_lsn()),
                        })
                        .await;
                    if tx.send(Applying::Records(records)).await.is_err() {
                        return Err(SessionError::ApplierStopped);
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                continue;
            }
            Journaling::Ops(ops) => Applying::Ops(ops),
            Journaling::Barrier(done) => Applying::Barrier(done),
        };
        if tx.send(next).await.is_err() {
            return Err(SessionError::ApplierStopped);
        }
    }
    Ok(())
}

/// Applies in stream order: records once durable in the journal, resync
/// writes and checks as they come. Resync writes are not journaled: they
/// are acknowledged (`SyncAck`) only after a checkpoint fsynced them, when
/// the queue runs dry or enough was written.
async fn apply_loop(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Applying>,
    out: mpsc::Sender<Message>,
) -> Result<(), SessionError> {
    let store = &inner.store;
    let mut acks = OpAcks::default();
    let mut unsynced_bytes = 0u64;
    loop {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                make_durable(store, &mut acks, &mut unsynced_bytes, &out).await?;
                match rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match item {
            Applying::Records(records) => {
                let last = records.last().map_or(0, |r| r.lsn);
                store
                    .journal()
                    .sync(last)
                    .await
                    .map_err(|e| SessionError::Journal {
                        lsn: last,
                        source: e.into(),
                    })?;
                for r in records {
                    store
                        .apply_replica(
                            r.lsn,
                            conn::journal_kind(r.kind),
                            r.offset,
                            r.len,
                            r.payload,
                        )
                        .await
                        .map_err(|source| SessionError::Apply { lsn: r.lsn, source })?;
                }
            }
            Applying::Ops(ops) => {
                for op in ops {
                    apply_op(&inner, op.clone(), &mut acks, &mut unsynced_bytes, &out).await?;
                    if unsynced_bytes >= SYNC_CHECKPOINT_BYTES {
                        make_durable(store, &mut acks, &mut unsynced_bytes, &out).await?;
                    }
                }
            }
            Applying::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
    make_durable(store, &mut acks, &mut unsynced_bytes, &out).await
}

/// One resync or verify operation, after everything before it.
async fn apply_op(
    inner: &Inner,
    op: SyncOp,
    acks: &mut OpAcks,
    unsynced_bytes: &mut u64,
    out: &mpsc::Sender<Message>,
) -> Result<(), SessionError> {
    let store = &inner.store;
    let failed = |what: &str, e: store::StoreError| {
        SessionError::Resync(format!("{what} at {}+{}: {e}", op.offset, op.len))
    };
    match op.kind {
        SyncOpKind::Data => {
            store
                .apply_sync(op.offset, op.len, SyncWrite::Data(op.data.clone()))
                .await
                .map_err(|e| failed("writing resync data", e))?;
            *unsynced_bytes += op.len;
        }
        SyncOpKind::Zero => {
            store
                .apply_sync(op.offset, op.len, SyncWrite::Zero)
                .await
                .map_err(|e| failed("zeroing", e))?;
            *unsynced_bytes += 1;
        }
        SyncOpKind::Check | SyncOpKind::Verify => {
            let digest = store
                .digest(op.offset, op.len)
                .await
                .map_err(|e| failed("hashing", e))?;
            if digest != op.blake3 {
                let msg = if op.kind == SyncOpKind::Check {
                    Message::SyncNeed {
                        offset: op.offset,
                        len: op.len,
                    }
                } else {
                    Message::VerifyMismatch {
                        seq: op.seq,
                        offset: op.offset,
                        len: op.len,
                    }
                };
                let _ = out.send(msg).await;
            }
        }
        SyncOpKind::End => {
            // Every write before End durable, then the flag, and only then
            // End's ack: the primary calls the copy up to date on it.
            make_durable(store, acks, unsynced_bytes, out).await?;
            store
                .journal()
                .set_inconsistent(false)
                .await
                .map_err(|e| SessionError::Resync(format!("marking the copy consistent: {e}")))?;
            note_phase(inner, false);
            tracing::info!("resync into this node is done: the copy is consistent");
            acks.applied(op.seq);
            return make_durable(store, acks, unsynced_bytes, out).await;
        }
    }
    acks.applied(op.seq);
    Ok(())
}

/// A checkpoint (volume fsync) if any operation awaits one, then its ack.
async fn make_durable(
    store: &Store,
    acks: &mut OpAcks,
    unsynced_bytes: &mut u64,
    out: &mpsc::Sender<Message>,
) -> Result<(), SessionError> {
    if !acks.pending() {
        return Ok(());
    }
    if *unsynced_bytes > 0 {
        store
            .sync_checkpoint()
            .await
            .map_err(|e| SessionError::Resync(format!("checkpointing resync writes: {e}")))?;
        *unsynced_bytes = 0;
    }
    if let Some(m) = acks.made_durable() {
        let _ = out.send(m).await;
    }
    Ok(())
}

/// Makes received records durable soon after they are journaled, whether or
/// not the primary asks (async peers never send Flush): the durable LSN is
/// what the primary's journal may release for this peer. One group-committed
/// fdatasync per interval at most.
async fn sync_pump(store: Arc<Store>) {
    loop {
        tokio::time::sleep(SECONDARY_SYNC_INTERVAL).await;
        let j = store.journal();
        let written = j.written_lsn();
        if written > j.durable_lsn() {
            if let Err(e) = j.sync(written).await {
                tracing::error!(error = %e, "syncing received records failed");
                return;
            }
        }
    }
}

/// Sends queued messages, plus an Ack whenever the journal's durable LSN
/// advances (syncs, checkpoints), so the primary can release its journal.
/// Unsolicited Acks are coalesced to one per `ACK_COALESCE`; the wait is a
/// deadline in the select, never a sleep, so a FlushAck or batch Ack queued
/// meanwhile goes out at once.
async fn write_loop(store: Arc<Store>, mut w: MsgWriter, mut rx: mpsc::Receiver<Message>) {
    let mut durable = store.journal().durable_watch();
    let mut last_ack = Instant::now();
    let mut ack_due: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            changed = durable.changed(), if ack_due.is_none() => {
                if changed.is_err() {
                    break;
                }
                ack_due = Some(tokio::time::Instant::from_std(last_ack + ACK_COALESCE));
                continue;
            }
            _ = async { tokio::time::sleep_until(ack_due.expect("guarded")).await }, if ack_due.is_some() => {
                ack_due = None;
                let j = store.journal();
                Message::Ack {
                    durable_lsn: j.durable_lsn(),
                    journaled_lsn: Some(j.written_lsn()),
                }
            }
        };
        if matches!(msg, Message::Ack { .. }) {
            last_ack = Instant::now();
        }
        if let Err(e) = w.send(&msg).await {
            tracing::debug!(error = %e, "writing to the primary failed");
            break;
        }
    }
    w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::LogLimit;

    #[test]
    fn log_lines_are_limited_and_those_held_back_counted() {
        let mut l = LogLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t + Duration::from_secs(9)), None);
        assert_eq!(l.allow(t + Duration::from_secs(10)), Some(2));
        assert_eq!(l.allow(t + Duration::from_secs(30)), Some(0));
    }
}
