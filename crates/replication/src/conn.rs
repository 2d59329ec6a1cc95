//! A replication connection split into a message reader and a message
//! writer, over TCP+TLS or one QUIC stream, and record conversions.

use std::net::SocketAddr;

use bytes::Bytes;
use journal::{GenerationEntry, LogRecord, Lsn, NewRecord};
use tokio::io::{AsyncRead, AsyncWrite};
use transport::{FramedConn, QuicEndpoint, QuicTuning, TlsIdentity, TransportError};
use wire::{DataState, Hello, Limits, LineageEntry, Message, Role, WireRecord};

use crate::config::TransportKind;
use store::Store;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Receiving half: whole messages; cancel-safe.
pub(crate) struct MsgReader(FramedConn<BoxRead, tokio::io::Sink>);
/// Sending half.
pub(crate) struct MsgWriter(FramedConn<tokio::io::Empty, BoxWrite>);

impl MsgReader {
    pub async fn recv(&mut self) -> Result<Message, TransportError> {
        self.0.recv().await
    }
}

impl MsgWriter {
    pub async fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        self.0.send(msg).await
    }
    pub async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Keeps what a connection needs alive (the QUIC endpoint and connection).
pub(crate) enum ConnGuard {
    Tcp,
    Quic {
        _endpoint: Option<QuicEndpoint>,
        connection: transport::quinn::Connection,
    },
}

impl ConnGuard {
    /// Closing a QUIC connection discards unsent stream data: after a last
    /// message (Refuse, Bye) give the peer up to `max` to read it and close.
    pub async fn linger(&self, max: std::time::Duration) {
        if let ConnGuard::Quic { connection, .. } = self {
            let _ = tokio::time::timeout(max, connection.closed()).await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let ConnGuard::Quic { connection, .. } = self {
            connection.close(0u32.into(), b"session closed");
        }
    }
}

pub(crate) struct Conn {
    pub reader: MsgReader,
    pub writer: MsgWriter,
    pub guard: ConnGuard,
    /// The peer's verified certificate name.
    pub peer_name: String,
    pub peer_addr: SocketAddr,
}

pub(crate) fn split(
    r: BoxRead,
    w: BoxWrite,
    guard: ConnGuard,
    peer_name: String,
    peer_addr: SocketAddr,
) -> Conn {
    let limits = Limits::default();
    Conn {
        reader: MsgReader(FramedConn::new(r, tokio::io::sink(), limits)),
        writer: MsgWriter(FramedConn::new(tokio::io::empty(), w, limits)),
        guard,
        peer_name,
        peer_addr,
    }
}

pub(crate) fn from_tls(c: transport::TlsConnection) -> Conn {
    let (r, w) = tokio::io::split(c.stream);
    split(
        Box::new(r),
        Box::new(w),
        ConnGuard::Tcp,
        c.peer_name,
        c.peer_addr,
    )
}

pub(crate) fn from_quic(s: transport::QuicSession, endpoint: Option<QuicEndpoint>) -> Conn {
    let addr = s.connection.remote_address();
    split(
        Box::new(s.recv),
        Box::new(s.send),
        ConnGuard::Quic {
            _endpoint: endpoint,
            connection: s.connection,
        },
        s.peer_name,
        addr,
    )
}

/// Dials a peer over its configured transport.
pub(crate) async fn dial(
    kind: TransportKind,
    addr: SocketAddr,
    name: &str,
    tls: &TlsIdentity,
    quic: &QuicTuning,
) -> Result<Conn, TransportError> {
    match kind {
        TransportKind::Tcp => Ok(from_tls(transport::connect_tcp(addr, name, tls).await?)),
        TransportKind::Quic => {
            let (endpoint, session) = transport::connect_quic(addr, name, tls, quic).await?;
            Ok(from_quic(session, Some(endpoint)))
        }
    }
}

/// TLS/certificate failures: the peer is refused, not merely unreachable.
pub(crate) fn is_auth_error(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::UnknownCa { .. }
            | TransportError::NameNotAllowed { .. }
            | TransportError::NoClientCert
            | TransportError::BadPeerCert { .. }
            | TransportError::RejectedByPeer { .. }
    )
}

pub(crate) fn to_wire(r: &LogRecord) -> WireRecord {
    let h = &r.header;
    WireRecord {
        lsn: h.lsn,
        generation: h.generation,
        kind: match h.kind {
            journal::RecordKind::Write => wire::RecordKind::Write,
            journal::RecordKind::Trim => wire::RecordKind::Trim,
            journal::RecordKind::WriteZeroes => wire::RecordKind::WriteZeroes,
            journal::RecordKind::Barrier => wire::RecordKind::Barrier,
        },
        offset: h.offset,
        len: h.length,
        payload: r.payload.clone(),
        blake3: h.payload_blake3,
    }
}

pub(crate) fn journal_kind(k: wire::RecordKind) -> journal::RecordKind {
    match k {
        wire::RecordKind::Write => journal::RecordKind::Write,
        wire::RecordKind::Trim => journal::RecordKind::Trim,
        wire::RecordKind::WriteZeroes => journal::RecordKind::WriteZeroes,
        wire::RecordKind::Barrier => journal::RecordKind::Barrier,
    }
}

pub(crate) fn to_new_record(r: &WireRecord) -> NewRecord {
    NewRecord {
        kind: journal_kind(r.kind),
        offset: r.offset,
        length: r.len,
        payload: if r.kind == wire::RecordKind::Write {
            r.payload.clone()
        } else {
            Bytes::new()
        },
    }
}

/// This node's Hello for `store`: identity, volume, lineage, role, data
/// state and the LSN the peer should reason from (see primary/secondary
/// for which one).
pub(crate) fn hello(store: &Store, node_id: &str, role: Role, durable_lsn: Lsn) -> Hello {
    let j = store.journal();
    Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        node_id: node_id.to_owned(),
        volume_uuid: store.volume_uuid(),
        volume_size_bytes: store.volume().size_bytes(),
        region_bytes: j.region_bytes(),
        lineage: j.lineage().into_iter().map(to_wire_generation).collect(),
        role,
        durable_lsn,
        data_state: if j.is_inconsistent() {
            DataState::Inconsistent
        } else {
            DataState::Consistent
        },
        overwrite: false,
        empty: false,
        discarding: false,
        fenced: false,
    }
}

pub(crate) fn to_wire_generation(g: GenerationEntry) -> LineageEntry {
    LineageEntry {
        generation_id: g.id,
        start_lsn: g.start_lsn,
        unknown_before: g.unknown_before,
    }
}

pub(crate) fn from_wire_generation(g: LineageEntry) -> GenerationEntry {
    GenerationEntry {
        id: g.generation_id,
        start_lsn: g.start_lsn,
        unknown_before: g.unknown_before,
    }
}
