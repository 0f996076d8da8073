//! The one test support library of every integration test file: waiting
//! with a deadline (`eventually`, `bounded`), the real `geolb` binary on
//! port 0, backends whose behaviour a test steers, raw and hyper clients;
//! `library` for tests that build the proxy in process.

#![allow(dead_code)]

pub mod generated;
pub mod h2;
pub mod library;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The value of the series `name{labels}` in a `/metrics` text (labels in
/// exposition order).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The resident memory of process `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// An address that refuses connections for as long as the test process runs.
///
/// A port bound and then released can be handed to a listener of a test
/// running beside this one (CI saw a "dead" backend answer six requests).
/// So the port stays bound, without `listen` (a connect gets a reset) and
/// without `SO_REUSEADDR` (no other socket can bind it, even one that sets
/// it, as tokio's and std's listeners do).
pub fn refused_addr() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// A loopback port free for TCP and UDP now, for an outside program that
/// takes its ports on its command line (etcd, Knot), so it cannot be held
/// until the program binds it. Taken below the kernel's range of ports
/// for binds to port 0 (`ip_local_port_range`), where every test binds:
/// no such bind can take it while the program starts, or while a test
/// restarts the program on the same port.
pub fn port_for_a_program() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below the range, from half its start: out of the well-known ports.
    let (first, span) = (low / 2, low - low / 2);
    // Each test binary starts at its own place, so two binaries running at
    // once seldom try the same ports.
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + seed.wrapping_add(n.wrapping_mul(97)) % span;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// Waits for `cond` with a deadline; panics with `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test instead of hanging it.
pub async fn bounded<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// `config` with `[runtime] state_dir` set to `state_dir` unless it sets
/// one: tests never touch the machine's /var/lib/geolb.
pub fn with_state_dir(config: &str, state_dir: &std::path::Path) -> String {
    if config.contains("state_dir") {
        return config.to_owned();
    }
    let line = format!("state_dir = {:?}\n", state_dir.display().to_string());
    match config.find("[runtime]\n") {
        Some(at) => {
            let after = at + "[runtime]\n".len();
            format!("{}{line}{}", &config[..after], &config[after..])
        }
        None => format!("{config}\n[runtime]\n{line}"),
    }
}

/// A running `geolb run` process.
pub struct Geolb {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `[runtime] state_dir` as the daemon was started with it.
    pub state_dir: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
}

impl Geolb {
    /// Replaces the config file (for a reload), keeping the state directory.
    pub fn write_config(&self, config: &str) -> std::io::Result<()> {
        std::fs::write(self.config_path(), with_state_dir(config, &self.state_dir))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("geolb.toml")
    }

    /// What the daemon logged: its stderr, then `[log] file = "geolb.log"`
    /// (in the test's directory) when the config sends lines there.
    pub fn log(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("stderr.log") + &read("geolb.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts geolb with `config` (which must have `[admin] listen =
    /// "127.0.0.1:0"`) and waits until its admin answers.
    /// Starts `geolb run` on `config`, its state directory in the test's
    /// own temporary directory.
    pub async fn start(config: &str) -> Geolb {
        Self::start_with_state(config, None).await
    }

    /// As [`Geolb::start`], with the state directory `state_dir` (which a
    /// test may share between two daemons: a restart).
    pub async fn start_with_state(config: &str, state_dir: Option<&std::path::Path>) -> Geolb {
        Self::start_with(config, state_dir, &[]).await
    }

    /// As [`Geolb::start_with_state`], with more arguments to `geolb run`
    /// (`--takeover`).
    pub async fn start_with(
        config: &str,
        state_dir: Option<&std::path::Path>,
        args: &[&str],
    ) -> Geolb {
        let mut geolb = Self::launch(config, state_dir, args, &[], false);
        geolb.wait_started().await;
        geolb
    }

    /// As [`Geolb::start`], logging with the daemon's default filter (no
    /// `GEOLB_LOG`), as in production.
    pub async fn start_default_log(config: &str) -> Geolb {
        let mut geolb = Self::launch(config, None, &[], &[], true);
        geolb.wait_started().await;
        geolb
    }

    /// Starts geolb with `config` and extra environment variables, without
    /// waiting for anything: [`Geolb::wait_started`] does.
    pub fn spawn(config: &str, env: &[(&str, &str)]) -> Geolb {
        Self::launch(config, None, &[], env, false)
    }

    fn launch(
        config: &str,
        state_dir: Option<&std::path::Path>,
        args: &[&str],
        env: &[(&str, &str)],
        default_log: bool,
    ) -> Geolb {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = state_dir.map_or_else(|| dir.path().join("state"), |d| d.to_path_buf());
        let path = dir.path().join("geolb.toml");
        std::fs::write(&path, with_state_dir(config, &state_dir)).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_geolb"));
        match default_log {
            true => command.env_remove("GEOLB_LOG"),
            false => command.env("GEOLB_LOG", "info,geolb=debug"),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn geolb");
        Geolb {
            child: Some(child),
            dir,
            state_dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            listeners: HashMap::new(),
        }
    }

    /// Waits until the admin listener answers; learns the listeners.
    pub async fn wait_started(&mut self) {
        self.wait_admin().await;
        let status = self.status().await;
        for l in status["listeners"].as_array().unwrap() {
            self.listeners.insert(
                l["name"].as_str().unwrap().to_string(),
                l["local_addr"].as_str().unwrap().parse().unwrap(),
            );
        }
    }

    /// Waits until the admin listener listens (its address logged), without
    /// asking it anything (it may speak HTTPS only); sets `admin`.
    pub async fn wait_admin(&mut self) -> SocketAddr {
        let geolb = self;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(addr) = geolb
                .log()
                .lines()
                .find(|l| l.contains("admin listening"))
                .and_then(logged_addr)
            {
                geolb.admin = addr;
                break;
            }
            if let Some(status) = geolb.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("geolb exited with {status} during start:\n{}", geolb.log());
            }
            assert!(
                Instant::now() < deadline,
                "geolb did not start:\n{}",
                geolb.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        geolb.admin
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, _, body) = get(self.admin, "/status", &[]).await.expect("GET /status");
        assert_eq!(code, 200);
        serde_json::from_slice(&body).expect("status JSON")
    }

    /// The first DNS listen address, as `/status` reports it bound.
    pub async fn dns_addr(&self) -> SocketAddr {
        self.status().await["dns"]["udp"][0]
            .as_str()
            .expect("a DNS listener in /status")
            .parse()
            .expect("a socket address")
    }

    pub async fn metrics(&self) -> String {
        let (_, _, body) = get(self.admin, "/metrics", &[])
            .await
            .expect("GET /metrics");
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The `state` of backend `addr` in pool `pool` per /status.
    pub async fn backend_state(&self, pool: &str, addr: SocketAddr) -> String {
        let status = self.status().await;
        for p in status["pools"].as_array().unwrap() {
            if p["name"] == pool {
                for b in p["backends"].as_array().unwrap() {
                    if b["addr"] == addr.to_string() {
                        return b["state"].as_str().unwrap().to_string();
                    }
                }
            }
        }
        panic!("no backend {addr} in pool {pool}: {status}");
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit (deadline `limit`).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "geolb did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Geolb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `addr` of a log line, text (`addr=...` last) or JSON.
fn logged_addr(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["addr"].as_str()?.parse().ok();
    }
    line.rsplit("addr=").next()?.trim().parse().ok()
}

/// A token file in a directory of its own (the daemon's is made by
/// `Geolb::start`, after the config naming this file is written).
pub fn token_file(token: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, token).unwrap();
    (dir, file)
}

/// `geolb ARGS`, within a deadline: (exited 0, stdout, stderr).
pub async fn geolb_command(args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_geolb"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = bounded(Duration::from_secs(40), &format!("geolb {args:?}"), run)
        .await
        .expect("run geolb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn geolb_check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("geolb.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_geolb"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

type TestBody = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).boxed()
}

/// `backends` as a pool's `backends = [...]` list items.
pub fn backend_list(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A backend a test can steer: answers `/health` with `health_status`,
/// counts hits, and has a few special paths:
/// `/headers` (echoes request headers, one `name: value` per line),
/// `/slow?ms=N`, `/bytes?n=N` (streams N bytes), `/upload` (counts the
/// body), `/ws` (101 then echoes bytes), `/close` (closes without answering).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub health_status: Arc<AtomicU16>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Starts on a given address (e.g. one that was down before).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let backend = Backend {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            hits: Arc::new(AtomicUsize::new(0)),
            health_status: Arc::new(AtomicU16::new(200)),
            stop: CancellationToken::new(),
        };
        let (name, hits, health, stop) = (
            backend.name.clone(),
            backend.hits.clone(),
            backend.health_status.clone(),
            backend.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let (name, hits, health, stop) =
                    (name.clone(), hits.clone(), health.clone(), stop.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (name, hits, health) = (name.clone(), hits.clone(), health.clone());
                        async move { Ok::<_, Infallible>(answer(req, &name, &hits, &health).await) }
                    });
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::SeqCst);
    }

    /// Stops accepting and cuts every open connection.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn answer(
    mut req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    health: &AtomicU16,
) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let code = health.load(Ordering::SeqCst);
        let mut r = Response::new(full("health\n"));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        return r;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    match path.as_str() {
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
            Response::new(full(name.to_string()))
        }
        "/bytes" => {
            let n = query_number(&req, "n");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_stream(n, chunk);
            Response::new(StreamBody::new(stream).boxed())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map(|f| f.into_data()) {
                    total += data.map_or(0, |d| d.len() as u64);
                }
            }
            Response::new(full(total.to_string()))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        _ => Response::new(full(name.to_string())),
    }
}

