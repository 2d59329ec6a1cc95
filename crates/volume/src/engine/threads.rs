//! Thread-pool engine: a fixed number of worker threads run blocking
//! `pread`/`pwrite`/`fdatasync`/`fallocate`. Used when io_uring is not
//! available or not wanted; its results must equal the io_uring engine's
//! (the crate's property test checks that).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::BytesMut;

use super::{IoEngine, Op, Output, Request};
use crate::sys;

/// Hard ceiling on the pool size; more threads than this only adds contention.
pub const MAX_THREADS: usize = 256;

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

struct Queue {
    requests: VecDeque<Request>,
    shutting_down: bool,
}

pub struct ThreadEngine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadEngine {
    /// Start `threads` workers (clamped to 1..=[`MAX_THREADS`]) on `file`.
    pub fn new(file: Arc<File>, threads: usize) -> io::Result<ThreadEngine> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                requests: VecDeque::new(),
                shutting_down: false,
            }),
            wake: Condvar::new(),
        });
        let mut engine = ThreadEngine {
            shared,
            workers: Vec::new(),
        };
        for i in 0..threads.clamp(1, MAX_THREADS) {
            let shared = Arc::clone(&engine.shared);
            let file = Arc::clone(&file);
            // On spawn failure, Drop stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("volume-io-{i}"))
                .spawn(move || worker(&shared, &file))?;
            engine.workers.push(handle);
        }
        Ok(engine)
    }
}

fn worker(shared: &Shared, file: &File) {
    loop {
        let req = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(req) = q.requests.pop_front() {
                    break req;
                }
                // Drain everything queued before exiting, so no caller hangs.
                if q.shutting_down {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = execute(file, req.op, req.offset);
        // The caller may have gone away (cancelled future); nothing to do then.
        let _ = req.reply.send(result);
    }
}

fn execute(file: &File, op: Op, offset: u64) -> io::Result<Output> {
    let fd = file.as_raw_fd();
    match op {
        Op::Read { len } => {
            // Zeroed once: a safe slice for pread, and cheap next to the syscall.
            let mut buf = BytesMut::zeroed(len);
            sys::pread_full(fd, &mut buf, offset)?;
            Ok(Output::Data(buf.freeze()))
        }
        Op::Write { data } => sys::pwrite_full(fd, &data, offset).map(|()| Output::Done),
        Op::SyncData => sys::fdatasync(fd).map(|()| Output::Done),
        Op::Fallocate { mode, len } => sys::fallocate(fd, mode, offset, len).map(|()| Output::Done),
    }
}

impl IoEngine for ThreadEngine {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn submit(&self, req: Request) {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.requests.push_back(req);
        drop(q);
        self.shared.wake.notify_one();
    }
}

impl Drop for ThreadEngine {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutting_down = true;
        self.shared.wake.notify_all();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
