//! Replication between real `driftless run` nodes on loopback, driven by
//! real clients (fio, nbdfuse + ext4) and by a recording NBD workload that
//! knows exactly what was written, in which order, and what was
//! acknowledged, so each replica can be checked against invariant 1 (no
//! acknowledged write lost) and invariant 2 (a replica is a prefix of the
//! primary's write history).
//!
//! The tests of this file run one at a time (a process-wide lock): they
//! measure latency and kill processes at chosen moments, and share 2 cores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driftless_tests::cluster::{
    assert_same_files, node_config, read_at, wait_caught_up, wait_for, Node, PeerState, Pki, Via,
    VolumeSpec,
};
use driftless_tests::{require_root, require_tool, run, run_ok};
use nbd_shim::client::{Client, CMD_FLUSH, CMD_WRITE};
use rand::Rng;

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
const CATCH_UP: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_uuid() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.gen::<u32>(),
        rng.gen::<u16>(),
        rng.gen::<u16>() & 0xfff,
        rng.gen::<u16>() & 0xfff,
        rng.gen::<u64>() & 0xffff_ffff_ffff
    )
}

/// A working directory with a CA and the volume UUID every node shares.
struct Site {
    dir: tempfile::TempDir,
    pki: Pki,
    uuid: String,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(&dir.path().join("certs")).unwrap();
        Site {
            dir,
            pki,
            uuid: new_uuid(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn volume(&self, node: &str) -> PathBuf {
        self.path(&format!("{node}.img"))
    }

    fn control(&self, node: &str) -> PathBuf {
        self.path(&format!("{node}.ctl"))
    }

    fn nbd_socket(&self) -> PathBuf {
        self.path("primary-nbd.sock")
    }

    /// The node config text for `name` (its certificate made on first use).
    fn config(&self, name: &str, vol: VolumeSpec) -> String {
        let tls = if self.pki.tls(name).cert.exists() {
            self.pki.tls(name)
        } else {
            self.pki.node(name).unwrap()
        };
        node_config(name, &self.control(name), &tls, &[vol])
    }

    fn secondary_spec(&self, name: &str, size: &str, via: Via) -> VolumeSpec {
        VolumeSpec::secondary(&self.uuid, &self.volume(name), size, via)
    }

    fn start_secondary(&self, name: &str, size: &str, via: Via) -> Node {
        let text = self.config(name, self.secondary_spec(name, size, via));
        Node::start(self.dir.path(), name, &text)
            .unwrap_or_else(|e| panic!("starting secondary {name}: {e:#}"))
    }

    fn primary_spec(&self, size: &str) -> VolumeSpec {
        VolumeSpec::primary(
            &self.uuid,
            &self.volume("primary"),
            size,
            &self.nbd_socket(),
        )
    }

    fn start_primary(&self, spec: VolumeSpec) -> Node {
        let text = self.config("primary", spec);
        Node::start(self.dir.path(), "primary", &text)
            .unwrap_or_else(|e| panic!("starting primary: {e:#}"))
    }
}

/// Writes a config with a fixed listening address for restarts of a
/// secondary started on port 0, so the primary finds it again.
fn fixed_config(site: &Site, node: &Node, spec: VolumeSpec, suffix: &str) -> PathBuf {
    let spec = VolumeSpec {
        listen_tcp: node.tcp,
        listen_quic: node.quic,
        ..spec
    };
    let path = site.path(&format!("{}-{suffix}.toml", node.name));
    std::fs::write(&path, site.config(&node.name, spec)).unwrap();
    path
}

fn wait_connected(primary: &Node, peers: &[&str], nodes: &[&Node]) {
    wait_for(
        &format!("peers {peers:?} connected"),
        primary,
        nodes,
        Duration::from_secs(20),
        |v| {
            peers
                .iter()
                .all(|n| v.peer(n).is_some_and(|p| p.state == PeerState::Connected))
        },
    );
}

// ---------------------------------------------------------------------------
// The recording workload.

/// Deterministic payload of write `seq` to block index `block`: a header
/// naming both, then bytes from a xorshift seeded by both, so a torn,
/// misplaced or foreign block is detected.
fn payload(block: u32, seq: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    data[..8].copy_from_slice(b"DRFTTEST");
    data[8..12].copy_from_slice(&block.to_le_bytes());
    data[16..24].copy_from_slice(&seq.to_le_bytes());
    let mut x = (seq ^ ((block as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in data[24..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// What a block of a replica holds: `None` for zeros (never written), the
/// sequence number of an intact write to this very block, or an error.
fn decode(block: u32, data: &[u8]) -> Result<Option<u64>, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(data[16..24].try_into().unwrap());
    if data != payload(block, seq).as_slice() {
        let claims = u32::from_le_bytes(data[8..12].try_into().unwrap());
        return Err(format!(
            "block {block} holds a torn or foreign 4 KiB (header claims block {claims} seq {seq})"
        ));
    }
    Ok(Some(seq))
}

#[derive(Default, Clone, Debug)]
struct BlockState {
    last_acked: Option<u64>,
    inflight: Option<u64>,
}

const FLUSH_COOKIE_BIT: u64 = 1 << 63;

#[derive(Default)]
struct Shared {
    blocks: Vec<BlockState>,
    /// `history[seq - 1]`: the block index of write `seq`, in issue order.
    history: Vec<u32>,
    /// Writes with seq <= this were issued at queue depth 1 (issue order =
    /// acknowledgement order = LSN order).
    qd1_until: u64,
    depth: usize,
    inflight: usize,
    acked: u64,
    sent_at: HashMap<u64, Instant>,
    /// (completion time, latency) of every write.
    completions: Vec<(Instant, Duration)>,
    /// Per in-flight FLUSH: writes acknowledged when it was sent.
    flushes: HashMap<u64, u64>,
    flushes_acked: u64,
    acked_before_flush: u64,
    /// SIGKILL this pid on the first FLUSH reply after this instant.
    kill_on_flush: Option<(Instant, u32)>,
    /// Set when that kill happened: writes acked when the killing FLUSH was sent.
    killed: Option<KillPoint>,
    errors: Vec<String>,
    stop: bool,
    dead: bool,
}

#[derive(Clone, Debug)]
struct KillPoint {
    acked_before_flush: u64,
    acked_at_kill: u64,
    blocks_at_kill: Vec<BlockState>,
}

struct WorkloadCfg {
    /// Number of distinct 4 KiB blocks, placed every `stride` bytes.
    blocks: u32,
    stride: u64,
    depth: usize,
    /// A FLUSH after every this many requests (0: never).
    flush_every: u64,
    /// Sleep this long after each send (caps the rate).
    pace: Option<Duration>,
}

struct Workload {
    state: Arc<(Mutex<Shared>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    fn start(socket: &Path, cfg: WorkloadCfg) -> Workload {
        let mut sender = Client::connect(socket, "vol0").expect("NBD connect to the primary");
        let mut receiver = sender.try_clone().expect("clone socket");
        let state = Arc::new((
            Mutex::new(Shared {
                blocks: vec![BlockState::default(); cfg.blocks as usize],
                depth: cfg.depth,
                ..Shared::default()
            }),
            Condvar::new(),
        ));
        let stride = cfg.stride;

        let st = state.clone();
        let recv = std::thread::spawn(move || {
            let (lock, cv) = &*st;
            while let Ok((reply, _)) = receiver.recv(|_| 0) {
                let now = Instant::now();
                let mut w = lock.lock().unwrap();
                if reply.error != 0 {
                    w.errors.push(format!(
                        "request {:#x} failed with NBD error {}",
                        reply.cookie, reply.error
                    ));
                }
                if reply.cookie & FLUSH_COOKIE_BIT != 0 {
                    let Some(covered) = w.flushes.remove(&reply.cookie) else {
                        w.errors
                            .push(format!("unknown flush cookie {:#x}", reply.cookie));
                        break;
                    };
                    w.flushes_acked += 1;
                    w.acked_before_flush = w.acked_before_flush.max(covered);
                    if let Some((after, pid)) = w.kill_on_flush {
                        if now >= after && w.killed.is_none() {
                            driftless_tests::signal(pid, libc::SIGKILL);
                            w.killed = Some(KillPoint {
                                acked_before_flush: covered,
                                acked_at_kill: w.acked,
                                blocks_at_kill: w.blocks.clone(),
                            });
                        }
                    }
                } else {
                    let seq = reply.cookie;
                    let Some(&block) = w.history.get(seq as usize - 1) else {
                        w.errors.push(format!("reply for unknown write {seq}"));
                        break;
                    };
                    if w.blocks[block as usize].inflight != Some(seq) {
                        w.errors
                            .push(format!("reply for write {seq} not in flight on its block"));
                    }
                    let b = &mut w.blocks[block as usize];
                    b.inflight = None;
                    b.last_acked = Some(seq);
                    w.acked += 1;
                    if let Some(sent) = w.sent_at.remove(&seq) {
                        w.completions.push((now, now - sent));
                    }
                }
                w.inflight -= 1;
                cv.notify_all();
            }
            lock.lock().unwrap().dead = true;
            cv.notify_all();
        });

        let st = state.clone();
        let send = std::thread::spawn(move || {
            let (lock, cv) = &*st;
            let mut rng = rand::thread_rng();
            let mut requests = 0u64;
            loop {
                let mut w = lock.lock().unwrap();
                while w.inflight >= w.depth && !w.dead && !w.stop {
                    w = cv.wait(w).unwrap();
                }
                if w.stop || w.dead {
                    break;
                }
                requests += 1;
                if cfg.flush_every > 0 && requests.is_multiple_of(cfg.flush_every) {
                    let cookie = requests | FLUSH_COOKIE_BIT;
                    let covered = w.acked;
                    w.flushes.insert(cookie, covered);
                    w.inflight += 1;
                    drop(w);
                    if sender.send(CMD_FLUSH, cookie, 0, 0, &[]).is_err() {
                        return;
                    }
                    continue;
                }
                // One write in flight per block: each block's writes are ordered.
                let block = loop {
                    let b = rng.gen_range(0..cfg.blocks);
                    if w.blocks[b as usize].inflight.is_none() {
                        break b;
                    }
                };
                w.history.push(block);
                let seq = w.history.len() as u64;
                if w.depth == 1 && w.qd1_until == seq - 1 {
                    w.qd1_until = seq;
                }
                w.blocks[block as usize].inflight = Some(seq);
                w.inflight += 1;
                w.sent_at.insert(seq, Instant::now());
                drop(w);
                let data = payload(block, seq);
                if sender
                    .send(CMD_WRITE, seq, block as u64 * stride, BLOCK as u32, &data)
                    .is_err()
                {
                    return;
                }
                if let Some(p) = cfg.pace {
                    std::thread::sleep(p);
                }
            }
            // Stopped: let the in-flight requests finish, then disconnect.
            let mut w = lock.lock().unwrap();
            while w.inflight > 0 && !w.dead {
                w = cv.wait(w).unwrap();
            }
            drop(w);
            let _ = sender.disconnect();
        });
        Workload {
            state,
            threads: vec![send, recv],
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut w = self.state.0.lock().unwrap();
        let out = f(&mut w);
        self.state.1.notify_all();
        out
    }

    fn set_depth(&self, depth: usize) {
        self.with(|w| w.depth = depth);
    }

    fn assert_healthy(&self) {
        self.with(|w| {
            assert!(w.errors.is_empty(), "workload errors: {:?}", w.errors);
            assert!(!w.dead, "the primary closed the NBD connection");
        });
    }

    /// Stops sending, waits for the in-flight requests, disconnects.
    fn stop(mut self) -> Shared {
        self.with(|w| w.stop = true);
        for t in self.threads.drain(..) {
            t.join().expect("workload thread panicked");
        }
        let state = std::mem::take(&mut *self.state.0.lock().unwrap());
        assert!(
            state.errors.is_empty(),
            "workload errors: {:?}",
            state.errors
        );
        state
    }

    /// Waits for the threads after the server died.
    fn join_dead(mut self) -> Shared {
        for t in self.threads.drain(..) {
            t.join().expect("workload thread panicked");
        }
        std::mem::take(&mut *self.state.0.lock().unwrap())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // On a panic elsewhere: make the sender give up; the node's Drop
        // kills the server, which ends the receiver.
        if let Ok(mut w) = self.state.0.lock() {
            w.stop = true;
            self.state.1.notify_all();
        }
    }
}

/// Reads every workload block of a volume file.
fn read_blocks(file: &Path, blocks: u32, stride: u64) -> Vec<Vec<u8>> {
    (0..blocks)
        .map(|b| read_at(file, b as u64 * stride, BLOCK))
        .collect()
}

/// Invariant 2 on a QD1 history: finds the range of N such that every block
/// holds exactly the latest write with seq <= N to it.
fn check_prefix(contents: &[Vec<u8>], history: &[u32]) -> Result<(u64, u64), String> {
    let n_max = history.len() as u64;
    // Per block, its writes' sequence numbers in order.
    let mut writes: Vec<Vec<u64>> = vec![Vec::new(); contents.len()];
    for (i, &b) in history.iter().enumerate() {
        writes[b as usize].push(i as u64 + 1);
    }
    let mut lo = (0u64, None); // (seq, block holding it)
    let mut hi = (n_max + 1, None); // (first missing seq, its block)
    for (b, data) in contents.iter().enumerate() {
        let found = decode(b as u32, data)?;
        let next = match found {
            None => writes[b].first().copied(),
            Some(s) => {
                if s > n_max || history[s as usize - 1] != b as u32 {
                    return Err(format!(
                        "block {b} holds seq {s}, which was never written to it ({n_max} writes issued)"
                    ));
                }
                if s > lo.0 {
                    lo = (s, Some(b));
                }
                writes[b].iter().copied().find(|&w| w > s)
            }
        };
        if let Some(n) = next {
            if n < hi.0 {
                hi = (n, Some(b));
            }
        }
    }
    if lo.0 >= hi.0 {
        let (hb, lb) = (hi.1.unwrap(), lo.1.unwrap());
        return Err(format!(
            "not a prefix of the write history: block {lb} holds write {} but block {hb} misses the older write {} (it holds {:?})",
            lo.0,
            hi.0,
            decode(hb as u32, &contents[hb]).ok().flatten()
        ));
    }
    Ok((lo.0, hi.0 - 1))
}

/// Block-level sanity for any history: every block is zero or an intact
/// write to this block that was issued.
fn check_sane(contents: &[Vec<u8>], history: &[u32]) -> Result<(), String> {
    for (b, data) in contents.iter().enumerate() {
        if let Some(s) = decode(b as u32, data)? {
            if s as usize > history.len() || history[s as usize - 1] != b as u32 {
                return Err(format!("block {b} holds seq {s}, never written to it"));
            }
        }
    }
    Ok(())
}

/// The latest write to each block (the workload is stopped).
fn expected_final(history: &[u32], blocks: u32) -> Vec<Option<u64>> {
    let mut last = vec![None; blocks as usize];
    for (i, &b) in history.iter().enumerate() {
        last[b as usize] = Some(i as u64 + 1);
    }
    last
}

// ---------------------------------------------------------------------------
// 1. Three nodes under fio with verification.

#[test]
fn three_nodes_fio_verify_then_identical_volumes() {
    let _serial = serial();
    require_tool("fio");
    let site = Site::new();
    let size = "64MiB";
    let mut metro = site.start_secondary("metro", size, Via::Tcp);
    let mut dr = site.start_secondary("dr", size, Via::Quic);
    let spec = site
        .primary_spec(size)
        .peer("metro", true, Via::Tcp, metro.tcp.unwrap())
        .peer("dr", false, Via::Quic, dr.quic.unwrap());
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["metro", "dr"], &[&metro, &dr]);

    let started = Instant::now();
    let out = run(
        Command::new("fio").args([
            "--name=replicated",
            "--ioengine=nbd",
            &format!("--uri={}", primary.nbd_uri.as_ref().unwrap()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=64m",
            "--verify=crc32c",
            // No verify-state files in the working directory.
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--randrepeat=0",
        ]),
        Duration::from_secs(120),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("err= 0"),
        "fio failed ({}): {stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        primary.log_tail(30)
    );
    eprintln!("fio took {:?}", started.elapsed());

    let v = wait_caught_up(&primary, &["metro", "dr"], &[&metro, &dr], CATCH_UP);
    eprintln!(
        "caught up at written LSN {} after {:?}",
        v.written_lsn,
        started.elapsed()
    );
    // 64 MiB of 4 KiB writes: at least 16384 records.
    assert!(v.written_lsn >= 16384, "{v:#?}");
    primary.stop();
    metro.stop();
    dr.stop();
    assert_same_files(&site.volume("primary"), &site.volume("metro"));
    assert_same_files(&site.volume("primary"), &site.volume("dr"));
}

// ---------------------------------------------------------------------------
// 2. Invariant 1 on the sync peer: kill -9 the primary right after a FLUSH.

#[test]
fn sync_peer_holds_every_write_acknowledged_before_the_primary_died() {
    let _serial = serial();
    let mut rng = rand::thread_rng();
    for round in 0..2 {
        let site = Site::new();
        let size = "64MiB";
        let mut metro = site.start_secondary("metro", size, Via::Tcp);
        let spec = site
            .primary_spec(size)
            .peer("metro", true, Via::Tcp, metro.tcp.unwrap());
        let mut primary = site.start_primary(spec);
        wait_connected(&primary, &["metro"], &[&metro]);

        let blocks = 16384; // every 4 KiB block of 64 MiB
        let workload = Workload::start(
            primary.nbd_socket.as_ref().unwrap(),
            WorkloadCfg {
                blocks,
                stride: BLOCK as u64,
                depth: 16,
                flush_every: 48,
                pace: None,
            },
        );
        let after = Duration::from_millis(rng.gen_range(400..1500));
        workload.with(|w| w.kill_on_flush = Some((Instant::now() + after, primary.pid())));
        let w = workload.join_dead();
        primary.kill9();
        let kill = w.killed.clone().unwrap_or_else(|| {
            panic!(
                "round {round}: the primary died before a FLUSH completed after {after:?}: errors {:?}\n{}",
                w.errors,
                primary.log_tail(30)
            )
        });
        assert!(
            w.errors.is_empty(),
            "round {round}: workload errors: {:?}",
            w.errors
        );
        assert!(kill.acked_before_flush > 0, "round {round}: nothing acked");

        metro.stop();
        let file = site.volume("metro");
        let contents = read_blocks(&file, blocks, BLOCK as u64);
        let mut missing = Vec::new();
        let mut present = 0;
        for (b, state) in w.blocks.iter().enumerate() {
            let found = decode(b as u32, &contents[b]).unwrap_or_else(|e| {
                panic!("round {round}: metro's volume: {e}\n{}", metro.log_tail(30))
            });
            let ok = match state.inflight {
                None => found == state.last_acked,
                // Sent but not acknowledged when the primary died: either.
                Some(pending) => found == Some(pending) || found == state.last_acked,
            };
            if ok {
                present += state.last_acked.is_some() as u64;
            } else {
                missing.push((b, state.clone().last_acked, state.inflight, found));
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: the sync peer lacks acknowledged writes ({} blocks; first: block, last acked, in flight, found = {:?}); \
             {} writes were acknowledged before the last FLUSH reply, {} when the primary was killed\n{}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            kill.acked_before_flush,
            kill.acked_at_kill,
            primary.log_tail(20),
            metro.log_tail(20)
        );
        // The blocks as they stood at the kill: everything the FLUSH covered
        // was acknowledged by then, and is checked above.
        assert!(kill.blocks_at_kill.len() == blocks as usize);
        eprintln!(
            "round {round}: killed {after:?} in, right after FLUSH #{} covering {} writes; {} acked in all; {present} blocks with an acked write all on the sync peer",
            w.flushes_acked, kill.acked_before_flush, w.acked
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Invariant 2 on an async peer killed under load.

#[test]
fn async_peer_killed_under_load_always_holds_a_prefix() {
    let _serial = serial();
    let site = Site::new();
    let size = "64MiB";
    let (blocks, stride) = (48u32, MIB);
    let mut dr = site.start_secondary("dr", size, Via::Tcp);
    // Checkpoints every second keep the journal short: the peer's outages
    // (about a second each) must stay within it, or it would need a resync.
    let spec = site
        .primary_spec(size)
        .set("checkpoint_interval", "\"1s\"")
        .peer("dr", false, Via::Tcp, dr.tcp.unwrap());
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["dr"], &[&dr]);
    let fixed = fixed_config(
        &site,
        &dr,
        site.secondary_spec("dr", size, Via::Tcp),
        "fixed",
    );
    // A config on another port: restarting with it runs the journal's
    // recovery without the primary reaching the node.
    let isolated = site.path("dr-isolated.toml");
    std::fs::write(
        &isolated,
        site.config("dr", site.secondary_spec("dr", size, Via::Tcp)),
    )
    .unwrap();

    let workload = Workload::start(
        primary.nbd_socket.as_ref().unwrap(),
        WorkloadCfg {
            blocks,
            stride,
            depth: 1,
            flush_every: 0,
            // A few thousand writes per second at most.
            pace: Some(Duration::from_micros(200)),
        },
    );
    let mut rng = rand::thread_rng();
    let file = site.volume("dr");
    for round in 0..4 {
        let qd8 = round == 3;
        if qd8 {
            workload.set_depth(8);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1000)));
        workload.assert_healthy();
        dr.kill9();
        // The file as the crash left it, then the history issued so far
        // (anything in the file was issued before this snapshot).
        let contents = read_blocks(&file, blocks, stride);
        let history = workload.with(|w| w.history.clone());
        let qd1 = workload.with(|w| w.qd1_until) as usize;
        let check = |what: &str, contents: &[Vec<u8>], log: String| {
            let result = if qd8 {
                check_sane(contents, &history).map(|_| (0, 0))
            } else {
                check_prefix(contents, &history[..qd1.min(history.len())])
            };
            match result {
                Ok(_) if qd8 => eprintln!(
                    "round {round} (QD8): {what}: every block intact and issued ({} writes)",
                    history.len()
                ),
                Ok((lo, hi)) => eprintln!(
                    "round {round} (QD1): {what}: prefix N in [{lo}, {hi}] of {} writes issued",
                    history.len()
                ),
                Err(e) => panic!("round {round}: {what}: {e}\n{log}"),
            }
        };
        check(
            "volume file right after kill -9",
            &contents,
            dr.log_tail(30),
        );

        // Recovery alone (journal redo), out of the primary's reach.
        let mut alone = Node::start_config(site.dir.path(), "dr", &isolated)
            .unwrap_or_else(|e| panic!("round {round}: restarting dr isolated: {e:#}"));
        alone.stop();
        let recovered = read_blocks(&file, blocks, stride);
        check(
            "volume file after journal recovery",
            &recovered,
            alone.log_tail(30),
        );

        dr = Node::start_config(site.dir.path(), "dr", &fixed)
            .unwrap_or_else(|e| panic!("round {round}: restarting dr: {e:#}"));
    }
    let w = workload.stop();
    eprintln!(
        "{} writes ({} at QD1), {} acknowledged",
        w.history.len(),
        w.qd1_until,
        w.acked
    );
    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP);
    assert!(v.written_lsn >= w.history.len() as u64, "{v:#?}");
    primary.stop();
    dr.stop();
    let expected = expected_final(&w.history, blocks);
    let on_primary = read_blocks(&site.volume("primary"), blocks, stride);
    for (b, data) in on_primary.iter().enumerate() {
        assert_eq!(
            decode(b as u32, data).unwrap(),
            expected[b],
            "primary's block {b} is not its last write"
        );
    }
    assert_same_files(&site.volume("primary"), &file);
}

// ---------------------------------------------------------------------------
// 5. ext4 on the primary, checked on the DR copy's file.

#[test]
fn ext4_written_on_the_primary_mounts_from_the_dr_copy() {
    let _serial = serial();
    require_root!("ext4 replication (nbdfuse + losetup + mount)");
    require_tool("nbdfuse");
    let site = Site::new();
    let size = "128MiB";
    let mut dr = site.start_secondary("dr", size, Via::Quic);
    let spec = site
        .primary_spec(size)
        .peer("dr", false, Via::Quic, dr.quic.unwrap());
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["dr"], &[&dr]);

    let payload_file = site.path("payload.bin");
    driftless_tests::random_file(&payload_file, 12 * MIB as usize).unwrap();
    let minute = Duration::from_secs(60);
    {
        let attach = driftless_tests::mount::Attachment::new(
            site.dir.path(),
            primary.nbd_uri.as_ref().unwrap(),
            false,
        )
        .unwrap();
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-F", "-q"])
                .arg(attach.loop_dev()),
            minute,
        )
        .unwrap();
        let mnt = attach.mount().unwrap();
        std::fs::copy(&payload_file, mnt.path().join("payload.bin")).unwrap();
        std::fs::create_dir(mnt.path().join("dir")).unwrap();
        for i in 0..40 {
            std::fs::write(
                mnt.path().join(format!("dir/file-{i}")),
                format!("replicated file {i}\n").repeat(50 + i),
            )
            .unwrap();
        }
        run_ok(&mut Command::new("sync"), minute).unwrap();
        drop(mnt); // umount
    } // loop device detached, nbdfuse gone

    wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP);
    dr.stop();
    primary.stop();
    let dr_file = site.volume("dr");
    let lo = driftless_tests::mount::LoopFile::read_only(&dr_file).unwrap();
    let fsck = run(Command::new("e2fsck").arg("-fn").arg(lo.loop_dev()), minute).unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the DR copy found problems: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let mnt = lo.mount().unwrap();
    let same = run(
        Command::new("cmp")
            .arg(&payload_file)
            .arg(mnt.path().join("payload.bin")),
        minute,
    )
    .unwrap();
    assert!(
        same.status.success(),
        "payload differs on the DR copy: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    for i in 0..40 {
        let text = std::fs::read_to_string(mnt.path().join(format!("dir/file-{i}"))).unwrap();
        assert_eq!(text, format!("replicated file {i}\n").repeat(50 + i));
    }
    drop(mnt);
    drop(lo);
    assert_same_files(&site.volume("primary"), &dr_file);
}

// ---------------------------------------------------------------------------
// 6. Refusals and hostile connections.

/// Waits for `peer`'s state on the primary to be `refused`; returns why.
fn refused_reason(primary: &Node, peer: &str, others: &[&Node]) -> String {
    let v = wait_for(
        &format!("peer {peer} refused"),
        primary,
        others,
        Duration::from_secs(20),
        |v| {
            v.peer(peer)
                .is_some_and(|p| p.state == PeerState::Refused)
        },
    );
    let p = v.peer(peer).unwrap();
    p.last_error.clone().expect("a refused peer says why")
}

fn all_zero(path: &Path) -> bool {
    std::fs::read(path).unwrap().iter().all(|&b| b == 0)
}

/// Writes `n` blocks through the primary (QD1, FLUSH at the end).
fn write_some(primary: &Node, n: u32) -> Shared {
    let workload = Workload::start(
        primary.nbd_socket.as_ref().unwrap(),
        WorkloadCfg {
            blocks: 64,
            stride: 64 * 1024,
            depth: 4,
            flush_every: 16,
            pace: None,
        },
    );
    let start = Instant::now();
    while workload.with(|w| w.acked) < n as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "writes stalled: {} acked\n{}",
            workload.with(|w| w.acked),
            primary.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    workload.stop()
}

#[test]
fn peers_with_a_foreign_ca_or_another_size_are_refused_and_get_nothing() {
    let _serial = serial();
    let site = Site::new();
    let size = "32MiB";
    // "rogue" holds a certificate for its name, but from another CA (which
    // it also trusts itself).
    let other = Pki::new(&site.path("other-ca")).unwrap();
    let rogue_tls = other.node("rogue").unwrap();
    let rogue_text = node_config(
        "rogue",
        &site.control("rogue"),
        &rogue_tls,
        &[site.secondary_spec("rogue", size, Via::Tcp)],
    );
    let rogue = Node::start(site.dir.path(), "rogue", &rogue_text).unwrap();
    let small = site.start_secondary("small", "16MiB", Via::Tcp);
    let spec = site
        .primary_spec(size)
        .peer("rogue", false, Via::Tcp, rogue.tcp.unwrap())
        .peer("small", false, Via::Tcp, small.tcp.unwrap());
    let mut primary = site.start_primary(spec);

    let ca = refused_reason(&primary, "rogue", &[&rogue]);
    let sz = refused_reason(&primary, "small", &[&small]);
    eprintln!("rogue: {ca}\nsmall: {sz}");
    let lower = ca.to_lowercase();
    assert!(
        lower.contains("tls") && (lower.contains("ca") || lower.contains("issuer")),
        "the foreign-CA refusal does not name TLS/CA: {ca}\n{}",
        primary.log_tail(20)
    );
    assert!(
        sz.contains("size mismatch"),
        "the size refusal does not name the size mismatch: {sz}\n{}",
        primary.log_tail(20)
    );

    let w = write_some(&primary, 200);
    // Give a (wrongly) connected peer time to receive something.
    std::thread::sleep(Duration::from_millis(500));
    let v = primary.volume().unwrap();
    for name in ["rogue", "small"] {
        let p = v.peer(name).unwrap();
        assert!(
            p.state == PeerState::Refused,
            "{name} is no longer refused: {p:#?}"
        );
        assert_eq!(p.acked_lsn, 0, "{name} acknowledged records: {p:#?}");
    }
    for node in [&rogue, &small] {
        let s = node.volume().unwrap();
        assert_eq!(
            s.written_lsn, 0,
            "{} journaled records it should never have received: {s:#?}",
            node.name
        );
    }
    assert!(w.acked >= 200);
    primary.stop();
    drop(rogue);
    drop(small);
    for name in ["rogue", "small"] {
        assert!(
            all_zero(&site.volume(name)),
            "{name}'s volume received data"
        );
    }
}

#[test]
fn hostile_connections_leave_the_secondary_serving_the_real_primary() {
    let _serial = serial();
    let site = Site::new();
    let size = "32MiB";
    let mut metro = site.start_secondary("metro", size, Via::Tcp);
    let addr = metro.tcp.unwrap();

    // Plain garbage where a TLS ClientHello belongs.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = raw.write_all(&[0x42; 4096]);
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }
    // A valid certificate from the right CA, then junk instead of frames.
    let evil_tls = site.pki.node("evil").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let identity =
            transport::TlsIdentity::load(&evil_tls.cert, &evil_tls.key, &evil_tls.ca, None)
                .unwrap();
        // Frame header (docs/wire.md): magic "DRLS", version u16, type u16,
        // flags u32, payload_len u32, crc32 u32, little endian.
        let header = |len: u32| {
            let mut h = b"DRLS".to_vec();
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&0xdead_beefu32.to_le_bytes());
            h
        };
        for junk in [
            // Bad magic.
            b"DRLS but not a frame at all, only bytes.............".to_vec(),
            // A header promising 4 GiB (refused from the header alone).
            header(u32::MAX),
            // A small frame with a wrong CRC.
            [header(16), vec![0x55; 16]].concat(),
            // Zeros.
            vec![0u8; 100_000],
        ] {
            let mut conn = transport::connect_tcp(addr, "metro", &identity)
                .await
                .expect("TLS handshake with a certificate from the CA");
            let _ = conn.stream.write_all(&junk).await;
            let _ = conn.stream.flush().await;
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.stream.read_to_end(&mut sink))
                    .await;
        }
    });
    assert!(
        metro.is_running(),
        "the secondary died after hostile connections:\n{}",
        metro.log_tail(40)
    );
    let log = metro.log_text();
    assert!(
        log.contains("evil"),
        "the secondary's log does not name the hostile peer:\n{}",
        metro.log_tail(40)
    );

