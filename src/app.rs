//! Wiring: load the config, bind every socket, run one round of health
//! checks, start serving, then wait for signals. Shutdown order: stop
//! accepting, let in-flight work finish within the grace period, exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, ConfigErrors, Protocol};
use crate::dns::{self, DnsData, SharedDnsData};
use crate::geoip::{self, Locator};
use crate::health::HealthTable;
use crate::metrics;
use crate::proxy::http::{self as http_proxy, HttpContext};
use crate::proxy::tcp::{self as tcp_proxy, TcpContext};
use crate::proxy::tls::{self, CertInfo};
use crate::state::{self, BackendRegistry, ListenerId, SharedSnapshot};
use crate::upstream::Upstream;

/// How often the GeoIP database file is looked at for a replacement.
const GEOIP_RECHECK: Duration = Duration::from_secs(1);

/// A config that passed every check, with what checking it built.
pub struct Checked {
    pub config: Config,
    pub locator: Arc<Locator>,
    /// Per listener, in config order: an https listener's TLS config and
    /// what its certificates say; None for the others.
    pub tls: Vec<Option<LoadedTls>>,
}

pub type LoadedTls = (Arc<rustls::ServerConfig>, Vec<CertInfo>);

/// Loads every https listener's certificates and keys, adding what is wrong
/// to `errors`. Files that `check_files` already reported are not tried
/// again, so each problem is said once.
fn load_tls(config: &Config, errors: &mut Vec<ConfigError>) -> Vec<Option<LoadedTls>> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let prefix = format!("listener[{i}].tls");
            if l.protocol != Protocol::Https || errors.iter().any(|e| e.path.starts_with(&prefix)) {
                return None;
            }
            tls::server_config(i, &l.tls)
                .map_err(|e| errors.extend(e))
                .ok()
        })
        .collect()
}

/// Reads each TLS pool's CA file as its connections will, so that a bad
/// one is a config error rather than failing every request.
fn check_upstream_tls(config: &Config, errors: &mut Vec<ConfigError>) {
    for (i, pool) in config.pools.iter().enumerate() {
        let path = format!("pool[{i}].tls");
        if pool.tls.is_none() || errors.iter().any(|e| e.path.starts_with(&path)) {
            continue;
        }
        if let Err(e) = Upstream::check(pool) {
            errors.push(ConfigError {
                path,
                message: e.to_string(),
                line: None,
            });
        }
    }
}

/// (listener name, its certificates) for the expiry gauge; warns about the
/// ones close to expiry.
fn certificates(config: &Config, tls: &[Option<LoadedTls>]) -> Vec<(String, Vec<CertInfo>)> {
    let now = std::time::SystemTime::now();
    config
        .listeners
        .iter()
        .zip(tls)
        .filter_map(|(l, t)| {
            let (_, infos) = t.as_ref()?;
            tls::warn_expiring(&l.name, infos, now);
            Some((l.name.clone(), infos.clone()))
        })
        .collect()
}

/// Everything `geolb check` reports, or the config. `previous` lets a
/// reload keep a GeoIP database whose file did not change.
pub fn load_checked(path: &Path, previous: Option<&Locator>) -> Result<Checked, ConfigErrors> {
    let config = config::load(path)?;
    let mut errors = config::check_files(&config);
    let tls = load_tls(&config, &mut errors);
    check_upstream_tls(&config, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let locator = Arc::new(geoip::load(&config, previous)?);
    // Zone files are read here too, so `check` reports their errors.
    dns::compile(&config, locator.clone(), Arc::new(dns::AllUp)).map_err(ConfigErrors)?;
    Ok(Checked {
        config,
        locator,
        tls,
    })
}

/// The DNS side's view of data-center health: the data centers of one
/// snapshot, so indexes always match the config the DNS data came from.
struct DatacenterView(Arc<[state::Datacenter]>);

impl dns::DatacenterHealth for DatacenterView {
    fn is_up(&self, index: usize) -> bool {
        self.0.get(index).is_some_and(state::Datacenter::healthy)
    }

    fn is_drained(&self, index: usize) -> bool {
        self.0.get(index).is_some_and(state::Datacenter::drained)
    }
}

fn compile_dns(
    config: &Config,
    locator: Arc<Locator>,
    snapshot: &state::Snapshot,
) -> Result<DnsData, ConfigErrors> {
    dns::compile(
        config,
        locator,
        Arc::new(DatacenterView(snapshot.datacenters.clone())),
    )
    .map_err(ConfigErrors)
}

#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    pub name: String,
    pub protocol: &'static str,
    pub bind: SocketAddr,
    pub local_addr: SocketAddr,
    #[serde(skip)]
    pub id: ListenerId,
}

