//! Lineage and resync between real `driftless run` nodes on loopback: a new
//! peer over data that predates the journal, a seeded copy, unrelated
//! data refused until `resync --full`, a re-created journal, kill -9 of
//! either side in the middle of a resync, a resync under a fio verify
//! workload, and `driftless verify` finding and repairing a flipped
//! region. Every test ends on byte-identical volumes.
//!
//! One at a time (a process-wide lock): they kill processes at chosen
//! moments and share 2 cores.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::cluster::{
    assert_same_files, sparse_file, up_to_date, wait_caught_up, wait_for, with_peer, NodeProc,
    Site, MIB,
};
use harness::driftless_bin;
use harness::process::{require_tool, run, run_ok};
use node::config::VolumeSection;
use rand::{Rng, SeedableRng};
use replication::{ConnectionState, DiskState, PeerMode, PeerStatus, TransportKind};

const SIZE: u64 = 256 * MIB;
const REGION: u64 = 64 * 1024;
const CATCH_UP: Duration = Duration::from_secs(90);
const TCP: TransportKind = TransportKind::Tcp;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(site: &Site, name: &str, v: VolumeSection) -> NodeProc {
    site.start(&site.config(name, v).unwrap())
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// A secondary `dr` on a fixed port (so restarts are found again).
fn start_dr(site: &Site) -> NodeProc {
    let mut first = start(site, "dr", site.secondary_volume("dr", SIZE, TCP));
    let fixed = site.write_config(&first.fixed_config(), "fixed").unwrap();
    first.stop().unwrap();
    NodeProc::start(&site.dir, &fixed).unwrap()
}

/// A primary shipping to `dr` asynchronously over TCP+TLS.
fn primary_of(site: &Site, dr: &NodeProc, tune: impl FnOnce(&mut VolumeSection)) -> NodeProc {
    primary_with(site, dr, PeerMode::Async, tune)
}

fn primary_with(
    site: &Site,
    dr: &NodeProc,
    mode: PeerMode,
    tune: impl FnOnce(&mut VolumeSection),
) -> NodeProc {
    let mut v = with_peer(
        site.primary_volume("primary", SIZE),
        "dr",
        mode,
        TCP,
        dr.tcp.expect("dr listens on TCP"),
    );
    tune(&mut v);
    start(site, "primary", v)
}

/// Stops both nodes (each must exit 0) and checks their volumes are
/// byte-identical.
fn stop_and_compare(site: &Site, primary: &mut NodeProc, dr: &mut NodeProc) {
    primary.stop().unwrap();
    dr.stop().unwrap();
    assert_same_files(&site.volume("primary"), &site.volume("dr"));
}

/// `cp -a --sparse=always FROM TO` (a file or a directory).
fn copy_as_is(from: &Path, to: &Path) {
    run_ok(
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(from)
            .arg(to),
        Duration::from_secs(60),
    )
    .unwrap();
}

fn peer(n: &NodeProc) -> PeerStatus {
    n.volume().unwrap().peer("dr").unwrap().clone()
}

/// Random data in `extents` random 1 MiB extents of a sparse file: what
/// was there before any journal.
fn prefill(path: &Path, extents: u64, seed: u64) {
    sparse_file(path, SIZE).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let slots = SIZE / MIB;
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < extents as usize {
        chosen.insert(rng.gen_range(0..slots));
    }
    let mut buf = vec![0u8; MIB as usize];
    for slot in chosen {
        rng.fill(&mut buf[..]);
        f.write_all_at(&buf, slot * MIB).unwrap();
    }
    f.sync_all().unwrap();
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `driftless <args> --socket <primary's control socket>`.
fn cli(site: &Site, args: &[&str]) -> std::process::Output {
    let socket = site.control("primary");
    run(
        Command::new(driftless_bin())
            .args(args)
            .arg("--socket")
            .arg(&socket),
        Duration::from_secs(120),
    )
    .unwrap()
}

/// Writes `data` at each offset through the primary's NBD export.
fn qemu_write(primary: &NodeProc, offsets: &[u64], len: u64) {
    let uri = primary.nbd_uri.clone().unwrap();
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for (i, off) in offsets.iter().enumerate() {
        cmd.arg("-c")
            .arg(format!("write -P {} {off} {len}", 1 + i % 250));
    }
    cmd.arg(&uri);
    run_ok(&mut cmd, Duration::from_secs(120)).unwrap();
}

#[test]
fn new_peer_of_a_volume_with_data_from_before_the_journal_is_synced_sparse() {
    let _serial = serial();
    let site = Site::temp().unwrap();
    // 48 MiB of data in a 256 MiB file, written before any journal.
    prefill(&site.volume("primary"), 48, 1);
    let dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |_| {});
    let mut dr = dr;
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let p = v.peer("dr").unwrap();
    let r = p
        .last_resync
        .as_ref()
        .expect("up to date only after a resync");
    eprintln!("initial sync: {r:?}");
    assert!(
        r.full && !r.compare,
        "an empty peer: nothing to compare: {r:?}"
    );
    assert!(
        r.bytes_sent >= 48 * MIB && r.bytes_sent <= 49 * MIB,
        "the data and no more: {r:?}"
    );
    primary.stop().unwrap();
    dr.stop().unwrap();
    assert_same_files(&site.volume("primary"), &site.volume("dr"));
    let (a, b) = (
        allocated_bytes(&site.volume("primary")),
        allocated_bytes(&site.volume("dr")),
    );
    eprintln!("allocated: primary {a} dr {b}");
    assert!(b <= 2 * a, "holes were copied: primary {a} B, dr {b} B");
}

#[test]
fn seeded_copy_gets_only_the_regions_written_since_it_was_taken() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    prefill(&site.volume("primary"), 96, 2);
    // Copied while nothing runs (the truck), then 1 % of the regions are
    // written on the primary, running alone.
    std::fs::copy(site.volume("primary"), site.volume("dr")).unwrap();
    let mut alone = start(&site, "primary", site.primary_volume("primary", SIZE));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let regions = SIZE / REGION;
    let mut written = std::collections::BTreeSet::new();
    while written.len() < (regions / 100) as usize {
        written.insert(rng.gen_range(0..regions));
    }
    let offsets: Vec<u64> = written.iter().map(|r| r * REGION).collect();
    qemu_write(&alone, &offsets, REGION);
    alone.stop().unwrap();
    assert!(
        harness::cluster::compare_files(&site.volume("primary"), &site.volume("dr")).is_err(),
        "the writes reached the primary's volume"
    );
    // The peer starts on the copy with a new, empty journal.
    let mut dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |_| {});
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v.peer("dr").unwrap().last_resync.clone().expect("resynced");
    eprintln!(
        "seeded copy: {} regions written, resync {r:?}",
        written.len()
    );
    assert!(r.full && r.compare && r.regions == regions, "{r:?}");
    // The writes since the copy are the primary's LSNs 1..=40, which its
    // journal still holds: they crossed as records, in front of the
    // compare, and the compare found nothing else to send. Either way no
    // more than the written regions (+10 %) crossed.
    assert_eq!(v.written_lsn, written.len() as u64);
    assert!(
        written.len() as u64 * REGION + r.bytes_sent <= written.len() as u64 * REGION * 11 / 10,
        "more than the written regions crossed: {r:?}\n{}",
        primary.log_tail(20)
    );
    stop_and_compare(&site, &mut primary, &mut dr);
}

