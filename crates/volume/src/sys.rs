//! Thin, EINTR-safe wrappers over the positional syscalls both engines need.
//! The thread engine runs all of them; the io_uring engine uses the ones that
//! have no ring opcode (lseek, fadvise, ioctl) from the blocking pool.

use std::io;
use std::os::fd::RawFd;

/// Linux caps one read/write at this many bytes (`MAX_RW_COUNT`); asking for
/// more just yields a short transfer, so we split up front.
pub(crate) const MAX_SYSCALL_IO_BYTES: usize = 0x7fff_f000;

/// Upper bound on retries of a syscall that keeps returning EAGAIN (it should
/// not on a blocking fd; the bound keeps a misbehaving driver from spinning us).
pub(crate) const MAX_EAGAIN_RETRIES: u32 = 64;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Retry policy shared by every loop below: EINTR always, EAGAIN a bounded
/// number of times.
pub(crate) fn should_retry(err: &io::Error, eagain_retries: &mut u32) -> bool {
    match err.raw_os_error() {
        Some(libc::EINTR) => true,
        Some(libc::EAGAIN) if *eagain_retries < MAX_EAGAIN_RETRIES => {
            *eagain_retries += 1;
            std::thread::yield_now();
            true
        }
        _ => false,
    }
}

/// One `preadv2(RWF_NOWAIT)`: reads what the page cache holds without
/// blocking. `Ok(n)` may be short; EAGAIN means it would have to wait for the
/// disk; EOPNOTSUPP means the file does not support it.
pub(crate) fn pread_nowait(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len().min(MAX_SYSCALL_IO_BYTES),
    };
    loop {
        // SAFETY: one iovec over `buf`, which outlives the call.
        let n = unsafe { libc::preadv2(fd, &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = last_err();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Read exactly `buf.len()` bytes at `offset`, looping on short reads.
/// End of file before the buffer is full is an error: the volume size was
/// checked against the file size at open, so it means the file shrank under us.
pub(crate) fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    let mut retries = 0;
    while done < buf.len() {
        let want = (buf.len() - done).min(MAX_SYSCALL_IO_BYTES);
        // SAFETY: the pointer/length pair stays inside `buf`.
        let n = unsafe {
            libc::pread64(
                fd,
                buf[done..].as_mut_ptr().cast(),
                want,
                (offset + done as u64) as libc::off64_t,
            )
        };
        if n < 0 {
            let err = last_err();
            if should_retry(&err, &mut retries) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backing file ended before the volume size",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Write all of `buf` at `offset`, looping on short writes.
pub(crate) fn pwrite_full(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    let mut retries = 0;
    while done < buf.len() {
        let want = (buf.len() - done).min(MAX_SYSCALL_IO_BYTES);
        // SAFETY: the pointer/length pair stays inside `buf`.
        let n = unsafe {
            libc::pwrite64(
                fd,
                buf[done..].as_ptr().cast(),
                want,
                (offset + done as u64) as libc::off64_t,
            )
        };
        if n < 0 {
            let err = last_err();
            if should_retry(&err, &mut retries) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            // A zero-length write of a non-empty buffer would loop forever.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwrite wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    let mut retries = 0;
    loop {
        // SAFETY: plain syscall on a file descriptor we own.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let err = last_err();
        if !should_retry(&err, &mut retries) {
            return Err(err);
        }
    }
}

pub(crate) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let mut retries = 0;
    loop {
        // SAFETY: plain syscall on a file descriptor we own.
        let rc =
            unsafe { libc::fallocate64(fd, mode, offset as libc::off64_t, len as libc::off64_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = last_err();
        if !should_retry(&err, &mut retries) {
            return Err(err);
        }
    }
}

pub(crate) fn fadvise_willneed(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall; posix_fadvise returns the error instead of setting errno.
    let rc = unsafe {
        libc::posix_fadvise64(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `lseek(SEEK_DATA|SEEK_HOLE)`; `Ok(None)` means ENXIO (no more data past
/// `offset`, or `offset` at/after end of file).
pub(crate) fn seek(fd: RawFd, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall. The fd's file position changes, which nothing
    // else relies on: every read and write is positional.
    let rc = unsafe { libc::lseek64(fd, offset as libc::off64_t, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let err = last_err();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Size of a block device in bytes (`BLKGETSIZE64`).
pub(crate) fn block_device_size(fd: RawFd) -> io::Result<u64> {
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`.
    let rc = unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(last_err());
    }
    Ok(size)
}

/// Logical block size of a block device (`BLKSSZGET`); fallocate on a block
/// device must be aligned to it.
pub(crate) fn block_device_logical_block(fd: RawFd) -> io::Result<u32> {
    // _IO(0x12, 104)
    const BLKSSZGET: libc::c_ulong = 0x1268;
    let mut size: libc::c_int = 0;
    // SAFETY: the ioctl writes one int into `size`.
    let rc = unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut size as *mut libc::c_int) };
    if rc < 0 {
        return Err(last_err());
    }
    Ok(size.max(1) as u32)
}

/// `flock(LOCK_EX|LOCK_NB)`: `Ok(false)` if someone else holds a lock.
pub(crate) fn try_lock_exclusive(fd: RawFd) -> io::Result<bool> {
    loop {
        // SAFETY: plain syscall on a file descriptor we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = last_err();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}
