//! The secondary: listens for its primary over TCP+TLS and/or QUIC,
//! journals every received record at the primary's LSN, applies records to
//! the volume in LSN order, and acknowledges what it journaled.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use journal::{AppendHandle, Lsn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use transport::{QuicEndpoint, TcpTlsListener, TransportError};
use wire::{ByeCode, Hello, Message, RefuseCode, Role, WireRecord};

use crate::config::{SecondaryConfig, TransportKind};
use crate::conn::{self, Conn, MsgReader, MsgWriter};
use crate::core::{secondary_verdict, validate_batch};
use crate::error::{EngineError, SessionError};
use crate::lock;
use crate::status::{volume_status, UpstreamStatus, VolumeRole, VolumeStatus};
use store::Store;

/// Received batches queued for the applier; bounds memory to this many
/// frames (each ≤ the wire frame limit) per session.
const APPLY_QUEUE_BATCHES: usize = 4;
/// Outgoing messages queued for the writer.
const OUT_QUEUE_MESSAGES: usize = 64;
/// A replaced session of the same primary must end within this.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

struct Active {
    node_id: String,
    address: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    finished: watch::Receiver<bool>,
}

/// (node id, transport, address) of a primary.
/// What status shows of the primary side: the last primary seen, whether
/// its session runs, and the last refused or failed connection.
#[derive(Default)]
struct Seen {
    upstream: Option<UpstreamStatus>,
    last_error: Option<String>,
}

