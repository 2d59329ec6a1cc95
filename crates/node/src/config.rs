//! The node configuration (`driftless run --config node.toml`): TOML with
//! explicit units ("64KiB", "500ms"), unknown keys refused, every value
//! validated with an error that names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replication::{
    InitialSync, PeerMode, ResyncCompare, SplitBrainPolicy, TransportKind, VolumeRole,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::NodeError;
use crate::open::JournalSizing;
use crate::units::{format_duration, parse_bytes, parse_duration};

/// An async peer's ship delay is lag by design: keep it well under a second.
const MAX_SHIP_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: Node,
    pub tls: Tls,
    #[serde(default)]
    pub quic: QuicSection,
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This node's name: the name in its certificate, and what peers list.
    pub name: String,
    /// Control socket for `driftless status` (created mode 0600).
    pub control_socket: PathBuf,
    /// Serves Prometheus text at `/metrics` on this address (off when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Only peers presenting one of these names are accepted (default: any
    /// certificate from the CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_peers: Option<Vec<String>>,
}

/// QUIC tuning for long fat links; windows must cover the bandwidth-delay
/// product (1 Gbit/s × 100 ms ≈ 12.5 MB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicSection {
    #[serde(deserialize_with = "bytes", default = "default_stream_window")]
    pub stream_receive_window: u64,
    #[serde(deserialize_with = "bytes", default = "default_conn_window")]
    pub receive_window: u64,
    #[serde(deserialize_with = "bytes", default = "default_conn_window")]
    pub send_window: u64,
    #[serde(deserialize_with = "bytes", default = "default_udp_buffer")]
    pub udp_send_buffer: u64,
    #[serde(deserialize_with = "bytes", default = "default_udp_buffer")]
    pub udp_recv_buffer: u64,
    #[serde(default = "yes")]
    pub gso: bool,
    #[serde(with = "duration", default = "default_idle")]
    pub max_idle_timeout: Duration,
    #[serde(with = "duration", default = "default_keepalive")]
    pub keep_alive_interval: Duration,
    #[serde(with = "duration", default = "default_rtt")]
    pub initial_rtt: Duration,
}

impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            stream_receive_window: default_stream_window(),
            receive_window: default_conn_window(),
            send_window: default_conn_window(),
            udp_send_buffer: default_udp_buffer(),
            udp_recv_buffer: default_udp_buffer(),
            gso: true,
            max_idle_timeout: default_idle(),
            keep_alive_interval: default_keepalive(),
            initial_rtt: default_rtt(),
        }
    }
}

