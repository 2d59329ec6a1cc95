//! Real TLS over TCP and real QUIC on loopback, with certificates from `cert`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use transport::{
    connect_tcp, create_ca, create_node_cert, FramedConn, QuicEndpoint, QuicTuning, TcpTlsListener,
    TlsIdentity, TransportError,
};
use wire::{
    ByeCode, DataState, Hello, Limits, LineageEntry, Message, RecordKind, Role, SyncOp, SyncOpKind,
    WireError, WireRecord,
};

const STEP: Duration = Duration::from_secs(20);

struct Pki {
    _dir: tempfile::TempDir,
    a: TlsIdentity,
    b: TlsIdentity,
    /// Signed by a different CA, but trusting ours.
    foreign: TlsIdentity,
    ca_pem: std::path::PathBuf,
    dir: std::path::PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = create_ca(&dir.path().join("ca")).expect("ca");
    let other_ca = create_ca(&dir.path().join("other-ca")).expect("other ca");
    let na = create_node_cert(&ca, "node-a", &dir.path().join("a")).expect("a");
    let nb = create_node_cert(&ca, "node-b", &dir.path().join("b")).expect("b");
    let nx = create_node_cert(&other_ca, "node-x", &dir.path().join("x")).expect("x");
    let load = |p: &transport::NodeCertPaths, ca: &Path| {
        TlsIdentity::load(&p.cert_pem, &p.key_pem, ca, None).expect("load identity")
    };
    Pki {
        a: load(&na, &ca.cert_pem),
        b: load(&nb, &ca.cert_pem),
        foreign: load(&nx, &ca.cert_pem),
        ca_pem: ca.cert_pem.clone(),
        dir: dir.path().to_owned(),
        _dir: dir,
    }
}

fn with_allowed(p: &Pki, node: &str, allowed: &[&str]) -> TlsIdentity {
    // Node files live in a directory named after the node's last letter ("node-a" -> "a").
    let d = p.dir.join(&node[node.len() - 1..]);
    TlsIdentity::load(
        &d.join(format!("{node}.pem")),
        &d.join(format!("{node}.key")),
        &p.ca_pem,
        Some(allowed.iter().map(|s| s.to_string()).collect()),
    )
    .expect("load identity")
}

fn sample_messages() -> Vec<Message> {
    let big = Bytes::from((0..(1 << 20)).map(|i| i as u8).collect::<Vec<u8>>());
    vec![
        Message::Hello(Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            node_id: "node-a".into(),
            volume_uuid: uuid_like(),
            volume_size_bytes: 1 << 30,
            region_bytes: 1 << 20,
            lineage: vec![LineageEntry {
                generation_id: 1,
                start_lsn: 0,
                unknown_before: false,
            }],
            role: Role::Primary,
            durable_lsn: 0,
            data_state: DataState::Consistent,
            overwrite: false,
            empty: false,
            discarding: false,
            fenced: false,
        }),
        Message::Records {
            first_lsn: 1,
            records: vec![WireRecord {
                lsn: 1,
                generation: 1,
                kind: RecordKind::Write,
                offset: 0,
                len: big.len() as u64,
                payload: big.clone(),
                blake3: [9; 32],
            }],
        },
        Message::Flush { lsn: 1 },
        Message::Ack {
            durable_lsn: 1,
            journaled_lsn: Some(1),
        },
        Message::SyncOps {
            ops: vec![SyncOp {
                seq: 1,
                kind: SyncOpKind::Data,
                offset: 4096,
                len: big.len() as u64,
                blake3: *blake3::hash(&big).as_bytes(),
                data: big,
            }],
        },
        Message::Bye {
            code: ByeCode::Shutdown,
            text: "done".into(),
        },
    ]
}

fn uuid_like() -> uuid::Uuid {
    uuid::Uuid::from_u128(42)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

// ---------------------------------------------------------------- TCP + TLS

#[tokio::test]
async fn tcp_tls_roundtrip_of_wire_messages() {
    let p = pki();
    let listener = TcpTlsListener::bind(loopback(), &p.b).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let conn = listener.accept().await.expect("accept");
        assert_eq!(conn.peer_name, "node-a");
        let mut f = FramedConn::from_stream(conn.stream, Limits::default());
        let mut got = Vec::new();
        loop {
            match f.recv().await {
                Ok(m) => {
                    f.send(&m).await.expect("echo");
                    got.push(m);
                }
                Err(TransportError::Closed) => break,
                Err(e) => panic!("server recv: {e}"),
            }
        }
        f.shutdown().await.expect("shutdown");
        got
    });
    let conn = timeout(STEP, connect_tcp(addr, "node-b", &p.a))
        .await
        .expect("timeout")
        .expect("connect");
    assert_eq!(conn.peer_name, "node-b");
    let mut f = FramedConn::from_stream(conn.stream, Limits::default());
    let msgs = sample_messages();
    for m in &msgs {
        f.send(m).await.expect("send");
        let echoed = timeout(STEP, f.recv())
            .await
            .expect("timeout")
            .expect("recv");
        assert_eq!(&echoed, m);
    }
    f.shutdown().await.expect("shutdown");
    assert!(matches!(f.recv().await, Err(TransportError::Closed)));
    assert_eq!(server.await.expect("server"), msgs);
}

