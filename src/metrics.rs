//! Metric names, their descriptions and buckets, in one place.
//!
//! Most counters go through the `metrics` facade into the Prometheus
//! recorder. Series labelled by what a reload can remove are not: the
//! per-(listener, pool) HTTP metrics live in [`RouteMetrics`], and gauges
//! that mirror live state (backend up, active connections, data centers)
//! are rendered from the current snapshot at scrape time, so a pool,
//! backend or data center removed by a reload simply stops appearing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use metrics::{counter, describe_counter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "geolb_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "geolb_http_request_duration_seconds";
pub const HTTP_RETRIES: &str = "geolb_http_retries_total";
pub const TCP_CONNECTIONS: &str = "geolb_tcp_connections_total";
/// Bytes copied, `direction` = `in` (client to backend) or `out`.
pub const TCP_BYTES: &str = "geolb_tcp_bytes_total";
/// Failed connection attempts to backends (each retry counts).
pub const TCP_CONNECT_ERRORS: &str = "geolb_tcp_connect_errors_total";
/// Connections dropped because their PROXY header was missing, malformed or late.
pub const PROXY_PROTOCOL_ERRORS: &str = "geolb_proxy_protocol_errors_total";
/// Seconds until a certificate's notAfter (negative once expired), by
/// `listener` and `cert` (the certificate file).
pub const TLS_CERT_EXPIRY: &str = "geolb_tls_certificate_expiry_seconds";
/// Client connections whose handshake failed or did not finish in time.
pub const TLS_HANDSHAKE_ERRORS: &str = "geolb_tls_handshake_errors_total";
/// Client connections open now, by `listener`; this and
/// [`LISTENER_LIMITED`] are rendered from the accept loops' counts
/// (`accept::Slots`) at scrape time.
pub const LISTENER_CONNECTIONS: &str = "geolb_listener_connections";
/// Times a listener stopped accepting at its `max_connections`.
pub const LISTENER_LIMITED: &str = "geolb_listener_connections_limited_total";
pub const BACKEND_UP: &str = "geolb_backend_up";
pub const BACKEND_ACTIVE: &str = "geolb_backend_active_connections";
pub const POOL_HEALTHY: &str = "geolb_pool_healthy_backends";
pub const DATACENTER_UP: &str = "geolb_datacenter_up";
pub const OVERRIDES: &str = "geolb_overrides_total";
/// 1 per override in force, by `kind`, `target`, `pool` and `state`.
pub const OVERRIDE_ACTIVE: &str = "geolb_override_active";
pub const CONFIG_RELOADS: &str = "geolb_config_reloads_total";
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
/// Times DNS over TCP stopped accepting at `[dns] tcp_max_connections`.
pub const DNS_TCP_LIMITED: &str = "geolb_dns_tcp_connections_limited_total";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the global recorder. Call once, before any metric is touched.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe_counter!(
        TCP_CONNECTIONS,
        "Client connections accepted by tcp listeners, by listener and pool."
    );
    describe_counter!(
        TCP_BYTES,
        metrics::Unit::Bytes,
        "Bytes copied by tcp listeners, by listener, pool and direction (in: client to backend)."
    );
    describe_counter!(
        TCP_CONNECT_ERRORS,
        "Failed connection attempts from tcp listeners to backends, by listener and pool."
    );
    describe_counter!(
        PROXY_PROTOCOL_ERRORS,
        "Client connections dropped for a missing, malformed or late PROXY header, by listener."
    );
    describe_counter!(
        TLS_HANDSHAKE_ERRORS,
        "Client TLS handshakes that failed or timed out, by listener."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads, by result (success or failure)."
    );
    describe_counter!(
        OVERRIDES,
        "Runtime overrides set through the admin API, by kind (backend, datacenter) and state."
    );
    describe_counter!(
        DNS_QUERIES,
        "DNS queries answered, by query type (known types, else other; malformed for messages that could not be parsed) and response code."
    );
    describe_counter!(
        DNS_GEO_ANSWERS,
        "Answers for geo names, by name and chosen data center (A, AAAA and ANY queries)."
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
    // Both results exist from the start, so a failure is a rate change and
    // not a series appearing.
    counter!(CONFIG_RELOADS, "result" => "success").absolute(0);
    counter!(CONFIG_RELOADS, "result" => "failure").absolute(0);
    Ok(handle)
}

/// Per (listener, pool): what a request records into. Kept here rather
/// than in the recorder so that the series of a pool or listener removed by
/// a reload leave `/metrics` (the recorder cannot forget a series), and so
/// that recording is a few relaxed atomic adds. Shared across generations
/// while any snapshot names the pair, so counters survive reloads.
pub struct RouteMetrics {
    listener: String,
    pool: String,
    /// Indexed by status code - 100.
    codes: Box<[AtomicU64]>,
    /// Per bucket of [`DURATION_BUCKETS`] (not cumulative), then +Inf.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    retries: AtomicU64,
}

type RouteKey = (String, String);

fn route_registry() -> &'static Mutex<HashMap<RouteKey, Weak<RouteMetrics>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<RouteKey, Weak<RouteMetrics>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl RouteMetrics {
    pub fn get(listener: &str, pool: &str) -> Arc<RouteMetrics> {
        let mut registry = route_registry().lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|_, weak| weak.strong_count() > 0);
        let key = (listener.to_string(), pool.to_string());
        if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(RouteMetrics {
            listener: listener.to_string(),
            pool: pool.to_string(),
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: (0..=DURATION_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        registry.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The HTTP families (requests, durations, retries) of `routes`, each
/// listed once, in the Prometheus text exposition.
pub fn render_routes(out: &mut String, routes: &[&Arc<RouteMetrics>]) {
    let labels = |m: &RouteMetrics| {
        format!(
            "listener=\"{}\",pool=\"{}\"",
            escape_label(&m.listener),
            escape_label(&m.pool)
        )
    };
    let _ = writeln!(
        out,
        "# HELP {HTTP_REQUESTS} HTTP requests answered, by listener, pool and status code.\n# TYPE {HTTP_REQUESTS} counter"
    );
    for m in routes {
        for (i, n) in m.codes.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{HTTP_REQUESTS}{{{},code=\"{}\"}} {n}",
                    labels(m),
                    i + 100
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP {HTTP_REQUEST_DURATION} Time from a request's head to the end of its response, by listener and pool.\n# TYPE {HTTP_REQUEST_DURATION} histogram"
    );
    for m in routes {
        let labels = labels(m);
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += m.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{HTTP_REQUEST_DURATION}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += m.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = m.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{HTTP_REQUEST_DURATION}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "{HTTP_REQUEST_DURATION}_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "{HTTP_REQUEST_DURATION}_count{{{labels}}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP {HTTP_RETRIES} Requests sent again to another backend after a failure, by listener and pool.\n# TYPE {HTTP_RETRIES} counter"
    );
    for m in routes {
        let _ = writeln!(
            out,
            "{HTTP_RETRIES}{{{}}} {}",
            labels(m),
            m.retries.load(Ordering::Relaxed)
        );
    }
}

/// A label value escaped for the Prometheus text exposition.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
