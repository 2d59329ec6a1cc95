//! QUIC transport (quinn + rustls/ring) with mutual TLS, tuned for long fat links.
//!
//! A replication session is one bidirectional stream (in order). The stream becomes
//! visible to the acceptor when the connector sends its first bytes (its Hello).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::classify::classify_connection_error;
use crate::error::{io_err, Result, TransportError};
use crate::tls::{peer_name, TlsIdentity};

/// Tuning for QUIC over high bandwidth-delay links. Defaults cover 1 Gbit/s × 100 ms
/// (12.5 MB in flight) with headroom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicTuning {
    /// Flow-control window of the replication stream.
    pub stream_receive_window_bytes: u64,
    /// Flow-control window of the whole connection.
    pub receive_window_bytes: u64,
    /// Unacknowledged bytes we may have in flight.
    pub send_window_bytes: u64,
    /// SO_SNDBUF / SO_RCVBUF asked of the kernel (it may clamp to net.core.*mem_max).
    pub udp_send_buffer_bytes: usize,
    pub udp_recv_buffer_bytes: usize,
    /// UDP generic segmentation offload (fewer syscalls per packet burst).
    pub enable_gso: bool,
    pub max_idle_timeout: Duration,
    /// Keeps NAT/firewall state alive and detects a dead path before the idle timeout.
    pub keep_alive_interval: Duration,
    /// RTT assumed before the first sample; a realistic value avoids a slow start.
    pub initial_rtt: Duration,
}

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning {
            stream_receive_window_bytes: 16 * 1024 * 1024,
            receive_window_bytes: 32 * 1024 * 1024,
            send_window_bytes: 32 * 1024 * 1024,
            udp_send_buffer_bytes: 8 * 1024 * 1024,
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            enable_gso: true,
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            initial_rtt: Duration::from_millis(100),
        }
    }
}

impl QuicTuning {
    /// The quinn endpoint configuration these settings produce.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        quinn::EndpointConfig::default()
    }

    /// The quinn transport configuration these settings produce; tools (the
    /// `quic_bulk` example) may adjust it further and pass it to
    /// [`QuicEndpoint::bind_with_configs`].
    pub fn transport_config(&self) -> Result<TransportConfig> {
        let varint = |v: u64, what: &str| {
            VarInt::from_u64(v)
                .map_err(|_| TransportError::TlsConfig(format!("QUIC tuning: {what} too large")))
        };
        let idle = IdleTimeout::try_from(self.max_idle_timeout).map_err(|_| {
            TransportError::TlsConfig("QUIC tuning: max_idle_timeout too large".into())
        })?;
        let mut t = TransportConfig::default();
        t.stream_receive_window(varint(
            self.stream_receive_window_bytes,
            "stream_receive_window_bytes",
        )?)
        .receive_window(varint(self.receive_window_bytes, "receive_window_bytes")?)
        .send_window(self.send_window_bytes)
        .enable_segmentation_offload(self.enable_gso)
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(self.keep_alive_interval))
        .initial_rtt(self.initial_rtt)
        // One replication stream per session; the peer may not open others.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(t)
    }
}

/// Kernel socket buffer sizes actually granted (Linux reports twice the set value,
/// capped by net.core.{w,r}mem_max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpBufferSizes {
    pub send_bytes: usize,
    pub recv_bytes: usize,
}

/// A QUIC endpoint that can both accept and dial with the same identity.
#[derive(Debug, Clone)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    identity: Arc<TlsIdentity>,
    buffers: UdpBufferSizes,
}

/// One replication session over QUIC: the stream pair, the peer's verified name and
/// the connection (for stats, RTT, close).
#[derive(Debug)]
pub struct QuicSession {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub peer_name: String,
    pub connection: quinn::Connection,
}

impl QuicEndpoint {
    /// Bind `addr` (port 0 for any) with socket buffers sized per `tuning`.
    pub fn bind(addr: SocketAddr, identity: &TlsIdentity, tuning: &QuicTuning) -> Result<Self> {
        Self::bind_with_configs(
            addr,
            identity,
            tuning,
            tuning.transport_config()?,
            tuning.endpoint_config(),
        )
    }

