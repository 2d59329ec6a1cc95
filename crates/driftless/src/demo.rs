//! `driftless demo`: a primary ("alpha") with a sync metro peer over TCP+TLS
//! and an async DR peer over QUIC (through an in-process fault proxy), all
//! on loopback. It writes through NBD, cuts the DR link for a few seconds,
//! lets it catch up, stops the nodes and checks the three copies are
//! byte-identical by BLAKE3. Every wait is bounded and names what did not
//! happen.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nbd_shim::client::{Client, CMD_FLUSH, CMD_WRITE};
use rand::{Rng, RngCore};
use replication::{PeerState, PeerStatus};

use crate::config::NodeConfig;
use crate::control::{self, NodeStatus, Request};
use crate::proxy::{Protocol, Proxy, ProxyHandle};
use crate::units::parse_bytes;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long the write workload runs (the DR link is cut in the middle).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(4..=600))]
    pub seconds: u64,
    /// Volume size on each node ("64MiB", "1GiB").
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB")]
    pub size: u64,
    /// Keep the work directory (configs, certificates, volumes, logs).
    #[arg(long)]
    pub keep: bool,
}

const VOLUME_MIN_BYTES: u64 = 4 << 20;
/// Three copies plus journals land in the temp directory.
const VOLUME_MAX_BYTES: u64 = 4 << 30;
/// Target write rate: enough to show throughput and lag, modest enough for
/// any laptop and CI runner.
const WORKLOAD_BYTES_PER_SEC: u64 = 4 << 20;
const WRITE_MIN_BYTES: u64 = 4 << 10;
const WRITE_MAX_BYTES: u64 = 64 << 10;
const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// How long the DR link stays cut (shortened for short runs).
const CUT_DURATION: Duration = Duration::from_secs(4);

/// Bounds on every wait.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the planned duration, before a stuck workload is an error.
const WORKLOAD_GRACE: Duration = Duration::from_secs(20);
/// A primary drains its peers (at most drain + peer timeout) then checkpoints.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 25;
/// sun_path is 108 bytes on Linux, including the NUL.
const UNIX_PATH_MAX_BYTES: usize = 107;

const VOLUME: &str = "vol0";

/// The embedded node configurations; `{placeholders}` are filled in below.
/// Timeouts are short because everything is on loopback and the demo wants
/// a cut link noticed within a second or two.
const COMMON_TEMPLATE: &str = r#"
[node]
name = "{name}"
control_socket = "{dir}/{name}.ctl"

[tls]
cert = "{dir}/certs/{name}.pem"
key = "{dir}/certs/{name}.key"
ca = "{dir}/certs/ca.pem"

[quic]
max_idle_timeout = "3s"
keep_alive_interval = "500ms"
initial_rtt = "10ms"

[[volume]]
name = "vol0"
uuid = "{uuid}"
path = "{dir}/{name}.img"
size = {size}
role = "{role}"
journal_size = "256MiB"
journal_segment_size = "64MiB"
checkpoint_interval = "2s"
keepalive_interval = "250ms"
peer_timeout = "1500ms"
"#;

const PRIMARY_TEMPLATE: &str = r#"
reconnect_min = "100ms"
reconnect_max = "500ms"

[volume.nbd]
unix = "{dir}/alpha.nbd"

[[volume.peer]]
name = "metro"
mode = "sync"
transport = "tcp"
address = "{metro}"

[[volume.peer]]
name = "dr"
mode = "async"
transport = "quic"
address = "{dr}"
"#;

fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// Escapes a path for a TOML basic string.
fn toml_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn node_config(dir: &str, name: &str, uuid: &str, size: u64, extra: &str) -> String {
    let role = if name == "alpha" {
        "primary"
    } else {
        "secondary"
    };
    let size = size.to_string();
    let vars = [
        ("name", name),
        ("dir", dir),
        ("uuid", uuid),
        ("size", size.as_str()),
        ("role", role),
    ];
    render(COMMON_TEMPLATE, &vars) + &render(extra, &vars)
}

fn secondary_config(dir: &str, name: &str, uuid: &str, size: u64) -> String {
    let listen = if name == "metro" {
        "listen_tcp = \"127.0.0.1:0\"\n"
    } else {
        "listen_quic = \"127.0.0.1:0\"\n"
    };
    node_config(dir, name, uuid, size, listen)
}

