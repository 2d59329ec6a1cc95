//! `driftless demo`: a primary ("alpha") with a sync metro peer over TCP+TLS
//! and an async DR peer over QUIC (through an in-process fault proxy), all
//! real `driftless run` processes on loopback. The recording workload
//! writes through NBD while the DR link is cut long enough to overflow the
//! primary's small journal: the DR peer falls behind past it (its missed
//! regions are kept in its dirty bitmap), and when the link is back it is
//! brought back by a bitmap resync with live progress. Then a planned
//! switchover to the metro peer and back (demote, promote: nothing is
//! resynced, the others follow each new primary). The nodes stop, and
//! every copy is checked: the three files are byte-identical and hold
//! exactly the last write to every block. Every wait is bounded and names
//! what did not happen.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use node::config::VolumeSection;
use node::control::{NodeStatus, Request};
use replication::{
    ConnectionState, DiskState, PeerMode, PeerStatus, ResyncReport, TransportKind, VolumeRole,
};

use crate::checker::{check_final, read_blocks, Workload, WorkloadCfg, BLOCK};
use crate::cluster::{compare_files, file_digest, quick_quic, Member, NodeProc, Site, VOLUME};
use crate::error::{HarnessError, Result};
use crate::proxy::{Protocol, Proxy, ProxyHandle};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long the write workload runs (the DR link is cut in the middle).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(8..=600))]
    pub seconds: u64,
    /// Volume size on each node ("64MiB", "1GiB").
    #[arg(long, value_parser = node::units::parse_bytes, default_value = "64MiB")]
    pub size: u64,
    /// Keep the work directory (configs, certificates, volumes, logs).
    #[arg(long)]
    pub keep: bool,
}

const VOLUME_MIN_BYTES: u64 = 4 << 20;
/// Three copies plus journals land in the temp directory.
const VOLUME_MAX_BYTES: u64 = 4 << 30;
/// Distinct 4 KiB blocks the workload writes (spread over the volume).
const WORKLOAD_BLOCKS: u32 = 4096;
/// Queue depth, and a pause after each send: about 4 MiB/s, enough to show
/// throughput and lag, modest for any laptop or CI runner.
const WORKLOAD_DEPTH: usize = 4;
const WORKLOAD_PACE: Duration = Duration::from_millis(1);
const FLUSH_EVERY_REQUESTS: u64 = 500;
/// How long the DR link stays cut (shortened for short runs): at the
/// workload's pace, more than the primary's journal holds.
const CUT_DURATION: Duration = Duration::from_secs(4);
/// The primary's journal: small, so the cut overflows it (4 segments).
const DEMO_JOURNAL_BYTES: u64 = 6 << 20;
const DEMO_SEGMENT_BYTES: u64 = 1536 << 10;
const DEMO_MAX_WRITE_BYTES: u32 = 512 << 10;
/// The resync's pace cap, so its progress can be watched for a few seconds.
const DEMO_RESYNC_RATE: u64 = 24 << 20;
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// sun_path is 108 bytes on Linux, including the NUL.
const UNIX_PATH_MAX_BYTES: usize = 107;
/// An async peer under a steady workload always has a write or two in
/// flight; "caught up" means the oldest unacknowledged write is this young.
const CAUGHT_UP_LAG: Duration = Duration::from_millis(100);

/// The work directory, removed on drop unless `--keep` (or a failed check).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> Result<WorkDir> {
        let base = std::env::temp_dir();
        let path = base.join(format!(
            "driftless-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&path)
            .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
        let dir = WorkDir { path, keep };
        // The longest socket path the nodes bind.
        if dir.path.join("alpha-nbd.sock").as_os_str().len() > UNIX_PATH_MAX_BYTES {
            return Err(HarnessError::Check(format!(
                "temp directory {} is too long for Unix socket paths; set TMPDIR to a shorter one",
                base.display()
            )));
        }
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept work directory {}", self.path.display());
        } else if let Err(err) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "driftless demo: cannot remove {}: {err}",
                self.path.display()
            );
        }
    }
}

