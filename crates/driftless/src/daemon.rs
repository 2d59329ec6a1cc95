//! `driftless run --config node.toml`: every volume of a node with its role,
//! NBD export (primaries) and replication sessions, plus the control socket.
//! SIGTERM/SIGINT: NBD exports finish in-flight requests, primaries drain
//! their peers, every store checkpoints, exit 0.

use std::sync::Arc;

use anyhow::Context;
use journal::JournalConfig;
use nbd_shim::server::{Export, Listener, Server, ServerLimits};
use replication::{
    PeerConfig, PeerMode, Primary, PrimaryConfig, Secondary, SecondaryConfig, SyncPeerLossPolicy,
    TransportKind,
};
use store::{Store, StoreConfig};
use tokio::sync::watch;
use transport::TlsIdentity;
use volume::{Volume, VolumeOptions};

use crate::config::{LossPolicy, Mode, NodeConfig, Role, Transport, VolumeSection};
use crate::control::{NamedStatus, NodeStatus, StatusSource};
use crate::serve::{bind_unix, shutdown_signal, SocketGuard};
use crate::targets::JournaledTarget;

pub fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("driftless")
        .build()
        .context("starting the tokio runtime")?;
    // Peer sessions (shipping, QUIC, acks) get their own workers, half the
    // cores and at least one, so a client's request never queues behind a
    // batch being encrypted on the same worker.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let replication = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 2).max(1))
        .enable_all()
        .thread_name("driftless-repl")
        .build()
        .context("starting the replication runtime")?;
    let result = runtime.block_on(daemon(config, replication.handle().clone()));
    replication.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

enum Running {
    Primary(Arc<Primary>),
    Secondary(Arc<Secondary>),
}

impl Running {
    fn store(&self) -> &Arc<Store> {
        match self {
            Running::Primary(p) => p.store(),
            Running::Secondary(s) => s.store(),
        }
    }
}

struct Node {
    name: String,
    volumes: Vec<(String, Running)>,
}

impl StatusSource for Node {
    fn node_status(&self) -> NodeStatus {
        NodeStatus {
            node: self.name.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|(name, running)| NamedStatus {
                    name: name.clone(),
                    status: match running {
                        Running::Primary(p) => p.status(),
                        Running::Secondary(s) => s.status(),
                    },
                })
                .collect(),
        }
    }
}

async fn daemon(config: NodeConfig, repl: tokio::runtime::Handle) -> anyhow::Result<()> {
    let tls = Arc::new(
        TlsIdentity::load(
            &config.tls.cert,
            &config.tls.key,
            &config.tls.ca,
            config.tls.allowed_peers.clone(),
        )
        .context("loading [tls]")?,
    );
    let quic = config.quic.tuning();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut node = Node {
        name: config.node.name.clone(),
        volumes: Vec::new(),
    };
    let mut exports = Vec::new();
    let mut guards: Vec<SocketGuard> = Vec::new();

    for v in &config.volumes {
        let store = open_store(v)
            .await
            .with_context(|| format!("volume {}", v.name))?;
        match v.role {
            Role::Primary => {
                let primary = repl
                    .spawn(Primary::start(
                        store,
                        primary_config(&config.node.name, v, &tls, &quic),
                    ))
                    .await
                    .context("replication runtime")?
                    .with_context(|| format!("volume {}: starting replication", v.name))?;
                let target = Arc::new(JournaledTarget::new(primary.clone()));
                let nbd = v
                    .nbd
                    .as_ref()
                    .context("validated: primary has [volume.nbd]")?;
                let export_name = nbd.export.clone().unwrap_or_else(|| v.name.clone());
                let server = Server::new(
                    vec![Export {
                        name: export_name.clone(),
                        description: Some(format!("driftless volume {}", v.name)),
                        target,
                        read_only: false,
                    }],
                    ServerLimits::default(),
                )?;
                let mut listeners = Vec::new();
                if let Some(path) = &nbd.unix {
                    let (listener, guard) = bind_unix(path)?;
                    listeners.push(Listener::Unix(listener));
                    guards.push(guard);
                    println!(
                        "volume {} serving nbd+unix:///{export_name}?socket={}",
                        v.name,
                        path.display()
                    );
                }
                if let Some(addr) = nbd.listen {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding NBD on {addr}"))?;
                    println!(
                        "volume {} serving nbd://{}/{export_name}",
                        v.name,
                        listener.local_addr()?
                    );
                    listeners.push(Listener::Tcp(listener));
                }
                let mut stop = stop_rx.clone();
                let name = v.name.clone();
                exports.push(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(err) = server.run(listeners, shutdown).await {
                        tracing::error!(volume = %name, error = %err, "NBD server failed");
                    }
                }));
                node.volumes
                    .push((v.name.clone(), Running::Primary(primary)));
            }
            Role::Secondary => {
                let mut cfg = SecondaryConfig::new(config.node.name.clone(), tls.clone());
                cfg.listen_tcp = v.listen_tcp;
                cfg.listen_quic = v.listen_quic;
                cfg.keepalive_interval = v.keepalive_interval;
                cfg.peer_timeout = v.peer_timeout;
                cfg.quic = quic.clone();
                let secondary = Secondary::start(store, cfg)
                    .await
                    .with_context(|| format!("volume {}: starting the secondary", v.name))?;
                let (tcp, quic_addr) = secondary.local_addrs();
                println!(
                    "volume {} secondary listening tcp={} quic={}",
                    v.name,
                    tcp.map_or("-".into(), |a| a.to_string()),
                    quic_addr.map_or("-".into(), |a| a.to_string())
                );
                node.volumes
                    .push((v.name.clone(), Running::Secondary(secondary)));
            }
        }
    }

    let node = Arc::new(node);
    let (control, control_guard) = crate::control::bind(&config.node.control_socket)?;
    let control_task = tokio::spawn(crate::control::serve(control, node.clone()));
    println!(
        "node {} ready; control socket {}",
        config.node.name,
        config.node.control_socket.display()
    );

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for export in exports {
        let _ = export.await;
    }
    control_task.abort();
    drop(control_guard);
    for (name, running) in &node.volumes {
        match running {
            Running::Primary(p) => p.shutdown().await,
            Running::Secondary(s) => s.shutdown().await,
        }
        match running.store().checkpoint().await {
            Ok(lsn) => {
                tracing::info!(volume = %name, checkpoint_lsn = lsn, "volume fsynced and journal checkpointed")
            }
            Err(err) => tracing::error!(volume = %name, error = %err, "final checkpoint failed"),
        }
    }
    drop(guards);
    tracing::info!("stopped");
    Ok(())
}

