//! The driver of one peer of a primary: a task that dials the peer, runs
//! the handshake verdict, and drives a [`PrimarySession`] with real I/O —
//! journal records from the peer's consumer, region snapshots from the
//! store, the connection — until the session ends, then reconnects after a
//! backoff. It is the one owner of the peer's state; the write path and
//! status read it through a watch channel (`PeerView`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use journal::{Consumer, DirtyBitmap, Lsn, ReadBatch};
use store::Store;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;
use transport::TransportError;
use wire::{ByeCode, Message, RefuseCode, Role};

use crate::config::{PeerConfig, PeerMode, PrimaryConfig, ResyncCompare, SyncPeerLossPolicy};
use crate::conn::{self, is_auth_error, MsgReader, MsgWriter};
use crate::proto::gate::{on_sync_ack, on_sync_connect, on_sync_disconnect, SyncState};
use crate::proto::lag::{LagTracker, Throughput};
use crate::proto::primary::{
    Content, End, Event, JobKind, JobOutcome, JobSpec, Origin, PrimarySession, SessionConfig,
    Snapshot,
};
use crate::proto::verdict::{primary_verdict, split_brain_victim, PrimaryFacts, PrimaryVerdict};
use crate::status::{
    ConnectionState, DiskState, JobKindStatus, JobStatus, RefusalReason, ResyncReport, VerifyReport,
};

/// What the write path (`primary.rs`) and the peer tasks share.
pub(crate) struct Inner {
    pub store: Arc<Store>,
    pub cfg: PrimaryConfig,
    pub peers: Vec<Arc<Peer>>,
    pub lag: Mutex<LagTracker>,
    /// Acks and sync-state changes: sync waiters re-decide.
    pub changed: Notify,
    /// Set by shutdown: no new writes; sessions drain.
    pub draining: watch::Sender<bool>,
    /// Set after the drain: waiters give up.
    pub closed: AtomicBool,
    /// Writes are refused until every peer confirmed that it holds no
    /// newer history than this node's (after an unclean stop: a peer may
    /// have been promoted meanwhile).
    pub fence: watch::Sender<Option<Fence>>,
    /// Serializes lifting the fence (it starts a generation first).
    pub unfencing: tokio::sync::Mutex<()>,
    /// Set when a split-brain policy picked this node to give its changes
    /// since the fork up (why): the node steps down.
    pub victim: watch::Sender<Option<String>>,
}

/// Starts a new generation (a random id, never 0) at the next LSN and logs
/// it with `why`: every fork point of the history is in the log.
pub(crate) async fn new_generation(
    store: &Store,
    unknown_before: bool,
    why: &str,
) -> Result<(), crate::EngineError> {
    let id = loop {
        let id = uuid::Uuid::new_v4().as_u64_pair().0;
        if id != 0 {
            break id;
        }
    };
    let at = store.journal().start_generation(id, unknown_before).await?;
    tracing::warn!(
        generation = format_args!("{id:#x}"),
        start_lsn = at,
        unknown_before,
        "{why}: a new generation begins"
    );
    Ok(())
}

/// Why writes are refused, and what each peer said so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub reason: String,
    /// Peers whose history is this node's or older.
    pub confirmed: std::collections::BTreeSet<String>,
    /// Peers that hold a newer history, with what they said.
    pub newer: std::collections::BTreeMap<String, String>,
}

impl Inner {
    /// The fence, in words, or `None` when writes are accepted.
    pub fn fence_text(&self) -> Option<String> {
        let fence = self.fence.borrow();
        let f = fence.as_ref()?;
        let waiting: Vec<&str> = self
            .peers
            .iter()
            .map(|p| p.cfg.name.as_str())
            .filter(|n| !f.confirmed.contains(*n) && !f.newer.contains_key(*n))
            .collect();
        let mut text = f.reason.clone();
        if !f.newer.is_empty() {
            let newer: Vec<String> = f.newer.iter().map(|(n, w)| format!("{n}: {w}")).collect();
            text += &format!("; NEWER HISTORY on {}", newer.join("; "));
        }
        if !waiting.is_empty() {
            text += &format!("; not reached yet: {}", waiting.join(", "));
        }
        Some(text)
    }

    /// A peer's handshake showed its history is not newer than ours; the
    /// last one lifts the fence.
    async fn confirm(&self, peer: &str) {
        let all = {
            let mut all = false;
            self.fence.send_if_modified(|f| match f {
                Some(f) => {
                    let added = f.confirmed.insert(peer.to_owned());
                    all = self.peers.iter().all(|p| f.confirmed.contains(&p.cfg.name));
                    added
                }
                None => false,
            });
            all
        };
        if all {
            if let Err(e) = self
                .unfence("every peer confirmed it holds no newer history")
                .await
            {
                tracing::error!(error = %e, "lifting the fence failed; writes stay refused");
            }
        }
    }

    /// This primary's side of a split brain at `fork_lsn`.
    pub async fn split_brain_facts(&self, fork_lsn: Lsn) -> wire::SplitBrainFacts {
        wire::SplitBrainFacts {
            fork_lsn,
            // Unknown when the journal no longer holds those records.
            changed_regions: match self.store.regions_written_since(fork_lsn).await {
                Ok(Some(touched)) => touched.count(),
                Ok(None) => u64::MAX,
                Err(e) => {
                    tracing::warn!(error = %e, "counting the regions changed since the fork failed");
                    u64::MAX
                }
            },
            primary_since_ns: self.cfg.primary_since_ns,
            policy: self.cfg.split_brain_policy.to_u8(),
            victim: String::new(),
        }
    }

