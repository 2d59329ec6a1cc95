//! `driftless-torture`: seeded fault campaigns against a three-node cluster
//! of real processes (alpha and metro at the metro site, sync over TCP+TLS;
//! dr async over QUIC), under the recording workload (pipelined writes,
//! FLUSHes, TRIM and WRITE_ZEROES), with the invariants checked after every
//! fault by the one checker (`crate::checker`):
//!
//! - while the fault is on, a secondary is frozen (its links cut, what it
//!   journaled applied) and read: a copy that calls itself up to date or
//!   outdated must be a cut of the write order (invariant 2);
//! - a primary restarted after kill -9 holds every acknowledged write; a
//!   node promoted after one holds every write acknowledged before the last
//!   completed FLUSH (invariant 1);
//! - after the faults heal and the writes stop, the three copies are
//!   identical and hold every acknowledged write.
//!
//! A failure prints the seed and the schedule; `--seed` replays the
//! schedule.

mod net;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use node::config::{LossPolicy, NbdSection, NodeConfig, PeerSection, VolumeSection};
use node::control::{self, Request};
use replication::{DiskState, PeerMode, TransportKind, VolumeRole};

use crate::checker::{
    check_cut, check_holds, check_same, read_blocks_nbd, Record, Required, Workload, WorkloadCfg,
};
use crate::cluster::{free_port, quick_quic, up_to_date, NodeProc, Site, MIB, VOLUME};
use crate::error::{HarnessError, Result};
use crate::proxy::{Protocol, Proxy, ProxyHandle};
use schedule::{Fault, Interrupt, Schedule, ALPHA, DR, METRO, NODES};

/// The volume: small, so that reading every copy each cycle is cheap.
const VOLUME_BYTES: u64 = 16 * MIB;
/// Workload blocks (4 KiB each), one per 16 KiB.
const BLOCKS: u32 = 1024;
const STRIDE: u64 = 16 << 10;
/// A small journal, so that a DR outage of a few seconds overflows it.
const JOURNAL_BYTES: u64 = 6 * MIB;
const SEGMENT_BYTES: u64 = 2 * MIB;
const MAX_WRITE_BYTES: u32 = 1 << 20;
/// How long the DR link is down for the journal to overflow at the
/// workload's rate (about 4 MB/s of 4 KiB writes).
const DR_OUTAGE: Duration = Duration::from_millis(2500);
/// Healing: every peer up to date again.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// A frozen secondary applies what it journaled within this.
const FREEZE_LIMIT: Duration = Duration::from_secs(20);
/// Role changes are retried while refused (a primary still connected).
const PROMOTE_LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct TortureArgs {
    /// The schedule's seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cycles: one fault each, then the checks.
    #[arg(long, default_value_t = 10)]
    pub cycles: u32,
    /// Work directory (default: a temporary one, removed unless --keep or
    /// a failure).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the work directory (configs, volumes, logs).
    #[arg(long)]
    pub keep: bool,
    /// Network namespaces per node (partitions as links down, netem):
    /// auto = when root.
    #[arg(long, value_enum, default_value = "auto")]
    pub netns: NetnsMode,
    /// Print the schedule and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsMode {
    Auto,
    On,
    Off,
}

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub cycles: u32,
    pub faults: BTreeMap<&'static str, u32>,
    /// Writes acknowledged, and FLUSHes completed, over the campaign.
    pub acked: u64,
    pub flushes: u64,
    /// Requests answered with an error (refused while fenced or demoted,
    /// cut by a crash): their outcome is recorded as unknown.
    pub failed: u64,
    /// Frozen copies checked as cuts of the write order (invariant 2), and
    /// those skipped because the copy said it was inconsistent (resync).
    pub cuts_checked: u32,
    pub cuts_inconsistent: u32,
    /// Copies checked for every acknowledged (or flushed) write.
    pub holds_checked: u32,
    /// Quiesced three-way comparisons.
    pub identical: u32,
    /// How network faults were made, and what could not be.
    pub network: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "campaign seed {}: {} cycles, 0 violations",
            self.seed, self.cycles
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  faults: {}", faults.join(", "))?;
        writeln!(
            f,
            "  writes acknowledged {}, FLUSHes {}, requests failed (outcome unknown) {}",
            self.acked, self.flushes, self.failed
        )?;
        writeln!(
            f,
            "  checks: {} frozen copies were cuts of the write order ({} skipped: inconsistent, resyncing), {} copies held every acknowledged or flushed write, {} times three identical copies",
            self.cuts_checked, self.cuts_inconsistent, self.holds_checked, self.identical
        )?;
        write!(f, "  network: {}", self.network)
    }
}

