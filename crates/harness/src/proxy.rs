//! A fault-injecting relay for tests and `driftless demo`: sits between a
//! primary and a peer and can delay, cut and restore the link.
//!
//! - UDP (QUIC peers): one upstream socket per client address, like a NAT
//!   table, so a QUIC connection keeps its 4-tuple through the proxy.
//! - TCP (metro peers): one upstream connection per accepted connection.
//!
//! While cut, UDP datagrams are dropped both ways; TCP connections are
//! closed and new ones are closed as soon as they are accepted. A delay is
//! applied one way, per datagram or per read chunk, in both directions, and
//! keeps order (items wait in a FIFO). Delay and UDP loss can change while
//! the proxy runs ([`ProxyHandle::set_delay`], [`ProxyHandle::set_loss`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{HarnessError, Result};

/// Client addresses with their own upstream socket; at the limit the mapping
/// idle the longest is evicted (its upstream socket closed).
pub const UDP_CLIENT_MAPPINGS_MAX: usize = 64;
/// A mapping silent this long is dropped when a new client arrives (a QUIC
/// client that reconnects from a new port leaves its old one behind).
pub const UDP_MAPPING_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Relayed TCP connections at once; beyond this new ones are closed at once.
pub const TCP_CONNECTIONS_MAX: usize = 256;
/// Bytes waiting out the delay per direction of one mapping or connection.
/// UDP: a datagram that does not fit is dropped (a full router queue).
/// TCP: the reader waits (back-pressure through the socket buffers).
pub const QUEUE_BYTES_MAX_PER_DIRECTION: usize = 4 << 20;
/// Largest UDP datagram relayed (the IPv4 payload limit).
const UDP_DATAGRAM_BYTES_MAX: usize = 65_507;
/// One TCP read; the unit the delay applies to.
const TCP_CHUNK_BYTES: usize = 64 << 10;
/// How long an upstream TCP connect may take before the client is closed.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Udp,
    Tcp,
}

/// Counters for tests and the demo.
#[derive(Default, Debug)]
pub struct ProxyStats {
    /// Datagrams (UDP) or chunks (TCP) delivered.
    pub forwarded: AtomicU64,
    /// Datagrams dropped (cut, queue full) or TCP connections closed by a cut.
    pub dropped: AtomicU64,
}

/// The link's delay and loss, read per datagram or chunk.
#[derive(Default, Debug)]
struct Shape {
    delay_us: AtomicU64,
    /// UDP datagrams dropped, per 1000 (TCP is reliable: only delayed).
    loss_per_mille: AtomicU64,
}

impl Shape {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn lose(&self) -> bool {
        let loss = self.loss_per_mille.load(Ordering::Relaxed);
        loss > 0 && rand::random::<u64>() % 1000 < loss
    }
}

/// A running proxy; dropping it stops it (every task is aborted and every
/// socket closed).
pub struct ProxyHandle {
    local_addr: SocketAddr,
    cut: watch::Sender<bool>,
    shape: Arc<Shape>,
    stats: Arc<ProxyStats>,
    tasks: JoinSet<()>,
}

impl ProxyHandle {
    /// The address clients dial (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cuts the link (idempotent).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Restores the link (idempotent).
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// The one-way delay from now on (items already queued keep theirs).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shape.delay_us.store(us, Ordering::Relaxed);
    }

    /// Drops this share of UDP datagrams, both ways, from now on (0.0–1.0).
    pub fn set_loss(&self, share: f64) {
        let per_mille = (share.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.shape
            .loss_per_mille
            .store(per_mille, Ordering::Relaxed);
    }

    /// (forwarded, dropped) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.forwarded.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
        )
    }

    /// Stops the proxy.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

pub struct Proxy;

