//! `driftless serve`: one volume behind its journal and the NBD server; no
//! peers. Until SIGINT/SIGTERM, then in-flight requests finish, the volume
//! is fsynced and the journal checkpointed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nbd_shim::server::{Export, Server, ServerLimits};
use nbd_shim::BlockTarget;

use crate::error::NodeError;
use crate::nbd::{bind_export, shutdown_signal};
use crate::open::{open_store, open_volume, JournalSizing, StoreSpec};
use crate::targets::{JournaledTarget, VolumeTarget};
use crate::units::{parse_bytes, parse_duration};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Backing file or block device; a missing file is created sparse at --size.
    #[arg(long)]
    pub volume: PathBuf,
    /// Volume size with units ("1GiB", "512MiB"; "G" means GiB). Required to
    /// create a file; for an existing one it must match.
    #[arg(long, value_parser = parse_bytes)]
    pub size: Option<u64>,
    /// Unix socket to listen on. Default when neither --unix nor --listen is
    /// given: /tmp/driftless-<name>.sock (or /tmp/driftless.sock).
    #[arg(long)]
    pub unix: Option<PathBuf>,
    /// TCP address to listen on, e.g. 127.0.0.1:10809 (port 0 picks one).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Export name (clients asking for another name are refused).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Export description shown by `nbdinfo`.
    #[arg(long)]
    pub description: Option<String>,
    /// Serve the volume read-only.
    #[arg(long)]
    pub read_only: bool,
    /// I/O engine: io_uring, a thread pool, or auto (io_uring when the kernel
    /// allows it).
    #[arg(long, default_value = "auto")]
    pub io_engine: volume::EngineKind,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Args, Debug)]
pub struct JournalArgs {
    /// Journal directory (default: <volume>.journal next to the volume).
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
    /// Serve without a journal: FLUSH/FUA fsync the volume itself. For
    /// comparison runs; replication needs the journal.
    #[arg(long, conflicts_with = "journal_dir")]
    pub no_journal: bool,
    /// Journal disk space cap.
    #[arg(long, value_parser = parse_bytes, default_value = "1GiB")]
    pub journal_size: u64,
    /// Size of each preallocated journal segment file.
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB")]
    pub journal_segment_size: u64,
    /// Largest group-commit batch (one journal write).
    #[arg(long, value_parser = parse_bytes, default_value = "4MiB")]
    pub max_batch_bytes: u64,
    /// How long the journal writer waits for a batch to fill ("0s": take what is queued).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub max_batch_wait: Duration,
    /// Fsync the volume and checkpoint the journal at least this often.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub checkpoint_interval: Duration,
    /// Dirty-bitmap region size (fixed when the journal is created).
    #[arg(long, value_parser = parse_bytes, default_value = "64KiB")]
    pub region_size: u64,
}

impl ServeArgs {
    fn store_spec(&self) -> StoreSpec {
        let j = &self.journal;
        StoreSpec {
            name: self.volume.display().to_string(),
            path: self.volume.clone(),
            size_bytes: self.size,
            engine: self.io_engine,
            journal_dir: j.journal_dir.clone().unwrap_or_else(|| {
                let mut name = self.volume.as_os_str().to_owned();
                name.push(".journal");
                PathBuf::from(name)
            }),
            journal_size_bytes: j.journal_size,
            journal_segment_bytes: j.journal_segment_size,
            max_batch_bytes: j.max_batch_bytes,
            max_batch_wait: j.max_batch_wait,
            checkpoint_interval: j.checkpoint_interval,
            region_bytes: j.region_size,
            max_write_bytes: ServerLimits::default().max_payload_bytes,
            // A volume served alone gets a fresh identity when its journal is made.
            volume_uuid: None,
            journal_observer: None,
        }
    }
}

pub fn run(args: ServeArgs) -> Result<(), NodeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("driftless")
        .build()
        .map_err(|e| NodeError::io("starting the tokio runtime", e))?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<(), NodeError> {
    let spec = args.store_spec();
    if !args.journal.no_journal && !args.read_only {
        // Before the volume file is created.
        JournalSizing::check(
            spec.journal_size_bytes,
            spec.journal_segment_bytes,
            spec.max_write_bytes,
        )
        .map_err(|s| {
            NodeError::Config(s.describe(
                "--journal-size",
                "--journal-segment-size",
                "the largest NBD write (32MiB)",
            ))
        })?;
    }
    let volume = open_volume(&spec, args.read_only)?;
    if args.journal.no_journal || args.read_only {
        let target = VolumeTarget::new(volume, args.read_only);
        return serve_target(&args, Arc::new(target)).await;
    }
    // An unclean stop's hot ranges stay in the activity log for the next
    // primary run: `serve` has no peers to hand them to.
    let (store, _) = open_store(&spec, volume).await?;
    serve_target(&args, Arc::new(JournaledTarget::new(store.clone()))).await?;
    let lsn = store.close().await.map_err(|cause| NodeError::Store {
        volume: spec.name.clone(),
        cause,
    })?;
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

/// Serves one export until SIGINT/SIGTERM, then lets in-flight requests finish.
async fn serve_target<T: BlockTarget>(args: &ServeArgs, target: Arc<T>) -> Result<(), NodeError> {
    let export = Export {
        name: args.name.clone(),
        description: args.description.clone(),
        target,
        read_only: args.read_only,
    };
    let server = Server::new(vec![export], ServerLimits::default()).map_err(NodeError::Nbd)?;
    let unix = match (&args.unix, args.listen) {
        (None, None) => Some(default_socket_path(&args.name)),
        (unix, _) => unix.clone(),
    };
    let bound = bind_export(&args.name, unix.as_deref(), args.listen).await?;
    for uri in &bound.uris {
        println!("serving {uri}");
    }
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let ready = format!("serving {}", bound.uris.join(" "));
    let polled = crate::notify::ready_when_stoppable(shutdown.as_mut(), &ready).await;
    if polled.is_ready() {
        return Ok(());
    }
    server
        .run(bound.listeners, async {
            shutdown.await;
            crate::notify::stopping();
        })
        .await
        .map_err(NodeError::Nbd)?;
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
