//! Error classification: turns rustls, quinn and I/O errors from either
//! transport into the [`TransportError`] variant that names the cause (an
//! unknown CA, a name not allowed, a peer that rejected us, a closed stream).

use quinn::ConnectionError;
use rustls::CertificateError;

use crate::error::TransportError;
use crate::tls::NameNotAllowedError;

/// Map a rustls error to the variant that says why the handshake failed.
pub fn classify_tls_error(e: rustls::Error) -> TransportError {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            TransportError::UnknownCa {
                detail: "certificate is not signed by a trusted CA".into(),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            TransportError::UnknownCa {
                detail: "issuer name matches a trusted CA but its signature does not verify \
                         (a different CA with the same name, or a corrupted certificate)"
                    .into(),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(ref other)) => {
            match other.0.downcast_ref::<NameNotAllowedError>() {
                Some(n) => TransportError::NameNotAllowed {
                    presented: n.presented.clone(),
                    allowed: n.allowed.clone(),
                },
                None => TransportError::BadPeerCert {
                    detail: e.to_string(),
                },
            }
        }
        rustls::Error::InvalidCertificate(_) => TransportError::BadPeerCert {
            detail: e.to_string(),
        },
        rustls::Error::NoCertificatesPresented => TransportError::NoClientCert,
        rustls::Error::AlertReceived(alert) => TransportError::RejectedByPeer {
            alert: format!("{alert:?}"),
        },
        other => TransportError::Tls(other),
    }
}

/// Map an I/O error from a TLS or QUIC stream, unwrapping the TLS error inside.
pub(crate) fn classify_io_error(context: &'static str, e: std::io::Error) -> TransportError {
    if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
        return match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
            Some(Ok(tls)) => classify_tls_error(*tls),
            // Unreachable: the type was checked just above.
            _ => TransportError::TlsConfig("inconsistent TLS error".into()),
        };
    }
    if let Some(inner) = e.get_ref() {
        if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref::<quinn::ReadError>()
        {
            return classify_connection_error(c.clone());
        }
        if let Some(quinn::WriteError::ConnectionLost(c)) =
            inner.downcast_ref::<quinn::WriteError>()
        {
            return classify_connection_error(c.clone());
        }
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return TransportError::Closed;
    }
    TransportError::Io { context, source: e }
}

const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// QUIC carries TLS failures as CRYPTO_ERROR (0x100 + alert) with the rustls error
/// text as reason; recover the named cause from those.
pub(crate) fn classify_connection_error(e: ConnectionError) -> TransportError {
    let crypto_alert = |code: quinn::TransportErrorCode| {
        let c = u64::from(code);
        (0x100..0x200).contains(&c).then_some((c - 0x100) as u8)
    };
    match e {
        ConnectionError::TransportError(ref t) => match crypto_alert(t.code) {
            // We rejected the peer during the handshake.
            Some(ALERT_UNKNOWN_CA) => TransportError::UnknownCa {
                detail: t.reason.clone(),
            },
            Some(ALERT_CERTIFICATE_REQUIRED) => TransportError::NoClientCert,
            Some(_) if t.reason.contains("NameNotAllowedError") => {
                parse_name_not_allowed(&t.reason)
            }
            Some(ALERT_BAD_CERTIFICATE) => TransportError::BadPeerCert {
                detail: t.reason.clone(),
            },
            _ => TransportError::QuicConnection(e),
        },
        ConnectionError::ConnectionClosed(ref close) => match crypto_alert(close.error_code) {
            // The peer rejected us.
            Some(alert) => TransportError::RejectedByPeer {
                alert: format!("{:?}", rustls::AlertDescription::from(alert)),
            },
            None => TransportError::QuicConnection(e),
        },
        other => TransportError::QuicConnection(other),
    }
}

/// Best effort: QUIC hands us the verifier's error as text only, the Debug form
/// `NameNotAllowedError { presented: [..], allowed: [..] }`.
fn parse_name_not_allowed(reason: &str) -> TransportError {
    let list = |after: &str| -> Vec<String> {
        reason
            .split_once(after)
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(inside, _)| {
                inside
                    .split(',')
                    .map(|s| s.trim().trim_matches(['"', '[']).to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    TransportError::NameNotAllowed {
        presented: list("presented: ["),
        allowed: list("allowed: ["),
    }
}
