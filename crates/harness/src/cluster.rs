//! Several `driftless run` nodes on loopback: a [`Site`] (work directory,
//! CA, the volume UUID every node shares) builds their configurations as
//! [`NodeConfig`] values, starts them as real processes ([`NodeProc`]) and
//! asks them for their status over their control sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use node::config::{NbdSection, NodeConfig, PeerSection, QuicSection, VolumeSection};
use node::control::{self, NodeStatus};
use replication::{
    ConnectionState, DiskState, PeerMode, PeerStatus, TransportKind, VolumeRole, VolumeStatus,
};

use crate::error::{HarnessError, Result};
use crate::pki::Pki;
use crate::process::{Proc, POLL};

/// How long a node may take to print that it is ready.
pub const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a node may take to exit after SIGTERM (a primary drains its
/// peers, at most drain + peer timeout, then checkpoints).
pub const STOP_LIMIT: Duration = Duration::from_secs(40);
pub const MIB: u64 = 1 << 20;

/// The name of the one volume every node of a site serves.
pub const VOLUME: &str = "vol0";

/// A work directory with a CA and the volume UUID every node shares.
pub struct Site {
    pub dir: PathBuf,
    pub pki: Pki,
    pub uuid: uuid::Uuid,
    /// Removes the directory when the site is dropped (tests).
    _temp: Option<tempfile::TempDir>,
}

impl Site {
    /// A site in a new temporary directory, removed on drop.
    pub fn temp() -> Result<Site> {
        let temp = tempfile::tempdir().map_err(|e| HarnessError::io("creating a temp dir", e))?;
        let mut site = Site::at(temp.path())?;
        site._temp = Some(temp);
        Ok(site)
    }

    /// A site in `dir` (which must exist), left in place.
    pub fn at(dir: &Path) -> Result<Site> {
        Ok(Site {
            dir: dir.to_path_buf(),
            pki: Pki::new(&dir.join("certs"))?,
            uuid: uuid::Uuid::new_v4(),
            _temp: None,
        })
    }

    /// Keeps a temporary site's directory after the site is dropped.
    pub fn keep(&mut self) {
        if let Some(t) = self._temp.take() {
            let _ = t.keep();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Node `name`'s volume file.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.img"))
    }

    pub fn control(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.ctl"))
    }

    pub fn nbd_socket(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-nbd.sock"))
    }

    /// The volume of node `name` with the test defaults: small journals,
    /// quick reconnects (nodes are restarted and expected back within a
    /// second).
    pub fn volume_section(&self, name: &str, size_bytes: u64, role: VolumeRole) -> VolumeSection {
        let mut v = VolumeSection::new(VOLUME, self.uuid, self.volume(name), size_bytes, role);
        v.journal_size = 256 * MIB;
        v.journal_segment_size = 64 * MIB;
        v.reconnect_min = Duration::from_millis(50);
        v.reconnect_max = Duration::from_millis(300);
        v
    }

    /// A primary exporting its volume on `<name>-nbd.sock`; add peers with
    /// [`with_peer`].
    pub fn primary_volume(&self, name: &str, size_bytes: u64) -> VolumeSection {
        let mut v = self.volume_section(name, size_bytes, VolumeRole::Primary);
        v.nbd = Some(NbdSection {
            unix: Some(self.nbd_socket(name)),
            listen: None,
            export: None,
        });
        v
    }

    /// A secondary listening on an ephemeral loopback port of `via`.
    pub fn secondary_volume(
        &self,
        name: &str,
        size_bytes: u64,
        via: TransportKind,
    ) -> VolumeSection {
        let mut v = self.volume_section(name, size_bytes, VolumeRole::Secondary);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        match via {
            TransportKind::Tcp => v.listen_tcp = Some(any),
            TransportKind::Quic => v.listen_quic = Some(any),
        }
        v
    }

    /// Node `name`'s configuration serving `volume` (its certificate made
    /// on first use).
    pub fn config(&self, name: &str, volume: VolumeSection) -> Result<NodeConfig> {
        let mut c = NodeConfig::new(name, self.control(name), self.pki.tls(name)?);
        c.volumes.push(volume);
        Ok(c)
    }

    /// Writes `config` to `<dir>/<name>-<suffix>.toml`.
    pub fn write_config(&self, config: &NodeConfig, suffix: &str) -> Result<PathBuf> {
        let path = self.path(&format!("{}-{suffix}.toml", config.node.name));
        std::fs::write(&path, config.to_toml())
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// Writes `config` and starts `driftless run` with it.
    pub fn start(&self, config: &NodeConfig) -> Result<NodeProc> {
        let path = self.write_config(config, "run")?;
        NodeProc::start(&self.dir, &path)
    }

    pub fn start_secondary(
        &self,
        name: &str,
        size_bytes: u64,
        via: TransportKind,
    ) -> Result<NodeProc> {
        self.start(&self.config(name, self.secondary_volume(name, size_bytes, via))?)
    }

    /// A secondary `peer` and a primary "primary" shipping to it in `mode`
    /// over `via`, connected. `tune` adjusts the primary's volume first.
    pub fn start_pair(
        &self,
        peer: &str,
        mode: PeerMode,
        via: TransportKind,
        size_bytes: u64,
        tune: impl FnOnce(&mut VolumeSection),
    ) -> Result<(NodeProc, NodeProc)> {
        let secondary = self.start_secondary(peer, size_bytes, via)?;
        let address = match via {
            TransportKind::Tcp => secondary.tcp,
            TransportKind::Quic => secondary.quic,
        }
        .expect("a secondary prints its listening address");
        let mut v = with_peer(
            self.primary_volume("primary", size_bytes),
            peer,
            mode,
            via,
            address,
        );
        tune(&mut v);
        let primary = self.start(&self.config("primary", v)?)?;
        wait_up_to_date(&primary, &[peer], &[&secondary])?;
        Ok((primary, secondary))
    }
}

/// One node of a failover mesh as every other node sees it: where it
/// listens, and how a primary ships to it.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub mode: PeerMode,
    pub transport: TransportKind,
    pub address: SocketAddr,
}

impl Member {
    /// A member on a loopback port free now (fixed, so that every node's
    /// config can name it before it starts).
    pub fn new(name: &str, mode: PeerMode, transport: TransportKind) -> Result<Member> {
        Ok(Member {
            name: name.into(),
            mode,
            transport,
            address: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        })
    }
}

/// A loopback port that is free for both TCP and UDP at this moment.
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("finding a free port", e))?;
        let port = tcp
            .local_addr()
            .map_err(|e| HarnessError::io("finding a free port", e))?
            .port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(HarnessError::Check(
        "no loopback port free for TCP and UDP".into(),
    ))
}

