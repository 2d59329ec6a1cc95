//! One volume on a node, with the role it holds now: primary (a
//! [`Primary`] takes the NBD export's writes) or secondary (the listener
//! serves a primary; NBD writes are answered EPERM, reads still served).
//! The slot owns the role: promote, demote, stepping down for a primary of
//! a newer history, and spotting a split brain all go through it, one at a
//! time, and each change is persisted (`role.rs`) before it is announced.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nbd_shim::TargetError;
use replication::proto::verdict::Meeting;
use replication::{
    Admission, Arbiter, Hello, Primary, Refusal, RefuseCode, Secondary, SplitBrainFacts,
    SplitBrainStatus, StartMode, VolumeRole, VolumeStatus,
};
use store::{Change, RecoveryReport, Store};
use tokio::sync::RwLock;

use crate::config::VolumeSection;
use crate::error::NodeError;
use crate::role;
use crate::targets::{engine_error, store_error, DataPath};

/// A demote waits at most this long for the last FLUSH to complete here
/// and on the sync peers, and as long again for every peer to catch up.
pub const DEMOTE_WAIT: Duration = Duration::from_secs(30);

enum Engine {
    Primary(Arc<Primary>),
    Secondary,
}

/// Starts a primary: the store, what recovery found, how, and when this
/// node became primary (ns since the epoch).
pub type PrimaryStarter = Box<
    dyn Fn(
            Arc<Store>,
            RecoveryReport,
            StartMode,
            u64,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Arc<Primary>, NodeError>> + Send>,
        > + Send
        + Sync,
>;

pub struct Slot {
    pub name: String,
    /// This node's name (a split-brain policy names the node it discards).
    node_name: String,
    section: VolumeSection,
    store: Arc<Store>,
    /// What opening the store found; the first primary start acts on it.
    recovery: Mutex<Option<RecoveryReport>>,
    engine: RwLock<Engine>,
    /// Serves primaries while this node is a secondary (absent without
    /// listen addresses: such a node cannot be demoted).
    listener: std::sync::OnceLock<Arc<Secondary>>,
    start_primary: PrimaryStarter,
    split_brain: Mutex<Option<SplitBrainStatus>>,
    last_status: Mutex<Option<VolumeStatus>>,
    /// The persisted role, as last written.
    role_record: Mutex<role::RoleRecord>,
    /// One role change at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Slot {
    /// A slot in the role `role` (the persisted one, or the configured one
    /// on first start; `role.rs`). A primary starts fenced when the last
    /// run stopped uncleanly (see [`StartMode::Fenced`]).
    pub async fn start(
        node_name: &str,
        section: VolumeSection,
        store: Arc<Store>,
        recovery: RecoveryReport,
        start_primary: PrimaryStarter,
    ) -> Result<Arc<Slot>, NodeError> {
        let dir = section.journal_dir();
        let record = match role::load(&dir)? {
            Some(r) => {
                if r.role != section.role {
                    tracing::warn!(volume = %section.name, configured = %section.role, persisted = %r.role, reason = %r.reason,
                        "starting in the PERSISTED role, not the configured one (the configured role is only where a new volume starts)");
                }
                r
            }
            None => role::store(&dir, section.role, "first start: the configured role")?,
        };
        let role = record.role;
        let slot = Arc::new(Slot {
            name: section.name.clone(),
            node_name: node_name.to_owned(),
            section,
            store,
            recovery: Mutex::new(Some(recovery)),
            engine: RwLock::new(Engine::Secondary),
            listener: std::sync::OnceLock::new(),
            start_primary,
            split_brain: Mutex::new(None),
            last_status: Mutex::new(None),
            role_record: Mutex::new(record),
            changing: tokio::sync::Mutex::new(()),
        });
        if role == VolumeRole::Primary {
            let recovery = slot.take_recovery();
            let mode = if recovery.activity.unclean && !slot.store.journal().lineage().is_empty() {
                StartMode::Fenced
            } else {
                StartMode::Continue
            };
            let since = crate::lock(&slot.role_record).changed_at_ns;
            let p = (slot.start_primary)(slot.store.clone(), recovery, mode, since).await?;
            slot.watch_victim(&p);
            *slot.engine.write().await = Engine::Primary(p);
        }
        Ok(slot)
    }

    /// A split-brain policy may pick this primary to give its changes up
    /// (found by one of its peer sessions): it then steps down as if an
    /// operator ran `resync --discard-local`.
    fn watch_victim(self: &Arc<Self>, p: &Arc<Primary>) {
        let mut notice = p.victim_notice();
        let slot = Arc::downgrade(self);
        tokio::spawn(async move {
            // Ends with the primary (its sender is dropped).
            let Ok(why) = notice.wait_for(|v| v.is_some()).await.map(|v| v.clone()) else {
                return;
            };
            let Some(slot) = slot.upgrade() else { return };
            tracing::error!(volume = %slot.name, reason = ?why, "split-brain policy: this node's changes since the fork are discarded");
            if let Err(e) = slot.discard_local().await {
                tracing::error!(volume = %slot.name, error = %e, "discarding this node's changes failed");
            }
        });
    }

    /// Writes the role record and keeps it for status.
    fn persist_role(&self, role: VolumeRole, why: &str) -> Result<(), String> {
        let r = role::store(&self.section.journal_dir(), role, why).map_err(|e| e.to_string())?;
        *crate::lock(&self.role_record) = r;
        Ok(())
    }

    /// The arbiter the listener asks before serving a primary.
    pub fn arbiter(self: &Arc<Self>) -> Arc<dyn Arbiter> {
        Arc::new(SlotArbiter(Arc::downgrade(self)))
    }

    pub fn set_listener(&self, listener: Arc<Secondary>) {
        assert!(
            self.listener.set(listener).is_ok(),
            "a slot's listener is set once"
        );
    }

    /// What the first primary start acts on: what opening the store found
    /// (later starts find nothing).
    fn take_recovery(&self) -> RecoveryReport {
        crate::lock(&self.recovery).take().unwrap_or_default()
    }

    pub async fn role(&self) -> VolumeRole {
        match &*self.engine.read().await {
            Engine::Primary(_) => VolumeRole::Primary,
            Engine::Secondary => VolumeRole::Secondary,
        }
    }

    /// `None` only before the first status while a role change runs.
    pub fn status(&self) -> Option<VolumeStatus> {
        // Status never waits for a role change: meanwhile it is the last
        // one taken, saying so.
        let mut st = match self.engine.try_read().as_deref() {
            Ok(Engine::Primary(p)) => p.status(),
            Ok(Engine::Secondary) => {
                let l = self
                    .listener
                    .get()
                    .expect("a secondary slot has a listener");
                let mut st = l.status();
                st.discarding_local = l.discarding();
                st
            }
            Err(_) => {
                let mut st = crate::lock(&self.last_status).clone()?;
                st.last_error = Some("a role change is in progress".into());
                return Some(st);
            }
        };
        let mut sb = crate::lock(&self.split_brain);
        // Resolved once the other side gave its changes up and streams.
        if sb.as_ref().is_some_and(|s| {
            st.peer(&s.peer)
                .is_some_and(|p| p.connection == replication::ConnectionState::Connected)
        }) {
            *sb = None;
        }
        if let Some(s) = sb.as_ref() {
            st.disk = replication::DiskState::SplitBrain;
            st.split_brain = Some(s.clone());
        }
        drop(sb);
        st.configured_role = Some(self.section.role);
        st.role_reason = Some(crate::lock(&self.role_record).reason.clone());
        *crate::lock(&self.last_status) = Some(st.clone());
        Some(st)
    }

    /// `driftless promote`: see docs/failover.md for what is refused and
    /// what `force` overrides.
    pub async fn promote(self: &Arc<Self>, force: bool) -> Result<String, String> {
        let _one = self.changing.lock().await;
        let mut engine = self.engine.write().await;
        if let Engine::Primary(p) = &*engine {
            return match (p.fenced(), force) {
                (None, _) => Err(format!("{} is already the primary here", self.name)),
                (Some(why), false) => Err(format!(
                    "{} is primary but fenced: {why}. `promote --force` accepts writes without that confirmation: if another node was promoted meanwhile, the two histories diverge (split brain)",
                    self.name
                )),
                (Some(_), true) => {
                    p.unfence_forced().await.map_err(|e| e.to_string())?;
                    Ok(format!(
                        "{}: fence lifted by force; writes accepted (a new generation began)",
                        self.name
                    ))
                }
            };
        }
        if self.section.nbd.is_none() {
            return Err(format!(
                "{}: no [volume.nbd] in this node's config: a primary needs an export",
                self.name
            ));
        }
        let j = self.store.journal();
        let mut risks = Vec::new();
        if let Some(l) = self.listener.get() {
            if let Some(primary) = l.connected_primary() {
                risks.push(format!("primary {primary} is connected and streaming to this node: demote it first (two primaries diverge: split brain)"));
            }
        }
        if j.is_inconsistent() {
            risks.push("this copy is INCONSISTENT (a resync into it has not finished): it is not a state the primary ever had".to_string());
        } else if j.lineage().is_empty() {
            risks.push("this copy has no history (it was never synced from a primary)".to_string());
        }
        if !risks.is_empty() && !force {
            return Err(format!(
                "promote refused: {}. `promote --force` overrides",
                risks.join("; ")
            ));
        }
        for r in &risks {
            tracing::error!(volume = %self.name, risk = %r, "FORCED promotion");
        }
        if let Some(l) = self.listener.get() {
            // The arbiter refuses primaries from here on (this holds the
            // engine lock it reads), and the running session ends once what
            // it delivered is applied.
            l.end_session().await;
        }
        let recovery = self.take_recovery();
        let since = role::now_ns();
        let p = (self.start_primary)(self.store.clone(), recovery, StartMode::Promote, since)
            .await
            .map_err(|e| e.to_string())?;
        self.persist_role(
            VolumeRole::Primary,
            if force {
                "promoted by force"
            } else {
                "promoted"
            },
        )?;
        self.watch_victim(&p);
        let generation = j.generation();
        *engine = Engine::Primary(p);
        let mut text = format!(
            "{} promoted: primary of generation {generation:#x} from LSN {}; writes accepted",
            self.name,
            j.next_lsn()
        );
        if !risks.is_empty() {
            text += &format!(" (FORCED: {})", risks.join("; "));
        }
        Ok(text)
    }

    /// `driftless demote`: writes refused from now (EPERM), in-flight ones
    /// finished, a last FLUSH here and on the sync peers, every peer given
    /// up to [`DEMOTE_WAIT`] to catch up, then this node is a secondary.
    pub async fn demote(&self, why: &str) -> Result<String, String> {
        let _one = self.changing.lock().await;
        self.step_down(why, true).await
    }

    /// Demote, with the role-change lock held by the caller. Without
    /// `wait_peers` (a newer primary exists: the peers follow it) only the
    /// local journal is flushed.
    async fn step_down(&self, why: &str, wait_peers: bool) -> Result<String, String> {
        if self.listener.get().is_none() {
            return Err(format!(
                "{}: no listen_tcp/listen_quic in this node's config: it could not serve a new primary",
                self.name
            ));
        }
        // Waits for every write holding the read side: in flight ones end,
        // later ones find a secondary.
        let mut engine = self.engine.write().await;
        let Engine::Primary(p) = &*engine else {
            return Err(format!("{} is already a secondary here", self.name));
        };
        let mut text = format!("{} demoted ({why})", self.name);
        let flushed = if wait_peers {
            tokio::time::timeout(DEMOTE_WAIT, p.flush())
                .await
                .map(|r| r.map_err(|e| e.to_string()))
        } else {
            Ok(self.store.flush().await.map_err(|e| e.to_string()))
        };
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => text += &format!("; the last flush failed: {e}"),
            Err(_) => text += &format!("; the last flush did not finish within {DEMOTE_WAIT:?}"),
        }
        let behind = if wait_peers {
            p.wait_peers(DEMOTE_WAIT).await
        } else {
            Vec::new()
        };
        p.shutdown().await;
        if let Err(e) = p.forget_peers().await {
            text += &format!("; dropping the peers' journal consumers failed: {e}");
        }
        *engine = Engine::Secondary;
        self.persist_role(VolumeRole::Secondary, why)?;
        let written = self.store.journal().written_lsn();
        if behind.is_empty() {
            text += &format!("; every peer holds LSN {written}");
        } else {
            let list: Vec<String> = behind.iter().map(|(n, l)| format!("{n} at {l}")).collect();
            text += &format!(
                "; peers behind LSN {written}: {} (they catch up from the next primary)",
                list.join(", ")
            );
        }
        text += "; NBD writes are answered EPERM; this node serves the next primary";
        tracing::warn!(volume = %self.name, "{text}");
        Ok(text)
    }

    /// `driftless resync --discard-local`: this node gives its changes
    /// since the fork up and becomes the next primary's resync target.
    pub async fn discard_local(&self) -> Result<String, String> {
        let _one = self.changing.lock().await;
        let Some(listener) = self.listener.get() else {
            return Err(format!(
                "{}: no listen_tcp/listen_quic in this node's config",
                self.name
            ));
        };
        let mut text = String::new();
        if matches!(&*self.engine.read().await, Engine::Primary(_)) {
            text = self
                .step_down("discarding its changes (resync --discard-local)", true)
                .await?;
            text += "; ";
        }
        listener.discard_local_changes();
        *crate::lock(&self.split_brain) = None;
        text += &format!(
            "{}: changes since the fork are given up; the next primary to connect rolls them back and resyncs this copy",
            self.name
        );
        Ok(text)
    }

    pub async fn primary(&self) -> Option<Arc<Primary>> {
        match &*self.engine.read().await {
            Engine::Primary(p) => Some(p.clone()),
            Engine::Secondary => None,
        }
    }

    /// Another primary's Hello reached the listener.
    async fn admit(&self, hello: &Hello) -> Result<(), Refusal> {
        let meeting = match &*self.engine.read().await {
            Engine::Secondary => return Ok(()),
            Engine::Primary(p) => {
                let m = p.meet(hello);
                if let Meeting::SplitBrain { fork_lsn } = &m {
                    let facts = p.split_brain_facts(*fork_lsn).await;
                    let known = |n: u64| (n != u64::MAX).then_some(n);
                    let mut sb = crate::lock(&self.split_brain);
                    let same = sb
                        .as_ref()
                        .filter(|s| s.peer == hello.node_id && s.fork_lsn == *fork_lsn);
                    if same.is_none() {
                        tracing::error!(volume = %self.name, peer = %hello.node_id, fork_lsn, changed_regions = ?known(facts.changed_regions), policy = %self.section.split_brain_policy,
                            "SPLIT BRAIN: both nodes wrote after their histories forked");
                    }
                    let peer_changed_regions = same.and_then(|s| s.peer_changed_regions);
                    *sb = Some(SplitBrainStatus {
                        peer: hello.node_id.clone(),
                        fork_lsn: *fork_lsn,
                        changed_regions: known(facts.changed_regions),
                        peer_changed_regions,
                        policy: self.section.split_brain_policy.to_string(),
                    });
                    return Err(Refusal::SplitBrain(facts));
                }
                m
            }
        };
        match meeting {
            Meeting::StepDown { reason } => {
                let _one = self.changing.lock().await;
                self.step_down(&reason, false).await.map(drop).map_err(|e| {
                    Refusal::Refuse(RefuseCode::NotAllowed, format!("stepping down failed: {e}"))
                })
            }
            Meeting::Refuse { code, reason } => Err(Refusal::Refuse(code, reason)),
            Meeting::SplitBrain { .. } => unreachable!("answered above"),
        }
    }

    /// The other primary's side of the split brain `admit` found; when it
    /// decided (it has the smaller name) and picked this node, this node
    /// gives its changes up.
    async fn settle(&self, caller: &str, theirs: SplitBrainFacts) {
        let known = (theirs.changed_regions != u64::MAX).then_some(theirs.changed_regions);
        if let Some(s) = crate::lock(&self.split_brain)
            .as_mut()
            .filter(|s| s.peer == caller)
        {
            s.peer_changed_regions = known;
        }
        if theirs.victim == self.node_name {
            tracing::error!(volume = %self.name, peer = caller, policy = %self.section.split_brain_policy,
                "split-brain policy: this node's changes since the fork are discarded");
            if let Err(e) = self.discard_local().await {
                tracing::error!(volume = %self.name, error = %e, "discarding this node's changes failed");
            }
        }
    }

    /// Stops the engine and the listener, then closes the store cleanly.
    pub async fn shutdown(&self) {
        if let Some(p) = self.primary().await {
            p.shutdown().await;
        }
        if let Some(l) = self.listener.get() {
            l.shutdown().await;
        }
        // A clean stop: the next start knows nothing can differ from the
        // journal (no new generation, nothing to compare).
        match self.store.close().await {
            Ok(lsn) => {
                tracing::info!(volume = %self.name, checkpoint_lsn = lsn, "volume fsynced, journal checkpointed, closed cleanly")
            }
            Err(err) => {
                tracing::error!(volume = %self.name, error = %err, "final checkpoint failed")
            }
        }
    }
}

