//! Command line: subcommands, arguments and logging set-up.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

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
    Serve(node::serve::ServeArgs),
    /// Run a node: every volume of the config with its role, NBD export and peers.
    Run {
        /// Node configuration (TOML); see deploy/ for examples.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show each volume's role and copy, and per peer its connection, its
    /// copy's data state, lag and any resync or verify.
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow the node's state changes, one line each: first the current
    /// states (`exists`), then every change (connection, data state, sync
    /// gate, role, generation, fence, split brain, resync and verify start,
    /// progress and end, RPO breach) until the daemon stops (exit 0) or goes
    /// away (exit 1). For scripts and HA managers.
    Events {
        #[command(flatten)]
        control: ControlArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Print the current states and exit.
        #[arg(long)]
        now: bool,
    },
    /// Resync a peer of a volume (run on its primary): what it is owed, or
    /// with --full every region, compared (this also overwrites a peer whose
    /// history is unrelated — only when that copy is to be replaced).
    ///
    /// With --discard-local (run on the victim of a split brain): give this
    /// node's changes since the fork up; it becomes the other primary's
    /// resync target and only the regions changed on either side move.
    Resync {
        /// The volume's name in the node configuration.
        volume: String,
        #[arg(long, required_unless_present = "discard_local")]
        peer: Option<String>,
        #[arg(long, conflicts_with = "discard_local")]
        full: bool,
        #[arg(long, conflicts_with_all = ["peer", "wait"])]
        discard_local: bool,
        /// With --discard-local: print the daemon's answer as JSON.
        #[arg(long, requires = "discard_local")]
        json: bool,
        /// Follow the resync until the peer is up to date.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Verify a volume's peers online (run on its primary): hash every
    /// region on both sides while the volume stays in use, report the
    /// differing regions and mark them out of sync. Exit status 0: all
    /// identical (or repaired with --repair); 3: differences found.
    Verify {
        volume: String,
        /// Only this peer (default: every peer, one after another).
        #[arg(long)]
        peer: Option<String>,
        /// Resync the differing regions and wait until they are.
        #[arg(long)]
        repair: bool,
        /// Print the reports as JSON (no progress).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Make this node the volume's primary: refused while another primary
    /// is connected, while this copy is inconsistent or has no history, or
    /// (a primary fenced after an unclean stop) before every peer confirmed
    /// it holds no newer history. A new generation begins; writes are
    /// accepted. See docs/failover.md.
    Promote {
        volume: String,
        /// Promote anyway. What it risks is printed: a second primary (split
        /// brain), or a copy that is no state the volume ever had.
        #[arg(long)]
        force: bool,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Make this primary a secondary: NBD writes are answered EPERM from
    /// now, in-flight ones finish, a last FLUSH, peers get a bounded wait to
    /// catch up; the node then serves whoever is promoted next.
    Demote {
        volume: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Create a CA, or a node certificate signed by it, for mutual TLS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run a primary, a sync metro peer and an async DR peer on loopback,
    /// write through NBD, cut the DR link, and check the three copies match.
    Demo(harness::demo::DemoArgs),
    /// Relay UDP or TCP with a delay and a cut switch (tests and the demo).
    #[command(hide = true)]
    FaultProxy(harness::proxy::ProxyArgs),
}

/// Where the daemon's control socket is.
#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    /// The daemon's control socket.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub socket: Option<PathBuf>,
    /// Read the control socket path from this node configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ControlArgs {
    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(socket), _) => Ok(socket.clone()),
            (None, Some(config)) => Ok(node::config::NodeConfig::load(config)?.node.control_socket),
            (None, None) => anyhow::bail!("give --socket or --config"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create ca.pem and ca.key in DIR (never overwrites).
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create NAME.pem and NAME.key in DIR, signed by the CA in --ca-dir,
    /// and copy the CA's ca.pem into DIR beside them (where [tls] ca
    /// expects it; an existing different ca.pem is an error). ca.key is
    /// never copied.
    Node {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
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
