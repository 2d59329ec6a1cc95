//! `[node] metrics_listen`: Prometheus (OpenMetrics) text at `/metrics`.
//!
//! Two sources. States, positions, lags and the engine's totals are read at
//! scrape time from the volumes' typed status and journal figures (a custom
//! `Collector`): nothing is kept twice, and a scrape shows exactly what
//! `driftless status --json` would. Distributions that status cannot hold
//! (fdatasync latency, group-commit batch sizes, NBD latency by command)
//! are prometheus-client histograms, fed on the data path through
//! [`Metrics::journal_observer`] and [`NbdMeter`]. States are exported as
//! one series per possible value (1 for the current one, 0 for the others),
//! so an alert can say `== 1` for the state it cares about.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nbd_shim::TargetError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use replication::{
    ConnectionState, DiskState, JobKindStatus, RefusalReason, SyncGate, VolumeRole, VolumeStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::NodeError;

/// A request is one line and a few headers; anything longer is refused.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// A scraper that does not finish its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Latencies from 10 µs to ~5 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(10e-6, 2.0, 20))
}

/// 1 to 2048 records, doubling.
fn batch_records_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// 4 KiB to 32 MiB, doubling.
fn batch_bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(4096.0, 2.0, 14))
}

/// The NBD commands a target serves: the `command` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NbdCommand {
    Read,
    Write,
    WriteZeroes,
    Trim,
    Flush,
    Cache,
    BlockStatus,
}

impl NbdCommand {
    const ALL: [NbdCommand; 7] = [
        NbdCommand::Read,
        NbdCommand::Write,
        NbdCommand::WriteZeroes,
        NbdCommand::Trim,
        NbdCommand::Flush,
        NbdCommand::Cache,
        NbdCommand::BlockStatus,
    ];

    fn name(self) -> &'static str {
        match self {
            NbdCommand::Read => "read",
            NbdCommand::Write => "write",
            NbdCommand::WriteZeroes => "write_zeroes",
            NbdCommand::Trim => "trim",
            NbdCommand::Flush => "flush",
            NbdCommand::Cache => "cache",
            NbdCommand::BlockStatus => "block_status",
        }
    }
}

/// The node's histograms and data-path counters, one series per volume (and
/// command); the status collector joins them at scrape time.
#[derive(Clone)]
pub(crate) struct Metrics {
    fdatasync_seconds: HistogramFamily,
    batch_records: HistogramFamily,
    batch_bytes: HistogramFamily,
    nbd_seconds: HistogramFamily,
    nbd_bytes: Family<Labels, Counter>,
    nbd_errors: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            fdatasync_seconds: Family::new_with_constructor(latency_histogram),
            batch_records: Family::new_with_constructor(batch_records_histogram),
            batch_bytes: Family::new_with_constructor(batch_bytes_histogram),
            nbd_seconds: Family::new_with_constructor(latency_histogram),
            nbd_bytes: Family::default(),
            nbd_errors: Family::default(),
        }
    }

    /// What the journal of `volume` reports its batches and fdatasyncs to.
    pub fn journal_observer(&self, volume: &str) -> Arc<dyn journal::Observer> {
        let l: Labels = vec![("volume", volume.to_owned())];
        Arc::new(JournalMeter {
            fdatasync_seconds: self.fdatasync_seconds.get_or_create(&l).clone(),
            batch_records: self.batch_records.get_or_create(&l).clone(),
            batch_bytes: self.batch_bytes.get_or_create(&l).clone(),
        })
    }

    /// The meter of `volume`'s NBD export: every command's series exists
    /// (at 0) from the start.
    pub fn nbd(&self, volume: &str) -> NbdMeter {
        let commands = NbdCommand::ALL.map(|c| {
            let l: Labels = vec![("volume", volume.to_owned()), ("command", c.name().into())];
            (
                self.nbd_seconds.get_or_create(&l).clone(),
                self.nbd_bytes.get_or_create(&l).clone(),
            )
        });
        NbdMeter {
            volume: volume.to_owned(),
            commands: Arc::new(commands),
            errors: self.nbd_errors.clone(),
        }
    }

    /// A registry with these metrics and the status collector over `gather`.
    fn registry(&self, gather: Gather) -> Registry {
        let mut r = Registry::default();
        r.register(
            "driftless_journal_fdatasync_seconds",
            "Journal fdatasync latency",
            self.fdatasync_seconds.clone(),
        );
        r.register(
            "driftless_journal_batch_records",
            "Records per group-commit batch (one journal write)",
            self.batch_records.clone(),
        );
        r.register(
            "driftless_journal_batch_bytes",
            "Bytes per group-commit batch (headers included)",
            self.batch_bytes.clone(),
        );
        r.register(
            "driftless_nbd_request_seconds",
            "NBD request latency by command, from the target's view (count: requests)",
            self.nbd_seconds.clone(),
        );
        r.register(
            "driftless_nbd_request_bytes",
            "Bytes read, written, zeroed or trimmed through NBD, by command",
            self.nbd_bytes.clone(),
        );
        r.register(
            "driftless_nbd_errors",
            "NBD requests answered with an error, by command and NBD error",
            self.nbd_errors.clone(),
        );
        r.register_collector(Box::new(StatusCollector { gather }));
        r
    }
}