struct SlotArbiter(Weak<Slot>);

impl Arbiter for SlotArbiter {
    fn admit<'a>(&'a self, hello: &'a Hello) -> Admission<'a> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(slot) => slot.admit(hello).await,
                None => Err(Refusal::Refuse(
                    RefuseCode::NotAllowed,
                    "the volume is closing".into(),
                )),
            }
        })
    }

    fn settle<'a>(
        &'a self,
        caller: &'a str,
        theirs: SplitBrainFacts,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Some(slot) = self.0.upgrade() {
                slot.settle(caller, theirs).await;
            }
        })
    }
}

/// The NBD export's writes go to the primary while this node is one.
impl DataPath for Slot {
    fn store(&self) -> &Store {
        &self.store
    }

    async fn change(&self, change: Change, fua: bool) -> Result<(), TargetError> {
        match &*self.engine.read().await {
            Engine::Primary(p) => p.change(change, fua).await.map(drop).map_err(engine_error),
            Engine::Secondary => Err(TargetError::ReadOnly),
        }
    }

    async fn flush(&self) -> Result<(), TargetError> {
        match &*self.engine.read().await {
            Engine::Primary(p) => p.flush().await.map_err(engine_error),
            Engine::Secondary => self.store.flush().await.map_err(store_error),
        }
    }
}