    // The real primary, sync: its writes complete only once metro has them.
    let spec = site.primary_spec(size).peer("metro", true, Via::Tcp, addr);
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["metro"], &[&metro]);
    let w = write_some(&primary, 300);
    let v = wait_caught_up(&primary, &["metro"], &[&metro], CATCH_UP);
    assert!(v.written_lsn >= w.acked, "{v:#?}");
    primary.stop();
    metro.stop();
    let contents = read_blocks(&site.volume("metro"), 64, 64 * 1024);
    for (b, state) in w.blocks.iter().enumerate() {
        assert_eq!(
            decode(b as u32, &contents[b]).unwrap(),
            state.last_acked,
            "metro's block {b} is not the last acknowledged write"
        );
    }
    assert_same_files(&site.volume("primary"), &site.volume("metro"));
}

// ---------------------------------------------------------------------------
// 4. An async QUIC peer behind a fault proxy: a cut link never stalls writes.

/// Completions per second and the worst latency among writes completed in
/// `[from, to)`.
fn rate_and_worst(w: &Shared, from: Instant, to: Instant) -> (f64, Duration) {
    let window: Vec<Duration> = w
        .completions
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, lat)| *lat)
        .collect();
    let secs = (to - from).as_secs_f64();
    (
        window.len() as f64 / secs,
        window.iter().copied().max().unwrap_or_default(),
    )
}

