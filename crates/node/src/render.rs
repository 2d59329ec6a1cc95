//! `driftless status` as a table for people: per volume its own copy's
//! state, per peer the connection apart from the copy's data state, the
//! running job's progress and the last resync and verify.

use indicatif::{HumanBytes, HumanDuration};
use replication::{JobKindStatus, JobStatus, PeerStatus, ResyncReport, VerifyReport};

use crate::control::NodeStatus;

/// Width a table is wrapped to when the terminal's is not known.
pub const DEFAULT_WIDTH: usize = 100;
/// Cells of a progress bar.
const BAR_CELLS: usize = 24;

/// `driftless status` as a table, its long lines wrapped at `width`
/// columns (the peer table's columns take their widths from their cells).
pub fn render(status: &NodeStatus, width: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node {}", status.node);
    for v in &status.volumes {
        let s = &v.status;
        let _ = writeln!(
            out,
            "{}",
            wrap(
                &format!(
                    "volume {} ({}) role={} disk={} generation={:#x} written={} durable={} applied={} checkpoint={} sync-peer-loss={}",
                    v.name,
                    s.volume_uuid,
                    s.role,
                    s.disk,
                    s.generation,
                    s.written_lsn,
                    s.durable_lsn,
                    s.applied_lsn,
                    s.checkpoint_lsn,
                    s.sync_peer_loss_policy.as_deref().unwrap_or("-")
                ),
                "",
                "  ",
                width
            )
        );
        let mut notes = Vec::new();
        if let Some(why) = &s.role_reason {
            notes.push(format!("role {}: {why}", s.role));
        }
        if let Some(c) = s.configured_role.filter(|c| *c != s.role) {
            notes.push(format!(
                "role {} is this node's persisted role (the config's {c} is only where a new volume starts)",
                s.role
            ));
        }
        if let Some(why) = &s.fenced {
            notes.push(format!("FENCED (NBD writes answered EPERM): {why}"));
        }
        if let Some(sb) = &s.split_brain {
            let count = |n: Option<u64>| n.map_or("an unknown number of".into(), |n| n.to_string());
            notes.push(format!(
                "SPLIT BRAIN with {}: both wrote after the fork at LSN {}; this node changed {} regions since, {} {}; policy {}. Unless the policy discards one side, nothing moves until `driftless resync {} --discard-local` on the node whose changes are given up",
                sb.peer,
                sb.fork_lsn,
                count(sb.changed_regions),
                sb.peer,
                count(sb.peer_changed_regions),
                sb.policy,
                v.name
            ));
        }
        if s.discarding_local {
            notes.push(
                "discarding this copy's changes since the fork: the next primary to connect rolls them back".into(),
            );
        }
        if let Some(u) = &s.upstream {
            notes.push(format!(
                "primary {} via {} from {}: {}{}, {} received",
                u.name,
                u.transport,
                u.address,
                if u.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                if u.resyncing {
                    ", resync into this copy running"
                } else {
                    ""
                },
                HumanBytes(u.received_bytes_total)
            ));
        }
        if let Some(err) = &s.last_error {
            notes.push(format!("last error: {err}"));
        }
        for note in notes {
            let _ = writeln!(out, "{}", wrap(&note, "  ", "    ", width));
        }
        if !s.peers.is_empty() {
            out += &peer_table(&s.peers, width);
        }
    }
    out
}

/// A cell and which side it is aligned to.
enum Cell {
    Left(String),
    Right(String),
}