#[test]
fn unrelated_peer_is_refused_on_both_sides_until_resync_full() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    // "dr" holds another history of a volume of the same name and size:
    // it ran as a primary of its own, and data was written to it.
    let mut other = start(&site, "dr", site.primary_volume("dr", SIZE));
    qemu_write(&other, &[0, 5 * MIB, 100 * MIB], MIB);
    other.stop().unwrap();
    // Re-purposed as a secondary: its persisted role would otherwise win
    // over the new config's (docs/failover.md).
    let mut role = site.volume("dr").into_os_string();
    role.push(".journal/role.json");
    std::fs::remove_file(role).unwrap();
    let before = harness::cluster::file_digest(&site.volume("dr")).unwrap();
    let dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |_| {});
    let mut dr = dr;
    qemu_write(&primary, &[MIB, 7 * MIB], 64 * 1024);
    let v = wait_for("dr refused", &primary, &[&dr], CATCH_UP, |v| {
        v.peer("dr")
            .is_some_and(|p| p.connection == ConnectionState::Refused)
    })
    .unwrap();
    let why = v.peer("dr").unwrap().last_error.clone().unwrap_or_default();
    eprintln!("refused: {why}");
    assert!(why.contains("unrelated"), "{why}");
    let err = dr.volume().unwrap().last_error.unwrap_or_default();
    assert!(
        err.contains("unrelated"),
        "the secondary names it too: {err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        harness::cluster::file_digest(&site.volume("dr")).unwrap(),
        before,
        "nothing was written to the refused peer"
    );
    let out = cli(
        &site,
        &["resync", "vol0", "--peer", "dr", "--full", "--wait"],
    );
    assert!(
        out.status.success(),
        "resync --full: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v.peer("dr").unwrap().last_resync.clone().expect("resynced");
    assert!(r.full, "{r:?}");
    stop_and_compare(&site, &mut primary, &mut dr);
}

