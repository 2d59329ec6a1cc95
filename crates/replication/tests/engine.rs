//! The engine end to end: real TLS over TCP and real QUIC on 127.0.0.1,
//! journals and volumes in temp dirs, certificates from `transport::cert`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use journal::JournalConfig;
use rand::{Rng, SeedableRng};
use replication::{
    Change, PeerConfig, PeerMode, Primary, PrimaryConfig, Secondary, SecondaryConfig, Store,
    StoreConfig, SyncPeerLossPolicy, TransportKind, VolumeStatus,
};
use transport::{create_ca, create_node_cert, CaPaths, TlsIdentity};
use uuid::Uuid;
use volume::{Volume, VolumeOptions};

const VOL_BYTES: u64 = 16 << 20;
const REGION_BYTES: u64 = 64 << 10;

struct Pki {
    _dir: tempfile::TempDir,
    ca: CaPaths,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(&dir.path().join("ca")).unwrap();
        Pki {
            ca,
            dir: dir.path().to_owned(),
            _dir: dir,
        }
    }
    fn identity(&self, name: &str) -> Arc<TlsIdentity> {
        let d = self.dir.join(name);
        let (cert, key) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
        if !cert.exists() {
            create_node_cert(&self.ca, name, &d).unwrap();
        }
        Arc::new(TlsIdentity::load(&cert, &key, &self.ca.cert_pem, None).unwrap())
    }
    /// A certificate from another CA that trusts ours (so only we refuse).
    fn foreign_identity(&self, name: &str) -> Arc<TlsIdentity> {
        let other = create_ca(&self.dir.join(format!("other-ca-{name}"))).unwrap();
        let p = create_node_cert(&other, name, &self.dir.join(format!("x-{name}"))).unwrap();
        Arc::new(TlsIdentity::load(&p.cert_pem, &p.key_pem, &self.ca.cert_pem, None).unwrap())
    }
}

fn journal_cfg(dir: &Path) -> JournalConfig {
    let mut j = JournalConfig::new(dir);
    j.segment_bytes = 1 << 20;
    j.capacity_bytes = 64 << 20;
    j.max_record_payload_bytes = 256 << 10;
    j.max_pending_bytes = 8 << 20;
    j.memory_cache_bytes = 8 << 20;
    j.region_bytes = REGION_BYTES;
    j.pressure_bytes = 48 << 20;
    j
}

async fn open_store_with(dir: &Path, uuid: Uuid, size: u64, j: JournalConfig) -> Arc<Store> {
    let volume = Volume::open(
        &dir.join("volume.img"),
        VolumeOptions {
            size_bytes: Some(size),
            create: true,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = StoreConfig {
        journal: j,
        checkpoint_interval: Duration::from_millis(200),
        volume_uuid: Some(uuid),
    };
    Store::open(volume, cfg).await.unwrap().0
}

async fn open_store(dir: &Path, uuid: Uuid) -> Arc<Store> {
    open_store_with(dir, uuid, VOL_BYTES, journal_cfg(&dir.join("journal"))).await
}

fn peer(name: &str, mode: PeerMode, transport: TransportKind, address: SocketAddr) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        mode,
        transport,
        address,
        max_inflight_bytes: 4 << 20,
        max_batch_bytes: 1 << 20,
    }
}

fn primary_cfg(pki: &Pki, peers: Vec<PeerConfig>) -> PrimaryConfig {
    let mut c = PrimaryConfig::new("node-p", pki.identity("node-p"), peers);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(400);
    c.keepalive_interval = Duration::from_millis(200);
    c.peer_timeout = Duration::from_secs(3);
    c.drain_timeout = Duration::from_secs(5);
    c
}

fn secondary_cfg(
    id: Arc<TlsIdentity>,
    name: &str,
    tcp: Option<SocketAddr>,
    quic: Option<SocketAddr>,
) -> SecondaryConfig {
    let mut c = SecondaryConfig::new(name, id);
    c.listen_tcp = tcp;
    c.listen_quic = quic;
    c.keepalive_interval = Duration::from_millis(200);
    c.peer_timeout = Duration::from_secs(3);
    c
}

fn any_port() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

/// Random writes, trims and zeroes; a flush every 16 changes.
async fn workload(p: &Primary, rng: &mut rand::rngs::StdRng, n: usize) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let off = rng.gen_range(0..(VOL_BYTES / 512 - 256)) * 512;
        let change = match rng.gen_range(0..10) {
            0 => Change::Trim {
                offset: off,
                length: 512 * rng.gen_range(1..64),
            },
            1 => Change::Zeroes {
                offset: off,
                length: 512 * rng.gen_range(1..64),
                may_trim: false,
                fast_only: false,
            },
            _ => {
                let len = 512 * rng.gen_range(1..128);
                let mut data = vec![0u8; len];
                rng.fill(&mut data[..]);
                Change::Write {
                    offset: off,
                    data: Bytes::from(data),
                }
            }
        };
        last = p.change(change, i % 50 == 49).await.unwrap();
        if i % 16 == 15 {
            p.flush().await.unwrap();
        }
    }
    last
}

