//! Certificate authority and node certificates for mutual TLS (backs `driftless cert`).
//!
//! Keys are ECDSA P-256, written with mode 0600; existing files are never overwritten
//! (re-running must not silently replace a CA that peers already trust).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Result, TransportError};

/// Longest DNS name (RFC 1035).
const MAX_NODE_NAME_BYTES: usize = 253;

/// Where a CA's files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// Where a node's files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertPaths {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// Copy of the CA certificate path, for convenience when building a `TlsIdentity`.
    pub ca_cert_pem: PathBuf,
}

fn gen_err(context: &'static str) -> impl FnOnce(rcgen::Error) -> TransportError {
    move |source| TransportError::CertGen { context, source }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| TransportError::File {
            action: "create",
            path: path.to_owned(),
            source,
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| TransportError::File {
            action: "write",
            path: path.to_owned(),
            source,
        })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TransportError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TransportError::File {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

/// Node names become DNS SANs and file names: letters, digits, '-' and '.'.
pub fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['.', '-'])
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(TransportError::InvalidServerName(name.to_owned()))
    }
}

/// Create a CA in `dir`: `ca.pem` (certificate) and `ca.key` (private key, 0600).
pub fn create_ca(dir: &Path) -> Result<CaPaths> {
    ensure_dir(dir)?;
    let key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA params"))?;
    // A unique name per CA: a verifier looks issuers up by name, and two clusters'
    // CAs with the same name would be reported as a bad signature, not an unknown CA.
    let key_id: String = key.public_key_raw()[1..9]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("driftless CA {key_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(gen_err("CA self-sign"))?;
    let paths = CaPaths {
        cert_pem: dir.join("ca.pem"),
        key_pem: dir.join("ca.key"),
    };
    // Key first: if it cannot be written we leave no orphan certificate behind.
    write_new(&paths.key_pem, &key.serialize_pem(), 0o600)?;
    write_new(&paths.cert_pem, &cert.pem(), 0o644)?;
    Ok(paths)
}

/// Create a certificate for node `name`, signed by `ca`, in `dir`: `<name>.pem` and
/// `<name>.key` (0600). SANs: `name`, `localhost`, `127.0.0.1`, `::1`; usable as
/// both TLS server and client (nodes dial and accept).
pub fn create_node_cert(ca: &CaPaths, name: &str, dir: &Path) -> Result<NodeCertPaths> {
    validate_node_name(name)?;
    ensure_dir(dir)?;
    let ca_key = KeyPair::from_pem(&read_text(&ca.key_pem)?).map_err(gen_err("parse CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read_text(&ca.cert_pem)?, ca_key)
        .map_err(gen_err("parse CA certificate"))?;

    let mut sans = vec![name.to_owned()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if extra != name {
            sans.push(extra.to_owned());
        }
    }
    let mut params = CertificateParams::new(sans).map_err(gen_err("node params"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(gen_err("node key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("sign node certificate"))?;

    let paths = NodeCertPaths {
        cert_pem: dir.join(format!("{name}.pem")),
        key_pem: dir.join(format!("{name}.key")),
        ca_cert_pem: ca.cert_pem.clone(),
    };
    write_new(&paths.key_pem, &key.serialize_pem(), 0o600)?;
    write_new(&paths.cert_pem, &cert.pem(), 0o644)?;
    Ok(paths)
}