/// Runs a campaign; an error names the seed, the cycle and the schedule.
pub fn run(args: &TortureArgs) -> Result<Summary> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let schedule = Schedule::new(seed, args.cycles, DR_OUTAGE);
    if args.dry_run {
        print!("{schedule}");
        return Ok(Summary {
            seed,
            ..Summary::default()
        });
    }
    let site = match &args.dir {
        Some(d) => Site::at(d)?,
        None => Site::temp()?,
    };
    let dir = site.dir.clone();
    println!(
        "torture: seed {seed}, {} cycles, in {}",
        args.cycles,
        dir.display()
    );
    let mut campaign = Campaign::start(site, args.netns, seed)?;
    for (i, cycle) in schedule.cycles.iter().enumerate() {
        let started = Instant::now();
        let what = format!("cycle {}/{}: {}", i + 1, args.cycles, cycle.fault);
        match campaign.cycle(cycle) {
            Ok(checks) => println!(
                "torture: {what}: ok in {:.1} s ({checks})",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                campaign.keep_dir();
                return Err(HarnessError::Check(format!(
                    "torture seed {seed}: {what}: {e}\n{schedule}\nreplay: driftless-torture --seed {seed} --cycles {}\nwork directory (kept): {}\n{}",
                    args.cycles,
                    dir.display(),
                    campaign.log_tails(),
                )));
            }
        }
        *campaign
            .summary
            .faults
            .entry(cycle.fault.kind())
            .or_default() += 1;
    }
    campaign.finish()?;
    if args.keep {
        campaign.keep_dir();
    }
    let mut summary = std::mem::take(&mut campaign.summary);
    summary.seed = seed;
    summary.cycles = args.cycles;
    Ok(summary)
}

/// Where the network puts things.
enum Network {
    Loopback,
    Namespaces(net::Netns),
}

struct Campaign {
    // Dropped in this order: the writes stop, the nodes die, then the
    // links, the namespaces and last the work directory.
    workload: Option<Workload>,
    nodes: Vec<Option<NodeProc>>,
    /// The link from one node to another, by (from, to).
    proxies: HashMap<(usize, usize), ProxyHandle>,
    /// Runs the proxies (dropping it stops them).
    _runtime: tokio::runtime::Runtime,
    network: Network,
    /// Links cut by the fault and by a freeze, apart.
    fault_cuts: Vec<(usize, usize)>,
    primary: usize,
    /// The record between sessions.
    record: Option<Record>,
    summary: Summary,
    config_paths: Vec<PathBuf>,
    site: Site,
}

fn workload_cfg() -> WorkloadCfg {
    WorkloadCfg {
        blocks: BLOCKS,
        stride: STRIDE,
        depth: 8,
        flush_every: 16,
        pace: Some(Duration::from_micros(700)),
        trim_percent: 4,
        zero_percent: 4,
    }
}

