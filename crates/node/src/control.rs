//! The control socket: a Unix socket (mode 0600) where the CLI asks the
//! daemon for its state, or asks a primary for a resync or verify of a
//! peer. One JSON request line, one JSON response line.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use replication::VolumeStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::NodeError;
use crate::nbd::{bind_unix, SocketGuard};

/// A request line is at most this long; anything longer is refused.
const MAX_REQUEST_BYTES: usize = 4096;
/// Control clients served at once.
const MAX_CONTROL_CONNECTIONS: usize = 16;
/// Of those, event streams (which stay open): the rest stay free for
/// status and commands.
const MAX_EVENT_STREAMS: usize = 8;
const CONTROL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the CLI waits for a command's answer.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Resync what `peer` of `volume` is owed (`full`: every region,
    /// compared; an unrelated history is overwritten).
    Resync {
        volume: String,
        peer: String,
        full: bool,
    },
    /// Start an online verify of `peer` (`repair`: resync what differs).
    Verify {
        volume: String,
        peer: String,
        repair: bool,
    },
    /// Make this node the volume's primary (`force`: despite an
    /// inconsistent copy, a connected primary, or a fence).
    Promote {
        volume: String,
        force: bool,
    },
    /// Make this node a secondary of whoever is promoted next.
    Demote {
        volume: String,
    },
    /// Give this node's changes since the fork up (split brain victim).
    DiscardLocal {
        volume: String,
    },
    /// Stream state changes (`events::Event` lines) until the client goes
    /// away or the daemon stops (`now`: only the current states, then the
    /// stream ends).
    Events {
        #[serde(default)]
        now: bool,
    },
}

/// A request that changes a volume's role on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeCommand {
    Promote { force: bool },
    Demote,
    DiscardLocal,
}

/// A request that acts on one peer of one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCommand {
    Resync { full: bool },
    Verify { repair: bool },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub volumes: Vec<NamedStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedStatus {
    pub name: String,
    #[serde(flatten)]
    pub status: VolumeStatus,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Ok(NodeStatus),
    /// A command was accepted; what was done.
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// What the daemon answers requests with.
pub trait Control: Send + Sync + 'static {
    fn node_status(&self) -> NodeStatus;
    /// Runs `command` for `peer` of `volume`: what was done, or why not.
    fn peer_command<'a>(
        &'a self,
        volume: &'a str,
        peer: &'a str,
        command: PeerCommand,
    ) -> CommandFuture<'a>;
    /// Runs a role change of `volume`: what was done, or why not.
    fn volume_command<'a>(&'a self, volume: &'a str, command: VolumeCommand) -> CommandFuture<'a>;
    /// Becomes `true` when the daemon begins to stop (event streams end
    /// with a `node-stopping` line); `None`: never signalled.
    fn stopping(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// Binds the control socket with mode 0600 (only the daemon's user may
/// drive it) and serves requests until the task is dropped.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketGuard), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let (listener, guard) = bind_unix(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| NodeError::io(format!("setting mode 0600 on {}", path.display()), e))?;
    Ok((listener, guard))
}

pub async fn serve(listener: UnixListener, source: Arc<dyn Control>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS));
    loop {
        // At the limit, further clients wait in the listen backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (source, streams) = (source.clone(), streams.clone());
        tokio::spawn(async move {
            if let Err(err) = answer(stream, source, streams).await {
                tracing::debug!(error = %err, "control request failed");
            }
            drop(slot);
        });
    }
}