fn primary_config(dir: &str, uuid: &str, size: u64, metro: &str, dr: &str) -> String {
    let extra = render(PRIMARY_TEMPLATE, &[("metro", metro), ("dr", dr)]);
    node_config(dir, "alpha", uuid, size, &extra)
}

/// The work directory, removed on drop unless `--keep`.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> anyhow::Result<WorkDir> {
        let base = std::env::temp_dir();
        let path = base.join(format!(
            "driftless-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = WorkDir { path, keep };
        // The longest socket path the nodes bind.
        let longest = dir.path.join("metro.ctl");
        if longest.as_os_str().len() > UNIX_PATH_MAX_BYTES {
            bail!(
                "temp directory {} is too long for Unix socket paths; set TMPDIR to a shorter one",
                base.display()
            );
        }
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept work directory {}", self.path.display());
        } else if let Err(err) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "driftless demo: cannot remove {}: {err}",
                self.path.display()
            );
        }
    }
}

/// One `driftless run` child. Killed (SIGKILL) on drop if still running.
struct NodeProc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    control: PathBuf,
    /// Lines the node printed on stdout (also appended to its log).
    lines: mpsc::Receiver<String>,
}

impl NodeProc {
    fn spawn(name: &'static str, dir: &Path, config_text: &str) -> anyhow::Result<NodeProc> {
        // Validate here so a template mistake is reported as such, not as a
        // child that exited.
        let parsed =
            NodeConfig::parse(config_text).with_context(|| format!("demo config for {name}"))?;
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("finding the driftless binary")?;
        let mut child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone()?)
            .spawn()
            .with_context(|| format!("starting node {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut log_file = log_file;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log_file, "{line}");
                    let _ = tx.send(line);
                }
            })
            .context("starting a reader thread")?;
        Ok(NodeProc {
            name,
            child,
            log,
            control: parsed.node.control_socket,
            lines,
        })
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, what: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.lines.recv_timeout(POLL) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "node {} exited ({}) before printing {what:?}\n{}",
                        self.name,
                        status.map_or("unknown status".into(), |s| s.to_string()),
                        self.log_tail()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not print {what:?} within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    fn status(&self) -> anyhow::Result<NodeStatus> {
        control::request(&self.control, &Request::Status)
            .with_context(|| format!("asking node {} for its status", self.name))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        let mut out = format!("--- last lines of {} ---\n", self.log.display());
        for line in &lines[start..] {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// SIGTERM, then waits for a clean exit (the node checkpoints first).
    fn stop(&mut self) -> anyhow::Result<()> {
        // kill(1) rather than a libc binding: one signal, no unsafe code.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!(
                "kill -TERM {} failed for node {}",
                self.child.id(),
                self.name
            );
        }
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!(
                    "node {} exited with {status} after SIGTERM\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "node {} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the workload thread reports.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    stop: AtomicBool,
}

fn workload(mut client: Client, duration: Duration, progress: &Progress) -> anyhow::Result<()> {
    let size = client.size_bytes;
    let mut rng = rand::thread_rng();
    let mut payload = vec![0u8; WRITE_MAX_BYTES as usize];
    let start = Instant::now();
    let mut last_flush = start;
    let mut cookie = 0u64;
    let flush = |client: &mut Client, cookie: u64| -> anyhow::Result<()> {
        client.send(CMD_FLUSH, cookie, 0, 0, &[])?;
        let (reply, _) = client.recv(|_| 0)?;
        if reply.error != 0 || reply.cookie != cookie {
            bail!("FLUSH failed with NBD error {}", reply.error);
        }
        progress.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    while start.elapsed() < duration && !progress.stop.load(Ordering::Relaxed) {
        let blocks = rng.gen_range(WRITE_MIN_BYTES / 4096..=WRITE_MAX_BYTES / 4096);
        let len = blocks * 4096;
        let offset = rng.gen_range(0..=(size - len) / 4096) * 4096;
        let data = &mut payload[..len as usize];
        rng.fill_bytes(data);
        cookie += 1;
        client
            .send(CMD_WRITE, cookie, offset, len as u32, data)
            .context("sending an NBD WRITE")?;
        let (reply, _) = client.recv(|_| 0).context("reading an NBD reply")?;
        if reply.error != 0 || reply.cookie != cookie {
            bail!(
                "WRITE of {len} bytes at {offset} failed with NBD error {}",
                reply.error
            );
        }
        let total = progress.bytes.fetch_add(len, Ordering::Relaxed) + len;
        progress.writes.fetch_add(1, Ordering::Relaxed);
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            cookie += 1;
            flush(&mut client, cookie)?;
            last_flush = Instant::now();
        }
        // Pace to the target rate.
        let due = Duration::from_secs_f64(total as f64 / WORKLOAD_BYTES_PER_SEC as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    cookie += 1;
    flush(&mut client, cookie).context("final FLUSH")?;
    client.disconnect().context("NBD disconnect")?;
    Ok(())
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn peer<'a>(status: &'a NodeStatus, name: &str) -> anyhow::Result<&'a PeerStatus> {
    status
        .volumes
        .first()
        .and_then(|v| v.status.peers.iter().find(|p| p.name == name))
        .with_context(|| format!("the primary's status lists no peer {name}"))
}

fn peer_line(p: &PeerStatus) -> String {
    format!(
        "{:<5} {:<10} {:<13} lag {:>10} {:>6} rec {:>6.2} s {:>7.1} MB/s",
        p.name,
        format!("{}/{}", p.mode, p.transport),
        p.state,
        fmt_bytes(p.lag_bytes),
        p.lag_records,
        p.lag_seconds,
        p.throughput_bytes_per_sec / 1e6
    )
}

/// Prints one line per peer for this second.
fn print_tick(t: Duration, written: u64, status: &NodeStatus, dr_cut: bool) -> anyhow::Result<()> {
    for (i, name) in ["metro", "dr"].iter().enumerate() {
        let p = peer(status, name)?;
        let head = if i == 0 {
            format!(
                "[{:>5.1}s] wrote {:>10}",
                t.as_secs_f64(),
                fmt_bytes(written)
            )
        } else {
            " ".repeat(25)
        };
        let note = if *name == "dr" && dr_cut {
            "  << link cut"
        } else {
            ""
        };
        println!("{head} | {}{note}", peer_line(p));
    }
    Ok(())
}

fn all_caught_up(status: &NodeStatus) -> bool {
    let Some(v) = status.volumes.first() else {
        return false;
    };
    v.status.peers.iter().all(|p| {
        p.state == PeerState::Connected
            && p.lag_bytes == 0
            && p.lag_records == 0
            && p.acked_lsn >= v.status.written_lsn
    })
}

/// What happened to the DR peer around the cut.
#[derive(Default)]
struct CutReport {
    peak_lag_bytes: u64,
    peak_lag_records: u64,
    states: Vec<PeerState>,
    reconnected_after: Option<Duration>,
    /// Lag back under CAUGHT_UP_LAG after the restore.
    caught_up_after: Option<Duration>,
}

/// An async peer under a steady workload always has a write or two in
/// flight; "caught up" means the oldest unacknowledged write is this young.
const CAUGHT_UP_LAG: Duration = Duration::from_millis(100);

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(VOLUME_MIN_BYTES..=VOLUME_MAX_BYTES).contains(&args.size) || args.size & 4095 != 0 {
        bail!(
            "--size must be a multiple of 4 KiB between {} and {}",
            fmt_bytes(VOLUME_MIN_BYTES),
            fmt_bytes(VOLUME_MAX_BYTES)
        );
    }
    let started = Instant::now();
    let mut work = WorkDir::create(args.keep)?;
    let dir = &work.path.clone();
    let dir_text = dir
        .to_str()
        .context("the temp directory path is not UTF-8")?;
    let dir_toml = toml_escape(dir_text);
    // One tokio runtime for the in-process fault proxy; the rest is blocking.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("demo-proxy")
        .build()
        .context("starting the tokio runtime")?;

    println!(
        "driftless demo: primary alpha -> metro (sync, TCP+TLS) and dr (async, QUIC via a fault proxy)"
    );
    println!(
        "  volume {} on each node, {} s of writes; configs, volumes and node logs in {}",
        fmt_bytes(args.size),
        args.seconds,
        dir.display()
    );

    // Certificates: one CA, one certificate per node, mutual TLS everywhere.
    let certs = dir.join("certs");
    let ca = transport::create_ca(&certs).context("creating the demo CA")?;
    for name in ["alpha", "metro", "dr"] {
        transport::create_node_cert(&ca, name, &certs)
            .with_context(|| format!("creating the certificate of {name}"))?;
    }
    println!("  created a CA and certificates for alpha, metro and dr");

    let uuid = uuid::Uuid::new_v4().to_string();
    let mut metro = NodeProc::spawn(
        "metro",
        dir,
        &secondary_config(&dir_toml, "metro", &uuid, args.size),
    )?;
    let mut dr = NodeProc::spawn(
        "dr",
        dir,
        &secondary_config(&dir_toml, "dr", &uuid, args.size),
    )?;
    let metro_line = metro.wait_line("secondary listening", "volume vol0 secondary listening")?;
    metro.wait_line("ready; control socket", "node metro ready")?;
    let dr_line = dr.wait_line("secondary listening", "volume vol0 secondary listening")?;
    dr.wait_line("ready; control socket", "node dr ready")?;
    let metro_addr = listen_addr(&metro_line, "tcp=")?;
    let dr_addr = listen_addr(&dr_line, "quic=")?;

    // The DR link goes through the proxy so it can be cut.
    let proxy: ProxyHandle = runtime
        .block_on(Proxy::start(
            Protocol::Udp,
            "127.0.0.1:0".parse()?,
            dr_addr,
            Duration::ZERO,
        ))
        .context("starting the UDP fault proxy")?;
    println!("  metro  secondary  TCP+TLS on {metro_addr}");
    println!(
        "  dr     secondary  QUIC on {dr_addr}, reached through the fault proxy on {}",
        proxy.local_addr()
    );

    let mut alpha = NodeProc::spawn(
        "alpha",
        dir,
        &primary_config(
            &dir_toml,
            &uuid,
            args.size,
            &metro_addr.to_string(),
            &proxy.local_addr().to_string(),
        ),
    )?;
    let nbd_line = alpha.wait_line("serving nbd+unix", "volume vol0 serving nbd+unix://...")?;
    alpha.wait_line("ready; control socket", "node alpha ready")?;
    let nbd_socket = dir.join("alpha.nbd");
    println!(
        "  alpha  primary    {}",
        nbd_line.trim_start_matches("volume vol0 serving ")
    );

    // Both peers connected before any write, so the run starts in sync.
    let t = Instant::now();
    loop {
        let status = alpha.status()?;
        if ["metro", "dr"]
            .iter()
            .all(|n| peer(&status, n).is_ok_and(|p| p.state == PeerState::Connected))
        {
            break;
        }
        if t.elapsed() >= CONNECT_TIMEOUT {
            let states: Vec<String> = ["metro", "dr"]
                .iter()
                .filter_map(|n| peer(&status, n).ok())
                .map(|p| {
                    format!(
                        "{}={} ({})",
                        p.name,
                        p.state,
                        p.last_error.as_deref().unwrap_or("no error")
                    )
                })
                .collect();
            bail!(
                "peers not connected within {CONNECT_TIMEOUT:?}: {}\n{}",
                states.join(", "),
                alpha.log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
    println!(
        "  both peers connected {:.1} s after start",
        started.elapsed().as_secs_f64()
    );

    // The workload runs on its own thread; this one keeps the timeline.
    let duration = Duration::from_secs(args.seconds);
    let cut_at = duration.mul_f64(0.3);
    let cut_len = CUT_DURATION.min(duration.mul_f64(0.4));
    let client = Client::connect(&nbd_socket, VOLUME)
        .with_context(|| format!("connecting to NBD {}", nbd_socket.display()))?;
    let progress = Arc::new(Progress::default());
    let worker = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("demo-workload".into())
            .spawn(move || workload(client, duration, &progress))
            .context("starting the workload thread")?
    };
    println!();
    println!(
        "writing random {}–{} blocks at ~{}/s with a FLUSH every {} s; DR link cut at {:.1} s for {:.1} s",
        fmt_bytes(WRITE_MIN_BYTES),
        fmt_bytes(WRITE_MAX_BYTES),
        fmt_bytes(WORKLOAD_BYTES_PER_SEC),
        FLUSH_INTERVAL.as_secs(),
        cut_at.as_secs_f64(),
        cut_len.as_secs_f64()
    );
    println!(
        "{:<8} {:>16} | {:<5} {:<10} {:<13} {:>14} {:>10} {:>8} {:>12}",
        "time", "written", "peer", "mode/via", "state", "lag: bytes", "records", "age", "shipped"
    );
    let t0 = Instant::now();
    let mut next_tick = Duration::from_secs(1);
    let mut next_poll = Duration::ZERO;
    let mut cut_done = false;
    let mut restored_at: Option<Duration> = None;
    let mut report = CutReport::default();
    let result = (|| -> anyhow::Result<()> {
        // Phase 1: workload, with the cut in the middle.
        while !worker.is_finished() {
            let now = t0.elapsed();
            if now > duration + WORKLOAD_GRACE {
                bail!(
                    "the NBD workload did not finish within {:?} of its planned {duration:?} (last of {} writes acknowledged)\n{}",
                    WORKLOAD_GRACE,
                    progress.writes.load(Ordering::Relaxed),
                    alpha.log_tail()
                );
            }
            if !cut_done && !proxy.is_cut() && now >= cut_at {
                proxy.cut();
                println!(
                    "[{:>5.1}s] --- cutting the DR link (every datagram dropped) ---",
                    now.as_secs_f64()
                );
            }
            if proxy.is_cut() && now >= cut_at + cut_len {
                proxy.restore();
                cut_done = true;
                restored_at = Some(now);
                println!("[{:>5.1}s] --- DR link restored ---", now.as_secs_f64());
            }
            // Sampled more often than printed, so the reconnect and
            // catch-up times are measured to a poll, not to a second.
            if now >= next_poll {
                let status = alpha.status()?;
                track_dr(&status, &mut report, proxy.is_cut(), restored_at, now);
                next_poll = now + POLL;
                if now >= next_tick {
                    print_tick(
                        now,
                        progress.bytes.load(Ordering::Relaxed),
                        &status,
                        proxy.is_cut(),
                    )?;
                    next_tick += Duration::from_secs(1);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match worker.join() {
            Ok(r) => r.context("NBD workload")?,
            Err(_) => bail!("the workload thread panicked"),
        }
        if proxy.is_cut() {
            proxy.restore();
            restored_at = Some(t0.elapsed());
        }
        let written = progress.bytes.load(Ordering::Relaxed);
        println!(
            "[{:>5.1}s] workload done: {} in {} writes, {} FLUSHes; waiting for both peers to catch up",
            t0.elapsed().as_secs_f64(),
            fmt_bytes(written),
            progress.writes.load(Ordering::Relaxed),
            progress.flushes.load(Ordering::Relaxed)
        );
        // Phase 2: catch-up, bounded.
        let done_at = t0.elapsed();
        loop {
            let now = t0.elapsed();
            let status = alpha.status()?;
            track_dr(&status, &mut report, false, restored_at, now);
            if all_caught_up(&status) {
                print_tick(now, written, &status, false)?;
                break;
            }
            if now >= done_at + CATCH_UP_TIMEOUT {
                print_tick(now, written, &status, false)?;
                bail!(
                    "peers did not catch up within {CATCH_UP_TIMEOUT:?} of the last write\n{}",
                    alpha.log_tail()
                );
            }
            if now >= next_tick {
                print_tick(now, written, &status, false)?;
                next_tick += Duration::from_secs(1);
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    })();
    progress.stop.store(true, Ordering::Relaxed);
    result?;
    let (_, dropped) = proxy.counts();
    if dropped == 0 {
        bail!("the DR link was cut but the proxy dropped no datagram: dr is not reached through the proxy");
    }
    println!(
        "DR link: {dropped} datagrams dropped while cut; dr lag peaked at {} / {} records; states {}",
        fmt_bytes(report.peak_lag_bytes),
        report.peak_lag_records,
        report
            .states
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" → "),
    );
    let after = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "after the restore: dr reconnected in {}, lag under {} ms in {}",
        after(report.reconnected_after),
        CAUGHT_UP_LAG.as_millis(),
        after(report.caught_up_after)
    );

    // Each node's own view, then a clean stop: the primary first (it drains
    // its peers), then the secondaries.
    let lsns: Vec<u64> = [&alpha, &metro, &dr]
        .iter()
        .map(|n| {
            n.status()
                .map(|s| s.volumes.first().map_or(0, |v| v.status.applied_lsn))
        })
        .collect::<anyhow::Result<_>>()?;
    let stop_started = Instant::now();
    alpha.stop()?;
    metro.stop()?;
    dr.stop()?;
    proxy.stop();
    println!(
        "stopped alpha, metro and dr with SIGTERM in {:.1} s: all exited 0 after their final checkpoint",
        stop_started.elapsed().as_secs_f64()
    );

    // The proof: three byte-identical volumes.
    let written = progress.bytes.load(Ordering::Relaxed);
    let rows = [
        ("alpha", "primary", "NBD (unix socket)"),
        ("metro", "secondary", "sync, TCP+TLS"),
        ("dr", "secondary", "async, QUIC + proxy"),
    ];
    let mut hashes = Vec::new();
    for (name, _, _) in rows {
        let path = dir.join(format!("{name}.img"));
        hashes.push(blake3_file(&path)?);
    }
    println!();
    println!(
        "{:<6} {:<10} {:<20} {:>12} {:>14}  {:<16}  match",
        "node", "role", "transport", "applied LSN", "bytes written", "BLAKE3"
    );
    let mut all_match = true;
    for (i, (name, role, via)) in rows.iter().enumerate() {
        let same = hashes[i] == hashes[0];
        all_match &= same;
        // Replicas received exactly the primary's writes when their LSN matches.
        let bytes = if i == 0 || lsns[i] == lsns[0] {
            fmt_bytes(written)
        } else {
            "?".into()
        };
        println!(
            "{:<6} {:<10} {:<20} {:>12} {:>14}  {:<16}  {}",
            name,
            role,
            via,
            lsns[i],
            bytes,
            &hashes[i].to_hex()[..16],
            if i == 0 {
                "reference"
            } else if same {
                "yes"
            } else {
                "NO"
            }
        );
    }
    if !all_match {
        // Keep the evidence.
        let kept = work.path.display().to_string();
        work.keep = true;
        bail!("the volume copies differ (work directory kept: {kept})");
    }
    println!(
        "all three copies are identical; demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(runtime);
    Ok(())
}

fn track_dr(
    status: &NodeStatus,
    report: &mut CutReport,
    cut: bool,
    restored_at: Option<Duration>,
    now: Duration,
) {
    let Ok(p) = peer(status, "dr") else { return };
    report.peak_lag_bytes = report.peak_lag_bytes.max(p.lag_bytes);
    report.peak_lag_records = report.peak_lag_records.max(p.lag_records);
    if (cut || restored_at.is_some()) && report.states.last() != Some(&p.state) {
        report.states.push(p.state);
    }
    if let Some(at) = restored_at.filter(|_| p.state == PeerState::Connected) {
        let since = now.saturating_sub(at);
        report.reconnected_after.get_or_insert(since);
        if report.caught_up_after.is_none() && p.lag_seconds < CAUGHT_UP_LAG.as_secs_f64() {
            report.caught_up_after = Some(since);
        }
    }
}

/// Parses "tcp=127.0.0.1:1234" out of a secondary's ready line.
fn listen_addr(line: &str, key: &str) -> anyhow::Result<std::net::SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no {key}ADDRESS in {line:?}"))
}

fn blake3_file(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_configs_parse() {
        let dir = toml_escape("/tmp/demo \"x\"");
        let uuid = "6f1c2a8e-7d1b-4a53-9a51-0c5e7f3b2d11";
        for name in ["metro", "dr"] {
            let text = secondary_config(&dir, name, uuid, 64 << 20);
            let c = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:#}\n{text}"));
            assert_eq!(c.node.name, name);
            assert_eq!(c.volumes[0].size, 64 << 20);
        }
        let text = primary_config(&dir, uuid, 64 << 20, "127.0.0.1:1", "127.0.0.1:2");
        let c = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(c.volumes[0].peers.len(), 2);
        assert_eq!(
            c.volumes[0].path,
            PathBuf::from("/tmp/demo \"x\"/alpha.img")
        );
    }

    #[test]
    fn deploy_examples_parse() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for name in ["primary.toml", "metro.toml", "dr.toml"] {
            let path = deploy.join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn parses_listen_addresses() {
        let line = "volume vol0 secondary listening tcp=127.0.0.1:4000 quic=-";
        assert_eq!(
            listen_addr(line, "tcp=").unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert!(listen_addr(line, "quic=").is_err());
    }

    #[test]
    fn byte_units() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(64 << 20), "64 MiB");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}
