//! What `driftless status` (and `status --json`) shows for one volume on one
//! node: typed states, serialized with serde, built by `Primary::status` and
//! `Secondary::status` without side effects.
//!
//! A peer's connection (can we talk to it) is kept apart from its copy's
//! data state (what its volume holds): a disconnected peer may hold a good
//! prefix, a connected one may be mid-resync.

use serde::{Deserialize, Serialize};
use store::Store;

use crate::config::{PeerMode, TransportKind};

/// The role a node currently plays for a volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VolumeRole {
    Primary,
    Secondary,
}

impl std::fmt::Display for VolumeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            VolumeRole::Primary => "primary",
            VolumeRole::Secondary => "secondary",
        })
    }
}

/// Whether a session with a peer runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionState {
    /// Dialing or handshaking.
    Connecting,
    /// A session runs.
    Connected,
    /// The last session ended; reconnecting after a backoff.
    Disconnected,
    /// The peer or this node refused the session (identity, volume, size,
    /// history); `last_error` says why. Retried, but not expected to change
    /// without an operator.
    Refused,
}

/// What a copy of the volume holds, as far as it is proved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DiskState {
    /// Exactly the primary's volume as of some LSN, and the stream covers
    /// the rest.
    UpToDate,
    /// A resync into it is running (see the job's progress).
    Syncing,
    /// Not a prefix of the history: a resync was interrupted, has not
    /// started, or a verify found differing regions.
    Inconsistent,
    /// A prefix of the history, known to be behind (disconnected, or owed
    /// regions it missed while away).
    Outdated,
    /// Both sides wrote after a common generation.
    SplitBrain,
    /// Nothing is proved yet (not connected since start, refused).
    Unknown,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Refused => "refused",
        })
    }
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            DiskState::UpToDate => "up-to-date",
            DiskState::Syncing => "syncing",
            DiskState::Inconsistent => "inconsistent",
            DiskState::Outdated => "outdated",
            DiskState::SplitBrain => "split-brain",
            DiskState::Unknown => "unknown",
        })
    }
}

/// Whether writes wait for a sync peer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SyncGate {
    /// Writes are acknowledged once it has them.
    InSync,
    /// Its session is lost; writes wait for it (suspend policy) until the
    /// timeout degrades it.
    Waiting,
    /// Writes do not wait for it (lost past the policy, resyncing or
    /// catching up).
    Degraded,
}

impl std::fmt::Display for SyncGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            SyncGate::InSync => "in-sync",
            SyncGate::Waiting => "waiting",
            SyncGate::Degraded => "degraded",
        })
    }
}

/// Why a session with a peer was refused (by either side): the label of
/// `driftless_peer_refusals_total`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The TLS handshake failed on authentication (certificate, CA, name).
    Tls,
    UnsupportedVersion,
    VolumeMismatch,
    SizeMismatch,
    RegionSizeMismatch,
    LineageDiverged,
    RoleConflict,
    Busy,
    NotAllowed,
    UnrelatedData,
    IdentityMismatch,
    /// Both sides wrote after their histories forked.
    SplitBrain,
    Other,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 13] = [
        RefusalReason::Tls,
        RefusalReason::UnsupportedVersion,
        RefusalReason::VolumeMismatch,
        RefusalReason::SizeMismatch,
        RefusalReason::RegionSizeMismatch,
        RefusalReason::LineageDiverged,
        RefusalReason::RoleConflict,
        RefusalReason::Busy,
        RefusalReason::NotAllowed,
        RefusalReason::UnrelatedData,
        RefusalReason::IdentityMismatch,
        RefusalReason::SplitBrain,
        RefusalReason::Other,
    ];
}