impl Proxy {
    /// Binds `listen` and relays to `upstream` until the handle is dropped.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        protocol: Protocol,
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> Result<ProxyHandle> {
        let (cut, cut_rx) = watch::channel(false);
        let stats = Arc::new(ProxyStats::default());
        let shape = Arc::new(Shape::default());
        let delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        shape.delay_us.store(delay_us, Ordering::Relaxed);
        let mut tasks = JoinSet::new();
        let local_addr = match protocol {
            Protocol::Udp => {
                let front = UdpSocket::bind(listen)
                    .await
                    .map_err(|e| HarnessError::io(format!("binding UDP {listen}"), e))?;
                let local = front
                    .local_addr()
                    .map_err(|e| HarnessError::io("reading the UDP address", e))?;
                tasks.spawn(udp_front(
                    Arc::new(front),
                    upstream,
                    shape.clone(),
                    cut_rx,
                    stats.clone(),
                ));
                local
            }
            Protocol::Tcp => {
                let listener = TcpListener::bind(listen)
                    .await
                    .map_err(|e| HarnessError::io(format!("binding TCP {listen}"), e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| HarnessError::io("reading the TCP address", e))?;
                tasks.spawn(tcp_accept(
                    listener,
                    upstream,
                    shape.clone(),
                    cut_rx,
                    stats.clone(),
                ));
                local
            }
        };
        Ok(ProxyHandle {
            local_addr,
            cut,
            shape,
            stats,
            tasks,
        })
    }
}

/// One direction's delay line: items enter with their size reserved against
/// a byte budget and leave the link's delay after they entered, in order.
struct DelayLine {
    tx: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    budget: Arc<Semaphore>,
    shape: Arc<Shape>,
}

impl DelayLine {
    /// Starts the line; `deliver` sends one item (an error ends the line).
    fn start<F, Fut>(
        shape: Arc<Shape>,
        mut cut: watch::Receiver<bool>,
        stats: Arc<ProxyStats>,
        tasks: &mut JoinSet<()>,
        mut deliver: F,
    ) -> DelayLine
    where
        F: FnMut(Vec<u8>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send,
    {
        // The channel itself is unbounded; the byte budget bounds it.
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let budget = Arc::new(Semaphore::new(QUEUE_BYTES_MAX_PER_DIRECTION));
        let release = budget.clone();
        tasks.spawn(async move {
            while let Some((due, data)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                let len = data.len();
                // Something queued before a cut is lost with the link.
                if *cut.borrow_and_update() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else if deliver(data).await.is_err() {
                    // Nothing more can be delivered: wake a waiting reader.
                    release.close();
                    return;
                } else {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                release.add_permits(len);
            }
        });
        DelayLine { tx, budget, shape }
    }

    /// UDP: queue, or drop when the budget is spent or the link loses it.
    fn try_push(&self, data: Vec<u8>) -> bool {
        if self.shape.lose() {
            return false;
        }
        let Ok(permit) = self.budget.try_acquire_many(permit_count(data.len())) else {
            return false;
        };
        permit.forget();
        self.tx
            .send((Instant::now() + self.shape.delay(), data))
            .is_ok()
    }

    /// TCP: wait for budget (back-pressure).
    async fn push(&self, data: Vec<u8>) -> bool {
        let Ok(permit) = self.budget.acquire_many(permit_count(data.len())).await else {
            return false;
        };
        permit.forget();
        self.tx
            .send((Instant::now() + self.shape.delay(), data))
            .is_ok()
    }
}

fn permit_count(len: usize) -> u32 {
    // Datagrams and chunks are at most 64 KiB, far below u32::MAX.
    u32::try_from(len).unwrap_or(u32::MAX)
}

struct Mapping {
    to_upstream: DelayLine,
    last_active: Instant,
    /// Aborted on drop: the upstream socket and both delay lines.
    _tasks: JoinSet<()>,
}

async fn udp_front(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    shape: Arc<Shape>,
    mut cut: watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    let mut mappings: HashMap<SocketAddr, Mapping> = HashMap::new();
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let (len, client) = match front.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(err) => {
                // ICMP errors from earlier sends surface here on Linux; keep going.
                tracing::debug!(error = %err, "proxy: UDP receive failed");
                continue;
            }
        };
        if *cut.borrow_and_update() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !mappings.contains_key(&client) {
            mappings.retain(|_, m| m.last_active.elapsed() < UDP_MAPPING_IDLE_TIMEOUT);
            if mappings.len() >= UDP_CLIENT_MAPPINGS_MAX {
                if let Some(oldest) = mappings
                    .iter()
                    .min_by_key(|(_, m)| m.last_active)
                    .map(|(a, _)| *a)
                {
                    tracing::info!(client = %oldest, "proxy: UDP mapping table full; evicting the idlest client");
                    mappings.remove(&oldest);
                }
            }
            match udp_mapping(&front, client, upstream, &shape, &cut, &stats).await {
                Ok(m) => {
                    mappings.insert(client, m);
                }
                Err(err) => {
                    tracing::warn!(client = %client, error = %err, "proxy: cannot open an upstream UDP socket");
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(mapping) = mappings.get_mut(&client) else {
            continue;
        };
        mapping.last_active = Instant::now();
        if !mapping.to_upstream.try_push(buf[..len].to_vec()) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn udp_mapping(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    shape: &Arc<Shape>,
    cut: &watch::Receiver<bool>,
    stats: &Arc<ProxyStats>,
) -> std::io::Result<Mapping> {
    let any: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).await?;
    socket.connect(upstream).await?;
    let socket = Arc::new(socket);
    let mut tasks = JoinSet::new();

    let up = socket.clone();
    let to_upstream = DelayLine::start(
        shape.clone(),
        cut.clone(),
        stats.clone(),
        &mut tasks,
        move |d| {
            let up = up.clone();
            async move { up.send(&d).await.map(|_| ()) }
        },
    );
    let front_tx = front.clone();
    let to_client = DelayLine::start(
        shape.clone(),
        cut.clone(),
        stats.clone(),
        &mut tasks,
        move |d| {
            let front = front_tx.clone();
            async move { front.send_to(&d, client).await.map(|_| ()) }
        },
    );
    let mut cut_rx = cut.clone();
    let stats_rx = stats.clone();
    tasks.spawn(async move {
        let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        loop {
            let len = match socket.recv(&mut buf).await {
                Ok(len) => len,
                // ECONNREFUSED while the upstream is down: keep the mapping.
                Err(_) => continue,
            };
            if *cut_rx.borrow_and_update() || !to_client.try_push(buf[..len].to_vec()) {
                stats_rx.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(Mapping {
        to_upstream,
        last_active: Instant::now(),
        _tasks: tasks,
    })
}

async fn tcp_accept(
    listener: TcpListener,
    upstream: SocketAddr,
    shape: Arc<Shape>,
    cut: watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    let mut conns = JoinSet::new();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "proxy: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
        if *cut.borrow() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, limit = TCP_CONNECTIONS_MAX, "proxy: too many TCP connections; closing");
            drop(client);
            continue;
        };
        let (cut, stats, shape) = (cut.clone(), stats.clone(), shape.clone());
        conns.spawn(async move {
            tcp_relay(client, upstream, shape, cut, stats).await;
            drop(slot);
        });
    }
}

async fn tcp_relay(
    client: TcpStream,
    upstream: SocketAddr,
    shape: Arc<Shape>,
    mut cut: watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    let server = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "proxy: upstream connect failed");
            return;
        }
        Err(_) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let mut tasks = JoinSet::new();
    let up = tcp_direction(client_r, server_w, &shape, &cut, &stats, &mut tasks);
    let down = tcp_direction(server_r, client_w, &shape, &cut, &stats, &mut tasks);
    tasks.spawn(up);
    tasks.spawn(down);
    // The relay ends when both directions finished or the link is cut;
    // dropping `tasks` closes both sockets.
    let mut finished = 0;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => return,
                Some(_) => {
                    finished += 1;
                    // Both readers and both delay lines have ended.
                    if finished >= 4 { return; }
                }
            },
            changed = cut.wait_for(|c| *c) => {
                if changed.is_ok() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

/// Reads chunks from one side into a delay line that writes them to the
/// other; EOF is passed on as a write shutdown once the line is empty.
fn tcp_direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    shape: &Arc<Shape>,
    cut: &watch::Receiver<bool>,
    stats: &Arc<ProxyStats>,
    tasks: &mut JoinSet<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let to = Arc::new(tokio::sync::Mutex::new(to));
    let writer = to.clone();
    let line = DelayLine::start(shape.clone(), cut.clone(), stats.clone(), tasks, move |d| {
        let writer = writer.clone();
        async move {
            let mut w = writer.lock().await;
            if d.is_empty() {
                // EOF marker.
                w.shutdown().await?;
                Err(std::io::Error::other("end of stream"))
            } else {
                w.write_all(&d).await
            }
        }
    });
    async move {
        let mut buf = vec![0u8; TCP_CHUNK_BYTES];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = line.push(Vec::new()).await;
                    return;
                }
                Ok(n) => {
                    if !line.push(buf[..n].to_vec()).await {
                        return;
                    }
                }
            }
        }
    }
}

/// `driftless fault-proxy`: the proxy as a process, for tests and scripts.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Address to listen on (port 0 picks one; the real one is printed).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to relay to.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// One-way delay per datagram or chunk, both directions ("20ms").
    #[arg(long, value_parser = node::units::parse_duration, default_value = "0s")]
    pub delay: Duration,
    /// The link is cut while this file exists (in addition to SIGUSR1/SIGUSR2).
    #[arg(long)]
    pub cut_file: Option<std::path::PathBuf>,
}