/// The peers as columns sized to their widest cell, each followed by its
/// details (job, last resync and verify, errors) wrapped under it.
fn peer_table(peers: &[PeerStatus], width: usize) -> String {
    const HEADERS: [&str; 13] = [
        "peer",
        "mode",
        "via",
        "address",
        "connection",
        "disk",
        "gate",
        "acked",
        "lag",
        "lag-recs",
        "lag-s",
        "rpo",
        "MB/s",
    ];
    let rows: Vec<[Cell; 13]> = peers
        .iter()
        .map(|p| {
            [
                Cell::Left(p.name.clone()),
                Cell::Left(p.mode.to_string()),
                Cell::Left(p.transport.to_string()),
                Cell::Left(p.address.clone()),
                Cell::Left(p.connection.to_string()),
                Cell::Left(p.disk.to_string()),
                Cell::Left(p.sync_gate.map_or("-".to_string(), |g| g.to_string())),
                Cell::Right(p.acked_lsn.to_string()),
                Cell::Right(HumanBytes(p.lag_bytes).to_string()),
                Cell::Right(p.lag_records.to_string()),
                Cell::Right(format!("{:.2}", p.lag_seconds)),
                Cell::Left(rpo_cell(p)),
                Cell::Right(format!("{:.1}", p.throughput_bytes_per_sec / 1e6)),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            let (Cell::Left(t) | Cell::Right(t)) = cell;
            *w = (*w).max(t.chars().count());
        }
    }
    let line = |cells: &[Cell]| {
        let mut l = String::from(" ");
        for (cell, w) in cells.iter().zip(widths) {
            match cell {
                Cell::Left(t) => l += &format!(" {t:<w$}"),
                Cell::Right(t) => l += &format!(" {t:>w$}"),
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let header: Vec<Cell> = HEADERS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if (7..=12).contains(&i) && i != 11 {
                Cell::Right((*h).into())
            } else {
                Cell::Left((*h).into())
            }
        })
        .collect();
    let mut out = line(&header);
    let indent = "    ";
    for (p, row) in peers.iter().zip(&rows) {
        out += &line(row);
        for detail in peer_details(p) {
            out += &wrap(&detail, indent, "      ", width);
            out.push('\n');
        }
    }
    out
}

/// The RPO column: the target and whether it holds ("-": none).
fn rpo_cell(p: &PeerStatus) -> String {
    match p.rpo_target_seconds {
        None => "-".into(),
        Some(t) if p.rpo_breached => format!("{} BREACHED", format_seconds(t)),
        Some(t) => format!("{} ok", format_seconds(t)),
    }
}

fn format_seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// `text` wrapped at `width` columns on spaces: the first line after
/// `first`, the others after `rest`. A word longer than a line stays whole.
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::from(first);
    let mut col = first.chars().count();
    let mut line_empty = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let n = word.chars().count();
        if !line_empty && col + 1 + n > width {
            out.push('\n');
            out += rest;
            col = rest.chars().count();
            line_empty = true;
        }
        if !line_empty {
            out.push(' ');
            col += 1;
        }
        out += word;
        col += n;
        line_empty = false;
    }
    out
}

fn peer_details(p: &PeerStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(job) = &p.job {
        lines.push(format!(
            "{} {}",
            progress_bar(job.regions_done, job.regions_total),
            job_line(job)
        ));
    }
    if p.rpo_breached {
        lines.push(format!(
            "RPO BREACHED: lag {:.1} s exceeds the target {}",
            p.lag_seconds,
            p.rpo_target_seconds.map_or("-".into(), format_seconds)
        ));
    }
    if let Some(r) = &p.last_resync {
        lines.push(format!("last resync: {}", resync_summary(r)));
    }
    if let Some(v) = &p.last_verify {
        lines.push(format!("last verify: {}", verify_summary(v)));
    }
    if let Some(err) = &p.last_error {
        lines.push(format!("last error: {err}"));
    }
    if p.dirty_regions > 0 {
        lines.push(format!("dirty regions: {}", p.dirty_regions));
    }
    lines
}

/// `[=======>........]` for `done` of `total` (no spaces: it wraps as one
/// word).
pub fn progress_bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        BAR_CELLS
    } else {
        ((done.min(total) as f64 / total as f64) * BAR_CELLS as f64) as usize
    };
    let mut bar = "=".repeat(filled);
    if filled < BAR_CELLS {
        bar.push('>');
        bar += &".".repeat(BAR_CELLS - filled - 1);
    }
    format!("[{bar}]")
}

/// One line of a running job's progress (status and the CLI's plain
/// progress lines).
pub fn job_line(job: &JobStatus) -> String {
    let what = match job.kind {
        JobKindStatus::Resync if job.full => "full resync",
        JobKindStatus::Resync => "resync",
        JobKindStatus::Verify => "verify",
    };
    let pct = if job.regions_total == 0 {
        100.0
    } else {
        job.regions_done as f64 * 100.0 / job.regions_total as f64
    };
    let mut line = format!(
        "{what} {}: {}/{} regions ({pct:.1}%), {} sent, {}/s",
        job.id,
        job.regions_done,
        job.regions_total,
        HumanBytes(job.bytes_sent),
        HumanBytes(job.rate_bytes_per_sec as u64)
    );
    if job.rate_limit_bytes_per_sec > 0 {
        line += &format!(" (limit {}/s)", HumanBytes(job.rate_limit_bytes_per_sec));
    }
    if let Some(eta) = job.eta_seconds {
        line += &format!(
            ", ETA {}",
            HumanDuration(std::time::Duration::from_secs_f64(eta.min(1e9)))
        );
    }
    if job.kind == JobKindStatus::Verify && job.mismatches > 0 {
        line += &format!(", {} differing", job.mismatches);
    }
    if job.compare && job.kind == JobKindStatus::Resync {
        line += ", comparing first";
    }
    line
}