/// The running daemon, shared by the admin endpoints and signal handling.
pub struct Daemon {
    pub config_path: PathBuf,
    pub snapshot: SharedSnapshot,
    pub health: Arc<HealthTable>,
    pub registry: BackendRegistry,
    pub metrics: PrometheusHandle,
    listeners: std::sync::Mutex<Vec<RunningListener>>,
    tasks: TaskTracker,
    pub admin_addr: Option<SocketAddr>,
    /// DNS servers, one per `dns.listen` address (UDP and TCP share it).
    dns_servers: std::sync::Mutex<Vec<RunningDns>>,
    pub dns: SharedDnsData,
    /// (listener name, its certificates), for the expiry gauge.
    pub certs: ArcSwap<Vec<(String, Vec<CertInfo>)>>,
    pub shutdown: CancellationToken,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
}

/// What a reload changed, for `POST /reload`.
#[derive(Debug, Default, Serialize)]
pub struct ReloadSummary {
    pub config_generation: u64,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub datacenters_added: Vec<String>,
    pub datacenters_removed: Vec<String>,
    pub datacenters_changed: Vec<String>,
    pub zones_changed: bool,
    /// From the reload's start to the new config serving.
    pub took_ms: f64,
}

impl Daemon {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Re-reads the config file and swaps it in whole, or changes nothing.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadSummary, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let started = std::time::Instant::now();
        // Parsing and compiling a large config (a 10,000-backend Maglev
        // table) must not stall the threads that serve traffic.
        let this = self.clone();
        let result = match tokio::task::spawn_blocking(move || this.try_reload()).await {
            Ok(result) => result,
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("the reload task failed: {e}"),
                line: None,
            }])),
        };
        let outcome = if result.is_ok() { "success" } else { "failure" };
        ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => outcome).increment(1);
        match result {
            Ok(mut summary) => {
                summary.took_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(
                    generation = summary.config_generation,
                    took_ms = summary.took_ms,
                    "config reloaded"
                );
                Ok(summary)
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("reload refused: {e}");
                }
                Err(errors)
            }
        }
    }

    fn try_reload(&self) -> Result<ReloadSummary, ConfigErrors> {
        let current_dns = self.dns.load_full();
        let Checked {
            config,
            locator,
            tls,
        } = load_checked(&self.config_path, Some(current_dns.locator()))?;
        let old = self.snapshot.load_full();
        let mut errors = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if let Some(before) = old
                .config
                .listeners
                .iter()
                .find(|o| ListenerId::of(o) == ListenerId::of(l))
                && before.protocol != l.protocol
            {
                errors.push(ConfigError {
                    path: format!("listener[{i}].protocol"),
                    message: format!(
                        "the listener on {} changes protocol: move it to another bind address (or restart)",
                        l.bind
                    ),
                    line: None,
                });
            }
        }
        let mut needs_restart = |path: &str, what: &str| {
            errors.push(ConfigError {
                path: path.into(),
                message: format!("{what} needs a restart in this version"),
                line: None,
            })
        };
        if old.config.admin != config.admin {
            needs_restart("admin.listen", "changing the admin listener");
        }
        let udp_threads = |c: &Config| c.dns.as_ref().map_or(1, |d| d.udp_threads);
        if udp_threads(&old.config) != udp_threads(&config) {
            needs_restart("dns.udp_threads", "changing the number of DNS UDP threads");
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Bind what is new before anything changes, so a taken port
        // rejects the reload whole.
        let running: Vec<ListenerId> = self.listener_ids();
        let mut added = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if running.contains(&ListenerId::of(l)) {
                continue;
            }
            match bind_listener(l) {
                Ok((socket, bound)) => {
                    added.push((socket, bound, tls[i].as_ref().map(|(s, _)| s.clone())))
                }
                Err(e) => errors.push(ConfigError {
                    path: format!("listener[{i}].bind"),
                    message: format!("= \"{}\": {e:#}", l.bind),
                    line: None,
                }),
            }
        }
        let dns_running = self.dns_listen();
        let dns_wanted: Vec<SocketAddr> = config
            .dns
            .as_ref()
            .map(|d| d.listen.clone())
            .unwrap_or_default();
        let dns_new: Vec<SocketAddr> = dns_wanted
            .iter()
            .copied()
            .filter(|a| !dns_running.contains(a))
            .collect();
        // This runs on a blocking thread: waiting for the binds is fine.
        let bound = dns::bind(&dns_new, udp_threads(&config));
        let dns_added = match tokio::runtime::Handle::current().block_on(bound) {
            Ok(sockets) => dns_new.into_iter().zip(sockets).collect::<Vec<_>>(),
            Err(e) => {
                errors.push(ConfigError {
                    path: "dns.listen".into(),
                    message: format!("{e}"),
                    line: None,
                });
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let dns_removed: Vec<SocketAddr> = dns_running
            .into_iter()
            .filter(|a| !dns_wanted.contains(a))
            .collect();
        let removed: Vec<ListenerId> = running
            .into_iter()
            .filter(|id| !config.listeners.iter().any(|l| ListenerId::of(l) == *id))
            .collect();
        let config = Arc::new(config);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let new = state::compile(config.clone(), generation, &self.health, &self.registry);
        let dns_data = compile_dns(&config, locator, &new)?;
        let mut summary = summarize(&old, &new);
        self.snapshot.store(Arc::new(new));
        self.dns.store(Arc::new(dns_data));
        self.swap_tls(&config, &tls);
        self.certs.store(Arc::new(certificates(&config, &tls)));
        summary.listeners_added = added.iter().map(|(_, b, _)| b.name.clone()).collect();
        for (socket, bound, server) in added {
            self.start_listener(socket, bound, server);
        }
        summary.listeners_removed = self.stop_listeners(&removed);
        for (listen, sockets) in dns_added {
            self.start_dns(listen, sockets);
        }
        self.stop_dns(&dns_removed);
        Ok(summary)
    }
}

