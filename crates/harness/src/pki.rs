//! A CA and node certificates for mutual TLS, made in-process with the
//! same code `driftless cert` runs.

use std::path::{Path, PathBuf};

use node::config::Tls;

use crate::error::{HarnessError, Result};

/// A CA directory; node certificates are made in it on first use.
pub struct Pki {
    pub dir: PathBuf,
    ca: transport::CaPaths,
}

impl Pki {
    pub fn new(dir: &Path) -> Result<Pki> {
        let ca = transport::create_ca(dir).map_err(HarnessError::Tls)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// The `[tls]` section of node `name`, making its certificate if needed.
    pub fn tls(&self, name: &str) -> Result<Tls> {
        let tls = Tls {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            ca: self.ca.cert_pem.clone(),
            allowed_peers: None,
        };
        if !tls.cert.exists() {
            transport::create_node_cert(&self.ca, name, &self.dir).map_err(HarnessError::Tls)?;
        }
        Ok(tls)
    }
}
