//! io_uring engine: one dedicated ring thread owns the ring.
//!
//! Callers push [`Request`]s onto a mutex-protected queue and, only if the
//! ring thread is (about to be) asleep, bump an eventfd. The ring thread keeps
//! a read of that eventfd armed inside the ring, so a single
//! `io_uring_enter(GETEVENTS)` waits for either new work or I/O completions.
//! Each pass drains the whole queue into SQEs and submits them with one
//! syscall. Buffers (a `BytesMut` for reads, the caller's `Bytes` for writes)
//! live in a slot table until their CQE arrives; short transfers and
//! EINTR/EAGAIN completions are resubmitted for the remainder.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::{IoEngine, Op, Output, Reply, Request};
use crate::sys::{MAX_EAGAIN_RETRIES, MAX_SYSCALL_IO_BYTES};

/// Smallest and largest ring we agree to build.
pub const MIN_RING_ENTRIES: u32 = 4;
pub const MAX_RING_ENTRIES: u32 = 4096;

/// user_data of the eventfd wake-up read (slots use their index).
const WAKE_USER_DATA: u64 = u64::MAX;
/// user_data of the start-up NOP probe.
const PROBE_USER_DATA: u64 = u64::MAX - 1;
/// Consecutive failures of `io_uring_enter` itself before queued (not yet
/// submitted) requests are failed instead of retried.
const MAX_ENTER_FAILURES: u32 = 16;

/// State shared between submitters and the ring thread.
struct Shared {
    incoming: Mutex<Incoming>,
    /// Set by the ring thread before it blocks; a submitter that clears it
    /// owes the thread an eventfd wake-up.
    sleeping: AtomicBool,
    eventfd: OwnedFd,
}

struct Incoming {
    requests: VecDeque<Request>,
    shutting_down: bool,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A failure
        // (counter saturated) still leaves the eventfd readable, i.e. awake.
        unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

pub struct UringEngine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    /// Start the ring thread with a ring of `ring_entries` SQEs (clamped to
    /// [`MIN_RING_ENTRIES`]..=[`MAX_RING_ENTRIES`]); at most
    /// `ring_entries - 1` operations are in the kernel at once (one slot is the
    /// wake-up read). Fails with a human-readable reason if the kernel refuses
    /// io_uring or lacks an opcode we need.
    pub fn new(file: Arc<File>, ring_entries: u32) -> Result<UringEngine, String> {
        let entries = ring_entries
            .clamp(MIN_RING_ENTRIES, MAX_RING_ENTRIES)
            .next_power_of_two();
        // SAFETY: plain syscall; the returned fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(format!("eventfd: {}", io::Error::last_os_error()));
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            incoming: Mutex::new(Incoming {
                requests: VecDeque::new(),
                shutting_down: false,
            }),
            sleeping: AtomicBool::new(false),
            eventfd,
        });
        // The ring is built on its own thread: with SINGLE_ISSUER the creating
        // task is the only one allowed to submit.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("volume-uring".into())
            .spawn(move || {
                let ring = match setup_ring(entries, file.as_raw_fd()) {
                    Ok(ring) => ring,
                    Err(reason) => {
                        let _ = ready_tx.send(Err(reason));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                RingThread::new(ring, &thread_shared, entries).run();
                drop(file);
            })
            .map_err(|e| format!("spawning the ring thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(UringEngine {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(reason)) => {
                let _ = thread.join();
                Err(reason)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the ring thread exited during set-up".into())
            }
        }
    }
}

/// Where SQEs point: the registered file (saves a file-table lookup per op)
/// or, if registration failed, the plain descriptor.
#[derive(Clone, Copy)]
enum FileRef {
    Fixed,
    Fd(RawFd),
}

struct Ring {
    ring: IoUring,
    file: FileRef,
}

fn setup_ring(entries: u32, fd: RawFd) -> Result<Ring, String> {
    // Flags that cut overhead on newer kernels; retry plain if refused.
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
        .map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (code, name) in [
        (opcode::Nop::CODE, "NOP"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("kernel io_uring lacks IORING_OP_{name}"));
        }
    }
    let mut ring = ring;
    // A real round trip: some sandboxes allow setup but fail every enter.
    let nop = opcode::Nop::new().build().user_data(PROBE_USER_DATA);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter (NOP probe): {e}"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| "NOP probe produced no completion".to_string())?;
    if cqe.user_data() != PROBE_USER_DATA || cqe.result() < 0 {
        return Err(format!(
            "NOP probe failed: {}",
            io::Error::from_raw_os_error(-cqe.result())
        ));
    }
    let file = match ring.submitter().register_files(&[fd]) {
        Ok(()) => FileRef::Fixed,
        Err(_) => FileRef::Fd(fd),
    };
    Ok(Ring { ring, file })
}