/// Loopback timings: a cut link is noticed within a second or two.
fn demo_volume(mut v: node::config::VolumeSection) -> node::config::VolumeSection {
    v.checkpoint_interval = Duration::from_secs(2);
    v.keepalive_interval = Duration::from_millis(250);
    v.peer_timeout = Duration::from_millis(1500);
    v.reconnect_min = Duration::from_millis(100);
    v.reconnect_max = Duration::from_millis(500);
    v
}

pub fn run(args: DemoArgs) -> Result<()> {
    if !(VOLUME_MIN_BYTES..=VOLUME_MAX_BYTES).contains(&args.size)
        || !args.size.is_multiple_of(4096)
    {
        return Err(HarnessError::Check(format!(
            "--size must be a multiple of 4 KiB between {} and {}",
            fmt_bytes(VOLUME_MIN_BYTES),
            fmt_bytes(VOLUME_MAX_BYTES)
        )));
    }
    let started = Instant::now();
    let mut work = WorkDir::create(args.keep)?;
    // One tokio runtime for the in-process fault proxy; the rest is blocking.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("demo-proxy")
        .build()
        .map_err(|e| HarnessError::io("starting the tokio runtime", e))?;
    let result = scenario(&args, &work, &runtime, started);
    if matches!(result, Err(HarnessError::Check(_))) {
        work.keep = true; // keep the evidence
    }
    result
}

