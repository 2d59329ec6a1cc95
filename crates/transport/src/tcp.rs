//! TCP + TLS (tokio-rustls) with mutual authentication.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::classify::classify_io_error;
use crate::error::{io_err, Result, TransportError};
use crate::tls::{peer_name, TlsIdentity};

/// TLS stream over TCP, client or server side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// An authenticated TCP+TLS connection.
#[derive(Debug)]
pub struct TlsConnection {
    pub stream: TlsStream,
    /// The peer's verified node name (see `TlsIdentity::load` for the policy).
    pub peer_name: String,
    pub peer_addr: SocketAddr,
}

fn tune_socket(s: &TcpStream) -> Result<()> {
    // Sync replication is latency bound: never wait to coalesce small frames.
    s.set_nodelay(true).map_err(io_err("set TCP_NODELAY"))
}

/// Dial `addr`; the server's certificate must carry `server_name` and pass the policy.
pub async fn connect_tcp(
    addr: SocketAddr,
    server_name: &str,
    identity: &TlsIdentity,
) -> Result<TlsConnection> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TransportError::InvalidServerName(server_name.to_owned()))?;
    let connector = TlsConnector::from(identity.client_config()?);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(io_err("TCP connect"))?;
    tune_socket(&tcp)?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| classify_io_error("TLS handshake", e))?;
    let peer = peer_name(
        stream.get_ref().1.peer_certificates(),
        identity.allowed_names(),
    )?;
    Ok(TlsConnection {
        stream: stream.into(),
        peer_name: peer,
        peer_addr: addr,
    })
}

/// Listening socket that completes the TLS handshake (client certificate required)
/// before handing out a connection.
pub struct TcpTlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    identity: TlsIdentity,
}

impl std::fmt::Debug for TcpTlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTlsListener")
            .field("listener", &self.listener)
            .field("identity", &self.identity.name())
            .finish_non_exhaustive()
    }
}

impl TcpTlsListener {
    pub async fn bind(addr: SocketAddr, identity: &TlsIdentity) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(io_err("TCP bind"))?;
        Ok(TcpTlsListener {
            listener,
            acceptor: TlsAcceptor::from(identity.server_config()?),
            identity: identity.clone(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(io_err("TCP local address"))
    }

    /// Accept one connection and run its handshake. A peer that fails
    /// authentication yields an error naming why; the listener stays usable.
    /// The handshake runs inline: callers that must not be stalled by a slow
    /// peer use [`TcpTlsListener::accept_tcp`] and run each handshake on its
    /// own task.
    pub async fn accept(&self) -> Result<TlsConnection> {
        self.accept_tcp().await?.handshake().await
    }

    /// Accept one TCP connection; its TLS handshake is still to run.
    pub async fn accept_tcp(&self) -> Result<IncomingTls> {
        let (tcp, peer_addr) = self.listener.accept().await.map_err(io_err("TCP accept"))?;
        tune_socket(&tcp)?;
        Ok(IncomingTls {
            tcp,
            peer_addr,
            acceptor: self.acceptor.clone(),
            allowed: self.identity.allowed_names().map(<[String]>::to_vec),
        })
    }
}

/// An accepted TCP connection before its TLS handshake.
pub struct IncomingTls {
    tcp: TcpStream,
    pub peer_addr: SocketAddr,
    acceptor: TlsAcceptor,
    allowed: Option<Vec<String>>,
}

impl IncomingTls {
    /// The TLS handshake (a client certificate is required); the error
    /// names why it failed.
    pub async fn handshake(self) -> Result<TlsConnection> {
        let stream = self
            .acceptor
            .accept(self.tcp)
            .await
            .map_err(|e| classify_io_error("TLS handshake", e))?;
        let peer = peer_name(
            stream.get_ref().1.peer_certificates(),
            self.allowed.as_deref(),
        )?;
        Ok(TlsConnection {
            stream: stream.into(),
            peer_name: peer,
            peer_addr: self.peer_addr,
        })
    }
}