impl QuicSection {
    pub fn tuning(&self) -> transport::QuicTuning {
        transport::QuicTuning {
            stream_receive_window_bytes: self.stream_receive_window,
            receive_window_bytes: self.receive_window,
            send_window_bytes: self.send_window,
            udp_send_buffer_bytes: self.udp_send_buffer as usize,
            udp_recv_buffer_bytes: self.udp_recv_buffer as usize,
            enable_gso: self.gso,
            max_idle_timeout: self.max_idle_timeout,
            keep_alive_interval: self.keep_alive_interval,
            initial_rtt: self.initial_rtt,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LossPolicy {
    Suspend,
    Degrade,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    pub name: String,
    /// Shared by every node of the volume.
    pub uuid: uuid::Uuid,
    pub path: PathBuf,
    #[serde(deserialize_with = "bytes")]
    pub size: u64,
    /// The role a new volume starts with on this node. Afterwards the role
    /// persisted beside the journal (`role.json`) decides: promote and
    /// demote change it, a restart keeps it.
    pub role: VolumeRole,
    #[serde(default = "default_engine")]
    pub io_engine: String,
    /// Default: `<path>.journal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_dir: Option<PathBuf>,
    #[serde(deserialize_with = "bytes", default = "default_journal_size")]
    pub journal_size: u64,
    #[serde(deserialize_with = "bytes", default = "default_segment_size")]
    pub journal_segment_size: u64,
    #[serde(deserialize_with = "bytes", default = "default_batch")]
    pub max_batch: u64,
    #[serde(with = "duration", default = "default_checkpoint")]
    pub checkpoint_interval: Duration,
    #[serde(deserialize_with = "bytes", default = "default_region")]
    pub region_size: u64,
    /// The largest NBD WRITE accepted (advertised to clients), and so the
    /// largest journal record: a segment must hold one.
    #[serde(deserialize_with = "bytes32", default = "default_max_write")]
    pub max_write: u32,
    /// Primary: what writes do while a sync peer is gone.
    #[serde(default = "default_loss_policy")]
    pub on_sync_peer_loss: LossPolicy,
    /// With `suspend`: how long writes wait before the peer is degraded.
    #[serde(with = "duration", default = "default_suspend")]
    pub suspend_timeout: Duration,
    #[serde(with = "duration", default = "default_reconnect_min")]
    pub reconnect_min: Duration,
    #[serde(with = "duration", default = "default_reconnect_max")]
    pub reconnect_max: Duration,
    #[serde(with = "duration", default = "default_keepalive_peer")]
    pub keepalive_interval: Duration,
    #[serde(with = "duration", default = "default_peer_timeout")]
    pub peer_timeout: Duration,
    /// Primary: a peer with no history of its own (a new journal: a new
    /// peer, a seeded copy) is brought in sync at once by a full compare
    /// (`auto`), or only after `driftless resync --full` (`manual`).
    #[serde(default = "default_initial_sync")]
    pub initial_sync: InitialSync,
    /// Primary: compare BLAKE3 digests before sending a region: `auto` (for
    /// full compares and after an unclean restart, not for regions missed
    /// in an outage, which really changed), `always`, `never`.
    #[serde(default = "default_resync_compare")]
    pub resync_compare: ResyncCompare,
    /// Primary: resync pace cap, bytes per second ("200MiB/s"; 0: none).
    /// Application writes count against it.
    #[serde(deserialize_with = "rate", default)]
    pub resync_max_rate: u64,
    /// Primary: the pace a resync keeps however busy the volume is.
    #[serde(deserialize_with = "rate", default = "default_resync_min_rate")]
    pub resync_min_rate: u64,
    /// Primary: resync bytes sent and not yet durable on the peer.
    #[serde(deserialize_with = "bytes", default = "default_resync_inflight")]
    pub resync_max_inflight: u64,
    /// What happens when this node, as primary, finds another primary that
    /// also wrote since their histories forked: `disconnect` (nothing
    /// moves until `resync --discard-local`), `discard-zero-changes`,
    /// `discard-least-changes`, `discard-younger-primary`,
    /// `discard-older-primary`. Both nodes must name the same policy, or
    /// nothing moves.
    #[serde(default = "default_split_brain_policy")]
    pub split_brain_policy: SplitBrainPolicy,
    /// Where a primary connects while this node is a secondary (TCP+TLS
    /// and/or QUIC). On a primary: what it serves once demoted, and where a
    /// second primary is noticed (split brain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_tcp: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_quic: Option<SocketAddr>,
    /// The NBD export: a primary takes writes there; a secondary answers
    /// writes with EPERM and serves reads (and takes writes once promoted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdSection>,
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Export name (default: the volume name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: String,
    pub mode: PeerMode,
    pub transport: TransportKind,
    pub address: SocketAddr,
    #[serde(deserialize_with = "bytes", default = "default_inflight")]
    pub max_inflight: u64,
    #[serde(deserialize_with = "bytes", default = "default_batch")]
    pub max_batch: u64,
    /// Async peers: longest wait for a local journal sync before shipping.
    #[serde(with = "duration", default = "default_ship_delay")]
    pub max_ship_delay: Duration,
    /// The freshness this peer's copy is held to ("30s"): status and the
    /// metrics say when its lag (the age of the oldest write it lacks)
    /// exceeds it. Absent: no target.
    #[serde(
        with = "optional_duration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rpo_target: Option<Duration>,
}

impl PeerSection {
    /// A peer with default window, batch and ship delay.
    pub fn new(name: &str, mode: PeerMode, transport: TransportKind, address: SocketAddr) -> Self {
        PeerSection {
            name: name.into(),
            mode,
            transport,
            address,
            max_inflight: default_inflight(),
            max_batch: default_batch(),
            max_ship_delay: default_ship_delay(),
            rpo_target: None,
        }
    }
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    // Plain integers are bytes; strings carry units.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => parse_bytes(&t).map_err(serde::de::Error::custom),
    }
}

/// Durations are strings with units ("500ms", "10s") both ways.
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional duration: absent, or a string with units.
mod optional_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

fn bytes32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = bytes(d)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} bytes is too large")))
}

/// A rate: "200MiB/s" (or bytes per second as an integer).
fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => {
            let Some(size) = t.trim().strip_suffix("/s") else {
                return Err(serde::de::Error::custom(format!(
                    "invalid rate {t:?}: expected a size per second, e.g. \"200MiB/s\""
                )));
            };
            parse_bytes(size.trim()).map_err(serde::de::Error::custom)
        }
    }
}

