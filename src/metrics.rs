//! Metric names, their descriptions and buckets, in one place.
//!
//! Most counters go through the `metrics` facade into the Prometheus
//! recorder. Series labelled by what a reload can remove are not: the
//! per-(listener, pool) HTTP metrics live in [`RouteMetrics`], the
//! per-(pool, backend) ones in [`BackendMetrics`], and gauges
//! that mirror live state (backend up, active connections, data centers)
//! are rendered from the current snapshot at scrape time, so a pool,
//! backend or data center removed by a reload simply stops appearing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use metrics::{Counter, CounterFn, counter, describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "geolb_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "geolb_http_request_duration_seconds";
pub const HTTP_RETRIES: &str = "geolb_http_retries_total";
pub const TCP_CONNECTIONS: &str = "geolb_tcp_connections_total";
/// Bytes copied, `direction` = `in` (client to backend) or `out`.
pub const TCP_BYTES: &str = "geolb_tcp_bytes_total";
/// Pipes that tcp listeners and HTTP/1 response bodies splice through, in
/// use or kept empty for reuse (two descriptors each); rendered at scrape
/// time.
pub const TCP_PIPES: &str = "geolb_tcp_pipes";
/// Failed connection attempts to backends (each retry counts).
pub const TCP_CONNECT_ERRORS: &str = "geolb_tcp_connect_errors_total";
/// Connections dropped because their PROXY header was missing, malformed or late.
pub const PROXY_PROTOCOL_ERRORS: &str = "geolb_proxy_protocol_errors_total";
/// Seconds until a certificate's notAfter (negative once expired), by
/// `listener` and `cert` (the certificate file).
pub const TLS_CERT_EXPIRY: &str = "geolb_tls_certificate_expiry_seconds";
/// ACME orders (`tls = { acme }`) by `names` (the certificate's first
/// name) and `result` (success, failure).
pub const TLS_ACME_ORDERS: &str = "geolb_tls_acme_orders_total";
/// Client connections whose handshake failed or did not finish in time.
pub const TLS_HANDSHAKE_ERRORS: &str = "geolb_tls_handshake_errors_total";
/// Seconds until the stapled OCSP response's nextUpdate (0 while none is
/// stapled), by `listener` and `cert`; rendered at scrape time.
pub const TLS_OCSP_STAPLE_VALID: &str = "geolb_tls_ocsp_staple_valid_seconds";
/// OCSP fetches that failed or brought an answer not stapled, by `cert`.
pub const TLS_OCSP_FETCH_ERRORS: &str = "geolb_tls_ocsp_fetch_errors_total";
/// Client connections open now, by `listener`; this and
/// [`LISTENER_LIMITED`] are rendered from the accept loops' counts
/// (`accept::Slots`) at scrape time.
pub const LISTENER_CONNECTIONS: &str = "geolb_listener_connections";
/// Times a listener stopped accepting at its `max_connections`.
pub const LISTENER_LIMITED: &str = "geolb_listener_connections_limited_total";
/// Connections closed and requests answered 429 by a listener's
/// `client_limits`, by `listener` and `limit` (`connections`, `requests`).
pub const CLIENT_LIMITED: &str = "geolb_client_limited_total";
/// HTTP/2 responses cut because the client let no byte of them through
/// (flow control) for the listener's `idle` timeout, by `listener`.
pub const HTTP_STALLED: &str = "geolb_http_stalled_streams_total";
pub const BACKEND_UP: &str = "geolb_backend_up";
pub const BACKEND_ACTIVE: &str = "geolb_backend_active_connections";
pub const POOL_HEALTHY: &str = "geolb_pool_healthy_backends";
/// 1 while passive health has the backend ejected, by `pool` and
/// `backend`. This and the next four are rendered at scrape time from the
/// state `outlier` and `admission` keep.
pub const BACKEND_EJECTED: &str = "geolb_backend_ejected";
/// Ejections by passive health, by `pool` and `backend`.
pub const BACKEND_EJECTIONS: &str = "geolb_backend_ejections_total";
/// Requests waiting for a backend below `max_connections`, by `pool`.
pub const POOL_QUEUE: &str = "geolb_pool_queue_length";
/// Requests answered 503 by the queue, by `pool` and `reason` (`full`,
/// `timeout`).
pub const POOL_QUEUE_REFUSED: &str = "geolb_pool_queue_refused_total";
/// Retries not made because the pool's retry budget was spent, by `pool`.
pub const RETRY_BUDGET_EXHAUSTED: &str = "geolb_retry_budget_exhausted_total";
pub const DATACENTER_UP: &str = "geolb_datacenter_up";
pub const OVERRIDES: &str = "geolb_overrides_total";
/// 1 per override in force, by `kind`, `target`, `pool` and `state`.
pub const OVERRIDE_ACTIVE: &str = "geolb_override_active";
pub const CONFIG_RELOADS: &str = "geolb_config_reloads_total";
/// 1 while the `[cluster]` watch on etcd is live, else 0.
pub const CLUSTER_CONNECTED: &str = "geolb_cluster_connected";
/// Unix time this node last knew itself in step with etcd.
pub const CLUSTER_LAST_SYNC: &str = "geolb_cluster_last_sync_timestamp_seconds";
/// The etcd revision the node's overrides reflect.
pub const CLUSTER_REVISION: &str = "geolb_cluster_revision";
/// Changes under the prefix received by the watch (each key once).
pub const CLUSTER_WATCH_EVENTS: &str = "geolb_cluster_watch_events_total";
/// With `[cluster] config = "etcd"`: the etcd revision of the config in force.
pub const CONFIG_ETCD_REVISION: &str = "geolb_config_etcd_revision";
/// Registrations and removals under the pools' discovery prefixes received
/// by the watch (each key change once).
pub const DISCOVERY_WATCH_EVENTS: &str = "geolb_discovery_watch_events_total";
pub const BUILD_INFO: &str = "geolb_build_info";
/// `geolb_dns_queries_total{qtype, rcode}`
pub const DNS_QUERIES: &str = "geolb_dns_queries_total";
/// `geolb_dns_geo_answers_total{name, datacenter}`
pub const DNS_GEO_ANSWERS: &str = "geolb_dns_geo_answers_total";
/// `geolb_dns_rrl_limited_total{action}`: UDP responses over `[dns.rrl]`,
/// `action` = `dropped` or `slipped` (sent empty with TC).
pub const DNS_RRL: &str = "geolb_dns_rrl_limited_total";
/// `geolb_dns_tcp_closed_total{reason}`: DNS TCP connections geolb closed,
/// `reason` = `idle` or `max_queries`.
pub const DNS_TCP_CLOSED: &str = "geolb_dns_tcp_closed_total";
/// `geolb_dns_transfers_total{zone, kind, result}`: zone transfer
/// requests, `kind` = `axfr` or `ixfr`, `result` = `full`, `incremental`,
/// `up_to_date` or `refused`.
pub const DNS_TRANSFERS: &str = "geolb_dns_transfers_total";
/// `geolb_dns_notify_sent_total{zone, result}`: NOTIFY messages to
/// secondaries, `result` = `answered`, `error` (an answer other than
/// NOERROR) or `timeout` (no answer after every retry).
pub const DNS_NOTIFY: &str = "geolb_dns_notify_sent_total";
/// Times DNS over TCP stopped accepting at `[dns] tcp_max_connections`.
pub const DNS_TCP_LIMITED: &str = "geolb_dns_tcp_connections_limited_total";
/// `geolb_dns_dnssec_signatures_total{zone}`: RRSIGs made (not those
/// served from the cache).
pub const DNS_DNSSEC_SIGNATURES: &str = "geolb_dns_dnssec_signatures_total";
/// Answers sent, by `protocol` (`udp`, `tcp`): beside [`DNS_QUERIES`]
/// rather than a label of it, whose labels are part of the contract.
pub const DNS_QUERIES_BY_PROTOCOL: &str = "geolb_dns_queries_by_protocol_total";
/// Answers sent with TC set (too big for the client's UDP size).
pub const DNS_TRUNCATED: &str = "geolb_dns_truncated_responses_total";
/// Queries that carried an EDNS Client Subnet option (echoed in the answer).
pub const DNS_ECS_QUERIES: &str = "geolb_dns_ecs_queries_total";
/// UDP packets the fast path left, by `result`: `hit` (answered with a
/// reply the UDP thread's packet cache kept) or `miss` (left to the general
/// path, which answers, refuses or drops it).
pub const DNS_PACKET_CACHE: &str = "geolb_dns_packet_cache_total";
/// From a query's receipt to its answer leaving (see `dns::count`).
pub const DNS_ANSWER_DURATION: &str = "geolb_dns_answer_duration_seconds";
/// The UDP path answers in about a microsecond; a batch of 32 in tens.
pub const DNS_ANSWER_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];
/// Client connections accepted, by `listener` (rendered from the accept
/// loops' counts like [`LISTENER_CONNECTIONS`]).
pub const LISTENER_CONNECTIONS_TOTAL: &str = "geolb_listener_connections_total";
/// Body bytes of HTTP requests and responses, by `listener`, `pool` and
/// `direction` (`in`: client to backend).
pub const HTTP_BYTES: &str = "geolb_http_bytes_total";

