//! The running daemon: the current snapshot and DNS data, the health
//! table, and the set of listeners and DNS servers serving now, with how
//! each is started and stopped. Admin endpoints and signals act on it;
//! [`crate::reload`] changes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::Slots;
use crate::acme;
use crate::config::{Config, ListenerConfig, Protocol};
use crate::dns::{self, SharedDnsData};
use crate::health::HealthTable;
use crate::locked;
use crate::proxy::http::{self as http_proxy, HttpContext};
use crate::proxy::tcp::{self as tcp_proxy, TcpContext};
use crate::proxy::tls::{self, CertInfo};
use crate::state::{BackendRegistry, ListenerId, SharedSnapshot};
use crate::takeover::{Handed, Inherited};

/// A listener's socket, bound, as /status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    pub name: String,
    #[serde(serialize_with = "spelled")]
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub local_addr: SocketAddr,
    #[serde(skip)]
    pub id: ListenerId,
}

fn spelled<S: serde::Serializer>(protocol: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(protocol.as_str())
}

/// Binds one listener's socket (synchronously, so a reload can bind
/// without awaiting while it holds no lock across the swap), or takes
/// `inherited`, the same socket handed over by the process this one
/// takes over from.
pub fn bind_listener(
    l: &ListenerConfig,
    inherited: Option<OwnedFd>,
) -> std::io::Result<(TcpListener, BoundListener)> {
    let std_socket = match inherited {
        Some(fd) => std::net::TcpListener::from(fd),
        None => std::net::TcpListener::bind(l.bind).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("listener {:?}: cannot bind {}: {e}", l.name, l.bind),
            )
        })?,
    };
    std_socket.set_nonblocking(true)?;
    let socket = TcpListener::from_std(std_socket)?;
    let local_addr = socket.local_addr()?;
    Ok((
        socket,
        BoundListener {
            name: l.name.clone(),
            protocol: l.protocol,
            bind: l.bind,
            local_addr,
            id: ListenerId::of(l),
        },
    ))
}

/// A listener accepting now; `stop` ends its accept loop and drains its
/// connections.
struct RunningListener {
    bound: BoundListener,
    stop: CancellationToken,
    /// A duplicate of the listening socket, for a takeover.
    handover: Option<OwnedFd>,
    /// An https listener's TLS config, swapped by reloads: new handshakes
    /// get new certificates, open connections keep theirs.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// Its connections and `max_connections`, set again by reloads.
    slots: Arc<Slots>,
}

/// The order loop of one `acme` table.
struct RunningAcme {
    cert: Arc<acme::Certificate>,
    /// The listeners serving it, for the expiry gauge.
    listeners: Vec<String>,
    stop: CancellationToken,
}

/// A DNS server on one `dns.listen` address.
struct RunningDns {
    /// As configured (its identity across reloads).
    listen: SocketAddr,
    /// As bound (port 0 resolved).
    local: SocketAddr,
    stop: CancellationToken,
    /// Duplicates of its sockets (UDP, then TCP), for a takeover.
    handover: Vec<OwnedFd>,
}

/// The running daemon, shared by the admin endpoints and signal handling.
pub struct Daemon {
    pub config_path: PathBuf,
    pub snapshot: SharedSnapshot,
    pub health: Arc<HealthTable>,
    pub registry: BackendRegistry,
    pub metrics: PrometheusHandle,
    pub admin_addr: Option<SocketAddr>,
    pub dns: SharedDnsData,
    /// (listener name, its certificates), for the expiry gauge.
    pub certs: ArcSwap<Vec<(String, Vec<CertInfo>)>>,
    /// The bearer token admin POSTs need (`[admin] token_file`), set by
    /// each [`crate::reload::apply`]; None: no token asked.
    pub admin_token: ArcSwap<Option<Arc<str>>>,
    /// `[admin] tls`, set by each [`crate::reload::apply`] (turning it on
    /// or off needs a restart): new admin connections handshake with the
    /// current certificates. None: the admin listener speaks plain HTTP.
    pub admin_tls: ArcSwapOption<rustls::ServerConfig>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// `[cluster]`, set once at start-up when configured.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// `[cluster] config = "etcd"`: the document in force and the newest
    /// seen, set once at start-up.
    pub etcd_config: std::sync::OnceLock<Arc<crate::distribution::EtcdConfig>>,
    generation: AtomicU64,
    /// Held by a reload from its check to its last start or stop.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    listeners: Mutex<Vec<RunningListener>>,
    /// DNS servers, one per `dns.listen` address (UDP and TCP share it).
    dns_servers: Mutex<Vec<RunningDns>>,
    /// ACME order loops, one per distinct `acme` table.
    acme: Mutex<Vec<RunningAcme>>,
    /// The admin listener (as configured) and a duplicate of its socket.
    admin_handover: Mutex<Option<(SocketAddr, OwnedFd)>>,
    /// Sockets handed over at start-up, taken as the config binds.
    inherited: Mutex<Inherited>,
}

