//! For tests that run the proxy in process: a test PKI, TLS clients, raw
//! TCP backends, a load balancer built from the library, and metric
//! lookup.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use geolb::accept::Slots;
use geolb::proxy::http::{self as http_proxy, HttpContext};
use geolb::proxy::tcp::{self, TcpContext};
use geolb::proxy::tls::{self, CertInfo};
use geolb::state::{self, BackendRegistry, SharedSnapshot};
use metrics_exporter_prometheus::PrometheusHandle;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A deterministic byte stream that is not all one value, so shifted or
/// dropped bytes show.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- PKI ----

/// A CA made for one test, and leaf certificates it signs into files.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
}

pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "geolb test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The CA certificate alone, as a PEM file (a check's `ca`).
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A TLS acceptor serving `leaf`.
    pub fn acceptor(&self, leaf: &Leaf) -> tokio_rustls::TlsAcceptor {
        self.acceptor_alpn(leaf, &[])
    }

    /// A TLS acceptor serving `leaf` and agreeing to the first of `alpn`
    /// the client offers.
    pub fn acceptor_alpn(&self, leaf: &Leaf, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// `name.pem` (leaf then CA, as servers usually ship chains) and `name.key`.
    pub fn leaf(&self, name: &str, sans: &[&str]) -> Leaf {
        self.leaf_with(name, sans, |_| {})
    }

    pub fn leaf_with(
        &self,
        name: &str,
        sans: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A client that only speaks TLS 1.2.
    pub fn client_tls12(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// `tls = [...]` for a listener.
pub fn tls_list(leaves: &[&Leaf]) -> String {
    let entries: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                l.cert.display().to_string(),
                l.key.display().to_string()
            )
        })
        .collect();
    format!("tls = [{}]", entries.join(", "))
}

/// A handshake with `server_name` as SNI (an IP address sends none).
pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
}

// ---- raw TCP backends ----

/// A TCP server whose per-connection behaviour a test supplies. Stops
/// accepting (and cuts its connections) when dropped.
pub struct TcpBackend {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl TcpBackend {
    pub async fn start<F, Fut>(handler: F) -> TcpBackend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0", handler).await
    }

    pub async fn start_on<F, Fut>(bind: &str, handler: F) -> TcpBackend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let work = handler(stream);
                let stop3 = stop2.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = work => {}
                        _ = stop3.cancelled() => {}
                    }
                });
            }
        });
        TcpBackend { addr, stop }
    }

    /// Echoes every byte; closes its write side after the client's FIN.
    pub async fn echo() -> TcpBackend {
        Self::start(echo).await
    }
}

/// How each request is answered by a [`Counting`] backend.
#[derive(Clone)]
pub enum Answer {
    /// 200 once the gate gives a permit.
    Gated(Arc<Semaphore>),
    /// `status` after `delay`.
    After(u16, Duration),
}

/// A keep-alive HTTP/1.1 backend (body-less requests only) counting the
/// connections it accepted, the requests it received and the most it held
/// at once.
pub struct Counting {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    pub most: Arc<AtomicUsize>,
    _server: TcpBackend,
}

impl Counting {
    pub async fn start(answer: Answer) -> Counting {
        let counters: [Arc<AtomicUsize>; 4] = Default::default();
        let [connections, requests, in_flight, most] = counters.clone();
        let server = TcpBackend::start(move |stream| {
            connections.fetch_add(1, Ordering::SeqCst);
            let counters = (requests.clone(), in_flight.clone(), most.clone());
            serve_counting(stream, answer.clone(), counters)
        })
        .await;
        let [connections, requests, in_flight, most] = counters;
        Counting {
            addr: server.addr,
            connections,
            requests,
            in_flight,
            most,
            _server: server,
        }
    }

    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

async fn serve_counting(
    mut stream: TcpStream,
    answer: Answer,
    (requests, in_flight, most): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        requests.fetch_add(1, Ordering::SeqCst);
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        let status = match &answer {
            Answer::Gated(gate) => {
                gate.acquire().await.unwrap().forget();
                200
            }
            Answer::After(status, delay) => {
                tokio::time::sleep(*delay).await;
                *status
            }
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Reads until the client's FIN, then answers with how much it got.
pub async fn count_then_answer(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => return,
        }
    }
    let _ = stream
        .write_all(format!("got {total} bytes").as_bytes())
        .await;
    let _ = stream.shutdown().await;
}

// ---- HTTP origins (hyper) ----

/// An HTTP server speaking HTTP/1.1 and HTTP/2 (cleartext by prior
/// knowledge, or over TLS by ALPN when given an acceptor) that answers
/// every request with what it saw: `version method uri host=... proto=...`.
pub struct Origin {
    pub addr: SocketAddr,
    /// Connections accepted (TLS handshakes included when TLS).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _backend: TcpBackend,
}

impl Origin {
    pub async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        use std::sync::atomic::Ordering;
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let backend = TcpBackend::start(move |stream| {
            let (tls, counter) = (tls.clone(), counter.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_origin(stream).await;
                        }
                    }
                    None => serve_origin(stream).await,
                }
            }
        })
        .await;
        Origin {
            addr: backend.addr,
            connections,
            _backend: backend,
        }
    }
}

