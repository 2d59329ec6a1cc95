//! `driftless`: one binary for the appliance daemon, the DR-site target and
//! the failover CLI; a thin command line over the `node` library (and the
//! `harness` for `demo` and the hidden `fault-proxy`).

mod cli;
mod ops;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
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
        cli::Command::Events { control, json, now } => {
            control.socket().and_then(|s| events(&s, json, now))
        }
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

/// The terminal's width, or the default when stdout is not a terminal.
fn terminal_width() -> usize {
    console::Term::stdout()
        .size_checked()
        .map_or(node::render::DEFAULT_WIDTH, |(_, cols)| usize::from(cols))
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = control::status(socket)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", node::render::render(&status, terminal_width()));
    }
    Ok(())
}

/// `driftless events`: the daemon's event lines until the stream ends; an
/// error when it ends without the daemon saying it stops (unless `now`).
fn events(socket: &std::path::Path, json: bool, now: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let stopped = control::events(socket, now, |e| {
        let mut out = stdout.lock();
        if json {
            serde_json::to_writer(&mut out, e)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", e.human())?;
        }
        // Line by line: a script reads each event as it happens.
        out.flush()
    })?;
    if !stopped && !now {
        anyhow::bail!("the event stream ended without the daemon stopping (did it crash?)");
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
            // Refuse a conflicting ca.pem before anything is created.
            let ca_copy = ca_pem_copy(&ca.cert_pem, &ca_dir, &dir)?;
            let node = transport::create_node_cert(&ca, &name, &dir)?;
            println!("created {} (certificate)", node.cert_pem.display());
            println!("created {} (key, mode 0600)", node.key_pem.display());
            match ca_copy {
                CaCopy::SameDir => {
                    println!("CA certificate {} (same directory)", ca.cert_pem.display())
                }
                CaCopy::AlreadyThere(to) => {
                    println!("CA certificate {} (already there, identical)", to.display())
                }
                CaCopy::Copy(to, pem) => {
                    // create_new: a ca.pem that appeared meanwhile is not overwritten.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&to)
                        .and_then(|mut f| f.write_all(&pem))
                        .with_context(|| {
                            format!("copying {} to {}", ca.cert_pem.display(), to.display())
                        })?;
                    println!(
                        "copied {} to {} (CA certificate; ca.key stays in {})",
                        ca.cert_pem.display(),
                        to.display(),
                        ca_dir.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Where the CA certificate goes for a node whose certificate is created in
/// `dir`: the deploy configs name `ca.pem` next to the node's cert and key.
enum CaCopy {
    /// `dir` is the CA directory: ca.pem is already beside the node's files.
    SameDir,
    /// `dir` holds a ca.pem with the same content.
    AlreadyThere(std::path::PathBuf),
    /// Write the CA certificate (these bytes) here: nothing is there yet.
    Copy(std::path::PathBuf, Vec<u8>),
}

/// Decides [`CaCopy`]; a different ca.pem already in `dir` is an error
/// naming it (never overwritten: it may be another cluster's CA). The CA key
/// is never copied.
fn ca_pem_copy(
    ca_pem: &std::path::Path,
    ca_dir: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<CaCopy> {
    let ca_dir_real = ca_dir
        .canonicalize()
        .with_context(|| format!("CA directory {}", ca_dir.display()))?;
    if dir.canonicalize().is_ok_and(|d| d == ca_dir_real) {
        return Ok(CaCopy::SameDir);
    }
    let to = dir.join("ca.pem");
    let ca = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    match std::fs::read(&to) {
        Ok(existing) if existing == ca => Ok(CaCopy::AlreadyThere(to)),
        Ok(_) => anyhow::bail!(
            "{} exists and is not the CA certificate {}: not overwriting it \
             (another CA's certificate?); move it away or use another --dir",
            to.display(),
            ca_pem.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CaCopy::Copy(to, ca)),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", to.display()))),
    }
}
