//! `driftless serve`: one volume behind its journal and the NBD server; no peers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use journal::JournalConfig;
use nbd_shim::server::{Export, Listener, Server, ServerLimits};
use nbd_shim::BlockTarget;
use store::{Store, StoreConfig};
use volume::{Volume, VolumeOptions};

use crate::cli::ServeArgs;
use crate::targets::{JournaledTarget, VolumeTarget};

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
    if args.journal.no_journal || args.read_only {
        let target = VolumeTarget::new(volume, args.read_only);
        return serve_target(&args, Arc::new(target)).await;
    }
    let config = store_config(&args)?;
    let journal_dir = config.journal.dir.clone();
    let (store, report) = Store::open(volume, config)
        .await
        .with_context(|| format!("opening journal {}", journal_dir.display()))?;
    tracing::info!(
        journal = %journal_dir.display(),
        volume_id = %store.volume_uuid(),
        checkpoint_lsn = report.checkpoint_lsn,
        redone_records = report.redone_records,
        dropped_tail_bytes = report.dropped_tail_bytes,
        "journal recovered"
    );
    serve_target(&args, Arc::new(JournaledTarget::new(store.clone()))).await?;
    let lsn = store.checkpoint().await.context("final checkpoint")?;
    // Group-commit effectiveness for operators and benches/group-commit.sh.
    let stats = store.journal().stats();
    tracing::info!(
        records = stats.records,
        write_batches = stats.write_batches,
        sync_requests = stats.sync_requests,
        fdatasyncs = stats.fdatasyncs,
        "journal totals"
    );
    tracing::info!(
        checkpoint_lsn = lsn,
        "volume fsynced and journal checkpointed"
    );
    Ok(())
}

fn store_config(args: &ServeArgs) -> anyhow::Result<StoreConfig> {
    let j = &args.journal;
    let dir = j.journal_dir.clone().unwrap_or_else(|| {
        let mut name = args.volume.as_os_str().to_owned();
        name.push(".journal");
        PathBuf::from(name)
    });
    let mut journal = JournalConfig::new(dir);
    journal.capacity_bytes = j.journal_size;
    journal.segment_bytes = j.journal_segment_size;
    journal.max_batch_bytes =
        usize::try_from(j.max_batch_bytes).context("--max-batch-bytes too large")?;
    journal.max_batch_wait = j.max_batch_wait;
    journal.region_bytes = j.region_size;
    journal.pressure_bytes = j.journal_size / 4 * 3;
    Ok(StoreConfig {
        journal,
        checkpoint_interval: j.checkpoint_interval,
        // A volume served alone gets a fresh identity when its journal is made.
        volume_uuid: None,
    })
}

/// Serves one export until SIGINT/SIGTERM, then lets in-flight requests finish.
async fn serve_target<T: BlockTarget>(args: &ServeArgs, target: Arc<T>) -> anyhow::Result<()> {
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
    tracing::info!("all connections closed");
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
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bind_unix(
    path: &std::path::Path,
) -> anyhow::Result<(tokio::net::UnixListener, SocketGuard)> {
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

pub async fn shutdown_signal() {
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
