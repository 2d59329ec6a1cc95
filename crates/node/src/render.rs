//! `driftless status` as a table for people.

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
            "volume {} ({}) role={} generation={:#x} consistent={} written={} durable={} applied={} checkpoint={} sync-peer-loss={}",
            v.name,
            s.volume_uuid,
            s.role,
            s.generation,
            s.consistent,
            s.written_lsn,
            s.durable_lsn,
            s.applied_lsn,
            s.checkpoint_lsn,
            s.sync_peer_loss_policy.as_deref().unwrap_or("-")
        );
        if let Some(u) = &s.upstream {
            let _ = writeln!(
                out,
                "  primary {} via {} from {}: {}",
                u.name,
                u.transport,
                u.address,
                if u.connected {
                    "connected"
                } else {
                    "disconnected"
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
            "  {:<12} {:<5} {:<4} {:<22} {:<14} {:>10} {:>12} {:>9} {:>8} {:>11}",
            "peer",
            "mode",
            "via",
            "address",
            "state",
            "acked",
            "lag-bytes",
            "lag-recs",
            "lag-s",
            "MB/s"
        );
        for p in &s.peers {
            let _ = writeln!(
                out,
                "  {:<12} {:<5} {:<4} {:<22} {:<14} {:>10} {:>12} {:>9} {:>8.2} {:>11.1}",
                p.name,
                p.mode,
                p.transport,
                p.address,
                p.state,
                p.acked_lsn,
                p.lag_bytes,
                p.lag_records,
                p.lag_seconds,
                p.throughput_bytes_per_sec / 1e6
            );
            if let Some(err) = &p.last_error {
                let _ = writeln!(out, "  {:<12} last error: {err}", "");
            }
            if p.dirty_regions > 0 {
                let _ = writeln!(out, "  {:<12} dirty regions: {}", "", p.dirty_regions);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use replication::{PeerMode, PeerState, PeerStatus, TransportKind, VolumeRole, VolumeStatus};

    use super::render;
    use crate::control::{NamedStatus, NodeStatus};

    fn volume(role: VolumeRole) -> VolumeStatus {
        VolumeStatus {
            role,
            volume_uuid: "6f1c2a8e-7d1b-4a53-9a51-0c5e7f3b2d11".into(),
            generation: 0xabc,
            lineage: vec![(0xabc, 1)],
            written_lsn: 42,
            durable_lsn: 40,
            applied_lsn: 42,
            checkpoint_lsn: 30,
            consistent: true,
            sync_peer_loss_policy: None,
            peers: Vec::new(),
            upstream: None,
            last_error: None,
        }
    }

    #[test]
    fn peers_are_aligned_with_their_state_and_errors() {
        let mut v = volume(VolumeRole::Primary);
        v.sync_peer_loss_policy = Some("degrade".into());
        v.peers.push(PeerStatus {
            name: "metro".into(),
            mode: PeerMode::Sync,
            transport: TransportKind::Tcp,
            address: "127.0.0.1:7401".into(),
            state: PeerState::NeedsResync,
            acked_lsn: 7,
            durable_lsn: 7,
            lag_bytes: 4096,
            lag_records: 35,
            lag_seconds: 1.5,
            throughput_bytes_per_sec: 2e6,
            last_error: Some("fell behind".into()),
            dirty_regions: 12,
        });
        let text = render(&NodeStatus {
            node: "alpha".into(),
            volumes: vec![NamedStatus {
                name: "vol0".into(),
                status: v,
            }],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "node alpha");
        assert!(lines[1].contains("role=primary") && lines[1].contains("sync-peer-loss=degrade"));
        // The state column lines up under its header.
        let col = lines[2].find("state").unwrap();
        assert_eq!(&lines[3][col..col + 12], "needs-resync", "{text}");
        assert!(lines[3].starts_with("  metro        sync  tcp "), "{text}");
        assert!(text.contains("last error: fell behind"), "{text}");
        assert!(text.contains("dirty regions: 12"), "{text}");
    }

    #[test]
    fn a_secondary_shows_its_primary_and_last_error() {
        let mut v = volume(VolumeRole::Secondary);
        v.upstream = Some(replication::UpstreamStatus {
            name: "alpha".into(),
            transport: TransportKind::Quic,
            address: "127.0.0.1:9".into(),
            connected: false,
        });
        v.last_error = Some("refused: size mismatch".into());
        let text = render(&NodeStatus {
            node: "dr".into(),
            volumes: vec![NamedStatus {
                name: "vol0".into(),
                status: v,
            }],
        });
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
