//! Failover between real `driftless run` nodes on loopback, each node's
//! config listing every other node (a mesh: any of them may be promoted):
//! a planned switchover and back under fio verify, an unplanned failover
//! after kill -9 with the old primary coming back fenced and rolled back, a
//! 3-site re-pair, a split brain through a cut link resolved with
//! `resync --discard-local`, and promote's refusals. Every test ends on
//! byte-identical volumes.
//!
//! One at a time (a process-wide lock): they kill processes at chosen
//! moments and share 2 cores.

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::checker::{check_holds, check_sane, read_blocks, Required, Workload, WorkloadCfg};
use harness::cluster::{
    assert_same_files, file_digest, wait_caught_up, wait_for, Member, NodeProc, Site, MIB, VOLUME,
};
use harness::driftless_bin;
use harness::process::{require_tool, run, run_ok};
use harness::proxy::{Protocol, ProxyProc};
use rand::Rng;
use replication::{DiskState, PeerMode, TransportKind, VolumeRole};

const SIZE: u64 = 128 * MIB;
const REGION: u64 = 64 * 1024;
const CATCH_UP: Duration = Duration::from_secs(90);
const SYNC: PeerMode = PeerMode::Sync;
const ASYNC: PeerMode = PeerMode::Async;
const TCP: TransportKind = TransportKind::Tcp;
const QUIC: TransportKind = TransportKind::Quic;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `me` of `members`; `primary` names the node whose new volume
/// starts as the primary.
fn start(site: &Site, me: &Member, members: &[Member], primary: &str) -> NodeProc {
    let role = if me.name == primary {
        VolumeRole::Primary
    } else {
        VolumeRole::Secondary
    };
    let v = site.mesh_volume(me, members, SIZE, role);
    site.start(&site.config(&me.name, v).unwrap())
        .unwrap_or_else(|e| panic!("starting {}: {e}", me.name))
}

/// alpha and its sync peer beta over TCP+TLS, at fixed ports.
fn pair() -> [Member; 2] {
    [
        Member::new("alpha", SYNC, TCP).unwrap(),
        Member::new("beta", SYNC, TCP).unwrap(),
    ]
}

/// alpha (primary), beta (sync, TCP+TLS) and dr (async, QUIC), started and
/// caught up.
fn three_sites(site: &Site) -> [NodeProc; 3] {
    let members = [
        Member::new("alpha", SYNC, TCP).unwrap(),
        Member::new("beta", SYNC, TCP).unwrap(),
        Member::new("dr", ASYNC, QUIC).unwrap(),
    ];
    let beta = start(site, &members[1], &members, "alpha");
    let dr = start(site, &members[2], &members, "alpha");
    let alpha = start(site, &members[0], &members, "alpha");
    wait_caught_up(&alpha, &["beta", "dr"], &[&beta, &dr], CATCH_UP).unwrap();
    [alpha, beta, dr]
}

/// `driftless <args> --socket <node's control socket>`.
fn cli(node: &NodeProc, args: &[&str]) -> Output {
    run(
        Command::new(driftless_bin())
            .args(args)
            .arg("--socket")
            .arg(&node.config.node.control_socket),
        Duration::from_secs(200),
    )
    .unwrap()
}

fn cli_ok(node: &NodeProc, args: &[&str]) -> String {
    let out = cli(node, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "driftless {args:?} on {}: {text}\n{}",
        node.name,
        node.log_tail(20)
    );
    eprintln!(
        "{} $ driftless {}: {}",
        node.name,
        args.join(" "),
        text.trim()
    );
    text
}

fn cli_refused(node: &NodeProc, args: &[&str]) -> String {
    let out = cli(node, args);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "driftless {args:?} on {} should be refused: {}",
        node.name,
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "{} $ driftless {} refused: {}",
        node.name,
        args.join(" "),
        text.trim()
    );
    text
}

fn role(node: &NodeProc) -> VolumeRole {
    node.volume().unwrap().role
}