fn summarize(old: &state::Snapshot, new: &state::Snapshot) -> ReloadSummary {
    let pools = |s: &state::Snapshot| -> Vec<String> {
        s.pools.iter().map(|p| p.name.to_string()).collect()
    };
    let backends = |s: &state::Snapshot| -> Vec<String> {
        s.pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| format!("{}/{}", p.name, b.label))
            })
            .collect()
    };
    let datacenters = |s: &state::Snapshot| -> Vec<String> {
        s.datacenters
            .iter()
            .map(|d| d.config.name.clone())
            .collect()
    };
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        let b: std::collections::HashSet<&String> = b.iter().collect();
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let (old_pools, new_pools) = (pools(old), pools(new));
    let (old_backends, new_backends) = (backends(old), backends(new));
    let (old_dcs, new_dcs) = (datacenters(old), datacenters(new));
    ReloadSummary {
        config_generation: new.generation,
        pools_added: diff(&new_pools, &old_pools),
        pools_removed: diff(&old_pools, &new_pools),
        backends_added: diff(&new_backends, &old_backends),
        backends_removed: diff(&old_backends, &new_backends),
        listeners_added: Vec::new(),
        listeners_removed: Vec::new(),
        datacenters_added: diff(&new_dcs, &old_dcs),
        datacenters_removed: diff(&old_dcs, &new_dcs),
        datacenters_changed: new
            .datacenters
            .iter()
            .filter(|d| {
                old.datacenters
                    .iter()
                    .any(|o| o.config.name == d.config.name && o.config != d.config)
            })
            .map(|d| d.config.name.clone())
            .collect(),
        zones_changed: old.config.dns.as_ref().map(|d| &d.zones)
            != new.config.dns.as_ref().map(|d| &d.zones),
        took_ms: 0.0,
    }
}

type BoundDns = Vec<dns::DnsSockets>;

/// Binds one listener's socket (synchronously, so a reload can bind
/// without awaiting while it holds no lock across the swap).
fn bind_listener(l: &config::ListenerConfig) -> anyhow::Result<(TcpListener, BoundListener)> {
    let std_socket = std::net::TcpListener::bind(l.bind)
        .with_context(|| format!("listener {:?}: cannot bind {}", l.name, l.bind))?;
    std_socket.set_nonblocking(true)?;
    let socket = TcpListener::from_std(std_socket)?;
    let local_addr = socket.local_addr()?;
    Ok((
        socket,
        BoundListener {
            name: l.name.clone(),
            protocol: match l.protocol {
                Protocol::Http => "http",
                Protocol::Https => "https",
                Protocol::Tcp => "tcp",
            },
            bind: l.bind,
            local_addr,
            id: ListenerId::of(l),
        },
    ))
}

