//! The one consistency checker: a recording NBD workload that knows what it
//! wrote, in which order and what was acknowledged or flushed, and the
//! checks any copy (the primary after a crash, a sync peer, an async peer)
//! is held to:
//!
//! - [`check_holds`] with [`Required::Acked`]: every acknowledged write is
//!   present (a process crash keeps the page cache, so nothing acknowledged
//!   may be missing), or overwritten by a later request to its block; with
//!   [`Required::Flushed`]: every write acknowledged before the last
//!   completed FLUSH (invariant 1). For any history: TRIM and WRITE_ZEROES
//!   among the writes, several sessions (a crash or a failover between
//!   them), writes whose outcome is unknown.
//! - [`check_prefix`]: the copy is exactly the volume after the first N
//!   writes for some N (invariant 2), on a history issued at queue depth 1.
//! - [`check_sane`]: every block is zero or an intact write issued to it.
//! - [`check_cut`]: invariant 2 on a pipelined history: the copy is the
//!   volume after some prefix of the (unknown) LSN order, as far as the
//!   order the client saw can tell: a write acknowledged before another
//!   was sent has the lower LSN.
//!
//! Every write is one 4 KiB block with a deterministic payload naming its
//! block and sequence number, so a torn, misplaced or foreign block is
//! detected; a TRIM or WRITE_ZEROES leaves zeros. One request is in flight
//! per block at a time, so each block's writes are ordered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nbd_shim::client::{Client, CMD_FLUSH, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES};
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

/// What a request does to its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write,
    /// TRIM: the block reads back as zeros.
    Trim,
    /// WRITE_ZEROES.
    Zero,
}

/// The logical clock value of a write that was never acknowledged.
pub const NOT_ACKED: u64 = u64::MAX;

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
    /// Of the block requests, this many percent are TRIM and this many
    /// WRITE_ZEROES; the rest are writes.
    pub trim_percent: u8,
    pub zero_percent: u8,
}

/// Where the workload stood when it killed a process (see
/// [`Workload::kill_on_flush`]).
#[derive(Clone, Debug)]
pub struct KillPoint {
    pub acked_before_flush: u64,
    pub acked_at_kill: u64,
}

