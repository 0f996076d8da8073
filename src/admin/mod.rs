//! The admin listener: /healthz, /metrics, /status, /reload and a human
//! status page. Small and boring on purpose: it reads the same snapshot
//! and health table as the data path and never blocks it. Served on
//! `[admin] listen` (HTTPS only with `[admin] tls`) and, with `[admin]
//! socket`, on a Unix socket too (`socket`); `auth` applies on both.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

mod auth;
mod exposition;
mod page;
mod process;
pub mod socket;

pub use exposition::render_routes;

use crate::accept::accept_loop;
use crate::daemon::{BoundListener, Daemon};
use crate::metrics;
use crate::overrides::{Override, Stamp, StoreError, Target};
use crate::reload;
use crate::state::OverrideScope;

/// How long a client of an HTTPS admin listener has for its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `[admin] listen` until shutdown: plain HTTP, or
/// HTTPS only while `[admin] tls` is set (each handshake with the
/// certificates of the config serving then).
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let shutdown = daemon.shutdown.clone();
    accept_loop(listener, "admin", shutdown, None, |stream, peer, _| {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let Some(tls) = daemon.admin_tls.load_full() else {
                return connection(stream, peer, daemon).await;
            };
            let handshake = TlsAcceptor::from(tls).accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => connection(stream, peer, daemon).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "admin TLS handshake not done in time"),
            }
        });
    })
    .await
}

/// Serves the admin API on `[admin] socket` until shutdown. The token rule
/// is the same as on `listen`: the file's permissions add to it.
pub async fn serve_unix(listener: UnixListener, daemon: Arc<Daemon>) {
    let shutdown = daemon.shutdown.clone();
    accept_loop(listener, "admin socket", shutdown, None, |stream, _, _| {
        tokio::spawn(connection(stream, "unix socket", daemon.clone()));
    })
    .await
}

/// One admin connection: HTTP/1.1 requests, each checked against the
/// token before it is routed.
async fn connection<I, P>(io: I, peer: P, daemon: Arc<Daemon>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: std::fmt::Display + Copy + Send + Sync + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let daemon = daemon.clone();
        async move {
            let token = daemon.admin_token.load();
            let refused = auth::refuse(req.method(), req.headers(), token.as_deref(), peer);
            Ok::<_, Infallible>(match refused {
                Some(unauthorized) => unauthorized,
                None => route(req, &daemon, &peer).await,
            })
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `peer`: who asks (an address, or the Unix socket), for the log.
async fn route(
    req: Request<Incoming>,
    daemon: &Arc<Daemon>,
    peer: &(dyn std::fmt::Display + Sync),
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exposition::render(
                &daemon.metrics,
                &daemon.snapshot.load(),
                &daemon.certificates(),
                &daemon.registry.overrides.current(),
                &daemon.listener_slots(),
                std::time::SystemTime::now(),
            ),
        ),
        (&Method::GET, "/status") => reply(
            StatusCode::OK,
            JSON,
            serde_json::to_vec_pretty(&status(daemon)).unwrap_or_default(),
        ),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&status(daemon)),
        ),
        (&Method::POST, "/reload") => match reload::reload(daemon).await {
            Ok(summary) => reply(
                StatusCode::OK,
                JSON,
                serde_json::to_vec_pretty(&summary).unwrap_or_default(),
            ),
            Err(errors) => {
                let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                reply(
                    StatusCode::BAD_REQUEST,
                    JSON,
                    serde_json::to_vec_pretty(&serde_json::json!({ "errors": list }))
                        .unwrap_or_default(),
                )
            }
        },
        (&Method::GET, path) if path.starts_with("/datacenters/") => {
            let name = &path["/datacenters/".len()..];
            let snapshot = daemon.snapshot.load();
            match snapshot
                .datacenters
                .iter()
                .find(|dc| dc.config.name == name)
            {
                Some(dc) if dc.up() => reply(StatusCode::OK, TEXT, "up\n"),
                Some(_) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "down\n"),
                None => reply(StatusCode::NOT_FOUND, TEXT, "no such data center\n"),
            }
        }
        (&Method::POST, path)
            if path.starts_with("/backends/")
                || path.starts_with("/datacenters/")
                || path.starts_with("/pools/") =>
        {
            set_override(daemon, path, peer).await
        }
        (_, "/healthz" | "/metrics" | "/status" | "/" | "/reload") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// `POST /datacenters/NAME/STATE`, `POST /backends/ADDR/STATE` (every pool