/// Run a TCP handshake where the server uses `server_id` and the client `client_id`;
/// return (server accept result, client result of connect + one exchange).
async fn tcp_attempt(
    server_id: &TlsIdentity,
    client_id: &TlsIdentity,
    server_name: &str,
) -> (Result<String, TransportError>, Result<(), TransportError>) {
    let listener = TcpTlsListener::bind(loopback(), server_id)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let conn = listener.accept().await?;
        let name = conn.peer_name.clone();
        let mut f = FramedConn::from_stream(conn.stream, Limits::default());
        let m = f.recv().await?;
        f.send(&m).await?;
        Ok(name)
    });
    let client = async {
        let conn = connect_tcp(addr, server_name, client_id).await?;
        let mut f = FramedConn::from_stream(conn.stream, Limits::default());
        f.send(&Message::Ping { nonce: 1 }).await?;
        f.recv().await.map(|_| ())
    };
    let client = timeout(STEP, client).await.expect("client timeout");
    let server = timeout(STEP, server)
        .await
        .expect("server timeout")
        .expect("join");
    (server, client)
}

#[tokio::test]
async fn tcp_client_from_another_ca_is_refused() {
    let p = pki();
    let (server, client) = tcp_attempt(&p.b, &p.foreign, "node-b").await;
    let err = server.expect_err("server must refuse");
    assert!(matches!(err, TransportError::UnknownCa { .. }), "{err}");
    assert!(err.to_string().contains("unknown CA"), "{err}");
    let err = client.expect_err("client must fail");
    assert!(
        matches!(&err, TransportError::RejectedByPeer { alert } if alert.contains("UnknownCA")),
        "{err}"
    );
}

#[tokio::test]
async fn tcp_server_from_another_ca_is_refused_by_client() {
    let p = pki();
    let (server, client) = tcp_attempt(&p.foreign, &p.a, "node-x").await;
    let err = client.expect_err("client must refuse");
    assert!(matches!(err, TransportError::UnknownCa { .. }), "{err}");
    assert!(server.is_err());
}

#[tokio::test]
async fn tcp_client_without_certificate_is_refused() {
    let p = pki();
    let listener = TcpTlsListener::bind(loopback(), &p.b).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { listener.accept().await.map(|c| c.peer_name) });

    let cfg = no_cert_client_config(&p.ca_pem);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("node-b").expect("name");
    let client = async {
        let s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{e}"))?;
        let mut f = FramedConn::from_stream(s, Limits::default());
        f.send(&Message::Ping { nonce: 1 })
            .await
            .map_err(|e| e.to_string())?;
        f.recv().await.map_err(|e| e.to_string()).map(|_| ())
    };
    let client = timeout(STEP, client).await.expect("timeout");
    let err = timeout(STEP, server)
        .await
        .expect("timeout")
        .expect("join")
        .expect_err("server must refuse");
    assert!(matches!(err, TransportError::NoClientCert), "{err}");
    assert!(err.to_string().contains("no client certificate"), "{err}");
    let cerr = client.expect_err("client must fail");
    assert!(cerr.contains("CertificateRequired"), "{cerr}");
}

#[tokio::test]
async fn tcp_disallowed_name_is_refused_and_allowed_name_accepted() {
    let p = pki();
    let strict = with_allowed(&p, "node-b", &["node-c"]);
    let (server, client) = tcp_attempt(&strict, &p.a, "node-b").await;
    let err = server.expect_err("server must refuse");
    match &err {
        TransportError::NameNotAllowed { presented, allowed } => {
            assert!(presented.contains(&"node-a".to_string()), "{err}");
            assert_eq!(allowed, &vec!["node-c".to_string()]);
        }
        other => panic!("expected NameNotAllowed, got {other}"),
    }
    assert!(client.is_err());

    // Client-side pinning of the server's name.
    let picky_client = with_allowed(&p, "node-a", &["node-z"]);
    let (_, client) = tcp_attempt(&p.b, &picky_client, "node-b").await;
    assert!(
        matches!(client, Err(TransportError::NameNotAllowed { .. })),
        "{client:?}"
    );

    let ok = with_allowed(&p, "node-b", &["node-a"]);
    let (server, client) = tcp_attempt(&ok, &p.a, "node-b").await;
    assert_eq!(server.expect("accepted"), "node-a");
    client.expect("client ok");
}