    /// Starts the generation an unclean stop calls for and accepts writes.
    pub async fn unfence(&self, why: &str) -> Result<(), crate::EngineError> {
        let _one = self.unfencing.lock().await;
        if self.fence.borrow().is_none() {
            return Ok(());
        }
        new_generation(
            &self.store,
            false,
            &format!("fence lifted ({why}): writes accepted"),
        )
        .await?;
        self.fence.send_replace(None);
        Ok(())
    }
}

const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);
/// A session that streamed this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Region reads in flight at once for a resync or verify.
const REGION_READS_MAX: usize = 4;
/// Synced regions are cleared from the bitmap (a file rewrite) at most this
/// often, or once this many are pending: a late clear only resends.
const CLEAR_INTERVAL: Duration = Duration::from_millis(500);
const CLEAR_BATCH_REGIONS: usize = 65_536;
/// Ranges of a verify report kept for status.
const VERIFY_RANGES_MAX: usize = 64;
/// Last message before closing: how long the peer gets to read it.
const LINGER: Duration = Duration::from_millis(500);

/// What the write path and status see of a peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerView {
    pub connection: ConnectionState,
    pub disk: DiskState,
    pub gate: SyncState,
    pub acked_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub last_error: Option<String>,
    pub job: Option<JobStatus>,
    pub last_resync: Option<ResyncReport>,
    pub last_verify: Option<VerifyReport>,
    pub throughput_bytes_per_sec: f64,
    /// Record bytes the current session's peer acknowledged.
    pub acked_bytes_total: u64,
    /// Since start: record and resync region bytes sent, all sessions.
    pub shipped_bytes_total: u64,
    pub resync_bytes_total: u64,
    /// Sessions established since start.
    pub sessions: u64,
    pub refusals: std::collections::BTreeMap<RefusalReason, u64>,
}

/// An operator's request for a peer.
pub(crate) enum Command {
    Resync {
        full: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Verify {
        repair: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

pub(crate) struct Peer {
    pub cfg: PeerConfig,
    pub view: watch::Sender<PeerView>,
    pub commands: mpsc::Sender<Command>,
    /// The highest LSN a FLUSH needs durable on this (sync) peer.
    pub flush_wanted: watch::Sender<Lsn>,
}

impl Peer {
    pub(crate) fn new(
        cfg: PeerConfig,
        acked_lsn: Lsn,
        now: Instant,
    ) -> (Peer, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(8);
        let view = PeerView {
            connection: ConnectionState::Connecting,
            disk: DiskState::Unknown,
            // Writes wait for a never-seen sync peer as for a lost one.
            gate: SyncState::Lost { since: now },
            acked_lsn,
            durable_lsn: acked_lsn,
            last_error: None,
            job: None,
            last_resync: None,
            last_verify: None,
            throughput_bytes_per_sec: 0.0,
            acked_bytes_total: 0,
            shipped_bytes_total: 0,
            resync_bytes_total: 0,
            sessions: 0,
            refusals: Default::default(),
        };
        (
            Peer {
                cfg,
                view: watch::Sender::new(view),
                commands,
                flush_wanted: watch::Sender::new(0),
            },
            rx,
        )
    }
}

/// Operator requests waiting for the next session.
#[derive(Default)]
struct Pending {
    overwrite: bool,
    resync: bool,
}

enum SessionEnd {
    Shutdown,
    Failed(String),
    Refused(String, DiskState, RefusalReason),
    /// Fenced: the handshake only confirmed the peer's history.
    Probed,
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    idx: usize,
    mut consumer: Consumer,
    mut commands: mpsc::Receiver<Command>,
) {
    let peer = inner.peers[idx].clone();
    let mut draining = inner.draining.subscribe();
    let mut backoff = inner.cfg.reconnect_min;
    let mut pending = Pending::default();
    loop {
        if *draining.borrow() {
            break;
        }
        peer.view.send_modify(|v| {
            if v.connection != ConnectionState::Refused {
                v.connection = ConnectionState::Connecting;
            }
        });
        let started = Instant::now();
        let end = session(&inner, &peer, &mut consumer, &mut commands, &mut pending).await;
        let now = Instant::now();
        peer.view.send_modify(|v| {
            v.gate = match peer.cfg.mode {
                PeerMode::Sync => {
                    match (on_sync_disconnect(v.gate, now), inner.cfg.on_sync_peer_loss) {
                        (SyncState::Lost { .. }, SyncPeerLossPolicy::Degrade) => {
                            SyncState::Degraded
                        }
                        (g, _) => g,
                    }
                }
                PeerMode::Async => v.gate,
            };
            v.job = None;
            v.disk = match v.disk {
                DiskState::UpToDate => DiskState::Outdated,
                DiskState::Syncing => DiskState::Inconsistent,
                other => other,
            };
            match &end {
                SessionEnd::Shutdown => v.connection = ConnectionState::Disconnected,
                SessionEnd::Failed(e) => {
                    tracing::warn!(peer = %peer.cfg.name, error = %e, "peer session ended");
                    v.connection = ConnectionState::Disconnected;
                    v.last_error = Some(e.clone());
                }
                SessionEnd::Refused(why, disk, reason) => {
                    tracing::error!(peer = %peer.cfg.name, reason = %why, "peer refused");
                    *v.refusals.entry(*reason).or_default() += 1;
                    v.connection = ConnectionState::Refused;
                    v.disk = *disk;
                    v.last_error = Some(why.clone());
                }
                SessionEnd::Probed => {
                    v.connection = ConnectionState::Disconnected;
                    v.last_error = Some(
                        "this primary is fenced: the handshake only confirmed the peer's history"
                            .into(),
                    );
                }
            }
        });
        inner.changed.notify_waiters();
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Probed => {
                // Streams once the fence is lifted, with the new generation.
                let mut fence = inner.fence.subscribe();
                tokio::select! {
                    _ = fence.wait_for(|f| f.is_none()) => {}
                    _ = tokio::time::sleep(inner.cfg.reconnect_max) => {}
                    _ = draining.wait_for(|d| *d) => return,
                }
                continue;
            }
            _ => {}
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff = inner.cfg.reconnect_min;
        }
        let until = tokio::time::Instant::now() + backoff;
        loop {
            let deadline = degrade_deadline(&peer, inner.cfg.on_sync_peer_loss);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = draining.wait_for(|d| *d) => return,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => queue_command(cmd, &mut pending),
                    None => return,
                },
                _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                    degrade(&inner, &peer, "its session was lost");
                }
            }
        }
        backoff = (backoff * 2).min(inner.cfg.reconnect_max);
    }
}

