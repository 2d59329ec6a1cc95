//! Raw QUIC bulk transfer on loopback: the ceiling for driftless's QUIC shipping.
//!
//! Two endpoints in one process (2 tokio workers), the same [`QuicTuning`] and
//! mutual-TLS identities as driftless nodes, one bidirectional stream. The
//! client writes N MiB in chunks, finishes the stream; the server counts the
//! bytes and answers with 8 bytes; the time is first write → answer.
//!
//! ```text
//! cargo run --release -p transport --example quic_bulk -- [options]
//!   --mib N            bytes to send, in MiB (default 256)
//!   --chunk-kib K      size of each write (default 1024)
//!   --framed           send wire SyncOps (Data) frames through FramedConn instead of raw bytes
//!   --reps N           repeat N times (fresh connection each), one line each (default 1)
//!   --certs DIR        use DIR/{ca,pri,sec}.{pem,key} (driftless cert layout) instead of
//!                      a throw-away CA
//! tuning experiments (default: exactly what QuicTuning::default() gives):
//!   --cc cubic|bbr|newreno   congestion controller
//!   --initial-window BYTES   congestion controller initial window
//!   --mtu-upper N            MTU discovery upper bound (quinn default 1452); 0 disables discovery
//!   --max-udp-payload N      largest UDP payload the endpoint accepts (quinn default 1472)
//!   --initial-mtu N          initial max UDP payload
//!   --udp-buf BYTES          SO_SNDBUF/SO_RCVBUF asked of the kernel
//!   --no-gso                 disable UDP segmentation offload
//!   --fairness on|off        send_fairness
//!   --stream-window BYTES    stream receive window (connection windows = 2x)
//! ```
//! Output: one line per rep, `key=value` pairs, including `MBps`, lost packets
//! and the MTU in use at the end.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use transport::quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use transport::quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};
use transport::{create_ca, create_node_cert, FramedConn, QuicEndpoint, QuicTuning, TlsIdentity};
use wire::{Limits, Message, SyncOp, SyncOpKind};