#[tokio::test]
async fn tcp_hostile_peer_sending_garbage_gets_an_error() {
    let p = pki();
    let listener = TcpTlsListener::bind(loopback(), &p.b).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    for (garbage, want) in hostile_inputs() {
        let server = async {
            let conn = listener.accept().await.expect("accept");
            let mut f = FramedConn::from_stream(conn.stream, Limits::default());
            f.recv().await
        };
        let client = async {
            let mut conn = connect_tcp(addr, "node-b", &p.a).await.expect("connect");
            conn.stream.write_all(&garbage).await.expect("write");
            conn.stream.shutdown().await.expect("shutdown");
            conn
        };
        let (res, _conn) = timeout(STEP, async { tokio::join!(server, client) })
            .await
            .expect("timeout");
        check_hostile(res, want);
    }
}

#[derive(Debug, Clone, Copy)]
enum Want {
    BadMagic,
    TooLarge,
    Checksum,
    Truncated,
}

fn hostile_inputs() -> Vec<(Vec<u8>, Want)> {
    let good = wire::encode_frame(&Message::Ping { nonce: 5 }, &Limits::default())
        .expect("encode")
        .to_bytes()
        .to_vec();
    let mut huge = good.clone();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    vec![
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Want::BadMagic,
        ),
        (huge, Want::TooLarge),
        (flipped, Want::Checksum),
        (good[..good.len() - 3].to_vec(), Want::Truncated),
    ]
}

fn check_hostile(res: Result<Message, TransportError>, want: Want) {
    let ok = matches!(
        (&res, want),
        (
            Err(TransportError::Wire(WireError::BadMagic { .. })),
            Want::BadMagic
        ) | (
            Err(TransportError::Wire(WireError::FrameTooLarge { .. })),
            Want::TooLarge
        ) | (
            Err(TransportError::Wire(WireError::BadChecksum { .. })),
            Want::Checksum
        ) | (
            Err(TransportError::Wire(WireError::Truncated { .. })),
            Want::Truncated
        )
    );
    assert!(ok, "wanted {want:?}, got {res:?}");
}

fn no_cert_client_config(ca_pem: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![transport::ALPN.to_vec()];
    cfg
}

// ---------------------------------------------------------------- QUIC

fn quic_endpoint(id: &TlsIdentity) -> QuicEndpoint {
    QuicEndpoint::bind(loopback(), id, &QuicTuning::default()).expect("bind quic")
}

#[tokio::test]
async fn quic_roundtrip_of_wire_messages() {
    let p = pki();
    let server_ep = quic_endpoint(&p.b);
    let addr = server_ep.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let s = server_ep.accept().await.expect("accept");
        assert_eq!(s.peer_name, "node-a");
        let mut f = FramedConn::new(s.recv, s.send, Limits::default());
        let mut got = Vec::new();
        loop {
            match f.recv().await {
                Ok(m) => {
                    f.send(&m).await.expect("echo");
                    got.push(m);
                }
                Err(TransportError::Closed) => break,
                Err(e) => panic!("server recv: {e}"),
            }
        }
        f.shutdown().await.expect("finish");
        // Keep the connection until the client has read everything.
        let _ = timeout(STEP, s.connection.closed()).await;
        got
    });
    let client_ep = quic_endpoint(&p.a);
    let s = timeout(STEP, client_ep.connect(addr, "node-b"))
        .await
        .expect("timeout")
        .expect("connect");
    assert_eq!(s.peer_name, "node-b");
    let conn = s.connection.clone();
    let mut f = FramedConn::new(s.recv, s.send, Limits::default());
    let msgs = sample_messages();
    for m in &msgs {
        f.send(m).await.expect("send");
        let echoed = timeout(STEP, f.recv())
            .await
            .expect("timeout")
            .expect("recv");
        assert_eq!(&echoed, m);
    }
    f.shutdown().await.expect("finish");
    assert!(matches!(
        timeout(STEP, f.recv()).await.expect("timeout"),
        Err(TransportError::Closed)
    ));
    conn.close(0u32.into(), b"done");
    assert_eq!(server.await.expect("server"), msgs);
}