/// When a lost sync peer must be degraded (suspend policy).
fn degrade_deadline(peer: &Peer, policy: SyncPeerLossPolicy) -> Option<Instant> {
    match (peer.view.borrow().gate, policy) {
        (SyncState::Lost { since }, SyncPeerLossPolicy::Suspend { timeout })
            if peer.cfg.mode == PeerMode::Sync =>
        {
            Some(since + timeout)
        }
        _ => None,
    }
}

fn degrade(inner: &Inner, peer: &Peer, why: &str) {
    let mut changed = false;
    peer.view.send_modify(|v| {
        if v.gate != SyncState::Degraded {
            v.gate = SyncState::Degraded;
            changed = true;
        }
    });
    if changed {
        tracing::error!(
            peer = %peer.cfg.name,
            policy = %inner.cfg.on_sync_peer_loss,
            "sync peer DEGRADED ({why}): writes no longer wait for it until it catches up"
        );
        inner.changed.notify_waiters();
    }
}

/// A request while not connected: remembered for the next handshake.
fn queue_command(cmd: Command, pending: &mut Pending) {
    match cmd {
        Command::Resync { full, reply } => {
            pending.resync = true;
            pending.overwrite |= full;
            let _ = reply.send(Ok(format!(
                "the peer is not connected; the {}resync starts when it connects",
                if full { "full " } else { "" }
            )));
        }
        Command::Verify { reply, .. } => {
            let _ = reply.send(Err(
                "the peer is not connected: nothing to verify against".into()
            ));
        }
    }
}