#[test]
fn async_quic_peer_behind_a_cut_link_never_stalls_writes_and_catches_up() {
    let _serial = serial();
    let site = Site::new();
    let size = "64MiB";
    let quick = |spec: VolumeSpec| {
        spec.set("keepalive_interval", "\"200ms\"")
            .set("peer_timeout", "\"1s\"")
    };
    let dr_spec = quick(site.secondary_spec("dr", size, Via::Quic));
    let dr_text = site.config("dr", dr_spec);
    let mut dr = Node::start(site.dir.path(), "dr", &dr_text).unwrap();
    let proxy = driftless_tests::cluster::FaultProxy::start(
        site.dir.path(),
        "udp",
        dr.quic.unwrap(),
        Some("10ms"),
    )
    .unwrap();
    let spec = quick(site.primary_spec(size)).peer("dr", false, Via::Quic, proxy.addr);
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["dr"], &[&dr]);

    let workload = Workload::start(
        primary.nbd_socket.as_ref().unwrap(),
        WorkloadCfg {
            blocks: 4096,
            stride: 16 * 1024,
            depth: 4,
            flush_every: 0,
            // At most ~1000 writes/s: the journal holds the whole cut.
            pace: Some(Duration::from_millis(1)),
        },
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let lag_before = primary.volume().unwrap().peer("dr").unwrap().lag_records;
    let cut_at = Instant::now();
    proxy.cut();
    let mut during = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(3) {
        let v = primary.volume().unwrap();
        let p = v.peer("dr").unwrap().clone();
        during.push((cut_at.elapsed(), p.state, p.lag_records, p.acked_lsn));
        std::thread::sleep(Duration::from_millis(200));
    }
    let restored_at = Instant::now();
    proxy.restore();
    std::thread::sleep(Duration::from_millis(1000));
    workload.assert_healthy();
    let w = workload.stop();

    let (rate_before, worst_before) = rate_and_worst(&w, t0 + Duration::from_millis(300), cut_at);
    let (rate_cut, worst_cut) = rate_and_worst(&w, cut_at, restored_at);
    eprintln!(
        "before the cut: {rate_before:.0} writes/s, worst {worst_before:?}; during: {rate_cut:.0} writes/s, worst {worst_cut:?}"
    );
    eprintln!("peer during the cut (elapsed, state, lag records, acked): {during:?}");
    let context = format!(
        "{}\n{}\nproxy log: {}",
        primary.log_tail(30),
        dr.log_tail(15),
        proxy.log_text()
    );
    assert!(
        rate_before > 100.0,
        "the workload barely ran before the cut ({rate_before:.0}/s)\n{context}"
    );
    assert!(
        rate_cut >= rate_before / 3.0,
        "writes slowed down while the async peer's link was cut: {rate_cut:.0}/s vs {rate_before:.0}/s before\n{context}"
    );
    assert!(
        worst_cut < Duration::from_secs(1),
        "a write waited {worst_cut:?} while the async peer's link was cut\n{context}"
    );
    let max_lag = during.iter().map(|d| d.2).max().unwrap_or(0);
    assert!(
        max_lag > lag_before + 500,
        "lag did not grow during the cut (before {lag_before}, max {max_lag}): {during:?}\n{context}"
    );
    assert!(
        during.iter().any(|d| d.1 != PeerState::Connected),
        "the peer stayed `connected` through a 3 s cut with peer_timeout 1s: {during:?}\n{context}"
    );

    let v = wait_caught_up(&primary, &["dr"], &[&dr], CATCH_UP);
    eprintln!(
        "caught up {:?} after the link was restored",
        restored_at.elapsed()
    );
    let p = v.peer("dr").unwrap();
    assert_eq!(
        p.dirty_regions, 0,
        "a 3 s outage fell back to a bitmap resync instead of the journal: {p:#?}"
    );
    assert!(v.written_lsn >= w.history.len() as u64);
    let stopping = Instant::now();
    primary.stop();
    dr.stop();
    eprintln!("both nodes stopped in {:?}", stopping.elapsed());
    assert_same_files(&site.volume("primary"), &site.volume("dr"));
}