/// fio through `node`'s NBD export (`extra`: the job's own options).
fn fio(node: &NodeProc, name: &str, extra: &[&str]) {
    let uri = node.nbd_uri.clone().expect("the node exports NBD");
    let mut args = vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--bs=4k".into(),
        "--iodepth=16".into(),
        "--size=32m".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        "--verify_state_save=0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run(Command::new("fio").args(&args), Duration::from_secs(180)).unwrap();
    assert!(
        out.status.success(),
        "fio {name} on {}: {}{}",
        node.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes pattern `pattern` at each offset through `node`'s NBD export;
/// the qemu-io output.
fn qemu_write(node: &NodeProc, offsets: &[u64], len: u64, pattern: u8) -> Output {
    let uri = node.nbd_uri.clone().unwrap();
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for off in offsets {
        cmd.arg("-c").arg(format!("write -P {pattern} {off} {len}"));
    }
    cmd.arg(&uri);
    run(&mut cmd, Duration::from_secs(120)).unwrap()
}

/// How many times a node's log says a resync into it began.
fn resyncs_into(node: &NodeProc) -> usize {
    node.log_text()
        .matches("resync into this node begins")
        .count()
}

fn stop_all_and_compare(site: &Site, nodes: &mut [&mut NodeProc]) {
    for n in nodes.iter_mut() {
        n.stop()
            .unwrap_or_else(|e| panic!("stopping {}: {e}", n.name));
    }
    let first = site.volume(&nodes[0].name);
    for n in nodes.iter().skip(1) {
        assert_same_files(&first, &site.volume(&n.name));
    }
}

#[test]
fn planned_switchover_and_back_under_fio_verify_resyncs_nothing() {
    let _serial = serial();
    require_tool("fio");
    let site = Site::temp().unwrap();
    let [mut alpha, mut beta, mut dr] = three_sites(&site);
    let initial = (resyncs_into(&beta), resyncs_into(&dr));

    fio(&alpha, "on-alpha", &["--rw=randwrite", "--offset=0"]);
    // A secondary's export answers writes with EPERM.
    let denied = qemu_write(&beta, &[0], 4096, 9);
    assert!(
        !denied.status.success() || String::from_utf8_lossy(&denied.stdout).contains("failed"),
        "a write to the secondary's export must fail: {}",
        String::from_utf8_lossy(&denied.stdout)
    );

    // alpha → beta.
    let said = cli_ok(&alpha, &["demote", VOLUME]);
    assert!(said.contains("every peer holds LSN"), "{said}");
    assert_eq!(role(&alpha), VolumeRole::Secondary);
    cli_ok(&beta, &["promote", VOLUME]);
    assert_eq!(role(&beta), VolumeRole::Primary);
    let v = wait_caught_up(&beta, &["alpha", "dr"], &[&alpha, &dr], CATCH_UP).unwrap();
    for p in &v.peers {
        assert!(
            p.last_resync.is_none(),
            "a planned switchover resyncs nothing: {p:?}"
        );
    }
    eprintln!(
        "beta primary of generation {:#x}, lineage {:?}",
        v.generation, v.lineage
    );
    // What fio wrote on alpha reads back from beta; then beta takes writes.
    fio(
        &beta,
        "on-alpha",
        &["--rw=read", "--offset=0", "--verify_only=1"],
    );
    fio(&beta, "on-beta", &["--rw=randwrite", "--offset=32m"]);
    // The persisted role wins over the configured one at a restart.
    beta.stop().unwrap();
    let beta_before_restart = resyncs_into(&beta);
    beta.restart().unwrap();
    assert_eq!(role(&beta), VolumeRole::Primary);
    assert_eq!(
        beta.volume().unwrap().fenced,
        None,
        "a clean stop is not fenced"
    );
    wait_caught_up(&beta, &["alpha", "dr"], &[&alpha, &dr], CATCH_UP).unwrap();

    // beta → alpha.
    cli_ok(&beta, &["demote", VOLUME]);
    cli_ok(&alpha, &["promote", VOLUME]);
    let v = wait_caught_up(&alpha, &["beta", "dr"], &[&beta, &dr], CATCH_UP).unwrap();
    for p in &v.peers {
        assert!(
            p.last_resync.is_none(),
            "switching back resyncs nothing: {p:?}"
        );
    }
    fio(
        &alpha,
        "on-beta",
        &["--rw=read", "--offset=32m", "--verify_only=1"],
    );
    assert_eq!(
        (
            beta_before_restart + resyncs_into(&beta),
            resyncs_into(&dr),
            resyncs_into(&alpha)
        ),
        (initial.0, initial.1, 0),
        "no resync into any node after the initial sync"
    );
    stop_all_and_compare(&site, &mut [&mut alpha, &mut beta, &mut dr]);
}

/// Until `node`'s session with its primary has ended (the primary died).
fn wait_primary_gone(node: &NodeProc) {
    wait_for("the primary's session to end", node, &[], CATCH_UP, |v| {
        v.upstream.as_ref().is_none_or(|u| !u.connected)
    })
    .unwrap();
}

/// A write through the export of a node that must refuse it.
fn assert_write_refused(node: &NodeProc) {
    let out = qemu_write(node, &[0], 4096, 0x5a);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || said.contains("failed"),
        "{} accepted a write: {said}",
        node.name
    );
}

#[test]
fn unplanned_failover_then_the_old_primary_comes_back_fenced_and_only_diverged_regions_move() {
    let _serial = serial();
    require_tool("qemu-io");
    let kill_after = Duration::from_millis(rand::thread_rng().gen_range(400..1200));
    let site = Site::temp().unwrap();
    let members = pair();
    let mut beta = start(&site, &members[1], &members, "alpha");
    let mut alpha = start(&site, &members[0], &members, "alpha");
    wait_caught_up(&alpha, &["beta"], &[&beta], CATCH_UP).unwrap();

    let blocks = 4096; // 16 MiB of 4 KiB blocks
    let w = Workload::start(
        alpha.nbd_socket.as_deref().unwrap(),
        VOLUME,
        WorkloadCfg {
            blocks,
            stride: 4096,
            depth: 16,
            flush_every: 48,
            pace: None,
            trim_percent: 0,
            zero_percent: 0,
        },
    )
    .unwrap();
    w.kill_on_flush(Instant::now() + kill_after, alpha.pid());
    let record = w.join_dead();
    alpha.kill9();
    let kill = record
        .killed
        .clone()
        .expect("alpha died right after a FLUSH");
    assert!(record.errors.is_empty(), "{:?}", record.errors);

    wait_primary_gone(&beta);
    let said = cli_ok(&beta, &["promote", VOLUME]);
    assert!(said.contains("promoted"), "{said}");
    // beta holds every write acknowledged to the client (protocol C) and
    // so everything the last FLUSH covered.
    let contents = read_blocks(&site.volume("beta"), blocks, 4096);
    check_holds(&contents, &record, Required::Acked).unwrap_or_else(|e| {
        panic!(
            "beta lacks an acknowledged write: {e} ({} acked before the last FLUSH, {} at the kill)",
            kill.acked_before_flush, kill.acked_at_kill
        )
    });
    let flushed = check_holds(&contents, &record, Required::Flushed).unwrap();
    // Every block holds a whole write of the history (none torn, none
    // foreign).
    check_sane(&contents, &record.history).unwrap();
    // beta takes writes, beyond the workload's blocks.
    let out = qemu_write(&beta, &[64 * MIB, 80 * MIB], 2 * REGION, 7);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // alpha restarts with its own config: it refuses writes until it knows
    // whether a newer primary exists; beta's is, so alpha steps down.
    alpha.restart().unwrap();
    assert_write_refused(&alpha);
    let v = wait_caught_up(&beta, &["alpha"], &[&alpha], CATCH_UP).unwrap();
    assert_eq!(role(&alpha), VolumeRole::Secondary);
    let resent = v.peer("alpha").unwrap().last_resync.clone();
    // What alpha wrote past the fork is at most the writes in flight when
    // it died (one 4 KiB block each, so one region each).
    let bound = 16 * REGION;
    if let Some(r) = &resent {
        assert!(
            r.bytes_sent <= bound,
            "resent {r:?}, more than the {bound} bytes that can differ"
        );
    }
    assert!(
        alpha.log_text().contains("holds a newer generation"),
        "{}",
        alpha.log_tail(30)
    );
    eprintln!(
        "alpha killed {kill_after:?} in after FLUSH #{} covering {flushed} writes; beta promoted; alpha rolled back by {resent:?}",
        record.flushes_acked
    );
    stop_all_and_compare(&site, &mut [&mut beta, &mut alpha]);
}

#[test]
fn three_sites_dr_re_pairs_with_the_promoted_metro_peer_without_a_full_copy() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let [mut alpha, mut beta, mut dr] = three_sites(&site);

    // 16 MiB of 4 KiB blocks written under FLUSHes, then alpha dies: the
    // DR copy lags (or leads beta: it may hold records beta never got).
    let blocks = 4096;
    let w = Workload::start(
        alpha.nbd_socket.as_deref().unwrap(),
        VOLUME,
        WorkloadCfg {
            blocks,
            stride: 4096,
            depth: 16,
            flush_every: 64,
            pace: None,
            trim_percent: 0,
            zero_percent: 0,
        },
    )
    .unwrap();
    let kill_after = Duration::from_millis(rand::thread_rng().gen_range(600..1500));
    w.kill_on_flush(Instant::now() + kill_after, alpha.pid());
    let record = w.join_dead();
    alpha.kill9();
    assert!(record.errors.is_empty(), "{:?}", record.errors);
    wait_primary_gone(&beta);
    cli_ok(&beta, &["promote", VOLUME]);
    let new_writes = [96 * MIB, 112 * MIB];
    let out = qemu_write(&beta, &new_writes, 2 * REGION, 3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v = wait_caught_up(&beta, &["dr"], &[&dr], CATCH_UP).unwrap();
    let p = v.peer("dr").unwrap();
    // The delta: at most the workload's 16 MiB (where dr may differ from
    // beta's history) and beta's new writes; never the 128 MiB volume.
    let delta = blocks as u64 * 4096 + new_writes.len() as u64 * 2 * REGION;
    if let Some(r) = &p.last_resync {
        assert!(
            r.bytes_sent <= delta,
            "dr re-paired with {r:?}: more than the {delta} bytes that can differ"
        );
    }
    eprintln!(
        "alpha killed {kill_after:?} in ({} writes acked); dr re-paired with beta: {:?}",
        record.acked(),
        p.last_resync
    );
    // alpha comes back and follows beta too.
    alpha.restart().unwrap();
    wait_caught_up(&beta, &["alpha", "dr"], &[&alpha, &dr], CATCH_UP).unwrap();
    assert_eq!(role(&alpha), VolumeRole::Secondary);
    stop_all_and_compare(&site, &mut [&mut beta, &mut dr, &mut alpha]);
}

/// Until `node` reports a split brain.
fn wait_split_brain(node: &NodeProc, others: &[&NodeProc]) -> replication::SplitBrainStatus {
    wait_for(
        "a split brain to be reported",
        node,
        others,
        CATCH_UP,
        |v| v.split_brain.is_some() && v.disk == DiskState::SplitBrain,
    )
    .unwrap()
    .split_brain
    .unwrap()
}

/// alpha (primary) and beta (its sync peer), every connection between
/// them through a proxy; the links are cut, beta is promoted, each writes
/// one region at each of its offsets (alpha pattern 0xa1, beta 0xb2) and
/// flushes, and the links are healed: a split brain, under `policy` on
/// both nodes.
struct SplitBrain {
    site: Site,
    alpha: NodeProc,
    beta: NodeProc,
    _proxies: [ProxyProc; 2],
}

fn split_brain(policy: &str, on_alpha: &[u64], on_beta: &[u64]) -> SplitBrain {
    let site = Site::temp().unwrap();
    let members = pair();
    let to_alpha = ProxyProc::start(&site.dir, Protocol::Tcp, members[0].address, None).unwrap();
    let to_beta = ProxyProc::start(&site.dir, Protocol::Tcp, members[1].address, None).unwrap();
    let config = |i: usize, via: &ProxyProc| {
        let role = [VolumeRole::Primary, VolumeRole::Secondary][i];
        let mut v = site.mesh_volume(&members[i], &members, SIZE, role);
        v.peers[0].address = via.addr;
        v.on_sync_peer_loss = node::config::LossPolicy::Degrade;
        v.keepalive_interval = Duration::from_millis(200);
        v.peer_timeout = Duration::from_secs(2);
        v.split_brain_policy = serde_json::from_str(&format!("{policy:?}")).unwrap();
        site.config(&members[i].name, v).unwrap()
    };
    let beta = site.start(&config(1, &to_alpha)).unwrap();
    let alpha = site.start(&config(0, &to_beta)).unwrap();
    let out = qemu_write(&alpha, &[0, 4 * MIB], REGION, 1);
    assert!(out.status.success());
    wait_caught_up(&alpha, &["beta"], &[&beta], CATCH_UP).unwrap();

    to_alpha.cut();
    to_beta.cut();
    wait_primary_gone(&beta);
    cli_ok(&beta, &["promote", VOLUME]);
    for (n, offsets, pattern) in [(&alpha, on_alpha, 0xa1), (&beta, on_beta, 0xb2)] {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for off in offsets {
            cmd.arg("-c")
                .arg(format!("write -P {pattern} {off} {REGION}"));
        }
        cmd.args(["-c", "flush"]).arg(n.nbd_uri.as_deref().unwrap());
        run_ok(&mut cmd, Duration::from_secs(60)).unwrap();
    }
    to_alpha.restore();
    to_beta.restore();
    SplitBrain {
        site,
        alpha,
        beta,
        _proxies: [to_alpha, to_beta],
    }
}

#[test]
fn split_brain_through_a_cut_link_moves_nothing_until_discard_local_then_only_changed_regions() {
    let _serial = serial();
    require_tool("qemu-io");
    // alpha changes 3 regions, beta 2 (one of them a region alpha wrote too).
    let SplitBrain {
        site,
        mut alpha,
        mut beta,
        _proxies,
    } = split_brain(
        "disconnect",
        &[10 * MIB, 11 * MIB, 12 * MIB],
        &[12 * MIB, 20 * MIB],
    );
    let on_alpha = wait_split_brain(&alpha, &[&beta]);
    let on_beta = wait_split_brain(&beta, &[&alpha]);
    assert_eq!(on_alpha.peer, "beta");
    assert_eq!(on_beta.peer, "alpha");
    assert_eq!(on_alpha.changed_regions, Some(3), "{on_alpha:?}");
    assert_eq!(on_beta.changed_regions, Some(2), "{on_beta:?}");
    assert_eq!(on_alpha.fork_lsn, on_beta.fork_lsn);
    // Each side learns the other's count in the exchange.
    let on_alpha = wait_for("alpha to learn beta's count", &alpha, &[], CATCH_UP, |v| {
        v.split_brain
            .as_ref()
            .is_some_and(|s| s.peer_changed_regions.is_some())
    })
    .unwrap()
    .split_brain
    .unwrap();
    assert_eq!(on_alpha.peer_changed_regions, Some(2), "{on_alpha:?}");
    // Nothing moves while the split brain stands.
    let digests = |n: &str| file_digest(&site.volume(n)).unwrap();
    let before = (digests("alpha"), digests("beta"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (digests("alpha"), digests("beta")),
        before,
        "data moved in a split brain"
    );
    let table = String::from_utf8_lossy(&cli(&alpha, &["status"]).stdout).into_owned();
    assert!(table.contains("SPLIT BRAIN with beta"), "{table}");

    // alpha's changes are given up: only the regions changed on either
    // side since the fork move.
    cli_ok(&alpha, &["resync", VOLUME, "--discard-local"]);
    // beta's last attempt was refused (split brain); its next one is not.
    wait_for(
        "beta to reach alpha again",
        &beta,
        &[&alpha],
        CATCH_UP,
        |v| {
            v.peer("alpha")
                .is_some_and(|p| p.connection == replication::ConnectionState::Connected)
        },
    )
    .unwrap();
    let v = wait_caught_up(&beta, &["alpha"], &[&alpha], CATCH_UP).unwrap();
    assert_eq!(role(&alpha), VolumeRole::Secondary);
    let r = v.peer("alpha").unwrap().last_resync.clone();
    let changed = 5 * REGION;
    let sent = r.as_ref().map_or(0, |r| r.bytes_sent);
    assert!(
        sent <= changed,
        "resolved with {r:?}: more than the changed regions"
    );
    assert!(
        v.split_brain.is_none(),
        "resolved on beta: {:?}",
        v.split_brain
    );
    let a = wait_for("alpha no longer discarding", &alpha, &[], CATCH_UP, |v| {
        !v.discarding_local && v.split_brain.is_none()
    })
    .unwrap();
    assert_eq!(a.disk, DiskState::UpToDate);
    eprintln!("split brain at LSN {} resolved: {r:?}", on_beta.fork_lsn);
    stop_all_and_compare(&site, &mut [&mut beta, &mut alpha]);
    // alpha's 3 regions are beta's again (zeros: never written there).
    let got = harness::cluster::read_at(&site.volume("alpha"), 10 * MIB, REGION as usize);
    assert!(got.iter().all(|&b| b == 0), "alpha kept a discarded write");
    let got = harness::cluster::read_at(&site.volume("alpha"), 20 * MIB, REGION as usize);
    assert!(
        got.iter().all(|&b| b == 0xb2),
        "beta's write is missing on alpha"
    );
}

#[test]
fn promote_is_refused_with_a_connected_primary_and_on_an_inconsistent_copy_force_overrides() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let members = pair();
    // alpha holds 24 MiB before beta first connects; its initial sync is
    // slowed down so it can be caught in the middle.
    let mut va = site.mesh_volume(&members[0], &members, SIZE, VolumeRole::Primary);
    va.resync_max_rate = 2 * MIB;
    va.resync_min_rate = MIB;
    va.resync_max_inflight = 2 * REGION;
    va.on_sync_peer_loss = node::config::LossPolicy::Degrade;
    let mut alpha = site.start(&site.config("alpha", va).unwrap()).unwrap();
    let offsets: Vec<u64> = (0..24).map(|i| i * MIB).collect();
    let out = qemu_write(&alpha, &offsets, MIB, 0x33);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut beta = start(&site, &members[1], &members, "alpha");
    wait_for("beta syncing", &beta, &[&alpha], CATCH_UP, |v| {
        v.disk == DiskState::Inconsistent
            && v.upstream
                .as_ref()
                .is_some_and(|u| u.connected && u.resyncing)
    })
    .unwrap();
    let why = cli_refused(&beta, &["promote", VOLUME]);
    assert!(why.contains("primary alpha is connected"), "{why}");

    alpha.kill9();
    wait_primary_gone(&beta);
    let why = cli_refused(&beta, &["promote", VOLUME]);
    assert!(why.contains("INCONSISTENT"), "{why}");
    assert_eq!(role(&beta), VolumeRole::Secondary);
    let said = cli_ok(&beta, &["promote", VOLUME, "--force"]);
    assert!(said.contains("FORCED"), "{said}");
    let v = beta.volume().unwrap();
    assert_eq!(v.role, VolumeRole::Primary);
    assert!(
        v.lineage.last().unwrap().unknown_before,
        "a forced promotion of an inconsistent copy starts a generation over unknown data: {:?}",
        v.lineage
    );
    assert!(beta.log_text().contains("FORCED promotion"));
    // alpha comes back fenced, steps down to beta, and is compared in
    // full (beta's copy is no state of the old history).
    alpha.restart().unwrap();
    let v = wait_caught_up(&beta, &["alpha"], &[&alpha], CATCH_UP).unwrap();
    let r = v
        .peer("alpha")
        .unwrap()
        .last_resync
        .clone()
        .expect("a resync");
    assert!(r.full && r.compare, "{r:?}");
    stop_all_and_compare(&site, &mut [&mut beta, &mut alpha]);
}

#[test]
fn each_automatic_split_brain_policy_discards_the_side_it_names_and_only_changed_regions_move() {
    let _serial = serial();
    require_tool("qemu-io");
    // (policy, alpha's regions, beta's, the side discarded). alpha is the
    // older primary, beta (promoted during the cut) the younger.
    let (a3, b2) = (
        [10 * MIB, 11 * MIB, 12 * MIB].as_slice(),
        [12 * MIB, 20 * MIB].as_slice(),
    );
    let cases: [(&str, &[u64], &[u64], &str); 4] = [
        ("discard-zero-changes", a3, &[], "beta"),
        ("discard-least-changes", a3, b2, "beta"),
        ("discard-younger-primary", b2, a3, "beta"),
        ("discard-older-primary", a3, b2, "alpha"),
    ];
    for (policy, on_alpha, on_beta, victim) in cases {
        let SplitBrain {
            site,
            mut alpha,
            mut beta,
            _proxies,
        } = split_brain(policy, on_alpha, on_beta);
        let (winner, loser, kept, lost, pattern) = if victim == "alpha" {
            (&beta, &alpha, on_beta, on_alpha, 0xb2u8)
        } else {
            (&alpha, &beta, on_alpha, on_beta, 0xa1u8)
        };
        let v = wait_for(
            &format!("{policy}: {victim} to follow the other"),
            winner,
            &[loser],
            CATCH_UP,
            |v| v.peer(victim).is_some_and(harness::cluster::up_to_date),
        )
        .unwrap();
        assert_eq!(role(loser), VolumeRole::Secondary, "{policy}");
        assert_eq!(role(winner), VolumeRole::Primary, "{policy}");
        let changed = (on_alpha.len() + on_beta.len()) as u64 * REGION;
        let r = v.peer(victim).unwrap().last_resync.clone();
        assert!(
            r.as_ref().map_or(0, |r| r.bytes_sent) <= changed,
            "{policy}: {r:?} is more than the changed regions"
        );
        assert!(
            loser.log_text().contains("split-brain policy"),
            "{policy}: {}",
            loser.log_tail(20)
        );
        eprintln!("{policy}: {victim} discarded, resync {r:?}");
        let (winner_name, loser_name) = (winner.name.clone(), loser.name.clone());
        stop_all_and_compare(&site, &mut [&mut alpha, &mut beta]);
        let read =
            |off: u64| harness::cluster::read_at(&site.volume(&loser_name), off, REGION as usize);
        for &off in kept {
            assert!(
                read(off).iter().all(|&b| b == pattern),
                "{policy}: {winner_name}'s write at {off} is missing"
            );
        }
        for &off in lost.iter().filter(|o| !kept.contains(o)) {
            assert!(
                read(off).iter().all(|&b| b == 0),
                "{policy}: {loser_name}'s discarded write at {off} stayed"
            );
        }
    }
}

#[test]
fn a_node_started_with_another_nodes_certificate_refuses_to_start_naming_both() {
    let _serial = serial();
    let site = Site::temp().unwrap();
    let members = [Member::new("alpha", SYNC, TCP).unwrap()];
    let mut c = site
        .config(
            "alpha",
            site.mesh_volume(&members[0], &members, SIZE, VolumeRole::Primary),
        )
        .unwrap();
    c.tls = site.pki.tls("beta").unwrap();
    let err = match site.start(&c) {
        Ok(_) => panic!("alpha started with beta's certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("names node \"beta\"") && err.contains("node.name is \"alpha\""),
        "{err}"
    );
}