pub fn resync_summary(r: &ResyncReport) -> String {
    format!(
        "{} regions, {} sent in {:.2} s{}{}",
        r.regions,
        HumanBytes(r.bytes_sent),
        r.seconds,
        if r.full { ", every region" } else { "" },
        if r.compare { ", compared first" } else { "" }
    )
}

pub fn verify_summary(v: &VerifyReport) -> String {
    if v.mismatches == 0 {
        return format!("{} regions compared, all identical", v.regions);
    }
    let ranges: Vec<String> = v.ranges.iter().map(|(o, l)| format!("{o}+{l}")).collect();
    format!(
        "{} of {} regions differ (at {}{}){}",
        v.mismatches,
        v.regions,
        ranges.join(", "),
        if v.mismatches as usize > v.ranges.len() {
            ", …"
        } else {
            ""
        },
        if v.repaired {
            "; a resync of them was started"
        } else {
            "; marked out of sync: `driftless resync` or `verify --repair` fixes them"
        }
    )
}

#[cfg(test)]
mod tests {
    use replication::{
        ConnectionState, DiskState, GenerationStatus, JobKindStatus, JobStatus, PeerMode,
        PeerStatus, SyncGate, TransportKind, VerifyReport, VolumeRole, VolumeStatus,
    };

    use super::{progress_bar, render, wrap};
    use crate::control::{NamedStatus, NodeStatus};

    fn volume(role: VolumeRole) -> VolumeStatus {
        VolumeStatus {
            role,
            volume_uuid: "6f1c2a8e-7d1b-4a53-9a51-0c5e7f3b2d11".into(),
            generation: 0xabc,
            lineage: vec![GenerationStatus {
                id: 0xabc,
                start_lsn: 1,
                unknown_before: false,
            }],
            written_lsn: 42,
            durable_lsn: 40,
            applied_lsn: 42,
            checkpoint_lsn: 30,
            disk: DiskState::UpToDate,
            sync_peer_loss_policy: None,
            peers: Vec::new(),
            upstream: None,
            last_error: None,
            fenced: None,
            split_brain: None,
            discarding_local: false,
            configured_role: None,
            role_reason: None,
        }
    }

