//! `driftless-torture --seed S --cycles N`: a seeded fault campaign against
//! three real `driftless run` nodes (see `harness::torture`). Exits 0 with
//! a summary, or 1 naming the seed, the failing cycle and the schedule.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "driftless-torture",
    about = "Seeded fault campaigns against a three-node driftless cluster"
)]
struct Cli {
    #[command(flatten)]
    args: harness::torture::TortureArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match harness::torture::run(&cli.args) {
        Ok(summary) if cli.args.dry_run => {
            let _ = summary;
            std::process::ExitCode::SUCCESS
        }
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("driftless-torture: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
