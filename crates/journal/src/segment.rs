//! Segment files: naming, creation/recycling, vectored writes, reads.

use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bitmap::sync_dir;
use crate::error::JournalError;
use crate::format::SegmentHeader;

/// Linux IOV_MAX; longer iovec lists are split.
const IOV_MAX: usize = 1024;

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("seg-{number:016x}.log"))
}

/// Segment numbers present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| JournalError::io("list journal dir", dir, e))? {
        let e = e.map_err(|e| JournalError::io("list journal dir", dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            if let Ok(n) = u64::from_str_radix(hex, 16) {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reserves the whole segment so appends never extend the file (no size
/// metadata in fdatasync, and no ENOSPC mid-batch).
fn preallocate(file: &File, path: &Path, bytes: u64) -> Result<(), JournalError> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file
            .set_len(bytes)
            .map_err(|e| JournalError::io("set segment length", path, e));
    }
    Err(JournalError::io("fallocate segment", path, err))
}

/// Opens segment `header.segment` for appending, recycling `spare` (a
/// reclaimed segment file) when given — its blocks are already written, so
/// later fdatasyncs carry no extent conversion. The header is durable (file
/// and directory synced) before this returns.
pub(crate) fn create_segment(
    dir: &Path,
    header: &SegmentHeader,
    spare: Option<u64>,
) -> Result<File, JournalError> {
    let path = segment_path(dir, header.segment);
    let file = match spare {
        Some(old) => {
            let old_path = segment_path(dir, old);
            fs::rename(&old_path, &path)
                .map_err(|e| JournalError::io("recycle segment", &old_path, e))?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| JournalError::io("open segment", &path, e))?;
            preallocate(&f, &path, header.segment_bytes)?;
            f
        }
        None => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| JournalError::io("create segment", &path, e))?;
            preallocate(&f, &path, header.segment_bytes)?;
            f
        }
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| JournalError::io("write segment header", &path, e))?;
    file.sync_all()
        .map_err(|e| JournalError::io("fsync segment header", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

pub(crate) fn open_segment(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("open segment", path, e))
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many (short at EOF).
pub(crate) fn read_at_most(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, JournalError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(JournalError::io("read segment", path, e)),
        }
    }
    Ok(done)
}

/// Writes every slice at `offset` with as few pwritev calls as possible,
/// resuming after short writes. Returns the number of pwritev calls.
pub(crate) fn pwritev_all(
    file: &File,
    path: &Path,
    slices: &[IoSlice<'_>],
    mut offset: u64,
) -> Result<u64, JournalError> {
    let mut iov: Vec<libc::iovec> = slices
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    let mut start = 0;
    let mut calls = 0;
    while start < iov.len() {
        let n = (iov.len() - start).min(IOV_MAX);
        // SAFETY: the iovecs point into `slices`, which outlive this call.
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[start..].as_ptr(),
                n as libc::c_int,
                offset as libc::off_t,
            )
        };
        calls += 1;
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(JournalError::io("pwritev segment", path, err));
        }
        let mut written = rc as usize;
        if written == 0 {
            return Err(JournalError::io(
                "pwritev segment",
                path,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev wrote 0 bytes"),
            ));
        }
        offset += written as u64;
        while written > 0 {
            let v = &mut iov[start];
            if written >= v.iov_len {
                written -= v.iov_len;
                start += 1;
            } else {
                // SAFETY: advancing within the same slice.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(written) } as *mut libc::c_void;
                v.iov_len -= written;
                written = 0;
            }
        }
    }
    Ok(calls)
}

/// Drops everything from `offset` to the end of the segment (reads back as
/// zeroes) while keeping the space reserved; used to cut a torn tail.
pub(crate) fn zero_tail(
    file: &File,
    path: &Path,
    offset: u64,
    segment_bytes: u64,
) -> Result<(), JournalError> {
    file.set_len(offset)
        .map_err(|e| JournalError::io("truncate segment tail", path, e))?;
    preallocate(file, path, segment_bytes)?;
    file.sync_all()
        .map_err(|e| JournalError::io("fsync truncated segment", path, e))
}