/// What the workload recorded.
#[derive(Default, Clone)]
pub struct Record {
    pub blocks: Vec<BlockState>,
    /// `history[seq - 1]`: the block of write `seq`, in issue order.
    pub history: Vec<u32>,
    /// `kinds[seq - 1]`: what write `seq` does.
    pub kinds: Vec<OpKind>,
    /// Logical clock (one tick per send and per reply, across sessions)
    /// when write `seq` was sent, and when its success was received
    /// ([`NOT_ACKED`] if it never was).
    pub sent_clock: Vec<u64>,
    pub acked_clock: Vec<u64>,
    pub clock: u64,
    /// Writes that failed or were in flight when their session ended: each
    /// may or may not have happened.
    pub unknown: Vec<u64>,
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
    /// Requests answered with an NBD error: (cookie, error). Each is also
    /// in `errors`; a campaign that expects them checks that nothing else
    /// is.
    pub failed: Vec<(u64, u32)>,
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
        let record = Record {
            blocks: vec![BlockState::default(); cfg.blocks as usize],
            ..Record::default()
        };
        Self::resume(socket, export, cfg, record)
    }

    /// Continues `record` (of an earlier session, over the same blocks) on
    /// a new connection, maybe to another node: sequence numbers and the
    /// logical clock go on; what was in flight when that session ended is
    /// [`Record::unknown`] from now on.
    pub fn resume(
        socket: &Path,
        export: &str,
        cfg: WorkloadCfg,
        mut record: Record,
    ) -> Result<Workload> {
        assert_eq!(record.blocks.len(), cfg.blocks as usize, "the same blocks");
        for b in &mut record.blocks {
            if let Some(seq) = b.inflight.take() {
                record.unknown.push(seq);
            }
        }
        record.depth = cfg.depth;
        record.inflight = 0;
        record.sent_at.clear();
        record.flushes.clear();
        record.kill_on_flush = None;
        record.stop = false;
        record.dead = false;
        let mut sender = Client::connect(socket, export)
            .map_err(|e| HarnessError::Nbd(format!("connect: {e}")))?;
        let mut receiver = sender
            .try_clone()
            .map_err(|e| HarnessError::Nbd(format!("clone socket: {e}")))?;
        let state = Arc::new((Mutex::new(record), Condvar::new()));
        let stride = cfg.stride;

        let st = state.clone();
        let recv = std::thread::spawn(move || {
            let (lock, cv) = &*st;
            while let Ok((reply, _)) = receiver.recv(|_| 0) {
                let now = Instant::now();
                let mut w = lock.lock().unwrap();
                w.clock += 1;
                let clock = w.clock;
                if reply.error != 0 {
                    w.errors.push(format!(
                        "request {:#x} failed with NBD error {}",
                        reply.cookie, reply.error
                    ));
                    w.failed.push((reply.cookie, reply.error));
                }
                if reply.cookie & FLUSH_COOKIE_BIT != 0 {
                    let Some(covered) = w.flushes.remove(&reply.cookie) else {
                        w.errors
                            .push(format!("unknown flush cookie {:#x}", reply.cookie));
                        break;
                    };
                    if reply.error == 0 {
                        w.flushes_acked += 1;
                        w.acked_before_flush = w.acked_before_flush.max(covered);
                    }
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
                    if reply.error == 0 {
                        b.last_acked = Some(seq);
                        w.acked_order.push(seq);
                        w.acked_clock[seq as usize - 1] = clock;
                    } else {
                        // It may or may not have reached the volume.
                        w.unknown.push(seq);
                    }
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
                    w.clock += 1;
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
                let roll = rng.gen_range(0..100u8);
                let kind = if roll < cfg.trim_percent {
                    OpKind::Trim
                } else if roll < cfg.trim_percent.saturating_add(cfg.zero_percent) {
                    OpKind::Zero
                } else {
                    OpKind::Write
                };
                w.history.push(block);
                w.kinds.push(kind);
                w.clock += 1;
                let clock = w.clock;
                w.sent_clock.push(clock);
                w.acked_clock.push(NOT_ACKED);
                let seq = w.history.len() as u64;
                if w.depth == 1 && w.qd1_until == seq - 1 {
                    w.qd1_until = seq;
                }
                w.blocks[block as usize].inflight = Some(seq);
                w.inflight += 1;
                w.sent_at.insert(seq, Instant::now());
                drop(w);
                let offset = block as u64 * stride;
                let sent = match kind {
                    OpKind::Write => {
                        let data = payload(block, seq);
                        sender.send(CMD_WRITE, seq, offset, BLOCK as u32, &data)
                    }
                    OpKind::Trim => sender.send(CMD_TRIM, seq, offset, BLOCK as u32, &[]),
                    OpKind::Zero => sender.send(CMD_WRITE_ZEROES, seq, offset, BLOCK as u32, &[]),
                };
                if sent.is_err() {
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

    /// Stops sending, waits for the in-flight requests (or for the server
    /// to be gone), and returns the record, errors and all: for campaigns
    /// where failed requests are expected and recorded as unknown.
    pub fn finish(mut self) -> Record {
        self.with(|w| w.stop = true);
        for t in self.threads.drain(..) {
            t.join().expect("workload thread panicked");
        }
        std::mem::take(&mut *self.state.0.lock().unwrap())
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

/// What a copy must hold at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    /// Every acknowledged write (a process crash keeps the page cache).
    Acked,
    /// Every write acknowledged before the last completed FLUSH
    /// (invariant 1; a power loss).
    Flushed,
}

/// Each block's writes (sequence numbers) in issue order.
fn writes_per_block(record: &Record, blocks: usize) -> Vec<Vec<u64>> {
    let mut per = vec![Vec::new(); blocks];
    for (i, &b) in record.history.iter().enumerate() {
        per[b as usize].push(i as u64 + 1);
    }
    per
}

/// Where in its block's list of writes a copy's block stands: `Some(i)`
/// for the i-th write, `None` for zeros with no write (the initial state).
/// Zeros also match every TRIM or WRITE_ZEROES.
fn versions(
    record: &Record,
    block: u32,
    writes: &[u64],
    data: &[u8],
) -> std::result::Result<Vec<Option<usize>>, String> {
    match decode(block, data)? {
        Some(seq) => match writes.iter().position(|&w| w == seq) {
            Some(i) if record.kinds[seq as usize - 1] == OpKind::Write => Ok(vec![Some(i)]),
            _ => Err(format!(
                "block {block} holds seq {seq}, never written to it"
            )),
        },
        None => Ok(std::iter::once(None)
            .chain(
                writes
                    .iter()
                    .enumerate()
                    .filter(|(_, &w)| record.kinds[w as usize - 1] != OpKind::Write)
                    .map(|(i, _)| Some(i)),
            )
            .collect()),
    }
}

/// Every write `required` names is present in the copy, or overwritten by
/// a later request to its block (which may or may not have been
/// acknowledged): for any history, TRIM and WRITE_ZEROES included, over
/// any number of sessions. Returns how many blocks had a required write.
pub fn check_holds(
    contents: &[Vec<u8>],
    record: &Record,
    required: Required,
) -> std::result::Result<u64, String> {
    let needed: std::collections::HashSet<u64> = match required {
        Required::Acked => record.acked_order.iter().copied().collect(),
        Required::Flushed => record.acked_order[..record.acked_before_flush as usize]
            .iter()
            .copied()
            .collect(),
    };
    let per = writes_per_block(record, contents.len());
    let mut checked = 0;
    for (b, writes) in per.iter().enumerate() {
        let must = writes.iter().rposition(|w| needed.contains(w));
        let found = versions(record, b as u32, writes, &contents[b])?;
        let ok = found.iter().any(|v| match (v, must) {
            (_, None) => true,
            (Some(i), Some(m)) => *i >= m,
            (None, Some(_)) => false,
        });
        if !ok {
            let m = must.expect("not ok implies a required write");
            return Err(format!(
                "block {b}: write {} ({:?}, {required:?}) is missing: the copy holds {}",
                writes[m],
                record.kinds[writes[m] as usize - 1],
                describe_found(b as u32, &contents[b])
            ));
        }
        checked += must.is_some() as u64;
    }
    Ok(checked)
}

fn describe_found(block: u32, data: &[u8]) -> String {
    match decode(block, data) {
        Ok(Some(seq)) => format!("write {seq}"),
        Ok(None) => "zeros".into(),
        Err(e) => e,
    }
}

/// Invariant 2 on a pipelined history: the copy is the volume after some
/// prefix of the LSN order. The client does not know LSNs, but it knows
/// that a write acknowledged before another was sent was journaled first;
/// so no write the copy holds may have been sent after the acknowledgement
/// of a write the copy misses. Returns the number of blocks that hold a
/// write.
pub fn check_cut(contents: &[Vec<u8>], record: &Record) -> std::result::Result<u64, String> {
    let per = writes_per_block(record, contents.len());
    // Per block, each reading of its content: (sent clock of the version
    // held, acked clock of the next write, which the copy misses).
    let mut options: Vec<Vec<(u64, u64)>> = Vec::with_capacity(per.len());
    let mut holding = 0;
    for (b, writes) in per.iter().enumerate() {
        let found = versions(record, b as u32, writes, &contents[b])?;
        holding += found.iter().all(|v| v.is_some()) as u64;
        options.push(
            found
                .iter()
                .map(|v| {
                    let (sent, next) = match v {
                        None => (0, 0),
                        Some(i) => (record.sent_clock[writes[*i] as usize - 1], i + 1),
                    };
                    let missing_ack = writes
                        .get(next)
                        .map_or(NOT_ACKED, |&w| record.acked_clock[w as usize - 1]);
                    (sent, missing_ack)
                })
                .collect(),
        );
    }
    // A reading per block with max(sent) < min(missing ack): try every
    // bound T on the sent clocks, taking per block the reading with the
    // latest missing ack among those sent by T.
    let mut bounds: Vec<u64> = options.iter().flatten().map(|o| o.0).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut worst: Option<usize> = None;
    for &t in &bounds {
        let mut min_ack = (NOT_ACKED, usize::MAX);
        let mut feasible = true;
        for (b, opts) in options.iter().enumerate() {
            match opts.iter().filter(|o| o.0 <= t).map(|o| o.1).max() {
                Some(ack) if ack < min_ack.0 => min_ack = (ack, b),
                Some(_) => {}
                None => {
                    feasible = false;
                    break;
                }
            }
        }
        if !feasible {
            continue;
        }
        if min_ack.0 > t {
            return Ok(holding);
        }
        worst = Some(min_ack.1);
    }
    // Name two blocks: the one holding the latest write that no reading
    // avoids, and one missing a write acknowledged before it was sent.
    let missing_block = worst.unwrap_or(0);
    let late = (0..options.len())
        .max_by_key(|&b| options[b].iter().map(|o| o.0).min().unwrap_or(0))
        .unwrap_or(0);
    Err(format!(
        "not a prefix of the write order: block {late} holds {}, sent after block {missing_block}'s next write was acknowledged, yet block {missing_block} holds {}",
        describe_found(late as u32, &contents[late]),
        describe_found(missing_block as u32, &contents[missing_block])
    ))
}

/// Two copies hold the same blocks; the first difference named.
pub fn check_same(a: &[Vec<u8>], b: &[Vec<u8>]) -> std::result::Result<(), String> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None if a.len() == b.len() => Ok(()),
        None => Err(format!("{} blocks against {}", a.len(), b.len())),
        Some(i) => Err(format!(
            "block {i}: {} against {}",
            describe_found(i as u32, &a[i]),
            describe_found(i as u32, &b[i])
        )),
    }
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

    /// A record of `ops` (block, kind, sent clock, acked clock or None),
    /// sequence numbers in order.
    fn record(ops: &[(u32, OpKind, u64, Option<u64>)]) -> Record {
        let mut r = Record::default();
        for &(b, k, sent, acked) in ops {
            r.history.push(b);
            r.kinds.push(k);
            r.sent_clock.push(sent);
            r.acked_clock.push(acked.unwrap_or(NOT_ACKED));
            if acked.is_some() {
                r.acked_order.push(r.history.len() as u64);
            }
        }
        r
    }

    #[test]
    fn cuts_of_a_pipelined_history() {
        use OpKind::*;
        // 1: block 0 sent at 1, acked at 4; 2: block 1 sent at 2, acked at
        // 3; 3: block 2 sent at 5 (after both acks), acked at 6.
        let r = record(&[
            (0, Write, 1, Some(4)),
            (1, Write, 2, Some(3)),
            (2, Write, 5, Some(6)),
        ]);
        // Writes 1 and 2 were in flight together: either alone is a cut.
        assert!(check_cut(&contents(3, &[(0, 1)]), &r).is_ok());
        assert!(check_cut(&contents(3, &[(1, 2)]), &r).is_ok());
        assert!(check_cut(&contents(3, &[(0, 1), (1, 2), (2, 3)]), &r).is_ok());
        // Write 3 was sent after 1 and 2 were acknowledged: not without them.
        let err = check_cut(&contents(3, &[(1, 2), (2, 3)]), &r).unwrap_err();
        assert!(err.contains("block 2") && err.contains("block 0"), "{err}");
        assert!(check_cut(&contents(3, &[(0, 1), (2, 3)]), &r).is_err());
        // 4: a trim of block 0 sent at 7, acked at 8; 5: block 1 at 9.
        let r = record(&[
            (0, Write, 1, Some(4)),
            (1, Write, 2, Some(3)),
            (2, Write, 5, Some(6)),
            (0, Trim, 7, Some(8)),
            (1, Write, 9, Some(10)),
        ]);
        // Zeros on block 0 may now be the trim: with 2 and 3, a cut.
        assert!(check_cut(&contents(3, &[(1, 2), (2, 3)]), &r).is_ok());
        // Write 5 present while block 0 still holds write 1 (the trim,
        // acknowledged before 5 was sent, missing): not.
        assert!(check_cut(&contents(3, &[(0, 1), (1, 5), (2, 3)]), &r).is_err());
        // A foreign write is named.
        assert!(check_cut(&contents(3, &[(2, 1)]), &r).is_err());
    }

    #[test]
    fn holds_over_trims_and_unknown_outcomes() {
        use OpKind::*;
        let mut r = record(&[
            (0, Write, 1, Some(2)),
            (0, Zero, 3, Some(4)),
            (1, Write, 5, Some(6)),
            (1, Write, 7, None), // unknown outcome
            (2, Trim, 9, None),
        ]);
        r.acked_before_flush = 1; // only write 1 was flushed
                                  // Block 0 zeroed (write 2, acknowledged), block 1 either write.
        for held in [&[(1, 3)][..], &[(1, 4)][..]] {
            assert_eq!(check_holds(&contents(3, held), &r, Required::Acked), Ok(2));
        }
        // Block 0 still write 1: the acknowledged zeroing is missing...
        let err = check_holds(&contents(3, &[(0, 1), (1, 3)]), &r, Required::Acked).unwrap_err();
        assert!(err.contains("block 0") && err.contains("Zero"), "{err}");
        // ... which only the acknowledged level requires.
        assert_eq!(
            check_holds(&contents(3, &[(0, 1)]), &r, Required::Flushed),
            Ok(1)
        );
        // Zeros where a flushed write belongs (write 3, once flushed).
        r.acked_before_flush = 3;
        let err = check_holds(&contents(3, &[]), &r, Required::Flushed).unwrap_err();
        assert!(err.contains("block 1: write 3"), "{err}");
        assert!(check_same(&contents(3, &[(0, 1)]), &contents(3, &[(0, 1)])).is_ok());
        let err = check_same(&contents(3, &[(0, 1)]), &contents(3, &[])).unwrap_err();
        assert_eq!(err, "block 0: write 1 against zeros");
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
    fn flushed_and_acked_writes_are_required() {
        use OpKind::*;
        // Writes 1..=3 to blocks 0, 1, 0, all acknowledged; the FLUSH
        // covered 1 and 2; write 4 to block 1 in flight (unknown).
        let mut r = record(&[
            (0, Write, 1, Some(2)),
            (1, Write, 3, Some(4)),
            (0, Write, 5, Some(6)),
            (1, Write, 7, None),
        ]);
        r.acked_before_flush = 2;
        // Write 1 was overwritten by 3: fine; write 2 is there.
        assert_eq!(
            check_holds(&contents(2, &[(0, 3), (1, 2)]), &r, Required::Flushed),
            Ok(2)
        );
        // Write 2 (before the flush) missing.
        assert!(check_holds(&contents(2, &[(0, 3)]), &r, Required::Flushed).is_err());
        // Write 3 came after the flush: may be missing, not after a crash.
        let old = contents(2, &[(0, 1), (1, 2)]);
        assert_eq!(check_holds(&old, &r, Required::Flushed), Ok(2));
        assert!(check_holds(&old, &r, Required::Acked).is_err());
        // The write in flight may or may not be there.
        for held in [&[(0, 3), (1, 4)][..], &[(0, 3), (1, 2)][..]] {
            assert_eq!(check_holds(&contents(2, held), &r, Required::Acked), Ok(2));
        }
    }
}