impl Campaign {
    fn start(site: Site, mode: NetnsMode, seed: u64) -> Result<Campaign> {
        let root = crate::process::is_root();
        let (network, fallback) = match (mode, root) {
            (NetnsMode::Off, _) => (Network::Loopback, None),
            (NetnsMode::Auto, false) => (
                Network::Loopback,
                Some("not root: no network namespaces".to_string()),
            ),
            (NetnsMode::On, false) => {
                return Err(HarnessError::Check(
                    "--netns on needs root (network namespaces)".into(),
                ))
            }
            (NetnsMode::On, true) => (Network::Namespaces(net::Netns::create(NODES.len())?), None),
            // A root without the right (a container) still runs the campaign.
            (NetnsMode::Auto, true) => match net::Netns::create(NODES.len()) {
                Ok(ns) => (Network::Namespaces(ns), None),
                Err(e) => (
                    Network::Loopback,
                    Some(format!("network namespaces could not be made ({e})")),
                ),
            },
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("torture-proxy")
            .build()
            .map_err(|e| HarnessError::io("starting the proxies' runtime", e))?;
        let network_note = match &network {
            Network::Loopback => format!(
                "loopback ({}: partitions cut every proxy of a node; delay and loss by the proxy)",
                fallback.as_deref().unwrap_or("--netns off")
            ),
            Network::Namespaces(ns) => match &ns.netem_missing {
                None => "a network namespace per node (partitions: links down; delay and loss: netem)".to_string(),
                Some(why) => format!(
                    "a network namespace per node (partitions: links down); netem unavailable ({why}): delay and loss by the proxy"
                ),
            },
        };
        println!("torture: network: {network_note}");
        // Listening ports, fixed so that every config can name them.
        let listen: Vec<SocketAddr> = (0..NODES.len())
            .map(|n| {
                let ip = match &network {
                    Network::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Network::Namespaces(ns) => ns.node_ip(n),
                };
                Ok(SocketAddr::new(ip, free_port()?))
            })
            .collect::<Result<_>>()?;
        let mut proxies = HashMap::new();
        for from in 0..NODES.len() {
            for to in (0..NODES.len()).filter(|&t| t != from) {
                let bind = match &network {
                    Network::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Network::Namespaces(ns) => ns.root_ip(from),
                };
                let protocol = if to == DR {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                let proxy = runtime.block_on(Proxy::start(
                    protocol,
                    SocketAddr::new(bind, 0),
                    listen[to],
                    Duration::ZERO,
                ))?;
                proxies.insert((from, to), proxy);
            }
        }
        let mut config_paths = Vec::new();
        for (n, name) in NODES.iter().enumerate() {
            let role = if n == ALPHA {
                VolumeRole::Primary
            } else {
                VolumeRole::Secondary
            };
            let mut v: VolumeSection = site.volume_section(name, VOLUME_BYTES, role);
            v.journal_size = JOURNAL_BYTES;
            v.journal_segment_size = SEGMENT_BYTES;
            v.max_write = MAX_WRITE_BYTES;
            v.checkpoint_interval = Duration::from_secs(1);
            v.on_sync_peer_loss = LossPolicy::Suspend;
            v.suspend_timeout = Duration::from_secs(2);
            v.keepalive_interval = Duration::from_millis(200);
            v.peer_timeout = Duration::from_secs(1);
            v.nbd = Some(NbdSection {
                unix: Some(site.nbd_socket(name)),
                listen: None,
                export: None,
            });
            let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), listen[n].port());
            let bind = match network {
                Network::Loopback => listen[n],
                Network::Namespaces(_) => any,
            };
            if n == DR {
                v.listen_quic = Some(bind);
            } else {
                v.listen_tcp = Some(bind);
            }
            for to in (0..NODES.len()).filter(|&t| t != n) {
                let (mode, transport) = if to == DR {
                    (PeerMode::Async, TransportKind::Quic)
                } else {
                    (PeerMode::Sync, TransportKind::Tcp)
                };
                v.peers.push(PeerSection::new(
                    NODES[to],
                    mode,
                    transport,
                    proxies[&(n, to)].local_addr(),
                ));
            }
            let mut config: NodeConfig = site.config(name, v)?;
            config.quic = quick_quic();
            config_paths.push(site.write_config(&config, "torture")?);
        }
        let mut campaign = Campaign {
            site,
            _runtime: runtime,
            network,
            config_paths,
            nodes: (0..NODES.len()).map(|_| None).collect(),
            proxies,
            fault_cuts: Vec::new(),
            primary: ALPHA,
            workload: None,
            record: None,
            summary: Summary {
                network: network_note,
                seed,
                ..Summary::default()
            },
        };
        // Secondaries first: the primary's initial sync finds them.
        for n in [METRO, DR, ALPHA] {
            campaign.start_node(n)?;
        }
        campaign.settle()?;
        Ok(campaign)
    }

