//! Several `driftless run` nodes on loopback: certificates, node configs,
//! processes (killed on drop), `status --json`, waiting for catch-up and
//! comparing volume files.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{driftless_bin, run_ok, signal, wait_timeout};

const CLI_LIMIT: Duration = Duration::from_secs(30);
const START_LIMIT: Duration = Duration::from_secs(20);

/// A CA directory with node certificates made by `driftless cert`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        run_ok(
            Command::new(driftless_bin())
                .args(["cert", "ca", "--dir"])
                .arg(dir),
            CLI_LIMIT,
        )?;
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// Creates NAME.pem / NAME.key signed by this CA.
    pub fn node(&self, name: &str) -> Result<Tls> {
        run_ok(
            Command::new(driftless_bin())
                .args(["cert", "node", "--name", name, "--ca-dir"])
                .arg(&self.dir)
                .arg("--dir")
                .arg(&self.dir),
            CLI_LIMIT,
        )?;
        Ok(self.tls(name))
    }

    pub fn tls(&self, name: &str) -> Tls {
        Tls {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            ca: self.dir.join("ca.pem"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Quic,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Tcp => "tcp",
            Via::Quic => "quic",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub name: String,
    pub sync: bool,
    pub via: Via,
    pub address: SocketAddr,
}

/// One `[[volume]]` of a node config.
#[derive(Clone, Debug)]
pub struct VolumeSpec {
    pub name: String,
    pub uuid: String,
    pub path: PathBuf,
    pub size: String,
    /// Secondary: where to listen (port 0 picks one).
    pub listen_tcp: Option<SocketAddr>,
    pub listen_quic: Option<SocketAddr>,
    /// Primary: NBD Unix socket and peers.
    pub nbd_unix: Option<PathBuf>,
    pub peers: Vec<PeerSpec>,
    /// Extra `key = value` lines (values already in TOML syntax).
    pub extra: Vec<(String, String)>,
}

impl VolumeSpec {
    pub fn primary(uuid: &str, path: &Path, size: &str, nbd_unix: &Path) -> VolumeSpec {
        VolumeSpec {
            name: "vol0".into(),
            uuid: uuid.into(),
            path: path.to_path_buf(),
            size: size.into(),
            listen_tcp: None,
            listen_quic: None,
            nbd_unix: Some(nbd_unix.to_path_buf()),
            peers: Vec::new(),
            extra: test_defaults(),
        }
    }

    pub fn secondary(uuid: &str, path: &Path, size: &str, via: Via) -> VolumeSpec {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        VolumeSpec {
            name: "vol0".into(),
            uuid: uuid.into(),
            path: path.to_path_buf(),
            size: size.into(),
            listen_tcp: (via == Via::Tcp).then_some(any),
            listen_quic: (via == Via::Quic).then_some(any),
            nbd_unix: None,
            peers: Vec::new(),
            extra: test_defaults(),
        }
    }

    pub fn peer(mut self, name: &str, sync: bool, via: Via, address: SocketAddr) -> Self {
        self.peers.push(PeerSpec {
            name: name.into(),
            sync,
            via,
            address,
        });
        self
    }

    /// Sets (or replaces) `key = value`; `value` in TOML syntax (`"\"1s\""`).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// Small journals and quick reconnects: tests restart peers and want them
/// back within a second.
fn test_defaults() -> Vec<(String, String)> {
    [
        ("journal_size", "\"256MiB\""),
        ("journal_segment_size", "\"64MiB\""),
        ("reconnect_min", "\"50ms\""),
        ("reconnect_max", "\"300ms\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Renders a node config.
pub fn node_config(name: &str, control: &Path, tls: &Tls, volumes: &[VolumeSpec]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[node]\nname = {name:?}\ncontrol_socket = {}\n",
        toml_path(control)
    );
    let _ = writeln!(
        t,
        "[tls]\ncert = {}\nkey = {}\nca = {}\n",
        toml_path(&tls.cert),
        toml_path(&tls.key),
        toml_path(&tls.ca)
    );
    for v in volumes {
        let role = if v.nbd_unix.is_some() {
            "primary"
        } else {
            "secondary"
        };
        let _ = writeln!(
            t,
            "[[volume]]\nname = {:?}\nuuid = {:?}\npath = {}\nsize = {:?}\nrole = {role:?}",
            v.name,
            v.uuid,
            toml_path(&v.path),
            v.size
        );
        if let Some(a) = v.listen_tcp {
            let _ = writeln!(t, "listen_tcp = \"{a}\"");
        }
        if let Some(a) = v.listen_quic {
            let _ = writeln!(t, "listen_quic = \"{a}\"");
        }
        for (k, val) in &v.extra {
            let _ = writeln!(t, "{k} = {val}");
        }
        if let Some(sock) = &v.nbd_unix {
            let _ = writeln!(t, "\n[volume.nbd]\nunix = {}", toml_path(sock));
        }
        for p in &v.peers {
            let _ = writeln!(
                t,
                "\n[[volume.peer]]\nname = {:?}\nmode = {:?}\ntransport = {:?}\naddress = \"{}\"",
                p.name,
                if p.sync { "sync" } else { "async" },
                p.via.name(),
                p.address
            );
        }
        t.push('\n');
    }
    t
}

/// A running `driftless run` process; SIGKILLed on drop if still running.
pub struct Node {
    child: Option<Child>,
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    stdout: PathBuf,
    /// `nbd+unix:///vol0?socket=...` of a primary.
    pub nbd_uri: Option<String>,
    pub nbd_socket: Option<PathBuf>,
    /// Listening addresses of a secondary, as printed.
    pub tcp: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
}

impl Node {
    /// Writes `DIR/NAME.toml` from `config_text`, starts the node with stdout
    /// and stderr in files, and waits for `node NAME ready`.
    pub fn start(dir: &Path, name: &str, config_text: &str) -> Result<Node> {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text)?;
        Self::start_config(dir, name, &config)
    }

    pub fn start_config(dir: &Path, name: &str, config: &Path) -> Result<Node> {
        let run = rand::random::<u32>();
        let log = dir.join(format!("{name}-{run}.log"));
        let stdout = dir.join(format!("{name}-{run}.out"));
        let child = Command::new(driftless_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning driftless run")?;
        let mut node = Node {
            child: Some(child),
            name: name.into(),
            config: config.to_path_buf(),
            log,
            stdout,
            nbd_uri: None,
            nbd_socket: None,
            tcp: None,
            quic: None,
        };
        node.wait_ready()?;
        Ok(node)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let ready = format!("node {} ready", self.name);
        loop {
            // Rust's stdout is line buffered: whole lines land in the file.
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if out.lines().any(|l| l.starts_with(&ready)) {
                for line in out.lines() {
                    if let Some(rest) = line.split_once(" serving ").map(|(_, r)| r) {
                        if rest.starts_with("nbd+unix://") {
                            self.nbd_uri = Some(rest.trim().to_string());
                            self.nbd_socket = rest
                                .split_once("?socket=")
                                .map(|(_, s)| PathBuf::from(s.trim()));
                        }
                    }
                    if let Some((_, rest)) = line.split_once(" secondary listening ") {
                        for field in rest.split_whitespace() {
                            if let Some(a) = field.strip_prefix("tcp=") {
                                self.tcp = a.parse().ok();
                            }
                            if let Some(a) = field.strip_prefix("quic=") {
                                self.quic = a.parse().ok();
                            }
                        }
                    }
                }
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                bail!(
                    "node {} exited before ready ({status}):\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if start.elapsed() > START_LIMIT {
                bail!(
                    "node {} not ready after {START_LIMIT:?}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM and a bounded wait.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("node not running")?;
        signal(child.id(), libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(40))
            .with_context(|| format!("node {}:\n{}", self.name, self.log_tail(30)))
    }

    /// SIGTERM; panics unless the node exits 0.
    pub fn stop(&mut self) {
        let status = self
            .terminate()
            .unwrap_or_else(|e| panic!("stopping {}: {e:#}", self.name));
        assert!(
            status.success(),
            "node {} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.log_tail(40)
        );
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `driftless status --config ... --json`.
    pub fn status(&self) -> Result<NodeStatus> {
        let out = run_ok(
            Command::new(driftless_bin())
                .args(["status", "--json", "--config"])
                .arg(&self.config),
            CLI_LIMIT,
        )?;
        serde_json::from_str(&out).with_context(|| format!("parsing status JSON: {out}"))
    }

    /// The first volume's status.
    pub fn volume(&self) -> Result<VolumeStatus> {
        self.status()?
            .volumes
            .into_iter()
            .next()
            .context("status lists no volume")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the node's log, headed by its name.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- {} log ({}), last {} lines ---\n{}",
            self.name,
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub volumes: Vec<VolumeStatus>,
}

/// Status as the daemon serializes it: the engine's own types (the volume's
/// name, flattened in beside them, is not needed here), so a renamed field
/// breaks these tests at compile time, not at parse time.
pub use replication::{PeerState, PeerStatus, VolumeStatus};

/// Polls `cond` on the primary's first volume every 50 ms until it holds;
/// on timeout panics with the last status and the log tails of `nodes`.
pub fn wait_for(
    what: &str,
    primary: &Node,
    nodes: &[&Node],
    limit: Duration,
    mut cond: impl FnMut(&VolumeStatus) -> bool,
) -> VolumeStatus {
    let start = Instant::now();
    loop {
        let last = match primary.volume() {
            Ok(v) => {
                if cond(&v) {
                    return v;
                }
                format!("{v:#?}")
            }
            Err(e) => format!("status failed: {e:#}"),
        };
        if start.elapsed() > limit {
            let logs: Vec<String> = std::iter::once(primary)
                .chain(nodes.iter().copied())
                .map(|n| n.log_tail(25))
                .collect();
            panic!(
                "timed out after {limit:?} waiting for {what}; last status of {}:\n{}\n{}",
                primary.name,
                last,
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every named peer is connected with no lag and has acked the
/// primary's written LSN (which must not move: the workload is quiet).
pub fn wait_caught_up(
    primary: &Node,
    peers: &[&str],
    nodes: &[&Node],
    limit: Duration,
) -> VolumeStatus {
    wait_for(
        &format!("peers {peers:?} to catch up (lag 0, acked = written)"),
        primary,
        nodes,
        limit,
        |v| {
            // Bitmap resync is a terminal state for a catch-up wait: fail now
            // with the reason rather than after the whole limit.
            for p in v.peers.iter().filter(|p| peers.contains(&p.name.as_str())) {
                assert!(
                    p.state != PeerState::NeedsResync,
                    "peer {} needs a resync while waiting for it to catch up: {p:#?}\n{}",
                    p.name,
                    primary.log_tail(20)
                );
            }
            peers.iter().all(|name| {
                v.peer(name).is_some_and(|p| {
                    p.state == PeerState::Connected
                        && p.lag_records == 0
                        && p.lag_bytes == 0
                        && p.acked_lsn == v.written_lsn
                })
            })
        },
    )
}

pub fn file_digest(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize())
}

/// Panics unless the files are byte-identical, naming the first differing
/// 4 KiB block.
pub fn assert_same_files(a: &Path, b: &Path) {
    if file_digest(a).unwrap() == file_digest(b).unwrap() {
        return;
    }
    let da = std::fs::read(a).unwrap();
    let db = std::fs::read(b).unwrap();
    let first = da
        .chunks(4096)
        .zip(db.chunks(4096))
        .position(|(x, y)| x != y);
    let differing = da
        .chunks(4096)
        .zip(db.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    panic!(
        "{} and {} differ: sizes {} / {}, first differing 4 KiB block {first:?} (offset {:?}), {differing} blocks differ",
        a.display(),
        b.display(),
        da.len(),
        db.len(),
        first.map(|f| f * 4096)
    );
}

/// Reads `len` bytes at `offset` of a file (a stopped node's volume).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// A running `driftless fault-proxy` between a primary and a peer; the link
/// is cut while the cut file exists. SIGKILLed on drop.
pub struct FaultProxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    cut_file: PathBuf,
    log: PathBuf,
}

impl FaultProxy {
    /// `driftless fault-proxy --protocol PROTOCOL --listen 127.0.0.1:0
    /// --upstream UPSTREAM [--delay DELAY] --cut-file DIR/proxy-N.cut`.
    pub fn start(
        dir: &Path,
        protocol: &str,
        upstream: SocketAddr,
        delay: Option<&str>,
    ) -> Result<FaultProxy> {
        let n = rand::random::<u32>();
        let cut_file = dir.join(format!("proxy-{n}.cut"));
        let log = dir.join(format!("proxy-{n}.log"));
        let stdout = dir.join(format!("proxy-{n}.out"));
        let mut cmd = Command::new(driftless_bin());
        cmd.args(["fault-proxy", "--protocol", protocol])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--cut-file")
            .arg(&cut_file);
        if let Some(d) = delay {
            cmd.args(["--delay", d]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning driftless fault-proxy")?;
        let start = Instant::now();
        let addr = loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(addr) = out
                .lines()
                .find_map(|l| l.split_once("proxy listening on ").map(|(_, a)| a.trim()))
            {
                break addr
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("parsing the proxy's address in {out:?}"))?;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "fault-proxy exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if start.elapsed() > START_LIMIT {
                let _ = child.kill();
                bail!("fault-proxy printed no address after {START_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(FaultProxy {
            child: Some(child),
            addr,
            cut_file,
            log,
        })
    }

    /// Cuts the link (creates the cut file).
    pub fn cut(&self) {
        std::fs::write(&self.cut_file, b"cut\n").expect("creating the cut file");
    }

    /// Restores the link (removes the cut file).
    pub fn restore(&self) {
        std::fs::remove_file(&self.cut_file).expect("removing the cut file");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
