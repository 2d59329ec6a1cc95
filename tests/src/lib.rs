//! Shared helpers for the integration tests: locate the `driftless` binary,
//! run it as a real process, and run real NBD clients against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod cluster;
pub mod mount;

/// The `driftless` binary: `$DRIFTLESS_BIN`, else the one built next to this
/// test executable (same profile). `scripts/test.sh` builds it first.
pub fn driftless_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DRIFTLESS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/driftless
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("driftless"))
        .expect("test executable has no parent directory");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p driftless` with the same profile) or set DRIFTLESS_BIN",
        bin.display()
    );
    bin
}

/// Panics with a clear message when a client tool is missing: the test
/// command (scripts/test.sh) installs them, so a missing one is a set-up bug.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; run scripts/test.sh, which installs the test tools"
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips a test that needs root, printing why.
#[macro_export]
macro_rules! require_root {
    ($what:expr) => {
        if !$crate::is_root() {
            eprintln!(
                "SKIPPED: {} needs root (losetup/mount); run as root to include it",
                $what
            );
            return;
        }
    };
}

/// A running `driftless serve` process; SIGKILLed on drop if still running.
pub struct Server {
    child: Option<Child>,
    pub uri: String,
    pub socket: PathBuf,
    stderr_log: PathBuf,
}

impl Server {
    /// Starts `driftless serve --volume VOLUME --unix <dir>/nbd.sock EXTRA...`
    /// and waits until it accepts NBD connections.
    pub fn start(dir: &Path, volume: &Path, extra: &[&str]) -> Result<Server> {
        let socket = dir.join(format!("nbd-{}.sock", rand::random::<u32>()));
        let stderr_log = dir.join(format!("server-{}.log", rand::random::<u32>()));
        let mut cmd = Command::new(driftless_bin());
        cmd.arg("serve")
            .arg("--volume")
            .arg(volume)
            .arg("--unix")
            .arg(&socket)
            .args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log)?);
        let mut child = cmd.spawn().context("spawning driftless serve")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        // The first stdout line names the URI; reading it means we're bound.
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || !line.starts_with("serving ") {
            let status = child.wait()?;
            let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            bail!("driftless serve did not start ({status}): {log}");
        }
        let uri = line.trim().trim_start_matches("serving ").to_string();
        let server = Server {
            child: Some(child),
            uri,
            socket,
            stderr_log,
        };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "server at {} not ready after {limit:?}",
            self.socket.display()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(mut self) -> Result<()> {
        let mut child = self.child.take().expect("running");
        // kill fails only if the process is already gone; wait reaps it either way.
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; failure (already gone) is fine.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion (bounded by `limit`), returning its output.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {program}"))?;
    // Drain pipes on threads so a chatty child can't block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut buf).map(|_| buf)
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut buf).map(|_| buf)
    });
    let status = wait_timeout(&mut child, limit).with_context(|| program.clone())?;
    let stdout = out_t.join().expect("stdout thread")?;
    let stderr = err_t.join().expect("stderr thread")?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs a command and requires exit status 0; returns stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Result<String> {
    let program = format!("{cmd:?}");
    let out = run(cmd, limit)?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `len` bytes of random data to `path`.
pub fn random_file(path: &Path, len: usize) -> Result<()> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, data)?;
    Ok(())
}

/// Creates a sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) -> Result<()> {
    std::fs::File::create(path)?.set_len(len)?;
    Ok(())
}
