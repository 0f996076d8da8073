//! Metric names, their descriptions and buckets, in one place.
//!
//! Counters and histograms go through the `metrics` facade into the
//! Prometheus recorder. Gauges that mirror live state (backend up, active
//! connections) are not recorded at all: the admin endpoint renders them
//! from the current snapshot at scrape time, so a backend removed by a
//! reload simply stops appearing.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::Snapshot;

pub const HTTP_REQUESTS: &str = "geolb_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "geolb_http_request_duration_seconds";
pub const HTTP_RETRIES: &str = "geolb_http_retries_total";
pub const TCP_CONNECTIONS: &str = "geolb_tcp_connections_total";
pub use crate::proxy::proxy_protocol::PROXY_PROTOCOL_ERRORS;
pub use crate::proxy::tcp::{TCP_BYTES, TCP_CONNECT_ERRORS};
pub use crate::proxy::tls::{TLS_CERT_EXPIRY, TLS_HANDSHAKE_ERRORS};
pub const BACKEND_UP: &str = "geolb_backend_up";
pub const BACKEND_ACTIVE: &str = "geolb_backend_active_connections";
pub const POOL_HEALTHY: &str = "geolb_pool_healthy_backends";
pub const DATACENTER_UP: &str = "geolb_datacenter_up";
pub const OVERRIDES: &str = "geolb_overrides_total";
pub const CONFIG_RELOADS: &str = "geolb_config_reloads_total";
pub const BUILD_INFO: &str = "geolb_build_info";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the global recorder. Call once, before any metric is touched.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION.to_string()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by listener, pool and status code."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's head to the end of its response, by listener and pool."
    );
    describe_counter!(
        HTTP_RETRIES,
        "Requests sent again to another backend after a failure, by listener and pool."
    );
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
    // Both results exist from the start, so a failure is a rate change and
    // not a series appearing.
    counter!(CONFIG_RELOADS, "result" => "success").absolute(0);
    counter!(CONFIG_RELOADS, "result" => "failure").absolute(0);
    Ok(handle)
}

/// Per (listener, pool): the handles a request records into, resolved once
/// per snapshot instead of per request.
pub struct RouteMetrics {
    listener: String,
    pool: String,
    duration: Histogram,
    retries: Counter,
    /// Indexed by status code - 100.
    codes: Box<[OnceLock<Counter>]>,
}

impl RouteMetrics {
    pub fn get(listener: &str, pool: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            listener: listener.to_string(),
            pool: pool.to_string(),
            duration: histogram!(HTTP_REQUEST_DURATION, "listener" => listener.to_string(), "pool" => pool.to_string()),
            retries: counter!(HTTP_RETRIES, "listener" => listener.to_string(), "pool" => pool.to_string()),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
        })
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.record(seconds);
        let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            counter!(HTTP_REQUESTS, "listener" => self.listener.clone(), "pool" => self.pool.clone(), "code" => status.to_string())
        })
        .increment(1);
    }

    pub fn retried(&self) {
        self.retries.increment(1);
    }
}

/// Renders the recorder's families plus the state gauges of `snapshot`.
pub fn render(handle: &PrometheusHandle, snapshot: &Snapshot) -> String {
    let mut out = handle.render();
    let _ = writeln!(
        out,
        "# HELP {BUILD_INFO} Build information; always 1.\n# TYPE {BUILD_INFO} gauge\n{BUILD_INFO}{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let backends = || {
        snapshot
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    };
    let _ = writeln!(
        out,
        "# HELP {BACKEND_UP} 1 if the backend's health check passes (or it has none), else 0.\n# TYPE {BACKEND_UP} gauge"
    );
    for (pool, b) in backends() {
        let _ = writeln!(
            out,
            "{BACKEND_UP}{{pool=\"{}\",backend=\"{}\"}} {}",
            escape(&pool.name),
            b.label,
            u8::from(b.health.is_up())
        );
    }
    let _ = writeln!(
        out,
        "# HELP {BACKEND_ACTIVE} Requests or connections in progress on the backend (all pools).\n# TYPE {BACKEND_ACTIVE} gauge"
    );
    for (pool, b) in backends() {
        let _ = writeln!(
            out,
            "{BACKEND_ACTIVE}{{pool=\"{}\",backend=\"{}\"}} {}",
            escape(&pool.name),
            b.label,
            b.shared.active()
        );
    }
    let _ = writeln!(
        out,
        "# HELP {POOL_HEALTHY} Backends of the pool that are up and not drained.\n# TYPE {POOL_HEALTHY} gauge"
    );
    for pool in &snapshot.pools {
        let _ = writeln!(
            out,
            "{POOL_HEALTHY}{{pool=\"{}\"}} {}",
            escape(&pool.name),
            pool.healthy()
        );
    }
    let _ = writeln!(
        out,
        "# HELP {DATACENTER_UP} 1 if the data center is healthy and not drained (DNS answers with it), else 0.\n# TYPE {DATACENTER_UP} gauge"
    );
    for dc in snapshot.datacenters.iter() {
        let _ = writeln!(
            out,
            "{DATACENTER_UP}{{datacenter=\"{}\"}} {}",
            escape(&dc.config.name),
            u8::from(dc.up())
        );
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