    fn start_node(&mut self, n: usize) -> Result<()> {
        let wrapper = match &self.network {
            Network::Loopback => Vec::new(),
            Network::Namespaces(ns) => ns.wrapper(n),
        };
        self.nodes[n] = Some(NodeProc::start_in(
            &self.site.dir,
            &self.config_paths[n],
            &wrapper,
        )?);
        Ok(())
    }

    fn node(&self, n: usize) -> Result<&NodeProc> {
        self.nodes[n]
            .as_ref()
            .ok_or_else(|| HarnessError::Check(format!("{} is not running", NODES[n])))
    }

    fn kill(&mut self, n: usize) {
        if let Some(mut node) = self.nodes[n].take() {
            node.kill9();
        }
    }

    /// The link from `from` to `to` and back: cut while the fault or a
    /// freeze wants it.
    fn apply_cuts(&self, frozen: Option<usize>) {
        for (&(from, to), proxy) in &self.proxies {
            let cut = self.fault_cuts.contains(&(from, to))
                || frozen.is_some_and(|f| f == to || f == from);
            if cut {
                proxy.cut();
            } else {
                proxy.restore();
            }
        }
    }

    /// Starts or resumes the workload on the primary's export.
    fn ensure_workload(&mut self) -> Result<()> {
        if self.workload.is_some() {
            return Ok(());
        }
        let socket = self.site.nbd_socket(NODES[self.primary]);
        let w = match self.record.take() {
            None => Workload::start(&socket, VOLUME, workload_cfg())?,
            Some(r) => Workload::resume(&socket, VOLUME, workload_cfg(), r)?,
        };
        self.workload = Some(w);
        Ok(())
    }

    /// Stops the workload (or collects it after its server died).
    fn stop_workload(&mut self) -> Result<()> {
        if let Some(w) = self.workload.take() {
            let record = w.finish();
            // Requests may fail (refused while fenced or demoted); nothing
            // else may go wrong.
            if record.errors.len() != record.failed.len() {
                return Err(HarnessError::Check(format!(
                    "workload anomalies: {:?}",
                    record.errors
                )));
            }
            self.record = Some(record);
        }
        Ok(())
    }

    /// The record as of now (the workload may be running).
    fn record_now(&self) -> Option<Record> {
        match &self.workload {
            Some(w) => Some(w.with(|r| r.clone())),
            None => self.record.clone(),
        }
    }

    fn read(&self, n: usize) -> Result<Vec<Vec<u8>>> {
        read_blocks_nbd(&self.site.nbd_socket(NODES[n]), VOLUME, BLOCKS, STRIDE)
    }

