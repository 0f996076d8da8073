//! Client certificates (mTLS) of an https listener's `client_auth`: the
//! verifier its TLS config asks clients with, and what backends learn of
//! a client's certificate, as nginx passes `$ssl_client_verify`,
//! `$ssl_client_s_dn` and `$ssl_client_fingerprint` (SHA-256 here).
//!
//! The headers are made once per connection, after the handshake, and
//! added to each of its requests by cloning. Whatever a client sends
//! under these names is removed first, on every listener, so that no one
//! can claim a certificate they did not show.

use std::path::Path;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use x509_parser::x509::X509Name;

use crate::config::{ClientAuthConfig, ConfigError};

pub static X_CLIENT_CERT_VERIFIED: HeaderName = HeaderName::from_static("x-client-cert-verified");
pub static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub static X_CLIENT_CERT_FINGERPRINT: HeaderName =
    HeaderName::from_static("x-client-cert-fingerprint");

/// The prefix the three names share: one comparison per request header
/// finds a forged one.
pub(super) const PREFIX: &str = "x-client-cert-";

/// The verifier for `auth` (of the listener whose key path is `key`):
/// client certificates must chain to a CA of its file; a client with none
/// is let through unless `required`.
pub fn verifier(
    key: &str,
    auth: &ClientAuthConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let path = format!("{key}.ca");
    let problem = |p: &dyn std::fmt::Display| {
        ConfigError::value(
            path.clone(),
            format_args!("{:?}", auth.ca.display().to_string()),
            p,
        )
    };
    let roots = read_roots(&auth.ca).map_err(|p| problem(&p))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| problem(&e))
}

fn read_roots(file: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no CA certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".into());
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} cannot be used as a CA: {e}", i + 1))?;
    }
    Ok(roots)
}

/// What the backends of one client connection learn of its certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    verified: HeaderValue,
    /// Both set with a certificate, neither without.
    subject: Option<HeaderValue>,
    fingerprint: Option<HeaderValue>,
}

impl ClientCert {
    /// From the certificates the client showed (`peer`, the leaf first),
    /// which rustls has verified already: a handshake with an invalid one
    /// failed.
    pub fn of(peer: Option<&[CertificateDer<'_>]>) -> ClientCert {
        let Some(leaf) = peer.and_then(|p| p.first()) else {
            return ClientCert {
                verified: HeaderValue::from_static("NONE"),
                subject: None,
                fingerprint: None,
            };
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let fingerprint: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let subject = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| rfc4514(c.subject()))
            .unwrap_or_default();
        ClientCert {
            verified: HeaderValue::from_static("SUCCESS"),
            // Escaped to printable ASCII, so these cannot fail.
            subject: HeaderValue::from_str(&subject).ok(),
            fingerprint: HeaderValue::from_str(&fingerprint).ok(),
        }
    }

    /// Sets the headers on a request going to a backend.
    pub fn add(&self, headers: &mut HeaderMap) {
        headers.insert(X_CLIENT_CERT_VERIFIED.clone(), self.verified.clone());
        if let Some(s) = &self.subject {
            headers.insert(X_CLIENT_CERT_SUBJECT.clone(), s.clone());
        }
        if let Some(f) = &self.fingerprint {
            headers.insert(X_CLIENT_CERT_FINGERPRINT.clone(), f.clone());
        }
    }
}

/// Removes the three headers from a client's request: only geolb sets
/// them. `sent`: whether the request has a name of theirs (`x-client-cert-`,
/// `headers::Sent`); a removal only then.
#[inline]
pub fn strip_forged(headers: &mut HeaderMap, sent: bool) {
    if !sent {
        return;
    }
    headers.remove(&X_CLIENT_CERT_VERIFIED);
    headers.remove(&X_CLIENT_CERT_SUBJECT);
    headers.remove(&X_CLIENT_CERT_FINGERPRINT);
}

/// `name` as an RFC 4514 string: the last RDN first, `,` between RDNs,
/// `+` within one, short names for the attribute types RFC 4514 §3 lists
/// (and the dotted OID for others), special characters escaped, and
/// anything outside printable ASCII as `\XX` (§2.4 allows it), so the
/// result fits a header as it is.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            out.push_str(short_name(&oid).unwrap_or(&oid));
            out.push('=');
            match attr.as_str() {
                Ok(s) => escape(s, &mut out),
                // §2.4: a value not of a string type, as # and its hex.
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().as_bytes() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_of(params: impl FnOnce(&mut rcgen::DistinguishedName)) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        params(&mut p.distinguished_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        rfc4514(parsed.subject())
    }

    #[test]
    fn subjects_read_last_rdn_first_and_escaped() {
        let s = subject_of(|dn| {
            dn.push(rcgen::DnType::CountryName, "DE");
            dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
            dn.push(rcgen::DnType::CommonName, "#alice <ü>");
        });
        assert_eq!(s, "CN=\\#alice \\<\\C3\\BC\\>,O=Acme\\, Inc.,C=DE");
        assert!(HeaderValue::from_str(&s).is_ok());
    }

    #[test]
    fn no_certificate_is_none() {
        let c = ClientCert::of(None);
        let mut h = HeaderMap::new();
        c.add(&mut h);
        assert_eq!(h[&X_CLIENT_CERT_VERIFIED], "NONE");
        assert_eq!(h.len(), 1);
        assert_eq!(ClientCert::of(Some(&[])).verified, "NONE");
    }

    #[test]
    fn forged_headers_go_and_others_stay() {
        let mut h = HeaderMap::new();
        h.insert(&X_CLIENT_CERT_VERIFIED, HeaderValue::from_static("SUCCESS"));
        h.append(&X_CLIENT_CERT_SUBJECT, HeaderValue::from_static("CN=admin"));
        h.append(&X_CLIENT_CERT_SUBJECT, HeaderValue::from_static("CN=root"));
        h.insert("x-client-cert-other", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_forged(&mut h, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("accept") && h.contains_key("x-client-cert-other"));
    }
}