// Per (pool, backend): [`BackendMetrics`]. Named after HAProxy's
// `haproxy_server_*` series, the ones operators already read.
/// Responses by status class `code` (`1xx` .. `5xx`).
pub const BACKEND_RESPONSES: &str = "geolb_backend_http_responses_total";
/// From sending the request to the backend to its response head.
pub const BACKEND_RESPONSE_TIME: &str = "geolb_backend_response_time_seconds";
/// Failed connection attempts (refused, reset, or no connection within
/// the connect timeout), HTTP and TCP.
pub const BACKEND_CONNECT_ERRORS: &str = "geolb_backend_connect_errors_total";
/// Requests that got no response head within the request timeout.
pub const BACKEND_TIMEOUTS: &str = "geolb_backend_timeouts_total";
/// Requests sent to this backend after another failed them.
pub const BACKEND_RETRIES: &str = "geolb_backend_retries_total";
/// Bytes to and from the backend, `direction` = `in` (client to backend)
/// or `out`: body bytes for HTTP, every byte for TCP.
pub const BACKEND_BYTES: &str = "geolb_backend_bytes_total";
/// Backend response heads: a loopback backend answers in tens of
/// microseconds, a slow one in seconds.
const BACKEND_RESPONSE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

// Process, build, reload and health-check series: what an on-call
// engineer asks first (which backend fails, since when, did the reload
// work, is the process out of descriptors). The process names are the
// ones node_exporter and the Prometheus client libraries use, so existing
// dashboards and alerts apply unchanged.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RESIDENT: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL: &str = "process_virtual_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// 1 if the last reload (or the start-up config) came into service, 0 if
/// it was refused; as Prometheus's `prometheus_config_last_reload_successful`.
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "geolb_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIME: &str =
    "geolb_config_last_reload_success_timestamp_seconds";
