//! `driftless`: one binary for the appliance daemon, the DR-site target and
//! the failover CLI; a thin command line over the `node` library (and the
//! `harness` for `demo` and the hidden `fault-proxy`).

mod cli;

use clap::Parser;
use node::config::NodeConfig;
use node::control;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(err) = cli::init_logging(cli.log_format) {
        eprintln!("driftless: cannot set up logging: {err:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        cli::Command::Serve(args) => node::serve::run(args).map_err(anyhow::Error::from),
        cli::Command::Run { config } => node::daemon::run(&config).map_err(anyhow::Error::from),
        cli::Command::Status {
            socket,
            config,
            json,
        } => status(socket, config, json),
        cli::Command::Cert(cmd) => cert(cmd),
        cli::Command::Demo(args) => harness::demo::run(args).map_err(anyhow::Error::from),
        cli::Command::FaultProxy(args) => harness::proxy::run(args).map_err(anyhow::Error::from),
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
        (None, Some(config)) => NodeConfig::load(&config)?.node.control_socket,
        (None, None) => anyhow::bail!("give --socket or --config"),
    };
    let status = control::request(&socket, &control::Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", node::render::render(&status));
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
