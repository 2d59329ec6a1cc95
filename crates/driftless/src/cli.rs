//! Command line: subcommands, arguments and logging set-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::units::{parse_bytes, parse_duration};

#[derive(Parser, Debug)]
#[command(name = "driftless", version, about = "Block volume replicator")]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG, default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve one volume over NBD behind its journal (no peers) until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Run a node: every volume of the config with its role, NBD export and peers.
    Run {
        /// Node configuration (TOML); see deploy/ for examples.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show each volume's role, generation and, per peer, state and lag.
    Status {
        /// The daemon's control socket.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        socket: Option<PathBuf>,
        /// Read the control socket path from this node configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a CA, or a node certificate signed by it, for mutual TLS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run a primary, a sync metro peer and an async DR peer on loopback,
    /// write through NBD, cut the DR link, and check the three copies match.
    Demo(crate::demo::DemoArgs),
    /// Relay UDP or TCP with a delay and a cut switch (tests and the demo).
    #[command(hide = true)]
    FaultProxy(crate::proxy::ProxyArgs),
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create ca.pem and ca.key in DIR (never overwrites).
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create NAME.pem and NAME.key in DIR, signed by the CA in --ca-dir.
    Node {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
}

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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
}
