//! `driftless`: one binary for the appliance daemon, the DR-site target and
//! the failover CLI; a thin command line over the `node` library (and the
//! `harness` for `demo` and the hidden `fault-proxy`).

mod cli;
mod ops;

use clap::Parser;
use node::control;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(err) = cli::init_logging(cli.log_format) {
        eprintln!("driftless: cannot set up logging: {err:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        cli::Command::Resync {
            volume,
            discard_local: true,
            json,
            control,
            ..
        } => control
            .socket()
            .and_then(|s| role_command(&s, &control::Request::DiscardLocal { volume }, json)),
        cli::Command::Resync {
            volume,
            peer,
            full,
            wait,
            control,
            ..
        } => control.socket().and_then(|s| {
            let peer = peer.expect("clap requires --peer without --discard-local");
            ops::resync(&s, &volume, &peer, full, wait)
        }),
        cli::Command::Promote {
            volume,
            force,
            json,
            control,
        } => control
            .socket()
            .and_then(|s| role_command(&s, &control::Request::Promote { volume, force }, json)),
        cli::Command::Demote {
            volume,
            json,
            control,
        } => control
            .socket()
            .and_then(|s| role_command(&s, &control::Request::Demote { volume }, json)),
        cli::Command::Verify {
            volume,
            peer,
            repair,
            json,
            control,
        } => match control
            .socket()
            .and_then(|s| ops::verify(&s, &volume, peer.as_deref(), repair, json))
        {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(ops::DIFFERENCES_FOUND),
            Err(e) => Err(e),
        },
        cli::Command::Serve(args) => node::serve::run(args).map_err(anyhow::Error::from),
        cli::Command::Run { config } => node::daemon::run(&config).map_err(anyhow::Error::from),
        cli::Command::Status { control, json } => control.socket().and_then(|s| status(&s, json)),
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

/// A role change: the daemon's answer on stdout, or its refusal as the
/// error (with `json`, both as `{"result": "done"|"error", "message": …}`).
fn role_command(
    socket: &std::path::Path,
    request: &control::Request,
    json: bool,
) -> anyhow::Result<()> {
    let answer = control::command(socket, request);
    if json {
        let (result, message) = match &answer {
            Ok(m) => ("done", m.clone()),
            Err(e) => ("error", e.to_string()),
        };
        println!(
            "{}",
            serde_json::json!({ "result": result, "message": message })
        );
    } else if let Ok(m) = &answer {
        println!("{m}");
    }
    answer.map(drop).map_err(anyhow::Error::from)
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = control::status(socket)?;
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
