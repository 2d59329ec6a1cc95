//! The primary: local writes through the [`Store`], one session task per
//! peer that ships journal records in LSN order, and the sync gate that
//! holds writes and flushes for sync peers.
//!
//! Acks: a secondary answers each batch with `Ack{durable_lsn, journaled_lsn}`
//! once the records are in its journal (before it applies them), so
//! `max(durable, journaled)` releases sync writes, while only `durable`
//! releases the primary's journal (consumer ack) and answers flushes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use journal::{Consumer, Lsn, ReadBatch};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use transport::TransportError;
use wire::{ByeCode, Hello, Message, Role};

use crate::config::{PeerConfig, PeerMode, PrimaryConfig};
use crate::conn::{self, is_auth_error, wire_bytes, MsgReader, MsgWriter};
use crate::core::{
    decide, on_sync_ack, on_sync_connect, on_sync_disconnect, primary_verdict, Decision,
    LagTracker, Need, PrimaryVerdict, ShipState, SyncState, Throughput,
};
use crate::error::EngineError;
use crate::lock;
use crate::status::{volume_status, PeerState, PeerStatus, VolumeRole, VolumeStatus};
use store::{Change, Store};

/// Unacknowledged writes tracked for lag; beyond it lag is estimated.
const MAX_LAG_TRACKED_RECORDS: usize = 1 << 18;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);
/// A session that streamed this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum Link {
    Connecting,
    Connected,
    Disconnected,
    Refused,
    NeedsResync,
}

struct PeerRuntime {
    link: Link,
    sync: SyncState,
    acked_lsn: Lsn,
    durable_lsn: Lsn,
    flush_requested: Lsn,
    last_error: Option<String>,
    throughput: Throughput,
    /// This process streamed to the peer (its LSN may then exceed our log's
    /// end at start-up legitimately).
    streamed: bool,
}

struct Peer {
    cfg: PeerConfig,
    rt: Mutex<PeerRuntime>,
    /// Wakes the session's sender (flush request, window space).
    wake: Notify,
}

struct Inner {
    store: Arc<Store>,
    cfg: PrimaryConfig,
    peers: Vec<Arc<Peer>>,
    lag: Mutex<LagTracker>,
    /// Acks and sync-state changes: sync waiters re-decide.
    changed: Notify,
    /// Log end when this process started (see `primary_verdict`).
    start_lsn: Lsn,
    /// Set by shutdown: no new writes; sessions drain.
    draining: watch::Sender<bool>,
    /// Set after the drain: waiters give up.
    closed: AtomicBool,
}