fn scenario(
    args: &DemoArgs,
    work: &WorkDir,
    runtime: &tokio::runtime::Runtime,
    started: Instant,
) -> Result<()> {
    println!(
        "driftless demo: primary alpha -> metro (sync, TCP+TLS) and dr (async, QUIC via a fault proxy)"
    );
    println!(
        "  volume {} on each node, {} s of writes; configs, volumes and node logs in {}",
        fmt_bytes(args.size),
        args.seconds,
        work.path.display()
    );
    // Certificates: one CA, one certificate per node, mutual TLS everywhere.
    let site = Site::at(&work.path)?;
    println!("  created a CA; each node gets a certificate signed by it");

    // Every node lists the other two: any of them can be promoted. The
    // DR link goes through the proxy so it can be cut.
    let dr_real = Member::new("dr", PeerMode::Async, TransportKind::Quic)?;
    let proxy: ProxyHandle = runtime.block_on(Proxy::start(
        Protocol::Udp,
        "127.0.0.1:0".parse().expect("address"),
        dr_real.address,
        Duration::ZERO,
    ))?;
    let members = [
        Member::new("alpha", PeerMode::Sync, TransportKind::Tcp)?,
        Member::new("metro", PeerMode::Sync, TransportKind::Tcp)?,
        Member {
            address: proxy.local_addr(),
            ..dr_real.clone()
        },
    ];
    let node = |me: &Member, role, tune: &dyn Fn(&mut VolumeSection)| -> Result<NodeProc> {
        let mut v = demo_volume(site.mesh_volume(me, &members, args.size, role));
        tune(&mut v);
        let mut c = site.config(&me.name, v)?;
        c.quic = quick_quic();
        site.start(&c)
    };
    let metro = node(&members[1], VolumeRole::Secondary, &|_| {})?;
    let dr = node(&dr_real, VolumeRole::Secondary, &|_| {})?;
    println!("  metro  secondary  TCP+TLS on {}", members[1].address);
    println!(
        "  dr     secondary  QUIC on {}, reached through the fault proxy on {}",
        dr_real.address,
        proxy.local_addr()
    );
    let alpha = node(&members[0], VolumeRole::Primary, &|v| {
        v.journal_size = DEMO_JOURNAL_BYTES;
        v.journal_segment_size = DEMO_SEGMENT_BYTES;
        v.max_write = DEMO_MAX_WRITE_BYTES;
        v.max_batch = u64::from(DEMO_MAX_WRITE_BYTES);
        v.resync_max_rate = DEMO_RESYNC_RATE;
        v.resync_min_rate = DEMO_RESYNC_RATE / 2;
    })?;
    let nbd_socket = alpha.nbd_socket.clone().expect("a primary exports NBD");
    println!(
        "  alpha  primary    {}",
        alpha.nbd_uri.as_deref().unwrap_or("-")
    );
    // Both peers up to date (an initial sync of the new, empty copies:
    // every region compared) before any write, so the run starts in sync.
    crate::cluster::wait_up_to_date(&alpha, &["metro", "dr"], &[&metro, &dr])?;
    println!(
        "  both peers connected and up to date {:.1} s after start (initial sync of every region; zero ranges sent as holes)",
        started.elapsed().as_secs_f64()
    );
    let mut nodes = [alpha, metro, dr];
    let timeline = run_workload(args, &nodes[0], &proxy, &nbd_socket)?;
    switchover(&nodes)?;

    // Each node's own view, then a clean stop: the primary first (it drains
    // its peers), then the secondaries.
    let lsns: Vec<u64> = nodes
        .iter()
        .map(|n| n.volume().map(|v| v.applied_lsn))
        .collect::<Result<_>>()?;
    let stop_started = Instant::now();
    for n in &mut nodes {
        n.stop()?;
    }
    proxy.stop();
    println!(
        "stopped alpha, metro and dr with SIGTERM in {:.1} s: all exited 0 after their final checkpoint",
        stop_started.elapsed().as_secs_f64()
    );
    verify(&site, &nodes, &lsns, &timeline)?;
    println!(
        "all three copies are identical; demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A role change through the node's control socket, shown as typed.
fn role_command(node: &NodeProc, request: Request, shown: &str) -> Result<()> {
    let said = node::control::command(&node.config.node.control_socket, &request)?;
    println!("  {}$ driftless {shown} {VOLUME}\n      {said}", node.name);
    Ok(())
}

/// Waits until `primary`'s peers are caught up, and checks that getting
/// there resynced nothing.
fn followed_without_resync(primary: &NodeProc, peers: &[&NodeProc]) -> Result<()> {
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    let v = crate::cluster::wait_caught_up(primary, &names, peers, CATCH_UP_TIMEOUT)?;
    for p in &v.peers {
        if let Some(r) = &p.last_resync {
            return Err(HarnessError::Check(format!(
                "a planned switchover resynced {} ({} bytes): it must move nothing",
                p.name, r.bytes_sent
            )));
        }
    }
    let lineage: Vec<String> = v
        .lineage
        .iter()
        .map(|g| format!("{:#x}@{}", g.id, g.start_lsn))
        .collect();
    println!(
        "      {} is primary of generation {:#x} (lineage {}); {} up to date at LSN {}, nothing resynced",
        primary.name,
        v.generation,
        lineage.join(" "),
        names.join(" and "),
        v.written_lsn
    );
    Ok(())
}

/// A planned switchover to the metro peer and back: demote, promote, and
/// the others follow the new primary by streaming, with no resync.
fn switchover(nodes: &[NodeProc]) -> Result<()> {
    let [alpha, metro, dr] = nodes else {
        unreachable!("three nodes")
    };
    println!();
    println!("planned switchover to metro and back:");
    role_command(
        alpha,
        Request::Demote {
            volume: VOLUME.into(),
        },
        "demote",
    )?;
    role_command(
        metro,
        Request::Promote {
            volume: VOLUME.into(),
            force: false,
        },
        "promote",
    )?;
    followed_without_resync(metro, &[alpha, dr])?;
    role_command(
        metro,
        Request::Demote {
            volume: VOLUME.into(),
        },
        "demote",
    )?;
    role_command(
        alpha,
        Request::Promote {
            volume: VOLUME.into(),
            force: false,
        },
        "promote",
    )?;
    followed_without_resync(alpha, &[metro, dr])?;
    for n in nodes {
        let v = n.volume()?;
        if v.role
            != if n.name == "alpha" {
                VolumeRole::Primary
            } else {
                VolumeRole::Secondary
            }
        {
            return Err(HarnessError::Check(format!(
                "{} is {} after switching back",
                n.name, v.role
            )));
        }
    }
    Ok(())
}

/// What the workload wrote and what happened to the DR peer around the cut.
#[derive(Default)]
struct Timeline {
    history: Vec<u32>,
    stride: u64,
    peak_lag_bytes: u64,
    peak_lag_records: u64,
    peak_dirty_regions: u64,
    states: Vec<(ConnectionState, DiskState)>,
    resync: Option<ResyncReport>,
    reconnected_after: Option<Duration>,
    /// Lag back under CAUGHT_UP_LAG after the restore.
    caught_up_after: Option<Duration>,
}

impl Timeline {
    fn track_dr(
        &mut self,
        status: &NodeStatus,
        cut: bool,
        restored_at: Option<Duration>,
        now: Duration,
    ) {
        let Ok(p) = peer(status, "dr") else { return };
        self.peak_lag_bytes = self.peak_lag_bytes.max(p.lag_bytes);
        self.peak_lag_records = self.peak_lag_records.max(p.lag_records);
        self.peak_dirty_regions = self.peak_dirty_regions.max(p.dirty_regions);
        let state = (p.connection, p.disk);
        if (cut || restored_at.is_some()) && self.states.last() != Some(&state) {
            self.states.push(state);
        }
        if restored_at.is_some() && p.last_resync.is_some() {
            self.resync = p.last_resync.clone();
        }
        if let Some(at) = restored_at.filter(|_| p.connection == ConnectionState::Connected) {
            let since = now.saturating_sub(at);
            self.reconnected_after.get_or_insert(since);
            if self.caught_up_after.is_none()
                && crate::cluster::up_to_date(p)
                && p.lag_seconds < CAUGHT_UP_LAG.as_secs_f64()
            {
                self.caught_up_after = Some(since);
            }
        }
    }
}

fn run_workload(
    args: &DemoArgs,
    alpha: &NodeProc,
    proxy: &ProxyHandle,
    nbd_socket: &std::path::Path,
) -> Result<Timeline> {
    let duration = Duration::from_secs(args.seconds);
    let cut_at = duration.mul_f64(0.3);
    let cut_len = CUT_DURATION.min(duration.mul_f64(0.4));
    // A working set of a quarter of the volume: an outage dirties part of
    // it, which the bitmap resync sends, not the whole volume.
    let stride = (args.size / 4 / u64::from(WORKLOAD_BLOCKS) / 4096 * 4096).max(4096);
    let workload = Workload::start(
        nbd_socket,
        VOLUME,
        WorkloadCfg {
            blocks: WORKLOAD_BLOCKS,
            stride,
            depth: WORKLOAD_DEPTH,
            flush_every: FLUSH_EVERY_REQUESTS,
            pace: Some(WORKLOAD_PACE),
            trim_percent: 0,
            zero_percent: 0,
        },
    )?;
    println!();
    println!(
        "writing 4 KiB blocks over the first {} at ~{}/s, queue depth {WORKLOAD_DEPTH}, a FLUSH every {FLUSH_EVERY_REQUESTS} requests; DR link cut at {:.1} s for {:.1} s",
        fmt_bytes(stride * u64::from(WORKLOAD_BLOCKS)),
        fmt_bytes(BLOCK as u64 * 1000),
        cut_at.as_secs_f64(),
        cut_len.as_secs_f64()
    );
    println!(
        "{:<8} {:>16} | {:<5} {:<10} {:<12} {:<12} {:>14} {:>10} {:>8} {:>12}",
        "time",
        "written",
        "peer",
        "mode/via",
        "connection",
        "disk",
        "lag: bytes",
        "records",
        "age",
        "shipped"
    );
    let t0 = Instant::now();
    let mut timeline = Timeline {
        stride,
        ..Timeline::default()
    };
    let mut next_tick = Duration::from_secs(1);
    let mut restored_at = None;
    let written = |w: &Workload| w.with(|r| r.acked()) * BLOCK as u64;
    // Phase 1: the workload, with the cut in the middle. Sampled more often
    // than printed, so reconnect and catch-up are measured to a poll.
    while t0.elapsed() < duration {
        let now = t0.elapsed();
        workload.health().map_err(HarnessError::Check)?;
        if restored_at.is_none() && !proxy.is_cut() && now >= cut_at {
            proxy.cut();
            println!(
                "[{:>5.1}s] --- cutting the DR link (every datagram dropped) ---",
                now.as_secs_f64()
            );
        }
        if proxy.is_cut() && now >= cut_at + cut_len {
            proxy.restore();
            restored_at = Some(now);
            println!("[{:>5.1}s] --- DR link restored ---", now.as_secs_f64());
        }
        let status = alpha.status()?;
        timeline.track_dr(&status, proxy.is_cut(), restored_at, now);
        if now >= next_tick {
            print_tick(now, written(&workload), &status, proxy.is_cut())?;
            next_tick += Duration::from_secs(1);
        }
        std::thread::sleep(POLL);
    }
    if proxy.is_cut() {
        proxy.restore();
        restored_at = Some(t0.elapsed());
    }
    let record = workload.stop()?;
    let bytes = record.acked() * BLOCK as u64;
    println!(
        "[{:>5.1}s] workload done: {} in {} writes, {} FLUSHes; waiting for both peers to catch up",
        t0.elapsed().as_secs_f64(),
        fmt_bytes(bytes),
        record.acked(),
        record.flushes_acked
    );
    // Phase 2: catch-up, bounded.
    let done_at = t0.elapsed();
    loop {
        let now = t0.elapsed();
        let status = alpha.status()?;
        timeline.track_dr(&status, false, restored_at, now);
        if all_caught_up(&status) {
            print_tick(now, bytes, &status, false)?;
            break;
        }
        if now >= done_at + CATCH_UP_TIMEOUT {
            print_tick(now, bytes, &status, false)?;
            return Err(HarnessError::Timeout {
                what: "both peers to catch up after the last write".into(),
                limit: CATCH_UP_TIMEOUT,
                context: alpha.log_tail(25),
            });
        }
        if now >= next_tick {
            print_tick(now, bytes, &status, false)?;
            next_tick += Duration::from_secs(1);
        }
        std::thread::sleep(POLL);
    }
    let (_, dropped) = proxy.counts();
    if dropped == 0 {
        return Err(HarnessError::Check(
            "the DR link was cut but the proxy dropped no datagram: dr is not reached through the proxy".into(),
        ));
    }
    let states: Vec<String> = timeline
        .states
        .iter()
        .map(|(c, d)| format!("{c}/{d}"))
        .collect();
    println!(
        "DR link: {dropped} datagrams dropped while cut; dr lag peaked at {} / {} records, {} regions owed; states {}",
        fmt_bytes(timeline.peak_lag_bytes),
        timeline.peak_lag_records,
        timeline.peak_dirty_regions,
        states.join(" → "),
    );
    let after = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let Some(resync) = &timeline.resync else {
        return Err(HarnessError::Check(format!(
            "the DR peer was never resynced: it did not fall behind past alpha's {} journal during the {:.1} s cut (states {})",
            fmt_bytes(DEMO_JOURNAL_BYTES),
            cut_len.as_secs_f64(),
            states.join(" → ")
        )));
    };
    println!(
        "after the restore: dr reconnected in {}, resynced {} regions ({} sent, not the whole {} volume) in {:.1} s, up to date with lag under {} ms in {}",
        after(timeline.reconnected_after),
        resync.regions,
        fmt_bytes(resync.bytes_sent),
        fmt_bytes(args.size),
        resync.seconds,
        CAUGHT_UP_LAG.as_millis(),
        after(timeline.caught_up_after)
    );
    timeline.history = record.history;
    Ok(timeline)
}

/// The proof: three byte-identical files, each holding exactly the last
/// write to every block the workload wrote.
fn verify(site: &Site, nodes: &[NodeProc], lsns: &[u64], timeline: &Timeline) -> Result<()> {
    let rows = [
        ("primary", "NBD (unix socket)"),
        ("secondary", "sync, TCP+TLS"),
        ("secondary", "async, QUIC + proxy"),
    ];
    println!();
    println!(
        "{:<6} {:<10} {:<20} {:>12} {:>14}  {:<16}  match",
        "node", "role", "transport", "applied LSN", "blocks ok", "BLAKE3"
    );
    let reference = site.volume(&nodes[0].name);
    let mut failures = Vec::new();
    for (i, (n, (role, via))) in nodes.iter().zip(rows).enumerate() {
        let file = site.volume(&n.name);
        let hash = file_digest(&file)?;
        let contents = read_blocks(&file, WORKLOAD_BLOCKS, timeline.stride);
        let blocks = match check_final(&contents, &timeline.history) {
            Ok(()) => format!("{}/{}", WORKLOAD_BLOCKS, WORKLOAD_BLOCKS),
            Err(e) => {
                failures.push(format!("{}: {e}", n.name));
                "NO".into()
            }
        };
        let same = if i == 0 {
            "reference".to_string()
        } else {
            match compare_files(&reference, &file) {
                Ok(()) => "yes".into(),
                Err(e) => {
                    failures.push(e.to_string());
                    "NO".into()
                }
            }
        };
        println!(
            "{:<6} {:<10} {:<20} {:>12} {:>14}  {:<16}  {same}",
            n.name,
            role,
            via,
            lsns[i],
            blocks,
            &hash.to_hex()[..16]
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(HarnessError::Check(format!(
            "the copies are not what was written:\n{}",
            failures.join("\n")
        )))
    }
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn peer<'a>(status: &'a NodeStatus, name: &str) -> Result<&'a PeerStatus> {
    status
        .volumes
        .first()
        .and_then(|v| v.status.peers.iter().find(|p| p.name == name))
        .ok_or_else(|| HarnessError::Check(format!("the primary's status lists no peer {name}")))
}

fn peer_line(p: &PeerStatus) -> String {
    let mut line = format!(
        "{:<5} {:<10} {:<12} {:<12} lag {:>10} {:>6} rec {:>6.2} s {:>7.1} MB/s",
        p.name,
        format!("{}/{}", p.mode, p.transport),
        p.connection,
        p.disk,
        fmt_bytes(p.lag_bytes),
        p.lag_records,
        p.lag_seconds,
        p.throughput_bytes_per_sec / 1e6
    );
    if let Some(job) = &p.job {
        line += &format!("  {}", node::render::job_line(job));
    } else if p.dirty_regions > 0 {
        line += &format!(
            "  owed {} regions (fell behind past the journal)",
            p.dirty_regions
        );
    }
    line
}

/// Prints one line per peer for this second.
fn print_tick(t: Duration, written: u64, status: &NodeStatus, dr_cut: bool) -> Result<()> {
    for (i, name) in ["metro", "dr"].iter().enumerate() {
        let p = peer(status, name)?;
        let head = if i == 0 {
            format!(
                "[{:>5.1}s] wrote {:>10}",
                t.as_secs_f64(),
                fmt_bytes(written)
            )
        } else {
            " ".repeat(25)
        };
        let note = if *name == "dr" && dr_cut {
            "  << link cut"
        } else {
            ""
        };
        println!("{head} | {}{note}", peer_line(p));
    }
    Ok(())
}

fn all_caught_up(status: &NodeStatus) -> bool {
    let Some(v) = status.volumes.first() else {
        return false;
    };
    v.status.role == VolumeRole::Primary
        && v.status.peers.iter().all(|p| {
            crate::cluster::up_to_date(p)
                && p.lag_bytes == 0
                && p.lag_records == 0
                && p.acked_lsn >= v.status.written_lsn
        })
}

#[cfg(test)]
mod tests {
    use super::fmt_bytes;

    #[test]
    fn byte_units() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(64 << 20), "64 MiB");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}
