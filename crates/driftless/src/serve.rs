//! `driftless serve`: one volume behind the NBD server, no journal, no peers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use nbd_shim::server::{Export, Listener, Server, ServerLimits};
use nbd_shim::{BlockTarget, Durability, Extent, TargetError, TargetFeatures, ZeroFlags};
use volume::{Volume, VolumeError, VolumeOptions};

use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("driftless")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let opts = VolumeOptions {
        size_bytes: args.size,
        engine: args.io_engine,
        read_only: args.read_only,
        create: true,
    };
    let volume = Volume::open(&args.volume, opts)
        .with_context(|| format!("opening volume {}", args.volume.display()))?;
    tracing::info!(
        volume = %args.volume.display(),
        size_bytes = volume.size_bytes(),
        engine = volume.engine_name(),
        read_only = args.read_only,
        "volume open"
    );
    let target = Arc::new(VolumeTarget {
        volume,
        read_only: args.read_only,
    });
    let export = Export {
        name: args.name.clone(),
        description: args.description.clone(),
        target,
        read_only: args.read_only,
    };
    let server =
        Server::new(vec![export], ServerLimits::default()).context("configuring the NBD server")?;

    let mut listeners = Vec::new();
    let mut unix_path = args.unix.clone();
    if unix_path.is_none() && args.listen.is_none() {
        unix_path = Some(default_socket_path(&args.name));
    }
    let mut _socket_guard = None;
    if let Some(path) = &unix_path {
        let (listener, guard) = bind_unix(path)?;
        listeners.push(Listener::Unix(listener));
        _socket_guard = Some(guard);
        println!(
            "serving nbd+unix:///{}?socket={}",
            args.name,
            path.display()
        );
    }
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        let local = listener
            .local_addr()
            .context("reading the bound TCP address")?;
        listeners.push(Listener::Tcp(listener));
        println!("serving nbd://{local}/{}", args.name);
    }

    server
        .run(listeners, shutdown_signal())
        .await
        .context("NBD server failed")?;
    tracing::info!("all connections closed; exiting");
    Ok(())
}

fn default_socket_path(name: &str) -> PathBuf {
    if name.is_empty() {
        PathBuf::from("/tmp/driftless.sock")
    } else {
        PathBuf::from(format!("/tmp/driftless-{name}.sock"))
    }
}

/// Removes the socket file when the server stops.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_unix(path: &std::path::Path) -> anyhow::Result<(tokio::net::UnixListener, SocketGuard)> {
    use std::os::unix::fs::FileTypeExt;
    // A socket left by a killed server would make bind fail; only ever remove
    // a socket, never a regular file someone pointed us at by mistake.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running server", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding Unix socket {}", path.display()))?;
    Ok((listener, SocketGuard(path.to_path_buf())))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = which,
        "shutting down: finishing in-flight requests"
    );
}

/// A plain volume as an NBD target: FUA and FLUSH are fdatasync of the volume.
struct VolumeTarget {
    volume: Volume,
    read_only: bool,
}

fn target_error(err: VolumeError) -> TargetError {
    match &err {
        VolumeError::ReadOnly => TargetError::ReadOnly,
        VolumeError::FastZeroUnavailable => TargetError::FastZeroUnavailable,
        VolumeError::OutOfRange { .. } | VolumeError::TooLarge { .. } => {
            TargetError::Invalid(err.to_string())
        }
        _ => match err.raw_os_error() {
            // Keep the errno so ENOSPC/EPERM reach the client as such; the
            // context (op, path, offset) goes to the log.
            Some(code) => {
                tracing::warn!(error = %err, "volume I/O failed");
                TargetError::Io(std::io::Error::from_raw_os_error(code))
            }
            None => TargetError::Io(std::io::Error::other(err.to_string())),
        },
    }
}

impl VolumeTarget {
    async fn durable(&self, durability: Durability) -> Result<(), TargetError> {
        match durability {
            Durability::Buffered => Ok(()),
            Durability::Fua => self.volume.sync_data().await.map_err(target_error),
        }
    }
}

impl BlockTarget for VolumeTarget {
    fn size_bytes(&self) -> u64 {
        self.volume.size_bytes()
    }

    fn features(&self) -> TargetFeatures {
        TargetFeatures {
            read_only: self.read_only,
            can_trim: true,
            can_write_zeroes: true,
            can_fast_zero: true,
            can_cache: true,
            preferred_block_bytes: 4096,
        }
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        self.volume
            .read(offset, len as usize)
            .await
            .map_err(target_error)
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<(), TargetError> {
        self.volume
            .write(offset, data)
            .await
            .map_err(target_error)?;
        self.durable(durability).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), TargetError> {
        self.volume
            .write_zeroes(offset, u64::from(len), flags.may_trim, flags.fast_only)
            .await
            .map_err(target_error)?;
        self.durable(flags.durability).await
    }

    async fn trim(&self, offset: u64, len: u32, durability: Durability) -> Result<(), TargetError> {
        self.volume
            .punch_hole(offset, u64::from(len))
            .await
            .map_err(target_error)?;
        self.durable(durability).await
    }

    async fn flush(&self) -> Result<(), TargetError> {
        self.volume.sync_data().await.map_err(target_error)
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), TargetError> {
        self.volume
            .readahead(offset, u64::from(len))
            .await
            .map_err(target_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        let extents = self
            .volume
            .extents(offset, u64::from(len))
            .await
            .map_err(target_error)?;
        Ok(extents
            .into_iter()
            .map(|e| Extent {
                length_bytes: e.length_bytes,
                hole: e.hole,
                zero: e.zero,
            })
            .collect())
    }
}