/// A DNS server on one `dns.listen` address.
struct RunningDns {
    /// As configured (its identity across reloads).
    listen: SocketAddr,
    /// As bound (port 0 resolved).
    local: SocketAddr,
    stop: CancellationToken,
}

/// A listener accepting now; `stop` ends its accept loop and drains its
/// connections.
struct RunningListener {
    bound: BoundListener,
    stop: CancellationToken,
    /// An https listener's TLS config, swapped by reloads: new handshakes
    /// get new certificates, open connections keep theirs.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

impl Daemon {
    /// The listeners serving now, for /status.
    pub fn listeners(&self) -> Vec<BoundListener> {
        let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|r| r.bound.clone()).collect()
    }

    /// The bound DNS addresses, for /status.
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        let running = self.dns_servers.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|d| d.local).collect()
    }

    fn dns_listen(&self) -> Vec<SocketAddr> {
        let running = self.dns_servers.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|d| d.listen).collect()
    }

    fn start_dns(&self, listen: SocketAddr, sockets: dns::DnsSockets) {
        let local = sockets.local_addr().unwrap_or(listen);
        tracing::info!(addr = %local, "dns listening (udp and tcp)");
        let stop = self.shutdown.child_token();
        let (data, token) = (self.dns.clone(), stop.clone());
        self.tasks.spawn(async move {
            if let Err(e) = dns::serve(vec![sockets], data, token).await {
                tracing::error!(error = %e, "dns server failed");
            }
        });
        let mut running = self.dns_servers.lock().unwrap_or_else(|e| e.into_inner());
        running.push(RunningDns {
            listen,
            local,
            stop,
        });
    }

    fn stop_dns(&self, listen: &[SocketAddr]) {
        let mut running = self.dns_servers.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|d| {
            let keep = !listen.contains(&d.listen);
            if !keep {
                tracing::info!(addr = %d.local, "dns address removed");
                d.stop.cancel();
            }
            keep
        });
    }

    fn listener_ids(&self) -> Vec<ListenerId> {
        let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|r| r.bound.id.clone()).collect()
    }

    /// `tls`: an https listener's config (load_checked made one for each).
    fn start_listener(
        &self,
        socket: TcpListener,
        bound: BoundListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        tracing::info!(listener = %bound.name, addr = %bound.local_addr, protocol = bound.protocol, "listening");
        let stop = self.shutdown.child_token();
        let tls = tls.map(|server| Arc::new(ArcSwap::new(server)));
        match (bound.protocol, &tls) {
            ("tcp", _) => {
                let ctx = TcpContext::new(
                    self.snapshot.clone(),
                    bound.id.clone(),
                    self.tasks.clone(),
                    stop.clone(),
                );
                self.tasks.spawn(tcp_proxy::serve(socket, ctx));
            }
            ("https", Some(server)) => {
                let ctx = HttpContext::new(
                    self.snapshot.clone(),
                    bound.id.clone(),
                    "https",
                    self.tasks.clone(),
                    stop.clone(),
                );
                self.tasks
                    .spawn(tls::serve_https(socket, ctx, server.clone()));
            }
            _ => {
                let ctx = HttpContext::new(
                    self.snapshot.clone(),
                    bound.id.clone(),
                    "http",
                    self.tasks.clone(),
                    stop.clone(),
                );
                self.tasks.spawn(http_proxy::serve(socket, ctx));
            }
        }
        let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        running.push(RunningListener { bound, stop, tls });
    }

    /// Hands the https listeners that keep running their reloaded TLS.
    fn swap_tls(&self, config: &Config, tls: &[Option<LoadedTls>]) {
        let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for r in running.iter() {
            let Some(swap) = &r.tls else {
                continue;
            };
            let loaded = config
                .listeners
                .iter()
                .position(|l| ListenerId::of(l) == r.bound.id)
                .and_then(|i| tls[i].as_ref());
            if let Some((server, _)) = loaded {
                swap.store(server.clone());
            }
        }
    }

    /// Stops accepting on `binds`; their open connections finish on their
    /// own. Returns the names of the listeners stopped.
    fn stop_listeners(&self, ids: &[ListenerId]) -> Vec<String> {
        let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut names = Vec::new();
        running.retain(|r| {
            let keep = !ids.contains(&r.bound.id);
            if !keep {
                tracing::info!(listener = %r.bound.name, addr = %r.bound.local_addr, "listener removed: no new connections");
                r.stop.cancel();
                names.push(r.bound.name.clone());
            }
            keep
        });
        names
    }
}

