//! The primary: local writes through the `Store`, one task per peer
//! (`crate::peer`) that ships journal records and resync operations in
//! order, and the sync gate that holds writes and flushes for sync peers.
//!
//! Acks: a secondary answers each batch with `Ack{durable_lsn, journaled_lsn}`
//! once the records are in its journal (before it applies them), so
//! `max(durable, journaled)` releases sync writes, while only `durable`
//! releases the primary's journal (consumer ack) and answers flushes.
//!
//! History: a primary whose journal has none starts the first generation
//! (flagged when the volume already held data); one whose last run stopped
//! uncleanly starts a new generation (its journal may have lost a tail that
//! a sync peer holds) and owes every peer a compare of the ranges the
//! activity log says may differ.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use journal::{DirtyBitmap, Lsn};
use store::{Change, RecoveryReport, Store};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{PeerMode, PrimaryConfig};
use crate::conn;
use crate::error::EngineError;
use crate::lock;
use crate::peer::{self, Command, Fence, Inner, Peer};
use crate::proto::gate::{decide, Decision, Need, SyncState};
use crate::proto::lag::LagTracker;
use crate::proto::verdict::{primary_meeting, Meeting};
use crate::status::{volume_status, DiskState, PeerStatus, SyncGate, VolumeRole, VolumeStatus};

/// Unacknowledged writes tracked for lag; beyond it lag is estimated.
const MAX_LAG_TRACKED_RECORDS: usize = 1 << 18;

/// The primary of one volume. See the crate docs for the guarantees.
pub struct Primary {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How a primary begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Continues the volume's history (a new generation after an unclean
    /// stop, the first one on a new journal).
    Continue,
    /// An operator promoted this node: a new generation begins (a forced
    /// promotion of an inconsistent copy also marks it consistent).
    Promote,
    /// After an unclean stop: writes are refused until every peer
    /// confirmed that it holds no newer history (or an operator forces
    /// it); then the new generation begins.
    Fenced,
}