/// with that backend) and `POST /pools/POOL/backends/ADDR/STATE` (that pool
/// only), STATE being `drain`, `down` or `auto` (back to config and health
/// checks).
async fn set_override(
    daemon: &Daemon,
    path: &str,
    peer: &(dyn std::fmt::Display + Sync),
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (target, state) = match parts[..] {
        ["datacenters", name, state] => (
            Target::Datacenter {
                name: name.to_owned(),
            },
            state,
        ),
        ["backends", addr, state] | ["pools", _, "backends", addr, state] => {
            let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
                return reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    format!("{addr:?} is not a backend address (IP:port)\n"),
                );
            };
            let pool = (parts[0] == "pools").then(|| parts[1].to_owned());
            (Target::Backend { addr, pool }, state)
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "use POST /datacenters/NAME/STATE, /backends/ADDR/STATE or \
                 /pools/POOL/backends/ADDR/STATE, STATE being drain, down or auto\n",
            );
        }
    };
    let Some(state) = Override::parse(state) else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!("unknown state {state:?}: use drain, down or auto\n"),
        );
    };
    if !daemon.snapshot.load().has(&target) {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no {target} in the running config\n"),
        );
    }
    // Saving writes and syncs a file: off the async workers.
    let (overrides, to_set) = (daemon.registry.overrides.clone(), target.clone());
    let saved = tokio::task::spawn_blocking(move || overrides.set(&to_set, state)).await;
    if let Ok(Err(StoreError::NotApplied(why))) = &saved {
        tracing::error!(%target, state = state.as_str(), by = %peer, error = %why, "runtime override refused");
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("{target}: not set: {why}\n"),
        );
    }
    tracing::warn!(%target, state = state.as_str(), by = %peer, "runtime override set");
    ::metrics::counter!(metrics::OVERRIDES, "kind" => target.kind(), "state" => state.as_str())
        .increment(1);
    let mut answer = format!("{target}: {}\n", state.as_str());
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "override not saved: it will not survive a restart");
            answer.push_str(&format!(
                "warning: not saved ({e}): it will not survive a restart\n"
            ));
        }
        Err(e) => answer.push_str(&format!("warning: not saved ({e})\n")),
    }
    reply(StatusCode::OK, TEXT, answer)
}