impl Site {
    /// `me`'s volume in a mesh where any node may be promoted: its NBD
    /// export, its listener at its member address, and every other member
    /// as a peer. `role` is only where a new volume starts.
    pub fn mesh_volume(
        &self,
        me: &Member,
        members: &[Member],
        size_bytes: u64,
        role: VolumeRole,
    ) -> VolumeSection {
        let mut v = self.volume_section(&me.name, size_bytes, role);
        v.nbd = Some(NbdSection {
            unix: Some(self.nbd_socket(&me.name)),
            listen: None,
            export: None,
        });
        match me.transport {
            TransportKind::Tcp => v.listen_tcp = Some(me.address),
            TransportKind::Quic => v.listen_quic = Some(me.address),
        }
        for m in members.iter().filter(|m| m.name != me.name) {
            v = with_peer(v, &m.name, m.mode, m.transport, m.address);
        }
        v
    }
}

/// Adds a peer to a primary's volume.
pub fn with_peer(
    mut v: VolumeSection,
    name: &str,
    mode: PeerMode,
    transport: TransportKind,
    address: SocketAddr,
) -> VolumeSection {
    v.peers
        .push(PeerSection::new(name, mode, transport, address));
    v
}

/// QUIC tuned for loopback runs that cut links: short idle timeout and
/// keepalive, a small initial RTT.
pub fn quick_quic() -> QuicSection {
    QuicSection {
        max_idle_timeout: Duration::from_secs(3),
        keep_alive_interval: Duration::from_millis(500),
        initial_rtt: Duration::from_millis(10),
        ..QuicSection::default()
    }
}