#[derive(Debug)]
struct JournalMeter {
    fdatasync_seconds: Histogram,
    batch_records: Histogram,
    batch_bytes: Histogram,
}

impl journal::Observer for JournalMeter {
    fn batch_written(&self, records: usize, bytes: u64) {
        self.batch_records.observe(records as f64);
        self.batch_bytes.observe(bytes as f64);
    }

    fn fdatasync(&self, took: Duration) {
        self.fdatasync_seconds.observe(took.as_secs_f64());
    }
}

/// Times an export's requests by command and counts their bytes and errors.
#[derive(Clone)]
pub(crate) struct NbdMeter {
    volume: String,
    commands: Arc<[(Histogram, Counter); 7]>,
    errors: Family<Labels, Counter>,
}

impl NbdMeter {
    /// Runs `request` (a `command` over `bytes` bytes) and records it.
    pub async fn time<T>(
        &self,
        command: NbdCommand,
        bytes: u64,
        request: impl std::future::Future<Output = Result<T, TargetError>>,
    ) -> Result<T, TargetError> {
        let start = Instant::now();
        let result = request.await;
        let (seconds, done) = &self.commands[command as usize];
        seconds.observe(start.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                done.inc_by(bytes);
            }
            Err(e) => {
                self.errors
                    .get_or_create(&vec![
                        ("volume", self.volume.clone()),
                        ("command", command.name().into()),
                        ("error", e.nbd_error_name().into()),
                    ])
                    .inc();
            }
        }
        result
    }
}

/// One volume as a scrape sees it.
pub(crate) struct Sample {
    pub volume: String,
    pub status: VolumeStatus,
    pub journal: journal::JournalStats,
    /// Why the store refuses I/O (a failed fdatasync or volume write).
    pub failure: Option<String>,
    pub checkpoint_age: Duration,
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

/// One metric family read from status: its series are added, then encoded
/// together.
struct StatusFamily {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Labels, f64)>,
}