impl Daemon {
    /// A daemon serving `snapshot` and `dns` as generation 0, with nothing
    /// listening yet: [`crate::reload::apply`] brings in the first config.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_path: PathBuf,
        snapshot: SharedSnapshot,
        health: Arc<HealthTable>,
        registry: BackendRegistry,
        metrics: PrometheusHandle,
        admin_addr: Option<SocketAddr>,
        dns: SharedDnsData,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Daemon {
        Daemon {
            config_path,
            snapshot,
            health,
            registry,
            metrics,
            admin_addr,
            dns,
            certs: ArcSwap::from_pointee(Vec::new()),
            admin_token: ArcSwap::from_pointee(None),
            admin_tls: ArcSwapOption::empty(),
            shutdown,
            tasks,
            cluster: std::sync::OnceLock::new(),
            etcd_config: std::sync::OnceLock::new(),
            generation: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            listeners: Mutex::new(Vec::new()),
            dns_servers: Mutex::new(Vec::new()),
            acme: Mutex::new(Vec::new()),
            admin_handover: Mutex::new(None),
            inherited: Mutex::new(Inherited::none()),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The generation the next snapshot gets.
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The listeners serving now, for /status.
    pub fn listeners(&self) -> Vec<BoundListener> {
        locked(&self.listeners)
            .iter()
            .map(|r| r.bound.clone())
            .collect()
    }

    pub fn listener_ids(&self) -> Vec<ListenerId> {
        locked(&self.listeners)
            .iter()
            .map(|r| r.bound.id.clone())
            .collect()
    }

    /// The bound DNS addresses, for /status.
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        locked(&self.dns_servers).iter().map(|d| d.local).collect()
    }

    /// The DNS addresses serving now, as configured.
    pub fn dns_listen(&self) -> Vec<SocketAddr> {
        locked(&self.dns_servers).iter().map(|d| d.listen).collect()
    }

    pub fn start_dns(&self, listen: SocketAddr, sockets: dns::DnsSockets) {
        let local = sockets.local_addr().unwrap_or(listen);
        let handover = sockets.duplicates().unwrap_or_else(|e| {
            tracing::warn!(addr = %local, error = %e, "cannot keep the DNS sockets for a takeover");
            Vec::new()
        });
        tracing::info!(addr = %local, "dns listening (udp and tcp)");
        let stop = self.shutdown.child_token();
        let (data, token) = (self.dns.clone(), stop.clone());
        self.tasks.spawn(async move {
            if let Err(e) = dns::serve(vec![sockets], data, token).await {
                tracing::error!(error = %e, "dns server failed");
            }
        });
        locked(&self.dns_servers).push(RunningDns {
            listen,
            local,
            stop,
            handover,
        });
    }

    pub fn stop_dns(&self, listen: &[SocketAddr]) {
        locked(&self.dns_servers).retain(|d| {
            let keep = !listen.contains(&d.listen);
            if !keep {
                tracing::info!(addr = %d.local, "dns address removed");
                d.stop.cancel();
            }
            keep
        });
    }

    /// `tls`: an https listener's server config.
    pub fn start_listener(
        &self,
        socket: TcpListener,
        bound: BoundListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        tracing::info!(listener = %bound.name, addr = %bound.local_addr, protocol = bound.protocol.as_str(), "listening");
        let stop = self.shutdown.child_token();
        let tls = tls.map(|server| Arc::new(ArcSwap::new(server)));
        let handover = socket.as_fd().try_clone_to_owned().map_err(|e| {
            tracing::warn!(listener = %bound.name, error = %e, "cannot keep the socket for a takeover");
        });
        let (snapshot, id, tasks) = (self.snapshot.clone(), bound.id.clone(), self.tasks.clone());
        let slots = Slots::new(None);
        if let Some(l) = snapshot.load().listeners.get(&id) {
            slots.set_max(l.config.max_connections);
            slots
                .clients
                .configure(&l.config.name, l.config.client_limits.as_ref());
            slots.clients.register_series();
        }
        match (bound.protocol, &tls) {
            (Protocol::Tcp, _) => {
                let ctx = TcpContext::new(snapshot, id, tasks, stop.clone());
                self.tasks
                    .spawn(tcp_proxy::serve(socket, ctx, slots.clone()));
            }
            (Protocol::Https, Some(server)) => {
                let ctx = HttpContext::new(snapshot, id, "https", tasks, stop.clone());
                self.tasks
                    .spawn(tls::serve_https(socket, ctx, server.clone(), slots.clone()));
            }
            _ => {
                let ctx = HttpContext::new(snapshot, id, "http", tasks, stop.clone());
                self.tasks
                    .spawn(http_proxy::serve(socket, ctx, slots.clone()));
            }
        }
        locked(&self.listeners).push(RunningListener {
            bound,
            stop,
            tls,
            handover: handover.ok(),
            slots,
        });
    }

    /// Sockets handed over by the process this one takes over from; what
    /// the config does not take is closed by [`Daemon::confirm_takeover`].
    pub fn inherit(&self, inherited: Inherited) {
        *locked(&self.inherited) = inherited;
    }

    pub fn inherited_listener(&self, id: &ListenerId) -> Option<OwnedFd> {
        locked(&self.inherited).listener(&id.to_string())
    }

    pub fn inherited_dns(&self, listen: SocketAddr) -> Option<(Vec<OwnedFd>, OwnedFd)> {
        locked(&self.inherited).dns(listen)
    }

    /// Tells the process this one took over from that this one serves.
    pub fn confirm_takeover(&self) -> Result<(), crate::takeover::TakeoverError> {
        locked(&self.inherited).confirm()
    }

    /// Keeps a duplicate of the admin socket (configured as `listen`) for
    /// a takeover.
    pub fn keep_admin_socket(&self, listen: SocketAddr, socket: &TcpListener) {
        match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => *locked(&self.admin_handover) = Some((listen, fd)),
            Err(e) => tracing::warn!(error = %e, "cannot keep the admin socket for a takeover"),
        }
    }

