//! `driftless`: one binary for the appliance daemon, the DR-site target and
//! the failover CLI. Today it serves a single volume over NBD (`serve`).

mod cli;
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