// ---------------------------------------------------------------------------
// Invariant 4: an outage longer than the journal costs a bitmap resync, and
// the peer converges.

/// `passes` sequential 256 MiB fio writes (1 MiB, QD8) through the primary's
/// export; each must succeed (`when` says what the failure means).
fn fio_seq_passes(primary: &Node, passes: u32, name: &str, when: &str) {
    let uri = primary.nbd_uri.clone().unwrap();
    for pass in 0..passes {
        let out = run(
            Command::new("fio").args([
                &format!("--name={name}{pass}"),
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=write",
                "--bs=1m",
                "--iodepth=8",
                "--size=256m",
                "--verify_state_save=0",
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "fio pass {pass} failed {when}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            primary.log_tail(30)
        );
    }
}

/// An async peer slower than the writes (a 50 ms link through the fault
/// proxy, ~80 MB/s at most) while twice what the journal holds is written
/// must cost the client nothing: every write succeeds, the journal folds the
/// peer into its dirty bitmap instead of waiting for it, and status says that
/// the peer needs a resync. (The journal deadlock this set-up once hit in a
/// benchmark, EIO after 30 s, needs a finer timing; the journal's
/// `concurrent_writers_fill_past_a_stuck_consumer_without_errors` covers it.)
#[test]
fn async_peer_slower_than_the_writes_never_fails_a_client_write() {
    let _serial = serial();
    require_tool("fio");
    let site = Site::new();
    let size = "256MiB";
    let dr = site.start_secondary("dr", size, Via::Quic);
    let proxy = driftless_tests::cluster::FaultProxy::start(
        site.dir.path(),
        "udp",
        dr.quic.unwrap(),
        Some("50ms"),
    )
    .unwrap();
    let spec = site
        .primary_spec(size)
        .set("journal_size", "\"512MiB\"")
        .peer("dr", false, Via::Quic, proxy.addr);
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["dr"], &[&dr]);

    let started = Instant::now();
    fio_seq_passes(&primary, 4, "past-cap", "with a slow async peer");
    eprintln!("1 GiB written in {:.1} s", started.elapsed().as_secs_f64());
    let v = primary.volume().unwrap();
    let p = v.peer("dr").unwrap();
    eprintln!("{p:#?}");
    assert_eq!(p.state, PeerState::NeedsResync, "{p:#?}");
    assert!(p.dirty_regions > 0, "{p:#?}");
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("journal cap")),
        "{p:#?}"
    );
    primary.stop();
}

