//! `driftless run --config node.toml`: every volume of a node in its role
//! (`slot.rs`), with its NBD export, its listener for primaries and its
//! replication sessions, plus the control socket.
//! SIGTERM/SIGINT: NBD exports finish in-flight requests, primaries drain
//! their peers, every store checkpoints, exit 0.

use std::sync::Arc;

use nbd_shim::server::{Export, Server, ServerLimits};
use replication::{
    PeerConfig, Primary, PrimaryConfig, ResyncLimits, Secondary, SecondaryConfig,
    SyncPeerLossPolicy, VolumeRole,
};
use tokio::sync::watch;
use transport::TlsIdentity;

use crate::config::{LossPolicy, NodeConfig, VolumeSection};
use crate::control::{CommandFuture, Control, NamedStatus, NodeStatus, PeerCommand, VolumeCommand};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::nbd::{bind_export, shutdown_signal, SocketGuard};
use crate::open::{open_store, open_volume, StoreSpec};
use crate::slot::{PrimaryStarter, Slot};
use crate::targets::{DataPath, JournaledTarget, Metered};

pub fn run(config_path: &std::path::Path) -> Result<(), NodeError> {
    let config = NodeConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("driftless")
        .build()
        .map_err(|e| NodeError::io("starting the tokio runtime", e))?;
    // Peer sessions (shipping, QUIC, acks) get their own workers, half the
    // cores and at least one, so a client's request never queues behind a
    // batch being encrypted on the same worker.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let replication = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 2).max(1))
        .enable_all()
        .thread_name("driftless-repl")
        .build()
        .map_err(|e| NodeError::io("starting the replication runtime", e))?;
    let result = runtime.block_on(daemon(config, replication.handle().clone()));
    replication.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

struct Node {
    name: String,
    volumes: Vec<Arc<Slot>>,
    /// Set when the daemon begins to stop.
    stop: watch::Receiver<bool>,
}

impl Node {
    fn slot(&self, volume: &str) -> Result<&Arc<Slot>, String> {
        self.volumes
            .iter()
            .find(|s| s.name == volume)
            .ok_or_else(|| format!("no volume {volume:?} on node {}", self.name))
    }
}

impl Control for Node {
    fn peer_command<'a>(
        &'a self,
        volume: &'a str,
        peer: &'a str,
        command: PeerCommand,
    ) -> CommandFuture<'a> {
        Box::pin(async move {
            let Some(p) = self.slot(volume)?.primary().await else {
                return Err(format!(
                    "volume {volume} is a secondary on node {}: run this on its primary",
                    self.name
                ));
            };
            let done = match command {
                PeerCommand::Resync { full } => p.resync(peer, full).await,
                PeerCommand::Verify { repair } => p.verify(peer, repair).await,
            };
            done.map_err(|e| e.to_string())
        })
    }

    fn volume_command<'a>(&'a self, volume: &'a str, command: VolumeCommand) -> CommandFuture<'a> {
        Box::pin(async move {
            let slot = self.slot(volume)?.clone();
            // On its own task: a client that goes away must not cut a role
            // change in half.
            let task = tokio::spawn(async move {
                match command {
                    VolumeCommand::Promote { force } => slot.promote(force).await,
                    VolumeCommand::Demote => slot.demote("demoted by an operator").await,
                    VolumeCommand::DiscardLocal => slot.discard_local().await,
                }
            });
            task.await.map_err(|e| format!("role change failed: {e}"))?
        })
    }

    fn stopping(&self) -> Option<watch::Receiver<bool>> {
        Some(self.stop.clone())
    }

    fn node_status(&self) -> NodeStatus {
        NodeStatus {
            node: self.name.clone(),
            volumes: self
                .volumes
                .iter()
                .filter_map(|slot| {
                    slot.status().map(|status| NamedStatus {
                        name: slot.name.clone(),
                        status,
                    })
                })
                .collect(),
        }
    }
}

