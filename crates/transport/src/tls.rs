//! Mutual-TLS identity: our certificate and key, the CA we trust, optional name pinning.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::error::{Result, TransportError};

/// ALPN protocol id for driftless replication, on both transports.
pub const ALPN: &[u8] = b"driftless/1";

/// Our certificate chain and key, the CA peers must chain to, and (optionally) the
/// only peer names we accept. Build rustls configs from it with the methods below.
#[derive(Debug)]
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    policy: Arc<NamePolicy>,
    provider: Arc<CryptoProvider>,
    name: String,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            policy: self.policy.clone(),
            provider: self.provider.clone(),
            name: self.name.clone(),
        }
    }
}

fn pem_err(path: &Path, reason: impl std::fmt::Display) -> TransportError {
    TransportError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

impl TlsIdentity {
    /// Load PEM files. `allowed_names`: if set, a peer's certificate must carry one of
    /// these names (DNS SAN or common name), on top of chaining to the CA.
    pub fn load(
        cert_pem: &Path,
        key_pem: &Path,
        ca_pem: &Path,
        allowed_names: Option<Vec<String>>,
    ) -> Result<Self> {
        let certs = load_certs(cert_pem)?;
        let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| pem_err(key_pem, e))?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs(ca_pem)? {
            roots
                .add(ca)
                .map_err(|e| pem_err(ca_pem, format!("unusable CA certificate: {e}")))?;
        }
        let name = cert_names(&certs[0])
            .ok()
            .and_then(|n| n.preferred())
            .ok_or_else(|| pem_err(cert_pem, "certificate has no DNS name or common name"))?;
        let identity = TlsIdentity {
            certs,
            key,
            roots: Arc::new(roots),
            policy: Arc::new(NamePolicy {
                allowed: allowed_names,
            }),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            name,
        };
        // Build once so a key that does not match the certificate fails at load time.
        identity.server_config()?;
        Ok(identity)
    }

    /// Our own node name (common name of our certificate, else its first DNS SAN).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn allowed_names(&self) -> Option<&[String]> {
        self.policy.allowed.as_deref()
    }

    /// Server side: client certificates are required, must chain to the CA and pass
    /// the name policy. TLS 1.3 only (both ends are ours).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| TransportError::TlsConfig(format!("client verifier: {e}")))?;
        let verifier = Arc::new(PinnedClientVerifier {
            inner,
            policy: self.policy.clone(),
        });
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TransportError::TlsConfig(format!("our certificate/key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: the server must chain to the CA, match the name we dial, and
    /// pass the name policy; we present our certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| TransportError::TlsConfig(format!("server verifier: {e}")))?;
        let verifier = Arc::new(PinnedServerVerifier {
            inner,
            policy: self.policy.clone(),
        });
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TransportError::TlsConfig(format!("our certificate/key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Names found in a certificate.
pub(crate) struct CertNames {
    common_name: Option<String>,
    dns: Vec<String>,
}

impl CertNames {
    fn preferred(self) -> Option<String> {
        self.common_name.or_else(|| self.dns.into_iter().next())
    }
    fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self.common_name.iter().cloned().collect();
        v.extend(
            self.dns
                .iter()
                .filter(|d| Some(*d) != self.common_name.as_ref())
                .cloned(),
        );
        v
    }
}

pub(crate) fn cert_names(der: &CertificateDer<'_>) -> std::result::Result<CertNames, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns.push((*d).to_owned());
            }
        }
    }
    Ok(CertNames { common_name, dns })
}

/// The verified name to report for a peer, given its end-entity certificate.
/// With a name policy it is the first allowed name the certificate carries.
pub(crate) fn peer_name(
    certs: Option<&[CertificateDer<'static>]>,
    allowed: Option<&[String]>,
) -> Result<String> {
    let ee = certs
        .and_then(|c| c.first())
        .ok_or(TransportError::NoClientCert)?;
    let names = cert_names(ee).map_err(|detail| TransportError::BadPeerCert { detail })?;
    match allowed {
        Some(allowed) => {
            let all = names.all();
            all.iter()
                .find(|n| allowed.iter().any(|a| a.eq_ignore_ascii_case(n)))
                .cloned()
                .ok_or(TransportError::NameNotAllowed {
                    presented: all.clone(),
                    allowed: allowed.to_vec(),
                })
        }
        None => names
            .preferred()
            .ok_or_else(|| TransportError::BadPeerCert {
                detail: "certificate has no DNS name or common name".into(),
            }),
    }
}

/// Carried inside `rustls::Error` so that the handshake error can be mapped back to
/// [`TransportError::NameNotAllowed`].
#[derive(Debug, thiserror::Error)]
#[error("certificate names {presented:?} are not among the allowed names {allowed:?}")]
pub struct NameNotAllowedError {
    pub presented: Vec<String>,
    pub allowed: Vec<String>,
}

#[derive(Debug)]
struct NamePolicy {
    allowed: Option<Vec<String>>,
}

impl NamePolicy {
    fn check(&self, ee: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        let Some(allowed) = &self.allowed else {
            return Ok(());
        };
        let names = cert_names(ee)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let presented = names.all();
        if presented
            .iter()
            .any(|n| allowed.iter().any(|a| a.eq_ignore_ascii_case(n)))
        {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NameNotAllowedError {
                presented,
                allowed: allowed.clone(),
            })),
        )))
    }
}

#[derive(Debug)]
struct PinnedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Arc<NamePolicy>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.policy.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    policy: Arc<NamePolicy>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.policy.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