/// An operation owned by the ring thread while the kernel works on it.
struct Slot {
    offset: u64,
    kind: SlotKind,
    reply: Reply,
    eagain_retries: u32,
}

enum SlotKind {
    /// `buf` has capacity `len` and length 0 until every byte arrived.
    Read {
        buf: BytesMut,
        len: usize,
        done: usize,
    },
    Write {
        data: Bytes,
        done: usize,
    },
    SyncData,
    Fallocate {
        mode: i32,
        len: u64,
    },
}

impl Slot {
    fn from_request(req: Request) -> Slot {
        let kind = match req.op {
            Op::Read { len } => SlotKind::Read {
                buf: BytesMut::with_capacity(len),
                len,
                done: 0,
            },
            Op::Write { data } => SlotKind::Write { data, done: 0 },
            Op::SyncData => SlotKind::SyncData,
            Op::Fallocate { mode, len } => SlotKind::Fallocate { mode, len },
        };
        Slot {
            offset: req.offset,
            kind,
            reply: req.reply,
            eagain_retries: 0,
        }
    }

    /// The SQE for the not-yet-done part of this operation.
    fn sqe(&mut self, file: FileRef, user_data: u64) -> squeue::Entry {
        macro_rules! on_file {
            ($t:ident => $e:expr) => {
                match file {
                    FileRef::Fixed => {
                        let $t = types::Fixed(0);
                        $e
                    }
                    FileRef::Fd(fd) => {
                        let $t = types::Fd(fd);
                        $e
                    }
                }
            };
        }
        let entry = match &mut self.kind {
            SlotKind::Read { buf, len, done } => {
                let want = (*len - *done).min(MAX_SYSCALL_IO_BYTES) as u32;
                // Points into the spare capacity reserved for this read.
                let ptr = buf.spare_capacity_mut()[*done..].as_mut_ptr().cast::<u8>();
                let offset = self.offset + *done as u64;
                on_file!(t => opcode::Read::new(t, ptr, want).offset(offset).build())
            }
            SlotKind::Write { data, done } => {
                let want = (data.len() - *done).min(MAX_SYSCALL_IO_BYTES) as u32;
                let ptr = data[*done..].as_ptr();
                let offset = self.offset + *done as u64;
                on_file!(t => opcode::Write::new(t, ptr, want).offset(offset).build())
            }
            SlotKind::SyncData => on_file!(t => opcode::Fsync::new(t)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            SlotKind::Fallocate { mode, len } => on_file!(t => opcode::Fallocate::new(t, *len)
                .offset(self.offset)
                .mode(*mode)
                .build()),
        };
        entry.user_data(user_data)
    }

    /// Account for a CQE result. `None`: finished (reply sent or ready to be
    /// sent by the caller); `Some(self)`: resubmit for the remainder.
    fn complete(mut self, res: i32) -> Option<Slot> {
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            let retry = match -res {
                libc::EINTR => true,
                libc::EAGAIN if self.eagain_retries < MAX_EAGAIN_RETRIES => {
                    self.eagain_retries += 1;
                    true
                }
                _ => false,
            };
            if retry {
                return Some(self);
            }
            let _ = self.reply.send(Err(err));
            return None;
        }
        let n = res as usize;
        let result = match &mut self.kind {
            SlotKind::Read { buf, len, done } => {
                if n == 0 {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backing file ended before the volume size",
                    ))
                } else {
                    *done += n;
                    if *done < *len {
                        return Some(self);
                    }
                    let mut buf = std::mem::take(buf);
                    // SAFETY: the kernel filled all `len` bytes of the spare
                    // capacity (the completions summed to `len`).
                    unsafe { buf.set_len(*len) };
                    Ok(Output::Data(buf.freeze()))
                }
            }
            SlotKind::Write { data, done } => {
                if n == 0 {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write wrote nothing",
                    ))
                } else {
                    *done += n;
                    if *done < data.len() {
                        return Some(self);
                    }
                    Ok(Output::Done)
                }
            }
            SlotKind::SyncData | SlotKind::Fallocate { .. } => Ok(Output::Done),
        };
        let _ = self.reply.send(result);
        None
    }
}

