//! `driftless resync` and `driftless verify`: ask the primary's daemon over
//! its control socket, then follow the job through `status` — a progress
//! bar with rate and ETA on a terminal, a plain line every few seconds
//! otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use node::control::{self, Request};
use node::render::{job_line, verify_summary};
use replication::{ConnectionState, DiskState, PeerStatus, VerifyReport};

/// Exit status of `verify` when regions differ (and were not repaired).
pub const DIFFERENCES_FOUND: u8 = 3;

const POLL: Duration = Duration::from_millis(250);
const PLAIN_EVERY: Duration = Duration::from_secs(2);

fn peer_status(socket: &Path, volume: &str, peer: &str) -> Result<PeerStatus> {
    let status = control::status(socket)?;
    let v = status
        .volumes
        .into_iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| anyhow!("no volume {volume:?} on node {}", status.node))?;
    v.status
        .peers
        .into_iter()
        .find(|p| p.name == peer)
        .ok_or_else(|| anyhow!("volume {volume} has no peer {peer:?} on this node"))
}

pub fn resync(socket: &Path, volume: &str, peer: &str, full: bool, wait: bool) -> Result<()> {
    let message = control::command(
        socket,
        &Request::Resync {
            volume: volume.into(),
            peer: peer.into(),
            full,
        },
    )?;
    println!("{volume} → {peer}: {message}");
    if wait {
        let st = follow(socket, volume, peer, false, |p| {
            p.job.is_none() && p.disk == DiskState::UpToDate && p.dirty_regions == 0
        })?;
        match &st.last_resync {
            Some(r) => println!(
                "{volume} → {peer}: up to date ({})",
                node::render::resync_summary(r)
            ),
            None => println!("{volume} → {peer}: up to date"),
        }
    }
    Ok(())
}

/// Returns whether every verified peer is identical (or was repaired).
pub fn verify(
    socket: &Path,
    volume: &str,
    peer: Option<&str>,
    repair: bool,
    json: bool,
) -> Result<bool> {
    let peers: Vec<String> = match peer {
        Some(p) => vec![p.to_owned()],
        None => {
            let status = control::status(socket)?;
            let v = status
                .volumes
                .iter()
                .find(|v| v.name == volume)
                .ok_or_else(|| anyhow!("no volume {volume:?} on node {}", status.node))?;
            if v.status.peers.is_empty() {
                bail!("volume {volume} has no peers on this node (run verify on its primary)");
            }
            v.status.peers.iter().map(|p| p.name.clone()).collect()
        }
    };
    let mut reports: Vec<(String, VerifyReport)> = Vec::new();
    let mut clean = true;
    for p in &peers {
        let before = peer_status(socket, volume, p)?.last_verify.map(|r| r.job);
        let message = control::command(
            socket,
            &Request::Verify {
                volume: volume.into(),
                peer: p.clone(),
                repair,
            },
        )?;
        if !json {
            println!("{volume} → {p}: {message}");
        }
        let st = follow(socket, volume, p, json, |s| {
            s.last_verify.as_ref().map(|r| r.job) != before
        })?;
        let report = st.last_verify.expect("followed until a report");
        if !json {
            println!("{volume} → {p}: {}", verify_summary(&report));
        }
        if report.mismatches > 0 {
            if report.repaired {
                follow(socket, volume, p, json, |s| {
                    s.job.is_none() && s.disk == DiskState::UpToDate && s.dirty_regions == 0
                })?;
                if !json {
                    println!(
                        "{volume} → {p}: repaired: {} regions resent",
                        report.mismatches
                    );
                }
            } else {
                clean = false;
            }
        }
        reports.push((p.clone(), report));
    }
    if json {
        let out: Vec<serde_json::Value> = reports
            .iter()
            .map(|(p, r)| serde_json::json!({ "volume": volume, "peer": p, "report": r }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(clean)
}

/// Polls the peer's status until `done`, showing its job's progress.
/// Fails if the peer's session ends with the job unfinished.
fn follow(
    socket: &Path,
    volume: &str,
    peer: &str,
    quiet: bool,
    done: impl Fn(&PeerStatus) -> bool,
) -> Result<PeerStatus> {
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} regions, {elapsed_precise} elapsed",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut printed = Instant::now() - PLAIN_EVERY;
    let mut saw_job = false;
    loop {
        let st = peer_status(socket, volume, peer)?;
        if done(&st) {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(st);
        }
        match &st.job {
            Some(job) => {
                saw_job = true;
                match &bar {
                    Some(b) => {
                        b.set_length(job.regions_total);
                        b.set_position(job.regions_done);
                        b.set_message(job_line(job));
                        b.tick();
                    }
                    None if !quiet && printed.elapsed() >= PLAIN_EVERY => {
                        println!("{volume} → {peer}: {}", job_line(job));
                        printed = Instant::now();
                    }
                    None => {}
                }
            }
            None if saw_job && st.connection != ConnectionState::Connected => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                bail!(
                    "{volume} → {peer}: the session ended before the job did ({}); {}",
                    st.connection,
                    st.last_error.as_deref().unwrap_or("no reason given")
                );
            }
            None => {}
        }
        std::thread::sleep(POLL);
    }
}