/// Per (pool, backend) with a health check: each probe's duration.
pub const HEALTH_CHECK_DURATION: &str = "geolb_health_check_duration_seconds";
/// Per (pool, backend): failed probes (each one, not state changes).
pub const HEALTH_CHECK_FAILURES: &str = "geolb_health_check_failures_total";
/// Per (pool, backend): when the check's state last changed (Unix time).
pub const BACKEND_LAST_CHANGE: &str = "geolb_backend_last_change_timestamp_seconds";
/// Per data center: healthy, drain aside (a drained one is still healthy),
/// so that "data center down" does not fire for a planned drain.
pub const DATACENTER_HEALTHY: &str = "geolb_datacenter_healthy";
/// Per pool: its `min_healthy`, for comparing with [`POOL_HEALTHY`].
pub const POOL_MIN_HEALTHY: &str = "geolb_pool_min_healthy_backends";
/// Health probes: from a loopback connect (well under 1 ms) to the
/// longest sensible check timeout.
pub const HEALTH_CHECK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The commit this binary was built from (`build.rs`), `unknown` when the
/// build had no git.
pub fn commit() -> &'static str {
    option_env!("GEOLB_COMMIT").unwrap_or("unknown")
}

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the global recorder. Call once, before any metric is touched.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe_counter!(
        PROXY_PROTOCOL_ERRORS,
        "Client connections dropped for a missing, malformed or late PROXY header, by listener."
    );
    describe_counter!(
        TLS_HANDSHAKE_ERRORS,
        "Client TLS handshakes that failed or timed out, by listener."
    );
    describe_counter!(
        TLS_ACME_ORDERS,
        "ACME certificate orders (first and renewals), by name (the certificate's first name) and result (success, failure)."
    );
    describe_counter!(
        TLS_OCSP_FETCH_ERRORS,
        "OCSP fetches that failed or whose answer was not stapled (unreachable, invalid, revoked, expired), by cert."
    );
    describe_counter!(
        CLIENT_LIMITED,
        "Client connections closed and requests answered 429 by client_limits, by listener and limit (connections, requests)."
    );
    describe_counter!(
        HTTP_STALLED,
        "HTTP/2 responses reset because the client's flow-control window stayed closed for the idle timeout, by listener."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads, by result (success or failure)."
    );
    describe_gauge!(
        CLUSTER_CONNECTED,
        "1 while the [cluster] watch on etcd is live; 0 while the node serves with the last state it saw."
    );
    describe_gauge!(
        CLUSTER_LAST_SYNC,
        metrics::Unit::Seconds,
        "Unix time this node last knew its overrides in step with etcd (0: never)."
    );
    describe_gauge!(
        CLUSTER_REVISION,
        "The etcd revision this node's overrides reflect."
    );
    describe_gauge!(
        CONFIG_ETCD_REVISION,
        "With [cluster] config = \"etcd\": the etcd revision of the config document in force (0 before one)."
    );
    describe_counter!(
        CLUSTER_WATCH_EVENTS,
        "Changes under the [cluster] prefix received by the etcd watch."
    );
    describe_counter!(
        DISCOVERY_WATCH_EVENTS,
        "Backend registrations and removals under the pools' discovery prefixes received by the etcd watch."
    );
    describe_counter!(
        OVERRIDES,
        "Runtime overrides set through the admin API, by kind (backend, datacenter) and state."
    );
    describe_counter!(
        DNS_QUERIES,
        "DNS queries answered, by query type (known types, else other; malformed for messages that could not be parsed) and response code."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 if the last reload (or the start-up config) came into service, 0 if it was refused."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS_TIME,
        metrics::Unit::Seconds,
        "Unix time of the last config that came into service (start-up or reload)."
    );
    describe_counter!(
        DNS_TRANSFERS,
        "Zone transfer requests, by zone, kind (axfr, ixfr) and result (full, incremental, up_to_date, refused)."
    );
    describe_counter!(
        DNS_NOTIFY,
        "NOTIFY messages sent to secondaries, by zone and result (answered, error, timeout)."
    );
    describe_counter!(
        DNS_RRL,
        "UDP responses over the [dns.rrl] rate, by action: dropped, or slipped (sent empty with TC)."
    );
    describe_counter!(
        DNS_TCP_CLOSED,
        "DNS over TCP connections closed by geolb, by reason: idle, max_queries."
    );
    describe_counter!(
        DNS_TCP_LIMITED,
        "Times DNS over TCP stopped accepting at [dns] tcp_max_connections."
    );
    describe_counter!(
        DNS_DNSSEC_SIGNATURES,
        "RRSIGs made by online signing, by zone (signatures served from the cache are not counted)."
    );
    // Both results exist from the start, so a failure is a rate change and
    // not a series appearing.
    counter!(CONFIG_RELOADS, "result" => "success").absolute(0);
    counter!(CONFIG_RELOADS, "result" => "failure").absolute(0);
    Ok(handle)
}

