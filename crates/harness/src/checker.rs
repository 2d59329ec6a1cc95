//! The one consistency checker: a recording NBD workload that knows what it
//! wrote, in which order and what was acknowledged or flushed, and the
//! checks any copy (the primary after a crash, a sync peer, an async peer)
//! is held to:
//!
//! - [`check_acked`]: every acknowledged write is present (a process crash
//!   keeps the page cache, so nothing acknowledged may be missing); a block
//!   whose write was in flight holds it or the one before.
//! - [`check_flushed`]: every write acknowledged before the last completed
//!   FLUSH is present, or overwritten by a later write (invariant 1).
//! - [`check_prefix`]: the copy is exactly the volume after the first N
//!   writes for some N (invariant 2), on a history issued at queue depth 1.
//! - [`check_sane`]: every block is zero or an intact write issued to it.
//!
//! Every write is one 4 KiB block with a deterministic payload naming its
//! block and sequence number, so a torn, misplaced or foreign block is
//! detected. One write is in flight per block at a time, so each block's
//! writes are ordered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nbd_shim::client::{Client, CMD_FLUSH, CMD_WRITE};
use rand::Rng;

use crate::error::{HarnessError, Result};

pub const BLOCK: usize = 4096;
const FLUSH_COOKIE_BIT: u64 = 1 << 63;