async fn bind_all(
    config: &Config,
) -> anyhow::Result<(
    Vec<(TcpListener, BoundListener)>,
    Option<TcpListener>,
    BoundDns,
)> {
    let mut out = Vec::new();
    for l in &config.listeners {
        out.push(bind_listener(l)?);
    }
    let admin = match &config.admin {
        Some(a) => Some(
            TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("admin: cannot bind {}", a.listen))?,
        ),
        None => None,
    };
    let dns = match &config.dns {
        Some(d) => dns::bind(&d.listen, d.udp_threads)
            .await
            .with_context(|| format!("dns: cannot bind {:?}", d.listen))?,
        None => Vec::new(),
    };
    Ok((out, admin, dns))
}

/// Runs the daemon until a signal stops it. `ready` is told the admin
/// address once everything serves (used by `geolb demo`).
pub async fn serve(
    config_path: PathBuf,
    checked: Checked,
    ready: Option<tokio::sync::oneshot::Sender<Arc<Daemon>>>,
) -> anyhow::Result<()> {
    let Checked {
        config,
        locator,
        tls,
    } = checked;
    let metrics = metrics::install().context("cannot install the metrics recorder")?;
    let (sockets, admin_socket, dns_sockets) = bind_all(&config).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let health = HealthTable::new(shutdown.child_token());
    let registry = BackendRegistry::default();
    let grace = config.runtime.shutdown_grace;
    let config = Arc::new(config);
    let first = state::compile(config.clone(), 1, &health, &registry);
    let dns_data: SharedDnsData = Arc::new(ArcSwap::from_pointee(
        compile_dns(&config, locator, &first).map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(first));
    // The first requests must see real states: one round of checks first.
    health
        .wait_first_round(health.longest_timeout() + Duration::from_millis(200))
        .await;

    let daemon = Arc::new(Daemon {
        config_path,
        snapshot: snapshot.clone(),
        health,
        registry,
        metrics,
        listeners: std::sync::Mutex::new(Vec::new()),
        tasks: tasks.clone(),
        admin_addr: admin_socket.as_ref().and_then(|s| s.local_addr().ok()),
        dns_servers: std::sync::Mutex::new(Vec::new()),
        dns: dns_data.clone(),
        certs: ArcSwap::from_pointee(certificates(&config, &tls)),
        shutdown: shutdown.clone(),
        generation: AtomicU64::new(1),
        reload_lock: tokio::sync::Mutex::new(()),
    });
    // bind_all keeps config order: tls[i] belongs to sockets[i].
    for ((socket, bound), tls) in sockets.into_iter().zip(tls) {
        daemon.start_listener(socket, bound, tls.map(|(server, _)| server));
    }
    // dns::bind keeps the order of dns.listen.
    let dns_listen = config
        .dns
        .as_ref()
        .map(|d| d.listen.clone())
        .unwrap_or_default();
    for (listen, sockets) in dns_listen.into_iter().zip(dns_sockets) {
        daemon.start_dns(listen, sockets);
    }
    // Also without a database now: a reload may add one.
    tasks.spawn(dns::watch_geoip(
        dns_data.clone(),
        GEOIP_RECHECK,
        shutdown.clone(),
    ));
    if let Some(socket) = admin_socket {
        tracing::info!(addr = %socket.local_addr()?, "admin listening");
        tasks.spawn(crate::admin::serve(socket, daemon.clone()));
    }
    if let Some(ready) = ready {
        let _ = ready.send(daemon.clone());
    }

    wait_for_stop(&daemon).await;
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    shutdown.cancel();
    tasks.close();
    tokio::select! {
        _ = tasks.wait() => tracing::info!("all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; exiting with connections open"),
        _ = second_signal() => tracing::warn!("second signal; exiting at once"),
    }
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop(daemon: &Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = daemon.reload().await;
            }
            _ = daemon.shutdown.cancelled() => return,
        }
    }
}

#[cfg(unix)]
async fn second_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