impl StatusFamily {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        StatusFamily {
            name,
            help,
            counter: false,
            series: Vec::new(),
        }
    }

    /// A counter: `name` without `_total`, which the encoder appends.
    fn counter(name: &'static str, help: &'static str) -> Self {
        StatusFamily {
            counter: true,
            ..Self::gauge(name, help)
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
        let kind = if self.counter {
            ConstCounter::<u64>::TYPE
        } else {
            ConstGauge::<f64>::TYPE
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (labels, value) in &self.series {
            let e = family.encode_family(labels)?;
            if self.counter {
                ConstCounter::new(*value as u64).encode(e)?;
            } else {
                ConstGauge::new(*value).encode(e)?;
            }
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

const JOB_KINDS: [JobKindStatus; 2] = [JobKindStatus::Resync, JobKindStatus::Verify];

/// The families of one scrape, from the samples.
fn families(samples: &[Sample]) -> Vec<StatusFamily> {
    use StatusFamily as F;
    let mut role = F::gauge(
        "driftless_volume_role",
        "The role this node holds for the volume (1 for the current one)",
    );
    let mut disk = F::gauge(
        "driftless_volume_disk_state",
        "What this node's copy holds, as far as proved (1 for the current state)",
    );
    let mut generation = F::gauge(
        "driftless_volume_generation_info",
        "The volume's current generation (label), always 1",
    );
    let mut lsn = F::gauge(
        "driftless_volume_lsn",
        "Journal positions: written, durable, applied, checkpoint",
    );
    let mut fenced = F::gauge(
        "driftless_volume_fenced",
        "1 while a primary refuses writes until its peers confirm its history",
    );
    let mut split = F::gauge(
        "driftless_volume_split_brain",
        "1 while this node has found a split brain with another primary",
    );
    let mut failed = F::gauge(
        "driftless_volume_failed",
        "1 once a journal fdatasync or a volume write or fsync failed: all I/O is refused until a restart",
    );
    let mut used = F::gauge(
        "driftless_journal_used_bytes",
        "Journal segments still holding needed records",
    );
    let mut capacity = F::gauge(
        "driftless_journal_capacity_bytes",
        "The journal's configured capacity",
    );
    let mut checkpoint_age = F::gauge(
        "driftless_journal_checkpoint_age_seconds",
        "Seconds since a checkpoint last covered every applied record",
    );
    let mut journal_bytes = F::counter(
        "driftless_journal_written_bytes",
        "Bytes written to the journal (headers included)",
    );
    let mut folds = F::counter(
        "driftless_journal_folds",
        "Times a peer held journal space past the cap and was folded into its dirty bitmap",
    );
    let mut upstream = F::gauge(
        "driftless_upstream_connected",
        "Secondary: 1 while a primary's session runs",
    );
    let mut received = F::counter(
        "driftless_upstream_received_bytes",
        "Secondary: record and resync bytes received from primaries",
    );
    let mut lag_bytes = F::gauge(
        "driftless_peer_lag_bytes",
        "Journal bytes the peer has not acknowledged plus the bytes of regions owed to it",
    );
    let mut lag_records = F::gauge(
        "driftless_peer_lag_records",
        "Records written here that the peer has not acknowledged",
    );
    let mut lag_seconds = F::gauge(
        "driftless_peer_lag_seconds",
        "Age of the oldest write the peer does not hold",
    );
    let mut rpo_target = F::gauge(
        "driftless_peer_rpo_target_seconds",
        "The peer's configured rpo_target",
    );
    let mut rpo_breached = F::gauge(
        "driftless_peer_rpo_breached",
        "1 while the peer's lag exceeds its rpo_target",
    );
    let mut conn = F::gauge(
        "driftless_peer_connection_state",
        "Whether a session with the peer runs (1 for the current state)",
    );
    let mut pdisk = F::gauge(
        "driftless_peer_disk_state",
        "What the peer's copy holds, as far as proved (1 for the current state)",
    );
    let mut gate = F::gauge(
        "driftless_peer_sync_gate",
        "Sync peers: whether writes wait for it (1 for the current state)",
    );
    let mut acked = F::gauge("driftless_peer_acked_lsn", "Highest LSN the peer journaled");
    let mut throughput = F::gauge(
        "driftless_peer_throughput_bytes_per_second",
        "Record bytes the peer acknowledged per second (5 s window)",
    );
    let mut dirty = F::gauge(
        "driftless_peer_dirty_regions",
        "Regions owed to the peer (to resync)",
    );
    let mut job_running = F::gauge(
        "driftless_peer_job_running",
        "A resync or verify of the peer runs (1 for the running kind, else 0)",
    );
    let mut job_total = F::gauge(
        "driftless_peer_job_regions",
        "A running resync or verify: regions to walk (0 when none runs)",
    );
    let mut job_done = F::gauge(
        "driftless_peer_job_regions_done",
        "A running resync or verify: regions walked",
    );
    let mut job_bytes = F::gauge(
        "driftless_peer_job_bytes_sent",
        "A running resync: region bytes sent",
    );
    let mut shipped = F::counter(
        "driftless_peer_shipped_bytes",
        "Record bytes sent to the peer",
    );
    let mut resynced = F::counter(
        "driftless_peer_resync_bytes",
        "Region bytes sent to the peer by resyncs",
    );
    let mut reconnects = F::counter(
        "driftless_peer_reconnects",
        "Sessions with the peer established after the first one",
    );
    let mut refusals = F::counter(
        "driftless_peer_refusals",
        "Sessions with the peer refused (by either side), by reason",
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
        failed.add(v.clone(), f64::from(u8::from(s.failure.is_some())));
        used.add(v.clone(), s.journal.used_bytes as f64);
        capacity.add(v.clone(), s.journal.capacity_bytes as f64);
        checkpoint_age.add(v.clone(), s.checkpoint_age.as_secs_f64());
        journal_bytes.add(v.clone(), s.journal.bytes_written as f64);
        folds.add(v.clone(), s.journal.folds as f64);
        if let Some(u) = &st.upstream {
            let mut l = v.clone();
            l.push(("primary", u.name.clone()));
            upstream.add(l, f64::from(u8::from(u.connected)));
            received.add(v.clone(), u.received_bytes_total as f64);
        }
        for p in &st.peers {
            let mut l = v.clone();
            l.push(("peer", p.name.clone()));
            l.push(("mode", p.mode.to_string()));
            l.push(("transport", p.transport.to_string()));
            lag_bytes.add(l.clone(), p.lag_bytes as f64);
            lag_records.add(l.clone(), p.lag_records as f64);
            lag_seconds.add(l.clone(), p.lag_seconds);
            if let Some(target) = p.rpo_target_seconds {
                rpo_target.add(l.clone(), target);
                rpo_breached.add(l.clone(), f64::from(u8::from(p.rpo_breached)));
            }
            conn.states(&l, &CONNECTION_STATES, p.connection);
            pdisk.states(&l, &DISK_STATES, p.disk);
            if let Some(current) = p.sync_gate {
                gate.states(&l, &SYNC_GATES, current);
            }
            acked.add(l.clone(), p.acked_lsn as f64);
            throughput.add(l.clone(), p.throughput_bytes_per_sec);
            dirty.add(l.clone(), p.dirty_regions as f64);
            for kind in JOB_KINDS {
                let mut k = l.clone();
                k.push(("kind", kind.to_string()));
                let running = p.job.as_ref().is_some_and(|j| j.kind == kind);
                job_running.add(k, f64::from(u8::from(running)));
            }
            let (total, done, sent) = p.job.as_ref().map_or((0, 0, 0), |j| {
                (j.regions_total, j.regions_done, j.bytes_sent)
            });
            job_total.add(l.clone(), total as f64);
            job_done.add(l.clone(), done as f64);
            job_bytes.add(l.clone(), sent as f64);
            shipped.add(l.clone(), p.shipped_bytes_total as f64);
            resynced.add(l.clone(), p.resync_bytes_total as f64);
            reconnects.add(l.clone(), p.reconnects as f64);
            // Every reason, at 0 until it happens: rate() needs the series.
            for reason in RefusalReason::ALL {
                let mut r = l.clone();
                r.push(("reason", reason.to_string()));
                let n = p.refusals.get(&reason).copied().unwrap_or(0);
                refusals.add(r, n as f64);
            }
        }
    }
    vec![
        role,
        disk,
        generation,
        lsn,
        fenced,
        split,
        failed,
        used,
        capacity,
        checkpoint_age,
        journal_bytes,
        folds,
        upstream,
        received,
        lag_bytes,
        lag_records,
        lag_seconds,
        rpo_target,
        rpo_breached,
        conn,
        pdisk,
        gate,
        acked,
        throughput,
        dirty,
        job_running,
        job_total,
        job_done,
        job_bytes,
        shipped,
        resynced,
        reconnects,
        refusals,
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
    metrics: &Metrics,
    gather: Gather,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::io(format!("binding [node] metrics_listen {addr}"), e))?;
    let registry = Arc::new(metrics.registry(gather));
    println!(
        "metrics at http://{}/metrics",
        listener.local_addr().map_or(addr, |a| a)
    );
    Ok(tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
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