fn describe(e: &TransportError) -> String {
    match e {
        TransportError::Closed => "connection closed by peer".into(),
        other => other.to_string(),
    }
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

/// A region walk of a job: the regions left of its bitmap.
struct Walk {
    bitmap: DirtyBitmap,
    next: u64,
}

/// Dial, handshake, verdict, then the session until it ends.
async fn session(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    consumer: &mut Consumer,
    commands: &mut mpsc::Receiver<Command>,
    pending: &mut Pending,
) -> SessionEnd {
    let cfg = &peer.cfg;
    let t = inner.cfg.peer_timeout;
    // On its own task: a panic in the transport (seen with QUIC close codes
    // below 0x100) must cost one attempt, not the peer's task.
    let dial = tokio::spawn({
        let (kind, addr, name) = (cfg.transport, cfg.address, cfg.name.clone());
        let (tls, quic) = (inner.cfg.tls.clone(), inner.cfg.quic.clone());
        async move { tokio::time::timeout(t, conn::dial(kind, addr, &name, &tls, &quic)).await }
    });
    let mut c = match dial.await {
        Err(e) => return SessionEnd::Failed(format!("connect task failed: {e}")),
        Ok(Err(_)) => return SessionEnd::Failed(format!("connect timed out after {t:?}")),
        Ok(Ok(Err(e))) if is_auth_error(&e) => {
            return SessionEnd::Refused(format!("tls: {e}"), DiskState::Unknown, RefusalReason::Tls)
        }
        Ok(Ok(Err(e))) => return SessionEnd::Failed(format!("connect: {}", describe(&e))),
        Ok(Ok(Ok(c))) => c,
    };
    let store = &inner.store;
    let journal = store.journal();
    let mut hello = conn::hello(
        store,
        &inner.cfg.node_id,
        Role::Primary,
        journal.durable_lsn(),
    );
    hello.overwrite = pending.overwrite;
    hello.fenced = inner.fence.borrow().is_some();
    if let Err(e) = c.writer.send(&Message::Hello(hello.clone())).await {
        return SessionEnd::Failed(format!("sending Hello: {}", describe(&e)));
    }
    let remote = match tokio::time::timeout(t, c.reader.recv()).await {
        Err(_) => return SessionEnd::Failed(format!("no HelloAck within {t:?}")),
        Ok(Err(e)) if is_auth_error(&e) => {
            return SessionEnd::Refused(format!("tls: {e}"), DiskState::Unknown, RefusalReason::Tls)
        }
        Ok(Err(e)) => return SessionEnd::Failed(format!("handshake: {}", describe(&e))),
        Ok(Ok(Message::HelloAck(h))) => h,
        Ok(Ok(Message::SplitBrain(theirs))) => {
            return split_brain(inner, &mut c, &cfg.name, theirs).await;
        }
        Ok(Ok(Message::Refuse { code, text })) => {
            let (disk, reason) =
                if code == RefuseCode::LineageDiverged && text.contains("split brain") {
                    (DiskState::SplitBrain, RefusalReason::SplitBrain)
                } else {
                    (DiskState::Unknown, RefusalReason::from(code))
                };
            if code == RefuseCode::LineageDiverged {
                inner.fence.send_if_modified(|f| match f {
                    Some(f) => {
                        f.newer.insert(cfg.name.clone(), text.clone());
                        true
                    }
                    None => false,
                });
            }
            return SessionEnd::Refused(format!("by peer ({code:?}): {text}"), disk, reason);
        }
        Ok(Ok(other)) => {
            return SessionEnd::Failed(format!(
                "protocol: expected HelloAck, got {:?}",
                other.message_type()
            ))
        }
    };
    let dirty = match journal.consumer_dirty(&cfg.name) {
        Ok(d) => d,
        Err(e) => return SessionEnd::Failed(format!("consumer: {e}")),
    };
    let facts = PrimaryFacts {
        local: &hello,
        peer_name: &cfg.name,
        cert_name: &c.peer_name,
        written_lsn: journal.written_lsn(),
        owed_regions: dirty.regions,
        owed_since_fall: dirty.needs_resync,
        initial_sync: inner.cfg.initial_sync,
        overwrite: pending.overwrite,
        force_resync: pending.resync,
    };
    let verdict = primary_verdict(&facts, &remote);
    if inner.fence.borrow().is_some() {
        if let PrimaryVerdict::Refuse { code, reason, .. } = &verdict {
            if *code == RefuseCode::LineageDiverged {
                inner.fence.send_modify(|f| {
                    if let Some(f) = f {
                        f.newer.insert(cfg.name.clone(), reason.clone());
                    }
                });
            }
        } else {
            // Nothing is streamed under the old generation: the session
            // after the fence carries the new one.
            bye(
                &mut c.writer,
                ByeCode::Shutdown,
                "fenced primary: history confirmed, streaming after the fence",
            )
            .await;
            c.guard.linger(LINGER).await;
            inner.confirm(&cfg.name).await;
            return SessionEnd::Probed;
        }
    }
    *pending = Pending::default();
    let now = Instant::now();
    let scfg = SessionConfig {
        max_inflight_bytes: cfg.max_inflight_bytes,
        max_batch_bytes: cfg.max_batch_bytes,
        keepalive: inner.cfg.keepalive_interval,
        timeout: inner.cfg.peer_timeout,
        volume_bytes: store.volume().size_bytes(),
        region_bytes: journal.region_bytes(),
        resync: inner.cfg.resync,
    };
    let (mut session, walk) = match verdict {
        PrimaryVerdict::Refuse { code, reason, disk } => {
            let _ = c
                .writer
                .send(&Message::Refuse {
                    code,
                    text: reason.clone(),
                })
                .await;
            c.guard.linger(LINGER).await;
            let why = if disk == DiskState::SplitBrain {
                RefusalReason::SplitBrain
            } else {
                RefusalReason::from(code)
            };
            return SessionEnd::Refused(reason, disk, why);
        }
        PrimaryVerdict::Stream { from_lsn } => match consumer.seek(from_lsn) {
            Ok(()) => {
                tracing::info!(peer = %cfg.name, from_lsn, "peer connected; streaming (it holds a prefix)");
                (PrimarySession::new(scfg, from_lsn - 1, now), None)
            }
            Err(e) => {
                // Records it needs are gone without being in its bitmap
                // (should not happen): compare everything.
                tracing::error!(peer = %cfg.name, error = %e, "cannot stream to the peer; comparing every region");
                match start_resync(
                    inner,
                    peer,
                    consumer,
                    true,
                    true,
                    remote.durable_lsn + 1,
                    None,
                    scfg,
                    now,
                )
                .await
                {
                    Ok(s) => s,
                    Err(e) => return SessionEnd::Failed(e),
                }
            }
        },
        PrimaryVerdict::Resync(plan) => {
            tracing::warn!(peer = %cfg.name, reason = %plan.reason, full = plan.full, "peer needs a resync");
            let peer_next = (remote.durable_lsn + 1).min(plan.rollback_from.unwrap_or(Lsn::MAX));
            match start_resync(
                inner,
                peer,
                consumer,
                plan.full,
                plan.compare,
                peer_next,
                plan.rollback_from,
                scfg,
                now,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => return SessionEnd::Failed(e),
            }
        }
    };
    peer.view.send_modify(|v| {
        v.connection = ConnectionState::Connected;
        v.last_error = None;
        v.acked_bytes_total = 0;
        v.sessions += 1;
        v.acked_lsn = session.acked_lsn();
        v.durable_lsn = v.durable_lsn.min(session.acked_lsn());
        match session.job_kind() {
            Some(JobKind::Resync { .. }) => {
                v.disk = DiskState::Syncing;
                if cfg.mode == PeerMode::Sync {
                    v.gate = SyncState::Degraded;
                }
            }
            _ => {
                v.disk = DiskState::UpToDate;
                if cfg.mode == PeerMode::Sync {
                    let before = v.gate;
                    v.gate = on_sync_connect(v.gate, session.acked_lsn(), journal.written_lsn());
                    if before == SyncState::Degraded && v.gate == SyncState::InSync {
                        tracing::info!(peer = %cfg.name, "sync peer caught up: in sync again");
                    }
                }
            }
        }
    });
    inner.changed.notify_waiters();
    let conn::Conn {
        reader,
        writer,
        guard,
        ..
    } = c;
    let end = drive(
        inner,
        peer,
        consumer,
        commands,
        &mut session,
        walk,
        reader,
        writer,
    )
    .await;
    peer.view.send_modify(|v| add_sent_bytes(v, &mut session));
    if matches!(end, SessionEnd::Shutdown) {
        // Let the Bye reach the peer before the QUIC connection closes.
        guard.linger(LINGER).await;
    }
    end
}

/// The peer is a primary too and both wrote since the fork: our facts in
/// return. Of the two connections between a pair, the one dialed by the
/// node with the smaller name decides, so one decision is taken however
/// the two race; the decision travels in our answer.
async fn split_brain(
    inner: &Inner,
    c: &mut conn::Conn,
    peer: &str,
    theirs: wire::SplitBrainFacts,
) -> SessionEnd {
    // A decision to discard rests on these: the peer must be the one
    // configured, and its fork a point of our own history.
    if c.peer_name != peer {
        return SessionEnd::Refused(
            format!(
                "split-brain facts from {:?}, not the configured {peer:?}",
                c.peer_name
            ),
            DiskState::Unknown,
            RefusalReason::IdentityMismatch,
        );
    }
    let written = inner.store.journal().written_lsn();
    if theirs.fork_lsn == 0 || theirs.fork_lsn > written + 1 {
        return SessionEnd::Failed(format!(
            "protocol: split-brain fork at LSN {} is outside this node's history (1..={})",
            theirs.fork_lsn,
            written + 1
        ));
    }
    let mut ours = inner.split_brain_facts(theirs.fork_lsn).await;
    let me = inner.cfg.node_id.as_str();
    let victim = if me < peer {
        split_brain_victim(inner.cfg.split_brain_policy, &ours, me, &theirs, peer)
            .map(str::to_owned)
    } else {
        None
    };
    ours.victim = victim.clone().unwrap_or_default();
    let _ = c.writer.send(&Message::SplitBrain(ours.clone())).await;
    c.guard.linger(LINGER).await;
    let count = |n: u64| {
        if n == u64::MAX {
            "an unknown number of".to_string()
        } else {
            n.to_string()
        }
    };
    let mut why = format!(
        "split brain with primary {peer}: both wrote after the fork at LSN {}; {peer} changed {} regions since, this node {} (policy {})",
        theirs.fork_lsn,
        count(theirs.changed_regions),
        count(ours.changed_regions),
        inner.cfg.split_brain_policy
    );
    match victim.as_deref() {
        Some(v) if v == me => {
            why += "; the policy discards THIS node's changes";
            inner.victim.send_replace(Some(why.clone()));
        }
        Some(v) => why += &format!("; the policy discards {v}'s changes"),
        None => {}
    }
    SessionEnd::Refused(why, DiskState::SplitBrain, RefusalReason::SplitBrain)
}

/// Starts a resync of the peer: its consumer streams from where the resync
/// starts, and its bitmap (every region when `full`) is walked.
#[allow(clippy::too_many_arguments)]
async fn start_resync(
    inner: &Arc<Inner>,
    peer: &Peer,
    consumer: &mut Consumer,
    full: bool,
    compare_full: bool,
    peer_next: Lsn,
    rollback_from: Option<Lsn>,
    scfg: SessionConfig,
    now: Instant,
) -> Result<(PrimarySession, Option<Walk>), String> {
    let journal = inner.store.journal();
    let name = &peer.cfg.name;
    if full {
        // Compared unless the peer holds no data at all.
        let all = DirtyBitmap::full(inner.store.volume().size_bytes(), journal.region_bytes());
        journal
            .mark_consumer_regions(name, all, compare_full)
            .await
            .map_err(|e| format!("marking every region for {name}: {e}"))?;
    }
    let start = match journal.begin_resync(name, peer_next).await {
        Ok(s) => s,
        Err(e) => {
            // The journal no longer holds where the peer stands: it is owed
            // everything, compared.
            tracing::warn!(peer = %name, error = %e, "resync cannot resume from the journal; comparing every region");
            let all = DirtyBitmap::full(inner.store.volume().size_bytes(), journal.region_bytes());
            journal
                .mark_consumer_regions(name, all, true)
                .await
                .map_err(|e| format!("marking every region for {name}: {e}"))?;
            let written = journal.written_lsn();
            journal
                .begin_resync(name, written + 1)
                .await
                .map_err(|e| format!("starting a resync of {name}: {e}"))?
        }
    };
    consumer
        .seek(start.from_lsn)
        .map_err(|e| format!("consumer of {name}: {e}"))?;
    let compare = match inner.cfg.resync_compare {
        ResyncCompare::Auto => start.compare,
        ResyncCompare::Always => true,
        ResyncCompare::Never => false,
    };
    let mut session = PrimarySession::new(scfg, start.from_lsn - 1, now);
    let spec = JobSpec {
        kind: JobKind::Resync { compare },
        full,
        regions: start.bitmap.count(),
        rollback_from,
        lineage: journal
            .lineage()
            .into_iter()
            .map(conn::to_wire_generation)
            .collect(),
    };
    session.start_job(spec, now)?;
    tracing::info!(
        peer = %name,
        from_lsn = start.from_lsn,
        regions = start.bitmap.count(),
        compare,
        rollback_from,
        "resync started"
    );
    Ok((
        session,
        Some(Walk {
            bitmap: start.bitmap,
            next: 0,
        }),
    ))
}

type RegionRead = (Origin, Result<store::RegionSnapshot, store::StoreError>);
type WriteResult = (MsgWriter, Result<(), TransportError>);

/// The session's I/O loop.
#[allow(clippy::too_many_arguments)]
async fn drive(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    consumer: &mut Consumer,
    commands: &mut mpsc::Receiver<Command>,
    session: &mut PrimarySession,
    mut walk: Option<Walk>,
    mut reader: MsgReader,
    writer: MsgWriter,
) -> SessionEnd {
    let cfg = &peer.cfg;
    let store = inner.store.clone();
    let journal = store.journal();
    let mut draining = inner.draining.subscribe();
    let mut drain_until: Option<(Instant, Lsn)> = None;
    let mut flush_wanted = peer.flush_wanted.subscribe();
    let mut writer = Some(writer);
    let mut writing: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = WriteResult> + Send>>,
    > = None;
    let mut reads: JoinSet<RegionRead> = JoinSet::new();
    let mut to_clear: Vec<u64> = Vec::new();
    let mut cleared_at = Instant::now();
    let mut throughput = Throughput::new(THROUGHPUT_WINDOW);
    let mut repair_after_verify = false;
    let mut view_at = Instant::now();
    session.request_flush(*flush_wanted.borrow_and_update());
    loop {
        let now = Instant::now();
        // Events the session produced.
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::AckConsumer(durable) => {
                    journal.ack_consumer(&cfg.name, durable);
                    on_progress(inner, peer, session, &mut throughput, now);
                }
                Event::RegionsSynced(regions) => to_clear.extend(regions),
                Event::CompareAll => {
                    let all =
                        DirtyBitmap::full(store.volume().size_bytes(), journal.region_bytes());
                    if let Err(e) = journal.mark_consumer_regions(&cfg.name, all, true).await {
                        return SessionEnd::Failed(format!("marking every region: {e}"));
                    }
                    return SessionEnd::Failed(
                        "the peer could not list its diverged records: every region will be compared".into(),
                    );
                }
                Event::JobDone(outcome) => {
                    if let Err(e) = clear(inner, peer, &mut to_clear).await {
                        return SessionEnd::Failed(e);
                    }
                    walk = None;
                    match outcome {
                        JobOutcome::Resynced {
                            id,
                            full,
                            compare,
                            regions,
                            bytes_sent,
                            elapsed,
                        } => {
                            tracing::info!(peer = %cfg.name, regions, bytes_sent, seconds = elapsed.as_secs_f64(), "resync done: the peer is up to date");
                            let (acked, written) = (session.acked_lsn(), journal.written_lsn());
                            peer.view.send_modify(|v| {
                                v.disk = DiskState::UpToDate;
                                // Degraded while it resynced: sync again
                                // once it holds every record written.
                                if cfg.mode == PeerMode::Sync {
                                    v.acked_lsn = v.acked_lsn.max(acked);
                                    v.gate = on_sync_ack(v.gate, v.acked_lsn, written);
                                }
                                v.job = None;
                                v.last_resync = Some(ResyncReport {
                                    job: id,
                                    full,
                                    compare,
                                    regions,
                                    bytes_sent,
                                    seconds: elapsed.as_secs_f64(),
                                });
                            });
                        }
                        JobOutcome::Verified { mismatches } => {
                            let n = mismatches.len() as u64;
                            tracing::info!(peer = %cfg.name, mismatches = n, "verify done");
                            let mut marked = DirtyBitmap::new(
                                store.volume().size_bytes(),
                                journal.region_bytes(),
                            );
                            for &(o, l) in &mismatches {
                                marked.mark(o, l);
                            }
                            if n > 0 {
                                if let Err(e) = journal
                                    .mark_consumer_regions(&cfg.name, marked, false)
                                    .await
                                {
                                    return SessionEnd::Failed(format!(
                                        "marking mismatched regions: {e}"
                                    ));
                                }
                            }
                            let repaired = n > 0 && repair_after_verify;
                            peer.view.send_modify(|v| {
                                v.job = None;
                                v.last_verify = Some(VerifyReport {
                                    job: v.last_verify.as_ref().map_or(0, |r| r.job) + 1,
                                    regions: store
                                        .volume()
                                        .size_bytes()
                                        .div_ceil(journal.region_bytes()),
                                    mismatches: n,
                                    ranges: mismatches
                                        .iter()
                                        .take(VERIFY_RANGES_MAX)
                                        .copied()
                                        .collect(),
                                    repaired,
                                });
                                if n > 0 {
                                    v.disk = DiskState::Inconsistent;
                                }
                            });
                            if repaired {
                                match begin_job(inner, peer, session, consumer, false, now).await {
                                    Ok(w) => walk = w,
                                    Err(e) => return SessionEnd::Failed(e),
                                }
                            }
                            repair_after_verify = false;
                        }
                    }
                    inner.changed.notify_waiters();
                }
            }
        }
        if to_clear.len() >= CLEAR_BATCH_REGIONS
            || (!to_clear.is_empty() && cleared_at.elapsed() >= CLEAR_INTERVAL)
        {
            if let Err(e) = clear(inner, peer, &mut to_clear).await {
                return SessionEnd::Failed(e);
            }
            cleared_at = Instant::now();
        }
        if view_at.elapsed() >= Duration::from_millis(200) {
            publish_job(peer, session, now);
            view_at = now;
        }
        // Start region reads the job has room for: its own first (regions
        // read again, ranges the peer asked for), then the walk.
        let budget = session.wants_regions(now).saturating_sub(reads.len());
        for _ in 0..budget.min(REGION_READS_MAX.saturating_sub(reads.len())) {
            let (origin, offset, len, digest) = if let Some(r) = session.next_read() {
                (r.origin, r.offset, r.len, r.digest)
            } else {
                let Some(w) = walk.as_mut() else { break };
                let Some(region) = next_walked(w, session) else {
                    walk = None;
                    if reads.is_empty() {
                        session.walk_done(now);
                    }
                    break;
                };
                let (o, l) = w.bitmap.region_range(region, store.volume().size_bytes());
                (Origin::Walk(region), o, l, session.walk_digests())
            };
            let store = store.clone();
            reads.spawn(async move { (origin, store.region_snapshot(offset, len, digest).await) });
        }
        if walk.is_none() && reads.is_empty() && session.job_kind().is_some() {
            session.walk_done(now);
        }
        // Start the next write.
        if writing.is_none() {
            if let Some(msg) = session.poll_transmit(now) {
                let mut w = writer.take().expect("the writer is back");
                writing = Some(Box::pin(async move {
                    let r = w.send(&msg).await;
                    (w, r)
                }));
            }
        }
        // Shutdown: ship what is written, for a bounded time, then Bye.
        if drain_until.is_none() && *draining.borrow() {
            drain_until = Some((now + inner.cfg.drain_timeout, journal.written_lsn()));
        }
        if let Some((deadline, target)) = drain_until {
            let acked = session.acked_lsn();
            if writing.is_none() && (acked >= target || now >= deadline) {
                if acked < target {
                    tracing::warn!(peer = %cfg.name, acked, target, "drain timed out");
                }
                let mut w = writer.take().expect("no write in flight");
                bye(&mut w, ByeCode::Shutdown, "primary shutting down").await;
                return SessionEnd::Shutdown;
            }
        }
        let wants_records = session.wants_records() && writing.is_none();
        let timeout = tokio::time::Instant::from_std(if drain_until.is_some() {
            session.poll_timeout().min(now + Duration::from_millis(20))
        } else {
            session.poll_timeout()
        });
        tokio::select! {
            biased;
            msg = reader.recv() => match msg {
                Ok(m) => {
                    if let Err(end) = session.handle(m, Instant::now()) {
                        return finish(end);
                    }
                }
                Err(e) => return SessionEnd::Failed(format!("receiving: {}", describe(&e))),
            },
            written = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                let (w, r) = written;
                writer = Some(w);
                if let Err(e) = r {
                    return SessionEnd::Failed(format!("sending: {}", describe(&e)));
                }
            }
            read = reads.join_next(), if !reads.is_empty() => {
                let Some(read) = read else { continue };
                let (origin, snap) = match read {
                    Ok(r) => r,
                    Err(e) => return SessionEnd::Failed(format!("region read task: {e}")),
                };
                let snap = match snap {
                    Ok(s) => s,
                    Err(e) => return SessionEnd::Failed(format!("reading a region for the resync: {e}")),
                };
                session.push_region(to_snapshot(snap), origin, Instant::now());
            }
            batch = consumer.read_batch(cfg.max_batch_bytes), if wants_records => {
                let recs = match batch {
                    Ok(ReadBatch::Records(recs)) => recs,
                    Ok(ReadBatch::Folded { bitmap, resume_lsn }) => {
                        let n = bitmap.count();
                        let why = format!(
                            "fell behind past the journal cap: {n} dirty regions, stream would resume at LSN {resume_lsn}"
                        );
                        let mut w = match writing.take() {
                            Some(f) => f.await.0,
                            None => writer.take().expect("no write in flight"),
                        };
                        bye(&mut w, ByeCode::NeedsResync, &why).await;
                        return SessionEnd::Failed(why);
                    }
                    Err(e) => return SessionEnd::Failed(format!("reading the journal: {e}")),
                };
                let records: Vec<_> = recs.iter().map(conn::to_wire).collect();
                if let Err(end) = session.push_records(records, Instant::now()) {
                    return finish(end);
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Resync { full, reply }) => {
                    if session.job_kind().is_some() {
                        let _ = reply.send(Err("a resync or verify is already running on this peer".into()));
                        continue;
                    }
                    match begin_job(inner, peer, session, consumer, full, Instant::now()).await {
                        Ok(w) => {
                            walk = w;
                            let _ = reply.send(Ok(format!("{}resync started", if full { "full " } else { "" })));
                            peer.view.send_modify(|v| v.disk = DiskState::Syncing);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.clone()));
                            return SessionEnd::Failed(e);
                        }
                    }
                }
                Some(Command::Verify { repair, reply }) => {
                    if session.job_kind().is_some() {
                        let _ = reply.send(Err("a resync or verify is already running on this peer".into()));
                        continue;
                    }
                    let size = store.volume().size_bytes();
                    let all = DirtyBitmap::full(size, journal.region_bytes());
                    let spec = JobSpec {
                        kind: JobKind::Verify,
                        full: true,
                        regions: all.count(),
                        rollback_from: None,
                        lineage: Vec::new(),
                    };
                    match session.start_job(spec, Instant::now()) {
                        Ok(id) => {
                            walk = Some(Walk { bitmap: all, next: 0 });
                            repair_after_verify = repair;
                            let _ = reply.send(Ok(format!("verify {id} started")));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                None => return SessionEnd::Shutdown,
            },
            changed = flush_wanted.changed() => {
                if changed.is_ok() {
                    session.request_flush(*flush_wanted.borrow_and_update());
                }
            }
            _ = draining.changed(), if drain_until.is_none() => {}
            _ = tokio::time::sleep_until(timeout) => {
                if let Err(end) = session.handle_timeout(Instant::now()) {
                    return finish(end);
                }
            }
        }
    }
}