impl Primary {
    /// Starts (or continues) the volume's history, registers a journal
    /// consumer per peer (retention starts now) and starts one task per
    /// peer. `recovery` is what opening the store found.
    pub async fn start(
        store: Arc<Store>,
        cfg: PrimaryConfig,
        recovery: &RecoveryReport,
        mode: StartMode,
    ) -> Result<Arc<Primary>, EngineError> {
        cfg.validate()?;
        let journal = store.journal();
        let mut consumers = Vec::new();
        for p in &cfg.peers {
            let mut consumer = journal
                .register_consumer(&p.name, journal.oldest_lsn())
                .await?;
            consumer.set_read_written(p.mode == PeerMode::Sync);
            consumer.set_sync_delay(p.max_ship_delay);
            consumers.push(consumer);
        }
        let mut fence = None;
        if mode == StartMode::Promote {
            // A forced promotion of an inconsistent copy: what it holds is
            // no state of the history, so the generation says so and every
            // peer of an older history is compared in full.
            let unknown_before = journal.is_inconsistent();
            if unknown_before {
                journal.set_inconsistent(false).await?;
                tracing::error!("FORCED promotion of an INCONSISTENT copy: it is now the volume's history, whatever it holds; every peer is compared in full");
            }
            peer::new_generation(&store, unknown_before, "promoted").await?;
        } else if journal.lineage().is_empty() {
            let unknown_before = store.holds_data().await?;
            peer::new_generation(&store, unknown_before, "first of this volume's history").await?;
        } else if recovery.activity.unclean && mode == StartMode::Fenced {
            tracing::warn!(
                "unclean stop: writes are refused until every peer confirms it holds no newer history (or `driftless promote --force`)"
            );
            fence = Some(Fence {
                reason: "fenced after an unclean stop until every peer confirms it holds no newer history (`driftless promote --force` when alone)".into(),
                confirmed: Default::default(),
                newer: Default::default(),
            });
        } else if recovery.activity.unclean {
            // The journal may have lost a tail a sync peer holds, and the
            // volume may hold writes whose records were lost: a new history
            // from here, and the hot ranges compared with every peer.
            peer::new_generation(&store, false, "unclean restart").await?;
        }
        if !recovery.activity.pinned.is_empty() {
            let mut hot = DirtyBitmap::new(store.volume().size_bytes(), journal.region_bytes());
            for &(o, l) in &recovery.activity.pinned {
                hot.mark(o, l);
            }
            for p in &cfg.peers {
                journal
                    .mark_consumer_regions(&p.name, hot.clone(), true)
                    .await?;
            }
            tracing::warn!(
                ranges = recovery.activity.pinned.len(),
                regions = hot.count(),
                "ranges written just before the unclean stop are compared with every peer"
            );
        }
        store.settle_activity().await?;

        let now = Instant::now();
        let mut peers = Vec::new();
        let mut receivers = Vec::new();
        let mut oldest_acked = Lsn::MAX;
        for (p, c) in cfg.peers.iter().zip(&consumers) {
            let acked = c.next_lsn()? - 1;
            oldest_acked = oldest_acked.min(acked);
            let (peer, rx) = Peer::new(p.clone(), acked, now);
            peers.push(Arc::new(peer));
            receivers.push(rx);
        }
        let lag = seed_lag(&store, oldest_acked).await?;
        let inner = Arc::new(Inner {
            store,
            peers,
            lag: Mutex::new(lag),
            changed: Notify::new(),
            draining: watch::Sender::new(false),
            closed: AtomicBool::new(false),
            fence: watch::Sender::new(fence),
            unfencing: tokio::sync::Mutex::new(()),
            victim: watch::Sender::new(None),
            cfg,
        });
        if inner.peers.is_empty() {
            // Alone: no node can hold a newer history of this volume.
            inner.unfence("no peers are configured").await?;
        }
        let tasks = consumers
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(i, (c, rx))| tokio::spawn(peer::run(inner.clone(), i, c, rx)))
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
        if self.inner.fence.borrow().is_some() {
            return Err(EngineError::Fenced(
                self.inner.fence_text().unwrap_or_default(),
            ));
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

    /// Why writes are refused, while they are (see [`StartMode::Fenced`]).
    pub fn fenced(&self) -> Option<String> {
        self.inner.fence_text()
    }

    /// What to do about another primary whose Hello reached this node.
    pub fn meet(&self, remote: &wire::Hello) -> Meeting {
        let j = self.inner.store.journal();
        let lineage: Vec<wire::LineageEntry> = j
            .lineage()
            .into_iter()
            .map(conn::to_wire_generation)
            .collect();
        primary_meeting(&lineage, j.written_lsn(), self.fenced().is_some(), remote)
    }

    /// This primary's side of a split brain at `fork_lsn` (changed
    /// regions `u64::MAX` when the journal no longer holds them all).
    pub async fn split_brain_facts(&self, fork_lsn: Lsn) -> wire::SplitBrainFacts {
        self.inner.split_brain_facts(fork_lsn).await
    }

    /// Fires when a split-brain policy picked this node to give its changes
    /// up (why); the node then steps down.
    pub fn victim_notice(&self) -> watch::Receiver<Option<String>> {
        self.inner.victim.subscribe()
    }

    /// An operator lifts the fence without every peer's confirmation.
    pub async fn unfence_forced(&self) -> Result<(), EngineError> {
        self.inner
            .unfence("FORCED by an operator (promote --force)")
            .await
    }

    /// Waits until every connected peer journaled everything written so far
    /// (a sync peer made it durable at the last flush; an async one syncs
    /// its journal within milliseconds), or `timeout` passes; returns the
    /// peers behind (connected or not) with their acknowledged LSN.
    pub async fn wait_peers(&self, timeout: Duration) -> Vec<(String, Lsn)> {
        let deadline = Instant::now() + timeout;
        let written = self.inner.store.journal().written_lsn();
        loop {
            let mut waiting = false;
            let behind: Vec<(String, Lsn)> = self
                .inner
                .peers
                .iter()
                .filter_map(|p| {
                    let v = p.view.borrow();
                    (v.acked_lsn < written).then(|| {
                        waiting |= v.connection == crate::ConnectionState::Connected;
                        (p.cfg.name.clone(), v.acked_lsn)
                    })
                })
                .collect();
            if !waiting || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks `peer` for a resync of what it is owed (`full`: every region,
    /// compared, and an unrelated history overwritten). Returns what was done.
    pub async fn resync(&self, peer: &str, full: bool) -> Result<String, EngineError> {
        self.command(peer, |reply| Command::Resync { full, reply })
            .await
    }

    /// Starts an online verify of `peer` (`repair`: resync what differs).
    pub async fn verify(&self, peer: &str, repair: bool) -> Result<String, EngineError> {
        self.command(peer, |reply| Command::Verify { repair, reply })
            .await
    }

    async fn command(
        &self,
        peer: &str,
        make: impl FnOnce(oneshot::Sender<Result<String, String>>) -> Command,
    ) -> Result<String, EngineError> {
        let p = self
            .inner
            .peers
            .iter()
            .find(|p| p.cfg.name == peer)
            .ok_or_else(|| EngineError::UnknownPeer(peer.to_owned()))?;
        let (tx, rx) = oneshot::channel();
        p.commands
            .send(make(tx))
            .await
            .map_err(|_| EngineError::Shutdown)?;
        rx.await
            .map_err(|_| EngineError::Shutdown)?
            .map_err(EngineError::Refused)
    }

    /// Each peer's connection and data state, position, lag and job. Reads
    /// only.
    pub fn status(&self) -> VolumeStatus {
        let inner = &self.inner;
        let j = inner.store.journal();
        let written = j.written_lsn();
        let now = Instant::now();
        let region_bytes = j.region_bytes();
        let lag = lock(&inner.lag);
        let peers = inner
            .peers
            .iter()
            .map(|p| {
                let v = p.view.borrow().clone();
                let dirty = j.consumer_dirty(&p.cfg.name).ok();
                let owed = dirty.map_or(0, |d| d.regions);
                let needs_resync = dirty.is_some_and(|d| d.needs_resync);
                let (mut lag_bytes, mut lag_seconds) = lag.lag(v.acked_lsn, written, now);
                lag_bytes += owed * region_bytes;
                if let Some(since) = dirty.and_then(|d| d.dirty_since_ns) {
                    lag_seconds = lag_seconds.max(age_seconds(since));
                }
                // A peer that fell behind while away is a good prefix of an
                // older point, and owed regions: outdated, until a resync.
                let disk = match v.disk {
                    DiskState::UpToDate if needs_resync => DiskState::Outdated,
                    other => other,
                };
                let last_error = match (&v.last_error, needs_resync) {
                    (None, true) => Some(format!(
                        "fell behind past the journal cap while away: {owed} dirty regions, resynced when it connects"
                    )),
                    (e, _) => e.clone(),
                };
                PeerStatus {
                    name: p.cfg.name.clone(),
                    mode: p.cfg.mode,
                    transport: p.cfg.transport,
                    address: p.cfg.address.to_string(),
                    connection: v.connection,
                    disk,
                    sync_gate: (p.cfg.mode == PeerMode::Sync).then_some(match v.gate {
                        SyncState::InSync => SyncGate::InSync,
                        SyncState::Lost { .. } => SyncGate::Waiting,
                        SyncState::Degraded => SyncGate::Degraded,
                    }),
                    job: v.job.clone(),
                    last_resync: v.last_resync.clone(),
                    last_verify: v.last_verify.clone(),
                    acked_lsn: v.acked_lsn,
                    durable_lsn: v.durable_lsn,
                    lag_bytes,
                    lag_records: written.saturating_sub(v.acked_lsn),
                    lag_seconds,
                    throughput_bytes_per_sec: v.throughput_bytes_per_sec,
                    last_error,
                    dirty_regions: owed,
                    rpo_target_seconds: p.cfg.rpo_target.map(|t| t.as_secs_f64()),
                    rpo_breached: p
                        .cfg
                        .rpo_target
                        .is_some_and(|t| lag_seconds > t.as_secs_f64()),
                    shipped_bytes_total: v.shipped_bytes_total,
                    resync_bytes_total: v.resync_bytes_total,
                    reconnects: v.sessions.saturating_sub(1),
                    refusals: v.refusals.clone(),
                }
            })
            .collect();
        drop(lag);
        let mut st = volume_status(&inner.store, VolumeRole::Primary, DiskState::UpToDate);
        st.sync_peer_loss_policy = Some(inner.cfg.on_sync_peer_loss.to_string());
        st.fenced = inner.fence_text();
        st.peers = peers;
        st
    }

    /// Stops accepting writes, lets sessions ship what they can for
    /// `drain_timeout`, says Bye and closes.
    pub async fn shutdown(&self) {
        self.inner.draining.send_replace(true);
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

impl Primary {
    /// After [`Primary::shutdown`] of a primary that steps down: its peers'
    /// journal consumers are dropped (the next primary decides what each
    /// peer needs, by history), so they no longer hold this journal.
    pub async fn forget_peers(&self) -> Result<(), EngineError> {
        assert!(
            self.inner.closed.load(Ordering::SeqCst),
            "forget_peers after shutdown"
        );
        let j = self.inner.store.journal();
        for p in &self.inner.peers {
            j.unregister_consumer(&p.cfg.name).await?;
        }
        Ok(())
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
    }
}

fn age_seconds(wall_ns: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now.saturating_sub(wall_ns) as f64 / 1e9
}

/// The lag of peers behind at start: every record after the oldest peer's
/// position, with its size and age, from the journal.
async fn seed_lag(store: &Store, oldest_acked: Lsn) -> Result<LagTracker, EngineError> {
    let mut lag = LagTracker::new(MAX_LAG_TRACKED_RECORDS);
    let journal = store.journal();
    if oldest_acked == Lsn::MAX || oldest_acked >= journal.written_lsn() {
        return Ok(lag);
    }
    let Some(records) = journal.records_since(oldest_acked + 1).await? else {
        return Ok(lag);
    };
    let now = Instant::now();
    for r in records {
        let age = Duration::from_secs_f64(age_seconds(r.timestamp_ns));
        lag.insert(r.lsn, r.bytes, now.checked_sub(age).unwrap_or(now));
    }
    Ok(lag)
}

impl Inner {
    fn note_written(&self, lsn: Lsn, bytes: u64, at: Instant) {
        let min_acked = self
            .peers
            .iter()
            .map(|p| p.view.borrow().acked_lsn)
            .min()
            .unwrap_or(Lsn::MAX);
        let mut lag = lock(&self.lag);
        if lsn > min_acked {
            lag.insert(lsn, bytes, at);
        }
        lag.prune(min_acked);
    }

    /// Waits until every sync peer holds `lsn` as `need` requires. A lost
    /// peer's task degrades it when the suspend timeout passes; the write
    /// path only reads its state.
    async fn wait_sync(&self, lsn: Lsn, need: Need) -> Result<(), EngineError> {
        let policy = self.cfg.on_sync_peer_loss;
        if need == Need::Durable {
            for p in self.peers.iter().filter(|p| p.cfg.mode == PeerMode::Sync) {
                p.flush_wanted.send_if_modified(|w| {
                    let newer = *w < lsn;
                    *w = (*w).max(lsn);
                    newer
                });
            }
        }
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
                let v = p.view.borrow();
                match decide(v.gate, v.acked_lsn, v.durable_lsn, lsn, need, policy, now) {
                    // Past the policy: the peer's task degrades it.
                    Decision::Done | Decision::Degrade => {}
                    Decision::Wait { deadline: d } => {
                        waiting = true;
                        if let Some(d) = d {
                            deadline = Some(deadline.map_or(d, |x: Instant| x.min(d)));
                        }
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