async fn answer(
    stream: UnixStream,
    source: Arc<dyn Control>,
    streams: Arc<tokio::sync::Semaphore>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    // A client that sends nothing must not hold its slot forever; a command
    // itself is bounded by its own limits.
    tokio::time::timeout(CONTROL_REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no request within the timeout"))??;
    let done = |r: Result<String, String>| match r {
        Ok(message) => Response::Done { message },
        Err(message) => Response::Error { message },
    };
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => Response::Ok(source.node_status()),
        Ok(Request::Resync { volume, peer, full }) => done(
            source
                .peer_command(&volume, &peer, PeerCommand::Resync { full })
                .await,
        ),
        Ok(Request::Verify {
            volume,
            peer,
            repair,
        }) => done(
            source
                .peer_command(&volume, &peer, PeerCommand::Verify { repair })
                .await,
        ),
        Ok(Request::Promote { volume, force }) => done(
            source
                .volume_command(&volume, VolumeCommand::Promote { force })
                .await,
        ),
        Ok(Request::Demote { volume }) => {
            done(source.volume_command(&volume, VolumeCommand::Demote).await)
        }
        Ok(Request::DiscardLocal { volume }) => done(
            source
                .volume_command(&volume, VolumeCommand::DiscardLocal)
                .await,
        ),
        Ok(Request::Events { now }) => match streams.try_acquire_owned() {
            Ok(permit) => {
                let result = stream_events(&mut write, source.as_ref(), now).await;
                drop(permit);
                return result;
            }
            Err(_) => Response::Error {
                message: format!(
                    "{MAX_EVENT_STREAMS} event streams are open already; close one first"
                ),
            },
        },
        Err(err) => Response::Error {
            message: format!("bad request: {err}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Writes the events of `source` to `write`, one JSON line each, until the
/// client goes away or the daemon stops (`now`: the current states only).
async fn stream_events(
    write: &mut (impl AsyncWriteExt + Unpin),
    source: &dyn Control,
    now: bool,
) -> std::io::Result<()> {
    use crate::events::{Change, Event, EventDiffer, EventType, POLL_INTERVAL};
    let mut differ = EventDiffer::new();
    let mut stopping = source.stopping();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = stopping.as_ref().is_some_and(|s| *s.borrow());
        let status = source.node_status();
        let volumes = status
            .volumes
            .into_iter()
            .map(|v| (v.name, v.status))
            .collect();
        let node = status.node;
        let mut events: Vec<Event> = differ
            .next(volumes, std::time::Instant::now())
            .into_iter()
            .map(|(kind, change)| Event::new(kind, change, std::time::SystemTime::now()))
            .collect();
        if stop {
            events.push(Event::new(
                EventType::Change,
                Change::NodeStopping { node },
                std::time::SystemTime::now(),
            ));
        }
        let mut out = Vec::new();
        for e in &events {
            serde_json::to_writer(&mut out, e).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        // A client that does not read holds this task at the write: the
        // memory it costs is one snapshot's events.
        write.write_all(&out).await?;
        if stop || now {
            return write.shutdown().await;
        }
        match stopping.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s.changed() => {}
                }
            }
            None => {
                tick.tick().await;
            }
        }
    }
}

/// The CLI side of `events`: calls `line` with each event until the
/// stream ends. Returns whether it ended with the daemon stopping.
pub fn events(
    path: &Path,
    now: bool,
    mut line: impl FnMut(&crate::events::Event) -> std::io::Result<()>,
) -> Result<bool, NodeError> {
    use std::io::{BufRead, Write};
    let err = |message: String| NodeError::Control {
        path: path.to_owned(),
        message,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| err(format!("cannot connect ({e}); is the daemon running?")))?;
    let mut request =
        serde_json::to_vec(&Request::Events { now }).map_err(|e| err(e.to_string()))?;
    request.push(b'\n');
    stream
        .write_all(&request)
        .map_err(|e| err(format!("request failed: {e}")))?;
    let mut stopped = false;
    for text in std::io::BufReader::new(stream).lines() {
        let text = text.map_err(|e| err(format!("reading events: {e}")))?;
        let event: crate::events::Event = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(_) => {
                // The daemon refused the stream: an error reply.
                return match serde_json::from_str::<Response>(&text) {
                    Ok(Response::Error { message }) => Err(NodeError::Refused(message)),
                    _ => Err(err(format!("unreadable event line: {text:?}"))),
                };
            }
        };
        stopped = matches!(event.change, crate::events::Change::NodeStopping { .. });
        // A closed stdout (a pager quit) ends the stream quietly.
        if line(&event).is_err() {
            return Ok(stopped);
        }
    }
    Ok(stopped)
}

/// The CLI side of `status`.
pub fn status(path: &Path) -> Result<NodeStatus, NodeError> {
    match exchange(path, &Request::Status)? {
        Response::Ok(status) => Ok(status),
        Response::Done { message } | Response::Error { message } => {
            Err(NodeError::Refused(message))
        }
    }
}

/// The CLI side of a command: what the daemon did.
pub fn command(path: &Path, request: &Request) -> Result<String, NodeError> {
    match exchange(path, request)? {
        Response::Done { message } => Ok(message),
        Response::Error { message } => Err(NodeError::Refused(message)),
        Response::Ok(_) => Err(NodeError::Control {
            path: path.to_owned(),
            message: "the daemon answered a command with a status".into(),
        }),
    }
}