    /// Every listening socket, duplicated, described for a new process.
    pub fn handover(&self) -> Vec<(Handed, Vec<OwnedFd>)> {
        let dup = |fd: &OwnedFd| fd.try_clone().ok();
        let mut out = Vec::new();
        for r in locked(&self.listeners).iter() {
            if let Some(fd) = r.handover.as_ref().and_then(dup) {
                let id = r.bound.id.to_string();
                out.push((Handed::Listener { id }, vec![fd]));
            }
        }
        for d in locked(&self.dns_servers).iter() {
            let fds: Option<Vec<OwnedFd>> = d.handover.iter().map(dup).collect();
            if let Some(fds) = fds.filter(|f| !f.is_empty()) {
                let udp = fds.len() - 1;
                out.push((
                    Handed::Dns {
                        listen: d.listen,
                        udp,
                    },
                    fds,
                ));
            }
        }
        if let Some((listen, fd)) = locked(&self.admin_handover).as_ref()
            && let Some(fd) = dup(fd)
        {
            out.push((Handed::Admin { listen: *listen }, vec![fd]));
        }
        out
    }

    /// Hands each https listener that keeps running the TLS config
    /// `server_for` gives for its identity.
    pub fn swap_tls(&self, server_for: impl Fn(&ListenerId) -> Option<Arc<rustls::ServerConfig>>) {
        for r in locked(&self.listeners).iter() {
            if let (Some(swap), Some(server)) = (&r.tls, server_for(&r.bound.id)) {
                swap.store(server);
            }
        }
    }

