//! Child processes with their output in files, killed (SIGKILL) on drop if
//! still running; bounded waits; commands run to completion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// How often waits look again.
pub const POLL: Duration = Duration::from_millis(20);

/// A running child: stdout in `NAME-N.out`, stderr (its log) in
/// `NAME-N.log`, both in the directory it was started for.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub stdout: PathBuf,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and its output in files under `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Result<Proc> {
        let run = rand::random::<u32>();
        let stdout = dir.join(format!("{name}-{run:08x}.out"));
        let log = dir.join(format!("{name}-{run:08x}.log"));
        let file = |p: &Path| {
            std::fs::File::create(p)
                .map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&log)?)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {name} ({cmd:?})"), e))?;
        Ok(Proc {
            child: Some(child),
            name: name.into(),
            stdout,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Polls stdout until `find` returns a value for its text (whole lines:
    /// Rust's stdout is line buffered); fails at once if the process exits.
    pub fn wait_stdout<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(found) = find(&out) {
                return Ok(found);
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HarnessError::Process {
                    what: format!("{} exited before {what}", self.name),
                    status: status.to_string(),
                    context: self.log_tail(40),
                });
            }
            if start.elapsed() > limit {
                return Err(HarnessError::Timeout {
                    what: format!("{}: {what}", self.name),
                    limit,
                    context: self.log_tail(40),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM and a bounded wait (SIGKILL when it runs out).
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| HarnessError::Process {
            what: format!("{} is not running", self.name),
            status: "-".into(),
            context: String::new(),
        })?;
        signal(child.id(), libc::SIGTERM);
        wait_timeout(&mut child, limit).map_err(|e| HarnessError::Timeout {
            what: format!("{} to exit after SIGTERM ({e})", self.name),
            limit,
            context: self.log_tail(30),
        })
    }

    /// SIGTERM; an error unless it exits 0 within `limit`.
    pub fn stop(&mut self, limit: Duration) -> Result<()> {
        let status = self.terminate(limit)?;
        if status.success() {
            return Ok(());
        }
        Err(HarnessError::Process {
            what: format!("{} failed after SIGTERM", self.name),
            status: status.to_string(),
            context: self.log_tail(40),
        })
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log, headed by its name.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- {} log ({}), last {} lines ---\n{}",
            self.name,
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; failure (already gone) is fine.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits for `child` at most `limit`; kills it when the limit runs out.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::io::Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("process {} did not exit within {limit:?}", child.id()),
            ));
        }
        std::thread::sleep(POLL);
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
        .map_err(|e| HarnessError::io(format!("spawning {program}"), e))?;
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
    let status = wait_timeout(&mut child, limit).map_err(|e| HarnessError::io(&program, e))?;
    let read = |t: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| {
        t.join()
            .expect("pipe reader thread")
            .map_err(|e| HarnessError::io(format!("reading the output of {program}"), e))
    };
    Ok(Output {
        status,
        stdout: read(out_t)?,
        stderr: read(err_t)?,
    })
}

/// Runs a command and requires exit status 0; returns stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Result<String> {
    let program = format!("{cmd:?}");
    let out = run(cmd, limit)?;
    if !out.status.success() {
        return Err(HarnessError::Process {
            what: format!("{program} failed"),
            status: out.status.to_string(),
            context: format!(
                "stdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