async fn open_store(v: &VolumeSection) -> anyhow::Result<Arc<Store>> {
    let opts = VolumeOptions {
        size_bytes: Some(v.size),
        engine: v
            .io_engine
            .parse()
            .map_err(|e| anyhow::anyhow!("io_engine: {e}"))?,
        read_only: false,
        create: true,
    };
    let volume =
        Volume::open(&v.path, opts).with_context(|| format!("opening {}", v.path.display()))?;
    let mut journal = JournalConfig::new(v.journal_dir());
    journal.capacity_bytes = v.journal_size;
    journal.segment_bytes = v.journal_segment_size;
    journal.max_batch_bytes = v.max_batch as usize;
    journal.region_bytes = v.region_size;
    journal.pressure_bytes = v.journal_size / 4 * 3;
    let config = StoreConfig {
        journal,
        checkpoint_interval: v.checkpoint_interval,
        volume_uuid: Some(v.uuid),
    };
    let (store, report) = Store::open(volume, config)
        .await
        .with_context(|| format!("opening journal {}", v.journal_dir().display()))?;
    tracing::info!(
        volume = %v.name,
        role = ?v.role,
        checkpoint_lsn = report.checkpoint_lsn,
        redone_records = report.redone_records,
        dropped_tail_bytes = report.dropped_tail_bytes,
        "journal recovered"
    );
    Ok(store)
}

fn primary_config(
    node: &str,
    v: &VolumeSection,
    tls: &Arc<TlsIdentity>,
    quic: &transport::QuicTuning,
) -> PrimaryConfig {
    let peers = v
        .peers
        .iter()
        .map(|p| PeerConfig {
            name: p.name.clone(),
            mode: match p.mode {
                Mode::Sync => PeerMode::Sync,
                Mode::Async => PeerMode::Async,
            },
            transport: match p.transport {
                Transport::Tcp => TransportKind::Tcp,
                Transport::Quic => TransportKind::Quic,
            },
            address: p.address,
            max_inflight_bytes: p.max_inflight,
            max_batch_bytes: p.max_batch as usize,
            max_ship_delay: p.max_ship_delay,
        })
        .collect();
    let mut cfg = PrimaryConfig::new(node, tls.clone(), peers);
    cfg.on_sync_peer_loss = match v.on_sync_peer_loss {
        LossPolicy::Suspend => SyncPeerLossPolicy::Suspend {
            timeout: v.suspend_timeout,
        },
        LossPolicy::Degrade => SyncPeerLossPolicy::Degrade,
    };
    cfg.reconnect_min = v.reconnect_min;
    cfg.reconnect_max = v.reconnect_max;
    cfg.keepalive_interval = v.keepalive_interval;
    cfg.peer_timeout = v.peer_timeout;
    cfg.quic = quic.clone();
    cfg
}