/// A running `driftless run` node; SIGKILLed on drop if still running.
pub struct NodeProc {
    pub proc: Proc,
    pub name: String,
    pub config_path: PathBuf,
    pub config: NodeConfig,
    /// `nbd+unix:///vol0?socket=...` of a primary.
    pub nbd_uri: Option<String>,
    pub nbd_socket: Option<PathBuf>,
    /// Listening addresses of a secondary, as printed.
    pub tcp: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
}

impl NodeProc {
    /// Starts `driftless run --config PATH` and waits for `node NAME ready`.
    pub fn start(dir: &Path, config_path: &Path) -> Result<NodeProc> {
        Self::start_in(dir, config_path, &[])
    }

    /// [`NodeProc::start`] through `wrapper` (a command that execs the
    /// rest, such as `ip netns exec NS`).
    pub fn start_in(dir: &Path, config_path: &Path, wrapper: &[String]) -> Result<NodeProc> {
        let config = NodeConfig::load(config_path)?;
        let name = config.node.name.clone();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(crate::driftless_bin());
                c
            }
            None => Command::new(crate::driftless_bin()),
        };
        cmd.arg("run").arg("--config").arg(config_path).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut proc = Proc::spawn(cmd, dir, &name)?;
        let ready = format!("node {name} ready");
        let out = proc.wait_stdout(&format!("printing {ready:?}"), START_LIMIT, |out| {
            out.lines()
                .any(|l| l.starts_with(&ready))
                .then(|| out.to_owned())
        })?;
        let mut node = NodeProc {
            proc,
            name,
            config_path: config_path.to_path_buf(),
            config,
            nbd_uri: None,
            nbd_socket: None,
            tcp: None,
            quic: None,
        };
        for line in out.lines() {
            if let Some((_, uri)) = line.split_once(" serving ") {
                if uri.starts_with("nbd+unix://") {
                    node.nbd_uri = Some(uri.trim().to_string());
                    node.nbd_socket = uri
                        .split_once("?socket=")
                        .map(|(_, s)| PathBuf::from(s.trim()));
                }
            }
            if let Some((_, rest)) = line.split_once(" secondary listening ") {
                for field in rest.split_whitespace() {
                    if let Some(a) = field.strip_prefix("tcp=") {
                        node.tcp = a.parse().ok();
                    }
                    if let Some(a) = field.strip_prefix("quic=") {
                        node.quic = a.parse().ok();
                    }
                }
            }
        }
        Ok(node)
    }

    /// This node's config with its listening addresses fixed to the ports
    /// it got, so a restart is found again by its primary.
    pub fn fixed_config(&self) -> NodeConfig {
        let mut c = self.config.clone();
        let v = &mut c.volumes[0];
        v.listen_tcp = v.listen_tcp.and(self.tcp);
        v.listen_quic = v.listen_quic.and(self.quic);
        c
    }

    /// Restarts the node (after a stop or kill) with the same config file.
    pub fn restart(&mut self) -> Result<()> {
        let dir = self.proc.log.parent().expect("log dir").to_path_buf();
        *self = NodeProc::start(&dir, &self.config_path)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGTERM; an error unless it exits 0.
    pub fn stop(&mut self) -> Result<()> {
        self.proc.stop(STOP_LIMIT)
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(&mut self) {
        self.proc.kill9()
    }

    pub fn status(&self) -> Result<NodeStatus> {
        Ok(control::status(&self.config.node.control_socket)?)
    }

    /// The first volume's status.
    pub fn volume(&self) -> Result<VolumeStatus> {
        self.status()?
            .volumes
            .into_iter()
            .next()
            .map(|v| v.status)
            .ok_or_else(|| HarnessError::Check(format!("{} lists no volume", self.name)))
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}

/// Polls `cond` on `node`'s first volume every 50 ms until it holds; on
/// timeout the error carries the last status and the log tails of `logs`.
pub fn wait_for(
    what: &str,
    node: &NodeProc,
    logs: &[&NodeProc],
    limit: Duration,
    mut cond: impl FnMut(&VolumeStatus) -> bool,
) -> Result<VolumeStatus> {
    let start = Instant::now();
    loop {
        let last = match node.volume() {
            Ok(v) if cond(&v) => return Ok(v),
            Ok(v) => format!("{v:#?}"),
            Err(e) => format!("status failed: {e}"),
        };
        if start.elapsed() > limit {
            let tails: Vec<String> = std::iter::once(node)
                .chain(logs.iter().copied())
                .map(|n| n.log_tail(25))
                .collect();
            return Err(HarnessError::Timeout {
                what: what.into(),
                limit,
                context: format!(
                    "last status of {}:\n{last}\n{}",
                    node.name,
                    tails.join("\n")
                ),
            });
        }
        std::thread::sleep(POLL.max(Duration::from_millis(50)));
    }
}

/// Connected, and its copy proved to be the primary's: no resync or
/// verify running, nothing owed.
pub fn up_to_date(p: &PeerStatus) -> bool {
    p.connection == ConnectionState::Connected
        && p.disk == DiskState::UpToDate
        && p.job.is_none()
        && p.dirty_regions == 0
}

/// Waits until every named peer of `primary` is up to date (an initial
/// sync of a new peer has run). A refused peer fails the wait at once.
pub fn wait_up_to_date(
    primary: &NodeProc,
    peers: &[&str],
    logs: &[&NodeProc],
) -> Result<VolumeStatus> {
    wait_peers(
        &format!("peers {peers:?} up to date"),
        primary,
        peers,
        logs,
        START_LIMIT,
        |_, p| up_to_date(p),
    )
}

/// Waits until every named peer is up to date with no lag and has acked
/// the primary's written LSN (which must not move: the workload is quiet).
/// A refused peer fails the wait at once, naming why.
pub fn wait_caught_up(
    primary: &NodeProc,
    peers: &[&str],
    logs: &[&NodeProc],
    limit: Duration,
) -> Result<VolumeStatus> {
    wait_peers(
        &format!("peers {peers:?} to catch up (up to date, lag 0, acked = written)"),
        primary,
        peers,
        logs,
        limit,
        |v, p| {
            up_to_date(p) && p.lag_records == 0 && p.lag_bytes == 0 && p.acked_lsn == v.written_lsn
        },
    )
}

fn wait_peers(
    what: &str,
    primary: &NodeProc,
    peers: &[&str],
    logs: &[&NodeProc],
    limit: Duration,
    ok: impl Fn(&VolumeStatus, &PeerStatus) -> bool,
) -> Result<VolumeStatus> {
    let mut refused = None;
    let result =
        wait_for(what, primary, logs, limit, |v| {
            if let Some(p) = v.peers.iter().find(|p| {
                peers.contains(&p.name.as_str()) && p.connection == ConnectionState::Refused
            }) {
                refused = Some(format!("{p:#?}"));
                return true;
            }
            peers
                .iter()
                .all(|name| v.peer(name).is_some_and(|p| ok(v, p)))
        })?;
    match refused {
        Some(p) => Err(HarnessError::Check(format!(
            "a peer was refused while waiting for {what}: {p}\n{}",
            primary.log_tail(20)
        ))),
        None => Ok(result),
    }
}

/// BLAKE3 of a whole file.
pub fn file_digest(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
    Ok(hasher.finalize())
}

/// Ok when the files are byte-identical; else names the first differing
/// 4 KiB block and how many differ.
pub fn compare_files(a: &Path, b: &Path) -> Result<()> {
    if file_digest(a)? == file_digest(b)? {
        return Ok(());
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| HarnessError::io(format!("reading {}", p.display()), e))
    };
    let (da, db) = (read(a)?, read(b)?);
    let differ = |(x, y): &(&[u8], &[u8])| x != y;
    let pairs: Vec<(&[u8], &[u8])> = da.chunks(4096).zip(db.chunks(4096)).collect();
    let first = pairs.iter().position(differ);
    Err(HarnessError::Check(format!(
        "{} and {} differ: sizes {} / {}, first differing 4 KiB block {first:?} (offset {:?}), {} blocks differ",
        a.display(),
        b.display(),
        da.len(),
        db.len(),
        first.map(|f| f * 4096),
        pairs.iter().filter(|p| differ(p)).count()
    )))
}

/// Panics unless the files are byte-identical (tests).
pub fn assert_same_files(a: &Path, b: &Path) {
    if let Err(e) = compare_files(a, b) {
        panic!("{e}");
    }
}

/// Reads `len` bytes at `offset` of a file (a stopped node's volume).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    buf
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: usize) -> Result<()> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, data)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

/// Creates a sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) -> Result<()> {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))
}