#[test]
#[ignore = "bitmap resync (tier 2) is the next issue: until it lands a peer folded past the journal cap stays needs-resync (reported, never treated as in sync)"]
fn peer_down_longer_than_the_journal_holds_is_resynced_from_its_bitmap() {
    let _serial = serial();
    require_tool("fio");
    let site = Site::new();
    let size = "256MiB";
    let mut dr = site.start_secondary("dr", size, Via::Tcp);
    let fixed = fixed_config(
        &site,
        &dr,
        site.secondary_spec("dr", size, Via::Tcp),
        "fixed",
    );
    // The smallest journal (3 segments of 64 MiB), checkpointed every second.
    let spec = site
        .primary_spec(size)
        .set("journal_size", "\"192MiB\"")
        .set("checkpoint_interval", "\"1s\"")
        .peer("dr", false, Via::Tcp, dr.tcp.unwrap());
    let mut primary = site.start_primary(spec);
    wait_connected(&primary, &["dr"], &[&dr]);
    dr.stop();

    // 2 × 256 MiB written while the peer is down: far past the journal.
    fio_seq_passes(
        &primary,
        2,
        "outage",
        "while the peer was down (a primary must not wait for a lost async peer)",
    );
    let v = primary.volume().unwrap();
    eprintln!("peer while down: {:#?}", v.peer("dr").unwrap());

    let mut dr = Node::start_config(site.dir.path(), "dr", &fixed).unwrap();
    // Not `wait_caught_up`, which fails at once on `needs-resync`: the resync
    // is what this waits for.
    let v = wait_for(
        "dr to be resynced and caught up",
        &primary,
        &[&dr],
        Duration::from_secs(20),
        |v| {
            v.peer("dr").is_some_and(|p| {
                p.state == PeerState::Connected && p.lag_records == 0 && p.acked_lsn == v.written_lsn
            })
        },
    );
    eprintln!("resynced: {:#?}", v.peer("dr").unwrap());
    primary.stop();
    dr.stop();
    assert_same_files(&site.volume("primary"), &site.volume("dr"));
}