#[derive(Serialize)]
struct Status {
    /// This process: after an upgrade, the new one's.
    pid: u32,
    config_generation: u64,
    /// Where the config in force came from.
    config: ConfigOrigin,
    listeners: Vec<BoundListener>,
    dns: DnsStatus,
    datacenters: Vec<DatacenterStatus>,
    pools: Vec<PoolStatus>,
    /// `[cluster]`: the etcd watch; absent for a node alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::ClusterStatus>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ConfigOrigin {
    File { source: &'static str, path: String },
    Etcd(crate::distribution::ConfigSourceStatus),
}

impl ConfigOrigin {
    fn of(daemon: &Daemon) -> ConfigOrigin {
        match daemon.etcd_config.get() {
            Some(etcd) => ConfigOrigin::Etcd(etcd.status()),
            None => ConfigOrigin::File {
                source: "file",
                path: daemon.config_path.display().to_string(),
            },
        }
    }
}

#[derive(Serialize)]
struct DnsStatus {
    udp: Vec<String>,
    tcp: Vec<String>,
}

#[derive(Serialize)]
struct DatacenterStatus {
    name: String,
    /// Healthy and not drained: DNS answers with it.
    up: bool,
    drain: bool,
    /// Its pools have `min_healthy` backends and its remote check passes;
    /// in a cluster, what the quorum of published views decided.
    healthy: bool,
    /// In a cluster: how many nodes' views said up and down, and whose
    /// (`pools`: its own nodes, `checks`: remote checks, `local`: none
    /// published, this node's view).
    #[serde(skip_serializing_if = "Option::is_none")]
    quorum: Option<crate::quorum::Tally>,
    /// Runtime override: auto, drain or down.
    #[serde(rename = "override")]
    runtime_override: &'static str,
    /// Who set the override in force, and when.
    #[serde(flatten)]
    override_stamp: Option<OverrideStamp>,
    pools: Vec<String>,
    remote_check: Option<&'static str>,
    /// The remote check's last probe, as a backend's `last_check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_last_check: Option<LastCheck>,
    /// Geo names that may answer with it (it is one of their candidates).
    geo_names: Vec<String>,
    /// For each `[[geoip.network]]` (the locations the config names), the
    /// geo names whose first answer is this data center now.
    first_for: Vec<FirstFor>,
}

#[derive(Serialize)]
struct FirstFor {
    /// The `[[geoip.network]]` cidr, with its country when set.
    network: String,
    name: String,
}

#[derive(Serialize)]
struct PoolStatus {
    name: String,
    healthy: usize,
    min_healthy: usize,
    balance: &'static str,
    /// Traffic per listener sending to the pool, counted since start.
    routes: Vec<RouteStatus>,
    /// Requests waiting for a backend below `max_connections`.
    queued: usize,
    /// Retries in flight, against the pool's retry budget.
    retries_in_flight: usize,
    /// `discovery`: the etcd prefix its registered backends are read
    /// from (`[cluster] prefix` + the pool's).
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<String>,
    backends: Vec<BackendStatus>,
}

#[derive(Clone, Serialize)]
struct RouteStatus {
    listener: String,
    /// tcp: connections accepted; http(s): requests answered.
    protocol: &'static str,
    total: u64,
    /// 5xx answers (http), failed connects to backends (tcp).
    errors: u64,
}

#[derive(Serialize)]
struct BackendStatus {
    addr: String,
    state: &'static str,
    up: bool,
    drain: bool,
    #[serde(rename = "override")]
    runtime_override: &'static str,
    /// Where the override in force was set: `pool` or `all_pools`.
    #[serde(skip_serializing_if = "Option::is_none")]
    override_scope: Option<&'static str>,
    #[serde(flatten)]
    override_stamp: Option<OverrideStamp>,
    weight: u32,
    active: usize,
    /// Since start: responses from this backend, and failures (5xx,
    /// failed connects, timeouts).
    requests: u64,
    errors: u64,
    /// Passive health: not picked until `ejected_seconds_left` runs out,
    /// whatever `state` (the active check's) says.
    ejected: bool,
    ejected_seconds_left: f64,
    /// Ejections by passive health so far.
    ejections: u64,
    /// The last health check probe; absent for a backend without a check
    /// (or before its first probe ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_check: Option<LastCheck>,
    /// Unix time (seconds) its check's state last changed; absent for a
    /// backend without a check.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_change: Option<f64>,
    /// Registered in etcd (the pool's `discovery`) rather than listed in
    /// the config; with who registered it and when.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    discovered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_at: Option<String>,
}

/// `override_by` and `override_at` beside an override in force.
#[derive(Serialize)]
struct OverrideStamp {
    override_by: String,
    override_at: String,
}

impl OverrideStamp {
    fn of(stamp: Stamp) -> OverrideStamp {
        OverrideStamp {
            override_by: stamp.by,
            override_at: stamp.at,
        }
    }
}

#[derive(Serialize)]
struct LastCheck {
    /// `pass` or `fail`.
    result: &'static str,
    /// Why it failed: connect refused, timeout, status 500, TLS error, ...
    /// Empty when it passed.
    reason: String,
    /// Unix time (seconds) the probe started.
    at: f64,
    /// Seconds it took.
    duration: f64,
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl LastCheck {
    fn of(result: crate::health::CheckResult) -> LastCheck {
        LastCheck {
            result: if result.ok { "pass" } else { "fail" },
            reason: result.reason,
            at: unix_seconds(result.at),
            duration: result.duration.as_secs_f64(),
        }
    }
}

fn status(daemon: &Daemon) -> Status {
    let snapshot = daemon.snapshot.load();
    let dns = daemon.dns.load();
    let (http, tcp) = exposition::routes(&snapshot);
    let route_status = |m: &metrics::RouteMetrics, protocol: &'static str| {
        let (total, errors) = match protocol {
            "tcp" => (m.tcp_connections.get(), m.tcp_connect_errors.get()),
            _ => m.requests(),
        };
        RouteStatus {
            listener: m.listener().to_owned(),
            protocol,
            total,
            errors,
        }
    };
    let routes: Vec<(&str, RouteStatus)> = http
        .iter()
        .map(|m| (m.pool(), route_status(m, "http")))
        .chain(tcp.iter().map(|m| (m.pool(), route_status(m, "tcp"))))
        .collect();
    let first_for = page::first_choices(&snapshot, &dns);
    let overrides = &daemon.registry.overrides;
    Status {
        pid: std::process::id(),
        config_generation: snapshot.generation,
        listeners: daemon.listeners(),
        dns: DnsStatus {
            udp: daemon.dns_addrs().iter().map(|a| a.to_string()).collect(),
            tcp: daemon.dns_addrs().iter().map(|a| a.to_string()).collect(),
        },
        datacenters: snapshot
            .datacenters
            .iter()
            .map(|dc| DatacenterStatus {
                name: dc.config.name.clone(),
                up: dc.up(),
                drain: dc.drained(),
                healthy: dc.healthy(),
                quorum: daemon.registry.quorum.tally(&dc.config.name),
                runtime_override: dc.override_state().as_str(),
                override_stamp: overrides
                    .stamp(&Target::Datacenter {
                        name: dc.config.name.clone(),
                    })
                    .map(OverrideStamp::of),
                pools: dc.config.pools.clone(),
                remote_check: dc.remote_check.as_ref().map(|h| h.state().as_str()),
                remote_last_check: dc
                    .remote_check
                    .as_ref()
                    .and_then(|h| h.checks()?.last())
                    .map(LastCheck::of),
                geo_names: page::geo_names_of(&snapshot, &dc.config.name),
                first_for: first_for
                    .iter()
                    .filter(|(_, _, first)| *first == dc.config.name)
                    .map(|(network, name, _)| FirstFor {
                        network: network.clone(),
                        name: name.clone(),
                    })
                    .collect(),
            })
            .collect(),
        pools: snapshot
            .pools
            .iter()
            .map(|p| PoolStatus {
                name: p.name.to_string(),
                healthy: p.healthy(),
                min_healthy: p.config.min_healthy,
                balance: p.config.balance.as_str(),
                routes: routes
                    .iter()
                    .filter(|(pool, _)| *pool == &*p.name)
                    .map(|(_, r)| r.clone())
                    .collect(),
                queued: p.shared.waiting(),
                retries_in_flight: p.shared.retries_in_flight(),
                // The prefix in force: [cluster] is read at start-up only.
                discovery: p.config.discovery.as_ref().map(|d| {
                    let root = daemon.cluster.get().map_or("", |c| &c.config().prefix);
                    format!("{root}{}", d.prefix)
                }),
                backends: p
                    .backends
                    .iter()
                    .map(|b| {
                        let state = b.state();
                        let (runtime_override, scope) = b.override_in_force();
                        let left = b.outlier.ejected_for();
                        let (requests, errors) = b.metrics.totals();
                        BackendStatus {
                            addr: b.label.to_string(),
                            state: state.as_str(),
                            up: state == crate::health::State::Up,
                            drain: b.drained(),
                            runtime_override: runtime_override.as_str(),
                            override_scope: scope.map(|s| s.as_str()),
                            override_stamp: scope
                                .and_then(|s| {
                                    let pool =
                                        (s == OverrideScope::Pool).then(|| p.name.to_string());
                                    overrides.stamp(&Target::Backend { addr: b.addr, pool })
                                })
                                .map(OverrideStamp::of),
                            weight: b.weight,
                            active: b.shared.active(),
                            requests,
                            errors,
                            last_check: b.health.checks().and_then(|c| c.last()).map(LastCheck::of),
                            last_change: b.health.checks().map(|c| c.last_change()),
                            ejected: left.is_some(),
                            ejected_seconds_left: left.map_or(0.0, |d| d.as_secs_f64()),
                            ejections: b.outlier.ejections(),
                            discovered: b.discovered.is_some(),
                            registered_by: b.discovered.as_ref().map(|r| r.node.clone()),
                            registered_at: b.discovered.as_ref().map(|r| r.at.clone()),
                        }
                    })
                    .collect(),
            })
            .collect(),
        cluster: daemon.cluster.get().map(|c| c.status()),
        config: ConfigOrigin::of(daemon),
    }
}