/// The primary of one volume. See the crate docs for the guarantees.
pub struct Primary {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Primary {
    /// Registers a journal consumer per peer (retention starts now) and
    /// starts one session task per peer.
    pub async fn start(store: Arc<Store>, cfg: PrimaryConfig) -> Result<Arc<Primary>, EngineError> {
        cfg.validate()?;
        let journal = store.journal();
        let start_lsn = journal.written_lsn();
        let now = Instant::now();
        let mut consumers = Vec::new();
        let mut peers = Vec::new();
        for p in &cfg.peers {
            let mut consumer = journal
                .register_consumer(&p.name, journal.oldest_lsn())
                .await?;
            consumer.set_read_written(p.mode == PeerMode::Sync);
            consumer.set_sync_delay(p.max_ship_delay);
            consumers.push(consumer);
            peers.push(Arc::new(Peer {
                cfg: p.clone(),
                rt: Mutex::new(PeerRuntime {
                    link: Link::Connecting,
                    // Writes wait for a never-seen sync peer as for a lost one.
                    sync: SyncState::Lost { since: now },
                    acked_lsn: 0,
                    durable_lsn: 0,
                    flush_requested: 0,
                    last_error: None,
                    throughput: Throughput::new(THROUGHPUT_WINDOW),
                    streamed: false,
                }),
                wake: Notify::new(),
            }));
        }
        let inner = Arc::new(Inner {
            store,
            peers,
            lag: Mutex::new(LagTracker::new(MAX_LAG_TRACKED_RECORDS)),
            changed: Notify::new(),
            start_lsn,
            draining: watch::Sender::new(false),
            closed: AtomicBool::new(false),
            cfg,
        });
        let tasks = consumers
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(peer_main(inner.clone(), i, c)))
            .collect();
        tracing::info!(
            node = %inner.cfg.node_id,
            peers = inner.peers.len(),
            policy = %inner.cfg.on_sync_peer_loss,
            "primary started"
        );
        Ok(Arc::new(Primary {
            inner,
            tasks: Mutex::new(tasks),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Journals and applies `change` locally and returns once every sync
    /// peer in sync journaled it too (with `fua`: durable here and there).
    pub async fn change(&self, change: Change, fua: bool) -> Result<Lsn, EngineError> {
        if *self.inner.draining.borrow() {
            return Err(EngineError::Shutdown);
        }
        let bytes = match &change {
            Change::Write { data, .. } => data.len() as u64,
            _ => 0,
        } + wire::RECORD_HEADER_BYTES as u64;
        let started = Instant::now();
        let lsn = self.inner.store.change(change, fua).await?;
        self.inner.note_written(lsn, bytes, started);
        let need = if fua { Need::Durable } else { Need::Journaled };
        self.inner.wait_sync(lsn, need).await?;
        Ok(lsn)
    }

    /// Every change completed before the call is durable locally and on
    /// every sync peer in sync.
    pub async fn flush(&self) -> Result<(), EngineError> {
        if *self.inner.draining.borrow() {
            return Err(EngineError::Shutdown);
        }
        let lsn = self.inner.store.journal().written_lsn();
        let (local, remote) = tokio::join!(
            self.inner.store.flush(),
            self.inner.wait_sync(lsn, Need::Durable)
        );
        local?;
        remote
    }

    /// Each peer's state, position and lag. Reads only: a fold that made a
    /// peer need a resync while it was away shows here at once, but is
    /// recorded by the peer's session when it next runs.
    pub fn status(&self) -> VolumeStatus {
        let inner = &self.inner;
        let j = inner.store.journal();
        let written = j.written_lsn();
        let now = Instant::now();
        let lag = lock(&inner.lag);
        let peers = inner
            .peers
            .iter()
            .map(|p| {
                // Live: a fold can happen while the peer is away.
                let dirty = j.consumer_bitmap(&p.cfg.name).map_or(0, |b| b.count());
                let rt = lock(&p.rt);
                let (state, last_error) = peer_state(p.cfg.mode, &rt, dirty);
                let (lag_bytes, lag_seconds) = lag.lag(rt.acked_lsn, written, now);
                PeerStatus {
                    name: p.cfg.name.clone(),
                    mode: p.cfg.mode,
                    transport: p.cfg.transport,
                    address: p.cfg.address.to_string(),
                    state,
                    acked_lsn: rt.acked_lsn,
                    durable_lsn: rt.durable_lsn,
                    lag_bytes,
                    lag_records: written.saturating_sub(rt.acked_lsn),
                    lag_seconds,
                    throughput_bytes_per_sec: rt.throughput.rate(now),
                    last_error,
                    dirty_regions: dirty,
                }
            })
            .collect();
        drop(lag);
        let mut st = volume_status(&inner.store, VolumeRole::Primary);
        st.sync_peer_loss_policy = Some(inner.cfg.on_sync_peer_loss.to_string());
        st.peers = peers;
        st
    }

    /// Stops accepting writes, lets sessions ship what they can for
    /// `drain_timeout`, says Bye and closes.
    pub async fn shutdown(&self) {
        self.inner.draining.send_replace(true);
        for p in &self.inner.peers {
            p.wake.notify_one();
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        let deadline = self.inner.cfg.drain_timeout + self.inner.cfg.peer_timeout;
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        tracing::info!("primary shut down");
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
    }
}

/// The state status shows for a peer and the error that goes with it:
/// dirty regions mean it needs a resync, even before its session noticed.
fn peer_state(mode: PeerMode, rt: &PeerRuntime, dirty: u64) -> (PeerState, Option<String>) {
    let state = match &rt.link {
        Link::Refused => PeerState::Refused,
        Link::NeedsResync => PeerState::NeedsResync,
        _ if dirty > 0 => {
            return (
                PeerState::NeedsResync,
                Some(format!(
                    "fell behind past the journal cap while away: {dirty} dirty regions"
                )),
            )
        }
        _ if mode == PeerMode::Sync && rt.sync == SyncState::Degraded => PeerState::Degraded,
        Link::Connecting => PeerState::Connecting,
        Link::Connected => PeerState::Connected,
        Link::Disconnected => PeerState::Disconnected,
    };
    (state, rt.last_error.clone())
}

impl Inner {
    fn note_written(&self, lsn: Lsn, bytes: u64, at: Instant) {
        let min_acked = self
            .peers
            .iter()
            .map(|p| lock(&p.rt).acked_lsn)
            .min()
            .unwrap_or(Lsn::MAX);
        let mut lag = lock(&self.lag);
        if lsn > min_acked {
            lag.insert(lsn, bytes, at);
        }
        lag.prune(min_acked);
    }

    /// Waits until every sync peer holds `lsn` as `need` requires, applying
    /// the sync-peer loss policy to peers that are not streaming.
    async fn wait_sync(&self, lsn: Lsn, need: Need) -> Result<(), EngineError> {
        let policy = self.cfg.on_sync_peer_loss;
        if need == Need::Durable {
            for p in self.peers.iter().filter(|p| p.cfg.mode == PeerMode::Sync) {
                let mut rt = lock(&p.rt);
                if rt.flush_requested < lsn {
                    rt.flush_requested = lsn;
                    drop(rt);
                    p.wake.notify_one();
                }
            }
        }
        let waited_from = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return Err(EngineError::Shutdown);
            }
            let now = Instant::now();
            let mut deadline: Option<Instant> = None;
            let mut waiting = false;
            for p in self.peers.iter().filter(|p| p.cfg.mode == PeerMode::Sync) {
                let mut rt = lock(&p.rt);
                match decide(
                    rt.sync,
                    rt.acked_lsn,
                    rt.durable_lsn,
                    lsn,
                    need,
                    policy,
                    now,
                ) {
                    Decision::Done => {}
                    Decision::Wait { deadline: d } => {
                        waiting = true;
                        if let Some(d) = d {
                            deadline = Some(deadline.map_or(d, |x: Instant| x.min(d)));
                        }
                    }
                    Decision::Degrade => {
                        rt.sync = SyncState::Degraded;
                        tracing::error!(
                            peer = %p.cfg.name,
                            policy = %policy,
                            lsn,
                            waited_ms = waited_from.elapsed().as_millis() as u64,
                            "sync peer DEGRADED: writes no longer wait for it until it catches up"
                        );
                    }
                }
            }
            if !waiting {
                return Ok(());
            }
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(d.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

enum SessionEnd {
    /// Shutdown finished the session cleanly.
    Shutdown,
    Failed(String),
    Refused(String),
    NeedsResync(String),
}

async fn peer_main(inner: Arc<Inner>, idx: usize, mut consumer: Consumer) {
    let peer = inner.peers[idx].clone();
    let mut draining = inner.draining.subscribe();
    let mut backoff = inner.cfg.reconnect_min;
    loop {
        if *draining.borrow() {
            break;
        }
        {
            let mut rt = lock(&peer.rt);
            if !matches!(rt.link, Link::Refused | Link::NeedsResync) {
                rt.link = Link::Connecting;
            }
        }
        let started = Instant::now();
        let end = run_session(&inner, &peer, &mut consumer).await;
        let streamed_long = started.elapsed() >= STABLE_SESSION;
        {
            let mut rt = lock(&peer.rt);
            if peer.cfg.mode == PeerMode::Sync {
                rt.sync = match &end {
                    SessionEnd::NeedsResync(_) => SyncState::Degraded,
                    _ => on_sync_disconnect(rt.sync, Instant::now()),
                };
            }
            match &end {
                SessionEnd::Shutdown => rt.link = Link::Disconnected,
                SessionEnd::Failed(e) => {
                    tracing::warn!(peer = %peer.cfg.name, error = %e, "peer session ended");
                    rt.link = Link::Disconnected;
                    rt.last_error = Some(e.clone());
                }
                SessionEnd::Refused(why) => {
                    tracing::error!(peer = %peer.cfg.name, reason = %why, "peer refused");
                    rt.link = Link::Refused;
                    rt.last_error = Some(why.clone());
                }
                SessionEnd::NeedsResync(why) => {
                    tracing::error!(
                        peer = %peer.cfg.name,
                        reason = %why,
                        "peer NEEDS RESYNC: not streamed to until it is resynced"
                    );
                    rt.link = Link::NeedsResync;
                    rt.last_error = Some(why.clone());
                }
            }
        }
        inner.changed.notify_waiters();
        if matches!(end, SessionEnd::Shutdown) {
            break;
        }
        if streamed_long {
            backoff = inner.cfg.reconnect_min;
        }
        let wait = if matches!(end, SessionEnd::NeedsResync(_)) {
            inner.cfg.reconnect_max
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = draining.wait_for(|d| *d) => break,
        }
        backoff = (backoff * 2).min(inner.cfg.reconnect_max);
    }
}

fn local_hello(inner: &Inner) -> Hello {
    let durable = inner.store.journal().durable_lsn();
    conn::hello(&inner.store, &inner.cfg.node_id, Role::Primary, durable)
}

fn describe(e: &TransportError) -> String {
    match e {
        TransportError::Closed => "connection closed by peer".into(),
        other => other.to_string(),
    }
}

async fn run_session(inner: &Arc<Inner>, peer: &Arc<Peer>, consumer: &mut Consumer) -> SessionEnd {
    let cfg = &peer.cfg;
    let t = inner.cfg.peer_timeout;
    // On its own task: a panic in the transport (seen with QUIC close codes
    // below 0x100) must cost one attempt, not the peer's task.
    let dial = tokio::spawn({
        let (kind, addr, name) = (cfg.transport, cfg.address, cfg.name.clone());
        let (tls, quic) = (inner.cfg.tls.clone(), inner.cfg.quic.clone());
        async move { tokio::time::timeout(t, conn::dial(kind, addr, &name, &tls, &quic)).await }
    });
    let dialed = match dial.await {
        Ok(d) => d,
        Err(e) => return SessionEnd::Failed(format!("connect task failed: {e}")),
    };
    let mut c = match dialed {
        Err(_) => return SessionEnd::Failed(format!("connect timed out after {t:?}")),
        Ok(Err(e)) if is_auth_error(&e) => return SessionEnd::Refused(format!("tls: {e}")),
        Ok(Err(e)) => return SessionEnd::Failed(format!("connect: {}", describe(&e))),
        Ok(Ok(c)) => c,
    };
    let hello = local_hello(inner);
    if let Err(e) = c.writer.send(&Message::Hello(hello.clone())).await {
        return SessionEnd::Failed(format!("sending Hello: {}", describe(&e)));
    }
    let reply = match tokio::time::timeout(t, c.reader.recv()).await {
        Err(_) => return SessionEnd::Failed(format!("no HelloAck within {t:?}")),
        Ok(Err(e)) if is_auth_error(&e) => return SessionEnd::Refused(format!("tls: {e}")),
        Ok(Err(e)) => return SessionEnd::Failed(format!("handshake: {}", describe(&e))),
        Ok(Ok(m)) => m,
    };
    let remote = match reply {
        Message::HelloAck(h) => h,
        Message::Refuse { code, text } => {
            return SessionEnd::Refused(format!("by peer ({code:?}): {text}"))
        }
        other => {
            return SessionEnd::Failed(format!(
                "protocol: expected HelloAck, got {:?}",
                other.message_type()
            ))
        }
    };
    let legit_max = {
        let rt = lock(&peer.rt);
        if rt.streamed {
            inner.store.journal().written_lsn()
        } else {
            inner.start_lsn
        }
    };
    let from_lsn = match primary_verdict(&hello, &remote, legit_max) {
        PrimaryVerdict::Refuse(code, why) => {
            let _ = c
                .writer
                .send(&Message::Refuse {
                    code,
                    text: why.clone(),
                })
                .await;
            c.guard.linger(Duration::from_millis(500)).await;
            return SessionEnd::Refused(why);
        }
        PrimaryVerdict::NeedsResync(why) => {
            bye(&mut c.writer, ByeCode::NeedsResync, &why).await;
            c.guard.linger(Duration::from_millis(500)).await;
            return SessionEnd::NeedsResync(why);
        }
        PrimaryVerdict::Stream { from_lsn } => from_lsn,
    };
    let dirty = match inner.store.journal().consumer_bitmap(&cfg.name) {
        Ok(b) => b.count(),
        Err(e) => return SessionEnd::Failed(format!("consumer bitmap: {e}")),
    };
    if dirty > 0 {
        let why = format!("{dirty} dirty regions from falling behind past the journal cap");
        bye(&mut c.writer, ByeCode::NeedsResync, &why).await;
        c.guard.linger(Duration::from_millis(500)).await;
        return SessionEnd::NeedsResync(why);
    }
    if let Err(e) = consumer.seek(from_lsn) {
        let why = format!("journal no longer holds LSN {from_lsn}: {e}");
        bye(&mut c.writer, ByeCode::NeedsResync, &why).await;
        c.guard.linger(Duration::from_millis(500)).await;
        return SessionEnd::NeedsResync(why);
    }
    let peer_lsn = from_lsn - 1;
    {
        let mut rt = lock(&peer.rt);
        rt.link = Link::Connected;
        rt.streamed = true;
        rt.acked_lsn = peer_lsn;
        rt.durable_lsn = rt.durable_lsn.min(peer_lsn);
        rt.last_error = None;
        if cfg.mode == PeerMode::Sync {
            let before = rt.sync;
            rt.sync = on_sync_connect(rt.sync, peer_lsn, inner.store.journal().written_lsn());
            if before == SyncState::Degraded && rt.sync == SyncState::InSync {
                tracing::info!(peer = %cfg.name, "sync peer caught up: in sync again");
            }
        }
    }
    inner.changed.notify_waiters();
    tracing::info!(
        peer = %cfg.name,
        transport = %cfg.transport,
        from_lsn,
        "peer connected; streaming"
    );
    let ship = Mutex::new(ShipState::new(peer_lsn, cfg.max_inflight_bytes));
    let conn::Conn {
        reader,
        writer,
        guard,
        ..
    } = c;
    let end = tokio::select! {
        e = sender(inner, peer, consumer, writer, &ship) => e,
        e = receiver(inner, peer, reader, &ship) => e,
    };
    if matches!(end, SessionEnd::Shutdown) {
        // Let the Bye reach the peer before the QUIC connection closes.
        guard.linger(Duration::from_millis(500)).await;
    }
    drop(guard);
    end
}

async fn bye(w: &mut MsgWriter, code: ByeCode, text: &str) {
    let _ = w
        .send(&Message::Bye {
            code,
            text: text.chars().take(512).collect(),
        })
        .await;
    w.shutdown().await;
}

async fn sender(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    consumer: &mut Consumer,
    mut w: MsgWriter,
    ship: &Mutex<ShipState>,
) -> SessionEnd {
    let cfg = &peer.cfg;
    let mut draining = inner.draining.subscribe();
    let mut drain_until: Option<(Instant, Lsn)> = None;
    let keepalive = inner.cfg.keepalive_interval;
    let mut last_sent = Instant::now();
    let mut nonce = 0u64;
    loop {
        let (flush, may_send, pong) = {
            let mut s = lock(ship);
            s.request_flush(lock(&peer.rt).flush_requested);
            let may = s.may_send();
            s.sender_blocked = !may;
            (s.flush_to_send(), may, s.pong_due.take())
        };
        if let Some(nonce) = pong {
            if let Err(e) = w.send(&Message::Pong { nonce }).await {
                return SessionEnd::Failed(format!("sending Pong: {}", describe(&e)));
            }
        }
        if let Some(lsn) = flush {
            if let Err(e) = w.send(&Message::Flush { lsn }).await {
                return SessionEnd::Failed(format!("sending Flush: {}", describe(&e)));
            }
            last_sent = Instant::now();
        }
        if drain_until.is_none() && *draining.borrow() {
            let target = inner.store.journal().written_lsn();
            drain_until = Some((Instant::now() + inner.cfg.drain_timeout, target));
        }
        if let Some((deadline, target)) = drain_until {
            let acked = lock(ship).acked_lsn;
            if acked >= target || Instant::now() >= deadline {
                if acked < target {
                    tracing::warn!(peer = %cfg.name, acked, target, "drain timed out");
                }
                bye(&mut w, ByeCode::Shutdown, "primary shutting down").await;
                return SessionEnd::Shutdown;
            }
        }
        let tick = if drain_until.is_some() {
            Duration::from_millis(20)
        } else {
            keepalive.saturating_sub(last_sent.elapsed())
        };
        tokio::select! {
            biased;
            _ = peer.wake.notified() => continue,
            _ = draining.changed(), if drain_until.is_none() => continue,
            batch = consumer.read_batch(cfg.max_batch_bytes), if may_send => {
                let recs = match batch {
                    Ok(ReadBatch::Records(recs)) => recs,
                    Ok(ReadBatch::Folded { bitmap, resume_lsn }) => {
                        let n = bitmap.count();
                        let why = format!(
                            "fell behind past the journal cap: {n} dirty regions, stream would resume at LSN {resume_lsn}"
                        );
                        bye(&mut w, ByeCode::NeedsResync, &why).await;
                        return SessionEnd::NeedsResync(why);
                    }
                    Err(e) => return SessionEnd::Failed(format!("reading the journal: {e}")),
                };
                if recs.is_empty() {
                    continue;
                }
                let records: Vec<_> = recs.iter().map(conn::to_wire).collect();
                let sizes: Vec<_> = records.iter().map(|r| (r.lsn, wire_bytes(r))).collect();
                if let Err(e) = lock(ship).on_sent(&sizes) {
                    return SessionEnd::Failed(format!("internal: {e}"));
                }
                let first_lsn = records[0].lsn;
                if let Err(e) = w.send(&Message::Records { first_lsn, records }).await {
                    return SessionEnd::Failed(format!("sending records: {}", describe(&e)));
                }
                last_sent = Instant::now();
            }
            _ = tokio::time::sleep(tick) => {
                if drain_until.is_none() && last_sent.elapsed() >= keepalive {
                    nonce += 1;
                    if let Err(e) = w.send(&Message::Ping { nonce }).await {
                        return SessionEnd::Failed(format!("sending Ping: {}", describe(&e)));
                    }
                    last_sent = Instant::now();
                }
            }
        }
    }
}

async fn receiver(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    mut r: MsgReader,
    ship: &Mutex<ShipState>,
) -> SessionEnd {
    let name = &peer.cfg.name;
    let t = inner.cfg.peer_timeout;
    loop {
        let msg = match tokio::time::timeout(t, r.recv()).await {
            Err(_) => {
                return SessionEnd::Failed(format!("peer timeout: nothing received for {t:?}"))
            }
            Ok(Err(e)) => return SessionEnd::Failed(format!("receiving: {}", describe(&e))),
            Ok(Ok(m)) => m,
        };
        match msg {
            Message::Ack {
                durable_lsn,
                journaled_lsn,
            } => {
                let (freed, acked, durable, wake) = {
                    let mut s = lock(ship);
                    let freed = match s.on_ack(durable_lsn, journaled_lsn) {
                        Ok(f) => f,
                        Err(e) => return SessionEnd::Failed(format!("protocol: {e}")),
                    };
                    let wake = s.sender_blocked && s.may_send();
                    (freed, s.acked_lsn, s.durable_lsn, wake)
                };
                if wake {
                    peer.wake.notify_one();
                }
                inner.store.journal().ack_consumer(name, durable);
                on_peer_progress(inner, peer, acked, durable, freed);
            }
            Message::FlushAck { lsn } => {
                let (acked, durable) = {
                    let mut s = lock(ship);
                    if let Err(e) = s.on_flush_ack(lsn) {
                        return SessionEnd::Failed(format!("protocol: {e}"));
                    }
                    (s.acked_lsn, s.durable_lsn)
                };
                inner.store.journal().ack_consumer(name, durable);
                on_peer_progress(inner, peer, acked, durable, 0);
            }
            Message::Ping { nonce } => {
                lock(ship).pong_due = Some(nonce);
                peer.wake.notify_one();
            }
            Message::Pong { .. } => {}
            Message::Bye { code, text } => {
                return SessionEnd::Failed(format!("peer said bye ({code:?}): {text}"))
            }
            Message::Refuse { code, text } => {
                return SessionEnd::Refused(format!("by peer ({code:?}): {text}"))
            }
            other => {
                return SessionEnd::Failed(format!(
                    "protocol: unexpected {:?} from a secondary",
                    other.message_type()
                ))
            }
        }
    }
}

fn on_peer_progress(inner: &Inner, peer: &Peer, acked: Lsn, durable: Lsn, freed_bytes: u64) {
    let now = Instant::now();
    let written = inner.store.journal().written_lsn();
    {
        let mut rt = lock(&peer.rt);
        rt.acked_lsn = rt.acked_lsn.max(acked);
        rt.durable_lsn = rt.durable_lsn.max(durable);
        rt.throughput.record(now, freed_bytes);
        if peer.cfg.mode == PeerMode::Sync {
            let before = rt.sync;
            rt.sync = on_sync_ack(rt.sync, rt.acked_lsn, written);
            if before != rt.sync {
                tracing::info!(peer = %peer.cfg.name, "sync peer caught up: in sync again");
            }
        }
    }
    inner.changed.notify_waiters();
}
