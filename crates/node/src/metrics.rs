//! `[node] metrics_listen`: Prometheus (OpenMetrics) text at `/metrics`.
//!
//! Every gauge is read at scrape time from the volumes' typed status and
//! journal figures (a custom `Collector`): nothing is kept twice, and a
//! scrape shows exactly what `driftless status --json` would. States are
//! exported as one series per possible value (1 for the current one, 0 for
//! the others), so an alert can say `== 1` for the state it cares about.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use replication::{ConnectionState, DiskState, SyncGate, VolumeRole, VolumeStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::NodeError;

/// A request is one line and a few headers; anything longer is refused.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// A scraper that does not finish its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One volume as a scrape sees it.
pub(crate) struct Sample {
    pub volume: String,
    pub status: VolumeStatus,
    pub journal: journal::JournalStats,
}

/// Gathers the samples (the daemon's volumes) at scrape time.
pub(crate) type Gather = Arc<dyn Fn() -> Vec<Sample> + Send + Sync>;

struct StatusCollector {
    gather: Gather,
}

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its series are added, then encoded together.
struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            series: Vec::new(),
        }
    }

    fn add(&mut self, labels: Labels, value: f64) {
        self.series.push((labels, value));
    }

    /// One series per state, 1 for `current`.
    fn states<S: PartialEq + std::fmt::Display>(&mut self, labels: &Labels, all: &[S], current: S) {
        for s in all {
            let mut l = labels.clone();
            l.push(("state", s.to_string()));
            self.add(l, f64::from(u8::from(*s == current)));
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            self.name,
            self.help,
            None,
            ConstGauge::new(0.0).metric_type(),
        )?;
        for (labels, value) in &self.series {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

const CONNECTION_STATES: [ConnectionState; 4] = [
    ConnectionState::Connecting,
    ConnectionState::Connected,
    ConnectionState::Disconnected,
    ConnectionState::Refused,
];
const DISK_STATES: [DiskState; 6] = [
    DiskState::UpToDate,
    DiskState::Syncing,
    DiskState::Inconsistent,
    DiskState::Outdated,
    DiskState::SplitBrain,
    DiskState::Unknown,
];
const SYNC_GATES: [SyncGate; 3] = [SyncGate::InSync, SyncGate::Waiting, SyncGate::Degraded];
const ROLES: [VolumeRole; 2] = [VolumeRole::Primary, VolumeRole::Secondary];

/// The families of one scrape, from the samples.
fn families(samples: &[Sample]) -> Vec<Family> {
    let mut role = Family::new(
        "driftless_volume_role",
        "The role this node holds for the volume (1 for the current one).",
    );
    let mut disk = Family::new(
        "driftless_volume_disk_state",
        "What this node's copy holds, as far as proved (1 for the current state).",
    );
    let mut generation = Family::new(
        "driftless_volume_generation_info",
        "The volume's current generation (label), always 1.",
    );
    let mut lsn = Family::new(
        "driftless_volume_lsn",
        "Journal positions: written, durable, applied, checkpoint.",
    );
    let mut fenced = Family::new(
        "driftless_volume_fenced",
        "1 while a primary refuses writes until its peers confirm its history.",
    );
    let mut split = Family::new(
        "driftless_volume_split_brain",
        "1 while this node has found a split brain with another primary.",
    );
    let mut used = Family::new(
        "driftless_journal_used_bytes",
        "Journal segments still holding needed records.",
    );
    let mut capacity = Family::new(
        "driftless_journal_capacity_bytes",
        "The journal's configured capacity.",
    );
    let mut upstream = Family::new(
        "driftless_upstream_connected",
        "Secondary: 1 while a primary's session runs.",
    );
    let mut lag_bytes = Family::new(
        "driftless_peer_lag_bytes",
        "Journal bytes the peer has not acknowledged plus the bytes of regions owed to it.",
    );
    let mut lag_records = Family::new(
        "driftless_peer_lag_records",
        "Records written here that the peer has not acknowledged.",
    );
    let mut lag_seconds = Family::new(
        "driftless_peer_lag_seconds",
        "Age of the oldest write the peer does not hold.",
    );
    let mut conn = Family::new(
        "driftless_peer_connection_state",
        "Whether a session with the peer runs (1 for the current state).",
    );
    let mut pdisk = Family::new(
        "driftless_peer_disk_state",
        "What the peer's copy holds, as far as proved (1 for the current state).",
    );
    let mut gate = Family::new(
        "driftless_peer_sync_gate",
        "Sync peers: whether writes wait for it (1 for the current state).",
    );
    let mut acked = Family::new(
        "driftless_peer_acked_lsn",
        "Highest LSN the peer journaled.",
    );
    let mut throughput = Family::new(
        "driftless_peer_throughput_bytes_per_second",
        "Record bytes the peer acknowledged per second (5 s window).",
    );
    let mut dirty = Family::new(
        "driftless_peer_dirty_regions",
        "Regions owed to the peer (to resync).",
    );
    let mut job_total = Family::new(
        "driftless_peer_job_regions",
        "A running resync or verify: regions to walk (0 when none runs).",
    );
    let mut job_done = Family::new(
        "driftless_peer_job_regions_done",
        "A running resync or verify: regions walked.",
    );
    let mut job_bytes = Family::new(
        "driftless_peer_job_bytes_sent",
        "A running resync: region bytes sent.",
    );
    for s in samples {
        let st = &s.status;
        let v: Labels = vec![("volume", s.volume.clone())];
        role.states(&v, &ROLES, st.role);
        disk.states(&v, &DISK_STATES, st.disk);
        let mut g = v.clone();
        g.push(("generation", format!("{:#x}", st.generation)));
        generation.add(g, 1.0);
        for (kind, at) in [
            ("written", st.written_lsn),
            ("durable", st.durable_lsn),
            ("applied", st.applied_lsn),
            ("checkpoint", st.checkpoint_lsn),
        ] {
            let mut l = v.clone();
            l.push(("kind", kind.into()));
            lsn.add(l, at as f64);
        }
        fenced.add(v.clone(), f64::from(u8::from(st.fenced.is_some())));
        split.add(v.clone(), f64::from(u8::from(st.split_brain.is_some())));
        used.add(v.clone(), s.journal.used_bytes as f64);
        capacity.add(v.clone(), s.journal.capacity_bytes as f64);
        if let Some(u) = &st.upstream {
            let mut l = v.clone();
            l.push(("primary", u.name.clone()));
            upstream.add(l, f64::from(u8::from(u.connected)));
        }
        for p in &st.peers {
            let mut l = v.clone();
            l.push(("peer", p.name.clone()));
            l.push(("mode", p.mode.to_string()));
            l.push(("transport", p.transport.to_string()));
            lag_bytes.add(l.clone(), p.lag_bytes as f64);
            lag_records.add(l.clone(), p.lag_records as f64);
            lag_seconds.add(l.clone(), p.lag_seconds);
            conn.states(&l, &CONNECTION_STATES, p.connection);
            pdisk.states(&l, &DISK_STATES, p.disk);
            if let Some(current) = p.sync_gate {
                gate.states(&l, &SYNC_GATES, current);
            }
            acked.add(l.clone(), p.acked_lsn as f64);
            throughput.add(l.clone(), p.throughput_bytes_per_sec);
            dirty.add(l.clone(), p.dirty_regions as f64);
            let (total, done, sent) = p.job.as_ref().map_or((0, 0, 0), |j| {
                (j.regions_total, j.regions_done, j.bytes_sent)
            });
            job_total.add(l.clone(), total as f64);
            job_done.add(l.clone(), done as f64);
            job_bytes.add(l, sent as f64);
        }
    }
    vec![
        role,
        disk,
        generation,
        lsn,
        fenced,
        split,
        used,
        capacity,
        upstream,
        lag_bytes,
        lag_records,
        lag_seconds,
        conn,
        pdisk,
        gate,
        acked,
        throughput,
        dirty,
        job_total,
        job_done,
        job_bytes,
    ]
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in families(&(self.gather)()) {
            // A family with no series (no peers here) is left out.
            if !family.series.is_empty() {
                family.encode(&mut encoder)?;
            }
        }
        Ok(())
    }
}

/// Binds `addr` and serves `/metrics` until the task is dropped.
pub(crate) async fn serve(
    addr: std::net::SocketAddr,
    gather: Gather,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::io(format!("binding [node] metrics_listen {addr}"), e))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusCollector { gather }));
    let registry = Arc::new(registry);
    println!(
        "metrics at http://{}/metrics",
        listener.local_addr().map_or(addr, |a| a)
    );
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &registry).await {
                    tracing::debug!(%from, error = %e, "metrics request failed");
                }
            });
        }
    }))
}

/// One HTTP/1.x request: `GET /metrics` gets the text, anything else 404.
async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if buf.len() >= MAX_REQUEST_BYTES {
                return Err(std::io::Error::other("request too long"));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the request ended"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split(|b| *b == b'?').next().unwrap_or_default());
    let (status, kind, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