impl From<wire::RefuseCode> for RefusalReason {
    fn from(code: wire::RefuseCode) -> Self {
        use wire::RefuseCode as C;
        match code {
            C::UnsupportedVersion => RefusalReason::UnsupportedVersion,
            C::VolumeMismatch => RefusalReason::VolumeMismatch,
            C::SizeMismatch => RefusalReason::SizeMismatch,
            C::RegionSizeMismatch => RefusalReason::RegionSizeMismatch,
            C::LineageDiverged => RefusalReason::LineageDiverged,
            C::RoleConflict => RefusalReason::RoleConflict,
            C::Busy => RefusalReason::Busy,
            C::NotAllowed => RefusalReason::NotAllowed,
            C::UnrelatedData => RefusalReason::UnrelatedData,
            C::IdentityMismatch => RefusalReason::IdentityMismatch,
            C::Other(_) => RefusalReason::Other,
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            RefusalReason::Tls => "tls",
            RefusalReason::UnsupportedVersion => "unsupported_version",
            RefusalReason::VolumeMismatch => "volume_mismatch",
            RefusalReason::SizeMismatch => "size_mismatch",
            RefusalReason::RegionSizeMismatch => "region_size_mismatch",
            RefusalReason::LineageDiverged => "lineage_diverged",
            RefusalReason::RoleConflict => "role_conflict",
            RefusalReason::Busy => "busy",
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::UnrelatedData => "unrelated_data",
            RefusalReason::IdentityMismatch => "identity_mismatch",
            RefusalReason::SplitBrain => "split_brain",
            RefusalReason::Other => "other",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobKindStatus {
    Resync,
    Verify,
}

impl std::fmt::Display for JobKindStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            JobKindStatus::Resync => "resync",
            JobKindStatus::Verify => "verify",
        })
    }
}

/// A running resync or verify.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub kind: JobKindStatus,
    pub id: u64,
    /// Every region is walked.
    pub full: bool,
    /// Regions read again because writes to them overtook their read.
    pub stale_reads: u64,
    /// Regions are compared before they are sent.
    pub compare: bool,
    pub regions_total: u64,
    pub regions_done: u64,
    /// Data sent (resync).
    pub bytes_sent: u64,
    /// Differing regions found so far (verify).
    pub mismatches: u64,
    /// Regions handled per second, in bytes.
    pub rate_bytes_per_sec: f64,
    /// The pace the job may use now (0: no cap).
    pub rate_limit_bytes_per_sec: u64,
    pub eta_seconds: Option<f64>,
}

/// The last resync of a peer that ran to its end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResyncReport {
    pub job: u64,
    /// Every region was walked (an initial sync, `resync --full`).
    pub full: bool,
    /// Regions were compared before data was sent.
    pub compare: bool,
    pub regions: u64,
    /// Region data sent (identical and zero regions cost none).
    pub bytes_sent: u64,
    pub seconds: f64,
}

/// The last verify of a peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub job: u64,
    pub regions: u64,
    pub mismatches: u64,
    /// The first differing ranges (offset, length), at most 64.
    pub ranges: Vec<(u64, u64)>,
    /// A resync of them was started.
    pub repaired: bool,
}

/// One volume on one node.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VolumeStatus {
    pub role: VolumeRole,
    pub volume_uuid: String,
    pub generation: u64,
    pub lineage: Vec<GenerationStatus>,
    pub written_lsn: u64,
    pub durable_lsn: u64,
    pub applied_lsn: u64,
    pub checkpoint_lsn: u64,
    /// This node's own copy.
    pub disk: DiskState,
    /// Primary: what writes do while a sync peer is gone.
    pub sync_peer_loss_policy: Option<String>,
    /// Primary: its peers.
    pub peers: Vec<PeerStatus>,
    /// Secondary: the primary it follows (the last one seen).
    pub upstream: Option<UpstreamStatus>,
    /// Secondary: the last refused or failed incoming connection.
    pub last_error: Option<String>,
    /// Primary: why writes are refused, while they are.
    #[serde(default)]
    pub fenced: Option<String>,
    /// Two primaries wrote after their histories forked (set by the node).
    #[serde(default)]
    pub split_brain: Option<SplitBrainStatus>,
    /// The role the configuration names (where a new volume starts); `role`
    /// is the one this node holds now (persisted).
    #[serde(default)]
    pub configured_role: Option<VolumeRole>,
    /// Why this node holds its role (the last role change, persisted).
    #[serde(default)]
    pub role_reason: Option<String>,
    /// Secondary: the operator gave this copy's changes since the fork up
    /// (`resync --discard-local`); the next primary rolls them back.
    #[serde(default)]
    pub discarding_local: bool,
}