    fn peer(name: &str) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            mode: PeerMode::Sync,
            transport: TransportKind::Tcp,
            address: "127.0.0.1:7401".into(),
            connection: ConnectionState::Connected,
            disk: DiskState::Syncing,
            sync_gate: Some(SyncGate::Degraded),
            job: None,
            last_resync: None,
            last_verify: None,
            acked_lsn: 7,
            durable_lsn: 7,
            lag_bytes: 4096,
            lag_records: 35,
            lag_seconds: 1.5,
            throughput_bytes_per_sec: 2e6,
            last_error: None,
            dirty_regions: 12,
            rpo_target_seconds: None,
            rpo_breached: false,
            shipped_bytes_total: 0,
            resync_bytes_total: 0,
            reconnects: 0,
            refusals: Default::default(),
        }
    }

    fn node(v: VolumeStatus) -> NodeStatus {
        NodeStatus {
            node: "alpha".into(),
            volumes: vec![NamedStatus {
                name: "vol0".into(),
                status: v,
            }],
        }
    }

    /// The column of `header` in the table's header line.
    fn column(text: &str, header: &str) -> usize {
        let head = text.lines().find(|l| l.contains("connection")).unwrap();
        head.find(&format!(" {header}")).unwrap() + 1
    }

    fn row<'a>(text: &'a str, peer: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(&format!("  {peer} ")))
            .unwrap_or_else(|| panic!("no row for {peer}:\n{text}"))
    }

    #[test]
    fn peers_are_aligned_with_their_states_job_rpo_and_errors() {
        let mut v = volume(VolumeRole::Primary);
        v.sync_peer_loss_policy = Some("degrade".into());
        let mut metro = peer("metro");
        metro.job = Some(JobStatus {
            kind: JobKindStatus::Resync,
            id: 3,
            full: false,
            stale_reads: 0,
            compare: false,
            regions_total: 200,
            regions_done: 50,
            bytes_sent: 50 << 16,
            mismatches: 0,
            rate_bytes_per_sec: 1048576.0,
            rate_limit_bytes_per_sec: 200 << 20,
            eta_seconds: Some(12.0),
        });
        metro.last_error = Some("fell behind".into());
        let mut dr = peer("dr-site-with-a-long-name");
        dr.mode = PeerMode::Async;
        dr.transport = TransportKind::Quic;
        dr.address = "[2001:db8::1234:5678]:7402".into();
        dr.connection = ConnectionState::Refused;
        dr.disk = DiskState::Unknown;
        dr.sync_gate = None;
        dr.dirty_regions = 0;
        dr.lag_seconds = 45.25;
        dr.rpo_target_seconds = Some(30.0);
        dr.rpo_breached = true;
        dr.last_verify = Some(VerifyReport {
            job: 1,
            regions: 256,
            mismatches: 2,
            ranges: vec![(0, 65536), (655360, 65536)],
            repaired: false,
        });
        dr.last_error = Some(format!(
            "by peer (LineageDiverged): {}",
            "the history differs; ".repeat(12)
        ));
        let mut third = peer("x");
        third.rpo_target_seconds = Some(2.5);
        v.peers = vec![metro, dr, third];
        let text = render(&node(v), 100);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "node alpha");
        assert!(
            text.contains("role=primary")
                && text.contains("disk=up-to-date")
                && text.contains("sync-peer-loss=degrade"),
            "{text}"
        );
        // Every state cell starts under its header, however long the names
        // and addresses are.
        let long = "dr-site-with-a-long-name";
        for (peer, header, value) in [
            ("metro", "connection", "connected"),
            ("metro", "disk", "syncing"),
            ("metro", "gate", "degraded"),
            ("metro", "rpo", "-"),
            (long, "connection", "refused"),
            (long, "disk", "unknown"),
            (long, "rpo", "30s BREACHED"),
            ("x", "rpo", "2.5s ok"),
            ("x", "mode", "sync"),
        ] {
            let at = column(&text, header);
            let r = row(&text, peer);
            assert_eq!(&r[at..at + value.len()], value, "{peer} {header}:\n{text}");
        }
        // Numbers end where their header ends.
        let lag_end = column(&text, "lag-s") + "lag-s".len();
        assert!(row(&text, long)[..lag_end].ends_with("45.25"), "{text}");
        // Details as one text (wrapping aside).
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains("[======>.................] resync 3: 50/200 regions (25.0%), 3.12 MiB sent, 1.00 MiB/s (limit 200.00 MiB/s), ETA 12 seconds"),
            "{text}"
        );
        assert!(
            text.contains("RPO BREACHED: lag 45.2 s exceeds the target 30s"),
            "{text}"
        );
        assert!(text.contains("last error: fell behind"), "{text}");
        assert!(text.contains("dirty regions: 12"), "{text}");
        assert!(
            text.contains("last verify: 2 of 256 regions differ (at 0+65536, 655360+65536); marked out of sync"),
            "{text}"
        );
        // A long reason is wrapped under its peer, not through the table.
        for l in lines.iter().filter(|l| l.starts_with("    ")) {
            assert!(l.chars().count() <= 100, "too long: {l:?}\n{text}");
        }
        let err_at = lines
            .iter()
            .position(|l| l.starts_with("    last error: by peer"))
            .unwrap();
        let next = lines[err_at + 1];
        assert!(
            next.starts_with("      ") && next.contains("history") && !next.contains(" dr-"),
            "{next:?}"
        );
    }

    #[test]
    fn a_secondary_shows_its_primary_and_last_error() {
        let mut v = volume(VolumeRole::Secondary);
        v.disk = DiskState::Inconsistent;
        v.upstream = Some(replication::UpstreamStatus {
            name: "alpha".into(),
            transport: TransportKind::Quic,
            address: "127.0.0.1:9".into(),
            connected: false,
            resyncing: false,
            received_bytes_total: 3 << 20,
        });
        v.last_error = Some("refused: size mismatch".into());
        let text = render(&node(v), 100);
        assert!(text.contains("disk=inconsistent"), "{text}");
        assert!(
            text.contains(
                "  primary alpha via quic from 127.0.0.1:9: disconnected, 3.00 MiB received"
            ),
            "{text}"
        );
        assert!(
            text.contains("  last error: refused: size mismatch"),
            "{text}"
        );
        assert!(!text.contains("lag-recs"), "{text}");
    }

    #[test]
    fn bars_and_wrapping() {
        assert_eq!(progress_bar(0, 10), format!("[>{}]", ".".repeat(23)));
        assert_eq!(
            progress_bar(5, 10),
            format!("[{}>{}]", "=".repeat(12), ".".repeat(11))
        );
        assert_eq!(progress_bar(10, 10), format!("[{}]", "=".repeat(24)));
        assert_eq!(progress_bar(0, 0), format!("[{}]", "=".repeat(24)));
        assert_eq!(
            wrap("a bb ccc dddd", "> ", "  ", 8),
            "> a bb\n  ccc\n  dddd"
        );
        assert_eq!(
            wrap("averyveryverylongword x", "", "  ", 5),
            "averyveryverylongword\n  x"
        );
    }
}