/// How often the cut file is looked at.
const CUT_FILE_POLL: Duration = Duration::from_millis(20);

/// Runs until SIGINT/SIGTERM. SIGUSR1 cuts, SIGUSR2 restores; the link is
/// cut while either a SIGUSR1 is in force or the cut file exists.
pub fn run(args: ProxyArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("fault-proxy")
        .build()
        .map_err(|e| HarnessError::io("starting the tokio runtime", e))?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |e| HarnessError::io("installing signal handlers", e);
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(handler)?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(handler)?;
        let proxy = Proxy::start(args.protocol, args.listen, args.upstream, args.delay).await?;
        println!("proxy listening on {}", proxy.local_addr());
        let mut signal_cut = false;
        let mut poll = tokio::time::interval(CUT_FILE_POLL);
        let stop = node::nbd::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = usr1.recv() => signal_cut = true,
                _ = usr2.recv() => signal_cut = false,
                _ = poll.tick() => {}
            }
            let file_cut = args.cut_file.as_deref().is_some_and(|p| p.exists());
            let want = signal_cut || file_cut;
            if want != proxy.is_cut() {
                if want {
                    proxy.cut();
                } else {
                    proxy.restore();
                }
                let (forwarded, dropped) = proxy.counts();
                tracing::info!(
                    cut = want,
                    forwarded,
                    dropped,
                    "link {}",
                    if want { "cut" } else { "restored" }
                );
            }
        }
        proxy.stop();
        Ok(())
    })
}