async fn quic_attempt(
    server_id: &TlsIdentity,
    client_id: &TlsIdentity,
    server_name: &str,
) -> (Result<String, TransportError>, Result<(), TransportError>) {
    let server_ep = quic_endpoint(server_id);
    let addr = server_ep.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let s = server_ep.accept().await?;
        let name = s.peer_name.clone();
        let mut f = FramedConn::new(s.recv, s.send, Limits::default());
        let m = f.recv().await?;
        f.send(&m).await?;
        let _ = timeout(STEP, s.connection.closed()).await;
        Ok(name)
    });
    let client_ep = quic_endpoint(client_id);
    let client = async {
        let s = client_ep.connect(addr, server_name).await?;
        let mut f = FramedConn::new(s.recv, s.send, Limits::default());
        f.send(&Message::Ping { nonce: 1 }).await?;
        let r = f.recv().await.map(|_| ());
        s.connection.close(0u32.into(), b"done");
        r
    };
    let client = timeout(STEP, client).await.expect("client timeout");
    let server = timeout(STEP, server)
        .await
        .expect("server timeout")
        .expect("join");
    (server, client)
}

#[tokio::test]
async fn quic_client_from_another_ca_is_refused() {
    let p = pki();
    let (server, client) = quic_attempt(&p.b, &p.foreign, "node-b").await;
    let err = server.expect_err("server must refuse");
    assert!(matches!(err, TransportError::UnknownCa { .. }), "{err}");
    let err = client.expect_err("client must fail");
    assert!(
        matches!(&err, TransportError::RejectedByPeer { alert } if alert.contains("UnknownCA")),
        "{err}"
    );
}

#[tokio::test]
async fn quic_server_from_another_ca_is_refused_by_client() {
    let p = pki();
    let (_server, client) = quic_attempt(&p.foreign, &p.a, "node-x").await;
    let err = client.expect_err("client must refuse");
    assert!(matches!(err, TransportError::UnknownCa { .. }), "{err}");
}

#[tokio::test]
async fn quic_client_without_certificate_is_refused() {
    let p = pki();
    let server_ep = quic_endpoint(&p.b);
    let addr = server_ep.local_addr().expect("addr");
    let server = tokio::spawn(async move { server_ep.accept().await.map(|s| s.peer_name) });

    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(no_cert_client_config(&p.ca_pem))
            .expect("quic client config");
    let mut ep = quinn::Endpoint::client(loopback()).expect("client endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let client = async {
        let conn = ep
            .connect(addr, "node-b")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 8];
        recv.read(&mut buf)
            .await
            .map_err(|e| e.to_string())
            .map(|_| ())
    };
    let client = timeout(STEP, client).await.expect("timeout");
    let err = timeout(STEP, server)
        .await
        .expect("timeout")
        .expect("join")
        .expect_err("server must refuse");
    assert!(matches!(err, TransportError::NoClientCert), "{err}");
    assert!(client.is_err());
}

#[tokio::test]
async fn quic_disallowed_name_is_refused() {
    let p = pki();
    let strict = with_allowed(&p, "node-b", &["node-c"]);
    let (server, client) = quic_attempt(&strict, &p.a, "node-b").await;
    let err = server.expect_err("server must refuse");
    match &err {
        TransportError::NameNotAllowed { presented, allowed } => {
            assert!(presented.contains(&"node-a".to_string()), "{err}");
            assert_eq!(allowed, &vec!["node-c".to_string()]);
        }
        other => panic!("expected NameNotAllowed, got {other}"),
    }
    assert!(client.is_err());

    let ok = with_allowed(&p, "node-b", &["node-a"]);
    let (server, client) = quic_attempt(&ok, &p.a, "node-b").await;
    assert_eq!(server.expect("accepted"), "node-a");
    client.expect("client ok");
}

#[tokio::test]
async fn quic_hostile_peer_sending_garbage_gets_an_error() {
    let p = pki();
    let server_ep = quic_endpoint(&p.b);
    let addr = server_ep.local_addr().expect("addr");
    let client_ep = quic_endpoint(&p.a);
    for (garbage, want) in hostile_inputs() {
        let server = async {
            let s = server_ep.accept().await.expect("accept");
            let mut f = FramedConn::new(s.recv, s.send, Limits::default());
            let r = f.recv().await;
            s.connection.close(1u32.into(), b"protocol error");
            r
        };
        let client = async {
            let mut s = client_ep.connect(addr, "node-b").await.expect("connect");
            s.send.write_all(&garbage).await.expect("write");
            s.send.finish().expect("finish");
            let _ = s.connection.closed().await;
        };
        let (res, ()) = timeout(STEP, async { tokio::join!(server, client) })
            .await
            .expect("timeout");
        check_hostile(res, want);
    }
}