fn yes() -> bool {
    true
}
fn default_stream_window() -> u64 {
    16 << 20
}
fn default_conn_window() -> u64 {
    32 << 20
}
fn default_udp_buffer() -> u64 {
    8 << 20
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(5)
}
fn default_rtt() -> Duration {
    Duration::from_millis(100)
}
fn default_engine() -> String {
    "auto".into()
}
fn default_journal_size() -> u64 {
    1 << 30
}
fn default_segment_size() -> u64 {
    64 << 20
}
fn default_batch() -> u64 {
    4 << 20
}
fn default_checkpoint() -> Duration {
    Duration::from_secs(10)
}
fn default_region() -> u64 {
    64 << 10
}
fn default_loss_policy() -> LossPolicy {
    LossPolicy::Suspend
}
fn default_suspend() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive_peer() -> Duration {
    Duration::from_secs(1)
}
fn default_peer_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_write() -> u32 {
    32 << 20
}
fn default_initial_sync() -> InitialSync {
    InitialSync::Auto
}
fn default_resync_compare() -> ResyncCompare {
    ResyncCompare::Auto
}
fn default_resync_min_rate() -> u64 {
    10 << 20
}
fn default_resync_inflight() -> u64 {
    16 << 20
}
fn default_split_brain_policy() -> SplitBrainPolicy {
    SplitBrainPolicy::Disconnect
}
fn default_inflight() -> u64 {
    64 << 20
}

