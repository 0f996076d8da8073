//! geolb: a GeoDNS server and an L7/L4 load balancer in one daemon.
//!
//! # Layout
//!
//! One module per step of the data flow, in layers that only import
//! downward (no module names one above it; where a lower one needs a
//! service from above, it declares a trait, as `dns::DatacenterHealth`):
//!
//! ```text
//! main -> app -> admin -> reload -> daemon -> (proxy | dns)
//!      -> (state, upstream, health, outlier, admission, balance, geoip,
//!          acme, tls_client, discovery -> cluster)
//!      -> (config, metrics, overrides, quorum, takeover, proxy_protocol, accept, notify,
//!          lograte, limits, logging, accesslog, sticky, rules, readbuf, arena,
//!          spares, stamp, request_id, tcp_io, huge_pages)
//! ```
//!
//! - [`app`]: start-up, signals and shutdown order.
//! - [`admin`]: /healthz, /metrics (rendered in `admin::exposition`, the
//!   `process_*` series in `admin::process`), /status, /reload, overrides,
//!   the status page (`admin::page`); over HTTP or HTTPS
//!   (`[admin] tls`) and a Unix socket (`admin::socket`).
//! - [`reload`]: how a config comes into service, at start-up and after:
//!   `check` builds every artifact once, `apply` diffs and swaps.
//! - [`daemon`]: the running daemon: snapshot, DNS data, health table,
//!   and the listeners and DNS servers serving now.
//! - [`proxy`]: the data paths: HTTP (route, pick, forward, stream), TLS
//!   termination in front of it, TCP (pick, connect, copy).
//! - [`dns`]: the authoritative GeoDNS server (zones, geo names, ECS; UDP
//!   threads, TCP connections on the accept loop, query counters).
//! - [`state`]: a config compiled into the [`state::Snapshot`] the data
//!   path reads, swapped whole through one `ArcSwap`.
//! - [`upstream`]: opening and keeping backend connections (HTTP/1.1 or
//!   HTTP/2, cleartext or TLS); `upstream::h1`, geolb's own HTTP/1.1
//!   client, driven in the request's task.
//! - [`arena`]: small `Bytes` (request ids, request heads) cut from
//!   shared chunks.
//! - [`spares`]: boxes a request is done with, kept on the thread for the
//!   next ones.
//! - [`readbuf`]: reads that hold memory only for the bytes that came
//!   (both HTTP/1 halves read heads through it).
//! - [`tcp_io`]: an HTTP connection's socket reads and writes (client or
//!   backend, under TLS or not) as the system calls themselves, not
//!   glibc's wrappers.
//! - [`stamp`]: a request's times, the monotonic clock as nanoseconds.
//! - [`request_id`]: a request's `X-Request-Id`, made or kept, written
//!   into heads from its own bytes.
//! - [`health`]: active checks and the health table, kept outside the
//!   snapshot so that a reload keeps backend states.
//! - [`outlier`]: passive health: backends ejected after failing
//!   requests in a row, kept outside the snapshot like health.
//! - [`admission`]: a pool's queue for backends at `max_connections` and
//!   its retry budget, kept across reloads.
//! - [`balance`]: pure backend selection.
//! - [`geoip`]: the MaxMind database and `[[geoip.network]]` overrides,
//!   and the watcher that re-reads a replaced database file.
//! - [`acme`]: certificates ordered from an ACME CA (RFC 8555) for
//!   `tls = { acme }` listeners: stored, renewed, swapped in; the
//!   HTTP-01 and TLS-ALPN-01 challenges the proxy answers.
//! - [`tls_client`]: TLS client settings for https checks and backends.
//! - [`config`]: TOML text -> validated [`config::Config`], every error
//!   with its key path and line.
//! - [`metrics`]: every metric name, its description and buckets.
//! - [`proxy_protocol`]: the PROXY protocol codec (proxy and health).
//! - [`cluster`]: `[cluster]`: overrides shared through etcd (the
//!   [`overrides::OverrideStore`] of a node in a cluster), watched, and
//!   kept in the state directory for when etcd is out of reach; and each
//!   node's data-center views, published and read for [`quorum`].
//! - [`distribution`]: `[cluster] config = "etcd"`: the config document
//!   in etcd (pushed, its history kept, watched) and, on a node, the one
//!   in force, the newest seen, the last refused, and the copy kept in
//!   the state directory for a start while etcd is out of reach.
//! - [`discovery`]: backends registered in etcd under a pool's
//!   `discovery` prefix (by `geolb register`): watched, compiled into the
//!   snapshot beside the static ones, kept in the state directory.
//! - [`quorum`]: data-center health decided over the views every node of
//!   a cluster publishes (its own data center's pools, others' checks).
//! - [`overrides`]: runtime overrides (drain, down, auto) by target, and
//!   the state file that keeps them across restarts.
//! - [`takeover`]: handing the listening sockets to a new process
//!   (`geolb run --takeover`).
//! - [`notify`]: systemd readiness (`sd_notify`): ready, reloading,
//!   stopping, watchdog.
//! - [`accept`]: the one accept loop of every listener.
//! - [`limits`]: per-client limits (connections and request rate by
//!   address prefix), held by the accept loop's [`accept::Slots`].
//! - [`rules`]: the L7 rules of listeners and routes (redirects, client
//!   networks, methods, body limits, path rewrites) compiled for the data
//!   path, and the `error_pages` bodies read from their files.
//! - [`lograte`]: lines that clients can cause, limited to one a second
//!   per kind (`log_limited!`), their client-supplied text clipped.
//! - [`logging`]: the logger: text or JSON lines, to stderr or files
//!   (`[log]`), through one writer thread that never blocks serving;
//!   files reopened on SIGUSR1.
//! - [`sticky`]: a pool's sticky cookie: the value naming each backend,
//!   reading it off requests and setting it on responses.
//! - [`accesslog`]: the access lines of HTTP requests, TCP connections
//!   and sampled DNS queries: what each holds, client text clipped.
//! - [`configctl`]: `geolb config push`, `history`, `rollback`: the
//!   config document in etcd, checked as `geolb check` does first.
//! - [`lookup`]: `geolb lookup`, a GeoDNS decision explained; [`demo`]:
//!   `geolb demo`; [`register`]: `geolb register`, a backend kept
//!   registered in etcd for a pool's discovery. Commands like `app`, they alone use `anyhow`.
//! - [`control`]: `geolb reload`, `status`, `override`: a client of a
//!   running daemon's admin API over HTTP, HTTPS or its Unix socket
//!   (beside the layers: it imports only `config` and `tls_client`).
//! - `fuzzing`: the entry points of the fuzz targets (`tests/fuzz/`) and their
//!   corpus replay, beside the layers (through the hooks `dns::fuzz` and
//!   `proxy::fuzz`).
//! - `alloc_stats` (feature `alloc-stats`): heap bytes, for the memory
//!   benchmark; [`huge_pages`]: the workers' heaps on transparent huge
//!   pages (`[runtime] huge_pages`), marked by `main` and as workers start.
//!
//! # Who owns each event
//!
//! - **HTTP request**: `proxy::http` (accepted by `accept`, TLS by
//!   `proxy::tls`): loads the snapshot once, routes, asks the pool for a
//!   backend (the pool's balancer says whether to hash and on what),
//!   forwards through `upstream`, settles in `proxy::body` when the
//!   response ends.
//! - **TCP connection**: `proxy::tcp`: picks, connects with retries,
//!   copies both ways.
//! - **DNS query**: `dns::udp` (or `dns::tcp`) receives, `dns::fast` or
//!   `dns::answer` answers from the current `DnsData`, `dns::count`
//!   counts.
//! - **Health result**: a checker task of `health` probes and flips its
//!   entry's state; readers see it on their next load.
//! - **Reload**: `reload::reload` runs `check` then `apply` off the
//!   serving threads; a failure leaves everything as it was.

