//! The control socket: a Unix socket (mode 0600) where the CLI asks the
//! daemon for its state. One JSON request line, one JSON response line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use replication::VolumeStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request line is at most this long; anything longer is refused.
const MAX_REQUEST_BYTES: usize = 4096;
/// Control clients served at once.
const MAX_CONTROL_CONNECTIONS: usize = 16;
const CONTROL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub volumes: Vec<NamedStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedStatus {
    pub name: String,
    #[serde(flatten)]
    pub status: VolumeStatus,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Ok(NodeStatus),
    Error { message: String },
}

/// Where the daemon's state comes from when a request arrives.
pub trait StatusSource: Send + Sync + 'static {
    fn node_status(&self) -> NodeStatus;
}

/// Binds the control socket with mode 0600 (only the daemon's user may
/// drive it) and serves requests until the task is dropped.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, crate::serve::SocketGuard)> {
    use std::os::unix::fs::PermissionsExt;
    let (listener, guard) = crate::serve::bind_unix(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok((listener, guard))
}

pub async fn serve(listener: UnixListener, source: Arc<dyn StatusSource>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        // At the limit, further clients wait in the listen backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            // A client that sends nothing must not hold its slot forever.
            match tokio::time::timeout(CONTROL_REQUEST_TIMEOUT, answer(stream, source)).await {
                Ok(Err(err)) => tracing::debug!(error = %err, "control request failed"),
                Err(_) => tracing::debug!("control request timed out"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

async fn answer(stream: UnixStream, source: Arc<dyn StatusSource>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => Response::Ok(source.node_status()),
        Err(err) => Response::Error {
            message: format!("bad request: {err}"),
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// The CLI side: one request, one response.
pub fn request(path: &PathBuf, request: &Request) -> anyhow::Result<NodeStatus> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the daemon's control socket {} (is it running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    match serde_json::from_str::<Response>(&reply).context("parsing the daemon's reply")? {
        Response::Ok(status) => Ok(status),
        Response::Error { message } => bail!("daemon refused the request: {message}"),
    }
}

/// `driftless status` as a table.
pub fn render(status: &NodeStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node {}", status.node);
    for v in &status.volumes {
        let s = &v.status;
        let _ = writeln!(
            out,
            "volume {} ({}) role={} generation={:#x} consistent={} written={} durable={} applied={} checkpoint={} sync-peer-loss={}",
            v.name,
            s.volume_uuid,
            s.role,
            s.generation,
            s.consistent,
            s.written_lsn,
            s.durable_lsn,
            s.applied_lsn,
            s.checkpoint_lsn,
            s.sync_peer_loss_policy.as_deref().unwrap_or("-")
        );
        if s.peers.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<5} {:<4} {:<22} {:<14} {:>10} {:>12} {:>9} {:>8} {:>11}",
            "peer",
            "mode",
            "via",
            "address",
            "state",
            "acked",
            "lag-bytes",
            "lag-recs",
            "lag-s",
            "MB/s"
        );
        for p in &s.peers {
            let _ = writeln!(
                out,
                "  {:<12} {:<5} {:<4} {:<22} {:<14} {:>10} {:>12} {:>9} {:>8.2} {:>11.1}",
                p.name,
                p.mode,
                p.transport,
                p.address,
                p.state,
                p.acked_lsn,
                p.lag_bytes,
                p.lag_records,
                p.lag_seconds,
                p.throughput_bytes_per_sec / 1e6
            );
            if let Some(err) = &p.last_error {
                let _ = writeln!(out, "  {:<12} last error: {err}", "");
            }
            if p.dirty_regions > 0 {
                let _ = writeln!(out, "  {:<12} dirty regions: {}", "", p.dirty_regions);
            }
        }
    }
    out
}