fn default_ship_delay() -> Duration {
    Duration::from_millis(100)
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::io(format!("reading config {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| NodeError::Config(format!("config {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<NodeConfig, NodeError> {
        // toml's message names the key and the line.
        let config: NodeConfig =
            toml::from_str(text).map_err(|e| NodeError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, as `parse` reads it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a node config always serializes")
    }

    fn validate(&self) -> Result<(), NodeError> {
        macro_rules! bail {
            ($($arg:tt)*) => {
                return Err(NodeError::Config(format!($($arg)*)))
            };
        }
        if transport::validate_node_name(&self.node.name).is_err() {
            bail!(
                "node.name {:?} must be a certificate node name ([A-Za-z0-9.-])",
                self.node.name
            );
        }
        if self.volumes.is_empty() {
            bail!("no [[volume]] configured");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let at = format!("volume[{i}] ({})", v.name);
            if !names.insert(v.name.as_str()) {
                bail!("{at}: volume name configured twice");
            }
            if v.size == 0 {
                bail!("{at}.size must be > 0");
            }
            if v.io_engine.parse::<volume::EngineKind>().is_err() {
                bail!(
                    "{at}.io_engine {:?}: expected auto, uring or threads",
                    v.io_engine
                );
            }
            if !v.region_size.is_power_of_two() || v.region_size < 4096 {
                bail!("{at}.region_size must be a power of two >= 4KiB");
            }
            if !(4096..=32 << 20).contains(&v.max_write) || !v.max_write.is_multiple_of(4096) {
                bail!("{at}.max_write must be a multiple of 4KiB between 4KiB and 32MiB");
            }
            if let Err(sizing) =
                JournalSizing::check(v.journal_size, v.journal_segment_size, v.max_write)
            {
                bail!(
                    "{}",
                    sizing.describe(
                        &format!("{at}.journal_size"),
                        &format!("{at}.journal_segment_size"),
                        "max_write"
                    )
                );
            }
            if v.resync_max_rate != 0 && v.resync_min_rate > v.resync_max_rate {
                bail!("{at}: resync_min_rate must not exceed resync_max_rate");
            }
            if v.resync_max_inflight < v.region_size {
                bail!("{at}.resync_max_inflight must hold at least one region");
            }
            // Either role may hold the other's keys: they are used once the
            // node is promoted (nbd, peers) or demoted (listen_*).
            if let Some(nbd) = &v.nbd {
                if nbd.unix.is_none() && nbd.listen.is_none() {
                    bail!("{at}.nbd: set unix and/or listen");
                }
            }
            match v.role {
                VolumeRole::Primary if v.nbd.is_none() => {
                    bail!("{at}: a primary needs [volume.nbd] with unix and/or listen");
                }
                VolumeRole::Secondary if v.listen_tcp.is_none() && v.listen_quic.is_none() => {
                    bail!("{at}: a secondary needs listen_tcp and/or listen_quic");
                }
                _ => {}
            }
            let mut peers = std::collections::BTreeSet::new();
            for (j, p) in v.peers.iter().enumerate() {
                let at = format!("{at}.peer[{j}] ({})", p.name);
                if !peers.insert(p.name.as_str()) {
                    bail!("{at}: peer configured twice");
                }
                if p.name == self.node.name {
                    bail!("{at}: a node cannot be its own peer");
                }
                if p.max_inflight == 0 || p.max_batch == 0 || p.max_batch > p.max_inflight {
                    bail!("{at}: need 0 < max_batch <= max_inflight");
                }
                if p.max_ship_delay.is_zero() || p.max_ship_delay > MAX_SHIP_DELAY {
                    bail!("{at}: need 0 < max_ship_delay <= {MAX_SHIP_DELAY:?}");
                }
                if p.rpo_target.is_some_and(|t| t.is_zero()) {
                    bail!("{at}.rpo_target must be > 0 (leave it out for no target)");
                }
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// A node with no volumes yet and default QUIC tuning.
    pub fn new(name: &str, control_socket: PathBuf, tls: Tls) -> Self {
        NodeConfig {
            node: Node {
                name: name.into(),
                control_socket,
                metrics_listen: None,
            },
            tls,
            quic: QuicSection::default(),
            volumes: Vec::new(),
        }
    }
}

impl VolumeSection {
    /// A volume with every optional key at its default; a primary still
    /// needs `nbd`, a secondary `listen_tcp` and/or `listen_quic`.
    pub fn new(name: &str, uuid: uuid::Uuid, path: PathBuf, size: u64, role: VolumeRole) -> Self {
        VolumeSection {
            name: name.into(),
            uuid,
            path,
            size,
            role,
            io_engine: default_engine(),
            journal_dir: None,
            journal_size: default_journal_size(),
            journal_segment_size: default_segment_size(),
            max_batch: default_batch(),
            checkpoint_interval: default_checkpoint(),
            region_size: default_region(),
            max_write: default_max_write(),
            on_sync_peer_loss: default_loss_policy(),
            suspend_timeout: default_suspend(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            keepalive_interval: default_keepalive_peer(),
            peer_timeout: default_peer_timeout(),
            initial_sync: default_initial_sync(),
            resync_compare: default_resync_compare(),
            resync_max_rate: 0,
            resync_min_rate: default_resync_min_rate(),
            resync_max_inflight: default_resync_inflight(),
            split_brain_policy: default_split_brain_policy(),
            listen_tcp: None,
            listen_quic: None,
            nbd: None,
            peers: Vec::new(),
        }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.journal_dir.clone().unwrap_or_else(|| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(".journal");
            PathBuf::from(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::NodeConfig;

    const PRIMARY: &str = r#"
[node]
name = "alpha"
control_socket = "/tmp/alpha.sock"

[tls]
cert = "alpha.pem"
key = "alpha.key"
ca = "ca.pem"

[[volume]]
name = "vol0"
uuid = "6f1c2a8e-7d1b-4a53-9a51-0c5e7f3b2d11"
path = "/tmp/vol0.img"
size = "1GiB"
role = "primary"
checkpoint_interval = "5s"

[volume.nbd]
unix = "/tmp/vol0.sock"

[[volume.peer]]
name = "metro"
mode = "sync"
transport = "tcp"
address = "127.0.0.1:7401"

[[volume.peer]]
name = "dr"
mode = "async"
transport = "quic"
address = "127.0.0.1:7402"
max_inflight = "128MiB"
rpo_target = "30s"
"#;

    #[test]
    fn parses_units_and_defaults() {
        let c = NodeConfig::parse(PRIMARY).unwrap();
        let v = &c.volumes[0];
        assert_eq!(v.size, 1 << 30);
        assert_eq!(v.checkpoint_interval, std::time::Duration::from_secs(5));
        assert_eq!(v.peers[1].max_inflight, 128 << 20);
        assert_eq!(v.peers[0].max_inflight, 64 << 20);
        assert_eq!(
            v.peers[1].max_ship_delay,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(
            v.peers[1].rpo_target,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(v.peers[0].rpo_target, None);
        assert_eq!(
            v.journal_dir(),
            std::path::PathBuf::from("/tmp/vol0.img.journal")
        );
    }

    #[test]
    fn deploy_examples_parse() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for name in ["primary.toml", "metro.toml", "dr.toml"] {
            let path = deploy.join(name);
            NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    #[test]
    fn serializes_to_toml_that_parses_back_the_same() {
        let c = NodeConfig::parse(PRIMARY).unwrap();
        let text = c.to_toml();
        assert_eq!(NodeConfig::parse(&text).unwrap(), c, "{text}");
        assert!(text.contains("checkpoint_interval = \"5s\""), "{text}");
        assert!(text.contains("rpo_target = \"30s\""), "{text}");
    }

    #[test]
    fn errors_name_the_key() {
        let bad = PRIMARY.replace("size = \"1GiB\"", "size = \"1 gigabyte-ish\"");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(
            err.contains("size") && err.contains("invalid size"),
            "{err}"
        );

        for (value, why) in [
            ("\"0s\"", "must be > 0"),
            ("\"30 sec\"", "invalid duration"),
        ] {
            let bad = PRIMARY.replace("rpo_target = \"30s\"", &format!("rpo_target = {value}"));
            let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
            assert!(err.contains("rpo_target") && err.contains(why), "{err}");
        }

        let bad = PRIMARY.replace(
            "role = \"primary\"",
            "role = \"primary\"\njournal_segment_size = \"1MiB\"",
        );
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(
            err.contains("volume[0] (vol0).journal_segment_size must be at least 33MiB"),
            "{err}"
        );
        let bad = PRIMARY.replace(
            "role = \"primary\"",
            "role = \"primary\"\njournal_size = \"128MiB\"",
        );
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(
            err.contains("volume[0] (vol0).journal_size must be at least 192MiB"),
            "{err}"
        );

        let bad = PRIMARY.replace("checkpoint_interval", "checkpoint_intervall");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(err.contains("checkpoint_intervall"), "{err}");

        let bad = PRIMARY.replace("mode = \"sync\"", "mode = \"sometimes\"");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(err.contains("sometimes"), "{err}");

        let bad = PRIMARY.replace("name = \"metro\"", "name = \"alpha\"");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(
            err.contains("peer[0] (alpha)") && err.contains("own peer"),
            "{err}"
        );

        let bad = PRIMARY.replace("unix = \"/tmp/vol0.sock\"", "");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(err.contains("volume[0] (vol0).nbd"), "{err}");

        let bad = PRIMARY.replace("role = \"primary\"", "role = \"secondary\"");
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(err.contains("listen_tcp"), "{err}");

        let bad = PRIMARY.replace(
            "max_inflight = \"128MiB\"",
            "max_inflight = \"128MiB\"\nmax_ship_delay = \"5s\"",
        );
        let err = format!("{:#}", NodeConfig::parse(&bad).unwrap_err());
        assert!(
            err.contains("peer[1] (dr)") && err.contains("max_ship_delay"),
            "{err}"
        );
    }
}
