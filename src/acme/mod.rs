//! Certificates from an ACME CA (RFC 8555) for https listeners with
//! `tls = { acme = { ... } }`: ordered at start when none is stored (or
//! the stored one does not cover the names or is due), renewed
//! `renew_before` ahead of notAfter, each new one swapped into the
//! listener's resolver without a reload.
//!
//! One [`Certificate`] per distinct `acme` table (and state directory),
//! shared by every listener with that table and kept across reloads, so
//! that a reload neither orders again nor drops the certificate. Its
//! order loop ([`manage`]) is started and stopped by the daemon as
//! configs come and go.
//!
//! Challenges are answered process-wide: HTTP-01 tokens by every http
//! listener ([`http01`], before routing), TLS-ALPN-01 (RFC 8737) by the
//! https listener's resolver when a ClientHello offers only `acme-tls/1`.
//! Until a first certificate exists, handshakes on the listener fail (no
//! certificate is chosen), logged at most once a second: a self-signed
//! stand-in would only move the failure to the client's verification.

mod client;
mod order;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;

use crate::config::{AcmeConfig, ConfigError};
use crate::locked;
use crate::metrics::TLS_ACME_ORDERS;
use store::Store;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
pub const ALPN: &[u8] = b"acme-tls/1";

/// Where HTTP-01 tokens are fetched (RFC 8555 §8.3).
const HTTP01_PATH: &str = "/.well-known/acme-challenge/";

/// Challenges put up now, of all orders: while 0, [`http01`] costs one
/// atomic load per request.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// HTTP-01: token -> key authorization.
static HTTP01: LazyLock<Mutex<HashMap<String, Bytes>>> = LazyLock::new(Default::default);
/// TLS-ALPN-01: name -> the challenge certificate for it.
static TLS_ALPN01: LazyLock<Mutex<HashMap<String, Arc<CertifiedKey>>>> =
    LazyLock::new(Default::default);

/// The key authorization to answer a request for `path` with, when it
/// asks for the token of an order under way; None for everything else
/// (requests for unknown tokens are routed as usual: a backend may run
/// its own ACME client).
pub fn http01(path: &str) -> Option<Bytes> {
    if PENDING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let token = path.strip_prefix(HTTP01_PATH)?;
    locked(&HTTP01).get(token).cloned()
}

fn tls_alpn01(name: &str) -> Option<Arc<CertifiedKey>> {
    locked(&TLS_ALPN01)
        .get(&name.trim_end_matches('.').to_ascii_lowercase())
        .cloned()
}

/// The challenges one order put up, taken down when the order ends,
/// however it ends.
#[derive(Default)]
struct Answering {
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Answering {
    fn http01(&mut self, token: &str, key_authorization: &str) {
        let answer = Bytes::copy_from_slice(key_authorization.as_bytes());
        locked(&HTTP01).insert(token.to_owned(), answer);
        self.tokens.push(token.to_owned());
        PENDING.fetch_add(1, Ordering::Relaxed);
    }

    fn tls_alpn01(&mut self, name: &str, cert: Arc<CertifiedKey>) {
        locked(&TLS_ALPN01).insert(name.to_owned(), cert);
        self.names.push(name.to_owned());
        PENDING.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let mut http = locked(&HTTP01);
        for token in &self.tokens {
            http.remove(token);
        }
        drop(http);
        let mut tls = locked(&TLS_ALPN01);
        for name in &self.names {
            tls.remove(name);
        }
        PENDING.fetch_sub(self.tokens.len() + self.names.len(), Ordering::Relaxed);
    }
}

/// A certificate in service, with what the expiry gauge and the renewal
/// need of it.
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its SANs, lower-case.
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl Issued {
    /// A PEM chain (leaf first) and its PEM private key, checked to match.
    fn from_pem(chain: &[u8], key: &[u8]) -> Result<Issued, String> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        let not_after = parsed.validity().not_after.timestamp();
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("the key: {e}"))?;
        let certified = CertifiedKey::new(chain, key);
        certified
            .keys_match()
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        Ok(Issued {
            key: Arc::new(certified),
            names,
            not_after,
        })
    }
}

/// The certificate of one `acme` table: the one in service (if any), and
/// where it is stored.
pub struct Certificate {
    config: AcmeConfig,
    store: Store,
    current: ArcSwapOption<Issued>,
    /// What was wrong with the stored certificate, until logged.
    stored_problem: Mutex<Option<String>>,
}

