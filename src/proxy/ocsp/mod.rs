//! OCSP stapling for the certificates of https listeners and the admin
//! listener: each certificate whose chain names its issuer and that has a
//! responder (its Authority Information Access, or `ocsp_responder`) gets
//! a task that fetches its OCSP response, checks it ([`verify`]), and
//! swaps it into the [`CertifiedKey`] the SNI resolver hands out: no
//! reload needed, and no handshake ever waits for or fails on OCSP.
//!
//! Staplers outlive snapshots: they are found again by certificate (chain
//! and responder) when a reload loads the same files, so a reload neither
//! refetches nor serves a handshake without the staple it had. The fetch
//! task ends when the last config using its certificate is gone. The last
//! good response is also kept in `state_dir/ocsp/`, so that a restart
//! staples from its first handshake, as Caddy does.

mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::locked;
use crate::metrics::TLS_OCSP_FETCH_ERRORS;
pub use verify::{Good, Rejected, Subject, responder_url};

/// What the SNI resolver holds per certificate: the key with its staple
/// now, swapped by the certificate's stapler.
pub type Cell = Arc<ArcSwap<CertifiedKey>>;

/// A fetch, its connection and its answer, all within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Real responses are a few KiB; anything far larger is not one.
const MAX_RESPONSE: usize = 64 * 1024;
/// The first retry after a failed fetch, and the shortest refresh.
const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Retries back off, doubling, up to this.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// Refreshes come at half a response's validity, at most this apart, so
/// a revocation reaches the staple within hours even for week-long
/// responses.
const MAX_REFRESH: Duration = Duration::from_secs(12 * 3600);

/// [`MIN_INTERVAL`], or `GEOLB_OCSP_MIN_INTERVAL_MS` (tests use a short
/// one; retries then back off up to 60 times it).
fn min_interval() -> Duration {
    std::env::var("GEOLB_OCSP_MIN_INTERVAL_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(MIN_INTERVAL, Duration::from_millis)
}

/// One certificate's staple and the task that keeps it fresh.
struct Stapler {
    cell: Cell,
    subject: Subject,
    request: Bytes,
    responder: Responder,
    /// The certificate file, for logs and metrics.
    cert: String,
    /// Where its last good response is kept across restarts.
    saved: Option<PathBuf>,
    /// nextUpdate of the staple served now; None while there is none.
    next_update: Mutex<Option<SystemTime>>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl Drop for Stapler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A certificate's stapler, as `CertInfo` carries it (for the metrics and
/// to start it once its config comes into service).
#[derive(Clone)]
pub struct Handle(Arc<Stapler>);

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stapler")
            .field("cert", &self.0.cert)
            .field("responder", &self.0.responder.url)
            .finish()
    }
}

impl Handle {
    /// Seconds until the staple's nextUpdate; 0 while none is stapled.
    pub fn valid_seconds(&self, now: SystemTime) -> u64 {
        locked(&self.0.next_update)
            .and_then(|t| t.duration_since(now).ok())
            .map_or(0, |d| d.as_secs())
    }

    /// Starts fetching, unless it already runs (a reload keeping the
    /// certificate). Needs a tokio runtime: called when a config comes
    /// into service, never by `geolb check`.
    pub fn start(&self) {
        if self.0.started.swap(true, Ordering::Relaxed) {
            return;
        }
        ::metrics::counter!(TLS_OCSP_FETCH_ERRORS, "cert" => self.0.cert.clone()).increment(0);
        tokio::spawn(run(Arc::downgrade(&self.0), self.0.stop.clone()));
    }
}

/// The per-entry `ocsp` and `ocsp_responder` settings.
pub struct Settings<'a> {
    /// `ocsp`: None when not set (on when the certificate has a responder).
    pub enabled: Option<bool>,
    /// `ocsp_responder`: used instead of the certificate's.
    pub responder: Option<&'a str>,
}

