//! TLS termination for `https` listeners: certificates from PEM files,
//! chosen by SNI, then the decrypted stream goes down the HTTP path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use super::client_cert::{self, ClientCert};
use super::http::{self, HttpContext};
use super::ocsp::{self, Cell};
use crate::accept::{Slot, Slots, accept_loop};
use crate::accesslog::TlsInfo;
use crate::config::{ClientAuthConfig, ConfigError, TlsCertConfig};
use crate::lograte;
use crate::metrics::TLS_HANDSHAKE_ERRORS;
use crate::proxy_protocol;
use crate::tcp_io::TcpIo;

/// Certificates closer than this to their expiry are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What was loaded from one `tls` entry, for expiry metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    /// The certificate file, as configured.
    pub cert: PathBuf,
    /// The DNS names of its subject alternative names (what SNI selects by).
    pub names: Vec<String>,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Its OCSP stapler, when it is stapled.
    pub ocsp: Option<ocsp::Handle>,
}

impl CertInfo {
    /// Seconds from `now` until the certificate expires; negative after.
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        self.not_after - now
    }
}

/// Logs a warning for each certificate that expires within
/// [`EXPIRY_WARNING`] (or has expired). Never an error: an expired
/// certificate is the operator's to replace, not a reason to stop serving.
pub fn warn_expiring(listener: &str, certs: &[CertInfo], now: SystemTime) {
    for c in certs {
        let left = c.seconds_left(now);
        if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(
                listener,
                cert = %c.cert.display(),
                days_left = left / 86_400,
                "TLS certificate expires soon or has expired"
            );
        }
    }
}

/// Keeps the last good OCSP responses in `state_dir` across restarts.
pub use ocsp::keep_in as keep_ocsp_responses_in;

/// Starts fetching OCSP responses for those of `certs` that are stapled
/// (once each: a reload keeping a certificate keeps its fetcher).
pub fn start_stapling(certs: &[CertInfo]) {
    certs
        .iter()
        .filter_map(|c| c.ocsp.as_ref())
        .for_each(ocsp::Handle::start);
}

/// The server config of an https listener (`listener[listener_index]`):
/// every certificate and key loaded and checked against each other, SNI
/// choosing among them (the first is the default), ALPN h2 and http/1.1,
/// TLS 1.2 and 1.3. Errors name the key path of the file at fault.
pub fn server_config(
    listener_index: usize,
    certs: &[TlsCertConfig],
) -> Result<(Arc<ServerConfig>, Vec<CertInfo>), Vec<ConfigError>> {
    let key = format!("listener[{listener_index}].tls");
    if certs.is_empty() {
        return Err(vec![ConfigError::at(
            key,
            "an https listener needs at least one certificate",
        )]);
    }
    build(&key, certs, &[b"h2", b"http/1.1"], None)
}

/// As [`server_config`], asking clients for certificates as `client_auth`
/// says (its errors at `listener[i].client_auth.ca`).
pub fn listener_server_config(
    listener_index: usize,
    certs: &[TlsCertConfig],
    client_auth: Option<&ClientAuthConfig>,
) -> Result<(Arc<ServerConfig>, Vec<CertInfo>), Vec<ConfigError>> {
    let Some(auth) = client_auth else {
        return server_config(listener_index, certs);
    };
    let key = format!("listener[{listener_index}].tls");
    let auth = (format!("listener[{listener_index}].client_auth"), auth);
    build(&key, certs, &[b"h2", b"http/1.1"], Some(auth))
}

/// The server config of the admin listener (`[admin] tls`): as an https
/// listener's, but HTTP/1.1 only (the admin API speaks nothing else).
pub fn admin_server_config(
    certs: &[TlsCertConfig],
) -> Result<(Arc<ServerConfig>, Vec<CertInfo>), Vec<ConfigError>> {
    build("admin.tls", certs, &[b"http/1.1"], None)
}