    /// Like [`QuicEndpoint::bind`] (socket buffers from `tuning`) but with
    /// caller-made quinn transport and endpoint configurations.
    pub fn bind_with_configs(
        addr: SocketAddr,
        identity: &TlsIdentity,
        tuning: &QuicTuning,
        transport: TransportConfig,
        endpoint_config: quinn::EndpointConfig,
    ) -> Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_err("create UDP socket"))?;
        socket
            .set_send_buffer_size(tuning.udp_send_buffer_bytes)
            .map_err(io_err("set SO_SNDBUF"))?;
        socket
            .set_recv_buffer_size(tuning.udp_recv_buffer_bytes)
            .map_err(io_err("set SO_RCVBUF"))?;
        socket
            .bind(&addr.into())
            .map_err(io_err("bind UDP socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(io_err("set UDP socket non-blocking"))?;
        let buffers = UdpBufferSizes {
            send_bytes: socket.send_buffer_size().map_err(io_err("get SO_SNDBUF"))?,
            recv_bytes: socket.recv_buffer_size().map_err(io_err("get SO_RCVBUF"))?,
        };
        // Linux grants min(asked, net.core.*mem_max) and reports twice that (the
        // doubled value covers its bookkeeping), so a clamp shows as less than 2x.
        let factor = if cfg!(target_os = "linux") { 2 } else { 1 };
        if buffers.recv_bytes < tuning.udp_recv_buffer_bytes.saturating_mul(factor)
            || buffers.send_bytes < tuning.udp_send_buffer_bytes.saturating_mul(factor)
        {
            tracing::warn!(
                asked_send_bytes = tuning.udp_send_buffer_bytes,
                asked_recv_bytes = tuning.udp_recv_buffer_bytes,
                granted_send_bytes = buffers.send_bytes / factor,
                granted_recv_bytes = buffers.recv_bytes / factor,
                "kernel clamped UDP socket buffers below what was asked; raise net.core.wmem_max/rmem_max for long fat links"
            );
        }

        let transport = Arc::new(transport);
        let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| TransportError::TlsConfig(format!("QUIC server: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| TransportError::TlsConfig(format!("QUIC client: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let mut endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket.into(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(io_err("start QUIC endpoint"))?;
        endpoint.set_default_client_config(client);
        Ok(QuicEndpoint {
            endpoint,
            identity: Arc::new(identity.clone()),
            buffers,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(io_err("QUIC local address"))
    }

    pub fn udp_buffer_sizes(&self) -> UdpBufferSizes {
        self.buffers
    }

    /// Dial `addr`, expecting its certificate to carry `server_name`, and open the
    /// session stream.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<QuicSession> {
        let connection = self
            .endpoint
            .connect(addr, server_name)?
            .await
            .map_err(classify_connection_error)?;
        let peer = self.peer_name_of(&connection)?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(classify_connection_error)?;
        Ok(QuicSession {
            send,
            recv,
            peer_name: peer,
            connection,
        })
    }

    /// Accept the next connection and its session stream. A failed handshake is
    /// returned as an error naming why; the endpoint stays usable.
    pub async fn accept(&self) -> Result<QuicSession> {
        let incoming = self
            .endpoint
            .accept()
            .await
            .ok_or(TransportError::EndpointClosed)?;
        let connection = incoming.await.map_err(classify_connection_error)?;
        let peer = self.peer_name_of(&connection)?;
        let (send, recv) = connection
            .accept_bi()
            .await
            .map_err(classify_connection_error)?;
        Ok(QuicSession {
            send,
            recv,
            peer_name: peer,
            connection,
        })
    }

    fn peer_name_of(&self, connection: &quinn::Connection) -> Result<String> {
        let certs = connection.peer_identity().and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        peer_name(
            certs.as_deref().map(|v| v.as_slice()),
            self.identity.allowed_names(),
        )
    }

    /// Close every connection and stop accepting.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"endpoint closed");
    }

    /// Wait until all connections are closed and their data delivered or abandoned.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Connect with a fresh client-side endpoint bound to an ephemeral port.
pub async fn connect_quic(
    addr: SocketAddr,
    server_name: &str,
    identity: &TlsIdentity,
    tuning: &QuicTuning,
) -> Result<(QuicEndpoint, QuicSession)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    // Same family as the target; loopback stays on loopback.
    let ip: IpAddr = match (addr.is_ipv4(), addr.ip().is_loopback()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => Ipv6Addr::LOCALHOST.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let local = SocketAddr::new(ip, 0);
    let endpoint = QuicEndpoint::bind(local, identity, tuning)?;
    let session = endpoint.connect(addr, server_name).await?;
    Ok((endpoint, session))
}