/// The cell for `certified` (loaded from `cert_file`), with a stapler if
/// it is to be stapled: the running one for the same chain and responder
/// if there is one (keeping its staple). An error only where `ocsp = true`
/// asks for what cannot be done; otherwise a certificate that cannot be
/// stapled is logged and served without.
pub fn prepare(
    certified: Arc<CertifiedKey>,
    cert_file: &Path,
    settings: Settings<'_>,
) -> Result<(Cell, Option<Handle>), String> {
    let plain = |c| Ok((Arc::new(ArcSwap::new(c)), None));
    if settings.enabled == Some(false) {
        return plain(certified);
    }
    let chain = &certified.cert;
    let url = settings
        .responder
        .map(str::to_owned)
        .or_else(|| responder_url(&chain[0]));
    let Some(url) = url else {
        if settings.enabled == Some(true) {
            return Err(
                "the certificate names no OCSP responder (no Authority Information \
                        Access OCSP URL): set ocsp_responder, or remove ocsp"
                    .into(),
            );
        }
        return plain(certified);
    };
    let subject = chain
        .get(1)
        .ok_or_else(|| {
            "the file has no issuer certificate after it, which OCSP needs: append the \
             issuing CA's certificate"
                .to_string()
        })
        .and_then(|issuer| Subject::new(&chain[0], issuer));
    let responder = Responder::parse(&url);
    let (subject, responder) = match (subject, responder) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => {
            if settings.enabled == Some(true) {
                return Err(e);
            }
            tracing::warn!(cert = %cert_file.display(), problem = %e, "no OCSP stapling for this certificate");
            return plain(certified);
        }
    };
    let mut key: Vec<u8> = url.as_bytes().to_vec();
    for c in chain {
        key.extend_from_slice(&(c.len() as u32).to_be_bytes());
        key.extend_from_slice(c);
    }
    let mut registry = locked(registry());
    registry.retain(|_, w| w.strong_count() > 0);
    if let Some(running) = registry.get(&key).and_then(Weak::upgrade) {
        return Ok((running.cell.clone(), Some(Handle(running))));
    }
    let saved = locked(state_dir()).as_ref().map(|dir| {
        let name = ring::digest::digest(&ring::digest::SHA256, &key);
        let hex: String = name.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        dir.join("ocsp").join(format!("{hex}.der"))
    });
    let stapler = Arc::new(Stapler {
        cell: Arc::new(ArcSwap::new(certified)),
        request: Bytes::from(subject.request()),
        subject,
        responder,
        cert: cert_file.display().to_string(),
        saved,
        next_update: Mutex::new(None),
        started: AtomicBool::new(false),
        stop: CancellationToken::new(),
    });
    stapler.restore(SystemTime::now());
    registry.insert(key, Arc::downgrade(&stapler));
    Ok((stapler.cell.clone(), Some(Handle(stapler))))
}

/// Keeps the last good responses in `dir/ocsp/` from now on (the
/// config's `[runtime] state_dir`; it needs a restart to change, as the
/// other files there).
pub fn keep_in(dir: &Path) {
    *locked(state_dir()) = Some(dir.to_path_buf());
}

fn state_dir() -> &'static Mutex<Option<PathBuf>> {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    &DIR
}

