//! `driftless status` as a table for people: per volume its own copy's
//! state, per peer the connection apart from the copy's data state, the
//! running job's progress and the last resync and verify.

use indicatif::{HumanBytes, HumanDuration};
use replication::{JobKindStatus, JobStatus, PeerStatus, ResyncReport, VerifyReport};

use crate::control::NodeStatus;

/// `driftless status` as a table.
pub fn render(status: &NodeStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "node {}", status.node);
    for v in &status.volumes {
        let s = &v.status;
        let _ = writeln!(
            out,
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
        );
        if let Some(why) = &s.role_reason {
            let _ = writeln!(out, "  role {}: {why}", s.role);
        }
        if let Some(c) = s.configured_role.filter(|c| *c != s.role) {
            let _ = writeln!(
                out,
                "  role {} is this node's persisted role (the config's {c} is only where a new volume starts)",
                s.role
            );
        }
        if let Some(why) = &s.fenced {
            let _ = writeln!(out, "  FENCED (NBD writes answered EPERM): {why}");
        }
        if let Some(sb) = &s.split_brain {
            let count = |n: Option<u64>| n.map_or("an unknown number of".into(), |n| n.to_string());
            let _ = writeln!(
                out,
                "  SPLIT BRAIN with {}: both wrote after the fork at LSN {}; this node changed {} regions since, {} {}; policy {}. Unless the policy discards one side, nothing moves until `driftless resync {} --discard-local` on the node whose changes are given up",
                sb.peer,
                sb.fork_lsn,
                count(sb.changed_regions),
                sb.peer,
                count(sb.peer_changed_regions),
                sb.policy,
                v.name
            );
        }
        if s.discarding_local {
            let _ = writeln!(
                out,
                "  discarding this copy's changes since the fork: the next primary to connect rolls them back"
            );
        }
        if let Some(u) = &s.upstream {
            let _ = writeln!(
                out,
                "  primary {} via {} from {}: {}{}",
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
                }
            );
        }
        if let Some(err) = &s.last_error {
            let _ = writeln!(out, "  last error: {err}");
        }
        if s.peers.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<5} {:<4} {:<22} {:<12} {:<12} {:<8} {:>10} {:>12} {:>9} {:>8} {:>8}",
            "peer",
            "mode",
            "via",
            "address",
            "connection",
            "disk",
            "gate",
            "acked",
            "lag-bytes",
            "lag-recs",
            "lag-s",
            "MB/s"
        );
        for p in &s.peers {
            let _ = writeln!(
                out,
                "  {:<12} {:<5} {:<4} {:<22} {:<12} {:<12} {:<8} {:>10} {:>12} {:>9} {:>8.2} {:>8.1}",
                p.name,
                p.mode,
                p.transport,
                p.address,
                p.connection,
                p.disk,
                p.sync_gate.map_or("-".to_string(), |g| g.to_string()),
                p.acked_lsn,
                p.lag_bytes,
                p.lag_records,
                p.lag_seconds,
                p.throughput_bytes_per_sec / 1e6
            );
            for line in peer_details(p) {
                let _ = writeln!(out, "  {:<12} {line}", "");
            }
        }
    }
    out
}

fn peer_details(p: &PeerStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(job) = &p.job {
        lines.push(job_line(job));
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

    use super::render;
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
        }
    }

    #[test]
    fn peers_are_aligned_with_their_states_job_and_errors() {
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
        let mut dr = peer("dr");
        dr.connection = ConnectionState::Refused;
        dr.disk = DiskState::Unknown;
        dr.sync_gate = None;
        dr.dirty_regions = 0;
        dr.last_verify = Some(VerifyReport {
            job: 1,
            regions: 256,
            mismatches: 2,
            ranges: vec![(0, 65536), (655360, 65536)],
            repaired: false,
        });
        v.peers = vec![metro, dr];
        let text = render(&NodeStatus {
            node: "alpha".into(),
            volumes: vec![NamedStatus {
                name: "vol0".into(),
                status: v,
            }],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "node alpha");
        assert!(
            lines[1].contains("role=primary")
                && lines[1].contains("disk=up-to-date")
                && lines[1].contains("sync-peer-loss=degrade"),
            "{text}"
        );
        // The state columns line up under their headers.
        let conn = lines[2].find("connection").unwrap();
        let disk = lines[2].find("disk").unwrap();
        let gate = lines[2].find("gate").unwrap();
        assert_eq!(&lines[3][conn..conn + 9], "connected", "{text}");
        assert_eq!(&lines[3][disk..disk + 7], "syncing", "{text}");
        assert_eq!(&lines[3][gate..gate + 8], "degraded", "{text}");
        assert!(lines[3].starts_with("  metro        sync  tcp "), "{text}");
        assert!(
            text.contains("resync 3: 50/200 regions (25.0%), 3.12 MiB sent, 1.00 MiB/s (limit 200.00 MiB/s), ETA 12 seconds"),
            "{text}"
        );
        assert!(text.contains("last error: fell behind"), "{text}");
        assert!(text.contains("dirty regions: 12"), "{text}");
        let dr_line = text.lines().find(|l| l.starts_with("  dr ")).unwrap();
        assert_eq!(&dr_line[conn..conn + 7], "refused", "{text}");
        assert_eq!(&dr_line[disk..disk + 7], "unknown", "{text}");
        assert!(
            text.contains("last verify: 2 of 256 regions differ (at 0+65536, 655360+65536); marked out of sync"),
            "{text}"
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
        });
        v.last_error = Some("refused: size mismatch".into());
        let text = render(&NodeStatus {
            node: "dr".into(),
            volumes: vec![NamedStatus {
                name: "vol0".into(),
                status: v,
            }],
        });
        assert!(text.contains("disk=inconsistent"), "{text}");
        assert!(
            text.contains("  primary alpha via quic from 127.0.0.1:9: disconnected"),
            "{text}"
        );
        assert!(
            text.contains("  last error: refused: size mismatch"),
            "{text}"
        );
        assert!(!text.contains("lag-bytes"), "{text}");
    }
}
