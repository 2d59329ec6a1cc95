//! Configuration and status types of the engine (the daemon builds these
//! from its TOML and serializes the status for the CLI).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use transport::{QuicTuning, TlsIdentity};

use crate::error::EngineError;

/// Resync pacing: a cap, and a floor that application writes cannot push
/// it below (DRBD's c-max-rate and c-min-rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncLimits {
    /// Bytes per second of regions read and sent at most (0: no cap).
    pub max_rate_bytes_per_sec: u64,
    /// Bytes per second a resync keeps however busy the volume is.
    pub min_rate_bytes_per_sec: u64,
    /// Operation bytes sent and not yet acknowledged, at most.
    pub max_inflight_bytes: u64,
}

/// How the primary waits for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMode {
    /// Protocol C: a write is acknowledged once the peer journaled it; FLUSH
    /// and FUA once it is durable there.
    Sync,
    /// Shipped from the journal in LSN order; the primary never waits.
    Async,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP + mutual TLS (metro peers).
    Tcp,
    /// QUIC with mutual TLS (DR peers over long fat links).
    Quic,
}

/// What writes do while a sync peer is disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPeerLossPolicy {
    /// Writes and flushes wait for the peer up to `timeout` (counted from
    /// the disconnect), then the peer is degraded and they carry on.
    Suspend { timeout: Duration },
    /// Carry on at once; the peer is marked degraded.
    Degrade,
}

impl std::fmt::Display for SyncPeerLossPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPeerLossPolicy::Suspend { timeout } => write!(f, "suspend({timeout:?})"),
            SyncPeerLossPolicy::Degrade => f.write_str("degrade"),
        }
    }
}

/// What happens with a peer that has no history yet (a new, empty journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialSync {
    /// Compare every region and send the differing ones, at once.
    Auto,
    /// Refuse it until an operator runs `resync --full`.
    Manual,
}

/// When a resync compares regions (BLAKE3) before sending them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResyncCompare {
    /// For a full (tier 3) resync and regions marked by an unclean restart
    /// or a verify; not for regions a peer missed while away (those
    /// changed: comparing would only cost a read).
    Auto,
    Always,
    Never,
}

/// What happens when two primaries find they both wrote after their
/// histories forked (DRBD's after-split-brain policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitBrainPolicy {
    /// Nothing moves; both show `split-brain` until an operator runs
    /// `resync --discard-local` on one of them.
    Disconnect,
    /// The side that changed no region since the fork is discarded.
    DiscardZeroChanges,
    /// The side that changed fewer regions is discarded (a tie: nothing).
    DiscardLeastChanges,
    /// The side that became primary later is discarded.
    DiscardYoungerPrimary,
    /// The side that became primary earlier is discarded.
    DiscardOlderPrimary,
}

impl SplitBrainPolicy {
    pub const ALL: [SplitBrainPolicy; 5] = [
        SplitBrainPolicy::Disconnect,
        SplitBrainPolicy::DiscardZeroChanges,
        SplitBrainPolicy::DiscardLeastChanges,
        SplitBrainPolicy::DiscardYoungerPrimary,
        SplitBrainPolicy::DiscardOlderPrimary,
    ];

    /// The wire's number for it.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.to_u8() == v)
    }
}

impl std::fmt::Display for SplitBrainPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            SplitBrainPolicy::Disconnect => "disconnect",
            SplitBrainPolicy::DiscardZeroChanges => "discard-zero-changes",
            SplitBrainPolicy::DiscardLeastChanges => "discard-least-changes",
            SplitBrainPolicy::DiscardYoungerPrimary => "discard-younger-primary",
            SplitBrainPolicy::DiscardOlderPrimary => "discard-older-primary",
        })
    }
}

