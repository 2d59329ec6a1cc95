//! A `driftless serve` process: one volume over NBD on a Unix socket.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::error::Result;
use crate::process::Proc;

const START_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// SIGKILLed on drop if still running.
pub struct Serve {
    pub proc: Proc,
    pub uri: String,
    pub socket: PathBuf,
}

impl Serve {
    /// Starts `driftless serve --volume VOLUME --unix <dir>/nbd-N.sock
    /// EXTRA...` and waits for its `serving URI` line (printed once bound).
    pub fn start(dir: &Path, volume: &Path, extra: &[&str]) -> Result<Serve> {
        let socket = dir.join(format!("nbd-{:08x}.sock", rand::random::<u32>()));
        let mut cmd = Command::new(crate::driftless_bin());
        cmd.arg("serve")
            .arg("--volume")
            .arg(volume)
            .arg("--unix")
            .arg(&socket)
            .args(extra);
        let mut proc = Proc::spawn(cmd, dir, "serve")?;
        let uri = proc.wait_stdout("printing its URI", START_LIMIT, |out| {
            out.lines()
                .find_map(|l| l.strip_prefix("serving "))
                .map(|u| u.trim().to_string())
        })?;
        Ok(Serve { proc, uri, socket })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGTERM and a bounded wait.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        self.proc.terminate(STOP_LIMIT)
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill9(mut self) {
        self.proc.kill9()
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}