/// A resync or repair on a running session: from the next LSN sent.
async fn begin_job(
    inner: &Arc<Inner>,
    peer: &Peer,
    session: &mut PrimarySession,
    consumer: &mut Consumer,
    full: bool,
    now: Instant,
) -> Result<Option<Walk>, String> {
    let journal = inner.store.journal();
    let name = &peer.cfg.name;
    if full {
        let all = DirtyBitmap::full(inner.store.volume().size_bytes(), journal.region_bytes());
        journal
            .mark_consumer_regions(name, all, true)
            .await
            .map_err(|e| format!("marking every region for {name}: {e}"))?;
    }
    let next = session.sent_lsn() + 1;
    let start = journal
        .begin_resync(name, next)
        .await
        .map_err(|e| format!("starting a resync of {name}: {e}"))?;
    if start.from_lsn != next {
        // It fell behind meanwhile: the next session resyncs it.
        return Err(format!(
            "{name} fell behind while a resync was being started"
        ));
    }
    consumer
        .seek(next)
        .map_err(|e| format!("consumer of {name}: {e}"))?;
    let compare = match inner.cfg.resync_compare {
        ResyncCompare::Auto => start.compare || full,
        ResyncCompare::Always => true,
        ResyncCompare::Never => false,
    };
    session.start_job(
        JobSpec {
            kind: JobKind::Resync { compare },
            full,
            regions: start.bitmap.count(),
            rollback_from: None,
            lineage: journal
                .lineage()
                .into_iter()
                .map(conn::to_wire_generation)
                .collect(),
        },
        now,
    )?;
    tracing::info!(peer = %name, regions = start.bitmap.count(), compare, "resync started on the running session");
    Ok(Some(Walk {
        bitmap: start.bitmap,
        next: 0,
    }))
}

