//! `driftless events`: the state changes of a node's volumes as a stream of
//! lines, for scripts and HA managers (like `drbdsetup events2`). First one
//! `exists` line per current state, then one `change` line per change:
//! connection, data state, sync gate, role, generation, fence, split brain,
//! a resync or verify starting, progressing (at most once per
//! [`PROGRESS_INTERVAL`]) and ending, an RPO breach and its end.
//!
//! [`EventDiffer`] is the sans-IO core: it compares each status snapshot
//! with the last one. The control socket feeds it a snapshot every
//! [`POLL_INTERVAL`], so a state that lasts less than that may be missed;
//! the last state always shows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use replication::{
    ConnectionState, DiskState, JobKindStatus, PeerStatus, SyncGate, VolumeRole, VolumeStatus,
};
use serde::{Deserialize, Serialize};

/// How often the daemon compares its state for an events stream.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A running job's progress is reported at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// One state, or one change of it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "what", rename_all = "kebab-case")]
pub enum Change {
    Role {
        volume: String,
        role: VolumeRole,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// This node's own copy.
    Disk { volume: String, disk: DiskState },
    Generation {
        volume: String,
        generation: String,
        start_lsn: u64,
    },
    /// A primary refusing writes until its peers confirm its history.
    Fenced {
        volume: String,
        fenced: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    SplitBrain {
        volume: String,
        /// `false`: the split brain is resolved.
        split_brain: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fork_lsn: Option<u64>,
    },
    /// A secondary's primary.
    Upstream {
        volume: String,
        primary: String,
        connected: bool,
        resyncing: bool,
    },
    PeerConnection {
        volume: String,
        peer: String,
        connection: ConnectionState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    PeerDisk {
        volume: String,
        peer: String,
        disk: DiskState,
    },
    SyncGate {
        volume: String,
        peer: String,
        gate: SyncGate,
    },
    JobStarted {
        volume: String,
        peer: String,
        kind: JobKindStatus,
        job: u64,
        full: bool,
        regions: u64,
    },
    JobProgress {
        volume: String,
        peer: String,
        kind: JobKindStatus,
        job: u64,
        regions_done: u64,
        regions: u64,
        bytes_sent: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_seconds: Option<f64>,
    },
    JobEnded {
        volume: String,
        peer: String,
        kind: JobKindStatus,
        job: u64,
        /// It ran to its end (its report is the peer's last resync or
        /// verify); `false`: interrupted (the session ended).
        completed: bool,
    },
    Rpo {
        volume: String,
        peer: String,
        breached: bool,
        lag_seconds: f64,
        target_seconds: f64,
    },
    /// The daemon is stopping: the stream ends after this line.
    NodeStopping { node: String },
}

/// `exists` (the state when the stream began) or `change`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Exists,
    Change,
}

/// One line of the stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Event {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(flatten)]
    pub change: Change,
}

impl Event {
    pub fn new(kind: EventType, change: Change, at: SystemTime) -> Self {
        Event {
            time: humantime::format_rfc3339_millis(at).to_string(),
            kind,
            change,
        }
    }

    /// The line for people: `TIME TYPE WHAT key:value ...` in the
    /// change's field order, strings with spaces quoted.
    pub fn human(&self) -> String {
        let value = serde_json::to_value(&self.change).expect("a change always serializes");
        let serde_json::Value::Object(fields) = value else {
            unreachable!("a change serializes as a map")
        };
        let kind = match self.kind {
            EventType::Exists => "exists",
            EventType::Change => "change",
        };
        let mut line = format!("{} {kind}", self.time);
        for (k, v) in &fields {
            let v = match v {
                serde_json::Value::String(s) if !s.contains([' ', '"']) && !s.is_empty() => {
                    s.clone()
                }
                other => other.to_string(),
            };
            if k == "what" {
                line += &format!(" {v}");
            } else {
                line += &format!(" {k}:{v}");
            }
        }
        line
    }
}

/// What the differ remembers of a peer beyond its status.
#[derive(Default)]
struct PeerMemory {
    progress_at: Option<Instant>,
}

/// Turns status snapshots into events.
#[derive(Default)]
pub struct EventDiffer {
    /// The last snapshot: each volume's name and status.
    last: Option<Vec<(String, VolumeStatus)>>,
    peers: BTreeMap<(String, String), PeerMemory>,
}

impl EventDiffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events between the last snapshot and `status`: the first call
    /// gives every current state (`exists`).
    pub fn next(
        &mut self,
        volumes: Vec<(String, VolumeStatus)>,
        now: Instant,
    ) -> Vec<(EventType, Change)> {
        let mut out = Vec::new();
        let kind = if self.last.is_some() {
            EventType::Change
        } else {
            EventType::Exists
        };
        for (name, status) in &volumes {
            let before = self
                .last
                .as_ref()
                .and_then(|l| l.iter().find(|(n, _)| n == name))
                .map(|(_, s)| s);
            let mut changes = volume_changes(name, before, status);
            for p in &status.peers {
                let old = before.and_then(|b| b.peer(&p.name));
                let memory = self
                    .peers
                    .entry((name.clone(), p.name.clone()))
                    .or_default();
                changes.extend(peer_changes(name, old, p, memory, now));
            }
            out.extend(changes.into_iter().map(|c| (kind, c)));
        }
        self.last = Some(volumes);
        out
    }
}