pub mod accept;
pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod admission;
#[cfg(feature = "alloc-stats")]
pub mod alloc_stats;
pub mod app;
pub mod arena;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod configctl;
mod conn_lock;
pub mod control;
pub mod cpu;
pub mod daemon;
pub mod demo;
pub mod discovery;
pub mod distribution;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod geoip;
pub mod health;
mod held_writes;
pub mod huge_pages;
pub mod limits;
pub mod logging;
pub mod lograte;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod outlier;
pub mod overrides;
pub mod proxy;
pub mod proxy_protocol;
pub mod quorum;
pub mod readbuf;
pub mod register;
pub mod reload;
pub mod request_id;
pub mod rules;
pub mod spares;
pub mod stamp;
pub mod state;
pub mod sticky;
pub mod takeover;
pub mod tcp_io;
pub mod tls_client;
pub mod upstream;

/// The guarded value, also after a thread panicked while holding the lock:
/// every state guarded this way stays valid between statements, so a
/// poisoned lock is no reason to stop serving.
pub(crate) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many inputs a property test runs: `default`, or
/// `GEOLB_PROPTEST_CASES` when set (a longer run: `GEOLB_PROPTEST_CASES=10000000
/// cargo test --release proptest`). Each test scales its own count to it.
#[cfg(test)]
pub(crate) fn proptest_cases(default: usize) -> usize {
    std::env::var("GEOLB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