fn futures_stream(
    mut remaining: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while remaining > 0 {
            let n = remaining.min(chunk.len() as u64) as usize;
            if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                return;
            }
            remaining -= n as u64;
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    struct S(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);
    impl futures_core::Stream for S {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    S(rx)
}

/// One request on a fresh connection; the whole body collected.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, HeaderMap, Bytes), String> {
    request(addr, "GET", path, headers, Bytes::new()).await
}

/// A TCP connection to `to` from the address `src` (port chosen by the
/// kernel; loopback has all of 127/8, so 127.0.1.x and 127.0.2.x are
/// clients of two networks).
pub async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
    bounded(Duration::from_secs(5), "connect", socket.connect(to))
        .await
        .unwrap()
}

/// An HTTP/1.1 client on `stream` (TCP or TLS), kept open for requests.
pub async fn http1_client<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 connection (prior knowledge) to `addr`, driven in the background.
pub async fn http2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` (Host `t.example`) on an open client: status, headers and
/// body, or why it failed.
pub async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<(u16, HeaderMap, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = Request::get(path)
        .header("host", "t.example")
        .body(Empty::new())
        .unwrap();
    let resp = bounded(Duration::from_secs(5), "request", sender.send_request(req))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

/// Sends raw bytes and reads until the peer closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response text.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `packet` sent over `socket` to the DNS server at `server`; the reply's
/// bytes, which must come within 2 s.
pub async fn udp_exchange(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    packet: &[u8],
) -> Vec<u8> {
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .expect("a DNS answer over UDP")
        .unwrap();
    buf.truncate(n);
    buf
}

/// One A query over UDP sent from `source` (a loopback address), with an
/// ECS option for `subnet`/32 if given; the addresses answered.
pub async fn dns_a_from(
    server: SocketAddr,
    source: &str,
    name: &str,
    subnet: Option<&str>,
) -> Vec<String> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if let Some(subnet) = subnet {
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.parse().unwrap(),
                32,
                0,
            )));
        msg.set_edns(edns);
    }
    let socket = tokio::net::UdpSocket::bind(format!("{source}:0"))
        .await
        .unwrap();
    let reply = udp_exchange(&socket, server, &msg.to_vec().unwrap()).await;
    let reply = Message::from_vec(&reply).unwrap();
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}