/// Not a benchmark: shows the order of magnitude of QUIC bulk transfer on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_bulk_throughput_256_mib() {
    const TOTAL_BYTES: usize = 256 * 1024 * 1024;
    const CHUNK_BYTES: usize = 1024 * 1024;
    let p = pki();
    let server_ep = quic_endpoint(&p.b);
    let addr = server_ep.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let s = server_ep.accept().await.expect("accept");
        let mut f = FramedConn::new(s.recv, s.send, Limits::default());
        let mut received = 0usize;
        let mut done = false;
        loop {
            match f.recv().await {
                Ok(Message::SyncOps { ops }) => {
                    for op in ops {
                        match op.kind {
                            SyncOpKind::End => done = true,
                            _ => received += op.data.len(),
                        }
                    }
                    if done {
                        break;
                    }
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("server recv: {e}"),
            }
        }
        f.send(&Message::FlushAck {
            lsn: received as u64,
        })
        .await
        .expect("ack");
        let _ = timeout(STEP, s.connection.closed()).await;
        received
    });
    let client_ep = quic_endpoint(&p.a);
    let s = client_ep.connect(addr, "node-b").await.expect("connect");
    let conn = s.connection.clone();
    let mut f = FramedConn::new(s.recv, s.send, Limits::default());
    let chunk = Bytes::from(vec![0x5au8; CHUNK_BYTES]);
    let chunk_digest = *blake3::hash(&chunk).as_bytes();
    let start = Instant::now();
    for i in 0..TOTAL_BYTES / CHUNK_BYTES {
        f.write_message(&Message::SyncOps {
            ops: vec![SyncOp {
                seq: i as u64 + 1,
                kind: SyncOpKind::Data,
                offset: (i * CHUNK_BYTES) as u64,
                len: CHUNK_BYTES as u64,
                data: chunk.clone(),
                blake3: chunk_digest,
            }],
        })
        .await
        .expect("send");
    }
    f.send(&Message::SyncOps {
        ops: vec![SyncOp {
            seq: (TOTAL_BYTES / CHUNK_BYTES) as u64 + 1,
            kind: SyncOpKind::End,
            offset: 0,
            len: 0,
            data: Bytes::new(),
            blake3: [0; 32],
        }],
    })
    .await
    .expect("end");
    let ack = timeout(Duration::from_secs(300), f.recv())
        .await
        .expect("timeout")
        .expect("ack");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        ack,
        Message::FlushAck {
            lsn: TOTAL_BYTES as u64
        }
    );
    conn.close(0u32.into(), b"done");
    assert_eq!(server.await.expect("server"), TOTAL_BYTES);
    let stats = conn.stats();
    println!(
        "QUIC bulk: {} MiB in {:.2} s = {:.1} MB/s (rtt {:?}, lost packets {}, udp buffers {:?}, {} build)",
        TOTAL_BYTES >> 20,
        secs,
        TOTAL_BYTES as f64 / 1e6 / secs,
        conn.rtt(),
        stats.path.lost_packets,
        client_ep.udp_buffer_sizes(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
}

// ---------------------------------------------------------------- cert

#[test]
fn cert_files_have_safe_modes_and_are_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = create_ca(dir.path()).expect("ca");
    let node = create_node_cert(&ca, "node-a", dir.path()).expect("node");
    for key in [&ca.key_pem, &node.key_pem] {
        let mode = std::fs::metadata(key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    assert!(matches!(
        create_ca(dir.path()),
        Err(TransportError::File {
            action: "create",
            ..
        })
    ));
    assert!(matches!(
        create_node_cert(&ca, "node-a", dir.path()),
        Err(TransportError::File { .. })
    ));
    assert!(matches!(
        create_node_cert(&ca, "../evil", dir.path()),
        Err(TransportError::InvalidServerName(_))
    ));
    let id = TlsIdentity::load(&node.cert_pem, &node.key_pem, &ca.cert_pem, None).expect("load");
    assert_eq!(id.name(), "node-a");
    // Key of another node: refused at load time, not at first handshake.
    let other = create_node_cert(&ca, "node-b", dir.path()).expect("node-b");
    let err = TlsIdentity::load(&node.cert_pem, &other.key_pem, &ca.cert_pem, None)
        .expect_err("mismatched key");
    assert!(matches!(err, TransportError::TlsConfig(_)), "{err}");
}