/// Staplers by chain and responder URL, for reloads to find.
fn registry() -> &'static Mutex<HashMap<Vec<u8>, Weak<Stapler>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Vec<u8>, Weak<Stapler>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Fetches until the stapler is dropped: at half of each response's
/// validity, or after a failure with a doubling back-off; a staple that
/// reaches its nextUpdate unreplaced is taken off.
async fn run(stapler: Weak<Stapler>, stop: CancellationToken) {
    let floor = min_interval();
    let max_retry = MAX_RETRY.min(floor * 60);
    let mut backoff = floor;
    loop {
        let Some(s) = stapler.upgrade() else { return };
        let now = SystemTime::now();
        let wait = match s.fetch(now).await {
            Ok(good) => {
                backoff = floor;
                let wait = refresh_in(&good, now, floor);
                s.staple(Some(good));
                wait
            }
            Err(problem) => {
                ::metrics::counter!(TLS_OCSP_FETCH_ERRORS, "cert" => s.cert.clone()).increment(1);
                tracing::warn!(cert = %s.cert, responder = %s.responder.url, %problem, retry_in = ?backoff, "OCSP fetch failed");
                let expiry = *locked(&s.next_update);
                if matches!(problem, Failure::Status(_)) || expiry.is_some_and(|t| t <= now) {
                    s.staple(None);
                }
                let until_expiry = expiry.and_then(|t| t.duration_since(now).ok());
                let wait = until_expiry.map_or(backoff, |e| e.min(backoff));
                backoff = (backoff * 2).min(max_retry);
                wait
            }
        };
        drop(s);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// When to refresh `good`: half way through its validity, within
/// [`MIN_INTERVAL`] (or the test's) and [`MAX_REFRESH`].
fn refresh_in(good: &Good, now: SystemTime, floor: Duration) -> Duration {
    let half = good
        .next_update
        .duration_since(good.this_update)
        .unwrap_or_default()
        / 2;
    (good.this_update + half)
        .duration_since(now)
        .unwrap_or_default()
        .clamp(floor, MAX_REFRESH.max(floor))
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Transport(String),
    /// An answer that says what the staple must not: it comes off now.
    #[error("{0}")]
    Status(Rejected),
    #[error("{0}")]
    Invalid(Rejected),
}

impl Stapler {
    async fn fetch(&self, now: SystemTime) -> Result<Good, Failure> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.responder.post(self.request.clone()))
            .await
            .map_err(|_| Failure::Transport(format!("no answer within {FETCH_TIMEOUT:?}")))?
            .map_err(Failure::Transport)?;
        self.subject.check(&body, now).map_err(|r| match r {
            Rejected::Revoked | Rejected::Unknown => Failure::Status(r),
            r => Failure::Invalid(r),
        })
    }

    /// Staples the saved response, if it is still one to staple.
    fn restore(&self, now: SystemTime) {
        let Some(path) = &self.saved else { return };
        let Ok(der) = std::fs::read(path) else { return };
        match self.subject.check(&der, now) {
            Ok(good) => self.staple(Some(good)),
            Err(problem) => {
                tracing::debug!(cert = %self.cert, %problem, "saved OCSP response not used");
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Writes (or with None removes) the saved response: a temporary file
    /// renamed over it, so a crash never leaves half of one.
    fn save(&self, der: Option<&[u8]>) {
        let Some(path) = &self.saved else { return };
        let result = match der {
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
            Some(der) => {
                let tmp = path.with_extension("tmp");
                path.parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&tmp, der))
                    .and_then(|()| std::fs::rename(&tmp, path))
            }
        };
        if let Err(e) = result {
            crate::log_limited!(warn, path = %path.display(), error = %e, "cannot keep the OCSP response in the state directory");
        }
    }

    fn staple(&self, good: Option<Good>) {
        let mut next = locked(&self.next_update);
        let current = self.cell.load();
        if good.is_none() && current.ocsp.is_none() {
            return;
        }
        match &good {
            Some(g) if next.is_none() => {
                tracing::info!(cert = %self.cert, valid_until = %httpdate::fmt_http_date(g.next_update), "OCSP response stapled")
            }
            Some(_) => {}
            None => tracing::warn!(cert = %self.cert, "OCSP staple removed"),
        }
        *next = good.as_ref().map(|g| g.next_update);
        if self.started.load(Ordering::Relaxed) {
            self.save(good.as_ref().map(|g| g.der.as_slice()));
        }
        let mut key = CertifiedKey::clone(&current);
        key.ocsp = good.map(|g| g.der);
        self.cell.store(Arc::new(key));
    }
}

/// An `http://host[:port]/path` responder.
#[derive(Debug, Clone, PartialEq)]
struct Responder {
    url: String,
    host: String,
    port: u16,
    /// `host[:port]` as the Host header says it.
    authority: String,
    path: String,
}

impl Responder {
    fn parse(url: &str) -> Result<Responder, String> {
        let bad = || format!("OCSP responder {url:?} is not an http://host[:port][/path] URL");
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
            .ok_or_else(bad)?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        Ok(Responder {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    /// POSTs the request (RFC 6960 A.1) and reads at most
    /// [`MAX_RESPONSE`] bytes of a 200 answer.
    async fn post(&self, request: Bytes) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        // Bounded like the caller, so a responder that never finishes
        // cannot keep the connection's task alive.
        tokio::spawn(tokio::time::timeout(FETCH_TIMEOUT, conn));
        let req = http::Request::post(&self.path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(Full::new(request))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("the responder answered HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn responder_urls() {
        let r = Responder::parse("http://ocsp.example.net:8080/a/b").unwrap();
        assert_eq!(
            (
                r.host.as_str(),
                r.port,
                r.authority.as_str(),
                r.path.as_str()
            ),
            ("ocsp.example.net", 8080, "ocsp.example.net:8080", "/a/b")
        );
        let r = Responder::parse("HTTP://[::1]").unwrap();
        assert_eq!((r.host.as_str(), r.port, r.path.as_str()), ("::1", 80, "/"));
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://x:99999/",
            "http://u@x/",
        ] {
            assert!(Responder::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refresh_at_half_validity_within_bounds() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let good = |valid: u64| Good {
            der: vec![],
            this_update: t0,
            next_update: t0 + Duration::from_secs(valid),
        };
        let floor = Duration::from_secs(60);
        assert_eq!(
            refresh_in(&good(4 * 3600), t0, floor),
            Duration::from_secs(7200)
        );
        assert_eq!(refresh_in(&good(7 * 86_400), t0, floor), MAX_REFRESH);
        assert_eq!(refresh_in(&good(10), t0, floor), floor);
        // Fetched late: the half-way point has passed.
        assert_eq!(
            refresh_in(&good(3600), t0 + Duration::from_secs(3000), floor),
            floor
        );
    }
}