fn next_walked(w: &mut Walk, session: &mut PrimarySession) -> Option<u64> {
    loop {
        let r = w.bitmap.next_dirty(w.next)?;
        w.next = r + 1;
        if !session.skip_walked(r) {
            return Some(r);
        }
    }
}

fn to_snapshot(s: store::RegionSnapshot) -> Snapshot {
    Snapshot {
        lsn: s.lsn,
        offset: s.offset,
        len: s.len,
        content: match s.content {
            store::RegionContent::Zero => Content::Zero,
            store::RegionContent::Data(d) => Content::Data(d),
            store::RegionContent::Digest(d) => Content::Digest(d),
        },
    }
}

async fn clear(inner: &Inner, peer: &Peer, regions: &mut Vec<u64>) -> Result<(), String> {
    if regions.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(regions);
    inner
        .store
        .journal()
        .clear_consumer_regions(&peer.cfg.name, batch)
        .await
        .map_err(|e| format!("clearing resynced regions: {e}"))
}

/// Adds what the session sent since the last call to the peer's totals
/// (callers fold it into a view update they make anyway).
fn add_sent_bytes(v: &mut PeerView, session: &mut PrimarySession) {
    let (records, regions) = session.take_sent_bytes();
    v.shipped_bytes_total += records;
    v.resync_bytes_total += regions;
}

