//! `driftless serve` killed with SIGKILL under a pipelined write + FLUSH
//! workload, restarted, and checked block by block: every acknowledged write
//! (in particular every write acknowledged before the last completed FLUSH)
//! reads back intact, and no block holds anything but one of its own writes.
//! Every other round also wipes the volume file before the restart, so the
//! journal's redo, not the page cache, has to bring the writes back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use driftless_tests::Server;
use nbd_shim::client::{Client, CMD_FLUSH, CMD_WRITE};
use rand::Rng;

const BLOCK: usize = 4096;
const VOLUME_MIB: u64 = 64;
const MAX_INFLIGHT: usize = 16;
const FLUSH_EVERY: u64 = 64;
const FLUSH_COOKIE_BIT: u64 = 1 << 63;

/// Deterministic payload of write `seq` to `block`: a header naming both,
/// then bytes from a xorshift seeded by seq, so any torn or misplaced block
/// is detected.
fn payload(block: u64, seq: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    data[..8].copy_from_slice(&block.to_le_bytes());
    data[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in data[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

#[derive(Default)]
struct BlockState {
    last_acked: Option<u64>,
    inflight: Option<u64>,
}

#[derive(Default)]
struct Workload {
    blocks: HashMap<u64, BlockState>,
    seq_block: HashMap<u64, u64>,
    inflight: usize,
    acked: u64,
    /// Writes acknowledged before the last FLUSH that completed.
    acked_before_flush: u64,
    /// Per in-flight FLUSH: how many writes were acknowledged when it was sent.
    flushes: HashMap<u64, u64>,
    dead: bool,
}

fn run_until_killed(server: Server, kill_after: Duration) -> Workload {
    let state = Arc::new((Mutex::new(Workload::default()), Condvar::new()));
    let mut sender = Client::connect(&server.socket, "").expect("connect");
    let mut receiver = sender.try_clone().expect("clone socket");
    let blocks = VOLUME_MIB * (1 << 20) / BLOCK as u64;

    let st = state.clone();
    let recv_thread = std::thread::spawn(move || {
        let (lock, cv) = &*st;
        while let Ok((reply, _)) = receiver.recv(|_| 0) {
            let mut w = lock.lock().unwrap();
            assert_eq!(
                reply.error, 0,
                "request {} failed with NBD error {}",
                reply.cookie, reply.error
            );
            if reply.cookie & FLUSH_COOKIE_BIT != 0 {
                let covered = w
                    .flushes
                    .remove(&reply.cookie)
                    .expect("unknown flush cookie");
                w.acked_before_flush = w.acked_before_flush.max(covered);
            } else {
                let seq = reply.cookie;
                let block = w.seq_block[&seq];
                let b = w.blocks.get_mut(&block).expect("block");
                assert_eq!(b.inflight, Some(seq));
                b.inflight = None;
                b.last_acked = Some(seq);
                w.acked += 1;
            }
            w.inflight -= 1;
            cv.notify_all();
        }
        lock.lock().unwrap().dead = true;
        cv.notify_all();
    });

    let st = state.clone();
    let send_thread = std::thread::spawn(move || {
        let (lock, cv) = &*st;
        let mut rng = rand::thread_rng();
        let mut seq = 0u64;
        loop {
            let mut w = lock.lock().unwrap();
            while w.inflight >= MAX_INFLIGHT && !w.dead {
                w = cv.wait(w).unwrap();
            }
            if w.dead {
                return;
            }
            seq += 1;
            if seq.is_multiple_of(FLUSH_EVERY) {
                let cookie = seq | FLUSH_COOKIE_BIT;
                let covered = w.acked;
                w.flushes.insert(cookie, covered);
                w.inflight += 1;
                drop(w);
                if sender.send(CMD_FLUSH, cookie, 0, 0, &[]).is_err() {
                    return;
                }
                continue;
            }
            // One write in flight per block, so each block's writes are ordered.
            let block = loop {
                let b = rng.gen_range(0..blocks);
                if w.blocks.get(&b).is_none_or(|s| s.inflight.is_none()) {
                    break b;
                }
            };
            w.blocks.entry(block).or_default().inflight = Some(seq);
            w.seq_block.insert(seq, block);
            w.inflight += 1;
            drop(w);
            let data = payload(block, seq);
            if sender
                .send(CMD_WRITE, seq, block * BLOCK as u64, BLOCK as u32, &data)
                .is_err()
            {
                return;
            }
        }
    });

    std::thread::sleep(kill_after);
    server.kill9().expect("kill -9");
    send_thread.join().expect("sender");
    recv_thread.join().expect("receiver");
    Arc::try_unwrap(state)
        .ok()
        .expect("threads done")
        .0
        .into_inner()
        .unwrap()
}

fn check(socket: &Path, w: &Workload) {
    let mut client = Client::connect(socket, "").expect("connect after restart");
    let mut intact_acked = 0;
    for (&block, b) in &w.blocks {
        let data = client
            .read(block * BLOCK as u64, BLOCK as u32)
            .expect("read");
        let found = if data.iter().all(|&x| x == 0) {
            None
        } else {
            let seq = u64::from_le_bytes(data[8..16].try_into().unwrap());
            assert_eq!(
                data,
                payload(block, seq),
                "block {block} holds a torn or foreign write (claims seq {seq})"
            );
            Some(seq)
        };
        match b.inflight {
            // Last write acknowledged: it must be there.
            None => {
                assert_eq!(
                    found, b.last_acked,
                    "block {block}: acknowledged write lost"
                );
                intact_acked += 1;
            }
            // Last write in flight at the kill: either it or the one before.
            Some(pending) => assert!(
                found == Some(pending) || found == b.last_acked,
                "block {block} holds seq {found:?}; expected {pending} (in flight) or {:?} (acked)",
                b.last_acked
            ),
        }
    }
    client.disconnect().ok();
    eprintln!(
        "checked {} blocks: {} acknowledged writes ({} before the last completed FLUSH), {intact_acked} blocks with an acked last write intact",
        w.blocks.len(),
        w.acked,
        w.acked_before_flush
    );
}

#[test]
fn kill9_under_write_and_flush_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let size = format!("{VOLUME_MIB}MiB");
    let mut rng = rand::thread_rng();
    for round in 0..5 {
        // A fresh volume per round: sequence numbers restart at 1.
        let volume = dir.path().join(format!("volume-{round}.img"));
        // No checkpoint during the run: the volume is never fsynced, so the
        // wipe below destroys only what a power loss could.
        let server = Server::start(
            dir.path(),
            &volume,
            &["--size", &size, "--checkpoint-interval", "1h"],
        )
        .unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(200..1500));
        let workload = run_until_killed(server, kill_after);
        assert!(
            workload.acked > 0,
            "round {round}: no write was acknowledged before the kill"
        );
        // SIGKILL keeps the page cache, so the volume file would still hold
        // every write. On odd rounds, wipe it (as a power loss could drop its
        // unsynced pages): then only the journal's redo can bring them back.
        let wiped = round % 2 == 1;
        if wiped {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&volume)
                .unwrap();
            file.set_len(0).unwrap();
            file.set_len(VOLUME_MIB << 20).unwrap();
        }
        let server = Server::start(dir.path(), &volume, &["--size", &size]).unwrap();
        let log = server.log();
        assert!(log.contains("journal recovered"), "{log}");
        // The checkpoint interval (10 s) is longer than the run: the restart
        // must have redone records from the journal.
        assert!(!log.contains("redone_records=0 "), "nothing redone: {log}");
        eprintln!("round {round}: killed after {kill_after:?}, volume wiped: {wiped}");
        check(&server.socket, &workload);
        let status = server.terminate().unwrap();
        assert!(status.success());
    }
}