    /// Starts the order loop of each `acme` table of `config` that has none
    /// running and stops those of tables it no longer has; loops of tables
    /// that stay go on (a reload orders nothing).
    pub fn run_acme(&self, config: &Config) {
        let mut wanted: Vec<(Arc<acme::Certificate>, Vec<String>)> = Vec::new();
        for l in &config.listeners {
            let Some(table) = l.acme.as_ref().filter(|_| l.protocol == Protocol::Https) else {
                continue;
            };
            let cert = acme::Certificate::of(table, &config.runtime.state_dir);
            match wanted.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &cert)) {
                Some((_, names)) => names.push(l.name.clone()),
                None => wanted.push((cert, vec![l.name.clone()])),
            }
        }
        let mut running = locked(&self.acme);
        running.retain(|r| {
            let keep = wanted.iter().any(|(c, _)| Arc::ptr_eq(c, &r.cert));
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (cert, listeners) in wanted {
            match running.iter_mut().find(|r| Arc::ptr_eq(&r.cert, &cert)) {
                Some(r) => r.listeners = listeners,
                None => {
                    let stop = self.shutdown.child_token();
                    self.tasks.spawn(acme::manage(cert.clone(), stop.clone()));
                    running.push(RunningAcme {
                        cert,
                        listeners,
                        stop,
                    });
                }
            }
        }
    }

    /// (listener name, its certificates) for the expiry gauge: the files
    /// of the last reload, and the ACME certificates in service now.
    pub fn certificates(&self) -> Vec<(String, Vec<CertInfo>)> {
        let mut out = (**self.certs.load()).clone();
        for r in locked(&self.acme).iter() {
            let Some((cert, names, not_after)) = r.cert.in_service() else {
                continue;
            };
            for listener in &r.listeners {
                let info = CertInfo {
                    cert: cert.clone(),
                    names: names.clone(),
                    not_after,
                    ocsp: None,
                };
                out.push((listener.clone(), vec![info]));
            }
        }
        out
    }

    /// Gives each listener that keeps running the `max_connections` and
    /// `client_limits` of the config `config_for` gives for its identity
    /// (new connections and requests see them).
    pub fn set_limits<'a>(&self, config_for: impl Fn(&ListenerId) -> Option<&'a ListenerConfig>) {
        for r in locked(&self.listeners).iter() {
            let config = config_for(&r.bound.id);
            r.slots.set_max(config.and_then(|l| l.max_connections));
            if let Some(l) = config {
                r.slots.clients.configure(&l.name, l.client_limits.as_ref());
            }
        }
    }

    /// Each running listener's name and connections, for /metrics.
    pub fn listener_slots(&self) -> Vec<(String, Arc<Slots>)> {
        locked(&self.listeners)
            .iter()
            .map(|r| (r.bound.name.clone(), r.slots.clone()))
            .collect()
    }

    /// Stops accepting on `ids`; their open connections finish on their
    /// own. Returns the names of the listeners stopped.
    pub fn stop_listeners(&self, ids: &[ListenerId]) -> Vec<String> {
        let mut names = Vec::new();
        locked(&self.listeners).retain(|r| {
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

/// This node's view of every data center it can judge, handed to the
/// cluster's quorum each `every` (published when it changed): its own
/// data center from its local pools, the others from their remote checks.
/// A data center with neither is left to the nodes that can judge it.
pub async fn publish_views(
    snapshot: SharedSnapshot,
    quorum: Arc<crate::quorum::Quorum>,
    node: String,
    own: Option<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    use crate::quorum::{Published, Source, View};
    loop {
        let current = snapshot.load();
        let views = current
            .datacenters
            .iter()
            .filter_map(|dc| {
                let source = if own.as_deref() == Some(dc.config.name.as_str()) {
                    Source::Pools
                } else if dc.remote_check.is_some() {
                    Source::Check
                } else {
                    return None;
                };
                let up = dc.locally_healthy();
                Some((dc.config.name.clone(), View { up, source }))
            })
            .collect();
        drop(current);
        let published = Published {
            datacenter: own.clone(),
            views,
            at: String::new(),
        };
        quorum.set_own(&node, published);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Logs each data center's change between up and not up once, with the
/// reason: its state follows from pool health, overrides and drain, which
/// change in several places, so it is watched rather than reported.
pub async fn watch_datacenters(
    snapshot: SharedSnapshot,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut known: HashMap<String, bool> = HashMap::new();
    loop {
        let current = snapshot.load();
        let mut seen = HashMap::with_capacity(current.datacenters.len());
        for dc in current.datacenters.iter() {
            let why = dc.why_not_up();
            let up = why.is_none();
            match (known.get(&dc.config.name), why) {
                (Some(false), None) => {
                    tracing::info!(datacenter = %dc.config.name, "data center: now up");
                }
                (Some(true) | None, Some(reason)) => {
                    tracing::warn!(datacenter = %dc.config.name, %reason, "data center: now down");
                }
                _ => {}
            }
            seen.insert(dc.config.name.clone(), up);
        }
        // A data center a reload removed is forgotten; one it adds starts
        // from its first state (logged only if that is down).
        known = seen;
        drop(current);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