async fn serve_origin<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    let service =
        hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map_or("-", |v| v.to_str().unwrap_or("?"))
                    .to_owned()
            };
            let body = format!(
                "{:?} {} {} host={} proto={}",
                req.version(),
                req.method(),
                req.uri(),
                header("host"),
                header("x-forwarded-proto")
            );
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
        });
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

// ---- the load balancer, in process ----

/// The process-wide metrics recorder (installed once for all tests).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| geolb::metrics::install().expect("metrics recorder"))
}

/// The value of one series in Prometheus text, if present.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        let count = if label_text.is_empty() {
            0
        } else {
            label_text.split(',').count()
        };
        (all && count == labels.len())
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `config` as the daemon would serve it (generation 1), checks in `health`.
pub fn compile(
    config: &geolb::config::Config,
    health: &Arc<geolb::health::HealthTable>,
) -> state::Snapshot {
    let upstreams = config
        .pools
        .iter()
        .map(|p| geolb::upstream::Upstream::new(p).unwrap())
        .collect();
    let mut unread = Vec::new();
    let pages = geolb::rules::load_pages(config, &mut unread);
    assert!(unread.is_empty(), "error_pages: {unread:?}");
    state::compile(
        Arc::new(config.clone()),
        upstreams,
        pages,
        1,
        health,
        &BackendRegistry::default(),
    )
}

/// promtool judges a /metrics text where it is installed (CI installs it).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let run = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        });
    match run {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed; .ci/run should install it")
        }
        Err(_) => {}
    }
}

pub struct ListenerSpec<'a> {
    pub name: &'a str,
    /// "tcp", "https" or "http"
    pub protocol: &'a str,
    pub pool: &'a str,
    /// More listener keys (timeouts, retries, tls, accept_proxy_protocol).
    pub extra: String,
}

/// `geolb::proxy`'s tcp and https paths (and plain http) serving a config
/// built in the test, without the binary: the library API as the daemon
/// wires it.
pub struct Lb {
    pub addrs: HashMap<String, SocketAddr>,
    pub snapshot: SharedSnapshot,
    pub certs: HashMap<String, Vec<CertInfo>>,
    pub tasks: TaskTracker,
    shutdown: CancellationToken,
    _health: Arc<geolb::health::HealthTable>,
    _dir: tempfile::TempDir,
}

impl Lb {
    /// The recorder's series and the traffic series of this proxy's routes,
    /// as /metrics would show them.
    pub fn metrics(&self) -> String {
        let mut text = metrics().render();
        geolb::admin::render_routes(&mut text, &self.snapshot.load());
        text
    }
}

impl Lb {
    pub async fn start(pools: &str, listeners: &[ListenerSpec<'_>]) -> Lb {
        metrics();
        let dir = tempfile::tempdir().unwrap();
        let mut text = pools.to_string();
        let mut sockets = Vec::new();
        for l in listeners {
            let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            text.push_str(&format!(
                "\n[[listener]]\nname = \"{}\"\nbind = \"{addr}\"\nprotocol = \"{}\"\npool = \"{}\"\n{}\n",
                l.name, l.protocol, l.pool, l.extra
            ));
            sockets.push((l.name.to_string(), l.protocol, socket, addr));
        }
        let config = geolb::config::parse_str(&text, &dir.path().join("geolb.toml"))
            .unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{text}"));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let health = geolb::health::HealthTable::new(shutdown.child_token());
        let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(compile(&config, &health)));
        let mut addrs = HashMap::new();
        let mut certs = HashMap::new();
        for (i, (name, protocol, socket, addr)) in sockets.into_iter().enumerate() {
            let id = state::ListenerId::of(&config.listeners[i]);
            match protocol {
                "tcp" => {
                    let ctx =
                        TcpContext::new(snapshot.clone(), id, tasks.clone(), shutdown.clone());
                    tasks.spawn(tcp::serve(socket, ctx, Slots::new(None)));
                }
                "https" => {
                    let (server, infos) = tls::server_config(i, &config.listeners[i].tls)
                        .unwrap_or_else(|e| panic!("tls config refused: {e:?}"));
                    certs.insert(name.clone(), infos);
                    let ctx = HttpContext::new(
                        snapshot.clone(),
                        id,
                        "https",
                        tasks.clone(),
                        shutdown.clone(),
                    );
                    tasks.spawn(tls::serve_https(
                        socket,
                        ctx,
                        Arc::new(ArcSwap::new(server)),
                        Slots::new(None),
                    ));
                }
                _ => {
                    let ctx = HttpContext::new(
                        snapshot.clone(),
                        id,
                        "http",
                        tasks.clone(),
                        shutdown.clone(),
                    );
                    tasks.spawn(http_proxy::serve(socket, ctx, Slots::new(None)));
                }
            }
            addrs.insert(name, addr);
        }
        Lb {
            addrs,
            snapshot,
            certs,
            tasks,
            shutdown,
            _health: health,
            _dir: dir,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// Active count of backend `index` of pool `pool`.
    pub fn active(&self, pool: &str, index: usize) -> usize {
        self.snapshot.load().pool(pool).unwrap().backends[index]
            .shared
            .active()
    }

    /// Idle connections kept to backend `index` of pool `pool`.
    pub fn idle(&self, pool: &str, index: usize) -> usize {
        self.snapshot.load().pool(pool).unwrap().backends[index]
            .shared
            .idle
            .len()
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