    /// One cycle: the fault, a freeze of the probe while it is on, healing,
    /// then the checks. Returns what was checked.
    fn cycle(&mut self, c: &schedule::Cycle) -> Result<String> {
        if self.primary != c.primary {
            return Err(HarnessError::Check(format!(
                "the schedule expects {} primary, it is {}",
                NODES[c.primary], NODES[self.primary]
            )));
        }
        let mut checks = Vec::new();
        self.ensure_workload()?;
        std::thread::sleep(c.warmup);
        let half = |d: Duration| d / 2;
        match c.fault.clone() {
            Fault::KillRestart { node, down } => {
                self.kill(node);
                if node != c.probe {
                    checks.push(self.probe(c.probe)?);
                }
                std::thread::sleep(down);
                if node == self.primary {
                    self.stop_workload()?;
                    self.start_node(node)?;
                    // kill -9 keeps the page cache: nothing acknowledged
                    // may be missing on the restarted primary.
                    checks.push(self.check_holds(node, Required::Acked)?);
                } else {
                    self.start_node(node)?;
                }
            }
            Fault::CutLink { to, time } => {
                self.fault_cuts = vec![(self.primary, to), (to, self.primary)];
                self.apply_cuts(None);
                std::thread::sleep(half(time));
                checks.push(self.probe(c.probe)?);
                std::thread::sleep(half(time));
            }
            Fault::DelayLink { to, delay, time } => {
                self.shape(to, delay, 0)?;
                std::thread::sleep(half(time));
                checks.push(self.probe(c.probe)?);
                std::thread::sleep(half(time));
                self.shape(to, Duration::ZERO, 0)?;
            }
            Fault::LossLink {
                to,
                per_mille,
                time,
            } => {
                self.shape(to, Duration::ZERO, per_mille)?;
                std::thread::sleep(half(time));
                checks.push(self.probe(c.probe)?);
                std::thread::sleep(half(time));
                self.shape(to, Duration::ZERO, 0)?;
            }
            Fault::Partition { node, time } => {
                self.partition(node, true)?;
                std::thread::sleep(half(time));
                if node != c.probe {
                    checks.push(self.probe(c.probe)?);
                }
                std::thread::sleep(half(time));
                self.partition(node, false)?;
            }
            Fault::Switchover { to } => {
                let old = self.primary;
                let said = control::command(
                    &self.site.control(NODES[old]),
                    &Request::Demote {
                        volume: VOLUME.into(),
                    },
                )?;
                self.stop_workload()?;
                self.promote(to)?;
                checks.push(format!("demoted {}: {said}", NODES[old]));
            }
            Fault::Failover { to } => {
                let old = self.primary;
                self.kill(old);
                self.stop_workload()?;
                self.promote(to)?;
                // `to` was an up-to-date sync peer: it journaled every
                // write before the dead primary acknowledged it.
                checks.push(self.check_holds(to, Required::Acked)?);
                self.start_node(old)?;
            }
            Fault::InterruptedResync {
                peer,
                outage,
                interrupt,
            } => {
                self.fault_cuts = vec![(self.primary, peer), (peer, self.primary)];
                self.apply_cuts(None);
                std::thread::sleep(outage);
                let owed = self.wait_primary(
                    "the peer to be owed regions",
                    Duration::from_secs(15),
                    |v| v.peer(NODES[peer]).is_some_and(|p| p.dirty_regions > 0),
                );
                self.fault_cuts.clear();
                self.apply_cuts(None);
                match owed {
                    Ok(_) => {
                        let resyncing = self.wait_primary(
                            "the resync to start",
                            Duration::from_secs(15),
                            |v| v.peer(NODES[peer]).is_some_and(|p| p.job.is_some()),
                        );
                        checks.push(match resyncing {
                            Ok(_) => format!("{} resyncing, interrupted", NODES[peer]),
                            Err(_) => {
                                format!("{}'s resync ended before the interrupt", NODES[peer])
                            }
                        });
                    }
                    Err(_) => checks.push(format!(
                        "{} was not folded (the journal held the outage)",
                        NODES[peer]
                    )),
                }
                match interrupt {
                    Interrupt::Kill => {
                        self.kill(peer);
                        std::thread::sleep(Duration::from_millis(300));
                        self.start_node(peer)?;
                    }
                    Interrupt::Cut => {
                        self.fault_cuts = vec![(self.primary, peer), (peer, self.primary)];
                        self.apply_cuts(None);
                        checks.push(self.probe(peer)?);
                        std::thread::sleep(Duration::from_millis(700));
                    }
                }
            }
        }
        self.fault_cuts.clear();
        self.apply_cuts(None);
        self.settle()?;
        checks.push(self.quiesce_and_compare()?);
        Ok(checks.join("; "))
    }

    /// Delay and loss on the links between the primary and `to`.
    fn shape(&self, to: usize, delay: Duration, loss_per_mille: u16) -> Result<()> {
        if let Network::Namespaces(ns) = &self.network {
            if ns.netem_missing.is_none() {
                return ns.set_netem(to, delay, loss_per_mille);
            }
        }
        for key in [(self.primary, to), (to, self.primary)] {
            let p = &self.proxies[&key];
            p.set_delay(delay);
            p.set_loss(f64::from(loss_per_mille) / 1000.0);
        }
        Ok(())
    }

