//! The L4 path: accept, optionally read the client's PROXY header, pick a
//! backend, connect (retrying on others), optionally send a PROXY header,
//! then copy bytes both ways until both sides have closed (`pump`: splice
//! through pipes, or a buffer held only while data passes).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ::metrics::Counter;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::activity::Activity;
use super::pump::{self, How, Leg};
use crate::accept::{Slot, Slots, accept_loop};
use crate::accesslog::{self, TcpEnd};
use crate::balance;
use crate::config::HashKey;
use crate::metrics::{BackendMetrics, Both, RouteMetrics};
use crate::outlier::Outcome;
use crate::proxy_protocol::{self, Addresses};
use crate::state::{ActiveGuard, ListenerId, Pool, SharedSnapshot};

/// What every connection of one tcp listener shares.
pub struct TcpContext {
    pub snapshot: SharedSnapshot,
    /// The listener's identity in the snapshot.
    pub id: ListenerId,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl TcpContext {
    pub fn new(
        snapshot: SharedSnapshot,
        id: ListenerId,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(TcpContext {
            snapshot,
            id,
            tasks,
            shutdown,
        })
    }
}

/// Accepts until `shutdown`. Open connections are not cut by it: they run
/// until they end, within the grace period the caller enforces.
/// At most `slots`' limit open at once.
pub async fn serve(listener: TcpListener, ctx: Arc<TcpContext>, slots: Arc<Slots>) {
    register_series(&ctx);
    let (name, shutdown) = (ctx.id.clone(), ctx.shutdown.clone());
    accept_loop(
        listener,
        name,
        shutdown,
        Some(slots),
        |stream, peer, slot| {
            ctx.tasks.spawn(connection(stream, peer, ctx.clone(), slot));
        },
    )
    .await
}

/// Creates the listener's PROXY error series at 0, so that the first
/// error is a rate change and not a series appearing (the route's series
/// are rendered from the snapshot, at 0 from the start).
fn register_series(ctx: &TcpContext) {
    let snapshot = ctx.snapshot.load();
    let Some(listener) = snapshot.listeners.get(&ctx.id) else {
        return;
    };
    if listener.config.accept_proxy_protocol {
        proxy_protocol::register_series(&listener.config.name);
    }
}

/// One client connection, holding `slot` until it ends.
async fn connection(mut client: TcpStream, peer: SocketAddr, ctx: Arc<TcpContext>, mut slot: Slot) {
    // One generation for the connection's whole life: a reload does not
    // move an open connection, and the old pool's state stays valid for it.
    let Some(listener) = ctx.snapshot.load().listeners.get(&ctx.id).cloned() else {
        return;
    };
    let config = &listener.config;
    let pool = &listener.default_route.pool;
    // Read for the access line only.
    let start = config.access_log.then(Instant::now);
    // getsockname only for the PROXY headers that need it.
    let local = if config.accept_proxy_protocol || pool.config.proxy_protocol.is_some() {
        client.local_addr().unwrap_or(ctx.id.bind)
    } else {
        ctx.id.bind
    };
    let addresses = if config.accept_proxy_protocol {
        match proxy_protocol::accept(
            &mut client,
            peer,
            local,
            config.timeouts.header,
            &config.name,
        )
        .await
        {
            Some(a) => a,
            None => return,
        }
    } else {
        Addresses {
            source: peer,
            destination: local,
        }
    };
    if !slot.admit(addresses.source.ip()) {
        tracing::debug!(client = %addresses.source, "client over its connection limit: closed");
        return;
    }
    let labels = Labels {
        route: &listener.default_route.metrics,
    };
    labels.route.tcp_connections.add(1);

    let key = client_key(pool.hash_on(), addresses.source.ip());
    // The access line, if the listener keeps one, when the connection ends.
    let log = |backend: Option<&str>, (bytes_in, bytes_out), end, error: Option<&str>| {
        if config.access_log {
            accesslog::Tcp {
                client: addresses.source,
                listener: &config.name,
                pool: &pool.name,
                backend,
                bytes_in,
                bytes_out,
                duration: start.map_or(Duration::ZERO, |s| s.elapsed()),
                end,
                error,
            }
            .emit();
        }
    };
    let (mut backend, index, active) = match connect(
        pool,
        key,
        (config.retries as usize, config.retry_on.connect),
        config.timeouts.connect,
        labels,
    )
    .await
    {
        Ok(connected) => connected,
        Err(last) => {
            tracing::debug!(client = %addresses.source, pool = %pool.name, "no backend reachable; closing");
            let error = last.map_or_else(|| "no healthy backend".to_owned(), |e| e.to_string());
            log(None, (0, 0), TcpEnd::ConnectFailed, Some(&error));
            return;
        }
    };
    let label = &pool.backends[index].label;
    let backend_metrics = &pool.backends[index].metrics;
    if let Some(version) = pool.config.proxy_protocol {
        let header = proxy_protocol::encode(version, addresses.source, addresses.destination);
        if let Err(e) = backend.write_all(&header).await {
            tracing::debug!(backend = %label, error = %e, "writing the PROXY header failed");
            log(
                Some(label),
                (0, 0),
                TcpEnd::BackendWriteFailed,
                Some(&e.to_string()),
            );
            return;
        }
    }
    let _ = client.set_nodelay(true);

    let activity = Activity::new();
    // Which side closed first: 0 neither yet, then CLIENT or BACKEND.
    let first_eof = AtomicU8::new(0);
    let mut up = Leg {
        from: &client,
        to: &backend,
        counter: labels.bytes("in", backend_metrics),
        total: 0,
        side: CLIENT,
    };
    let mut down = Leg {
        from: &backend,
        to: &client,
        counter: labels.bytes("out", backend_metrics),
        total: 0,
        side: BACKEND,
    };
    let how = How {
        splice: config.splice,
        activity: &activity,
        first_eof: &first_eof,
    };
    let (end, error) = tokio::select! {
        r = pump::both(&mut up, &mut down, &how) => match r {
            Ok(()) => {
                tracing::debug!(client = %addresses.source, backend = %label, up = up.total, down = down.total, "tcp connection closed");
                let end = if first_eof.load(Ordering::Relaxed) == BACKEND {
                    TcpEnd::BackendClosed
                } else {
                    TcpEnd::ClientClosed
                };
                (end, None)
            }
            Err(e) => {
                tracing::debug!(client = %addresses.source, backend = %label, error = %e, "tcp connection failed");
                (TcpEnd::Error, Some(e.to_string()))
            }
        },
        reason = activity.watchdog(None, config.timeouts.idle) => {
            tracing::debug!(client = %addresses.source, backend = %label, reason, "tcp connection cut");
            (TcpEnd::IdleTimeout, None)
        }
    };
    drop(active);
    log(Some(label), (up.total, down.total), end, error.as_deref());
}

/// [`Leg::side`] values.
const CLIENT: u8 = 1;
const BACKEND: u8 = 2;

/// A connected backend: tries up to `retries` others after a failure
/// (when `retry_on_connect`).
async fn connect(
    pool: &Pool,
    key: u64,
    (retries, retry_on_connect): (usize, bool),
    timeout: Duration,
    labels: Labels<'_>,
) -> Result<(TcpStream, usize, ActiveGuard), Option<io::Error>> {
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let wait = pool.config.limits.queue_timeout.unwrap_or(timeout);
    let mut last = None;
    // Outside the retry budget: a connect that failed reached no backend.
    while tried.len() <= retries {
        // Counted from the attempt on, so least_conn sees a burst of new
        // connections spread before any of them completes.
        let (index, active) = match pool.acquire(&tried, key, wait).await {
            Ok(got) => got,
            Err(denied) => {
                tracing::debug!(pool = %pool.name, ?denied, "no backend for a connection");
                return Err(last);
            }
        };
        tried.push(index);
        let backend = &pool.backends[index];
        let result = match tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )),
        };
        match result {
            Ok(stream) => {
                pool.outcome(index, Outcome::Success);
                let _ = stream.set_nodelay(true);
                return Ok((stream, index, active));
            }
            Err(e) => {
                tracing::debug!(backend = %backend.label, error = %e, "connect failed");
                pool.outcome(index, Outcome::Failure);
                labels.route.tcp_connect_errors.add(1);
                backend.metrics.connect_failed();
                if !retry_on_connect {
                    return Err(Some(e));
                }
                last = Some(e);
            }
        }
    }
    Err(last)
}