struct RingThread<'a> {
    ring: Ring,
    shared: &'a Shared,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Requests taken from the queue that wait for a free slot.
    pending: VecDeque<Request>,
    /// Slots whose (next) SQE has not been pushed yet.
    ready: VecDeque<usize>,
    /// Target of the armed eventfd read; boxed so its address is stable.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    enter_failures: u32,
}

impl<'a> RingThread<'a> {
    fn new(ring: Ring, shared: &'a Shared, entries: u32) -> Self {
        let max_in_flight = entries as usize - 1;
        RingThread {
            ring,
            shared,
            slots: (0..max_in_flight).map(|_| None).collect(),
            free: (0..max_in_flight).rev().collect(),
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            enter_failures: 0,
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn run(mut self) {
        loop {
            let shutting_down = {
                let mut q = self
                    .shared
                    .incoming
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.pending.extend(q.requests.drain(..));
                q.shutting_down
            };
            while !self.pending.is_empty() {
                let Some(idx) = self.free.pop() else { break };
                if let Some(req) = self.pending.pop_front() {
                    self.slots[idx] = Some(Slot::from_request(req));
                    self.ready.push_back(idx);
                }
            }
            self.push_sqes(shutting_down);

            if shutting_down && self.in_flight() == 0 && self.pending.is_empty() && !self.wake_armed
            {
                return;
            }

            // Announce the nap, then look once more: a submitter that queued
            // before seeing the flag has not written the eventfd.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let more = !self
                .shared
                .incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .requests
                .is_empty();
            let want = if more || !self.ready.is_empty() { 0 } else { 1 };
            if want == 0 {
                self.shared.sleeping.store(false, Ordering::SeqCst);
            }
            let entered = self.ring.ring.submit_and_wait(want);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if let Err(err) = entered {
                self.enter_failed(err);
            } else {
                self.enter_failures = 0;
            }
            self.reap();
        }
    }

    fn push_sqes(&mut self, shutting_down: bool) {
        let file = self.ring.file;
        let mut sq = self.ring.ring.submission();
        if !self.wake_armed && !shutting_down && !sq.is_full() {
            let entry = opcode::Read::new(
                types::Fd(self.shared.eventfd.as_raw_fd()),
                self.wake_buf.as_mut_ptr(),
                8,
            )
            .build()
            .user_data(WAKE_USER_DATA);
            // SAFETY: `wake_buf` lives as long as the ring thread, and the
            // thread only exits once this read has completed.
            if unsafe { sq.push(&entry) }.is_ok() {
                self.wake_armed = true;
            }
        }
        while let Some(&idx) = self.ready.front() {
            if sq.is_full() {
                break;
            }
            let Some(slot) = self.slots[idx].as_mut() else {
                self.ready.pop_front();
                continue;
            };
            let entry = slot.sqe(file, idx as u64);
            // SAFETY: the SQE points into the slot's buffer, which stays in
            // `self.slots` until the matching CQE is reaped.
            if unsafe { sq.push(&entry) }.is_err() {
                break;
            }
            self.ready.pop_front();
        }
    }

    fn enter_failed(&mut self, err: io::Error) {
        match err.raw_os_error() {
            // Interrupted, or the kernel wants completions reaped first.
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
            _ => {
                self.enter_failures += 1;
                tracing::error!(error = %err, "io_uring_enter failed");
                if self.enter_failures >= MAX_ENTER_FAILURES {
                    // Give up on work the kernel has not seen; SQEs already
                    // queued keep their buffers alive in `slots`.
                    let code = err.raw_os_error().unwrap_or(libc::EIO);
                    for req in self.pending.drain(..) {
                        let _ = req.reply.send(Err(io::Error::from_raw_os_error(code)));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn reap(&mut self) {
        let mut cq = self.ring.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let user_data = cqe.user_data();
            if user_data == WAKE_USER_DATA {
                self.wake_armed = false;
                continue;
            }
            let idx = user_data as usize;
            let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            match slot.complete(cqe.result()) {
                Some(again) => {
                    self.slots[idx] = Some(again);
                    self.ready.push_back(idx);
                }
                None => self.free.push(idx),
            }
        }
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn submit(&self, req: Request) {
        self.shared
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
            .push_back(req);
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.wake();
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.shared
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutting_down = true;
        self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