/// A `driftless fault-proxy` process between a primary and a peer; the
/// link is cut while its cut file exists. SIGKILLed on drop.
pub struct ProxyProc {
    pub proc: crate::process::Proc,
    pub addr: SocketAddr,
    cut_file: std::path::PathBuf,
}

impl ProxyProc {
    /// `driftless fault-proxy --protocol PROTOCOL --listen 127.0.0.1:0
    /// --upstream UPSTREAM [--delay DELAY] --cut-file DIR/proxy-N.cut`.
    pub fn start(
        dir: &std::path::Path,
        protocol: Protocol,
        upstream: SocketAddr,
        delay: Option<Duration>,
    ) -> Result<ProxyProc> {
        let cut_file = dir.join(format!("proxy-{:08x}.cut", rand::random::<u32>()));
        let mut cmd = std::process::Command::new(crate::driftless_bin());
        cmd.arg("fault-proxy")
            .arg("--protocol")
            .arg(match protocol {
                Protocol::Udp => "udp",
                Protocol::Tcp => "tcp",
            })
            .args(["--listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--cut-file")
            .arg(&cut_file);
        if let Some(d) = delay {
            cmd.arg("--delay").arg(node::units::format_duration(d));
        }
        let mut proc = crate::process::Proc::spawn(cmd, dir, "proxy")?;
        let addr = proc.wait_stdout("printing its address", Duration::from_secs(20), |out| {
            out.lines()
                .find_map(|l| l.split_once("proxy listening on ").map(|(_, a)| a.trim()))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })?;
        Ok(ProxyProc {
            proc,
            addr,
            cut_file,
        })
    }

    /// Cuts the link (creates the cut file).
    pub fn cut(&self) {
        std::fs::write(&self.cut_file, b"cut\n").expect("creating the cut file");
    }

    /// Restores the link (removes the cut file).
    pub fn restore(&self) {
        std::fs::remove_file(&self.cut_file).expect("removing the cut file");
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(300);

    fn lo() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn udp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind(lo()).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    async fn udp_roundtrip(client: &UdpSocket, msg: &[u8]) -> Option<Vec<u8>> {
        client.send(msg).await.unwrap();
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(STEP, client.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn udp_echo_cut_restore() {
        let (echo, _task) = udp_echo().await;
        let proxy = Proxy::start(Protocol::Udp, lo(), echo, Duration::ZERO)
            .await
            .unwrap();
        let client = UdpSocket::bind(lo()).await.unwrap();
        client.connect(proxy.local_addr()).await.unwrap();

        assert_eq!(
            udp_roundtrip(&client, b"one").await.as_deref(),
            Some(&b"one"[..])
        );
        proxy.cut();
        assert_eq!(udp_roundtrip(&client, b"two").await, None);
        proxy.restore();
        assert_eq!(
            udp_roundtrip(&client, b"three").await.as_deref(),
            Some(&b"three"[..])
        );
        let (forwarded, dropped) = proxy.counts();
        assert_eq!((forwarded, dropped), (4, 1));
    }

    #[tokio::test]
    async fn udp_delay_keeps_order_and_mappings_apart() {
        let (echo, _task) = udp_echo().await;
        let delay = Duration::from_millis(40);
        let proxy = Proxy::start(Protocol::Udp, lo(), echo, delay)
            .await
            .unwrap();
        let a = UdpSocket::bind(lo()).await.unwrap();
        let b = UdpSocket::bind(lo()).await.unwrap();
        a.connect(proxy.local_addr()).await.unwrap();
        b.connect(proxy.local_addr()).await.unwrap();
        let start = Instant::now();
        for i in 0u8..20 {
            a.send(&[i]).await.unwrap();
        }
        b.send(b"b").await.unwrap();
        let mut buf = [0u8; 16];
        for i in 0u8..20 {
            let n = tokio::time::timeout(STEP, a.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], &[i]);
        }
        // Two one-way delays.
        assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
        let n = tokio::time::timeout(STEP, b.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"b");
    }

    #[tokio::test]
    async fn udp_delay_and_loss_change_while_running() {
        let (echo, _task) = udp_echo().await;
        let proxy = Proxy::start(Protocol::Udp, lo(), echo, Duration::ZERO)
            .await
            .unwrap();
        let client = UdpSocket::bind(lo()).await.unwrap();
        client.connect(proxy.local_addr()).await.unwrap();
        assert!(udp_roundtrip(&client, b"x").await.is_some());
        // Each way loses 1 in 2: about 1 round trip in 4 gets through.
        proxy.set_loss(0.5);
        let mut back = 0;
        for i in 0..200u8 {
            client.send(&[i]).await.unwrap();
        }
        let mut buf = [0u8; 16];
        while let Ok(Ok(_)) = tokio::time::timeout(STEP, client.recv(&mut buf)).await {
            back += 1;
        }
        assert!((20..=90).contains(&back), "{back} of 200 came back");
        proxy.set_loss(0.0);
        let delay = Duration::from_millis(60);
        proxy.set_delay(delay);
        let start = Instant::now();
        assert!(udp_roundtrip(&client, b"slow").await.is_some());
        assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
    }

    async fn tcp_echo() -> SocketAddr {
        let listener = TcpListener::bind(lo()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn tcp_roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(STEP, s.read_exact(&mut buf)).await {
            Ok(r) => r.map(|_| buf),
            Err(_) => Err(std::io::Error::other("timed out")),
        }
    }

    #[tokio::test]
    async fn tcp_echo_cut_closes_restore_resumes() {
        let echo = tcp_echo().await;
        let proxy = Proxy::start(Protocol::Tcp, lo(), echo, Duration::from_millis(5))
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
        // Larger than one chunk, to cross several reads in order.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(tcp_roundtrip(&mut s, &big).await.unwrap(), big);

        proxy.cut();
        // The existing connection is closed: EOF or reset, never data.
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(STEP, s.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // A new connection is closed at once.
        let mut s2 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(tcp_roundtrip(&mut s2, b"x").await.is_err());

        proxy.restore();
        let mut s3 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(tcp_roundtrip(&mut s3, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn tcp_half_close_passes_through() {
        let echo = tcp_echo().await;
        let proxy = Proxy::start(Protocol::Tcp, lo(), echo, Duration::ZERO)
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, b"bye");
    }
}
