use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong in the transport crate.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },

    #[error("certificate generation failed ({context}): {source}")]
    CertGen {
        context: &'static str,
        source: rcgen::Error,
    },

    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    #[error("invalid server name {0:?} (must be a DNS name or an IP address)")]
    InvalidServerName(String),

    /// The peer's certificate does not chain to our configured CA.
    #[error("peer certificate rejected: unknown CA ({detail}); is the peer's certificate signed by the CA in our CA file ([tls] ca)?")]
    UnknownCa { detail: String },

    /// The peer's certificate is valid but carries none of the allowed names.
    #[error("peer certificate rejected: name not allowed (certificate names {presented:?}, allowed {allowed:?})")]
    NameNotAllowed {
        presented: Vec<String>,
        allowed: Vec<String>,
    },

    /// The client presented no certificate; mutual TLS requires one.
    #[error("peer certificate rejected: no client certificate presented (mutual TLS is required)")]
    NoClientCert,

    /// The peer's certificate is unusable for another reason (expired, wrong usage, ...).
    #[error("peer certificate rejected: {detail}")]
    BadPeerCert { detail: String },

    /// The peer aborted the handshake: it did not accept *our* certificate.
    #[error("the peer refused our certificate (TLS alert {alert}); check that it trusts our CA and allows our name")]
    RejectedByPeer { alert: String },

    #[error("TLS error: {0}")]
    Tls(rustls::Error),

    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },

    #[error("QUIC connect: {0}")]
    QuicConnect(#[from] quinn::ConnectError),

    #[error("QUIC connection: {0}")]
    QuicConnection(quinn::ConnectionError),

    #[error("QUIC endpoint is closed")]
    EndpointClosed,

    #[error("protocol: {0}")]
    Wire(#[from] wire::WireError),

    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Io { context, source }
}