/// Whether an order is due, and why.
#[derive(Debug, PartialEq)]
enum Due {
    Now(String),
    In(Duration),
}

impl Certificate {
    /// The certificate of `config` in `state_dir`: the one already known
    /// to this process (a reload, or two listeners with one table), else
    /// a new one with what is stored loaded at once.
    pub fn of(config: &AcmeConfig, state_dir: &Path) -> Arc<Certificate> {
        static ALL: LazyLock<Mutex<Vec<Arc<Certificate>>>> = LazyLock::new(Default::default);
        let store = Store::new(state_dir, config);
        let mut all = locked(&ALL);
        if let Some(known) = all.iter().find(|c| c.config == *config && c.store == store) {
            return known.clone();
        }
        let cert = Arc::new(Certificate {
            config: config.clone(),
            store,
            current: ArcSwapOption::empty(),
            stored_problem: Mutex::new(None),
        });
        cert.load();
        all.push(cert.clone());
        cert
    }

    /// Puts the stored certificate in service, if it is usable; else says
    /// why not. Runs while the config is checked, before the logger may be
    /// set up: [`manage`] logs the outcome.
    fn load(&self) {
        let problem = match self.store.read_cert() {
            Ok(None) => None,
            Ok(Some((chain, key))) => match Issued::from_pem(&chain, &key) {
                Ok(issued) => {
                    self.current.store(Some(Arc::new(issued)));
                    None
                }
                Err(e) => Some(format!("unusable: {e}")),
            },
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        *locked(&self.stored_problem) = problem;
    }

    /// The certificate file and what the one in service says, for the
    /// expiry gauge.
    pub fn in_service(&self) -> Option<(PathBuf, Vec<String>, i64)> {
        let issued = self.current.load_full()?;
        Some((
            self.store.cert.clone(),
            issued.names.clone(),
            issued.not_after,
        ))
    }

    fn due(&self, now: SystemTime) -> Due {
        let Some(issued) = self.current.load_full() else {
            return Due::Now("no certificate yet".to_owned());
        };
        if let Some(name) = self.config.names.iter().find(|n| !issued.names.contains(n)) {
            return Due::Now(format!("the certificate does not cover {name}"));
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let renew_at = issued.not_after - self.config.renew_before.as_secs() as i64;
        if now >= renew_at {
            let days = (issued.not_after - now) / 86_400;
            return Due::Now(format!("the certificate expires in {days} days"));
        }
        Due::In(Duration::from_secs((renew_at - now) as u64))
    }
}

/// Answers handshakes of an ACME listener: TLS-ALPN-01 validations with
/// their challenge certificate, everything else with the certificate in
/// service.
struct Resolver(Arc<Certificate>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Resolver")
            .field(&self.0.config.names)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ALPN))
        {
            return hello.server_name().and_then(tls_alpn01);
        }
        let current = self.0.current.load();
        if current.is_none() {
            crate::log_limited!(info, names = ?self.0.config.names, "TLS handshake refused: no ACME certificate yet");
        }
        current.as_ref().map(|issued| issued.key.clone())
    }
}

/// What an ACME https listener (`listener[listener_index]`) serves with:
/// its TLS config (ALPN h2, http/1.1 and acme-tls/1) and its certificate.
/// Fails when `ca` cannot be read.
pub fn prepare(
    listener_index: usize,
    config: &AcmeConfig,
    state_dir: &Path,
) -> Result<(Arc<ServerConfig>, Arc<Certificate>), ConfigError> {
    if let (Some(ca), Err(e)) = (&config.ca, client::Client::new(config.ca.as_deref())) {
        return Err(ConfigError::value(
            format!("listener[{listener_index}].tls.acme.ca"),
            format_args!("{:?}", ca.display().to_string()),
            e,
        ));
    }
    let cert = Certificate::of(config, state_dir);
    let general = |e: rustls::Error| {
        ConfigError::at(
            format!("listener[{listener_index}].tls"),
            format_args!("cannot build the TLS configuration: {e}"),
        )
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(general)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(cert.clone())));
    // Server preference: clients offering h2 or http/1.1 never get
    // acme-tls/1; a validation offers nothing else (RFC 8737 §3).
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ALPN.to_vec()];
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(general)?;
    Ok((Arc::new(server), cert))
}