    fn partition(&mut self, node: usize, on: bool) -> Result<()> {
        match &self.network {
            Network::Namespaces(ns) => ns.set_partitioned(node, on),
            Network::Loopback => {
                self.fault_cuts = if on {
                    (0..NODES.len())
                        .filter(|&o| o != node)
                        .flat_map(|o| [(o, node), (node, o)])
                        .collect()
                } else {
                    Vec::new()
                };
                self.apply_cuts(None);
                Ok(())
            }
        }
    }

    /// Freezes secondary `n` (its links cut, what it journaled applied),
    /// reads it and, unless it says it is inconsistent, checks that it is a
    /// cut of the write order. Then thaws it.
    fn probe(&mut self, n: usize) -> Result<String> {
        if n == self.primary || self.nodes[n].is_none() {
            return Ok(format!("probe of {} skipped", NODES[n]));
        }
        self.apply_cuts(Some(n));
        let result = self.probe_frozen(n);
        self.apply_cuts(None);
        result
    }

    fn probe_frozen(&mut self, n: usize) -> Result<String> {
        let node = self.node(n)?;
        let start = Instant::now();
        // No session feeds it: what it journaled gets applied.
        let before = loop {
            let v = node.volume()?;
            let upstream_gone = v.upstream.as_ref().is_none_or(|u| !u.connected);
            if upstream_gone && v.applied_lsn == v.written_lsn {
                break v;
            }
            if start.elapsed() > FREEZE_LIMIT {
                return Err(HarnessError::Check(format!(
                    "frozen {} did not settle: {v:#?}",
                    NODES[n]
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let contents = self.read(n)?;
        let after = node.volume()?;
        if (after.written_lsn, after.applied_lsn) != (before.written_lsn, before.applied_lsn) {
            return Err(HarnessError::Check(format!(
                "frozen {} changed while read: {before:#?} then {after:#?}",
                NODES[n]
            )));
        }
        if after.disk == DiskState::Inconsistent || before.disk == DiskState::Inconsistent {
            self.summary.cuts_inconsistent += 1;
            return Ok(format!(
                "{} inconsistent (resyncing): no cut to check",
                NODES[n]
            ));
        }
        let record = self
            .record_now()
            .ok_or_else(|| HarnessError::Check("no workload record to check against".into()))?;
        let holding = check_cut(&contents, &record).map_err(|e| {
            HarnessError::Check(format!(
                "invariant 2: frozen {} ({}) is not a prefix: {e}",
                NODES[n], after.disk
            ))
        })?;
        self.summary.cuts_checked += 1;
        Ok(format!(
            "frozen {} ({}, LSN {}) a cut ({holding} blocks written)",
            NODES[n], after.disk, after.applied_lsn
        ))
    }

    /// Node `n` holds every write `required` names (its export read now).
    fn check_holds(&mut self, n: usize, required: Required) -> Result<String> {
        let record = self
            .record_now()
            .ok_or_else(|| HarnessError::Check("no workload record to check against".into()))?;
        let contents = self.read(n)?;
        let blocks = check_holds(&contents, &record, required).map_err(|e| {
            HarnessError::Check(format!(
                "invariant 1: {} misses a write ({required:?}): {e}",
                NODES[n]
            ))
        })?;
        self.summary.holds_checked += 1;
        Ok(format!(
            "{} holds every {required:?} write ({blocks} blocks)",
            NODES[n]
        ))
    }

    /// Makes `to` the primary (retried while refused: the old primary may
    /// still be seen connected for a moment) and resumes the workload there.
    fn promote(&mut self, to: usize) -> Result<()> {
        let start = Instant::now();
        loop {
            match control::command(
                &self.site.control(NODES[to]),
                &Request::Promote {
                    volume: VOLUME.into(),
                    force: false,
                },
            ) {
                Ok(_) => break,
                Err(e) if start.elapsed() < PROMOTE_LIMIT => {
                    tracing::debug!(error = %e, "promote refused; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(HarnessError::Check(format!("promoting {}: {e}", NODES[to]))),
            }
        }
        self.primary = to;
        Ok(())
    }

    fn wait_primary(
        &self,
        what: &str,
        limit: Duration,
        cond: impl FnMut(&replication::VolumeStatus) -> bool,
    ) -> Result<replication::VolumeStatus> {
        crate::cluster::wait_for(what, self.node(self.primary)?, &[], limit, cond)
    }

    /// Heals everything, restarts what is down, and waits until the
    /// primary takes writes and every peer is up to date.
    fn settle(&mut self) -> Result<()> {
        self.fault_cuts.clear();
        self.apply_cuts(None);
        if let Network::Namespaces(ns) = &self.network {
            for n in 0..NODES.len() {
                ns.set_partitioned(n, false)?;
                if ns.netem_missing.is_none() {
                    ns.set_netem(n, Duration::ZERO, 0)?;
                }
            }
        }
        for proxy in self.proxies.values() {
            proxy.set_delay(Duration::ZERO);
            proxy.set_loss(0.0);
        }
        for n in 0..NODES.len() {
            if self.nodes[n].is_none() {
                self.start_node(n)?;
            }
        }
        let others: Vec<&str> = (0..NODES.len())
            .filter(|&n| n != self.primary)
            .map(|n| NODES[n])
            .collect();
        let logs: Vec<&NodeProc> = self.nodes.iter().flatten().collect();
        crate::cluster::wait_for(
            "the primary unfenced with every peer up to date",
            self.node(self.primary)?,
            &logs,
            SETTLE_LIMIT,
            |v| {
                v.role == VolumeRole::Primary
                    && v.fenced.is_none()
                    && others.iter().all(|o| v.peer(o).is_some_and(up_to_date))
            },
        )?;
        Ok(())
    }

    /// Stops the writes, waits until every peer acknowledged all of them,
    /// and compares the three copies with each other and with the record.
    fn quiesce_and_compare(&mut self) -> Result<String> {
        self.stop_workload()?;
        let others: Vec<&str> = (0..NODES.len())
            .filter(|&n| n != self.primary)
            .map(|n| NODES[n])
            .collect();
        let logs: Vec<&NodeProc> = self.nodes.iter().flatten().collect();
        crate::cluster::wait_caught_up(self.node(self.primary)?, &others, &logs, SETTLE_LIMIT)?;
        // Every copy applied what it journaled.
        for n in 0..NODES.len() {
            crate::cluster::wait_for(
                "the copy applied everything",
                self.node(n)?,
                &[],
                FREEZE_LIMIT,
                |v| v.applied_lsn == v.written_lsn,
            )?;
        }
        let record = self
            .record
            .clone()
            .ok_or_else(|| HarnessError::Check("no workload record".into()))?;
        let copies: Vec<Vec<Vec<u8>>> = (0..NODES.len())
            .map(|n| self.read(n))
            .collect::<Result<_>>()?;
        check_holds(&copies[self.primary], &record, Required::Acked).map_err(|e| {
            HarnessError::Check(format!(
                "invariant 1: primary {} misses a write: {e}",
                NODES[self.primary]
            ))
        })?;
        check_cut(&copies[self.primary], &record)
            .map_err(|e| HarnessError::Check(format!("invariant 2 on the quiet primary: {e}")))?;
        for n in (0..NODES.len()).filter(|&n| n != self.primary) {
            check_same(&copies[self.primary], &copies[n]).map_err(|e| {
                HarnessError::Check(format!(
                    "{} differs from primary {} after quiescing: {e}",
                    NODES[n], NODES[self.primary]
                ))
            })?;
        }
        self.summary.holds_checked += 1;
        self.summary.identical += 1;
        self.summary.acked = record.acked();
        self.summary.flushes = record.flushes_acked;
        self.summary.failed = record.failed.len() as u64;
        Ok(format!(
            "quiet: 3 identical copies, {} writes acknowledged in all",
            record.acked()
        ))
    }

    /// Stops every node cleanly (each must exit 0).
    fn finish(&mut self) -> Result<()> {
        self.stop_workload()?;
        for n in 0..NODES.len() {
            if let Some(mut node) = self.nodes[n].take() {
                node.stop()?;
            }
        }
        Ok(())
    }

    /// Keeps the work directory past the campaign.
    fn keep_dir(&mut self) {
        self.site.keep();
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.log_tail(25))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
