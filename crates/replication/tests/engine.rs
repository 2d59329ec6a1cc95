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
    ConnectionState, DiskState, PeerConfig, PeerMode, PeerStatus, Primary, PrimaryConfig,
    Secondary, SecondaryConfig, StartMode, SyncGate, SyncPeerLossPolicy, TransportKind,
    VolumeStatus,
};
use store::{Change, RecoveryReport, Store, StoreConfig};
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

async fn open_store_with(
    dir: &Path,
    uuid: Uuid,
    size: u64,
    j: JournalConfig,
) -> (Arc<Store>, RecoveryReport) {
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
        activity: Default::default(),
    };
    Store::open(volume, cfg).await.unwrap()
}

/// A store and what opening it found (a primary needs both).
async fn open_primary_store(dir: &Path, uuid: Uuid) -> (Arc<Store>, RecoveryReport) {
    open_store_with(dir, uuid, VOL_BYTES, journal_cfg(&dir.join("journal"))).await
}

async fn open_store(dir: &Path, uuid: Uuid) -> Arc<Store> {
    open_primary_store(dir, uuid).await.0
}

fn peer(name: &str, mode: PeerMode, transport: TransportKind, address: SocketAddr) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        mode,
        transport,
        address,
        max_inflight_bytes: 4 << 20,
        max_batch_bytes: 1 << 20,
        max_ship_delay: Duration::from_millis(10),
        rpo_target: None,
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

/// The two volumes are byte-identical; if not, names the differing
/// regions.
fn assert_same_volume(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a.join("volume.img")).unwrap(),
        std::fs::read(b.join("volume.img")).unwrap(),
    );
    assert_eq!(x.len(), y.len(), "volume sizes differ");
    let differing: Vec<usize> = x
        .chunks(REGION_BYTES as usize)
        .zip(y.chunks(REGION_BYTES as usize))
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, _)| i)
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} regions differ, first ones: {:?}",
        differing.len(),
        x.len() / REGION_BYTES as usize,
        &differing[..differing.len().min(16)]
    );
}

/// Engine logs in the test's output (`RUST_LOG=info` to see them).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peer_state(s: &VolumeStatus, name: &str) -> PeerStatus {
    s.peer(name).unwrap().clone()
}

/// Connected, and its copy proved to be the primary's (no job running).
fn up_to_date(st: &PeerStatus) -> bool {
    st.connection == ConnectionState::Connected
        && st.disk == DiskState::UpToDate
        && st.job.is_none()
}

async fn wait_up_to_date(p: &Primary, peer: &str, timeout: Duration) {
    wait_for(&format!("{peer} up to date"), timeout, || {
        up_to_date(&peer_state(&p.status(), peer))
    })
    .await;
}