async fn daemon(config: NodeConfig, repl: tokio::runtime::Handle) -> Result<(), NodeError> {
    let tls = Arc::new(
        TlsIdentity::load(
            &config.tls.cert,
            &config.tls.key,
            &config.tls.ca,
            config.tls.allowed_peers.clone(),
        )
        .map_err(NodeError::Tls)?,
    );
    // Peers check the Hello's name against the certificate: a node started
    // with another node's certificate would be refused by every peer.
    if tls.name() != config.node.name {
        return Err(NodeError::Config(format!(
            "[tls] cert {} names node {:?}, but node.name is {:?}: each node needs its own certificate (`driftless cert node --name {}`)",
            config.tls.cert.display(),
            tls.name(),
            config.node.name,
            config.node.name
        )));
    }
    let quic = config.quic.tuning();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut node = Node {
        name: config.node.name.clone(),
        volumes: Vec::new(),
        stop: stop_rx.clone(),
    };
    let mut exports = Vec::new();
    let mut guards: Vec<SocketGuard> = Vec::new();

    let metrics = Metrics::new();
    for v in &config.volumes {
        let spec = store_spec(v, &metrics)?;
        let (store, report) = open_store(&spec, open_volume(&spec, false)?).await?;
        let starter: PrimaryStarter = {
            let cfg = primary_config(&config.node.name, v, &tls, &quic);
            let (repl, name) = (repl.clone(), v.name.clone());
            Box::new(move |store, report, mode, primary_since_ns| {
                let (mut cfg, repl, name) = (cfg.clone(), repl.clone(), name.clone());
                cfg.primary_since_ns = primary_since_ns;
                // Peer tasks run on the replication runtime.
                Box::pin(async move {
                    repl.spawn(async move { Primary::start(store, cfg, &report, mode).await })
                        .await
                        .map_err(|e| {
                            NodeError::io("replication runtime", std::io::Error::other(e))
                        })?
                        .map_err(|cause| NodeError::Engine {
                            volume: name,
                            cause,
                        })
                })
            })
        };
        let slot =
            Slot::start(&config.node.name, v.clone(), store.clone(), report, starter).await?;
        if v.listen_tcp.is_some() || v.listen_quic.is_some() {
            let mut cfg = SecondaryConfig::new(config.node.name.clone(), tls.clone());
            cfg.listen_tcp = v.listen_tcp;
            cfg.listen_quic = v.listen_quic;
            cfg.keepalive_interval = v.keepalive_interval;
            cfg.peer_timeout = v.peer_timeout;
            cfg.quic = quic.clone();
            let listener = Secondary::start_arbitrated(store, cfg, Some(slot.arbiter()))
                .await
                .map_err(|cause| NodeError::Engine {
                    volume: v.name.clone(),
                    cause,
                })?;
            let (tcp, quic_addr) = listener.local_addrs();
            println!(
                "volume {} secondary listening tcp={} quic={}",
                v.name,
                tcp.map_or("-".into(), |a| a.to_string()),
                quic_addr.map_or("-".into(), |a| a.to_string())
            );
            slot.set_listener(listener);
        } else if slot.role().await == VolumeRole::Secondary {
            return Err(NodeError::Config(format!(
                "volume {}: this node is a secondary (role.json in {}) but has no listen_tcp/listen_quic to serve a primary",
                v.name,
                v.journal_dir().display()
            )));
        }
        if let Some(nbd) = &v.nbd {
            let export_name = nbd.export.clone().unwrap_or_else(|| v.name.clone());
            let server = Server::new(
                vec![Export {
                    name: export_name.clone(),
                    description: Some(format!("driftless volume {}", v.name)),
                    target: Arc::new(Metered::new(
                        JournaledTarget::new(slot.clone()),
                        metrics.nbd(&v.name),
                    )),
                    read_only: false,
                }],
                ServerLimits {
                    max_payload_bytes: v.max_write,
                    ..ServerLimits::default()
                },
            )
            .map_err(NodeError::Nbd)?;
            let bound = bind_export(&export_name, nbd.unix.as_deref(), nbd.listen).await?;
            for uri in &bound.uris {
                println!("volume {} serving {uri}", v.name);
            }
            guards.extend(bound.guards);
            let listeners = bound.listeners;
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
        }
        println!("volume {} role {}", v.name, slot.role().await);
        node.volumes.push(slot);
    }

    let node = Arc::new(node);
    let metrics_task = match config.node.metrics_listen {
        Some(addr) => {
            let slots = node.volumes.clone();
            let gather: crate::metrics::Gather = Arc::new(move || {
                slots
                    .iter()
                    .filter_map(|slot| {
                        let status = slot.status()?;
                        let store = DataPath::store(slot.as_ref());
                        Some(crate::metrics::Sample {
                            volume: slot.name.clone(),
                            journal: store.journal().stats(),
                            failure: store.failure(),
                            checkpoint_age: store.checkpoint_age(),
                            status,
                        })
                    })
                    .collect()
            });
            Some(crate::metrics::serve(addr, &metrics, gather).await?)
        }
        None => None,
    };
    let (control, control_guard) = crate::control::bind(&config.node.control_socket)?;
    let control_task = tokio::spawn(crate::control::serve(control, node.clone()));
    println!(
        "node {} ready; control socket {}",
        config.node.name,
        config.node.control_socket.display()
    );
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let ready = format!("node {} ready", config.node.name);
    let polled = crate::notify::ready_when_stoppable(shutdown.as_mut(), &ready).await;
    if polled.is_pending() {
        shutdown.await;
    }
    crate::notify::stopping();
    let _ = stop_tx.send(true);
    for export in exports {
        let _ = export.await;
    }
    control_task.abort();
    if let Some(m) = metrics_task {
        m.abort();
    }
    drop(control_guard);
    for slot in &node.volumes {
        slot.shutdown().await;
    }
    drop(guards);
    tracing::info!("stopped");
    Ok(())
}

fn store_spec(v: &VolumeSection, metrics: &Metrics) -> Result<StoreSpec, NodeError> {
    Ok(StoreSpec {
        name: v.name.clone(),
        path: v.path.clone(),
        size_bytes: Some(v.size),
        engine: v
            .io_engine
            .parse()
            .map_err(|e| NodeError::Config(format!("volume {}: io_engine: {e}", v.name)))?,
        journal_dir: v.journal_dir(),
        journal_size_bytes: v.journal_size,
        journal_segment_bytes: v.journal_segment_size,
        max_batch_bytes: v.max_batch,
        max_batch_wait: std::time::Duration::ZERO,
        checkpoint_interval: v.checkpoint_interval,
        region_bytes: v.region_size,
        max_write_bytes: v.max_write,
        volume_uuid: Some(v.uuid),
        journal_observer: Some(metrics.journal_observer(&v.name)),
    })
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
            mode: p.mode,
            transport: p.transport,
            address: p.address,
            max_inflight_bytes: p.max_inflight,
            max_batch_bytes: p.max_batch as usize,
            max_ship_delay: p.max_ship_delay,
            rpo_target: p.rpo_target,
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
    cfg.initial_sync = v.initial_sync;
    cfg.resync_compare = v.resync_compare;
    cfg.split_brain_policy = v.split_brain_policy;
    cfg.resync = ResyncLimits {
        max_rate_bytes_per_sec: v.resync_max_rate,
        min_rate_bytes_per_sec: v.resync_min_rate,
        max_inflight_bytes: v.resync_max_inflight,
    };
    cfg
}