fn publish_job(peer: &Peer, session: &mut PrimarySession, now: Instant) {
    let job = session.progress(now).map(|p| JobStatus {
        kind: match p.kind {
            JobKind::Resync { .. } => JobKindStatus::Resync,
            JobKind::Verify => JobKindStatus::Verify,
        },
        id: p.id,
        full: p.full,
        stale_reads: p.stale_reads,
        compare: matches!(p.kind, JobKind::Resync { compare: true } | JobKind::Verify),
        regions_total: p.regions_total,
        regions_done: p.regions_done,
        bytes_sent: p.bytes_sent,
        mismatches: p.mismatches,
        rate_bytes_per_sec: p.rate_bytes_per_sec,
        rate_limit_bytes_per_sec: p.rate_limit_bytes_per_sec,
        eta_seconds: p.eta_seconds,
    });
    peer.view.send_modify(|v| {
        v.job = job;
        add_sent_bytes(v, session);
    });
}

fn on_progress(
    inner: &Inner,
    peer: &Peer,
    session: &mut PrimarySession,
    throughput: &mut Throughput,
    now: Instant,
) {
    let written = inner.store.journal().written_lsn();
    let (acked, durable) = (session.acked_lsn(), session.durable_lsn());
    let acked_bytes = session.acked_bytes_total();
    let in_sync_possible = session.job_kind().is_none();
    peer.view.send_modify(|v| {
        add_sent_bytes(v, session);
        v.acked_lsn = v.acked_lsn.max(acked);
        v.durable_lsn = v.durable_lsn.max(durable);
        throughput.record(now, acked_bytes.saturating_sub(v.acked_bytes_total));
        v.acked_bytes_total = acked_bytes;
        v.throughput_bytes_per_sec = throughput.rate(now);
        if peer.cfg.mode == PeerMode::Sync && in_sync_possible {
            let before = v.gate;
            v.gate = on_sync_ack(v.gate, v.acked_lsn, written);
            if before != v.gate {
                tracing::info!(peer = %peer.cfg.name, "sync peer caught up: in sync again");
            }
        }
    });
    inner.changed.notify_waiters();
}

fn finish(end: End) -> SessionEnd {
    match end {
        End::Failed(e) | End::PeerLeft(e) => SessionEnd::Failed(e),
        End::Refused(code, e) => SessionEnd::Refused(e, DiskState::Unknown, code.into()),
    }
}