/// The certificates of the `tls` list at `key` (non-empty), offering
/// `alpn`, verifying clients by `client_auth` (at its key path) if given.
fn build(
    key: &str,
    certs: &[TlsCertConfig],
    alpn: &[&[u8]],
    client_auth: Option<(String, &ClientAuthConfig)>,
) -> Result<(Arc<ServerConfig>, Vec<CertInfo>), Vec<ConfigError>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errors = Vec::new();
    let mut loaded = Vec::new();
    for (j, entry) in certs.iter().enumerate() {
        let path = |what: &str| format!("{key}[{j}].{what}");
        match load(entry, &provider, path("cert"), path("key")) {
            Ok(l) => loaded.push(l),
            Err(mut e) => errors.append(&mut e),
        }
    }
    let verifier = client_auth.map(|(path, auth)| client_cert::verifier(&path, auth, &provider));
    if let Some(Err(e)) = &verifier {
        errors.push(e.clone());
    }
    if loaded.is_empty() && errors.is_empty() {
        errors.push(ConfigError::at(key, "at least one certificate is needed"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let resolver = SniResolver::new(&loaded);
    let infos = loaded.into_iter().map(|(_, info)| info).collect();
    let general = |e: rustls::Error| {
        vec![ConfigError::at(
            key,
            format_args!("cannot build the TLS configuration: {e}"),
        )]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(general)?;
    let builder = match verifier {
        Some(Ok(v)) => builder.with_client_cert_verifier(v),
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless resumption: returning clients skip the full handshake
    // without a per-client cache entry here.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(general)?;
    Ok((Arc::new(config), infos))
}

fn file_error(key_path: String, file: &Path, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::value(
        key_path,
        format_args!("{:?}", file.display().to_string()),
        problem,
    )
}

fn load(
    entry: &TlsCertConfig,
    provider: &CryptoProvider,
    cert_path: String,
    key_path: String,
) -> Result<(Cell, CertInfo), Vec<ConfigError>> {
    let chain = read_chain(&entry.cert).map_err(|p| file_error(cert_path.clone(), &entry.cert, p));
    let key =
        read_key(&entry.key, provider).map_err(|p| file_error(key_path.clone(), &entry.key, p));
    let ((chain, mut info), key) = match (chain, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => return Err(c.err().into_iter().chain(k.err()).collect()),
    };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive: nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(vec![file_error(
                key_path,
                &entry.key,
                format_args!(
                    "does not match the certificate in {:?}",
                    entry.cert.display().to_string()
                ),
            )]);
        }
        Err(e) => return Err(vec![file_error(cert_path, &entry.cert, e)]),
    }
    let settings = ocsp::Settings {
        enabled: entry.ocsp.enabled,
        responder: entry.ocsp.responder.as_deref(),
    };
    let (cell, stapler) =
        ocsp::prepare(Arc::new(certified), &entry.cert, settings).map_err(|problem| {
            let entry_path = cert_path.strip_suffix(".cert").unwrap_or(&cert_path);
            vec![file_error(
                format!("{entry_path}.ocsp"),
                &entry.cert,
                problem,
            )]
        })?;
    info.ocsp = stapler;
    Ok((cell, info))
}

/// What is wrong with a certificate or key file (the key path and file
/// name are added by [`file_error`]).
#[derive(Debug, thiserror::Error)]
enum PemFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a PEM certificate file: {0}")]
    NotCertificates(pem::Error),
    #[error("no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate,
    #[error("its first certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "no private key in it (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
    )]
    NoKey,
    #[error("not a PEM private key file: {0}")]
    NotKey(pem::Error),
    #[error("unusable private key: {0}")]
    UnusableKey(rustls::Error),
}

fn read_chain(file: &Path) -> Result<(Vec<CertificateDer<'static>>, CertInfo), PemFileError> {
    let bytes = std::fs::read(file)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemFileError::NotCertificates)?;
    let Some(leaf) = chain.first() else {
        return Err(PemFileError::NoCertificate);
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| PemFileError::BadCertificate(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(normalize(dns));
            }
        }
    }
    let info = CertInfo {
        cert: file.to_path_buf(),
        names,
        not_after: parsed.validity().not_after.timestamp(),
        ocsp: None,
    };
    Ok((chain, info))
}

fn read_key(
    file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<dyn rustls::sign::SigningKey>, PemFileError> {
    let bytes = std::fs::read(file)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => PemFileError::NoKey,
        e => PemFileError::NotKey(e),
    })?;
    provider
        .key_provider
        .load_private_key(key)
        .map_err(PemFileError::UnusableKey)
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Picks a certificate by SNI: an exact SAN first, then a `*.` wildcard
/// one label up, else the first certificate. Earlier certificates win
/// names they share with later ones. Each certificate sits in a [`Cell`]
/// that its OCSP stapler swaps when a new staple comes.
#[derive(Debug)]
struct SniResolver {
    default: Cell,
    exact: HashMap<String, Cell>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Cell>,
}

impl SniResolver {
    /// `loaded` is non-empty.
    fn new(loaded: &[(Cell, CertInfo)]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (key, info) in loaded {
            for name in &info.names {
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(name.to_string()).or_insert_with(|| key.clone());
            }
        }
        SniResolver {
            default: loaded[0].0.clone(),
            exact,
            wildcard,
        }
    }

    fn pick(&self, server_name: Option<&str>) -> &Cell {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = normalize(name);
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).load_full())
    }
}