/// A counter the exposition renders itself (so it can leave with what it
/// counts), handed to code that records through the `metrics` facade as a
/// plain [`Counter`].
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub const fn new() -> Count {
        Count(AtomicU64::new(0))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: u64) {
        // A bodiless request adds 0 bytes: no locked add for it.
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn counter(self: &Arc<Self>) -> Counter {
        Counter::from_arc(self.clone())
    }
}

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.add(value);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// A histogram of durations with fixed buckets, a few relaxed atomic adds
/// per observation.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket of `bounds` (not cumulative), then +Inf.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        self.observe_n(elapsed, 1);
    }

    /// `n` observations of `elapsed` (a batch answered together).
    pub fn observe_n(&self, elapsed: Duration, n: u64) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64 * n, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series; `labels`
    /// already escaped, without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        self.render_lines(out, name, &format!("{labels},"), &format!("{{{labels}}}"));
    }

    /// [`Histogram::render`] for a series without labels.
    pub fn render_unlabelled(&self, out: &mut String, name: &str) {
        self.render_lines(out, name, "", "");
    }

    /// `before_le`: the labels and a comma, or nothing; `braced`: the
    /// labels in braces, or nothing.
    fn render_lines(&self, out: &mut String, name: &str, before_le: &str, braced: &str) {
        let mut cumulative = 0;
        for (i, le) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{before_le}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{{before_le}le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Per (listener, pool): what a request or a TCP connection records into.
/// Kept here rather than in the recorder so that the series of a pool or
/// listener removed by a reload leave `/metrics` (the recorder cannot
/// forget a series), and so that recording is a few relaxed atomic adds.
/// Shared across generations while any snapshot names the pair, so
/// counters survive reloads.
pub struct RouteMetrics {
    listener: String,
    pool: String,
    /// Indexed by status code - 100.
    codes: Box<[AtomicU64]>,
    duration: Histogram,
    retries: AtomicU64,
    /// tcp listeners: connections, bytes each way, failed connects.
    pub tcp_connections: Arc<Count>,
    pub tcp_bytes_in: Arc<Count>,
    pub tcp_bytes_out: Arc<Count>,
    pub tcp_connect_errors: Arc<Count>,
    /// http(s) listeners: body bytes each way.
    http_bytes_in: Count,
    http_bytes_out: Count,
}

/// A registry of metrics by their two labels, each alive while some
/// snapshot holds it.
type Registry<T> = Mutex<HashMap<(String, String), Weak<T>>>;

/// The metrics of `key` in `registry`: the live ones if a snapshot still
/// holds them (a reload keeps the counts), else `make`'s.
fn shared<T>(registry: &Registry<T>, key: (&str, &str), make: impl FnOnce() -> T) -> Arc<T> {
    let mut registry = crate::locked(registry);
    registry.retain(|_, weak| weak.strong_count() > 0);
    let key = (key.0.to_string(), key.1.to_string());
    if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
        return existing;
    }
    let fresh = Arc::new(make());
    registry.insert(key, Arc::downgrade(&fresh));
    fresh
}

impl RouteMetrics {
    pub fn get(listener: &str, pool: &str) -> Arc<RouteMetrics> {
        static REGISTRY: OnceLock<Registry<RouteMetrics>> = OnceLock::new();
        shared(
            REGISTRY.get_or_init(Default::default),
            (listener, pool),
            || RouteMetrics {
                listener: listener.to_string(),
                pool: pool.to_string(),
                codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
                duration: Histogram::new(DURATION_BUCKETS),
                retries: AtomicU64::new(0),
                tcp_connections: Arc::default(),
                tcp_bytes_in: Arc::default(),
                tcp_bytes_out: Arc::default(),
                tcp_connect_errors: Arc::default(),
                http_bytes_in: Count::default(),
                http_bytes_out: Count::default(),
            },
        )
    }

    /// Body bytes of one HTTP request (`to_backend`) and its response.
    pub fn http_bytes(&self, to_backend: u64, to_client: u64) {
        self.http_bytes_in.add(to_backend);
        self.http_bytes_out.add(to_client);
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(elapsed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered so far, and those answered with a 5xx.
    pub fn requests(&self) -> (u64, u64) {
        let count = |range: std::ops::Range<usize>| -> u64 {
            self.codes[range]
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum()
        };
        (count(0..500), count(400..500))
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    fn labels(&self) -> String {
        format!(
            "listener=\"{}\",pool=\"{}\"",
            escape_label(&self.listener),
            escape_label(&self.pool)
        )
    }
}

/// The HTTP families (requests, durations, retries) of the routes of
/// HTTP(S) listeners and the TCP families of the routes of tcp listeners,
/// each listed once, in the Prometheus text exposition.
pub fn render_routes(out: &mut String, http: &[&Arc<RouteMetrics>], tcp: &[&Arc<RouteMetrics>]) {
    family(
        out,
        HTTP_REQUESTS,
        "counter",
        "HTTP requests answered, by listener, pool and status code.",
    );
    for m in http {
        for (i, n) in m.codes.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{HTTP_REQUESTS}{{{},code=\"{}\"}} {n}",
                    m.labels(),
                    i + 100
                );
            }
        }
    }
    family(
        out,
        HTTP_REQUEST_DURATION,
        "histogram",
        "Time from a request's head to the end of its response, by listener and pool.",
    );
    for m in http {
        m.duration.render(out, HTTP_REQUEST_DURATION, &m.labels());
    }
    type Family = (&'static str, &'static str, fn(&RouteMetrics) -> u64);
    let families: [Family; 3] = [
        (
            HTTP_RETRIES,
            "Requests sent again to another backend after a failure, by listener and pool.",
            |m| m.retries.load(Ordering::Relaxed),
        ),
        (
            TCP_CONNECTIONS,
            "Client connections accepted by tcp listeners, by listener and pool.",
            |m| m.tcp_connections.get(),
        ),
        (
            TCP_CONNECT_ERRORS,
            "Failed connection attempts from tcp listeners to backends, by listener and pool.",
            |m| m.tcp_connect_errors.get(),
        ),
    ];
    for (name, help, value) in families {
        family(out, name, "counter", help);
        let routes = if name == HTTP_RETRIES { http } else { tcp };
        for m in routes {
            let _ = writeln!(out, "{name}{{{}}} {}", m.labels(), value(m));
        }
    }
    family(
        out,
        HTTP_BYTES,
        "counter",
        "Body bytes of HTTP requests (in: client to backend) and of backends' responses, by listener, pool and direction.",
    );
    for m in http {
        directions(
            out,
            HTTP_BYTES,
            &m.labels(),
            &m.http_bytes_in,
            &m.http_bytes_out,
        );
    }
    family(
        out,
        TCP_BYTES,
        "counter",
        "Bytes copied by tcp listeners, by listener, pool and direction (in: client to backend).",
    );
    for m in tcp {
        directions(
            out,
            TCP_BYTES,
            &m.labels(),
            &m.tcp_bytes_in,
            &m.tcp_bytes_out,
        );
    }
}

/// Per (pool, backend): what a request or connection sent to that backend
/// records into, held by the snapshot's backend like [`RouteMetrics`] by
/// its route (so the series leave with the backend, and a reload that
/// keeps the backend keeps its counts).
pub struct BackendMetrics {
    /// `pool="..",backend=".."`, escaped once.
    labels: Box<str>,
    /// By status class: 1xx .. 5xx.
    classes: [AtomicU64; 5],
    response_time: Histogram,
    connect_errors: Count,
    timeouts: Count,
    retries: Count,
    pub bytes_in: Arc<Count>,
    pub bytes_out: Arc<Count>,
}

impl BackendMetrics {
    pub fn get(pool: &str, backend: &str) -> Arc<BackendMetrics> {
        static REGISTRY: OnceLock<Registry<BackendMetrics>> = OnceLock::new();
        shared(
            REGISTRY.get_or_init(Default::default),
            (pool, backend),
            || BackendMetrics {
                labels: format!(
                    "pool=\"{}\",backend=\"{}\"",
                    escape_label(pool),
                    escape_label(backend)
                )
                .into(),
                classes: Default::default(),
                response_time: Histogram::new(BACKEND_RESPONSE_BUCKETS),
                connect_errors: Count::default(),
                timeouts: Count::default(),
                retries: Count::default(),
                bytes_in: Arc::default(),
                bytes_out: Arc::default(),
            },
        )
    }

    /// A response head with `status`, `elapsed` after the request was sent.
    pub fn responded(&self, status: u16, elapsed: Duration) {
        if let Some(class) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.classes.get(usize::from(i)))
        {
            class.fetch_add(1, Ordering::Relaxed);
        }
        self.response_time.observe(elapsed);
    }

    pub fn connect_failed(&self) {
        self.connect_errors.add(1);
    }

    /// Since start: (responses, failures: 5xx, failed connects and
    /// timeouts), for the status page.
    pub fn totals(&self) -> (u64, u64) {
        let responses = self.classes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let failed = self.classes[4].load(Ordering::Relaxed)
            + self.connect_errors.get()
            + self.timeouts.get();
        (responses, failed)
    }

    pub fn timed_out(&self) {
        self.timeouts.add(1);
    }

    pub fn retried(&self) {
        self.retries.add(1);
    }

    /// Body bytes of one HTTP exchange: `to_backend` and back.
    pub fn bytes(&self, to_backend: u64, to_client: u64) {
        self.bytes_in.add(to_backend);
        self.bytes_out.add(to_client);
    }
}

/// The per-backend families, each backend once (by pool, then backend).
pub fn render_backends(out: &mut String, backends: &[&BackendMetrics]) {
    family(
        out,
        BACKEND_RESPONSES,
        "counter",
        "HTTP responses from the backend, by pool, backend and status class.",
    );
    for b in backends {
        for (i, n) in b.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "{BACKEND_RESPONSES}{{{},code=\"{}xx\"}} {}",
                b.labels,
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
    }
    family(
        out,
        BACKEND_RESPONSE_TIME,
        "histogram",
        "Time from sending a request to the backend to its response head, by pool and backend.",
    );
    for b in backends {
        b.response_time
            .render(out, BACKEND_RESPONSE_TIME, &b.labels);
    }
    type Family = (&'static str, &'static str, fn(&BackendMetrics) -> u64);
    let families: [Family; 3] = [
        (
            BACKEND_CONNECT_ERRORS,
            "Failed connection attempts to the backend (refused, reset or timed out), HTTP and TCP, by pool and backend.",
            |b| b.connect_errors.get(),
        ),
        (
            BACKEND_TIMEOUTS,
            "HTTP requests the backend did not answer within the request timeout, by pool and backend.",
            |b| b.timeouts.get(),
        ),
        (
            BACKEND_RETRIES,
            "HTTP requests sent to the backend after another backend failed them, by pool and backend.",
            |b| b.retries.get(),
        ),
    ];
    for (name, help, value) in families {
        family(out, name, "counter", help);
        for b in backends {
            let _ = writeln!(out, "{name}{{{}}} {}", b.labels, value(b));
        }
    }
    family(
        out,
        BACKEND_BYTES,
        "counter",
        "Bytes to (in) and from (out) the backend: body bytes for HTTP, all bytes for TCP; by pool, backend and direction.",
    );
    for b in backends {
        directions(out, BACKEND_BYTES, &b.labels, &b.bytes_in, &b.bytes_out);
    }
}

/// The `in` and `out` samples of a bytes family.
fn directions(out: &mut String, name: &str, labels: &str, bytes_in: &Count, bytes_out: &Count) {
    for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
        let _ = writeln!(
            out,
            "{name}{{{labels},direction=\"{direction}\"}} {}",
            n.get()
        );
    }
}

/// A counter that adds to two counts: a TCP connection's bytes, counted
/// for its route and its backend as they are copied.
pub struct Both(pub Arc<Count>, pub Arc<Count>);

impl CounterFn for Both {
    fn increment(&self, value: u64) {
        self.0.add(value);
        self.1.add(value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

/// A label value escaped for the Prometheus text exposition.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_series_by_class_with_escaped_labels_and_shared_while_held() {
        let m = BackendMetrics::get("p\"q", "127.0.0.1:1");
        for status in [101, 200, 204, 404, 503, 599, 99, 600, 0] {
            m.responded(status, Duration::from_micros(150));
        }
        m.bytes(3, 7);
        // A second snapshot naming the pair gets the same counts.
        assert!(Arc::ptr_eq(&m, &BackendMetrics::get("p\"q", "127.0.0.1:1")));
        let mut out = String::new();
        render_backends(&mut out, &[&m]);
        let labels = "pool=\"p\\\"q\",backend=\"127.0.0.1:1\"";
        for (code, n) in [("1xx", 1), ("2xx", 2), ("3xx", 0), ("4xx", 1), ("5xx", 2)] {
            let line = format!("{BACKEND_RESPONSES}{{{labels},code=\"{code}\"}} {n}\n");
            assert!(out.contains(&line), "{line}\n{out}");
        }
        // Every response head is timed, whatever its status.
        assert!(out.contains(&format!(
            "{BACKEND_RESPONSE_TIME}_bucket{{{labels},le=\"0.0001\"}} 0\n"
        )));
        assert!(out.contains(&format!(
            "{BACKEND_RESPONSE_TIME}_bucket{{{labels},le=\"0.00025\"}} 9\n"
        )));
        assert!(out.contains(&format!(
            "{BACKEND_BYTES}{{{labels},direction=\"out\"}} 7\n"
        )));
        drop(m);
        let fresh = BackendMetrics::get("p\"q", "127.0.0.1:1");
        assert_eq!(fresh.bytes_in.get(), 0, "released with the last holder");
    }

    #[test]
    fn a_batch_counts_each_of_its_observations() {
        let h = Histogram::new(DNS_ANSWER_BUCKETS);
        h.observe_n(Duration::from_micros(30), 32);
        h.observe(Duration::from_millis(200));
        let mut out = String::new();
        h.render_unlabelled(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.000025\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 32\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 32\nx_bucket{le=\"+Inf\"} 33\n"));
        assert!(out.contains("x_sum 0.20096\nx_count 33\n"), "{out}");
    }
}
