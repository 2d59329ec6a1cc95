//! The crate's one error type. Each variant carries its cause in its
//! message (no `source()` chain), so `{err}` and `{err:#}` print it once.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration (file or arguments) is invalid: the message names
    /// the key. Nothing was started.
    #[error("{0}")]
    Config(String),
    /// A file, socket or runtime could not be set up.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// Opening a volume's backing file or device failed.
    #[error("volume {volume}: {cause}")]
    Volume {
        volume: String,
        cause: volume::VolumeError,
    },
    /// The volume's journal or local data path failed.
    #[error("volume {volume}: {cause}")]
    Store {
        volume: String,
        cause: store::StoreError,
    },
    /// Starting replication for a volume failed.
    #[error("volume {volume}: {cause}")]
    Engine {
        volume: String,
        cause: replication::EngineError,
    },
    /// The node's certificate, key or CA could not be loaded.
    #[error("loading [tls]: {0}")]
    Tls(transport::TransportError),
    /// The NBD server could not be configured or failed.
    #[error("NBD server: {0}")]
    Nbd(nbd_shim::NbdError),
    /// The daemon's control socket is unreachable or answered badly.
    #[error("control socket {}: {message}", path.display())]
    Control { path: PathBuf, message: String },
    /// The daemon refused a control request.
    #[error("daemon refused the request: {0}")]
    Refused(String),
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        NodeError::Io {
            what: what.into(),
            cause,
        }
    }
}