#[derive(Debug, Clone)]
struct Opts {
    mib: usize,
    chunk_kib: usize,
    framed: bool,
    reps: usize,
    certs: Option<PathBuf>,
    cc: Option<String>,
    initial_window: Option<u64>,
    mtu_upper: Option<u16>,
    max_udp_payload: Option<u16>,
    initial_mtu: Option<u16>,
    udp_buf: Option<usize>,
    no_gso: bool,
    fairness: Option<bool>,
    stream_window: Option<u64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn parse_args() -> Result<Opts, BoxError> {
    let mut o = Opts {
        mib: 256,
        chunk_kib: 1024,
        framed: false,
        reps: 1,
        certs: None,
        cc: None,
        initial_window: None,
        mtu_upper: None,
        max_udp_payload: None,
        initial_mtu: None,
        udp_buf: None,
        no_gso: false,
        fairness: None,
        stream_window: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mib" => o.mib = val()?.parse()?,
            "--chunk-kib" => o.chunk_kib = val()?.parse()?,
            "--framed" => o.framed = true,
            "--reps" => o.reps = val()?.parse()?,
            "--certs" => o.certs = Some(val()?.into()),
            "--cc" => o.cc = Some(val()?),
            "--initial-window" => o.initial_window = Some(val()?.parse()?),
            "--mtu-upper" => o.mtu_upper = Some(val()?.parse()?),
            "--max-udp-payload" => o.max_udp_payload = Some(val()?.parse()?),
            "--initial-mtu" => o.initial_mtu = Some(val()?.parse()?),
            "--udp-buf" => o.udp_buf = Some(val()?.parse()?),
            "--no-gso" => o.no_gso = true,
            "--fairness" => o.fairness = Some(val()? == "on"),
            "--stream-window" => o.stream_window = Some(val()?.parse()?),
            "-h" | "--help" => {
                println!("see the doc comment of crates/transport/examples/quic_bulk.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.mib == 0 || o.chunk_kib == 0 || o.reps == 0 {
        return Err("--mib, --chunk-kib and --reps must be > 0".into());
    }
    Ok(o)
}

fn tuning_of(o: &Opts) -> QuicTuning {
    let mut t = QuicTuning::default();
    if let Some(b) = o.udp_buf {
        t.udp_send_buffer_bytes = b;
        t.udp_recv_buffer_bytes = b;
    }
    if o.no_gso {
        t.enable_gso = false;
    }
    if let Some(w) = o.stream_window {
        t.stream_receive_window_bytes = w;
        t.receive_window_bytes = 2 * w;
        t.send_window_bytes = 2 * w;
    }
    t
}

fn transport_of(o: &Opts, tuning: &QuicTuning) -> Result<TransportConfig, BoxError> {
    let mut t = tuning.transport_config()?;
    match o.cc.as_deref() {
        None => {}
        Some("cubic") => {
            let mut c = CubicConfig::default();
            if let Some(w) = o.initial_window {
                c.initial_window(w);
            }
            t.congestion_controller_factory(Arc::new(c));
        }
        Some("bbr") => {
            let mut c = BbrConfig::default();
            if let Some(w) = o.initial_window {
                c.initial_window(w);
            }
            t.congestion_controller_factory(Arc::new(c));
        }
        Some("newreno") => {
            let mut c = NewRenoConfig::default();
            if let Some(w) = o.initial_window {
                c.initial_window(w);
            }
            t.congestion_controller_factory(Arc::new(c));
        }
        Some(other) => return Err(format!("unknown --cc {other}").into()),
    }
    match o.mtu_upper {
        None => {}
        Some(0) => {
            t.mtu_discovery_config(None);
        }
        Some(n) => {
            let mut m = MtuDiscoveryConfig::default();
            m.upper_bound(n);
            t.mtu_discovery_config(Some(m));
        }
    }
    if let Some(n) = o.initial_mtu {
        t.initial_mtu(n);
    }
    if let Some(f) = o.fairness {
        t.send_fairness(f);
    }
    Ok(t)
}

fn endpoint_of(o: &Opts, tuning: &QuicTuning) -> Result<EndpointConfig, BoxError> {
    let mut e = tuning.endpoint_config();
    if let Some(n) = o.max_udp_payload {
        e.max_udp_payload_size(n)?;
    }
    Ok(e)
}

fn identities(o: &Opts) -> Result<(Option<tempfile::TempDir>, TlsIdentity, TlsIdentity), BoxError> {
    let (tmp, dir) = match &o.certs {
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::tempdir()?;
            let dir = tmp.path().to_owned();
            let ca = create_ca(&dir)?;
            create_node_cert(&ca, "pri", &dir)?;
            create_node_cert(&ca, "sec", &dir)?;
            (Some(tmp), dir)
        }
    };
    let load = |n: &str| {
        TlsIdentity::load(
            &dir.join(format!("{n}.pem")),
            &dir.join(format!("{n}.key")),
            &dir.join("ca.pem"),
            None,
        )
    };
    Ok((tmp, load("pri")?, load("sec")?))
}

async fn one_rep(
    o: &Opts,
    pri: &TlsIdentity,
    sec: &TlsIdentity,
    tuning: &QuicTuning,
) -> Result<String, BoxError> {
    let total = o.mib << 20;
    let chunk_len = o.chunk_kib << 10;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server_ep = QuicEndpoint::bind_with_configs(
        loopback,
        sec,
        tuning,
        transport_of(o, tuning)?,
        endpoint_of(o, tuning)?,
    )?;
    let addr = server_ep.local_addr()?;
    let framed = o.framed;
    let server = tokio::spawn(async move {
        let s = server_ep.accept().await?;
        let mut received = 0u64;
        let (mut send, mut recv) = (s.send, s.recv);
        if framed {
            let mut f = FramedConn::new(recv, send, Limits::default());
            loop {
                let ops = match f.recv().await? {
                    Message::SyncOps { ops } => ops,
                    other => return Err(format!("unexpected {other:?}").into()),
                };
                received += ops.iter().map(|op| op.data.len() as u64).sum::<u64>();
                if ops.iter().any(|op| op.kind == SyncOpKind::End) {
                    break;
                }
            }
            f.send(&Message::FlushAck { lsn: received }).await?;
            (recv, send) = f.into_parts();
        } else {
            while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
                received += c.bytes.len() as u64;
            }
            send.write_all(&received.to_le_bytes()).await?;
        }
        send.finish()?;
        let _ = s.connection.closed().await;
        drop(recv);
        server_ep.wait_idle().await;
        Ok::<u64, BoxError>(received)
    });

    let client_ep = QuicEndpoint::bind_with_configs(
        loopback,
        pri,
        tuning,
        transport_of(o, tuning)?,
        endpoint_of(o, tuning)?,
    )?;
    let s = client_ep.connect(addr, "sec").await?;
    let conn = s.connection.clone();
    let payload = Bytes::from(vec![0x5au8; chunk_len]);
    let n_chunks = total.div_ceil(chunk_len);
    let start = Instant::now();
    let acked = if o.framed {
        let mut f = FramedConn::new(s.recv, s.send, Limits::default());
        let digest = *blake3::hash(&payload).as_bytes();
        let op = |seq: usize, kind, offset: usize, data: Bytes, blake3| SyncOp {
            seq: seq as u64 + 1,
            kind,
            offset: offset as u64,
            len: data.len() as u64,
            data,
            blake3,
        };
        for i in 0..n_chunks {
            let data = op(i, SyncOpKind::Data, i * chunk_len, payload.clone(), digest);
            f.write_message(&Message::SyncOps { ops: vec![data] })
                .await?;
        }
        let end = op(n_chunks, SyncOpKind::End, 0, Bytes::new(), [0; 32]);
        f.send(&Message::SyncOps { ops: vec![end] }).await?;
        match f.recv().await? {
            Message::FlushAck { lsn } => lsn,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    } else {
        let (mut send, mut recv) = (s.send, s.recv);
        for _ in 0..n_chunks {
            send.write_chunk(payload.clone()).await?;
        }
        send.finish()?;
        let mut ack = [0u8; 8];
        recv.read_exact(&mut ack).await?;
        u64::from_le_bytes(ack)
    };
    let secs = start.elapsed().as_secs_f64();
    let sent = (n_chunks * chunk_len) as u64;
    if acked != sent {
        return Err(format!("server counted {acked} bytes, sent {sent}").into());
    }
    let stats = conn.stats();
    conn.close(VarInt::from_u32(0), b"done");
    let got = server.await??;
    client_ep.wait_idle().await;
    if got != sent {
        return Err(format!("server received {got}, sent {sent}").into());
    }
    let bufs = client_ep.udp_buffer_sizes();
    Ok(format!(
        "quic_bulk mode={} mib={} chunk_kib={} secs={:.3} MBps={:.1} lost_packets={} sent_packets={} \
         congestion_events={} mtu={} rtt_us={} cwnd={} udp_sndbuf={} udp_rcvbuf={}",
        if o.framed { "framed" } else { "raw" },
        o.mib,
        o.chunk_kib,
        secs,
        sent as f64 / 1e6 / secs,
        stats.path.lost_packets,
        stats.path.sent_packets,
        stats.path.congestion_events,
        stats.path.current_mtu,
        stats.path.rtt.as_micros(),
        stats.path.cwnd,
        bufs.send_bytes,
        bufs.recv_bytes,
    ))
}

fn main() -> Result<(), BoxError> {
    let o = parse_args()?;
    let (_tmp, pri, sec) = identities(&o)?;
    let tuning = tuning_of(&o);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        for _ in 0..o.reps {
            println!("{}", one_rep(&o, &pri, &sec, &tuning).await?);
        }
        Ok(())
    })
}
