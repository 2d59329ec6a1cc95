//! What `driftless status` (and `status --json`) shows for one volume on one
//! node: typed states, serialized with serde, built by `Primary::status` and
//! `Secondary::status` without side effects.

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

/// Where a peer session stands, as the primary sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Dialing or handshaking.
    Connecting,
    /// Streaming.
    Connected,
    /// The last session ended; reconnecting after a backoff.
    Disconnected,
    /// The peer or this node refused the session (identity, volume, size,
    /// lineage); `last_error` says why. Retried, but not expected to change
    /// without an operator.
    Refused,
    /// The peer fell behind past the journal cap (or its history cannot
    /// continue by streaming): not streamed to until it is resynced.
    NeedsResync,
    /// A sync peer that writes no longer wait for (lost past the sync-peer
    /// loss policy, or catching up).
    Degraded,
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Disconnected => "disconnected",
            PeerState::Refused => "refused",
            PeerState::NeedsResync => "needs-resync",
            PeerState::Degraded => "degraded",
        })
    }
}

/// One volume on one node.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VolumeStatus {
    pub role: VolumeRole,
    pub volume_uuid: String,
    pub generation: u64,
    pub lineage: Vec<(u64, u64)>,
    pub written_lsn: u64,
    pub durable_lsn: u64,
    pub applied_lsn: u64,
    pub checkpoint_lsn: u64,
    /// `false` while the volume is not a prefix of the primary's history
    /// (during a bitmap resync, not implemented yet).
    pub consistent: bool,
    /// Primary: what writes do while a sync peer is gone.
    pub sync_peer_loss_policy: Option<String>,
    /// Primary: its peers.
    pub peers: Vec<PeerStatus>,
    /// Secondary: the primary it follows (the last one seen).
    pub upstream: Option<UpstreamStatus>,
    /// Secondary: the last refused or failed incoming connection.
    pub last_error: Option<String>,
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
    pub state: PeerState,
    /// Highest LSN the peer journaled (and applied).
    pub acked_lsn: u64,
    /// Highest LSN durable on the peer.
    pub durable_lsn: u64,
    pub lag_bytes: u64,
    pub lag_records: u64,
    /// Age of the oldest write the peer has not acknowledged.
    pub lag_seconds: f64,
    pub throughput_bytes_per_sec: f64,
    pub last_error: Option<String>,
    pub dirty_regions: u64,
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
}

/// The volume-level part of a status, from the store; callers fill in the
/// role-specific fields.
pub(crate) fn volume_status(store: &Store, role: VolumeRole) -> VolumeStatus {
    let j = store.journal();
    VolumeStatus {
        role,
        volume_uuid: store.volume_uuid().to_string(),
        generation: j.generation(),
        lineage: j.lineage(),
        written_lsn: j.written_lsn(),
        durable_lsn: j.durable_lsn(),
        applied_lsn: j.applied_lsn(),
        checkpoint_lsn: j.checkpoint_lsn(),
        consistent: true,
        sync_peer_loss_policy: None,
        peers: Vec::new(),
        upstream: None,
        last_error: None,
    }
}