/// The connection's (listener, pool) series, rendered from the snapshot
/// so that they leave with the listener or pool.
#[derive(Clone, Copy)]
struct Labels<'a> {
    route: &'a RouteMetrics,
}

impl Labels<'_> {
    /// Counts for the route and for `backend` at once.
    fn bytes(self, direction: &'static str, backend: &BackendMetrics) -> Counter {
        let (route, backend) = match direction {
            "in" => (&self.route.tcp_bytes_in, &backend.bytes_in),
            _ => (&self.route.tcp_bytes_out, &backend.bytes_out),
        };
        Counter::from_arc(Arc::new(Both(route.clone(), backend.clone())))
    }
}

/// The hash key of a connection, for pools that hash: its client address (the only request
/// attribute L4 has, so header and cookie keys fall back to it too).
fn client_key(hash_on: Option<&HashKey>, client: IpAddr) -> u64 {
    hash_on.map_or(0, |_| balance::client_ip_key(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_keys_by_the_canonical_client_address() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let key = |ip| client_key(Some(&HashKey::ClientIp), ip);
        assert_eq!(key(v4), balance::hash_key(&[192, 0, 2, 1]));
        assert_eq!(key(mapped), key(v4));
        assert_ne!(key("192.0.2.2".parse().unwrap()), key(v4));
        assert_eq!(client_key(None, v4), 0);
    }
}
