//! The L4 path: accept, optionally read the client's PROXY header, pick a
//! backend, connect (retrying on others), optionally send a PROXY header,
//! then copy bytes both ways until both sides have closed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::metrics::Counter;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::activity::{Activity, TrackedIo};
use crate::accept::{Slots, accept_loop};
use crate::balance;
use crate::config::HashKey;
use crate::metrics::{BackendMetrics, Both, RouteMetrics};
use crate::proxy_protocol::{self, Addresses};
use crate::state::{ActiveGuard, ListenerId, Pool, SharedSnapshot};

/// What every connection of one tcp listener shares.
/// Bytes buffered per direction of a TCP connection.
const COPY_BUFFER: usize = 16 * 1024;

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
            ctx.tasks
                .spawn(slot.hold(connection(stream, peer, ctx.clone())));
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

async fn connection(mut client: TcpStream, peer: SocketAddr, ctx: Arc<TcpContext>) {
    // One generation for the connection's whole life: a reload does not
    // move an open connection, and the old pool's state stays valid for it.
    let Some(listener) = ctx.snapshot.load().listeners.get(&ctx.id).cloned() else {
        return;
    };
    let config = &listener.config;
    let pool = &listener.default_route.pool;
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
    let labels = Labels {
        route: &listener.default_route.metrics,
    };
    labels.route.tcp_connections.add(1);

    let key = client_key(pool.hash_on(), addresses.source.ip());
    let Some((mut backend, index, active)) = connect(
        pool,
        key,
        config.retries as usize,
        config.timeouts.connect,
        labels,
    )
    .await
    else {
        tracing::debug!(client = %addresses.source, pool = %pool.name, "no backend reachable; closing");
        return;
    };
    let label = &pool.backends[index].label;
    let backend_metrics = &pool.backends[index].metrics;
    if let Some(version) = pool.config.proxy_protocol {
        let header = proxy_protocol::encode(version, addresses.source, addresses.destination);
        if let Err(e) = backend.write_all(&header).await {
            tracing::debug!(backend = %label, error = %e, "writing the PROXY header failed");
            return;
        }
    }
    let _ = client.set_nodelay(true);

    let activity = Activity::new();
    // Only the client side is tracked: every byte either way passes it.
    let mut client = Counted {
        inner: TrackedIo::new(client, activity.clone()),
        counter: labels.bytes("in", backend_metrics),
    };
    let mut backend = Counted {
        inner: backend,
        counter: labels.bytes("out", backend_metrics),
    };
    // copy_bidirectional forwards a FIN from either side as shutdown(Write)
    // on the other and keeps copying the open direction: half-close works.
    // Any error (a reset backend) ends both at once. 16 KiB each way, as
    // HAProxy's and nginx's buffers: the default 8 KiB moved 0.71x
    // HAProxy's iperf3 throughput (benches/tcp.sh); 32 KiB would double the
    // memory of every mostly idle pooled connection for a smaller gain.
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, COPY_BUFFER, COPY_BUFFER) => match r {
            Ok((up, down)) => tracing::debug!(client = %addresses.source, backend = %label, up, down, "tcp connection closed"),
            Err(e) => tracing::debug!(client = %addresses.source, backend = %label, error = %e, "tcp connection failed"),
        },
        reason = activity.watchdog(None, config.timeouts.idle) => {
            tracing::debug!(client = %addresses.source, backend = %label, reason, "tcp connection cut");
        }
    }
    drop(active);
}

/// A connected backend: tries up to `retries` others after a failure.
async fn connect(
    pool: &Pool,
    key: u64,
    retries: usize,
    timeout: Duration,
    labels: Labels<'_>,
) -> Option<(TcpStream, usize, ActiveGuard)> {
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    while tried.len() <= retries {
        let index = pool.pick(&tried, key)?;
        tried.push(index);
        let backend = &pool.backends[index];
        // Counted from the attempt on, so least_conn sees a burst of new
        // connections spread before any of them completes.
        let active = ActiveGuard::new(backend.shared.clone());
        let result = match tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )),
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, index, active));
            }
            Err(e) => {
                tracing::debug!(backend = %backend.label, error = %e, "connect failed");
                labels.route.tcp_connect_errors.add(1);
                backend.metrics.connect_failed();
            }
        }
    }
    None
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

/// Counts the bytes read from `inner` as they pass, so long-lived
/// connections show their traffic before they end.
struct Counted<T> {
    inner: T,
    counter: Counter,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.counter.increment(n as u64);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
