//! The crate's one error type. Each variant carries its cause in its
//! message, so `{err}` prints it once.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Setting something up failed (files, sockets, certificates, runtimes).
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// Something did not happen in time; `context` holds the last state seen
    /// and log tails.
    #[error("{what} did not happen within {limit:?}\n{context}")]
    Timeout {
        what: String,
        limit: Duration,
        context: String,
    },
    /// A process exited (or ran) with a status it should not have.
    #[error("{what} ({status})\n{context}")]
    Process {
        what: String,
        status: String,
        context: String,
    },
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Tls(transport::TransportError),
    /// A node's control socket or configuration failed.
    #[error("{0}")]
    Node(#[from] node::NodeError),
    /// An NBD client request failed.
    #[error("NBD: {0}")]
    Nbd(String),
    /// A check of the copies failed: a lost write, a copy that is not a
    /// prefix of the history, copies that differ.
    #[error("check failed: {0}")]
    Check(String),
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            cause,
        }
    }
}

pub type Result<T> = std::result::Result<T, HarnessError>;