#[test]
fn verify_names_a_flipped_region_and_repair_fixes_it() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    prefill(&site.volume("primary"), 32, 4);
    let mut dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |_| {});
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    // Bit rot on the replica while it is stopped.
    dr.stop().unwrap();
    let flip_at = 77 * REGION + 1234;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(site.volume("dr"))
        .unwrap();
    let mut b = [0u8; 16];
    f.read_exact_at(&mut b, flip_at).unwrap();
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, flip_at).unwrap();
    f.sync_all().unwrap();
    dr.restart().unwrap();
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let out = cli(&site, &["verify", "vol0", "--peer", "dr", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "differences: exit 3\n{stdout}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let report = &reports[0]["report"];
    assert_eq!(report["mismatches"], 1, "{report}");
    assert_eq!(report["ranges"][0][0], 77 * REGION, "{report}");
    assert_eq!(peer(&primary).disk, DiskState::Inconsistent);
    let out = cli(&site, &["verify", "vol0", "--peer", "dr", "--repair"]);
    assert!(
        out.status.success(),
        "verify --repair: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(&site, &["verify", "vol0", "--peer", "dr"]);
    assert!(
        out.status.success(),
        "a second verify is clean: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    stop_and_compare(&site, &mut primary, &mut dr);
}

#[test]
fn recreated_primary_journal_is_not_streamed_from_a_stale_lsn() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let mut dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |_| {});
    qemu_write(&primary, &[0, 3 * MIB, 9 * MIB], MIB);
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    primary.stop().unwrap();
    // The journal is lost and re-created; the volume carries on (its data
    // has no records now), and changes again before the peer is back.
    let journal_dir = primary.config.volumes[0].journal_dir();
    assert!(journal_dir.is_dir(), "{}", journal_dir.display());
    std::fs::remove_dir_all(&journal_dir).unwrap();
    primary.restart().unwrap();
    qemu_write(&primary, &[3 * MIB + 4096, 20 * MIB], 8192);
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v
        .peer("dr")
        .unwrap()
        .last_resync
        .clone()
        .expect("a resync ran");
    eprintln!("after the journal was re-created: {r:?}");
    assert!(r.full && r.compare, "{r:?}");
    stop_and_compare(&site, &mut primary, &mut dr);
}

/// Kills one side with SIGKILL at a random moment of a running resync,
/// five times, then lets it finish. The peer is never up to date while
/// the resync is unfinished; the bytes sent in all attempts stay within
/// 1.3× of the volume's data.
fn kill_mid_resync(victim_is_primary: bool) {
    let site = Site::temp().unwrap();
    prefill(&site.volume("primary"), 96, 5);
    let mut dr = start_dr(&site);
    // Slow enough that a resync of 96 MiB takes ~4 s.
    let tune = |v: &mut VolumeSection| {
        v.resync_max_rate = 24 * MIB;
        v.resync_min_rate = 24 * MIB;
    };
    let mut primary = primary_of(&site, &dr, tune);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6 + u64::from(victim_is_primary));
    let mut sent_before_kills = 0u64;
    for cycle in 0..5 {
        let st = wait_for("a resync running", &primary, &[&dr], CATCH_UP, |v| {
            v.peer("dr").is_some_and(|p| p.job.is_some())
        })
        .unwrap();
        let p = st.peer("dr").unwrap();
        assert!(!up_to_date(p), "cycle {cycle}: {p:#?}");
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        let p = peer(&primary);
        assert_ne!(p.disk, DiskState::UpToDate, "cycle {cycle}: {p:#?}");
        sent_before_kills += p.job.as_ref().map_or(0, |j| j.bytes_sent);
        if victim_is_primary {
            primary.kill9();
            primary.restart().unwrap();
        } else {
            dr.kill9();
            // Its own status says so while it is away from its primary.
            dr.restart().unwrap();
            let own = dr.volume().unwrap();
            assert_ne!(own.disk, DiskState::UpToDate, "{own:#?}");
        }
    }
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v.peer("dr").unwrap().last_resync.clone().expect("resynced");
    let total = sent_before_kills + r.bytes_sent;
    eprintln!("after 5 kills: {sent_before_kills} B sent before them, last resync {r:?}");
    assert!(
        total <= 96 * MIB * 13 / 10,
        "{total} B sent for 96 MiB of data"
    );
    stop_and_compare(&site, &mut primary, &mut dr);
}