/// One request, one response (bounded by [`CONTROL_REQUEST_TIMEOUT`]).
fn exchange(path: &Path, request: &Request) -> Result<Response, NodeError> {
    use std::io::{BufRead, Write};
    let err = |message: String| NodeError::Control {
        path: path.to_owned(),
        message,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| err(format!("cannot connect ({e}); is the daemon running?")))?;
    // A role change may wait for flushes and peers (bounded daemon-side).
    let timeout = match request {
        Request::Status => CONTROL_REQUEST_TIMEOUT,
        _ => COMMAND_TIMEOUT,
    };
    let line = (|| -> std::io::Result<String> {
        stream.set_read_timeout(Some(timeout))?;
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reply = String::new();
        std::io::BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply)
    })()
    .map_err(|e| err(format!("request failed: {e}")))?;
    serde_json::from_str::<Response>(&line)
        .map_err(|e| err(format!("unreadable reply ({e}): {line:?}")))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;

    use replication::{DiskState, GenerationStatus, VolumeRole, VolumeStatus};

    use super::*;

    struct Fixed;

    impl Control for Fixed {
        fn peer_command<'a>(
            &'a self,
            volume: &'a str,
            peer: &'a str,
            command: PeerCommand,
        ) -> CommandFuture<'a> {
            Box::pin(async move {
                match (volume, peer) {
                    ("vol0", "dr") => Ok(format!("{command:?} started")),
                    _ => Err(format!("no peer {peer} of volume {volume}")),
                }
            })
        }

        fn volume_command<'a>(
            &'a self,
            volume: &'a str,
            command: VolumeCommand,
        ) -> CommandFuture<'a> {
            Box::pin(async move { Err(format!("{command:?} of {volume}: not here")) })
        }

        fn node_status(&self) -> NodeStatus {
            NodeStatus {
                node: "alpha".into(),
                volumes: vec![NamedStatus {
                    name: "vol0".into(),
                    status: VolumeStatus {
                        role: VolumeRole::Primary,
                        volume_uuid: "u".into(),
                        generation: 7,
                        lineage: vec![GenerationStatus {
                            id: 7,
                            start_lsn: 1,
                            unknown_before: false,
                        }],
                        written_lsn: 99,
                        durable_lsn: 98,
                        applied_lsn: 99,
                        checkpoint_lsn: 50,
                        disk: DiskState::UpToDate,
                        sync_peer_loss_policy: Some("degrade".into()),
                        peers: Vec::new(),
                        upstream: None,
                        last_error: None,
                        fenced: None,
                        split_brain: None,
                        discarding_local: false,
                        configured_role: None,
                        role_reason: None,
                    },
                }],
            }
        }
    }

    async fn start() -> (tempfile::TempDir, std::path::PathBuf, SocketGuard) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (listener, guard) = bind(&path).unwrap();
        tokio::spawn(serve(listener, Arc::new(Fixed)));
        (dir, path, guard)
    }

    /// Sends raw bytes, returns the reply line.
    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_round_trips_and_the_socket_is_private() {
        let (_dir, path, _guard) = start().await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || status(&p))
            .await
            .unwrap()
            .unwrap();
        let want = Fixed.node_status();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&want).unwrap()
        );
        // The wire form: one JSON line with the volume's name flattened in.
        let p = path.clone();
        let line = tokio::task::spawn_blocking(move || raw(&p, b"{\"command\":\"status\"}\n"))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["result"], "ok");
        assert_eq!(v["volumes"][0]["name"], "vol0");
        assert_eq!(v["volumes"][0]["written_lsn"], 99);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_and_oversized_requests_get_an_error_reply() {
        let (_dir, path, _guard) = start().await;
        for bytes in [
            b"not json\n".to_vec(),
            b"{\"command\":\"self-destruct\"}\n".to_vec(),
            vec![b'x'; MAX_REQUEST_BYTES * 2],
        ] {
            let p = path.clone();
            let line = tokio::task::spawn_blocking(move || raw(&p, &bytes))
                .await
                .unwrap();
            let reply: Response = serde_json::from_str(&line).unwrap();
            match reply {
                Response::Error { message } => {
                    assert!(message.starts_with("bad request"), "{message}")
                }
                other => panic!("a bad request was answered with {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_client_does_not_block_the_next_one() {
        let (_dir, path, _guard) = start().await;
        let idle = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let p = path.clone();
        let started = std::time::Instant::now();
        let got = tokio::task::spawn_blocking(move || status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.node, "alpha");
        assert!(started.elapsed() < CONTROL_REQUEST_TIMEOUT / 2);
        drop(idle);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_reach_the_daemon_and_refusals_say_why() {
        let (_dir, path, _guard) = start().await;
        let p = path.clone();
        let (ok, refused) = tokio::task::spawn_blocking(move || {
            let ok = command(
                &p,
                &Request::Resync {
                    volume: "vol0".into(),
                    peer: "dr".into(),
                    full: true,
                },
            );
            let refused = command(
                &p,
                &Request::Verify {
                    volume: "vol0".into(),
                    peer: "nobody".into(),
                    repair: false,
                },
            );
            (ok, refused)
        })
        .await
        .unwrap();
        assert_eq!(ok.unwrap(), "Resync { full: true } started");
        let err = refused.unwrap_err();
        assert!(matches!(err, NodeError::Refused(_)), "{err}");
        assert!(err.to_string().contains("no peer nobody"), "{err}");
    }

    /// [`Fixed`], stopping when told.
    struct Stops(tokio::sync::watch::Sender<bool>);

    impl Control for Stops {
        fn peer_command<'a>(
            &'a self,
            volume: &'a str,
            peer: &'a str,
            command: PeerCommand,
        ) -> CommandFuture<'a> {
            Fixed.peer_command(volume, peer, command)
        }

        fn volume_command<'a>(
            &'a self,
            volume: &'a str,
            command: VolumeCommand,
        ) -> CommandFuture<'a> {
            Fixed.volume_command(volume, command)
        }

        fn node_status(&self) -> NodeStatus {
            Fixed.node_status()
        }

        fn stopping(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
            Some(self.0.subscribe())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_show_the_states_then_end_when_the_daemon_stops() {
        use crate::events::{Change, EventType};
        let (_dir, path, _guard) = start().await;
        let p = path.clone();
        let mut now = Vec::new();
        let stopped = tokio::task::spawn_blocking(move || {
            let r = events(&p, true, |e| {
                now.push(e.clone());
                Ok(())
            });
            r.map(|s| (s, now))
        })
        .await
        .unwrap();
        let (stopped, now) = stopped.unwrap();
        assert!(!stopped);
        assert!(now.iter().all(|e| e.kind == EventType::Exists), "{now:?}");
        assert!(now.iter().any(|e| e.change
            == Change::Role {
                volume: "vol0".into(),
                role: VolumeRole::Primary,
                reason: None
            }));

        // A follower ends with node-stopping once the daemon stops.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (listener, _guard) = bind(&path).unwrap();
        let (tx, _) = tokio::sync::watch::channel(false);
        let source = Arc::new(Stops(tx));
        tokio::spawn(serve(listener, source.clone()));
        let p = path.clone();
        let follower = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            events(&p, false, |e| {
                seen.push(e.change.clone());
                Ok(())
            })
            .map(|stopped| (stopped, seen))
        });
        tokio::time::sleep(crate::events::POLL_INTERVAL * 3).await;
        source.0.send_replace(true);
        let (stopped, seen) = tokio::time::timeout(std::time::Duration::from_secs(10), follower)
            .await
            .expect("the stream ends")
            .unwrap()
            .unwrap();
        assert!(stopped, "{seen:?}");
        assert_eq!(
            seen.last(),
            Some(&Change::NodeStopping {
                node: "alpha".into()
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_streams_are_bounded_and_status_still_answers() {
        let (_dir, path, _guard) = start().await;
        let mut open = Vec::new();
        for _ in 0..MAX_EVENT_STREAMS {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            std::io::Write::write_all(&mut s, b"{\"command\":\"events\"}\n").unwrap();
            let mut first = String::new();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            std::io::BufRead::read_line(&mut r, &mut first).unwrap();
            assert!(first.contains("\"type\":\"exists\""), "{first}");
            open.push(s);
        }
        let p = path.clone();
        let refused = tokio::task::spawn_blocking(move || events(&p, false, |_| Ok(())))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, NodeError::Refused(_)), "{refused}");
        assert!(refused.to_string().contains("event streams"), "{refused}");
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.node, "alpha");
        drop(open);
    }

    #[test]
    fn no_daemon_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let err = status(&dir.path().join("none.sock")).unwrap_err();
        assert!(matches!(err, NodeError::Control { .. }), "{err}");
        assert!(err.to_string().contains("is the daemon running"), "{err}");
    }
}