/// A split brain this node found: another primary with a history that
/// forked from this one's, both written since.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SplitBrainStatus {
    pub peer: String,
    /// The first LSN where the histories differ.
    pub fork_lsn: u64,
    /// Regions this node changed since the fork (`None`: its journal no
    /// longer holds all of those records).
    pub changed_regions: Option<u64>,
    /// The same for the peer, once it said (`None`: not yet, or unknown).
    pub peer_changed_regions: Option<u64>,
    /// This node's `split_brain_policy`.
    pub policy: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationStatus {
    pub id: u64,
    pub start_lsn: u64,
    pub unknown_before: bool,
}

impl VolumeStatus {
    pub fn peer(&self, name: &str) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// A primary's view of one peer.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PeerStatus {
    pub name: String,
    pub mode: PeerMode,
    pub transport: TransportKind,
    pub address: String,
    pub connection: ConnectionState,
    pub disk: DiskState,
    /// Sync peers: whether writes wait for it.
    pub sync_gate: Option<SyncGate>,
    /// A running resync or verify.
    pub job: Option<JobStatus>,
    pub last_resync: Option<ResyncReport>,
    pub last_verify: Option<VerifyReport>,
    /// Highest LSN the peer journaled.
    pub acked_lsn: u64,
    /// Highest LSN durable on the peer.
    pub durable_lsn: u64,
    /// Journal bytes not yet acknowledged plus the owed regions' bytes.
    pub lag_bytes: u64,
    pub lag_records: u64,
    /// Age of the oldest write the peer does not hold.
    pub lag_seconds: f64,
    pub throughput_bytes_per_sec: f64,
    pub last_error: Option<String>,
    /// Regions owed to the peer (to resync).
    pub dirty_regions: u64,
    /// The configured `rpo_target`, when one is.
    #[serde(default)]
    pub rpo_target_seconds: Option<f64>,
    /// `lag_seconds` exceeds `rpo_target_seconds`.
    #[serde(default)]
    pub rpo_breached: bool,
    /// Since this node started: record bytes sent to the peer.
    #[serde(default)]
    pub shipped_bytes_total: u64,
    /// Since this node started: region bytes sent by resyncs.
    #[serde(default)]
    pub resync_bytes_total: u64,
    /// Sessions established after the first one since this node started.
    #[serde(default)]
    pub reconnects: u64,
    /// Refused sessions by reason since this node started.
    #[serde(default)]
    pub refusals: std::collections::BTreeMap<RefusalReason, u64>,
}

/// A secondary's view of the primary session it serves.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpstreamStatus {
    /// The primary's node name.
    pub name: String,
    pub transport: TransportKind,
    pub address: String,
    /// `true` while its session runs.
    pub connected: bool,
    /// A resync into this node runs.
    pub resyncing: bool,
    /// Since this node started: record and resync bytes received from
    /// primaries.
    #[serde(default)]
    pub received_bytes_total: u64,
}

/// The volume-level part of a status, from the store; callers fill in the
/// role-specific fields.
pub(crate) fn volume_status(store: &Store, role: VolumeRole, disk: DiskState) -> VolumeStatus {
    let j = store.journal();
    VolumeStatus {
        role,
        volume_uuid: store.volume_uuid().to_string(),
        generation: j.generation(),
        lineage: j
            .lineage()
            .into_iter()
            .map(|g| GenerationStatus {
                id: g.id,
                start_lsn: g.start_lsn,
                unknown_before: g.unknown_before,
            })
            .collect(),
        written_lsn: j.written_lsn(),
        durable_lsn: j.durable_lsn(),
        applied_lsn: j.applied_lsn(),
        checkpoint_lsn: j.checkpoint_lsn(),
        disk,
        sync_peer_loss_policy: None,
        peers: Vec::new(),
        upstream: None,
        last_error: None,
        fenced: None,
        split_brain: None,
        discarding_local: false,
        configured_role: None,
        role_reason: None,
    }
}