#[test]
fn secondary_killed_mid_resync_five_times_resumes_and_ends_identical() {
    let _serial = serial();
    kill_mid_resync(false);
}

#[test]
fn primary_killed_mid_resync_five_times_resumes_and_ends_identical() {
    let _serial = serial();
    kill_mid_resync(true);
}

#[test]
fn resync_under_a_fio_verify_workload_ends_identical() {
    let _serial = serial();
    require_tool("fio");
    let site = Site::temp().unwrap();
    prefill(&site.volume("primary"), 128, 7);
    let mut dr = start_dr(&site);
    let mut primary = primary_of(&site, &dr, |v| {
        v.resync_max_rate = 32 * MIB;
        v.resync_min_rate = 16 * MIB;
    });
    let started = Instant::now();
    let uri = primary.nbd_uri.clone().unwrap();
    let out = run(
        Command::new("fio").args([
            "--name=during-resync",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=64m",
            "--offset=64m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ]),
        Duration::from_secs(180),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "fio verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = peer(&primary);
    eprintln!(
        "fio done after {:?}; peer then: {:?} {:?}",
        started.elapsed(),
        during.disk,
        during.job
    );
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v.peer("dr").unwrap().last_resync.clone().expect("resynced");
    eprintln!("resync {r:?}");
    stop_and_compare(&site, &mut primary, &mut dr);
}

/// An unclean primary restart that lost what its journal had not synced,
/// simulated faithfully: the primary's volume and journal directory are
/// copied while it runs, idle after a FLUSH (what a power loss would leave
/// on disk), more is written (its sync peer journals it), the primary is
/// killed and restarted from the copy. The peer holds records the primary
/// no longer has: it is rolled back by a resync of those ranges, and ends
/// identical to the primary — never ahead, never stuck.
#[test]
fn sync_peer_ahead_of_a_primary_restarted_from_older_files_is_rolled_back() {
    let _serial = serial();
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let mut dr = start_dr(&site);
    let mut primary = primary_with(&site, &dr, PeerMode::Sync, |v| {
        v.checkpoint_interval = Duration::from_secs(3600);
    });
    qemu_write(&primary, &[0, 4 * MIB, 30 * MIB], MIB);
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let at_copy = primary.volume().unwrap().written_lsn;
    let journal = primary.config.volumes[0].journal_dir();
    let saved = site.path("saved");
    std::fs::create_dir(&saved).unwrap();
    copy_as_is(&site.volume("primary"), &saved.join("primary.img"));
    copy_as_is(&journal, &saved.join("journal"));
    // Later writes: the sync peer holds them, the copy does not.
    qemu_write(&primary, &[4 * MIB + 8192, 50 * MIB, 51 * MIB], 256 * 1024);
    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let peer_had = peer(&primary).acked_lsn;
    assert!(peer_had > at_copy);
    primary.kill9();
    std::fs::remove_dir_all(&journal).unwrap();
    copy_as_is(&saved.join("primary.img"), &site.volume("primary"));
    copy_as_is(&saved.join("journal"), &journal);
    primary.restart().unwrap();
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP).unwrap();
    let r = v
        .peer("dr")
        .unwrap()
        .last_resync
        .clone()
        .expect("a rollback resync ran");
    eprintln!(
        "primary back at LSN {} (copy at {at_copy}), peer had {peer_had}: {r:?}",
        v.written_lsn
    );
    assert!(!r.full, "only the ranges of the lost records: {r:?}");
    assert!(r.regions >= 3, "{r:?}");
    assert!(
        v.generation != v.lineage[0].id,
        "an unclean restart starts a generation: {:?}",
        v.lineage
    );
    stop_and_compare(&site, &mut primary, &mut dr);
}