fn volume_changes(name: &str, before: Option<&VolumeStatus>, now: &VolumeStatus) -> Vec<Change> {
    let volume = || name.to_owned();
    let mut out = Vec::new();
    if before.is_none_or(|b| b.role != now.role) {
        out.push(Change::Role {
            volume: volume(),
            role: now.role,
            reason: now.role_reason.clone(),
        });
    }
    if before.is_none_or(|b| b.disk != now.disk) {
        out.push(Change::Disk {
            volume: volume(),
            disk: now.disk,
        });
    }
    if before.is_none_or(|b| b.generation != now.generation) {
        out.push(Change::Generation {
            volume: volume(),
            generation: format!("{:#x}", now.generation),
            start_lsn: now.lineage.last().map_or(0, |g| g.start_lsn),
        });
    }
    let fenced_before = before.map(|b| b.fenced.is_some());
    if fenced_before != Some(now.fenced.is_some()) && (before.is_some() || now.fenced.is_some()) {
        out.push(Change::Fenced {
            volume: volume(),
            fenced: now.fenced.is_some(),
            reason: now.fenced.clone(),
        });
    }
    let split_before = before.and_then(|b| b.split_brain.as_ref());
    if split_before != now.split_brain.as_ref() && (before.is_some() || now.split_brain.is_some()) {
        out.push(Change::SplitBrain {
            volume: volume(),
            split_brain: now.split_brain.is_some(),
            peer: now.split_brain.as_ref().map(|s| s.peer.clone()),
            fork_lsn: now.split_brain.as_ref().map(|s| s.fork_lsn),
        });
    }
    if let Some(u) = &now.upstream {
        let old = before.and_then(|b| b.upstream.as_ref());
        if old.is_none_or(|o| {
            (&o.name, o.connected, o.resyncing) != (&u.name, u.connected, u.resyncing)
        }) {
            out.push(Change::Upstream {
                volume: volume(),
                primary: u.name.clone(),
                connected: u.connected,
                resyncing: u.resyncing,
            });
        }
    }
    out
}

