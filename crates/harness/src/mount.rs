//! A real filesystem on an NBD export without the kernel nbd driver:
//! nbdfuse exposes the export as a file, losetup turns it into a block device.
//! Everything is torn down on drop (root only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::process::{run_ok, wait_timeout};

const SETUP_LIMIT: Duration = Duration::from_secs(30);

pub struct Attachment {
    fuse_dir: PathBuf,
    fuse: Option<Child>,
    loop_dev: String,
    read_only: bool,
}

impl Attachment {
    pub fn new(work: &Path, uri: &str, read_only: bool) -> Result<Attachment> {
        let fuse_dir = work.join(format!("fuse-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&fuse_dir)
            .map_err(|e| HarnessError::io(format!("creating {}", fuse_dir.display()), e))?;
        let pid_file = fuse_dir.with_extension("pid");
        let mut cmd = Command::new("nbdfuse");
        if read_only {
            cmd.arg("-r");
        }
        let fuse = cmd
            .arg("-P")
            .arg(&pid_file)
            .arg(fuse_dir.join("nbd"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| HarnessError::io("spawning nbdfuse", e))?;
        let mut attachment = Attachment {
            fuse_dir,
            fuse: Some(fuse),
            loop_dev: String::new(),
            read_only,
        };
        // nbdfuse writes its pid file once the FUSE mount is ready.
        let start = Instant::now();
        while std::fs::metadata(&pid_file)
            .map(|m| m.len() == 0)
            .unwrap_or(true)
        {
            if start.elapsed() > SETUP_LIMIT {
                return Err(HarnessError::Timeout {
                    what: "nbdfuse to be ready".into(),
                    limit: SETUP_LIMIT,
                    context: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut losetup = Command::new("losetup");
        losetup.args(["--find", "--show"]);
        if read_only {
            losetup.arg("-r");
        }
        attachment.loop_dev = run_ok(losetup.arg(attachment.fuse_dir.join("nbd")), SETUP_LIMIT)?
            .trim()
            .to_string();
        Ok(attachment)
    }

    pub fn loop_dev(&self) -> &str {
        &self.loop_dev
    }

    pub fn mount(&self) -> Result<Mounted> {
        let dir = mount_point()?;
        let mut cmd = Command::new("mount");
        if self.read_only {
            cmd.args(["-o", "ro"]);
        }
        run_ok(cmd.arg(&self.loop_dev).arg(dir.path()), SETUP_LIMIT)?;
        Ok(Mounted { dir })
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.loop_dev.is_empty() {
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(&self.loop_dev)
                .status();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.fuse_dir)
            .status();
        if let Some(mut fuse) = self.fuse.take() {
            if wait_timeout(&mut fuse, Duration::from_secs(10)).is_err() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.fuse_dir)
                    .status();
            }
        }
    }
}

pub struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A regular file (a stopped node's volume) attached read-only to a loop
/// device with `losetup -r`; detached on drop (root only).
pub struct LoopFile {
    loop_dev: String,
}

impl LoopFile {
    pub fn read_only(path: &Path) -> Result<LoopFile> {
        let loop_dev = run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "-r"])
                .arg(path),
            SETUP_LIMIT,
        )?
        .trim()
        .to_string();
        Ok(LoopFile { loop_dev })
    }

    pub fn loop_dev(&self) -> &str {
        &self.loop_dev
    }

    /// Mounts the device read-only (a file system that needs journal replay
    /// fails to mount from a read-only device: the copy must be clean).
    pub fn mount(&self) -> Result<Mounted> {
        let dir = mount_point()?;
        run_ok(
            Command::new("mount")
                .args(["-o", "ro"])
                .arg(&self.loop_dev)
                .arg(dir.path()),
            SETUP_LIMIT,
        )?;
        Ok(Mounted { dir })
    }
}

impl Drop for LoopFile {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loop_dev)
            .status();
    }
}

fn mount_point() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| HarnessError::io("creating a mount point", e))
}
