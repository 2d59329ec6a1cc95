//! `driftless`: one binary for the appliance daemon, the DR-site target and
//! the failover CLI. Today it serves a single volume over NBD (`serve`).

mod cli;
mod config;
mod control;
mod daemon;
mod demo;
mod proxy;
mod serve;
mod targets;
mod units;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(err) = cli::init_logging(cli.log_format) {
        eprintln!("driftless: cannot set up logging: {err:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Run { config } => daemon::run(&config),
        cli::Command::Status {
            socket,
            config,
            json,
        } => status(socket, config, json),
        cli::Command::Cert(cmd) => cert(cmd),
        cli::Command::Demo(args) => demo::run(args),
        cli::Command::FaultProxy(args) => proxy::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, e.g.
            // "opening volume /x: size mismatch: file is 1 GiB, --size asks 2 GiB".
            eprintln!("driftless: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn status(
    socket: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let socket = match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(config)) => config::NodeConfig::load(&config)?.node.control_socket,
        (None, None) => anyhow::bail!("give --socket or --config"),
    };
    let status = control::request(&socket, &control::Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", control::render(&status));
    }
    Ok(())
}

fn cert(cmd: cli::CertCommand) -> anyhow::Result<()> {
    match cmd {
        cli::CertCommand::Ca { dir } => {
            let ca = transport::create_ca(&dir)?;
            println!(
                "created {} and {}",
                ca.cert_pem.display(),
                ca.key_pem.display()
            );
        }
        cli::CertCommand::Node { name, ca_dir, dir } => {
            let ca = transport::CaPaths {
                cert_pem: ca_dir.join("ca.pem"),
                key_pem: ca_dir.join("ca.key"),
            };
            let node = transport::create_node_cert(&ca, &name, &dir)?;
            println!(
                "created {} and {}",
                node.cert_pem.display(),
                node.key_pem.display()
            );
        }
    }
    Ok(())
}
