//! driftless transports: TCP+TLS for metro (sync) peers and QUIC for DR (async)
//! peers, both with mutual TLS (rustls, ring provider), plus certificate creation
//! and a framed connection that carries `wire` messages over either.

pub mod cert;
mod classify;
mod error;
mod framed;
mod quic;
mod tcp;
mod tls;

pub use cert::{create_ca, create_node_cert, validate_node_name, CaPaths, NodeCertPaths};
pub use classify::classify_tls_error;
pub use error::{Result, TransportError};
pub use framed::FramedConn;
pub use quic::{connect_quic, QuicEndpoint, QuicSession, QuicTuning, UdpBufferSizes};
pub use tcp::{connect_tcp, IncomingTls, TcpTlsListener, TlsConnection, TlsStream};
pub use tls::{NameNotAllowedError, TlsIdentity, ALPN};

pub use quinn;
pub use rustls;