#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The peer's node name = the name in its certificate (TLS server name).
    pub name: String,
    pub mode: PeerMode,
    pub transport: TransportKind,
    pub address: SocketAddr,
    /// Shipped but unacknowledged bytes; at the limit the session waits for
    /// acks (never the write path of an async peer).
    pub max_inflight_bytes: u64,
    /// One `Records` frame stops growing past this.
    pub max_batch_bytes: usize,
    /// Async peers are shipped records once they are durable here. When no
    /// FLUSH or checkpoint syncs the journal sooner, the session asks for a
    /// sync after this long: it bounds the lag this adds, and a longer delay
    /// means fewer fdatasyncs on the write path and larger batches.
    pub max_ship_delay: Duration,
    /// The freshness this peer's copy is held to: status and metrics say
    /// when its lag (age of the oldest write it lacks) exceeds it.
    pub rpo_target: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    pub node_id: String,
    pub peers: Vec<PeerConfig>,
    pub on_sync_peer_loss: SyncPeerLossPolicy,
    /// Reconnect backoff: starts at `reconnect_min`, doubles per failure,
    /// capped at `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// A Ping is sent when nothing else was sent for this long.
    pub keepalive_interval: Duration,
    /// A session that received nothing for this long (and the handshake
    /// taking longer) is dead.
    pub peer_timeout: Duration,
    /// Shutdown lets sessions ship what they can for at most this long.
    pub drain_timeout: Duration,
    pub tls: Arc<TlsIdentity>,
    pub quic: QuicTuning,
    pub initial_sync: InitialSync,
    pub resync_compare: ResyncCompare,
    /// Resync pacing and window.
    pub resync: ResyncLimits,
    pub split_brain_policy: SplitBrainPolicy,
    /// When this node last became primary (ns since the Unix epoch): what
    /// the younger/older-primary policies compare.
    pub primary_since_ns: u64,
}

impl PrimaryConfig {
    /// Defaults for everything but the identity and the peers.
    pub fn new(node_id: impl Into<String>, tls: Arc<TlsIdentity>, peers: Vec<PeerConfig>) -> Self {
        PrimaryConfig {
            node_id: node_id.into(),
            peers,
            on_sync_peer_loss: SyncPeerLossPolicy::Suspend {
                timeout: Duration::from_secs(10),
            },
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            tls,
            quic: QuicTuning::default(),
            initial_sync: InitialSync::Auto,
            resync_compare: ResyncCompare::Auto,
            resync: ResyncLimits {
                max_rate_bytes_per_sec: 0,
                min_rate_bytes_per_sec: 10 << 20,
                max_inflight_bytes: 16 << 20,
            },
            split_brain_policy: SplitBrainPolicy::Disconnect,
            primary_since_ns: 0,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.node_id.is_empty() || self.node_id.len() > wire::MAX_NODE_ID_BYTES {
            return bad("node_id must be 1..=255 bytes".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min must be > 0 and <= reconnect_max".into());
        }
        if self.keepalive_interval.is_zero() || self.peer_timeout <= self.keepalive_interval {
            return bad("keepalive_interval must be > 0 and < peer_timeout".into());
        }
        if self.resync.max_inflight_bytes == 0 {
            return bad("resync max_inflight_bytes must be > 0".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.peers {
            if !names.insert(p.name.as_str()) {
                return bad(format!("peer {:?} is configured twice", p.name));
            }
            if transport::validate_node_name(&p.name).is_err() {
                return bad(format!(
                    "peer name {:?} must be a certificate node name ([A-Za-z0-9.-])",
                    p.name
                ));
            }
            if p.max_batch_bytes == 0 || p.max_inflight_bytes == 0 {
                return bad(format!(
                    "peer {}: max_batch_bytes and max_inflight_bytes must be > 0",
                    p.name
                ));
            }
            if p.max_batch_bytes as u64 + 4096 > wire::DEFAULT_MAX_FRAME_BYTES as u64 {
                return bad(format!(
                    "peer {}: max_batch_bytes must stay below the wire frame limit ({} bytes)",
                    p.name,
                    wire::DEFAULT_MAX_FRAME_BYTES
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct SecondaryConfig {
    pub node_id: String,
    pub listen_tcp: Option<SocketAddr>,
    pub listen_quic: Option<SocketAddr>,
    pub keepalive_interval: Duration,
    pub peer_timeout: Duration,
    pub tls: Arc<TlsIdentity>,
    pub quic: QuicTuning,
}

impl SecondaryConfig {
    pub fn new(node_id: impl Into<String>, tls: Arc<TlsIdentity>) -> Self {
        SecondaryConfig {
            node_id: node_id.into(),
            listen_tcp: None,
            listen_quic: None,
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(10),
            tls,
            quic: QuicTuning::default(),
        }
    }
}

impl std::fmt::Display for PeerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            PeerMode::Sync => "sync",
            PeerMode::Async => "async",
        })
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Quic => "quic",
        })
    }
}