/// How often certificates are looked at, and how soon a failed order is
/// tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timing {
    check: Duration,
    retry: Duration,
    max_retry: Duration,
    /// Spreads the checks of many daemons over an hour.
    jitter: Duration,
}

impl Timing {
    /// Every 12 hours (plus up to an hour), retries after 1 minute doubling
    /// to 6 hours; `GEOLB_ACME_INTERVAL` (e.g. "1s", "500ms": tests) sets
    /// the check interval and the first retry, without jitter.
    fn from_env() -> Timing {
        let interval = std::env::var("GEOLB_ACME_INTERVAL")
            .ok()
            .and_then(|v| parse_interval(&v));
        match interval {
            Some(every) => Timing {
                check: every,
                retry: every,
                max_retry: every * 8,
                jitter: Duration::ZERO,
            },
            None => Timing {
                check: Duration::from_secs(12 * 3600),
                retry: Duration::from_secs(60),
                max_retry: Duration::from_secs(6 * 3600),
                jitter: Duration::from_secs(3600),
            },
        }
    }

    fn next_check(&self, until_due: Duration) -> Duration {
        let jitter = self.jitter.mul_f64(fastrand::f64());
        until_due.min(self.check) + jitter
    }

    /// After `failures` (at least 1) failed orders in a row.
    fn retry_after(&self, failures: u32) -> Duration {
        let doubled = self
            .retry
            .saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1));
        doubled.min(self.max_retry)
    }
}

fn parse_interval(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
    .filter(|d| !d.is_zero())
}

/// An order may take this long, challenges and polling included, before
/// it counts as failed.
const ORDER_LIMIT: Duration = Duration::from_secs(300);

/// The order loop of `cert` until `shutdown`: orders when one is due,
/// retries failures with backoff, and never stops on an error: the
/// listener keeps serving the certificate it has.
pub async fn manage(cert: Arc<Certificate>, shutdown: CancellationToken) {
    let timing = Timing::from_env();
    let first = cert.config.names[0].clone();
    ::metrics::counter!(TLS_ACME_ORDERS, "name" => first.clone(), "result" => "success")
        .increment(0);
    ::metrics::counter!(TLS_ACME_ORDERS, "name" => first.clone(), "result" => "failure")
        .increment(0);
    let client = match client::Client::new(cert.config.ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // `prepare` read the same file: it changed since.
            tracing::error!(names = ?cert.config.names, error = %e, "ACME: no client; no orders until a reload");
            return;
        }
    };
    let file = cert.store.cert.display();
    if let Some(problem) = locked(&cert.stored_problem).take() {
        tracing::warn!(cert = %file, %problem, "ACME: stored certificate not used; a new one will be ordered");
    } else if let Some(issued) = cert.current.load_full() {
        tracing::info!(cert = %file, names = ?issued.names, not_after = issued.not_after, "ACME: stored certificate in service");
    }
    let mut failures = 0;
    loop {
        let wait = match cert.due(SystemTime::now()) {
            Due::In(until) => timing.next_check(until),
            Due::Now(why) => {
                tracing::info!(names = ?cert.config.names, directory = %cert.config.directory, reason = %why, "ACME: ordering a certificate");
                let ordered = tokio::select! {
                    r = tokio::time::timeout(ORDER_LIMIT, order::obtain(&cert, &client)) => {
                        r.unwrap_or_else(|_| Err(order::OrderError::Timeout(ORDER_LIMIT)))
                    }
                    () = shutdown.cancelled() => return,
                };
                match ordered {
                    Ok(issued) => {
                        failures = 0;
                        ::metrics::counter!(TLS_ACME_ORDERS, "name" => first.clone(), "result" => "success").increment(1);
                        tracing::info!(names = ?issued.names, not_after = issued.not_after, cert = %cert.store.cert.display(), "ACME: new certificate in service");
                        cert.current.store(Some(Arc::new(issued)));
                        timing.check
                    }
                    Err(e) => {
                        failures += 1;
                        ::metrics::counter!(TLS_ACME_ORDERS, "name" => first.clone(), "result" => "failure").increment(1);
                        let retry = timing.retry_after(failures);
                        tracing::warn!(names = ?cert.config.names, directory = %cert.config.directory, error = %e, failures, retry_in = ?retry, "ACME: order failed; the listener keeps its current certificate");
                        retry
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
