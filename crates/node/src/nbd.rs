//! Binding an export's NBD listeners (a Unix socket and/or TCP), the one
//! place `serve` and `run` do it, and the Unix-socket helpers the control
//! socket shares.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nbd_shim::server::Listener;

use crate::error::NodeError;

/// Removes the socket file when dropped (the server stopped).
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket left by a killed
/// server, never a regular file and never a socket a live server answers on.
pub fn bind_unix(path: &Path) -> Result<(tokio::net::UnixListener, SocketGuard), NodeError> {
    use std::os::unix::fs::FileTypeExt;
    let what = |w: &str| format!("{w} {}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(NodeError::Config(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(NodeError::Config(format!(
                "{} is in use by a running server",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| NodeError::io(what("removing stale socket"), e))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| NodeError::io(what("binding Unix socket"), e))?;
    Ok((listener, SocketGuard(path.to_path_buf())))
}

/// An export's bound listeners, the guards that remove its socket files, and
/// the URIs clients use (`nbd+unix:///NAME?socket=PATH`, `nbd://ADDR/NAME`).
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub guards: Vec<SocketGuard>,
    pub uris: Vec<String>,
}

/// Binds the listeners of export `name`; at least one of `unix` and `tcp`.
pub async fn bind_export(
    name: &str,
    unix: Option<&Path>,
    tcp: Option<SocketAddr>,
) -> Result<Bound, NodeError> {
    if unix.is_none() && tcp.is_none() {
        return Err(NodeError::Config(
            "an NBD export needs a Unix socket and/or a TCP address".into(),
        ));
    }
    let mut bound = Bound {
        listeners: Vec::new(),
        guards: Vec::new(),
        uris: Vec::new(),
    };
    if let Some(path) = unix {
        let (listener, guard) = bind_unix(path)?;
        bound.listeners.push(Listener::Unix(listener));
        bound.guards.push(guard);
        bound
            .uris
            .push(format!("nbd+unix:///{name}?socket={}", path.display()));
    }
    if let Some(addr) = tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::io(format!("binding NBD on TCP {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| NodeError::io("reading the bound TCP address", e))?;
        bound.listeners.push(Listener::Tcp(listener));
        bound.uris.push(format!("nbd://{local}/{name}"));
    }
    Ok(bound)
}

/// Resolves on SIGTERM or SIGINT (the daemon then stops cleanly).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = which,
        "shutting down: finishing in-flight requests"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_but_files_and_live_sockets_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A stale socket (its listener dropped without removing the file).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (live, guard) = bind_unix(&path).expect("a stale socket is replaced");
        let err = bind_unix(&path).err().expect("a live socket is kept");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(live);
        drop(guard);
        assert!(!path.exists(), "the guard removes the socket file");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_unix(&path).err().expect("a regular file is kept");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn export_uris_name_the_socket_and_the_bound_port() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let b = bind_export("vol0", Some(&sock), Some("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(b.listeners.len(), 2);
        assert_eq!(
            b.uris[0],
            format!("nbd+unix:///vol0?socket={}", sock.display())
        );
        assert!(b.uris[1].starts_with("nbd://127.0.0.1:") && !b.uris[1].contains(":0/"));
        assert!(bind_export("x", None, None).await.is_err());
    }
}