struct Inner {
    store: Arc<Store>,
    cfg: SecondaryConfig,
    active: tokio::sync::Mutex<Option<Active>>,
    /// Shown in status: the last primary seen and the last error.
    seen: Mutex<Seen>,
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
            active: tokio::sync::Mutex::new(None),
            seen: Mutex::new(Seen::default()),
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
        let mut st = volume_status(&self.inner.store, VolumeRole::Secondary);
        st.upstream = seen.upstream.clone();
        st.last_error = seen.last_error.clone();
        st
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

async fn accept_tcp(inner: Arc<Inner>, l: TcpTlsListener) {
    let mut closing = inner.closing.subscribe();
    loop {
        // The TLS handshake runs inside accept: bound it so a silent client
        // cannot hold the listener.
        let accepted = tokio::select! {
            _ = closing.wait_for(|c| *c) => return,
            r = tokio::time::timeout(inner.cfg.peer_timeout, l.accept()) => r,
        };
        match accepted {
            Err(_) => continue,
            Ok(Err(e)) => note_error(&inner, format!("incoming TCP connection: {e}")),
            Ok(Ok(c)) => {
                tokio::spawn(serve(inner.clone(), conn::from_tls(c), TransportKind::Tcp));
            }
        }
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
    // One primary session at a time; the same primary reconnecting replaces
    // its stale session.
    let mut active = inner.active.lock().await;
    if let Some(a) = active.as_ref() {
        if a.node_id != hello.node_id {
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
    let local = local_hello(&inner.store, &inner.cfg.node_id);
    if let Err((code, why)) = secondary_verdict(&local, &hello) {
        drop(active);
        refuse(&mut c, code, &why).await;
        tracing::error!(primary = %hello.node_id, reason = %why, "refused primary");
        return note_error(&inner, format!("{from}: refused: {why}"));
    }
    if let Err(e) = c.writer.send(&Message::HelloAck(local.clone())).await {
        return note_error(&inner, format!("{from}: sending HelloAck: {e}"));
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let (fin_tx, fin_rx) = watch::channel(false);
    *active = Some(Active {
        node_id: hello.node_id.clone(),
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
        }),
        last_error: None,
    };
    tracing::info!(primary = %hello.node_id, %transport, next_lsn = local.durable_lsn + 1, "primary session started");
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
        if let Some(u) = lock(&inner.seen).upstream.as_mut() {
            u.connected = false;
        }
    }
    let _ = fin_tx.send(true);
}

type Batch = Vec<(WireRecord, AppendHandle)>;

/// How often a secondary makes what it received durable on its own.
const SECONDARY_SYNC_INTERVAL: Duration = Duration::from_millis(20);

/// At most one unsolicited durable-LSN Ack per this interval.
const ACK_COALESCE: Duration = Duration::from_millis(10);

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
    let (apply_tx, apply_rx) = mpsc::channel::<Batch>(APPLY_QUEUE_BATCHES);
    let writer_task = tokio::spawn(write_loop(inner.store.clone(), writer, out_rx));
    let applier = tokio::spawn(apply_loop(inner.store.clone(), apply_rx, out_tx.clone()));
    let syncer = tokio::spawn(sync_pump(inner.store.clone()));
    // Not cancelled from outside: read_loop stops only between messages, so
    // a batch is never admitted to the journal without reaching the applier.
    let result = read_loop(inner, &mut reader, hello, &apply_tx, &out_tx, &stop).await;
    // Everything admitted to the journal is applied before the session
    // ends, so the volume never misses a journaled record.
    drop(apply_tx);
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
    result.and(applied)
}

async fn read_loop(
    inner: &Inner,
    reader: &mut MsgReader,
    hello: &Hello,
    apply_tx: &mpsc::Sender<Batch>,
    out_tx: &mpsc::Sender<Message>,
    stop: &tokio::sync::Notify,
) -> Result<(), SessionError> {
    let store = &inner.store;
    let t = inner.cfg.peer_timeout;
    let mut closing = inner.closing.subscribe();
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
        match msg {
            Message::Records { first_lsn, records } => {
                let next = pending_next(store);
                validate_batch(next, first_lsn, &records)?;
                let mut batch = Vec::with_capacity(records.len());
                let mut failed = None;
                for r in records {
                    match admit(store, hello, &r).await {
                        Ok(h) => batch.push((r, h)),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                // What was admitted is in the journal: it must be applied
                // even if the rest of the batch failed.
                if !batch.is_empty() && apply_tx.send(batch).await.is_err() {
                    return Err(SessionError::ApplierStopped);
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            Message::Flush { lsn } => {
                if lsn > pending_next(store).saturating_sub(1) {
                    return Err(SessionError::Protocol(format!(
                        "Flush of LSN {lsn} beyond the records received"
                    )));
                }
                let store = store.clone();
                let out = out_tx.clone();
                tokio::spawn(async move {
                    match store.journal().sync(lsn).await {
                        Ok(()) => {
                            let _ = out.send(Message::FlushAck { lsn }).await;
                        }
                        Err(e) => tracing::error!(lsn, error = %e, "flush for the primary failed"),
                    }
                });
            }
            Message::Ping { nonce } => {
                let _ = out_tx.send(Message::Pong { nonce }).await;
            }
            Message::Pong { .. } => {}
            Message::Bye { code, text } => {
                tracing::info!(?code, %text, "primary said bye");
                return Ok(());
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected {:?} from a primary",
                    other.message_type()
                )))
            }
        }
    }
}

/// Next LSN the journal will accept (includes queued, not yet written).
fn pending_next(store: &Store) -> Lsn {
    store.journal().next_lsn()
}

/// Queues one received record in the journal at the primary's LSN (taking
/// over the primary's generation where the record starts one).
async fn admit(store: &Store, hello: &Hello, r: &WireRecord) -> Result<AppendHandle, SessionError> {
    if r.generation != store.journal().generation() {
        adopt(store, hello, r).await?;
    }
    store
        .append_replica(r.lsn, r.generation, conn::to_new_record(r), r.blake3)
        .await
        .map_err(|source| SessionError::Journal { lsn: r.lsn, source })
}

/// The primary's record starts a generation of its lineage: take it over.
async fn adopt(store: &Store, hello: &Hello, r: &WireRecord) -> Result<(), SessionError> {
    let known = hello
        .lineage
        .iter()
        .any(|g| g.generation_id == r.generation && g.start_lsn == r.lsn);
    if !known {
        return Err(SessionError::UnknownGeneration {
            lsn: r.lsn,
            generation: r.generation,
        });
    }
    store
        .journal()
        .adopt_generation(r.generation, r.lsn)
        .await
        .map_err(|source| SessionError::AdoptGeneration {
            generation: r.generation,
            source,
        })
}

/// Per batch: waits until it is written to the journal, acknowledges it as
/// journaled (what a sync write waits for), then applies it in LSN order.
async fn apply_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Batch>,
    out: mpsc::Sender<Message>,
) -> Result<(), SessionError> {
    while let Some(batch) = rx.recv().await {
        let mut records = Vec::with_capacity(batch.len());
        for (r, h) in batch {
            h.written().await.map_err(|e| SessionError::Journal {
                lsn: r.lsn,
                source: e.into(),
            })?;
            records.push(r);
        }
        let j = store.journal();
        let _ = out
            .send(Message::Ack {
                durable_lsn: j.durable_lsn(),
                journaled_lsn: Some(j.written_lsn()),
            })
            .await;
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