fn digest(dir: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(dir.join("volume.img")).unwrap())
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peer_state(s: &VolumeStatus, name: &str) -> replication::PeerStatus {
    s.peers.iter().find(|p| p.name == name).unwrap().clone()
}

async fn quiesce(p: &Primary, secs: &[&Arc<Store>]) {
    let written = p.store().journal().written_lsn();
    wait_for(
        "replicas to apply everything",
        Duration::from_secs(30),
        || secs.iter().all(|s| s.journal().applied_lsn() >= written),
    )
    .await;
    wait_for("primary to see every ack", Duration::from_secs(10), || {
        p.status().peers.iter().all(|x| x.acked_lsn >= written)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_tcp_and_async_quic_peers_end_byte_identical() {
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, da, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (sp, sa, sb) = (
        open_store(dp.path(), uuid).await,
        open_store(da.path(), uuid).await,
        open_store(db.path(), uuid).await,
    );
    assert_eq!(
        sp.journal().lineage(),
        sa.journal().lineage(),
        "same lineage on fresh nodes"
    );
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(pki.identity("node-a"), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let b = Secondary::start(
        sb.clone(),
        secondary_cfg(pki.identity("node-b"), "node-b", None, any_port()),
    )
    .await
    .unwrap();
    let cfg = primary_cfg(
        &pki,
        vec![
            peer(
                "node-a",
                PeerMode::Sync,
                TransportKind::Tcp,
                a.local_addrs().0.unwrap(),
            ),
            peer(
                "node-b",
                PeerMode::Async,
                TransportKind::Quic,
                b.local_addrs().1.unwrap(),
            ),
        ],
    );
    // Baseline latency without peers, on a separate store.
    let dn = tempfile::tempdir().unwrap();
    let solo = Primary::start(open_store(dn.path(), uuid).await, primary_cfg(&pki, vec![]))
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..200u64 {
        solo.change(
            Change::Write {
                offset: i * 4096,
                data: Bytes::from(vec![1u8; 4096]),
            },
            false,
        )
        .await
        .unwrap();
    }
    let solo_us = t.elapsed().as_micros() as f64 / 200.0;
    solo.shutdown().await;

    let p = Primary::start(sp.clone(), cfg).await.unwrap();
    wait_for("sync peer connected", Duration::from_secs(10), || {
        peer_state(&p.status(), "node-a").state == "connected"
    })
    .await;
    let t = Instant::now();
    for i in 0..200u64 {
        p.change(
            Change::Write {
                offset: i * 4096,
                data: Bytes::from(vec![1u8; 4096]),
            },
            false,
        )
        .await
        .unwrap();
    }
    let sync_us = t.elapsed().as_micros() as f64 / 200.0;
    eprintln!("4 KiB write latency: no peer {solo_us:.0} µs, sync TCP peer {sync_us:.0} µs");

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    workload(&p, &mut rng, 600).await;
    // Sync guarantee: after flush, the sync peer's journal is durable there.
    let lsn = p
        .change(
            Change::Write {
                offset: 0,
                data: Bytes::from(vec![9u8; 8192]),
            },
            false,
        )
        .await
        .unwrap();
    assert!(
        sa.journal().written_lsn() >= lsn,
        "sync peer journaled before change() returned"
    );
    p.flush().await.unwrap();
    assert!(
        sa.journal().durable_lsn() >= lsn,
        "sync peer durable after flush"
    );

    quiesce(&p, &[&sa, &sb]).await;
    let st = p.status();
    for peer in &st.peers {
        assert_eq!(peer.lag_records, 0, "{peer:?}");
        assert_eq!(peer.lag_bytes, 0, "{peer:?}");
        assert_eq!(peer.lag_seconds, 0.0, "{peer:?}");
        assert_eq!(peer.state, "connected");
    }
    let json = serde_json_like(&st);
    assert!(json.contains("node-b"));
    p.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    let dpp = digest(dp.path());
    assert_eq!(dpp, digest(da.path()), "sync replica differs");
    assert_eq!(dpp, digest(db.path()), "async replica differs");
}

fn serde_json_like(st: &VolumeStatus) -> String {
    format!("{st:?}")
}