fn peer_changes(
    volume: &str,
    before: Option<&PeerStatus>,
    now: &PeerStatus,
    memory: &mut PeerMemory,
    at: Instant,
) -> Vec<Change> {
    let ids = || (volume.to_owned(), now.name.clone());
    let mut out = Vec::new();
    if before.is_none_or(|b| b.connection != now.connection) {
        let (volume, peer) = ids();
        out.push(Change::PeerConnection {
            volume,
            peer,
            connection: now.connection,
            error: now.last_error.clone(),
        });
    }
    if before.is_none_or(|b| b.disk != now.disk) {
        let (volume, peer) = ids();
        out.push(Change::PeerDisk {
            volume,
            peer,
            disk: now.disk,
        });
    }
    if let Some(gate) = now.sync_gate {
        if before.is_none_or(|b| b.sync_gate != now.sync_gate) {
            let (volume, peer) = ids();
            out.push(Change::SyncGate { volume, peer, gate });
        }
    }
    let old_job = before.and_then(|b| b.job.as_ref());
    if let Some(j) = old_job.filter(|o| now.job.as_ref().is_none_or(|n| n.id != o.id)) {
        let completed = match j.kind {
            JobKindStatus::Resync => now.last_resync.as_ref().is_some_and(|r| r.job == j.id),
            JobKindStatus::Verify => now
                .last_verify
                .as_ref()
                .is_some_and(|r| before.and_then(|b| b.last_verify.as_ref()) != Some(r)),
        };
        let (volume, peer) = ids();
        out.push(Change::JobEnded {
            volume,
            peer,
            kind: j.kind,
            job: j.id,
            completed,
        });
        memory.progress_at = None;
    }
    if let Some(j) = &now.job {
        if old_job.is_none_or(|o| o.id != j.id) {
            let (volume, peer) = ids();
            out.push(Change::JobStarted {
                volume,
                peer,
                kind: j.kind,
                job: j.id,
                full: j.full,
                regions: j.regions_total,
            });
            memory.progress_at = Some(at);
        } else if old_job.is_some_and(|o| o.regions_done != j.regions_done)
            && memory
                .progress_at
                .is_none_or(|t| at.duration_since(t) >= PROGRESS_INTERVAL)
        {
            let (volume, peer) = ids();
            out.push(Change::JobProgress {
                volume,
                peer,
                kind: j.kind,
                job: j.id,
                regions_done: j.regions_done,
                regions: j.regions_total,
                bytes_sent: j.bytes_sent,
                eta_seconds: j.eta_seconds,
            });
            memory.progress_at = Some(at);
        }
    }
    if let Some(target) = now.rpo_target_seconds {
        if before.is_none_or(|b| b.rpo_breached != now.rpo_breached) {
            let (volume, peer) = ids();
            out.push(Change::Rpo {
                volume,
                peer,
                breached: now.rpo_breached,
                lag_seconds: now.lag_seconds,
                target_seconds: target,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use replication::{
        ConnectionState, DiskState, GenerationStatus, JobKindStatus, JobStatus, PeerMode,
        PeerStatus, ResyncReport, SyncGate, TransportKind, VolumeRole, VolumeStatus,
    };

    use super::*;

    fn volume() -> VolumeStatus {
        VolumeStatus {
            role: VolumeRole::Primary,
            volume_uuid: "u".into(),
            generation: 0xabc,
            lineage: vec![GenerationStatus {
                id: 0xabc,
                start_lsn: 1,
                unknown_before: false,
            }],
            written_lsn: 10,
            durable_lsn: 10,
            applied_lsn: 10,
            checkpoint_lsn: 5,
            disk: DiskState::UpToDate,
            sync_peer_loss_policy: None,
            peers: vec![PeerStatus {
                name: "dr".into(),
                mode: PeerMode::Async,
                transport: TransportKind::Quic,
                address: "127.0.0.1:1".into(),
                connection: ConnectionState::Connected,
                disk: DiskState::UpToDate,
                sync_gate: None,
                job: None,
                last_resync: None,
                last_verify: None,
                acked_lsn: 10,
                durable_lsn: 10,
                lag_bytes: 0,
                lag_records: 0,
                lag_seconds: 0.0,
                throughput_bytes_per_sec: 0.0,
                last_error: None,
                dirty_regions: 0,
                rpo_target_seconds: Some(30.0),
                rpo_breached: false,
                shipped_bytes_total: 0,
                resync_bytes_total: 0,
                reconnects: 0,
                refusals: Default::default(),
            }],
            upstream: None,
            last_error: None,
            fenced: None,
            split_brain: None,
            configured_role: None,
            role_reason: Some("configured".into()),
            discarding_local: false,
        }
    }

    fn job(id: u64, done: u64) -> JobStatus {
        JobStatus {
            kind: JobKindStatus::Resync,
            id,
            full: false,
            stale_reads: 0,
            compare: false,
            regions_total: 100,
            regions_done: done,
            bytes_sent: done << 16,
            mismatches: 0,
            rate_bytes_per_sec: 0.0,
            rate_limit_bytes_per_sec: 0,
            eta_seconds: None,
        }
    }

    fn snap(v: &VolumeStatus) -> Vec<(String, VolumeStatus)> {
        vec![("vol0".into(), v.clone())]
    }

    fn whats(events: &[(EventType, Change)]) -> Vec<String> {
        events
            .iter()
            .map(|(_, c)| {
                serde_json::to_value(c).unwrap()["what"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_first_snapshot_is_every_state_then_only_changes() {
        let mut d = EventDiffer::new();
        let t = Instant::now();
        let mut v = volume();
        let first = d.next(snap(&v), t);
        assert!(first.iter().all(|(k, _)| *k == EventType::Exists));
        assert_eq!(
            whats(&first),
            [
                "role",
                "disk",
                "generation",
                "peer-connection",
                "peer-disk",
                "rpo"
            ]
        );
        assert!(d.next(snap(&v), t).is_empty(), "nothing changed");

        // The link drops: connection and data state change, the lag grows
        // past the target.
        v.peers[0].connection = ConnectionState::Disconnected;
        v.peers[0].disk = DiskState::Outdated;
        v.peers[0].last_error = Some("connection closed by peer".into());
        v.peers[0].lag_seconds = 31.5;
        v.peers[0].rpo_breached = true;
        let ev = d.next(snap(&v), t);
        assert!(ev.iter().all(|(k, _)| *k == EventType::Change));
        assert_eq!(
            ev.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
            vec![
                Change::PeerConnection {
                    volume: "vol0".into(),
                    peer: "dr".into(),
                    connection: ConnectionState::Disconnected,
                    error: Some("connection closed by peer".into()),
                },
                Change::PeerDisk {
                    volume: "vol0".into(),
                    peer: "dr".into(),
                    disk: DiskState::Outdated,
                },
                Change::Rpo {
                    volume: "vol0".into(),
                    peer: "dr".into(),
                    breached: true,
                    lag_seconds: 31.5,
                    target_seconds: 30.0,
                },
            ]
        );
    }

    #[test]
    fn a_job_starts_progresses_at_most_once_a_second_and_ends() {
        let mut d = EventDiffer::new();
        let t = Instant::now();
        let mut v = volume();
        d.next(snap(&v), t);
        v.peers[0].job = Some(job(4, 0));
        v.peers[0].disk = DiskState::Syncing;
        assert_eq!(whats(&d.next(snap(&v), t)), ["peer-disk", "job-started"]);
        v.peers[0].job = Some(job(4, 10));
        assert!(
            d.next(snap(&v), t + Duration::from_millis(500)).is_empty(),
            "progress within the interval is held back"
        );
        v.peers[0].job = Some(job(4, 20));
        let ev = d.next(snap(&v), t + Duration::from_millis(1100));
        assert_eq!(whats(&ev), ["job-progress"]);
        assert!(matches!(
            ev[0].1,
            Change::JobProgress {
                regions_done: 20,
                regions: 100,
                ..
            }
        ));
        // It ends with its report: completed.
        v.peers[0].job = None;
        v.peers[0].disk = DiskState::UpToDate;
        v.peers[0].last_resync = Some(ResyncReport {
            job: 4,
            full: false,
            compare: false,
            regions: 100,
            bytes_sent: 100 << 16,
            seconds: 1.0,
        });
        let ev = d.next(snap(&v), t + Duration::from_secs(2));
        assert_eq!(whats(&ev), ["peer-disk", "job-ended"]);
        assert!(matches!(
            ev[1].1,
            Change::JobEnded {
                job: 4,
                completed: true,
                ..
            }
        ));
        // Another one is cut off by the link: interrupted.
        v.peers[0].job = Some(job(5, 3));
        d.next(snap(&v), t + Duration::from_secs(3));
        v.peers[0].job = None;
        let ev = d.next(snap(&v), t + Duration::from_secs(4));
        assert!(matches!(
            ev[0].1,
            Change::JobEnded {
                job: 5,
                completed: false,
                ..
            }
        ));
    }

    #[test]
    fn roles_generations_fences_split_brains_and_gates() {
        let mut d = EventDiffer::new();
        let t = Instant::now();
        let mut v = volume();
        v.peers[0].mode = PeerMode::Sync;
        v.peers[0].sync_gate = Some(SyncGate::InSync);
        assert!(whats(&d.next(snap(&v), t)).contains(&"sync-gate".to_string()));
        v.peers[0].sync_gate = Some(SyncGate::Waiting);
        v.fenced = Some("unclean stop".into());
        v.generation = 0xdef;
        v.lineage.push(GenerationStatus {
            id: 0xdef,
            start_lsn: 11,
            unknown_before: false,
        });
        let ev = d.next(snap(&v), t);
        assert_eq!(whats(&ev), ["generation", "fenced", "sync-gate"]);
        assert!(
            matches!(&ev[0].1, Change::Generation { generation, start_lsn: 11, .. } if generation == "0xdef")
        );
        v.fenced = None;
        v.role = VolumeRole::Secondary;
        v.split_brain = Some(replication::SplitBrainStatus {
            peer: "metro".into(),
            fork_lsn: 9,
            changed_regions: Some(1),
            peer_changed_regions: None,
            policy: "disconnect".into(),
        });
        let ev = d.next(snap(&v), t);
        assert_eq!(whats(&ev), ["role", "fenced", "split-brain"]);
        assert!(matches!(&ev[1].1, Change::Fenced { fenced: false, .. }));
    }

    #[test]
    fn lines_for_people_and_for_scripts() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
        let e = Event::new(
            EventType::Change,
            Change::PeerConnection {
                volume: "vol0".into(),
                peer: "dr".into(),
                connection: ConnectionState::Refused,
                error: Some("by peer (SizeMismatch): 1 GiB here".into()),
            },
            at,
        );
        assert_eq!(
            e.human(),
            "2025-12-06T05:46:40.123Z change peer-connection volume:vol0 peer:dr connection:refused error:\"by peer (SizeMismatch): 1 GiB here\""
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "change");
        assert_eq!(json["what"], "peer-connection");
        assert_eq!(json["connection"], "refused");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