/// Accepts until `ctx.shutdown`: per connection, the PROXY header if the
/// listener expects one, the TLS handshake (both within the listener's
/// header timeout), then the HTTP path; at most `slots`' limit open at
/// once. `tls` may be swapped (a reload
/// with new certificates); each handshake uses the current config.
pub async fn serve_https(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    tls: Arc<ArcSwap<ServerConfig>>,
    slots: Arc<Slots>,
) {
    if let Some(l) = ctx.snapshot.load().listeners.get(&ctx.id) {
        // Series at 0 from the start: the first failure is a rate change.
        ::metrics::counter!(TLS_HANDSHAKE_ERRORS, "listener" => l.config.name.clone()).increment(0);
        if l.config.accept_proxy_protocol {
            proxy_protocol::register_series(&l.config.name);
        }
    }
    let (name, shutdown) = (ctx.id.clone(), ctx.shutdown.clone());
    accept_loop(
        listener,
        name,
        shutdown,
        Some(slots),
        |stream, peer, slot| {
            let _ = stream.set_nodelay(true);
            ctx.tasks.spawn(super::prefetched(connection(
                stream,
                peer,
                ctx.clone(),
                tls.clone(),
                slot,
            )));
        },
    )
    .await
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<HttpContext>,
    tls: Arc<ArcSwap<ServerConfig>>,
    mut slot: Slot,
) {
    let (name, header_timeout, accept_proxy, client_auth) =
        match ctx.snapshot.load().listeners.get(&ctx.id) {
            Some(l) => (
                l.config.name.clone(),
                l.config.timeouts.header,
                l.config.accept_proxy_protocol,
                l.config.client_auth.is_some(),
            ),
            None => return,
        };
    // One deadline for everything before the first request, so a PROXY
    // header and a handshake cannot each take the whole timeout.
    let deadline = tokio::time::Instant::now() + header_timeout;
    let mut client = peer;
    if accept_proxy {
        let local = stream.local_addr().unwrap_or(ctx.id.bind);
        match proxy_protocol::accept(&mut stream, peer, local, header_timeout, &name).await {
            Some(a) => client = a.source,
            None => return,
        }
    }
    // Before the handshake, which costs the most.
    if !slot.admit(client.ip()) {
        tracing::debug!(%client, "client over its connection limit: closed");
        return;
    }
    let acceptor = TlsAcceptor::from(tls.load_full());
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(TcpIo::new(stream))).await;
    // The connection's future is made by a function and awaited on a
    // statement of its own: awaited where the handshake's result was
    // matched, the task kept that result and the stream borrowed from it
    // (1,224 bytes each) beside the stream the future holds, for the
    // connection's whole life.
    let serving = match after_handshake(handshake, header_timeout, client, client_auth, ctx, slot) {
        Ok(Some(serving)) => serving,
        Ok(None) => return,
        Err(problem) => {
            // Scanners and broken clients cause these by the thousand:
            // counted each, logged once a second.
            crate::log_limited!(info, listener = %name, %client, problem = %lograte::clip(&problem), "TLS handshake failed");
            ::metrics::counter!(TLS_HANDSHAKE_ERRORS, "listener" => name).increment(1);
            return;
        }
    };
    serving.await
}

/// The connection's future once its handshake is done (`None`: a
/// TLS-ALPN-01 validation, which ends with the handshake); `Err`: what
/// went wrong with the handshake, to log.
fn after_handshake(
    handshake: Result<std::io::Result<TlsStream<TcpIo>>, tokio::time::error::Elapsed>,
    header_timeout: Duration,
    client: SocketAddr,
    client_auth: bool,
    ctx: Arc<HttpContext>,
    slot: Slot,
) -> Result<Option<impl std::future::Future<Output = ()> + Send + use<>>, String> {
    let tls_stream = match handshake {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("handshake not done within {header_timeout:?}")),
    };
    let (_, session) = tls_stream.get_ref();
    // A TLS-ALPN-01 validation ends with the handshake (RFC 8737 §3).
    if session.alpn_protocol() == Some(crate::acme::ALPN) {
        return Ok(None);
    }
    let negotiated = TlsInfo {
        version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("-"),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("-"),
    };
    // Once per connection: its requests clone the headers.
    let cert = client_auth.then(|| ClientCert::of(session.peer_certificates()));
    Ok(Some(http::serve_connection(
        tls_stream,
        client,
        Some(negotiated),
        cert,
        ctx,
        Arc::new(slot),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::returned_size;

    /// Every TLS connection's task is this future: it was 9,392 bytes (a
    /// debug build) while it kept the handshake's result, the stream
    /// taken from it, the stream moved into the server and the server's
    /// argument split into the halves that own it (1,224 bytes each),
    /// 19.2 KB an idle HTTPS connection in all (12.9 KB since).
    #[test]
    fn a_tls_connection_keeps_its_stream_once() {
        let stream = std::mem::size_of::<TlsStream<TcpIo>>();
        let task = returned_size(&connection);
        assert!(stream > 1_000, "the TLS stream: {stream} bytes");
        // The state of the handshake or of the server, whichever is
        // under way, and no copy of the stream, which lives in the halves
        // the server reads and writes through: 2,992 bytes in a debug
        // build, 2,976 in a release one. One copy more fails.
        assert!(
            task < 2 * stream + 1024,
            "a TLS connection's future is {task} bytes: does it keep the stream ({stream} bytes) more than once?"
        );
    }

    fn info(names: &[&str]) -> CertInfo {
        CertInfo {
            cert: PathBuf::from("c.pem"),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: 0,
            ocsp: None,
        }
    }

    #[test]
    fn expiry_arithmetic() {
        let c = CertInfo {
            not_after: 1_000,
            ..info(&[])
        };
        assert_eq!(c.seconds_left(UNIX_EPOCH + Duration::from_secs(400)), 600);
        assert_eq!(
            c.seconds_left(UNIX_EPOCH + Duration::from_secs(1_500)),
            -500
        );
    }
}