async fn quiesce(p: &Primary, secs: &[&Arc<Store>]) {
    wait_for("every peer up to date", Duration::from_secs(30), || {
        p.status().peers.iter().all(up_to_date)
    })
    .await;
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
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, da, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let ((sp, rp), sa, sb) = (
        open_primary_store(dp.path(), uuid).await,
        open_store(da.path(), uuid).await,
        open_store(db.path(), uuid).await,
    );
    assert!(
        sp.journal().lineage().is_empty() && sa.journal().lineage().is_empty(),
        "a new journal has no history until a primary starts one"
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
    let (solo_store, solo_report) = open_primary_store(dn.path(), uuid).await;
    let solo = Primary::start(
        solo_store,
        primary_cfg(&pki, vec![]),
        &solo_report,
        StartMode::Continue,
    )
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

    let p = Primary::start(sp.clone(), cfg, &rp, StartMode::Continue)
        .await
        .unwrap();
    let lineage = sp.journal().lineage();
    assert_eq!(lineage.len(), 1, "the primary starts the history");
    assert!(!lineage[0].unknown_before, "the volume was empty");
    // New peers: an initial sync (comparing every region) first.
    wait_up_to_date(&p, "node-a", Duration::from_secs(20)).await;
    assert_eq!(
        sa.journal().lineage(),
        lineage,
        "the peer took the history over"
    );
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
        assert!(up_to_date(peer), "{peer:?}");
        let resync = peer
            .last_resync
            .as_ref()
            .expect("the initial sync is reported");
        assert_eq!(
            resync.bytes_sent, 0,
            "an empty volume ships no data: {resync:?}"
        );
    }
    // What `status --json` prints: the peer states serialize as their names
    // and the whole status reads back unchanged.
    let json = serde_json::to_value(&st).unwrap();
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        assert_eq!(json["peers"][i]["name"], *name, "{json}");
        assert_eq!(json["peers"][i]["connection"], "connected", "{json}");
        assert_eq!(json["peers"][i]["disk"], "up-to-date", "{json}");
    }
    assert_eq!(json["peers"][0]["sync_gate"], "in-sync", "{json}");
    assert_eq!(json["role"], "primary", "{json}");
    let back: VolumeStatus = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    p.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    assert_same_volume(dp.path(), da.path());
    assert_same_volume(dp.path(), db.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_restarted_mid_stream_continues_from_its_lsn() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sp, rp) = open_primary_store(dp.path(), uuid).await;
    let mut sa = open_store(da.path(), uuid).await;
    let ida = pki.identity("node-a");
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(ida.clone(), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let addr = a.local_addrs().0.unwrap();
    let p = Primary::start(
        sp.clone(),
        primary_cfg(
            &pki,
            vec![peer("node-a", PeerMode::Async, TransportKind::Tcp, addr)],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let writer = {
        let p = p.clone();
        tokio::spawn(async move { workload(&p, &mut rng, 1500).await })
    };
    // Restart the secondary twice while the primary writes.
    let mut a = a;
    for _ in 0..2 {
        wait_for(
            "some records on the secondary",
            Duration::from_secs(20),
            || sa.journal().applied_lsn() > 50,
        )
        .await;
        a.shutdown().await;
        drop(a);
        let before = sa.journal().written_lsn();
        drop(sa);
        sa = open_store(da.path(), uuid).await;
        // A clean stop loses nothing the journal had written.
        assert_eq!(
            sa.journal().written_lsn(),
            before,
            "records lost in a restart"
        );
        a = Secondary::start(
            sa.clone(),
            secondary_cfg(ida.clone(), "node-a", Some(addr), None),
        )
        .await
        .unwrap();
        wait_for("the primary to reconnect", Duration::from_secs(20), || {
            a.status().upstream.is_some_and(|u| u.connected)
        })
        .await;
    }
    writer.await.unwrap();
    quiesce(&p, &[&sa]).await;
    p.shutdown().await;
    a.shutdown().await;
    assert_same_volume(dp.path(), da.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_quic_peer_down_never_slows_writes_and_catches_up() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sp, rp) = open_primary_store(dp.path(), uuid).await;
    let sb = open_store(db.path(), uuid).await;
    let idb = pki.identity("node-b");
    let b = Secondary::start(
        sb.clone(),
        secondary_cfg(idb.clone(), "node-b", None, any_port()),
    )
    .await
    .unwrap();
    let addr = b.local_addrs().1.unwrap();
    let p = Primary::start(
        sp.clone(),
        primary_cfg(
            &pki,
            vec![peer("node-b", PeerMode::Async, TransportKind::Quic, addr)],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    let write_4k = |p: Arc<Primary>, n: u64, base: u64| async move {
        let t = Instant::now();
        for i in 0..n {
            let off = ((base + i) * 4096) % (VOL_BYTES - 4096);
            p.change(
                Change::Write {
                    offset: off,
                    data: Bytes::from(vec![(i % 251) as u8; 4096]),
                },
                false,
            )
            .await
            .unwrap();
        }
        t.elapsed().as_micros() as f64 / n as f64
    };
    let up_us = write_4k(p.clone(), 300, 0).await;
    b.shutdown().await;
    drop(b);
    wait_for("peer seen as down", Duration::from_secs(10), || {
        peer_state(&p.status(), "node-b").connection != ConnectionState::Connected
    })
    .await;
    let down_us = write_4k(p.clone(), 300, 300).await;
    eprintln!("async peer: write latency up {up_us:.0} µs, down {down_us:.0} µs");
    assert!(
        down_us < up_us * 3.0 + 500.0,
        "writes slowed by a dead async peer: {down_us} vs {up_us}"
    );
    // Backlog for the catch-up: 32 MiB of 256 KiB writes.
    let big = Bytes::from(vec![7u8; 256 << 10]);
    for i in 0..128u64 {
        p.change(
            Change::Write {
                offset: (i * (256 << 10)) % VOL_BYTES,
                data: big.clone(),
            },
            false,
        )
        .await
        .unwrap();
    }
    p.flush().await.unwrap();
    let st = peer_state(&p.status(), "node-b");
    assert!(st.lag_records >= 128 && st.lag_bytes >= 32 << 20, "{st:?}");
    assert!(st.lag_seconds > 0.0);
    let b = Secondary::start(sb.clone(), secondary_cfg(idb, "node-b", None, Some(addr)))
        .await
        .unwrap();
    let t = Instant::now();
    let behind = sp.journal().written_lsn() - sb.journal().written_lsn();
    quiesce(&p, &[&sb]).await;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "QUIC catch-up: {behind} records (~32 MiB) in {secs:.2} s = {:.0} MiB/s (incl. reconnect backoff)",
        32.0 / secs
    );
    p.shutdown().await;
    b.shutdown().await;
    assert_same_volume(dp.path(), db.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_peer_past_a_tiny_journal_cap_is_brought_back_by_a_bitmap_resync() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut j = journal_cfg(&dp.path().join("journal"));
    j.capacity_bytes = 4 << 20; // 4 segments of 1 MiB
    j.pressure_bytes = 2 << 20;
    let (sp, rp) = open_store_with(dp.path(), uuid, VOL_BYTES, j).await;
    let sb = open_store(db.path(), uuid).await;
    let idb = pki.identity("node-b");
    // The peer syncs once (its history is the primary's), then goes away.
    let b = Secondary::start(
        sb.clone(),
        secondary_cfg(idb.clone(), "node-b", None, any_port()),
    )
    .await
    .unwrap();
    let addr = b.local_addrs().1.unwrap();
    let p = Primary::start(
        sp.clone(),
        primary_cfg(
            &pki,
            vec![peer("node-b", PeerMode::Async, TransportKind::Quic, addr)],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    wait_up_to_date(&p, "node-b", Duration::from_secs(20)).await;
    b.shutdown().await;
    drop(b);
    // 64 KiB into each of 160 distinct regions (10 MiB > the 4 MiB cap).
    let mut regions = std::collections::BTreeSet::new();
    for i in 0..160u64 {
        let off = (i * 3 % 256) * REGION_BYTES;
        regions.insert(off / REGION_BYTES);
        p.change(
            Change::Write {
                offset: off,
                data: Bytes::from(vec![i as u8; REGION_BYTES as usize]),
            },
            false,
        )
        .await
        .unwrap();
        if i % 8 == 7 {
            p.flush().await.unwrap();
            p.store().checkpoint().await.unwrap();
        }
    }
    p.store().checkpoint().await.unwrap();
    // Once more past the cap so the fold covers every write.
    for i in 0..40u64 {
        let off = (i * 3 % 256) * REGION_BYTES;
        p.change(
            Change::Write {
                offset: off,
                data: Bytes::from(vec![1; REGION_BYTES as usize]),
            },
            false,
        )
        .await
        .unwrap();
        p.flush().await.unwrap();
        p.store().checkpoint().await.unwrap();
    }
    let st = peer_state(&p.status(), "node-b");
    assert_eq!(st.disk, DiskState::Outdated, "{st:?}");
    assert!(
        st.dirty_regions > 0 && st.dirty_regions <= regions.len() as u64,
        "{st:?}"
    );
    assert!(st.lag_bytes >= st.dirty_regions * REGION_BYTES, "{st:?}");
    let folded = st.dirty_regions;
    // The peer comes back: a resync of the folded regions only, not
    // compared (they really changed).
    let b = Secondary::start(sb.clone(), secondary_cfg(idb, "node-b", None, Some(addr)))
        .await
        .unwrap();
    wait_up_to_date(&p, "node-b", Duration::from_secs(30)).await;
    quiesce(&p, &[&sb]).await;
    let st = peer_state(&p.status(), "node-b");
    let resync = st.last_resync.clone().expect("the resync is reported");
    eprintln!(
        "folded peer: {folded} dirty regions of {} written; resync sent {} bytes for {} regions",
        regions.len(),
        resync.bytes_sent,
        resync.regions
    );
    assert_eq!(st.dirty_regions, 0, "{st:?}");
    assert!(!resync.full && !resync.compare, "{resync:?}");
    assert_eq!(resync.regions, folded, "{resync:?}");
    assert!(
        resync.bytes_sent <= folded * REGION_BYTES * 11 / 10,
        "resent more than the written regions: {resync:?}"
    );
    p.shutdown().await;
    b.shutdown().await;
    assert_same_volume(dp.path(), db.path());
}

async fn sync_pair(
    pki: &Pki,
    policy: SyncPeerLossPolicy,
) -> (Arc<Primary>, Arc<Secondary>, Vec<tempfile::TempDir>) {
    let uuid = Uuid::new_v4();
    let (dp, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sp, rp) = open_primary_store(dp.path(), uuid).await;
    let sa = open_store(da.path(), uuid).await;
    let a = Secondary::start(
        sa,
        secondary_cfg(pki.identity("node-a"), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let mut cfg = primary_cfg(
        pki,
        vec![peer(
            "node-a",
            PeerMode::Sync,
            TransportKind::Tcp,
            a.local_addrs().0.unwrap(),
        )],
    );
    cfg.on_sync_peer_loss = policy;
    let p = Primary::start(sp, cfg, &rp, StartMode::Continue)
        .await
        .unwrap();
    // After its initial sync the peer is sync again once it acked the
    // stream.
    wait_for("in sync", Duration::from_secs(20), || {
        let st = peer_state(&p.status(), "node-a");
        up_to_date(&st) && st.sync_gate == Some(SyncGate::InSync)
    })
    .await;
    (p, a, vec![dp, da])
}

fn w4k(i: u64) -> Change {
    Change::Write {
        offset: i * 4096,
        data: Bytes::from(vec![i as u8; 4096]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_peer_loss_degrade_carries_on_at_once() {
    logs();
    let pki = Pki::new();
    let (p, a, _dirs) = sync_pair(&pki, SyncPeerLossPolicy::Degrade).await;
    p.change(w4k(1), false).await.unwrap();
    a.shutdown().await;
    drop(a);
    let t = Instant::now();
    for i in 2..50 {
        p.change(w4k(i), false).await.unwrap();
    }
    p.flush().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let st = p.status();
    let a = peer_state(&st, "node-a");
    assert_eq!(a.sync_gate, Some(SyncGate::Degraded), "{st:?}");
    assert_eq!(
        a.disk,
        DiskState::Outdated,
        "a lost peer's copy is behind: {st:?}"
    );
    assert_eq!(st.sync_peer_loss_policy.as_deref(), Some("degrade"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_peer_loss_suspend_waits_the_timeout_then_degrades_and_recovers() {
    logs();
    let pki = Pki::new();
    let timeout = Duration::from_millis(1500);
    let (p, a, dirs) = sync_pair(&pki, SyncPeerLossPolicy::Suspend { timeout }).await;
    let addr = a.local_addrs().0.unwrap();
    p.change(w4k(1), false).await.unwrap();
    let lost_at = Instant::now();
    a.shutdown().await;
    drop(a);
    let t = Instant::now();
    p.change(w4k(2), false).await.unwrap();
    let waited = t.elapsed();
    let since_loss = lost_at.elapsed();
    eprintln!(
        "suspend: write waited {waited:?} ({since_loss:?} since the loss, timeout {timeout:?})"
    );
    assert!(
        since_loss >= timeout - Duration::from_millis(100),
        "{since_loss:?}"
    );
    assert!(waited < timeout + Duration::from_secs(1), "{waited:?}");
    // The peer's task degrades it at the same deadline the write gave up.
    wait_for("degraded", Duration::from_secs(1), || {
        peer_state(&p.status(), "node-a").sync_gate == Some(SyncGate::Degraded)
    })
    .await;
    let t = Instant::now();
    p.change(w4k(3), false).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "degraded: no more waiting"
    );
    // The peer returns, catches up from the journal and is in sync again.
    let sa = open_store(dirs[1].path(), p.store().volume_uuid()).await;
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(pki.identity("node-a"), "node-a", Some(addr), None),
    )
    .await
    .unwrap();
    wait_for("sync again", Duration::from_secs(10), || {
        let st = peer_state(&p.status(), "node-a");
        up_to_date(&st) && st.sync_gate == Some(SyncGate::InSync)
    })
    .await;
    let lsn = p.change(w4k(4), false).await.unwrap();
    assert!(
        sa.journal().written_lsn() >= lsn,
        "in sync: change() waited for the peer"
    );
    p.shutdown().await;
    a.shutdown().await;
}

async fn refused_reason(p: &Primary, peer: &str) -> String {
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let st = peer_state(&p.status(), peer);
        if st.connection == ConnectionState::Refused {
            return st.last_error.expect("a refused peer says why");
        }
        last = format!("{st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("peer never refused: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_peers_are_refused_with_a_named_reason() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (sp, rp) = open_primary_store(dirs[0].path(), uuid).await;
    // Different size, different volume, a certificate of another CA.
    let (s_size, _) = open_store_with(
        dirs[1].path(),
        uuid,
        VOL_BYTES * 2,
        journal_cfg(&dirs[1].path().join("journal")),
    )
    .await;
    let s_uuid = open_store(dirs[2].path(), Uuid::new_v4()).await;
    let s_ca = open_store(dirs[3].path(), uuid).await;
    let a = Secondary::start(
        s_size,
        secondary_cfg(pki.identity("node-a"), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let b = Secondary::start(
        s_uuid,
        secondary_cfg(pki.identity("node-b"), "node-b", None, any_port()),
    )
    .await
    .unwrap();
    let c = Secondary::start(
        s_ca,
        secondary_cfg(pki.foreign_identity("node-c"), "node-c", any_port(), None),
    )
    .await
    .unwrap();
    let p = Primary::start(
        sp,
        primary_cfg(
            &pki,
            vec![
                peer(
                    "node-a",
                    PeerMode::Async,
                    TransportKind::Tcp,
                    a.local_addrs().0.unwrap(),
                ),
                peer(
                    "node-b",
                    PeerMode::Async,
                    TransportKind::Quic,
                    b.local_addrs().1.unwrap(),
                ),
                peer(
                    "node-c",
                    PeerMode::Async,
                    TransportKind::Tcp,
                    c.local_addrs().0.unwrap(),
                ),
            ],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    let size = refused_reason(&p, "node-a").await;
    let vol = refused_reason(&p, "node-b").await;
    let ca = refused_reason(&p, "node-c").await;
    eprintln!("{size}\n{vol}\n{ca}");
    assert!(size.contains("size mismatch"), "{size}");
    assert!(vol.contains("volume uuid mismatch"), "{vol}");
    assert!(
        ca.contains("tls") && ca.to_lowercase().contains("ca"),
        "{ca}"
    );
    // The secondaries say why too.
    let e = a.status().last_error.expect("the refusal is in status");
    assert!(e.contains("size mismatch"), "{e}");
    p.shutdown().await;
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// A node whose Hello names someone other than its certificate is refused,
/// whichever side it is: the secondary by the primary, the primary by the
/// secondary. Nothing is written to the secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_another_node_than_the_certificate_is_refused() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // A secondary with node-a's certificate calling itself node-z.
    let (sp, rp) = open_primary_store(dirs[0].path(), uuid).await;
    let sa = open_store(dirs[1].path(), uuid).await;
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(pki.identity("node-a"), "node-z", any_port(), None),
    )
    .await
    .unwrap();
    let p = Primary::start(
        sp,
        primary_cfg(
            &pki,
            vec![peer(
                "node-a",
                PeerMode::Async,
                TransportKind::Tcp,
                a.local_addrs().0.unwrap(),
            )],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    let why = refused_reason(&p, "node-a").await;
    assert!(
        why.contains("node-z") && why.contains("certificate"),
        "{why}"
    );
    p.shutdown().await;
    a.shutdown().await;
    assert_eq!(
        sa.journal().written_lsn(),
        0,
        "nothing reached the impostor"
    );
    // A primary with node-p's certificate calling itself node-q.
    let (sq, rq) = open_primary_store(dirs[2].path(), uuid).await;
    let sb = open_store(dirs[3].path(), uuid).await;
    let b = Secondary::start(
        sb.clone(),
        secondary_cfg(pki.identity("node-b"), "node-b", any_port(), None),
    )
    .await
    .unwrap();
    let mut cfg = primary_cfg(
        &pki,
        vec![peer(
            "node-b",
            PeerMode::Async,
            TransportKind::Tcp,
            b.local_addrs().0.unwrap(),
        )],
    );
    cfg.node_id = "node-q".into();
    let q = Primary::start(sq, cfg, &rq, StartMode::Continue)
        .await
        .unwrap();
    let why = refused_reason(&q, "node-b").await;
    assert!(
        why.contains("node-q") && why.contains("certificate"),
        "{why}"
    );
    let e = b.status().last_error.expect("the secondary says why");
    assert!(e.contains("node-q"), "{e}");
    q.shutdown().await;
    b.shutdown().await;
    assert_eq!(sb.journal().written_lsn(), 0, "nothing from the impostor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_their_session_and_the_real_primary_is_served() {
    use tokio::io::AsyncWriteExt;
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let (dp, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sp, rp) = open_primary_store(dp.path(), uuid).await;
    let sa = open_store(da.path(), uuid).await;
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(pki.identity("node-a"), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let addr = a.local_addrs().0.unwrap();
    // Plain garbage, no TLS.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[0x42; 4096]).await.unwrap();
    // Authenticated (same CA), then garbage frames.
    let evil = pki.identity("node-evil");
    let mut tls = transport::connect_tcp(addr, "node-a", &evil).await.unwrap();
    tls.stream
        .write_all(b"DRLS but not really a frame, just bytes........")
        .await
        .unwrap();
    tls.stream.flush().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tls.stream, &mut got),
    )
    .await;
    let err = a.status().last_error.unwrap_or_default();
    eprintln!("hostile session: {err}");
    assert!(
        err.contains("node-evil") && err.contains("protocol"),
        "{err}"
    );
    // The real primary is served.
    let p = Primary::start(
        sp.clone(),
        primary_cfg(
            &pki,
            vec![peer("node-a", PeerMode::Sync, TransportKind::Tcp, addr)],
        ),
        &rp,
        StartMode::Continue,
    )
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    workload(&p, &mut rng, 100).await;
    quiesce(&p, &[&sa]).await;
    p.shutdown().await;
    a.shutdown().await;
    drop(raw);
    assert_same_volume(dp.path(), da.path());
}

/// A primary with a valid certificate that misbehaves after a valid
/// handshake: it sends `Hello` (from `hello`), waits for the HelloAck,
/// then writes `after` (raw bytes: frames, broken frames) and reads until
/// the secondary closes. Returns whether a HelloAck came.
async fn hostile_session(
    addr: SocketAddr,
    evil: &TlsIdentity,
    hello: wire::Hello,
    after: Vec<u8>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = wire::Limits::default();
    let mut tls = transport::connect_tcp(addr, "node-a", evil).await.unwrap();
    let frame = wire::encode_frame(&wire::Message::Hello(hello), &limits).unwrap();
    tls.stream.write_all(&frame.to_bytes()).await.unwrap();
    let mut decoder = wire::Decoder::new(limits);
    let mut acked = false;
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, tls.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return acked,
        };
        decoder.feed(&buf[..n]);
        while let Ok(Some(m)) = decoder.next_message() {
            if let wire::Message::HelloAck(_) = m {
                acked = true;
                let _ = tls.stream.write_all(&after).await;
                let _ = tls.stream.flush().await;
            }
        }
    }
}

fn frame(msg: &wire::Message) -> Vec<u8> {
    wire::encode_frame(msg, &wire::Limits::default())
        .unwrap()
        .to_bytes()
        .to_vec()
}

/// A write record at `lsn` of generation `g`, its digest right.
fn write_record(lsn: u64, g: u64, offset: u64, fill: u8) -> wire::WireRecord {
    let payload = Bytes::from(vec![fill; 4096]);
    wire::WireRecord {
        lsn,
        generation: g,
        kind: wire::RecordKind::Write,
        offset,
        len: 4096,
        blake3: *blake3::hash(&payload).as_bytes(),
        payload,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_primaries_with_valid_certificates_are_refused_naming_why_and_change_nothing() {
    logs();
    let pki = Pki::new();
    let uuid = Uuid::new_v4();
    let da = tempfile::tempdir().unwrap();
    let sa = open_store(da.path(), uuid).await;
    let a = Secondary::start(
        sa.clone(),
        secondary_cfg(pki.identity("node-a"), "node-a", any_port(), None),
    )
    .await
    .unwrap();
    let addr = a.local_addrs().0.unwrap();
    let evil = pki.identity("node-evil");
    let g = 0x5eed;
    let hello = wire::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        node_id: "node-evil".into(),
        volume_uuid: uuid,
        volume_size_bytes: VOL_BYTES,
        region_bytes: REGION_BYTES,
        lineage: vec![wire::LineageEntry {
            generation_id: g,
            start_lsn: 1,
            unknown_before: false,
        }],
        role: wire::Role::Primary,
        durable_lsn: 0,
        data_state: wire::DataState::Consistent,
        overwrite: false,
        empty: false,
        discarding: false,
        fenced: false,
    };
    let volume = da.path().join("volume.img");
    let untouched = std::fs::read(&volume).unwrap();
    let records = |first: u64, recs: Vec<wire::WireRecord>| {
        frame(&wire::Message::Records {
            first_lsn: first,
            records: recs,
        })
    };
    let mut bad_digest = write_record(1, g, 0, 1);
    bad_digest.blake3 = *blake3::hash(b"another volume's block").as_bytes();
    let header = |len: u32| {
        // magic, version, type (Records), flags, payload length, crc.
        let mut h = b"DRLS".to_vec();
        h.extend_from_slice(&wire::PROTOCOL_VERSION.to_le_bytes());
        h.extend_from_slice(&0x0010u16.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    };
    let good = records(1, vec![write_record(1, g, 0, 7)]);
    let truncated = good[..good.len() / 2].to_vec();
    let cases: Vec<(&str, wire::Hello, Vec<u8>, &'static str)> = vec![
        (
            "an LSN gap",
            hello.clone(),
            records(2, vec![write_record(2, g, 0, 1)]),
            "starts at LSN 2, expected 1",
        ),
        (
            "LSNs that skip inside a batch",
            hello.clone(),
            records(
                1,
                vec![write_record(1, g, 0, 1), write_record(3, g, 4096, 1)],
            ),
            "record LSN 3 in a batch, expected 2",
        ),
        (
            "a write outside the volume",
            hello.clone(),
            records(1, vec![write_record(1, g, VOL_BYTES, 1)]),
            "outside the volume",
        ),
        (
            "a payload whose digest is another block's",
            hello.clone(),
            records(1, vec![bad_digest]),
            "BLAKE3 mismatch",
        ),
        (
            "a generation not in its lineage",
            hello.clone(),
            records(1, vec![write_record(1, 0xbad, 0, 1)]),
            "generation",
        ),
        (
            "a frame header promising 4 GiB",
            hello.clone(),
            header(u32::MAX),
            "frame",
        ),
        (
            "a frame cut in half",
            hello.clone(),
            truncated,
            "session closed",
        ),
        (
            "resync data outside a resync",
            hello.clone(),
            frame(&wire::Message::SyncOps {
                ops: vec![wire::SyncOp {
                    seq: 1,
                    kind: wire::SyncOpKind::Data,
                    offset: 0,
                    len: 4096,
                    blake3: *blake3::hash(&[1u8; 4096]).as_bytes(),
                    data: Bytes::from(vec![1u8; 4096]),
                }],
            }),
            "outside a resync",
        ),
    ];
    // The secondary names why once the session has ended.
    let reason_naming = |named: &'static str| {
        let a = a.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let reason = a.status().last_error.unwrap_or_default();
                if reason.contains(named) || Instant::now() > deadline {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for (what, hello, after, named) in cases {
        let acked = hostile_session(addr, &evil, hello, after).await;
        assert!(acked, "{what}: the handshake itself was valid");
        let reason = reason_naming(named).await;
        eprintln!("{what}: {reason}");
        assert!(
            reason.contains(named) && reason.contains("node-evil"),
            "{what}: the secondary's reason does not name it ({named}): {reason}"
        );
        assert_eq!(
            sa.journal().written_lsn(),
            0,
            "{what}: something was journaled"
        );
        assert_eq!(
            std::fs::read(&volume).unwrap(),
            untouched,
            "{what}: the volume changed"
        );
    }
    // Refused at the handshake: another volume, another size, a Hello
    // naming another node than the certificate.
    for (what, mutate, named) in [
        (
            "another volume",
            Box::new(|h: &mut wire::Hello| h.volume_uuid = Uuid::new_v4())
                as Box<dyn Fn(&mut wire::Hello)>,
            "volume",
        ),
        (
            "another size",
            Box::new(|h: &mut wire::Hello| h.volume_size_bytes *= 2),
            "size",
        ),
        (
            "another node's name",
            Box::new(|h: &mut wire::Hello| h.node_id = "node-p".into()),
            "node-p",
        ),
    ] {
        let mut h = hello.clone();
        mutate(&mut h);
        let acked = hostile_session(addr, &evil, h, Vec::new()).await;
        assert!(!acked, "{what}: a HelloAck came");
        let reason = reason_naming(named).await;
        eprintln!("{what}: {reason}");
        assert!(reason.contains(named), "{what}: {reason}");
        assert_eq!(
            sa.journal().written_lsn(),
            0,
            "{what}: something was journaled"
        );
    }
    // A replay: a valid frame is taken, the same frame again is refused,
    // and the journal holds the first copy only.
    let acked = hostile_session(addr, &evil, hello.clone(), [good.clone(), good].concat()).await;
    assert!(acked);
    let reason = reason_naming("starts at LSN 1, expected 2").await;
    assert!(
        reason.contains("starts at LSN 1, expected 2"),
        "a replayed frame: {reason}"
    );
    assert_eq!(sa.journal().written_lsn(), 1, "exactly the first copy");
    a.shutdown().await;
}