/// The payload of write `seq` to block `block`: a header naming both, then
/// bytes from a xorshift seeded by both.
pub fn payload(block: u32, seq: u64) -> Vec<u8> {
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

/// What a block of a copy holds: `None` for zeros (never written), the
/// sequence number of an intact write to this very block, or an error.
pub fn decode(block: u32, data: &[u8]) -> std::result::Result<Option<u64>, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
    if data != payload(block, seq).as_slice() {
        let claims = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        return Err(format!(
            "block {block} holds a torn or foreign 4 KiB (header claims block {claims} seq {seq})"
        ));
    }
    Ok(Some(seq))
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct BlockState {
    pub last_acked: Option<u64>,
    pub inflight: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct WorkloadCfg {
    /// Number of distinct 4 KiB blocks, placed every `stride` bytes.
    pub blocks: u32,
    pub stride: u64,
    pub depth: usize,
    /// A FLUSH after every this many requests (0: never).
    pub flush_every: u64,
    /// Sleep this long after each send (caps the rate).
    pub pace: Option<Duration>,
}

/// Where the workload stood when it killed a process (see
/// [`Workload::kill_on_flush`]).
#[derive(Clone, Debug)]
pub struct KillPoint {
    pub acked_before_flush: u64,
    pub acked_at_kill: u64,
}

/// What the workload recorded.
#[derive(Default)]
pub struct Record {
    pub blocks: Vec<BlockState>,
    /// `history[seq - 1]`: the block of write `seq`, in issue order.
    pub history: Vec<u32>,
    /// Writes with seq <= this were issued at queue depth 1 (issue order =
    /// acknowledgement order = LSN order).
    pub qd1_until: u64,
    /// Acknowledged writes in acknowledgement order.
    pub acked_order: Vec<u64>,
    /// How many of `acked_order` the last completed FLUSH covers.
    pub acked_before_flush: u64,
    pub flushes_acked: u64,
    /// (completion time, latency) of every write.
    pub completions: Vec<(Instant, Duration)>,
    pub killed: Option<KillPoint>,
    pub errors: Vec<String>,
    depth: usize,
    inflight: usize,
    sent_at: HashMap<u64, Instant>,
    /// Per in-flight FLUSH: writes acknowledged when it was sent.
    flushes: HashMap<u64, u64>,
    kill_on_flush: Option<(Instant, u32)>,
    stop: bool,
    dead: bool,
}

impl Record {
    pub fn acked(&self) -> u64 {
        self.acked_order.len() as u64
    }

    /// Writes per second completed in `[from, to)`, and the worst latency
    /// among them.
    pub fn rate_and_worst(&self, from: Instant, to: Instant) -> (f64, Duration) {
        let window: Vec<Duration> = self
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
}

/// The recording workload: a sender and a receiver thread on one NBD
/// connection.
pub struct Workload {
    state: Arc<(Mutex<Record>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    pub fn start(socket: &Path, export: &str, cfg: WorkloadCfg) -> Result<Workload> {
        let mut sender = Client::connect(socket, export)
            .map_err(|e| HarnessError::Nbd(format!("connect: {e}")))?;
        let mut receiver = sender
            .try_clone()
            .map_err(|e| HarnessError::Nbd(format!("clone socket: {e}")))?;
        let state = Arc::new((
            Mutex::new(Record {
                blocks: vec![BlockState::default(); cfg.blocks as usize],
                depth: cfg.depth,
                ..Record::default()
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
                            crate::process::signal(pid, libc::SIGKILL);
                            w.killed = Some(KillPoint {
                                acked_before_flush: covered,
                                acked_at_kill: w.acked(),
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
                    w.acked_order.push(seq);
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
                    let covered = w.acked();
                    w.flushes.insert(cookie, covered);
                    w.inflight += 1;
                    drop(w);
                    if sender.send(CMD_FLUSH, cookie, 0, 0, &[]).is_err() {
                        return;
                    }
                    continue;
                }
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
        Ok(Workload {
            state,
            threads: vec![send, recv],
        })
    }

    /// Runs `f` on the record under its lock (and wakes the threads).
    pub fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        let mut w = self.state.0.lock().unwrap();
        let out = f(&mut w);
        self.state.1.notify_all();
        out
    }

    pub fn set_depth(&self, depth: usize) {
        self.with(|w| w.depth = depth);
    }

    /// SIGKILLs `pid` on the first FLUSH reply after `after`, recording the
    /// kill point: what that FLUSH covered is then exactly known.
    pub fn kill_on_flush(&self, after: Instant, pid: u32) {
        self.with(|w| w.kill_on_flush = Some((after, pid)));
    }

    /// Errors seen so far, and whether the server closed the connection.
    pub fn health(&self) -> std::result::Result<(), String> {
        self.with(|w| {
            if !w.errors.is_empty() {
                Err(format!("workload errors: {:?}", w.errors))
            } else if w.dead {
                Err("the server closed the NBD connection".into())
            } else {
                Ok(())
            }
        })
    }

    /// Stops sending, waits for the in-flight requests, disconnects.
    pub fn stop(mut self) -> Result<Record> {
        self.with(|w| w.stop = true);
        for t in self.threads.drain(..) {
            t.join().expect("workload thread panicked");
        }
        let record = std::mem::take(&mut *self.state.0.lock().unwrap());
        if !record.errors.is_empty() {
            return Err(HarnessError::Check(format!(
                "workload errors: {:?}",
                record.errors
            )));
        }
        Ok(record)
    }

    /// Waits for the threads after the server died.
    pub fn join_dead(mut self) -> Record {
        for t in self.threads.drain(..) {
            t.join().expect("workload thread panicked");
        }
        std::mem::take(&mut *self.state.0.lock().unwrap())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // On a panic elsewhere: make the sender give up; killing the server
        // ends the receiver.
        if let Ok(mut w) = self.state.0.lock() {
            w.stop = true;
            self.state.1.notify_all();
        }
    }
}

/// Every workload block of a volume file.
pub fn read_blocks(file: &Path, blocks: u32, stride: u64) -> Vec<Vec<u8>> {
    (0..blocks)
        .map(|b| crate::cluster::read_at(file, b as u64 * stride, BLOCK))
        .collect()
}

/// Every workload block, read through an NBD export.
pub fn read_blocks_nbd(
    socket: &Path,
    export: &str,
    blocks: u32,
    stride: u64,
) -> Result<Vec<Vec<u8>>> {
    let mut client =
        Client::connect(socket, export).map_err(|e| HarnessError::Nbd(format!("connect: {e}")))?;
    let out = (0..blocks)
        .map(|b| {
            client
                .read(b as u64 * stride, BLOCK as u32)
                .map_err(|e| HarnessError::Nbd(format!("read of block {b}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let _ = client.disconnect();
    Ok(out)
}

/// Every acknowledged write is present: a block whose last write was
/// acknowledged holds exactly it; one with a write in flight holds that or
/// the last acknowledged one. Returns the number of blocks checked with an
/// acknowledged write.
pub fn check_acked(
    contents: &[Vec<u8>],
    blocks: &[BlockState],
) -> std::result::Result<u64, String> {
    let mut checked = 0;
    for (b, state) in blocks.iter().enumerate() {
        let found = decode(b as u32, &contents[b])?;
        let ok = match state.inflight {
            None => found == state.last_acked,
            Some(pending) => found == Some(pending) || found == state.last_acked,
        };
        if !ok {
            return Err(format!(
                "block {b} holds {found:?}; its last acknowledged write is {:?}{}",
                state.last_acked,
                state
                    .inflight
                    .map_or(String::new(), |p| format!(" (write {p} was in flight)"))
            ));
        }
        checked += state.last_acked.is_some() as u64;
    }
    Ok(checked)
}

/// Invariant 1: every write acknowledged before the last completed FLUSH
/// is present, or its block holds a later write issued to it.
pub fn check_flushed(contents: &[Vec<u8>], record: &Record) -> std::result::Result<u64, String> {
    let covered = &record.acked_order[..record.acked_before_flush as usize];
    for &seq in covered {
        let block = record.history[seq as usize - 1];
        let found = decode(block, &contents[block as usize])?;
        match found {
            Some(s) if s >= seq && record.history[s as usize - 1] == block => {}
            other => {
                return Err(format!(
                    "write {seq} to block {block} was acknowledged before a completed FLUSH but the copy holds {other:?}"
                ))
            }
        }
    }
    Ok(covered.len() as u64)
}

/// Invariant 2 on a QD1 history: the range of N such that every block
/// holds exactly the latest write with seq <= N to it.
pub fn check_prefix(
    contents: &[Vec<u8>],
    history: &[u32],
) -> std::result::Result<(u64, u64), String> {
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
        let (hb, lb) = (hi.1.expect("set with hi"), lo.1.expect("set with lo"));
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
pub fn check_sane(contents: &[Vec<u8>], history: &[u32]) -> std::result::Result<(), String> {
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
pub fn expected_final(history: &[u32], blocks: u32) -> Vec<Option<u64>> {
    let mut last = vec![None; blocks as usize];
    for (i, &b) in history.iter().enumerate() {
        last[b as usize] = Some(i as u64 + 1);
    }
    last
}

/// Every block holds its latest write (a quiet workload, a copy in sync).
pub fn check_final(contents: &[Vec<u8>], history: &[u32]) -> std::result::Result<(), String> {
    let expected = expected_final(history, contents.len() as u32);
    for (b, data) in contents.iter().enumerate() {
        let found = decode(b as u32, data)?;
        if found != expected[b] {
            return Err(format!(
                "block {b} holds {found:?}, its last write is {:?}",
                expected[b]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(blocks: u32, held: &[(u32, u64)]) -> Vec<Vec<u8>> {
        let mut c = vec![vec![0u8; BLOCK]; blocks as usize];
        for &(b, s) in held {
            c[b as usize] = payload(b, s);
        }
        c
    }

    #[test]
    fn decode_detects_torn_and_misplaced_blocks() {
        assert_eq!(decode(3, &payload(3, 9)), Ok(Some(9)));
        assert_eq!(decode(3, &[0u8; BLOCK]), Ok(None));
        assert!(decode(4, &payload(3, 9)).is_err(), "misplaced");
        let mut torn = payload(3, 9);
        torn[BLOCK - 1] ^= 1;
        assert!(decode(3, &torn).is_err(), "torn");
    }

    #[test]
    fn prefix_accepts_prefixes_and_names_the_hole() {
        // Writes 1..=4 to blocks 0, 1, 0, 2.
        let history = [0, 1, 0, 2];
        assert_eq!(check_prefix(&contents(3, &[]), &history), Ok((0, 0)));
        assert_eq!(
            check_prefix(&contents(3, &[(0, 1), (1, 2)]), &history),
            Ok((2, 2))
        );
        assert_eq!(
            check_prefix(&contents(3, &[(0, 3), (1, 2), (2, 4)]), &history),
            Ok((4, 4))
        );
        // Write 3 present but write 2 (block 1) missing: not a prefix.
        let err = check_prefix(&contents(3, &[(0, 3)]), &history).unwrap_err();
        assert!(err.contains("misses the older write 2"), "{err}");
        // A seq never written to that block.
        assert!(check_prefix(&contents(3, &[(1, 1)]), &history).is_err());
    }

    #[test]
    fn flushed_and_acked_checks_catch_missing_writes() {
        let record = Record {
            history: vec![0, 1, 0],
            acked_order: vec![1, 2, 3],
            acked_before_flush: 2,
            ..Record::default()
        };
        // Write 1 was overwritten by 3: fine; write 2 is there.
        assert_eq!(
            check_flushed(&contents(2, &[(0, 3), (1, 2)]), &record),
            Ok(2)
        );
        // Write 2 (before the flush) missing.
        assert!(check_flushed(&contents(2, &[(0, 3)]), &record).is_err());
        // Write 3 came after the flush: may be missing.
        assert_eq!(
            check_flushed(&contents(2, &[(0, 1), (1, 2)]), &record),
            Ok(2)
        );

        let blocks = vec![
            BlockState {
                last_acked: Some(3),
                inflight: None,
            },
            BlockState {
                last_acked: Some(2),
                inflight: Some(4),
            },
        ];
        assert_eq!(check_acked(&contents(2, &[(0, 3), (1, 4)]), &blocks), Ok(2));
        assert_eq!(check_acked(&contents(2, &[(0, 3), (1, 2)]), &blocks), Ok(2));
        assert!(check_acked(&contents(2, &[(0, 1), (1, 2)]), &blocks).is_err());
    }
}
